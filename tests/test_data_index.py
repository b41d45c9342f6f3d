"""ImageIndex: ordering, stability, file lists, digits, run-directory round
trips and the errors users see for bad folders."""
import os
import time

import numpy as np
import pytest

from unseen_fast.data import DataError, ImageIndex, open_index


def make_tree(root, layout):
    """layout: {relative path: bytes}; folders are created as needed."""
    for rel, data in layout.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def test_folder_order_extensions_and_nesting(tmp_path):
    root = make_tree(tmp_path / "data", {
        "b/2.jpg": b"x", "b/10.JPG": b"x", "b/sub/1.png": b"x", "b/notes.txt": b"x",
        "a/z.Jpeg": b"x", "a/y.webp": b"x", "a/x.bmp": b"x", "a/.DS_Store": b"x",
        "c/k.PNG": b"x",
    })
    index = ImageIndex.from_folder(root)
    assert index.classes == ["a", "b", "c"]
    assert index.paths == ["a/x.bmp", "a/y.webp", "a/z.Jpeg", "b/10.JPG", "b/2.jpg", "b/sub/1.png", "c/k.PNG"]
    assert index.labels.tolist() == [0, 0, 0, 1, 1, 1, 2]
    assert index.labels.dtype == np.int64
    assert len(index) == 7
    assert sorted(index.ignored) == ["a/.DS_Store", "b/notes.txt"]
    assert index.file(3) == os.path.join(str(root), "b/10.JPG")
    assert index.class_counts().tolist() == [3, 3, 1]


def test_fingerprint_stable_across_scans_and_worker_counts(small_folder):
    one = ImageIndex.from_folder(small_folder, workers=1)
    many = ImageIndex.from_folder(small_folder, workers=8)
    assert one.fingerprint == many.fingerprint
    assert one.paths == many.paths


def test_fingerprint_changes_when_the_listing_changes(tmp_path):
    root = make_tree(tmp_path / "d", {"a/1.jpg": b"x", "b/1.jpg": b"x"})
    before = ImageIndex.from_folder(root).fingerprint
    (root / "b" / "2.jpg").write_bytes(b"x")
    after_add = ImageIndex.from_folder(root)
    assert after_add.fingerprint != before
    (root / "b" / "2.jpg").rename(root / "b" / "3.jpg")
    assert ImageIndex.from_folder(root).fingerprint not in (before, after_add.fingerprint)


def test_full_cifar_scan(request):
    from data_fixtures import cifar10_root

    start = time.perf_counter()
    index = ImageIndex.from_folder(cifar10_root())
    elapsed = time.perf_counter() - start
    print(f"scanned {len(index)} files in {elapsed:.2f} s")
    assert len(index) == 50_000
    assert index.classes[:3] == ["airplane", "automobile", "bird"]
    assert index.class_counts().tolist() == [5000] * 10
    assert index.paths[0] == "airplane/0000.jpg" and index.paths[-1] == "truck/4999.jpg"


def test_save_load_round_trip(small_folder, tmp_path):
    index = ImageIndex.from_folder(small_folder)
    index.save(tmp_path / "run")
    loaded = ImageIndex.load(tmp_path / "run")
    assert loaded.fingerprint == index.fingerprint
    assert loaded.paths == index.paths and loaded.classes == index.classes
    assert np.array_equal(loaded.labels, index.labels)
    index.save(tmp_path / "run")  # same listing: a no-op, not an error
    loaded.assert_same_listing(ImageIndex.from_folder(small_folder))


def test_subset_round_trips_for_folders_and_digits(small_folder, tmp_path):
    for k, index in enumerate([ImageIndex.from_folder(small_folder), ImageIndex.digits()]):
        ids = np.arange(len(index))[::-3]
        sub = index.subset(ids)
        assert sub.paths == [index.paths[i] for i in ids] and np.array_equal(sub.labels, index.labels[ids])
        assert sub.classes == index.classes and sub.fingerprint != index.fingerprint
        if index.in_memory:
            assert np.array_equal(sub.images, index.images[ids])
        sub.save(tmp_path / f"run{k}")
        assert ImageIndex.load(tmp_path / f"run{k}").fingerprint == sub.fingerprint
    with pytest.raises(DataError, match="subset id out of range"):
        index.subset([len(index)])


def test_save_refuses_to_overwrite_a_different_index(small_folder, tmp_path):
    ImageIndex.from_folder(small_folder).save(tmp_path / "run")
    before = (tmp_path / "run" / "index.txt").read_text()
    with pytest.raises(DataError, match="different dataset index.*refusing to overwrite"):
        ImageIndex.digits().save(tmp_path / "run")
    assert (tmp_path / "run" / "index.txt").read_text() == before


def test_save_refuses_other_images_under_the_same_names(small_folder, tmp_path):
    """--resume on another folder with the same file names, or after an image
    was replaced, went on with models trained on the old pixels (a trial
    finding): the saved index keeps every file's size and modification time.
    A copy that keeps them (copy2) is the same data."""
    import os
    import shutil

    shutil.copytree(small_folder, tmp_path / "data")  # copy2: sizes and modification times kept
    ImageIndex.from_folder(small_folder).save(tmp_path / "run")
    ImageIndex.from_folder(tmp_path / "data").save(tmp_path / "run")  # the same images elsewhere: accepted
    replaced = tmp_path / "data" / "cat" / "0001.jpg"
    replaced.write_bytes((tmp_path / "data" / "cat" / "0002.jpg").read_bytes())
    with pytest.raises(DataError, match=r"the images under .*data are not the ones the run in .*run started from "
                                        r"\(a file's size or modification time differs"):
        ImageIndex.from_folder(tmp_path / "data").save(tmp_path / "run")
    shutil.copy2(small_folder / "cat" / "0001.jpg", replaced)
    ImageIndex.from_folder(tmp_path / "data").save(tmp_path / "run")  # put back: accepted
    os.utime(replaced, ns=(0, 0))  # the same bytes, touched: refused too (mtime is what can be checked cheaply)
    with pytest.raises(DataError, match="are not the ones"):
        ImageIndex.from_folder(tmp_path / "data").save(tmp_path / "run")
    # nothing derived from the pixels yet (a run stopped on an undecodable image): the new images are taken
    ImageIndex.from_folder(tmp_path / "data").save(tmp_path / "run", images_may_change=True)
    ImageIndex.from_folder(tmp_path / "data").save(tmp_path / "run")


def test_a_runs_coreset_ids_are_read_through_its_own_index(small_folder, tmp_path):
    """train --subset RUN/coreset.npy: the run's index may leave out a bad
    file (--skip-bad), so its ids are off by one against a fresh listing, or
    name another dataset's samples: they are translated by path, or refused."""
    import shutil

    from unseen_fast.data.subset import subset_ids

    shutil.copytree(small_folder, tmp_path / "data")
    full = ImageIndex.from_folder(tmp_path / "data")
    run_index = full.subset(np.arange(1, len(full)))  # the first file left out, as --skip-bad does
    run_index.save(tmp_path / "run")
    np.save(tmp_path / "run" / "coreset.npy", np.array([0, 5, 7]))
    got = subset_ids(full, tmp_path / "run" / "coreset.npy")
    assert [full.paths[i] for i in got] == [run_index.paths[i] for i in (0, 5, 7)] and got.tolist() == [1, 6, 8]
    with pytest.raises(DataError, match=r"coreset.npy: 3 of its samples are not in the built-in digits dataset"):
        subset_ids(ImageIndex.digits(), tmp_path / "run" / "coreset.npy")
    np.save(tmp_path / "ids.npy", np.array([0, 5, 7]))  # a .npy outside a run folder: ids of --data as given
    assert subset_ids(full, tmp_path / "ids.npy").tolist() == [0, 5, 7]


def test_load_detects_edited_list(small_folder, tmp_path):
    ImageIndex.from_folder(small_folder).save(tmp_path / "run")
    listing = tmp_path / "run" / "index.txt"
    listing.write_text(listing.read_text().replace(" 0\n", " 1\n", 1))
    with pytest.raises(DataError, match="does not match its fingerprint"):
        ImageIndex.load(tmp_path / "run")
    with pytest.raises(DataError, match="no saved dataset index"):
        ImageIndex.load(tmp_path / "elsewhere")


def test_changed_dataset_is_described(tmp_path):
    root = make_tree(tmp_path / "d", {"a/1.jpg": b"x", "a/2.jpg": b"x", "b/1.jpg": b"x"})
    saved = ImageIndex.from_folder(root)
    (root / "a" / "2.jpg").unlink()  # named, not "sample 1 was 'a/2.jpg', is now 'b/1.jpg'" (a trial finding)
    with pytest.raises(DataError, match=r"the dataset changed: 1 file\(s\) gone, first 'a/2.jpg', 0 new$"):
        saved.assert_same_listing(ImageIndex.from_folder(root))
    (root / "a" / "3.jpg").write_bytes(b"x")  # a rename
    with pytest.raises(DataError, match=r"1 file\(s\) gone, first 'a/2.jpg', 1 new, first 'a/3.jpg'$"):
        saved.assert_same_listing(ImageIndex.from_folder(root))
    listing = tmp_path / "list.txt"
    listing.write_text("a/1.jpg 0\na/3.jpg 1\nb/1.jpg 1\n", encoding="utf-8-sig")  # a BOM: a Windows editor's
    relabelled = ImageIndex.from_file_list(listing, root=root)
    assert relabelled.paths[0] == "a/1.jpg"  # the BOM was part of the first path ("does not exist")
    (tmp_path / "before.txt").write_text("a/1.jpg 0\na/3.jpg 0\nb/1.jpg 1\n")  # the same files, one label other
    with pytest.raises(DataError, match=r"sample 1 was 'a/3.jpg' \(label 0\), is now 'a/3.jpg' \(label 1\)"):
        ImageIndex.from_file_list(tmp_path / "before.txt", root=root).assert_same_listing(relabelled)
    (root / "c").mkdir()
    (root / "c" / "1.jpg").write_bytes(b"x")
    with pytest.raises(DataError, match="classes differ"):
        saved.assert_same_listing(ImageIndex.from_folder(root))


def test_digits_round_trip(tmp_path):
    digits = ImageIndex.digits()
    assert len(digits) == 1797 and digits.num_classes == 10 and digits.in_memory
    assert digits.images.shape == (1797, 8, 8, 3) and digits.images.dtype == np.uint8
    assert digits.images.max() == 255 and digits.fingerprint == ImageIndex.digits().fingerprint
    digits.save(tmp_path / "run")
    assert ImageIndex.load(tmp_path / "run").fingerprint == digits.fingerprint
    assert open_index("builtin:digits").fingerprint == digits.fingerprint
    with pytest.raises(DataError, match="unknown built-in dataset 'builtin:mnist'"):
        open_index("builtin:mnist")


def test_relabelled_digits_round_trip(tmp_path):
    """In-memory digits with changed labels (a label-noise study through the
    Python API) load back with the run's labels, full set and subset, so
    such a run can be resumed; an edited label in index.txt is still caught."""
    digits = ImageIndex.digits()
    flipped = digits.labels.copy()
    flipped[::7] = (flipped[::7] + 3) % 10
    relabelled = ImageIndex(root=None, paths=digits.paths, labels=flipped, classes=digits.classes,
                            source=digits.source, images=digits.images)
    for name, index in [("full", relabelled), ("subset", relabelled.subset(np.arange(0, 1797, 5)))]:
        index.save(tmp_path / name)
        loaded = ImageIndex.load(tmp_path / name)
        assert loaded.fingerprint == index.fingerprint and np.array_equal(loaded.labels, index.labels)
        assert np.array_equal(loaded.images, index.images)
    listing = tmp_path / "full" / "index.txt"
    lines = listing.read_text().splitlines()
    path, label = lines[1].rsplit(" ", 1)
    lines[1] = f"{path} {(int(label) + 1) % 10}"
    listing.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match="does not match its fingerprint"):
        ImageIndex.load(tmp_path / "full")


def test_file_list(tmp_path):
    make_tree(tmp_path, {"imgs/a b.jpg": b"x", "imgs/c.jpg": b"x"})
    listing = tmp_path / "list.txt"
    listing.write_text("# comment\nimgs/a b.jpg 2\n\nimgs/c.jpg 0\n")
    index = ImageIndex.from_file_list(listing)
    # the labels that occur become ids 0..C-1, their numbers the class names
    assert index.paths == ["imgs/a b.jpg", "imgs/c.jpg"] and index.labels.tolist() == [1, 0]
    assert index.classes == ["0", "2"] and index.root == str(tmp_path)
    assert index.listed_labels([0, 1]) == ["2", "0"]  # what coreset.txt writes: the list's own numbers
    named = ImageIndex.from_file_list(listing, classes=["x", "y", "z"])
    assert named.classes == ["x", "y", "z"] and named.labels.tolist() == [2, 0]
    assert named.listed_labels([0, 1]) == ["2", "0"]
    assert open_index(tmp_path, file_list=listing).fingerprint == index.fingerprint


@pytest.mark.parametrize("text, message", [
    ("imgs/c.jpg\n", r"list.txt:1: expected 'relative/path label', got 'imgs/c.jpg'"),
    ("imgs/c.jpg zero\n", r"list.txt:1: expected 'relative/path label'"),
    ("imgs/c.jpg 0\nimgs/c.jpg -1\n", r"list.txt:2: label must be >= 0, got -1"),
    ("imgs/missing.jpg 0\n", r"1 file\(s\) in .*list.txt do not exist .*missing.jpg"),
    ("# nothing\n", r"lists no images"),
])
def test_file_list_errors(tmp_path, text, message):
    make_tree(tmp_path, {"imgs/c.jpg": b"x"})
    (tmp_path / "list.txt").write_text(text)
    with pytest.raises(DataError, match=message):
        ImageIndex.from_file_list(tmp_path / "list.txt")


def test_file_list_with_too_few_class_names(tmp_path):
    make_tree(tmp_path, {"c.jpg": b"x"})
    (tmp_path / "list.txt").write_text("c.jpg 3\n")
    with pytest.raises(DataError, match="uses label 3 but only 2 class names"):
        ImageIndex.from_file_list(tmp_path / "list.txt", classes=["a", "b"])


def test_folder_errors(tmp_path):
    with pytest.raises(DataError, match=r"dataset folder .*nope does not exist"):
        ImageIndex.from_folder(tmp_path / "nope")
    (tmp_path / "file.jpg").write_bytes(b"x")
    with pytest.raises(DataError, match=r"file.jpg is not a folder"):
        ImageIndex.from_folder(tmp_path / "file.jpg")
    flat = make_tree(tmp_path / "flat", {"1.jpg": b"x", "2.jpg": b"x"})
    with pytest.raises(DataError, match=r"no class folders in .*flat.*found 2 files"):
        ImageIndex.from_folder(flat)
    empty = make_tree(tmp_path / "empty", {"a/1.jpg": b"x", "b/readme.txt": b"x"})
    (empty / "c").mkdir()
    with pytest.raises(DataError, match=r"2 class folder\(s\) .* contain no images .*'b', 'c'"):
        ImageIndex.from_folder(empty)


def test_unreadable_class_folder(tmp_path, monkeypatch):
    root = make_tree(tmp_path / "d", {"a/1.jpg": b"x", "b/1.jpg": b"x"})
    real_scandir = os.scandir

    def scandir(path="."):  # as a permission-less folder behaves (root reads anything)
        if str(path).endswith("/b"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(DataError, match=r"cannot read folder .*d/b: Permission denied"):
        ImageIndex.from_folder(root)


def test_labels_are_validated_when_the_index_is_built():
    """Once here, so the GPU ops need no per-call label check."""
    with pytest.raises(DataError, match=r"sample 'b.jpg' has label 2, outside \[0, 2\) for 2 classes"):
        ImageIndex(root=None, paths=["a.jpg", "b.jpg"], labels=[1, 2], classes=["x", "y"], source="test")
    with pytest.raises(DataError, match=r"sample 'a.jpg' has label -1"):
        ImageIndex(root=None, paths=["a.jpg"], labels=[-1], classes=["x"], source="test")


def test_directory_symlinks_are_followed_once(tmp_path, caplog):
    import logging

    root = make_tree(tmp_path / "data", {"a/1.jpg": b"x", "a/sub/2.jpg": b"x", "b/3.jpg": b"x",
                                         "elsewhere/4.jpg": b"x"})
    (root / "a" / "sub" / "loop").symlink_to(root / "a")              # a loop
    (root / "b" / "twice").symlink_to(root / "b")                     # a second link to the class folder
    (root / "b" / "linked").symlink_to(root / "elsewhere")            # a linked folder: followed
    (root / "b" / "5.jpg").symlink_to(root / "elsewhere" / "4.jpg")   # a linked file: followed
    with caplog.at_level(logging.WARNING, logger="unseen_fast.data"):
        index = ImageIndex.from_folder(root, workers=2)
    assert "reached from class 'b' (as b/linked) and class 'elsewhere' (as elsewhere)" in caplog.text
    assert index.classes == ["a", "b", "elsewhere"]
    assert index.paths == ["a/1.jpg", "a/sub/2.jpg", "b/3.jpg", "b/5.jpg", "b/linked/4.jpg", "elsewhere/4.jpg"]
    assert sorted(index.ignored) == ["a/sub/loop/ (folder already scanned: a symlink loop or a second link)",
                                     "b/twice/ (folder already scanned: a symlink loop or a second link)"]


@pytest.mark.parametrize("rel", ["b/new\nline.jpg", "b/ lead.jpg", "b/trailing /x.jpg", "#class/x.jpg"])
def test_names_a_file_list_cannot_round_trip_are_refused(tmp_path, rel):
    root = make_tree(tmp_path / "data", {"a/ok.jpg": b"x", "b/ok.jpg": b"x", rel: b"x"})
    with pytest.raises(DataError, match=r"1 file name\(s\) under .* cannot be written to a text file list and "
                                        r"read back .*; rename them"):
        ImageIndex.from_folder(root)


def test_names_with_inner_spaces_round_trip_through_the_file_list(tmp_path):
    from unseen_fast.data.index import read_file_list

    root = make_tree(tmp_path / "data", {"a class/x y 3.jpg": b"x", "b/z\tw.jpg": b"x"})
    index = ImageIndex.from_folder(root)
    text = "".join(f"{p} {l}\n" for p, l in zip(index.paths, index.labels.tolist()))  # coreset.txt's format
    (tmp_path / "list.txt").write_text(text)
    assert [(rel, label) for _, rel, label in read_file_list(tmp_path / "list.txt")] == \
        list(zip(index.paths, index.labels.tolist()))


def test_one_huge_image_does_not_change_the_training_size(tmp_path, small_folder, caplog):
    """The first file used to decide: a 300-px first image switched a 32-px dataset to 224 px."""
    import logging
    import shutil

    from PIL import Image

    from unseen_fast.models import default_image_size

    root = tmp_path / "data"
    shutil.copytree(small_folder, root)
    first = sorted((root / sorted(os.listdir(root))[0]).iterdir())[0]
    Image.new("RGB", (300, 200)).save(first)
    index = ImageIndex.from_folder(root)
    assert index.image_sizes([0]).tolist() == [[200, 300]]
    assert index.native_size() == (32, 32)
    with caplog.at_level(logging.INFO, logger="unseen_fast.models"):
        assert default_image_size(index) == 32
    assert "image size 32 px: the median native size of the sampled images is 32x32" in caplog.text


def test_a_huge_file_list_label_is_one_class_not_a_billion(tmp_path):
    root = make_tree(tmp_path / "data", {"a.jpg": b"x", "b.jpg": b"x"})
    (root / "list.txt").write_text("a.jpg 0\nb.jpg 1000000000\n")
    index = ImageIndex.from_file_list(root / "list.txt")
    assert index.classes == ["0", "1000000000"] and index.labels.tolist() == [0, 1]
