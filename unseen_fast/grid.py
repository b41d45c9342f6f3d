"""The experiment grid file (`unseen-fast experiment GRID.yaml`): what it
may hold, read and checked in full before the first cell runs."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from unseen_fast.baselines import BaselineParams
from unseen_fast.errors import UserError, check_seed
from unseen_fast.pipeline import PruneConfig
from unseen_fast.train import TrainConfig

BUDGETS = ("epochs", "iterations")
PRUNE_FIELDS = {f.name for f in dataclasses.fields(PruneConfig)} - {"prune_rate", "seed", "train", "baseline"}
# besides PruneConfig fields a method may set its baseline parameters and override the grid's prune_train
# (e.g. another pruning architecture beside the same final model)
METHOD_EXTRAS = {"baseline", "prune_train"}


@dataclass
class Grid:
    data: str                                   # ImageFolder root or builtin:digits
    methods: dict                               # name -> PruneConfig fields (score, framework, stages, ...)
    prune_rates: list
    seeds: list
    file_list: str | None = None                # optional "relative/path label" list under data
    val_data: str | None = None                 # validation ImageFolder; else a stratified holdout of data
    val_fraction: float = 0.1                   # holdout share when val_data is not given
    split_seed: int = 0                         # the holdout is fixed by this seed, not by the cell seeds
    train_samples: int | None = None            # prune a stratified subset of the training split this big
    prune_train: dict = field(default_factory=dict)  # TrainConfig fields of the pruning models
    final_train: dict = field(default_factory=dict)  # TrainConfig fields of the final models (arch may differ)
    budgets: list = field(default_factory=lambda: ["epochs"])  # epochs and/or iterations (CCS's protocol)
    iterations_at: list | None = None           # prune rates that also get the iterations budget (default all)
    full_data: bool = True                      # train and report the full-data model per seed

    @classmethod
    def from_yaml(cls, path) -> "Grid":
        import yaml

        try:
            raw = yaml.safe_load(Path(path).read_text()) or {}
        except OSError as err:
            raise UserError(f"cannot read the grid {path}: {err.strerror}") from None
        except yaml.YAMLError as err:
            raise UserError(f"{path} is not valid YAML: {err}") from None
        if not isinstance(raw, dict):
            raise UserError(f"{path}: a grid is a mapping of keys (data, methods, ...), got {type(raw).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise UserError(f"{path}: unknown grid key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        missing = [name for name in ("data", "methods", "prune_rates", "seeds") if name not in raw]
        if missing:
            raise UserError(f"{path}: missing grid key(s) {', '.join(missing)}")
        try:
            grid = cls(**raw)
        except TypeError as err:
            raise UserError(f"{path}: {err}") from None
        grid.validate(path)
        return grid

    def validate(self, where="grid") -> None:
        shapes = dict(methods=dict, prune_train=dict, final_train=dict, prune_rates=list, seeds=list, budgets=list)
        for key, kind in shapes.items():
            value = getattr(self, key)
            if not isinstance(value, kind):
                raise UserError(f"{where}: {key} must be a {'mapping' if kind is dict else 'list'}, got {value!r}")
        if not self.methods:
            raise UserError(f"{where}: no methods")
        odd = [name for name, spec in self.methods.items() if not isinstance(spec, dict)]
        if odd:
            raise UserError(f"{where}: method {odd[0]!r} must map to its options (e.g. {{score: random}}), "
                            f"got {self.methods[odd[0]]!r}")
        for name, fields in (("prune_train", self.prune_train), ("final_train", self.final_train)):
            try:
                TrainConfig(**fields)  # unknown or bad fields raise here, naming the field
            except (TypeError, UserError) as err:
                raise UserError(f"{where}: {name}: {err}") from None
        for name, spec in self.methods.items():
            bad = sorted(set(spec) - PRUNE_FIELDS - METHOD_EXTRAS)
            if bad:
                raise UserError(f"{where}: method {name!r} has unknown option(s) {', '.join(bad)}; "
                                 f"known: {', '.join(sorted(PRUNE_FIELDS | METHOD_EXTRAS))}")
            try:  # every value a method sets, checked before the first cell runs (rate and size are placeholders)
                prune_config(spec, 0.5, 0, self.prune_train, image_size=32)
            except (TypeError, UserError) as err:
                raise UserError(f"{where}: method {name!r}: {err}") from None
            if name == "full":
                raise UserError(f"{where}: 'full' is reserved for the full-data model")
        if not self.prune_rates or not self.seeds:
            raise UserError(f"{where}: prune_rates and seeds need at least one value each")
        for rate in self.prune_rates:
            if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 < rate < 1:
                raise UserError(f"{where}: prune rate {rate!r} is not in (0, 1)")
        try:
            for seed in [*self.seeds, self.split_seed]:
                check_seed(seed, "each of seeds and split_seed")
        except UserError as err:
            raise UserError(f"{where}: {err}") from None
        for name, values in (("prune_rates", self.prune_rates), ("seeds", self.seeds)):
            if len(set(values)) != len(values):
                raise UserError(f"{where}: {name} lists a value twice: {values}")
        if not isinstance(self.full_data, bool):
            raise UserError(f"{where}: full_data must be true or false, got {self.full_data!r}")
        bad = sorted(set(self.budgets) - set(BUDGETS))
        if bad or not self.budgets:
            raise UserError(f"{where}: budgets must be a non-empty subset of {BUDGETS}, got {self.budgets}")



def prune_config(spec: dict, rate: float, seed: int, prune_train: dict, image_size: int) -> PruneConfig:
    """The PruneConfig of one method's cell."""
    spec = dict(spec)
    baseline = BaselineParams(**spec.pop("baseline", {}))
    train = TrainConfig(**{"image_size": image_size, **prune_train, **spec.pop("prune_train", {})})
    return PruneConfig(prune_rate=float(rate), seed=int(seed), train=train, baseline=baseline, **spec)
