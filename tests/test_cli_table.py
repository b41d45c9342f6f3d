"""Bad invocations and bad datasets, as a table: each one exits non-zero
with exactly one error line (no traceback), and leaves every file that
existed before byte-identical and no new run folder behind."""
import hashlib
import shutil

import pytest
import torch

from unseen_fast import cli

NO_GPU = not torch.cuda.is_available()


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, small_folder):
    """Datasets good and bad, a finished run, a file, a foreign folder."""
    from PIL import Image

    root = tmp_path_factory.mktemp("table")
    shutil.copytree(small_folder, root / "good")
    shutil.copytree(small_folder / "airplane", root / "oneclass" / "airplane")
    shutil.copytree(small_folder, root / "emptyclass")
    (root / "emptyclass" / "zzz").mkdir()
    shutil.copytree(small_folder, root / "badimage")
    next((root / "badimage" / "cat").iterdir()).write_bytes(b"not an image")
    shutil.copytree(small_folder, root / "badname")
    Image.new("RGB", (32, 32)).save(root / "badname" / "cat" / " leading.png")
    (root / "afile.txt").write_text("not a folder\n")
    (root / "foreign").mkdir()
    (root / "foreign" / "config.json").write_text('{"learning_rate": 3}\n')
    (root / "list.txt").write_text("airplane/does-not-exist.png 0\n")
    (root / "grid.yaml").write_text("data: [unclosed\n")
    listed = sorted(str(f.relative_to(root / "good")) for f in (root / "good").rglob("*") if f.is_file())
    (root / "dup.txt").write_text(f"{listed[0]} 0\n{listed[1]} 1\n{listed[0]} 0\n")
    (root / "onelabel.txt").write_text(f"{listed[0]} 3\n{listed[1]} 3\n")
    (root / "zero.npy").write_bytes(b"")
    (root / "early.yaml").write_text(f"data: {root / 'good'}\nmethods: {{u: {{}}}}\nprune_rates: [0.5]\nseeds: [-1]\n")
    assert cli.main(["prune", "--data", str(root / "good"), "--prune-rate", "0.5", "--epochs", "1", "--folds", "2",
                     "--stages", "1", "--out", str(root / "done"), "--quiet"]) == 0
    return root


def snapshot(root):
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def prune(data="{good}", *extra, out="{new}"):
    return ["prune", "--data", data, "--prune-rate", "0.5", "--epochs", "1", "--out", out, "--quiet", *extra]


CASES = [  # (id, argv, a piece of the one error line)
    ("prune-rate 0", prune() + ["--prune-rate", "0"], "prune rate must be in (0, 1)"),
    ("prune-rate 1", prune() + ["--prune-rate", "1"], "prune rate must be in (0, 1)"),
    ("prune-rate negative", prune() + ["--prune-rate", "-0.5"], "prune rate must be in (0, 1)"),
    ("prune-rate text", prune() + ["--prune-rate", "half"], "--prune-rate"),
    ("prune-rate nan", prune() + ["--prune-rate", "nan"], "prune"),
    ("stage-size text", prune() + ["--stage-size", "abc"], "--stage-size must be a fraction"),
    ("stage-size inf", prune() + ["--stage-size", "inf"], "--stage-size must be a fraction"),
    ("stage-size 2.5", prune() + ["--stage-size", "2.5"], "--stage-size must be a fraction"),
    ("stage-size 0", prune() + ["--stage-size", "0"], "--stage-size must be a fraction"),
    ("epochs 0", prune() + ["--epochs", "0"], "--epochs"),
    ("epochs negative", prune() + ["--epochs", "-1"], "--epochs"),
    ("batch-size 0", prune() + ["--batch-size", "0"], "--batch-size"),
    ("lr nan", prune() + ["--lr", "nan"], "--lr"),
    ("lr negative", prune() + ["--lr", "-1"], "--lr"),
    ("folds 1", prune() + ["--folds", "1"], "need at least 2 folds"),
    ("folds text", prune() + ["--folds", "x"], "--folds"),
    ("folds beyond samples", prune() + ["--folds", "100000"], "folds for"),
    ("nproc negative", prune() + ["--nproc", "-2"], "--nproc"),
    ("image-size 0", prune() + ["--image-size", "0"], "--image-size"),
    ("stages 0", prune() + ["--stages", "0"], "--stages"),
    ("unknown score", prune() + ["--score", "entropi"], "--score"),
    ("unknown framework", prune() + ["--framework", "nope"], "--framework"),
    ("unknown selection", prune() + ["--selection", "nope"], "--selection"),
    ("dynamics score without fitting", prune() + ["--score", "forgetting"], "use framework 'fitting'"),
    ("auto with random scores", prune() + ["--selection", "auto", "--score", "random"], "--selection auto"),
    ("label issues without unseen", prune() + ["--drop-label-issues", "--framework", "fitting", "--stages", "1"],
     "--drop-label-issues needs framework 'unseen'"),
    ("label-issue-factor 0", prune() + ["--label-issue-factor", "0"], "label issue factor must be in (0, 1]"),
    ("auto-budget 2", prune() + ["--auto-budget", "2"], "auto budget must be in (0, 1]"),
    ("mix-alpha 1.5", prune() + ["--mix-alpha", "1.5"], "mix"),
    ("ccs-beta 1.5", prune() + ["--ccs-beta", "1.5"], "ccs"),
    ("missing data folder", prune("{root}/missing"), "does not exist"),
    ("data is a file", prune("{root}/afile.txt"), "is not a folder"),
    ("one class", prune("{root}/oneclass"), "has 1 class(es), pruning needs at least 2"),
    ("an empty class", prune("{root}/emptyclass"), "contain no images"),
    ("an unreadable image", prune("{root}/badimage"), "unreadable image(s)"),
    ("a name a file list cannot hold", prune("{root}/badname"), "cannot be written to a text file list"),
    ("unknown built-in", prune("builtin:mnist"), "unknown built-in dataset"),
    ("file list naming a missing file", prune() + ["--file-list", "{root}/list.txt"], "does-not-exist.png"),
    ("missing file list", prune() + ["--file-list", "{root}/nolist.txt"], "nolist.txt"),
    ("file list of one label", prune() + ["--file-list", "{root}/onelabel.txt"],  # not "use --data .../3"
     "the file list gives 1 label(s) (3), pruning needs at least 2"),
    ("out is a file", prune(out="{root}/afile.txt"), "afile.txt"),
    ("out is a finished run, no --resume", prune(out="{root}/done") + ["--folds", "2", "--stages", "1"],
     "--resume"),
    ("resume with another dataset", prune("builtin:digits", out="{root}/done") + ["--resume", "--folds", "2",
                                                                                 "--stages", "1"],
     "the dataset changed: classes differ"),  # was "train.image_size: saved 32, now 8"
    ("resume with another config", prune(out="{root}/done") + ["--resume", "--prune-rate", "0.3"],
     "different configuration"),
    ("out holds another program's config", prune(out="{root}/foreign"), "config.json"),
    ("check-data missing folder", ["check-data", "--data", "{root}/missing"], "does not exist"),
    ("train with an empty subset", ["train", "--data", "{good}", "--subset", "{root}/empty.npy", "--out", "{new}"],
     "subset"),
    ("experiment with a bad grid", ["experiment", "{root}/grid.yaml", "--out", "{new}"], "is not valid YAML"),
    ("experiment with a missing grid", ["experiment", "{root}/nogrid.yaml", "--out", "{new}"], "cannot read"),
    ("gpus with nproc", prune() + ["--gpus", "1", "--nproc", "2"], "--gpus 1 and --nproc 2"),
    ("out inside the data", prune(out="{good}/runs/p1"), "lies inside the dataset"),
    ("an unknown arch", prune("{good}", "--arch", "resnet99"), "unknown arch 'resnet99'"),
    ("an image size the network cannot take", prune("{good}", "--image-size", "3"), "--image-size 3 does not fit"),
    ("train with an unknown arch", ["train", "--data", "{good}", "--arch", "resnet99", "--out", "{new}"],
     "unknown arch 'resnet99'"),
    ("train out inside the data", ["train", "--data", "{good}", "--out", "{good}/t"], "lies inside the dataset"),
    ("a device name torch does not know", prune() + ["--device", "gpu"], "--device 'gpu' is not a device"),
    ("share-models inside the data", prune() + ["--share-models", "{good}/shared"],
     "images of a class 'shared'; put it outside"),
    ("a negative seed", prune() + ["--seed", "-1"], "--seed: expected a whole number from 0 to 2147483647"),
    ("a seed past the largest", prune() + ["--seed", "99999999999999999999"], "--seed"),
    ("train with a negative seed", ["train", "--data", "{good}", "--seed", "-1", "--out", "{new}"], "--seed"),
    ("early epochs beyond the training", prune() + ["--score", "el2n_early", "--framework", "fitting", "--stages",
                                                    "1", "--epochs", "2", "--early-epochs", "50"],
     "early_epochs 50 > the 2 epochs the model trains"),
    ("window beyond the training", prune() + ["--score", "dynunc", "--framework", "fitting", "--stages", "1",
                                              "--epochs", "2", "--window", "5"], "window 5 > the 2 epochs"),
    ("train with a 0-byte subset", ["train", "--data", "{good}", "--subset", "{root}/zero.npy", "--out", "{new}"],
     "zero.npy is not a .npy array of sample ids"),
    ("a file list naming a file twice", prune() + ["--file-list", "{root}/dup.txt"], "dup.txt:3:"),
    ("a file list with the built-in data", prune("builtin:digits") + ["--file-list", "{root}/dup.txt"],
     "built-in dataset builtin:digits has none"),
    ("a file list that is a folder", prune() + ["--file-list", "{root}/foreign"], "is a folder, not a file"),
    ("train with a bad validation image", ["train", "--data", "{good}", "--val-data", "{root}/badimage", "--out",
                                           "{new}"], "1 unreadable image(s), first"),
    ("train with a missing validation folder", ["train", "--data", "{good}", "--val-data", "{root}/missing",
                                                "--out", "{new}"], "--val-data: "),
    ("experiment with a negative seed", ["experiment", "{root}/early.yaml", "--out", "{new}"],
     "seeds and split_seed must be a whole number from 0 to 2147483647, got -1"),
    ("demo on a device name torch does not know", ["demo", "--device", "gpu"], "is not a device"),
]
if NO_GPU:
    CASES += [("gpus without a GPU", prune() + ["--gpus", "1"], "--gpus asked for a GPU"),
              ("device cuda without a GPU", prune() + ["--device", "cuda"], "GPU")]


def test_the_table_is_long_enough():
    assert len(CASES) >= 40


@pytest.mark.parametrize("argv", [c[1] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_invocation(workspace, tmp_path, capsys, argv):
    import numpy as np

    np.save(workspace / "empty.npy", np.zeros(0, dtype=np.int64))
    expected = next(c[2] for c in CASES if c[1] is argv)
    new = tmp_path / "new-run"
    argv = [a.format(root=workspace, good=workspace / "good", new=new) for a in argv]
    before = snapshot(workspace)
    try:
        code = cli.main(argv)
    except SystemExit as stop:  # argparse's own errors
        code = stop.code
    err = capsys.readouterr().err
    assert code not in (0, None), f"exit {code} for {argv}"
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1, err
    assert errors[0].startswith("unseen-fast") and expected in errors[0], errors[0]
    assert snapshot(workspace) == before, "a file that existed before changed"
    assert not new.exists(), "a run folder was left behind"
