"""The Python API where researchers run it: plain scripts without a
``__main__`` guard and ``python -c``, with no worker process re-importing
the caller's script."""
import shutil
import subprocess
import sys
import textwrap


def run_python(args, cwd):
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=600)


def test_prune_from_a_plain_script_without_a_main_guard(small_folder, tmp_path):
    script = tmp_path / "prune_it.py"
    script.write_text(textwrap.dedent(f"""
        from unseen_fast import ImageIndex, PruneConfig, TrainConfig, prune
        summary = prune(ImageIndex.from_folder({str(small_folder)!r}), out="out",
                        config=PruneConfig(prune_rate=0.3, folds=2, stages=1,
                                           train=TrainConfig(epochs=1, batch_size=16, backend="cache")))
        print("kept", summary["coreset_size"])
    """))
    done = run_python([str(script)], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "kept 91" in done.stdout  # floor(130 * 0.7)
    assert (tmp_path / "out" / "coreset.txt").exists()


def test_make_loader_from_python_c(small_folder, tmp_path):
    code = ("import numpy as np; from unseen_fast.data import ImageIndex, make_loader; "
            f"index = ImageIndex.from_folder({str(small_folder)!r}); "
            "loader = make_loader(index, np.arange(len(index)), train=True, batch_size=32, image_size=32, "
            "backend='cache', cache_dir='cache'); print(sum(len(ids) for _, _, ids in loader))")
    done = run_python(["-c", code], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "130"


def test_a_lambda_model_factory_works_in_process_and_is_refused_for_workers(tmp_path):
    import pytest

    from unseen_fast import ImageIndex, PruneConfig, TrainConfig, prune
    from unseen_fast.errors import UserError
    from unseen_fast.models import FastNet

    digits = ImageIndex.digits()
    config = PruneConfig(prune_rate=0.5, stages=1, train=TrainConfig(epochs=1, batch_size=128, image_size=8))
    factory = lambda num_classes: FastNet(num_classes, widths=(8, 16, 32))  # noqa: E731  (as in a notebook)
    summary = prune(digits, out=tmp_path / "inline", config=config, model_factory=factory)
    assert summary["coreset_size"] == 898
    with pytest.raises(UserError, match="cannot be sent to the 2 worker processes.*define it in an importable module"):
        prune(digits, out=tmp_path / "workers", config=config, model_factory=factory, nproc=2)
    assert not (tmp_path / "workers").exists()  # refused before the folder is claimed: the same call without
    # nproc may use it


def test_prune_returns_a_readable_result(tmp_path):
    import json

    import numpy as np

    from unseen_fast import ImageIndex, PruneConfig, TrainConfig, prune

    config = PruneConfig(prune_rate=0.5, stages=1, train=TrainConfig(epochs=1, batch_size=128, image_size=8))
    result = prune(ImageIndex.digits(), out=tmp_path / "run", config=config)
    assert result == json.loads((tmp_path / "run" / "summary.json").read_text())  # still the summary dict
    assert np.array_equal(result.coreset, np.load(tmp_path / "run" / "coreset.npy"))
    assert result.file_list == tmp_path / "run" / "coreset.txt" and result.run_dir == tmp_path / "run"
    text = repr(result)
    assert text.startswith("PruneResult: kept 898 of 1,797 samples (prune rate 0.5, stages [898], entropy unseen")
    assert str(result.file_list) in text


def test_api_defaults_are_the_clis(tmp_path, square_folder):
    """prune() without a device or an image size does what the CLI does: the
    GPU when one is visible, the data's own size (native up to 64 px, else
    224), the precision the device computes natively; the run records them."""
    import torch

    from unseen_fast import ImageIndex, PruneConfig, TrainConfig, prune
    from unseen_fast.constants import resolve_amp
    from unseen_fast.parallel import training_device
    from unseen_fast.train import concrete

    visible = "cuda" if torch.cuda.is_available() else "cpu"
    assert training_device("auto", None, None) == torch.device(visible)
    assert concrete(TrainConfig(), ImageIndex.from_folder(square_folder), "cpu").image_size == 224  # 96x96 files
    assert concrete(TrainConfig(image_size=40), ImageIndex.digits(), "cpu").image_size == 40
    summary = prune(ImageIndex.digits(), out=tmp_path / "run",
                    config=PruneConfig(prune_rate=0.5, stages=1, train=TrainConfig(epochs=1, batch_size=128)))
    assert summary["device"].startswith(visible)
    assert summary["config"]["train"]["image_size"] == 8  # the digits are 8x8
    assert summary["precision"] == summary["config"]["train"]["amp"] == resolve_amp("auto", visible)


EXAMPLES = __import__("pathlib").Path(__file__).resolve().parents[1] / "examples"


def test_scoring_example_as_a_script_and_under_python_c(tmp_path):
    script = EXAMPLES / "score_your_own_model.py"
    for args in ([str(script), "--keep", "0.5"],
                 ["-c", f"import runpy, sys; sys.argv = ['x', '--keep', '0.5']; runpy.run_path({str(script)!r}, "
                        f"run_name='__main__')"]):
        done = run_python(args, tmp_path)
        assert done.returncode == 0, done.stderr[-2000:]
        assert done.stdout.startswith("kept 898 of 1797 samples; mean entropy kept")


def test_training_on_a_coreset_with_imagefolder(small_folder, tmp_path):
    from unseen_fast import PruneConfig, TrainConfig, prune

    config = PruneConfig(prune_rate=0.3, folds=2, stages=1, train=TrainConfig(epochs=1, batch_size=16))
    prune(str(small_folder), out=tmp_path / "run", config=config)
    done = run_python([str(EXAMPLES / "train_on_coreset.py"), "--data", str(small_folder), "--run",
                       str(tmp_path / "run")], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "trained on 91 coreset images of 130" in done.stdout
    # --skip-bad leaves an unreadable file out of the run's index, so its sample ids are no longer
    # ImageFolder positions: the example goes by coreset.txt's paths
    broken = tmp_path / "broken"
    shutil.copytree(small_folder, broken)
    first = sorted((broken / sorted(p.name for p in broken.iterdir())[0]).iterdir())[0]
    first.write_bytes(b"not an image")
    prune(str(broken), out=tmp_path / "skipped", config=config, skip_bad=True)
    done = run_python([str(EXAMPLES / "train_on_coreset.py"), "--data", str(broken), "--run",
                       str(tmp_path / "skipped")], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "trained on 90 coreset images of 130" in done.stdout


def test_tests_that_need_cifar_skip_without_the_archive(monkeypatch, tmp_path):
    import pytest

    import data_fixtures

    monkeypatch.setattr(data_fixtures, "CIFAR_TAR", tmp_path / "absent.tar.gz")
    monkeypatch.setattr(data_fixtures, "DATA_CACHE", tmp_path / "cache")
    with pytest.raises(pytest.skip.Exception, match="needs the CIFAR-10 JPEGs"):
        data_fixtures.cifar10_root()


class _LoadsInsideAWorker:
    """A user's Dataset whose items are built with our loader, inside their DataLoader worker."""

    def __init__(self, folder, cache_dir):
        self.folder, self.cache_dir = str(folder), str(cache_dir)

    def __len__(self):
        return 2

    def __getitem__(self, item):
        import numpy as np

        from unseen_fast.data import ImageIndex, make_loader

        index = ImageIndex.from_folder(self.folder)
        loader = make_loader(index, np.arange(item, len(index), 2), train=False, batch_size=32, image_size=32,
                             backend="cache", cache_dir=self.cache_dir)
        return sum(len(ids) for _, _, ids in loader)


def test_loading_inside_a_users_dataloader_worker(small_folder, tmp_path):
    import torch

    loader = torch.utils.data.DataLoader(_LoadsInsideAWorker(small_folder, tmp_path / "cache"), batch_size=None,
                                         num_workers=1)
    assert [int(n) for n in loader] == [65, 65]


def test_a_notebook_style_main_module(tmp_path):
    """What a notebook cell is: code in a __main__ without a file. A model
    factory defined there works in-process; worker processes are refused in
    one line because they could not import it."""
    code = textwrap.dedent("""
        from torch import nn
        from unseen_fast import PruneConfig, TrainConfig, prune
        from unseen_fast.errors import UserError

        def factory(num_classes):  # defined in the "cell"
            return nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, num_classes))

        config = PruneConfig(prune_rate=0.5, stages=1, train=TrainConfig(epochs=1, batch_size=128, image_size=8))
        print(prune("builtin:digits", out="inline", config=config, model_factory=factory))
        try:
            prune("builtin:digits", out="workers", config=config, model_factory=factory, nproc=2)
        except UserError as err:
            print("refused:", err)
    """)
    done = run_python(["-c", code], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("PruneResult: kept 898 of 1,797 samples")
    assert "refused: model_factory 'factory' cannot be sent to the 2 worker processes" in done.stdout
