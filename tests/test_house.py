"""The shared plumbing: one error boundary in the CLI, atomic files, run
folders, and the one list of score methods."""
import json
import re

import numpy as np
import pytest
import torch

from unseen_fast import _C, cli, ops, reference
from unseen_fast.errors import UserError
from unseen_fast.rundir import RunDir, atomic_path, config_diff, save_npy, write_json


@pytest.mark.parametrize("args, message", [
    (["--stage-size", "abc"], "--stage-size must be a fraction in (0, 1) or a count, got 'abc'"),
    (["--stage-size", "inf"], "--stage-size must be a fraction in (0, 1) or a whole count, got 'inf'"),
    (["--stage-size", "2.5"], "--stage-size must be a fraction in (0, 1) or a whole count, got '2.5'"),
    (["--prune-rate", "1.5"], "prune rate must be in (0, 1), got 1.5"),
])
def test_user_errors_are_one_line_and_leave_no_folder(tmp_path, capsys, args, message):
    base = ["prune", "--data", "builtin:digits", "--prune-rate", "0.3", "--out", str(tmp_path / "run")]
    assert cli.main(base + args) == 2
    err = capsys.readouterr().err
    assert err == f"unseen-fast prune: error: {message}\n"
    assert not (tmp_path / "run").exists()  # refused before anything was written


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_asking_for_a_gpu_without_one_is_one_line(tmp_path, capsys):
    argv = ["prune", "--data", "builtin:digits", "--prune-rate", "0.3", "--out", str(tmp_path / "run"), "--gpus", "1"]
    assert cli.main(argv) == 2
    assert "--gpus asked for a GPU, but torch sees none" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_unexpected_errors_keep_their_traceback(monkeypatch):
    def broken(args):
        raise RuntimeError("a bug")

    monkeypatch.setattr(cli, "cmd_info", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        cli.main(["info"])


def test_interrupts_and_unwritable_folders_are_one_line(monkeypatch, tmp_path, capsys):
    """Ctrl-C and SIGTERM say how each command continues (exit 130, 143); a
    read-only or forbidden folder met by a plain write names the file; other
    OS errors stay bugs."""
    import errno
    import os

    def raising(error):
        def command(args):
            raise error
        return command

    monkeypatch.setattr(cli, "cmd_prune", raising(KeyboardInterrupt()))
    argv = ["prune", "--data", "builtin:digits", "--prune-rate", "0.3", "--out", str(tmp_path / "run")]
    assert cli.main(argv) == 130
    assert capsys.readouterr().err.strip() == ("unseen-fast prune: interrupted; the finished checkpoints are kept: "
                                               "the same command with --resume continues")
    from unseen_fast.errors import Stopped

    stop = Stopped("training model stopped by SIGTERM after epoch 1/3 (checkpoint saved)")
    monkeypatch.setattr(cli, "cmd_train", raising(stop))  # train resumes without --resume (it used to say prune's)
    assert cli.main(["train", "--data", "builtin:digits", "--out", str(tmp_path / "t")]) == 143
    assert capsys.readouterr().err.strip() == ("unseen-fast train: training model stopped by SIGTERM after epoch 1/3 "
                                               "(checkpoint saved); the same command continues")
    monkeypatch.setattr(cli, "cmd_experiment", raising(KeyboardInterrupt()))
    assert cli.main(["experiment", "grid.yaml", "--out", str(tmp_path / "e")]) == 130
    assert capsys.readouterr().err.strip().endswith("kept: the same command continues")
    monkeypatch.setattr(cli, "cmd_info", raising(OSError(errno.EROFS, "Read-only file system", "/ro/run/.lock")))
    assert cli.main(["info"]) == 2
    assert capsys.readouterr().err.strip() == "unseen-fast info: error: cannot write /ro/run/.lock: Read-only file system"
    monkeypatch.setattr(cli, "cmd_info", raising(OSError(errno.ENOENT, "No such file", "/gone")))
    with pytest.raises(FileNotFoundError):
        cli.main(["info"])
    if os.geteuid() != 0:  # root writes through permissions: the real folder only checks as a user
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o555)
        assert cli.main(["prune", "--data", "builtin:digits", "--prune-rate", "0.3", "--out", str(locked)]) == 2
        assert "cannot write" in capsys.readouterr().err


def test_sigterm_outside_a_training_is_one_line_and_resume_finishes(tmp_path):
    """SIGTERM during scoring (after the fold models trained, between the
    score files' writes): one line, exit 143 as inside a training, no
    coreset; --resume gives the coreset of an uninterrupted run."""
    import subprocess
    import sys

    args = ["prune", "--data", "builtin:digits", "--prune-rate", "0.3", "--epochs", "2", "--quiet", "--seed", "3"]
    out = tmp_path / "run"
    code = ("import os, signal, sys\n"
            "from unseen_fast import pipeline as p\n"
            "real = p.combine_scores\n"
            "def combine(*a):\n"
            "    os.kill(os.getpid(), signal.SIGTERM)\n"
            "    return real(*a)\n"
            "p.combine_scores = combine\n"
            "from unseen_fast.cli import main\n"
            f"sys.exit(main({args + ['--out', str(out)]!r}))\n")
    stopped = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert stopped.returncode == 143, stopped.stderr[-2000:]
    assert stopped.stderr.strip().splitlines()[-1] == ("unseen-fast prune: stopped by SIGTERM; the finished "
                                                       "checkpoints are kept: the same command with --resume continues")
    assert "Traceback" not in stopped.stderr and not (out / "coreset.npy").exists()
    cli_command = [sys.executable, "-m", "unseen_fast.cli"]
    assert subprocess.run(cli_command + args + ["--out", str(out), "--resume"], capture_output=True).returncode == 0
    assert subprocess.run(cli_command + args + ["--out", str(tmp_path / "straight")], capture_output=True).returncode == 0
    assert np.array_equal(np.load(out / "coreset.npy"), np.load(tmp_path / "straight" / "coreset.npy"))


def test_a_bad_option_is_one_line(capsys):
    """argparse's own errors too: no usage block before the message."""
    with pytest.raises(SystemExit) as stop:
        cli.main(["prune", "--data", "builtin:digits", "--prune-rate", "0.3"])
    assert stop.value.code == 2
    assert capsys.readouterr().err == ("unseen-fast prune: error: the following arguments are required: --out "
                                       "(see unseen-fast prune --help)\n")
    with pytest.raises(SystemExit):
        cli.main(["train", "--data", "builtin:digits", "--out", "x", "--epoch", "2", "--bogus"])
    assert capsys.readouterr().err == ("unseen-fast train: error: unrecognized arguments: --bogus "
                                       "(see unseen-fast train --help)\n")


def test_bad_grid_files_are_user_errors(tmp_path, capsys):
    (tmp_path / "grid.yaml").write_text("data: [unclosed\n")
    assert cli.main(["experiment", str(tmp_path / "grid.yaml"), "--out", str(tmp_path / "exp")]) == 2
    assert "is not valid YAML" in capsys.readouterr().err
    assert cli.main(["experiment", str(tmp_path / "missing.yaml"), "--out", str(tmp_path / "exp")]) == 2
    assert "cannot read the grid" in capsys.readouterr().err


def test_a_full_disk_is_one_line_naming_the_file_and_the_space(tmp_path, monkeypatch):
    import errno

    save_npy(tmp_path / "a.npy", np.arange(3))

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "save", full)
    with pytest.raises(UserError, match=r"cannot write .*a.npy \(80 bytes\): No space left on device; [\d,]+ bytes "
                                        r"free there; the previous version, if any, is kept"):
        save_npy(tmp_path / "a.npy", np.arange(10))
    monkeypatch.undo()
    assert np.load(tmp_path / "a.npy").tolist() == [0, 1, 2] and len(list(tmp_path.iterdir())) == 1

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(np, "save", read_only)  # the free bytes of a read-only mount (often 0) were said too
    with pytest.raises(UserError, match=r"cannot write .*a.npy \(80 bytes\): Read-only file system; the previous "
                                        r"version, if any, is kept$"):
        save_npy(tmp_path / "a.npy", np.arange(10))


def test_reserving_a_file_on_a_full_disk_is_one_line(tmp_path, monkeypatch):
    """Files written through memory maps (the decoded cache, dynamics) are
    reserved first: a full disk is a UserError then, not a SIGBUS later."""
    import errno
    import os

    from unseen_fast.rundir import allocate

    allocate(tmp_path / "ok.u8", 1000)
    assert (tmp_path / "ok.u8").stat().st_size == 1000

    def full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    with pytest.raises(UserError, match=r"cannot write .*big.u8 \(5,000 bytes\): No space left on device"):
        allocate(tmp_path / "big.u8", 5000)
    assert not (tmp_path / "big.u8").exists()


@pytest.mark.parametrize("data, disk", [("builtin:digits", "3m"), ("small_folder", "256k")])
def test_a_prune_onto_a_full_disk_stops_in_one_line(request, tmp_path, data, disk):
    """A real small disk (tmpfs; needs root, else skipped): the checkpoint
    (digits) or the decoded cache (a folder) does not fit. Once a torch.save
    traceback and a SIGBUS (exit 135) with no message."""
    import os
    import subprocess
    import sys

    small = tmp_path / "small"
    small.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={disk}", "tmpfs", str(small)],
                                           capture_output=True).returncode != 0:
        pytest.skip("needs root to mount a small tmpfs")
    try:
        source = data if data.startswith("builtin:") else str(request.getfixturevalue(data))
        args = ["prune", "--data", source, "--prune-rate", "0.3", "--epochs", "1", "--out", str(small / "run"),
                "--quiet"]
        done = subprocess.run([sys.executable, "-c", f"import sys; from unseen_fast.cli import main; "
                               f"sys.exit(main({args!r}))"], capture_output=True, text=True)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and len(lines) == 1, done.stderr[-3000:]
        assert "No space left on device" in lines[0] and "bytes free there" in lines[0]
        assert not [path for path in small.rglob("*") if ".tmp." in path.name]  # no half-written file left
    finally:
        subprocess.run(["umount", str(small)], check=True)


def test_atomic_files_keep_the_old_version_on_failure(tmp_path):
    path = tmp_path / "a.json"
    write_json(path, {"v": 1})
    with pytest.raises(ZeroDivisionError):
        with atomic_path(path) as tmp:
            tmp.write_text("half")
            1 / 0
    assert json.loads(path.read_text()) == {"v": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]  # no temporary left behind
    save_npy(tmp_path / "x.npy", np.arange(3))
    assert np.load(tmp_path / "x.npy").tolist() == [0, 1, 2]


def test_run_folder_claim(tmp_path):
    run = RunDir(tmp_path / "run")
    assert run.claim({"a": 1}, resume=False) is False
    run.unlock()
    with pytest.raises(UserError, match="already holds a run of this configuration; pass --resume"):
        RunDir(tmp_path / "run").claim({"a": 1}, resume=False)
    with pytest.raises(UserError, match=r"different configuration \(a: saved 1, now 2\)"):
        RunDir(tmp_path / "run").claim({"a": 2}, resume=True)
    again = RunDir(tmp_path / "run")
    assert again.claim({"a": 1}, resume=True) is True
    with pytest.raises(UserError, match="in use by another unseen-fast process"):
        RunDir(tmp_path / "run").claim({"a": 1}, resume=True)
    again.unlock()
    assert config_diff({"t": {"lr": 1}}, {"t": {"lr": 2}}) == "t.lr: saved 1, now 2"


def test_score_methods_come_from_the_one_list_in_the_extension():
    listed = _C.score_methods()
    assert ops.METHODS == tuple(name for name, _ in listed)
    assert ops.LABEL_FREE_METHODS == {"entropy", "least_confidence", "margin"}
    logits, labels = torch.randn(5, 4), torch.randint(0, 4, (5,))
    for code, (name, needs_label) in enumerate(listed):  # every listed method has a reference and runs
        got = ops.score(logits, labels, [name])
        assert torch.allclose(got.double(), reference.score(logits, labels, [name]), atol=1e-5)
        if needs_label:
            with pytest.raises(RuntimeError, match=f"method '{name}' needs labels"):
                ops.score(logits, None, [name])


# docs/ARCHITECTURE.md: each module imports only its own floor or below.
FLOORS = {"errors": 0, "constants": 0, "rundir": 0, "_extension": 0, "_C": 0, "data": 1, "ops": 2, "reference": 2,
          "fused_loss": 3, "dynamics": 3, "models": 3, "checkpoint": 3, "progress": 3, "precise_bn": 3, "train": 4, "parallel": 4, "splits": 4, "evaluate": 5,
          "baselines": 5, "fold_scores": 5, "selection": 5, "stage1": 6, "outputs": 6, "label_issues": 6,
          "auto_selection": 6, "usable_images": 6, "pipeline": 7,
          "grid": 8, "experiment": 8, "analyze": 8, "info": 8, "demo": 8, "cli": 9}


def test_imports_flow_downward():
    import ast
    from pathlib import Path

    import unseen_fast

    package = Path(unseen_fast.__file__).parent
    upward = []
    for path in sorted(package.rglob("*.py")):
        module = path.relative_to(package).parts[0].removesuffix(".py")
        if module == "__init__":
            continue
        assert module in FLOORS, f"{path}: place the new module on a floor (docs/ARCHITECTURE.md, FLOORS here)"
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "unseen_fast":
                parts = node.module.split(".")
                targets = [parts[1]] if len(parts) > 1 else [alias.name for alias in node.names]
                for target in targets:
                    if FLOORS.get(target, 99) > FLOORS[module]:
                        upward.append(f"{path.relative_to(package)} imports {target}")
    assert not upward, upward


@pytest.mark.parametrize("capability, expected", [((7, 0), "fp16"), ((7, 5), "fp16"), ((8, 0), "bf16"), ((9, 0), "bf16")])
def test_auto_precision_follows_the_gpu(monkeypatch, capability, expected):
    """bf16 on GPUs that compute it (Ampere on), fp16 before: decided by the
    asked device's compute capability, not torch.cuda.is_bf16_supported(),
    which also says yes where bf16 is only emulated."""
    import torch

    from unseen_fast import constants

    asked = []
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: asked.append(device) or capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert constants.resolve_amp("auto", "cuda:1") == expected and asked == [torch.device("cuda:1")]


@pytest.mark.parametrize("native, expected", [(True, "bf16"), (False, "off")])
def test_auto_precision_follows_the_cpu(monkeypatch, tmp_path, native, expected):
    """bf16 autocast only where the CPU computes bf16 natively (on an AMD EPYC
    without it, bf16 trained fastnet 4.2x slower than float32); the run
    records the concrete choice, not "auto"."""
    from unseen_fast import constants
    from unseen_fast.pipeline import PruneConfig, prune
    from unseen_fast.train import TrainConfig

    monkeypatch.setattr(constants, "cpu_has_native_bf16", lambda: native)
    assert constants.resolve_amp("auto", "cpu") == expected
    assert constants.resolve_amp("fp16", "cpu") == "fp16"  # an explicit choice is kept
    config = PruneConfig(prune_rate=0.5, stages=1, train=TrainConfig(epochs=1, batch_size=128, image_size=8))
    summary = prune("builtin:digits", out=tmp_path / "run", config=config)
    assert summary["precision"] == expected and summary["device"] == "cpu"
    assert json.loads((tmp_path / "run" / "config.json").read_text())["config"]["train"]["amp"] == expected
    with pytest.raises(ValueError, match="resolve 'auto'"):
        constants.amp_dtype("auto")


@pytest.mark.parametrize("args", [["--epochs", "0"], ["--batch-size", "-3"], ["--lr", "nan"], ["--lr", "1e400"],
                                  ["--folds", "x"], ["--nproc", "-2"], ["--image-size", "0"], ["--stages", "0"]])
def test_numeric_options_are_checked_by_the_parser(tmp_path, capsys, args):
    base = ["prune", "--data", "builtin:digits", "--prune-rate", "0.3", "--out", str(tmp_path / "run")]
    with pytest.raises(SystemExit) as exit_info:
        cli.main(base + args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1].startswith(f"unseen-fast prune: error: argument {args[0]}: expected")
    assert "Traceback" not in err and not (tmp_path / "run").exists()


def test_divergence_stops_the_job_naming_epoch_and_learning_rate(tmp_path, capsys):
    argv = ["prune", "--data", "builtin:digits", "--prune-rate", "0.3", "--out", str(tmp_path / "run"),
            "--epochs", "3", "--batch-size", "64", "--lr", "1e6", "--amp", "off"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "diverged in epoch" in err and "(now 1000000.0)" in err, err
    assert not (tmp_path / "run" / "coreset.npy").exists()  # NaN never reaches selection


def test_bad_values_for_the_ops_and_the_data_are_refused():
    with pytest.raises(UserError, match=r"k must be an int \(a number of samples\), got 2.5 \(float\)"):
        ops.select_topk(torch.rand(10), 2.5)
    assert ops.select_topk(torch.rand(10), torch.tensor(3)).numel() == 3  # a count computed with tensors
    # lists and NumPy arrays: one line each (a trial met AttributeErrors and schema dumps)
    for call, message in [(lambda: ops.score(np.zeros((4, 3), np.float32)), "score: logits must be a torch.Tensor, "
                                                                           "got numpy.ndarray"),
                          (lambda: ops.score(torch.zeros(4, 3), [0, 1, 2, 0], "loss"), "score: labels must be a "
                                                                                       "torch.Tensor, got builtins.list"),
                          (lambda: ops.normalize([0.5, 0.5]), "normalize: scores must be a torch.Tensor"),
                          (lambda: ops.select_topk(np.ones(5), 2), "select_topk: scores must be a torch.Tensor"),
                          (lambda: ops.select_topk(torch.ones(5), 2, exclude=[True] * 5), "exclude must be a")]:
        with pytest.raises(UserError, match=message):
            call()
    with pytest.raises(UserError, match=r"score at flat index 1 is -0.5; importances must be >= 0"):
        ops.normalize(torch.tensor([0.2, -0.5, 1.0]))
    from unseen_fast.data import ImageIndex
    from unseen_fast.pipeline import PruneConfig

    # the Python API's wrong types: one line, before any folder (folds=2.0 failed after claiming it)
    for kwargs, message in [(dict(prune_rate="0.3"), "prune_rate must be a number, got '0.3'"),
                            (dict(prune_rate=0.3, folds=2.0), "folds must be a whole number, got 2.0"),
                            (dict(prune_rate=0.3, stages=True), "stages must be a whole number, got True"),
                            (dict(prune_rate=0.3, train=dict(epochs=1)), "train must be a TrainConfig, got {'epochs'")]:
        with pytest.raises(UserError, match=re.escape(message)):
            PruneConfig(**kwargs)
    numpy_config = PruneConfig(prune_rate=np.float32(0.5), folds=np.int64(3))  # NumPy scalars become plain numbers
    assert type(numpy_config.prune_rate) is float and type(numpy_config.folds) is int

    digits = ImageIndex.digits()
    one_class = ImageIndex(root="/data/cifar10", paths=digits.paths[:50], labels=np.zeros(50, np.int64),
                           classes=["train"], source="folder")
    with pytest.raises(UserError, match=r"1 class\(es\), pruning needs at least 2; .*use --data /data/cifar10/train"):
        PruneConfig(prune_rate=0.3).validate(one_class)
    gap = ImageIndex(root=None, paths=digits.paths, labels=np.minimum(digits.labels, 8), classes=digits.classes,
                     source="digits", images=digits.images)
    with pytest.raises(UserError, match=r"class\(es\) '9' have no samples"):
        PruneConfig(prune_rate=0.3).validate(gap)


def test_check_data_names_the_builtin_dataset(capsys):
    assert cli.main(["check-data", "--data", "builtin:digits"]) == 0
    assert capsys.readouterr().out.startswith("dataset builtin:digits (in memory): 1797 images in 10 classes")


def test_training_on_an_empty_subset_is_refused(tmp_path, capsys):
    np.save(tmp_path / "none.npy", np.zeros(0, dtype=np.int64))
    argv = ["train", "--data", "builtin:digits", "--subset", str(tmp_path / "none.npy"), "--out", str(tmp_path / "m")]
    assert cli.main(argv) == 2
    assert "names no samples; nothing to train on" in capsys.readouterr().err


def test_paths_of_the_wrong_kind_are_one_line(tmp_path, capsys):
    """What a new user mistypes: a --subset that is missing, a folder or not
    ids; an --out or --share-models that is a file; a train --out that holds
    a prune run; a one-class demo. Each is one line and exit 2, nothing claimed."""
    afile = tmp_path / "afile"
    afile.write_text("x")
    pickled = tmp_path / "pickled.npy"
    np.save(pickled, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    (tmp_path / "binary.txt").write_bytes(b"\xff\xfe\x00\x81")
    (tmp_path / "list.txt").write_text("nope/x.jpg 3\n")
    train = ["train", "--data", "builtin:digits", "--epochs", "1", "--quiet"]
    cases = [
        (train + ["--subset", str(tmp_path / "missing.npy"), "--out", str(tmp_path / "t1")], "missing.npy: no such file"),
        (train + ["--subset", str(tmp_path), "--out", str(tmp_path / "t2")], "a folder, not a file"),
        (train + ["--subset", str(pickled), "--out", str(tmp_path / "t3")], "is not a .npy array of sample ids"),
        (train + ["--subset", str(tmp_path / "binary.txt"), "--out", str(tmp_path / "t4")], "nor a UTF-8 file list"),
        (train + ["--subset", str(tmp_path / "list.txt"), "--out", str(tmp_path / "t5")],
         "list.txt:1: 'nope/x.jpg' is not a sample of the built-in digits dataset"),
        (train + ["--out", str(afile)], "is a file, not a folder; choose another --out"),
        (["analyze", str(tmp_path), "--out", str(afile / "sub")], "is a file, not a folder"),
        (["prune", "--data", "builtin:digits", "--prune-rate", "0.3", "--out", str(tmp_path / "p"),
          "--share-models", str(afile)], "--share-models " + str(afile)),
        (["demo", "--classes", "1", "--samples", "10"], "--classes >= 2, got 10, 1"),
    ]
    for argv, message in cases:
        assert cli.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, (argv, err)
    assert not (tmp_path / "p").exists()  # --out was not claimed by the refused --share-models
    grid = tmp_path / "grid.yaml"
    grid.write_text("data: builtin:digits\nmethods: [random]\nprune_rates: [0.3]\nseeds: [0]\n")
    assert cli.main(["experiment", str(grid), "--out", str(tmp_path / "e")]) == 2
    assert "methods must be a mapping, got ['random']" in capsys.readouterr().err
    grid.write_text("data: builtin:digits\nmethods: {random: random}\nprune_rates: [0.3]\nseeds: [0]\n")
    assert cli.main(["experiment", str(grid), "--out", str(tmp_path / "e")]) == 2
    assert "method 'random' must map to its options" in capsys.readouterr().err
    grid.write_text("data: builtin:digits\nmethods: {random: {score: random}}\nprune_rates: [0.3]\nseeds: [0]\n")
    assert cli.main(["experiment", str(grid), "--out", str(afile)]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    run = tmp_path / "run"
    prune = ["prune", "--data", "builtin:digits", "--prune-rate", "0.3", "--epochs", "1", "--folds", "2",
             "--quiet", "--out", str(run)]
    assert cli.main(prune) == 0
    capsys.readouterr()
    assert cli.main(train + ["--out", str(run)]) == 2
    assert "holds an unseen-fast prune run (config.json); train into another --out" in capsys.readouterr().err
    assert not (run / "checkpoint.pt").exists()


def test_a_worker_error_the_user_can_fix_keeps_its_kind():
    from unseen_fast.data import BadImageError, DataError
    from unseen_fast.errors import Stopped, user_error_named

    assert user_error_named("DataError") is DataError and user_error_named("BadImageError") is BadImageError
    assert user_error_named("Stopped") is Stopped and user_error_named("UserError") is UserError
    assert user_error_named("RuntimeError") is None and user_error_named("ValueError") is None
    assert Stopped.exit_code == 143 and DataError.exit_code == 2


def test_gpu_counts_and_compiled_jobs_are_planned_before_any_worker(monkeypatch):
    """--gpus above the visible GPUs is one line (not a worker dying on an
    invalid ordinal); compiled jobs on one GPU train one after another
    (Dynamo is not thread-safe), the others concurrently on streams."""
    from unseen_fast import parallel
    from unseen_fast.parallel import TrainJob, train_many, training_device
    from unseen_fast.train import TrainConfig

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(UserError, match=r"--gpus 2: torch sees 1 GPU\(s\) on this machine"):
        training_device("auto", 2, None)
    assert training_device("auto", 1, None).type == "cuda"
    calls = []
    monkeypatch.setattr(parallel, "concurrently", lambda jobs, *a, **k: calls.append(("streams", len(jobs))))
    monkeypatch.setattr(parallel, "_run_job", lambda job, *a, **k: calls.append(("one", job.name)))
    jobs = [TrainJob(f"fold{k}", np.arange(3), f"/nonexistent/fold{k}") for k in range(2)]
    train_many(jobs, TrainConfig(), None, device="cuda")
    train_many(jobs, TrainConfig(compile=True), None, device="cuda")
    assert calls == [("streams", 2), ("one", "fold0"), ("one", "fold1")]


def test_the_prune_log_opens_with_device_and_precision(tmp_path, caplog):
    """The README's promise: the first line says where and in what precision
    the run trains (before the image-size line and every check's own)."""
    import logging

    caplog.set_level(logging.INFO)
    argv = ["prune", "--data", "builtin:digits", "--prune-rate", "0.3", "--epochs", "1", "--folds", "2",
            "--out", str(tmp_path / "run")]
    assert cli.main(argv) == 0
    messages = [r.getMessage() for r in caplog.records if r.name.startswith("unseen_fast")]
    assert messages[0].startswith("pruning 1797 samples on cpu, precision "), messages[:3]
    assert any(m.startswith("image size 8 px") for m in messages[1:])
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["config"]["train"]["image_size"] == 8  # still resolved from the data, now inside prune
