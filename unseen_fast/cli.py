"""The `unseen-fast` command line."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from unseen_fast.constants import MAX_SEED  # no torch: --help stays quick


def cmd_info(args: argparse.Namespace) -> int:
    from unseen_fast.info import build_info

    info = build_info()
    if args.json:
        return print(json.dumps(info, indent=2)) or 0
    width = max(len(key) for key in info)
    for key, value in info.items():
        if isinstance(value, list):
            value = ", ".join(value) if value else "none visible"
        print(f"{key:<{width}}  {value}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from unseen_fast.demo import run_demo

    ok = run_demo(samples=args.samples, classes=args.classes, keep=args.keep, seed=args.seed,
                  device_name=args.device)
    return 0 if ok else 1


def cmd_check_data(args: argparse.Namespace) -> int:
    """Decode every image; exit 1 naming each unreadable file."""
    from unseen_fast.data import open_index
    from unseen_fast.data.check import check_data, format_report

    index = open_index(args.data, file_list=args.file_list)
    report = check_data(index, workers=args.workers, progress=not args.json and sys.stderr.isatty())
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0 if report["ok"] else 1


def _logging(quiet: bool = False) -> None:
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(asctime)s %(message)s",
                        datefmt="%H:%M:%S")


def _device(args: argparse.Namespace):
    from unseen_fast.parallel import training_device

    return training_device(args.device, args.gpus, args.nproc)


def _train_config(args: argparse.Namespace, index, device):
    """The TrainConfig of the shared training options."""
    from unseen_fast.constants import resolve_amp
    from unseen_fast.models import default_arch, default_image_size
    from unseen_fast.train import TrainConfig

    size = args.image_size or (None if index is None else default_image_size(index))  # None: prune() decides
    return TrainConfig(arch=args.arch or default_arch(device), epochs=args.epochs, batch_size=args.batch_size,
                       lr=args.lr, image_size=size, seed=args.seed, backend=args.backend, compile=args.compile,
                       amp=resolve_amp(args.amp, device), checkpoint_every=args.checkpoint_every)


def cmd_train(args: argparse.Namespace) -> int:
    """Train one model; write RUN/checkpoint.pt and RUN/eval.json."""
    import numpy as np
    import torch

    from unseen_fast.data import check_backend, open_index
    from unseen_fast.data.subset import subset_ids
    from unseen_fast.errors import UserError
    from unseen_fast.evaluate import accuracy_report, predict_logits
    from unseen_fast.parallel import TrainJob, train_many
    from unseen_fast.rundir import not_a_run_folder, write_json
    from unseen_fast.splits import stratified_holdout
    from unseen_fast.train import check_model, load_model
    from unseen_fast.usable_images import validation_index

    _logging(args.quiet)
    out = Path(args.out)
    index = open_index(args.data, file_list=args.file_list)
    ids = subset_ids(index, args.subset) if args.subset else np.arange(len(index))
    if len(ids) == 0:
        raise UserError(f"--subset {args.subset} names no samples; nothing to train on")
    device = _device(args)
    config = _train_config(args, index, device)
    if args.val_data:
        val_index = validation_index(args.val_data, index)
        val_ids = np.arange(len(val_index))
    else:
        val_index = index
        ids, val_ids = stratified_holdout(ids, index.labels, args.val_fraction, seed=args.seed)
        logging.getLogger("unseen_fast.train").info(
            "training on %d samples; %d more held out for validation (--val-fraction %g)", len(ids), len(val_ids),
            args.val_fraction)
    check_model(config, index.num_classes)  # these three before anything is written
    check_backend(config.backend, index)
    # creates the folder, refused inside --data; other images under the same names once a checkpoint exists
    index.save(not_a_run_folder(out), images_may_change=not (out / "checkpoint.pt").exists())
    write_json(out / "train_config.json", dict(vars(config), train_samples=len(ids), val_samples=len(val_ids)))
    loader_kwargs = dict(cache_dir=out / "cache")
    train_many([TrainJob("model", ids, str(out), seed=args.seed)], config, index, device=device,
               nproc=args.nproc, gpus=args.gpus, loader_kwargs=loader_kwargs, progress=not args.quiet)
    if len(val_ids):
        model = load_model(out, index.num_classes, device=device)
        logits = predict_logits(model, val_index, val_ids, image_size=config.image_size, device=device,
                                amp=config.amp, cache_dir=out / "cache")
        labels = torch.from_numpy(val_index.labels[val_ids]).to(logits.device)
        report = accuracy_report(logits, labels, index.classes)
        write_json(out / "eval.json", report)
        print(f"validation top1 {report['top1']:.4f} on {len(val_ids)} samples; "
              f"variance of per-class accuracy {report['class_accuracy_variance']:.5f}")
    print(f"model: {out / 'checkpoint.pt'}")
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    """UNSEEN pruning end to end; outputs in --out."""
    from unseen_fast.baselines import BaselineParams
    from unseen_fast.data import open_index
    from unseen_fast.pipeline import PruneConfig, prune

    _logging(args.quiet)
    index = open_index(args.data, file_list=args.file_list)
    device = _device(args)
    config = PruneConfig(prune_rate=args.prune_rate, folds=args.folds, stages=args.stages,
                         stage_size=_stage_size(args.stage_size), score=args.score, framework=args.framework,
                         selection=args.selection, split=args.split, score_norm=args.score_norm, seed=args.seed,
                         drop_label_issues=args.drop_label_issues, label_issue_factor=args.label_issue_factor,
                         auto_budget=args.auto_budget, auto_keep_split=args.auto_keep_split,
                         train=_train_config(args, None, device),  # prune sizes images after its first line
                         baseline=BaselineParams(early_epochs=args.early_epochs, window=args.window,
                                                 tdds_decay=args.tdds_decay, ccs_beta=args.ccs_beta,
                                                 ccs_strata=args.ccs_strata, mix_alpha=args.mix_alpha))
    summary = prune(index, out=args.out, config=config, device=device, nproc=args.nproc, gpus=args.gpus,
                    resume=args.resume, progress=not args.quiet, share_dir=args.share_models,
                    skip_bad=args.skip_bad)
    out = Path(args.out)
    print(f"{summary.kept_line} (prune rate {args.prune_rate}, stages {summary['stage_sizes']})")
    print(f"coreset: {out / 'coreset.npy'} (sample ids), {out / 'coreset.txt'} (file list)")
    print(f"summary: {out / 'summary.json'}; plots: {out / 'score_distribution.png'}, {out / 'kept_per_class.png'}")
    return 0


def _stage_size(text: str) -> float:
    """--stage-size: a fraction of N in (0, 1) or a whole count >= 1."""
    import math

    from unseen_fast.errors import UserError

    try:
        value = float(text)
    except ValueError:
        raise UserError(f"--stage-size must be a fraction in (0, 1) or a count, got {text!r}") from None
    if not math.isfinite(value) or value <= 0 or (value >= 1 and value != int(value)):
        raise UserError(f"--stage-size must be a fraction in (0, 1) or a whole count, got {text!r}")
    return value


def cmd_experiment(args: argparse.Namespace) -> int:
    """A grid of methods x prune rates x seeds: prune, train, evaluate, tabulate."""
    from unseen_fast.experiment import Grid, run_experiment

    _logging(args.quiet)
    grid = Grid.from_yaml(args.grid)
    device = _device(args)
    rows = run_experiment(grid, args.out, device=device, nproc=args.nproc, gpus=args.gpus, progress=not args.quiet)
    out = Path(args.out)
    print((out / "table.md").read_text() if (out / "table.md").exists() else "no results")
    print(f"{len(rows)} cell(s); table: {out / 'table.md'}, {out / 'results.csv'}; "
          f"plot: {out / 'accuracy_vs_prune_rate.png'}")
    return 0


def cmd_analyze(args: argparse.Namespace) -> int:
    """Score distributions, seed correlation, class ranks, class variance."""
    from unseen_fast.analyze import analyze, format_summary

    report = analyze(args.runs, args.out)
    print(format_summary(report))
    print(f"plots and analysis.json in {args.out}")
    return 0


def _whole_number(minimum: int, maximum: int | None = None):
    """An argparse type: a whole number >= ``minimum`` (and <= ``maximum``)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum or (maximum is not None and value > maximum):
            bounds = f">= {minimum}" if maximum is None else f"from {minimum} to {maximum}"
            raise argparse.ArgumentTypeError(f"expected a whole number {bounds}, got {text!r}")
        return value
    return parse


_count = _whole_number(1)    # counts and sizes
_threads = _whole_number(0)  # thread counts (0: the calling thread)
_seed = _whole_number(0, MAX_SEED)


def _positive_float(text: str) -> float:
    """argparse type of rates: a finite number > 0."""
    import math

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text!r}")
    return value


def _add_data_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="ImageFolder root (root/<class>/<image>), or builtin:digits")
    parser.add_argument("--file-list", help="'relative/path label' lines, paths relative to --data")


def _add_device_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N; auto: the GPU when one is visible")
    parser.add_argument("--gpus", type=_count, default=None, help="GPUs (one worker process each when > 1)")
    parser.add_argument("--nproc", type=_count, default=None, help="CPU worker processes (gloo)")


def _add_training_options(parser: argparse.ArgumentParser, epochs_help: str) -> None:
    """The options of every training, shared by train and prune."""
    from unseen_fast.constants import AMP_MODES, BACKENDS

    group = parser.add_argument_group("training")
    group.add_argument("--arch", default=None, help="fastnet, resnet18, resnet34, resnet50 (default: fastnet on CPU)")
    group.add_argument("--epochs", type=_count, default=10, help=epochs_help)
    group.add_argument("--batch-size", type=_count, default=256)
    group.add_argument("--lr", type=_positive_float, default=0.05, help="peak learning rate")
    group.add_argument("--image-size", type=_count, default=None, help="default: native size up to 64 px, else 224")
    group.add_argument("--amp", choices=list(AMP_MODES), default="auto", help="precision; auto: bf16 where "
                       "native, else fp16 (older GPUs) or float32 (CPUs without native bf16)")
    group.add_argument("--backend", default="auto", choices=list(BACKENDS), help="data backend (README: Data)")
    group.add_argument("--compile", action="store_true", help="torch.compile the model (measure it: docs/BENCHMARKS.md)")
    group.add_argument("--seed", type=_seed, default=0, help="fold split, model seeds, data order (default 0)")
    group.add_argument("--checkpoint-every", type=_count, default=1, help="epochs between checkpoints")
    group.add_argument("--quiet", action="store_true", help="warnings only: no progress bars or log lines")
    _add_device_options(group)


def _add_prune_options(pr: argparse.ArgumentParser) -> None:
    from unseen_fast.constants import FRAMEWORKS, SCORE_NORMS, SCORES, SELECTIONS

    pr.add_argument("--prune-rate", type=float, required=True, help="fraction of samples to remove, in (0, 1)")
    pr.add_argument("--out", required=True, help="run folder (refused if it holds another run)")
    pr.add_argument("--folds", type=_count, default=4, help="K fold models (default 4)")
    pr.add_argument("--stages", type=_count, default=2, help="J selection stages (default 2)")
    pr.add_argument("--stage-size", default="0.1", help="M_j for stages >= 2: fraction of N (< 1) or a count")
    pr.add_argument("--score", default="entropy", choices=list(SCORES), help="output scores (entropy, loss, margin, "
                    "least_confidence, el2n) under any framework; random; training-dynamics baselines (forgetting, "
                    "aum, el2n_early, dynunc, tdds) and moderate need --framework fitting --stages 1")
    pr.add_argument("--framework", default="unseen", choices=list(FRAMEWORKS),
                    help="unseen: K-1 models that never saw a sample score it; fitting: one model trained on all; "
                         "proxy: each fold model scores its own fold")
    pr.add_argument("--selection", default="global", choices=list(SELECTIONS), help="global: the hardest M (the "
                    "paper); balanced: the hardest per class; easy: the easiest per class; ccs: coverage strata; mix: "
                    "--mix-alpha of M hardest per class, the rest by strata; auto: hard or mix if its proxy "
                    "beats random's beyond noise, else random")
    pr.add_argument("--auto-budget", type=float, default=0.25, help="selection auto: the proxies train on at "
                    "most this share of the images the stage-1 models trained on (default 0.25)")
    pr.add_argument("--auto-keep-split", action="store_true", help="selection auto: never select the proxies' "
                    "validation split (by default it rejoins once the strategy is chosen)")
    pr.add_argument("--score-norm", default="rank", choices=list(SCORE_NORMS),
                    help="make the fold models' scores comparable before averaging them (rank: each model's "
                         "scores as mid-ranks in (0, 1); zscore; none: the paper's raw mean)")
    pr.add_argument("--split", default="random", choices=["random", "stratified"])
    pr.add_argument("--skip-bad", action="store_true", help="leave out unreadable images (skipped_images.txt)")
    pr.add_argument("--drop-label-issues", action="store_true", help="never select what label_issues.csv lists")
    pr.add_argument("--label-issue-factor", type=float, default=0.1,
                    help="label_issues.csv lists a sample when the models that never saw it give its label at most "
                         "this times the mean they give that class's samples (default 0.1; higher: more recall)")
    baselines = pr.add_argument_group("baseline parameters")
    baselines.add_argument("--ccs-beta", type=float, default=0.0, help="ccs: fraction removed as hardest first")
    baselines.add_argument("--ccs-strata", type=_count, default=50, help="ccs, mix: equal-width score strata")
    baselines.add_argument("--mix-alpha", type=float, default=0.5, help="mix: share of M taken as the hardest")
    baselines.add_argument("--early-epochs", type=_count, default=None,
                           help="el2n_early: first epochs averaged (default: a quarter of --epochs)")
    baselines.add_argument("--window", type=_count, default=None,
                           help="dynunc, tdds: sliding window in epochs (default: min(10, max(2, epochs // 2)))")
    baselines.add_argument("--tdds-decay", type=float, default=0.9, help="tdds: decay over windows")
    pr.add_argument("--share-models", default=None, metavar="DIR",
                    help="keep stage-1 models, scores and the decoded cache in DIR for reuse by runs that "
                         "differ only in prune rate, stages, selection or score")
    pr.add_argument("--resume", action="store_true", help="continue the run in --out")


class _Parser(argparse.ArgumentParser):
    """A bad option is one line, as every other bad input (the usage block is in --help)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from unseen_fast.constants import __version__

    parser = _Parser(prog="unseen-fast", description=__doc__)
    parser.add_argument("--version", action="version", version=f"unseen-fast {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="versions, compiled kernels, devices, DALI")
    info.add_argument("--json", action="store_true", help="print a JSON object")
    info.set_defaults(func=cmd_info)
    demo = sub.add_parser("demo", help="score, normalize and select on random logits")
    demo.add_argument("--samples", type=_count, default=100_000)
    demo.add_argument("--classes", type=_count, default=100)
    demo.add_argument("--keep", type=float, default=0.7, help="fraction to select")
    demo.add_argument("--device", default="cpu")
    demo.add_argument("--seed", type=_seed, default=0)
    demo.set_defaults(func=cmd_demo)
    check = sub.add_parser("check-data", help="decode every image and report classes, sizes and bad files")
    _add_data_options(check)
    check.add_argument("--workers", type=_threads, default=None, help="decoding threads (default: CPU count)")
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    check.set_defaults(func=cmd_check_data)
    tr = sub.add_parser("train", help="train one model (on all samples or a subset) and evaluate it")
    _add_data_options(tr)
    tr.add_argument("--out", required=True, help="run folder: checkpoint.pt, eval.json (resumed if present)")
    tr.add_argument("--subset", help="train only on these samples: .npy of sample ids, or a file list")
    tr.add_argument("--val-data", help="validation ImageFolder with the same classes")
    tr.add_argument("--val-fraction", type=float, default=0.1,
                    help="without --val-data: stratified share of the training ids held out (0: none)")
    _add_training_options(tr, "passes over the training samples")
    tr.set_defaults(func=cmd_train)
    pr = sub.add_parser("prune", help="UNSEEN pruning: K-fold unseen scoring, selection, incremental stages")
    _add_data_options(pr)
    _add_prune_options(pr)
    _add_training_options(pr, "epochs of every training (fold and stage models)")
    pr.set_defaults(func=cmd_prune)
    ex = sub.add_parser("experiment", help="methods x prune rates x seeds: prune, train final models, tabulate")
    ex.add_argument("grid", help="GRID.yaml (see docs/EXPERIMENTS.md)")
    ex.add_argument("--out", required=True, help="experiment folder (resumed cell by cell when it exists)")
    _add_device_options(ex)
    ex.add_argument("--quiet", action="store_true", help="warnings only")
    ex.set_defaults(func=cmd_experiment)
    an = sub.add_parser("analyze", help="score histograms, seed rank correlation, class rank shift, class variance")
    an.add_argument("runs", nargs="+", help="prune run folders and/or experiment folders")
    an.add_argument("--out", required=True, help="folder for the PNG plots and analysis.json")
    an.set_defaults(func=cmd_analyze)
    for command in sub.choices.values():  # an unknown option is then reported by its command's parser
        command.set_defaults(command_parser=command)
    return parser


def main(argv: list[str] | None = None) -> int:
    """The one error boundary: a problem the user can fix (UserError, which
    DataError and every bad option value are) is one line on stderr and exit
    2; anything else is a bug and keeps its traceback."""
    from unseen_fast.checkpoint import Terminated, terminate_on_sigterm
    from unseen_fast.errors import Stopped, UserError
    from unseen_fast.rundir import STORAGE_ERRNOS

    args, unknown = build_parser().parse_known_args(argv)
    if unknown:
        args.command_parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        with terminate_on_sigterm():
            return args.func(args)
    except Stopped as err:  # SIGTERM in a training, checkpoints saved: not an error of the user's
        print(f"unseen-fast {args.command}: {err}; {_continue_with(args.command)}", file=sys.stderr)
        return err.exit_code
    except UserError as err:
        print(f"unseen-fast {args.command}: error: {err}", file=sys.stderr)
        return err.exit_code
    except OSError as err:  # a read-only, forbidden or full folder met outside the checked writes
        if err.errno not in STORAGE_ERRNOS or err.filename is None:
            raise
        print(f"unseen-fast {args.command}: error: cannot write {err.filename}: {err.strerror}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as stop:  # Ctrl-C, or SIGTERM outside a training (Terminated)
        what = "stopped by SIGTERM" if isinstance(stop, Terminated) else "interrupted"
        print(f"unseen-fast {args.command}: {what}; the finished checkpoints are kept: {_continue_with(args.command)}",
              file=sys.stderr)
        return getattr(stop, "exit_code", 130)


def _continue_with(command: str) -> str:
    """How a stopped command continues: prune needs --resume (a run folder
    it finds is otherwise refused); train and experiment resume by default."""
    return "the same command" + (" with --resume" if command == "prune" else "") + " continues"


if __name__ == "__main__":
    sys.exit(main())
