"""unseen-fast check-data: reports, exit status, messages."""
import json
import shutil

import pytest

from unseen_fast.cli import main
from unseen_fast.data import ImageIndex
from unseen_fast.data.check import check_data


def test_clean_dataset(small_folder, capsys):
    assert main(["check-data", "--data", str(small_folder)]) == 0
    out = capsys.readouterr().out
    assert "130 images in 10 classes" in out and "every image decoded" in out
    assert "32x32 (130)" in out


def test_bad_files_are_named_and_fail(small_folder, tmp_path, capsys):
    root = tmp_path / "data"
    shutil.copytree(small_folder, root)
    (root / "cat" / "0001.jpg").write_bytes((root / "cat" / "0001.jpg").read_bytes()[:200])
    (root / "dog" / "empty.jpg").write_bytes(b"")
    (root / "dog" / "README").write_text("not an image")
    assert main(["check-data", "--data", str(root), "--workers", "2"]) == 1
    out = capsys.readouterr().out
    assert "2 unreadable image(s)" in out
    assert f"{root}/cat/0001.jpg: Image is incomplete or truncated" in out
    assert f"{root}/dog/empty.jpg: empty file" in out
    assert "ignored 1 non-image file(s): dog/README" in out
    assert main(["check-data", "--data", str(root), "--json", "--workers", "0"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert not report["ok"] and report["num_samples"] == 131
    assert sorted(b["path"] for b in report["bad_files"]) == [f"{root}/cat/0001.jpg", f"{root}/dog/empty.jpg"]
    assert report["classes"]["cat"] == 13 and report["classes"]["dog"] == 14


def test_sizes_of_mixed_images(small_folder, tmp_path):
    from PIL import Image

    root = tmp_path / "data"
    shutil.copytree(small_folder, root)
    Image.new("RGB", (50, 20), "red").save(root / "cat" / "wide.png")
    Image.new("L", (9, 70)).save(root / "cat" / "tall.bmp")
    sizes = check_data(ImageIndex.from_folder(root), workers=0)["image_sizes"]
    assert (sizes["min_height"], sizes["max_height"], sizes["min_width"], sizes["max_width"]) == (20, 70, 9, 50)


@pytest.mark.parametrize("setup, message", [
    (lambda p: None, "dataset folder .* does not exist"),
    (lambda p: (p / "x.jpg").parent.mkdir() or (p / "x.jpg").write_bytes(b"1"), "no class folders in"),
    (lambda p: (p / "a").mkdir(parents=True), r"1 class folder\(s\) .* contain no images"),
])
def test_folder_problems_exit_2_without_traceback(tmp_path, capsys, setup, message):
    root = tmp_path / "data"
    setup(root)
    assert main(["check-data", "--data", str(root)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("unseen-fast check-data: error: ") and "Traceback" not in err
    import re
    assert re.search(message, err)


def test_builtin_digits(capsys):
    assert main(["check-data", "--data", "builtin:digits", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["num_samples"] == 1797 and report["image_sizes"]["most_common"][0]["height"] == 8
