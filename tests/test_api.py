"""The Python API where researchers run it: plain scripts without a
``__main__`` guard and ``python -c``, with no worker process re-importing
the caller's script."""
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
