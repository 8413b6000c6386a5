"""Where the images are: split folders are recognised, and wrong paths are one clear line."""

from __future__ import annotations

import pytest
from PIL import Image

from edgetl.data.layout import resolve_layout
from edgetl.errors import DataError


def _classes(root, names=("cat", "dog")):
    for name in names:
        (root / name).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(root / name / "0.png")
    return root


@pytest.mark.parametrize(("train", "val"), [("train", "val"), ("training", "validation"), ("train", "valid")])
def test_a_folder_of_train_and_val_splits_is_recognised(tmp_path, train, val):
    _classes(tmp_path / "d" / train)
    _classes(tmp_path / "d" / val)
    _classes(tmp_path / "d" / "test")
    layout = resolve_layout(tmp_path / "d")
    assert (layout.train, layout.val) == (tmp_path / "d" / train, tmp_path / "d" / val)
    assert layout.note == f"using {tmp_path / 'd' / train} for training and {tmp_path / 'd' / val} for validation"


def test_train_without_val_is_split_and_test_is_left_alone(tmp_path):
    _classes(tmp_path / "d" / "train")
    _classes(tmp_path / "d" / "test")
    layout = resolve_layout(tmp_path / "d")
    assert (layout.train, layout.val) == (tmp_path / "d" / "train", None)
    assert "test/ is left untouched" in layout.note


def test_class_folders_and_an_explicit_val_are_taken_as_they_are(tmp_path):
    _classes(tmp_path / "d", names=("train", "val"))  # classes that happen to be called train and val
    assert resolve_layout(tmp_path / "d") == resolve_layout(tmp_path / "d", None)
    assert resolve_layout(tmp_path / "d").train == tmp_path / "d" and not resolve_layout(tmp_path / "d").note
    _classes(tmp_path / "s" / "train")
    _classes(tmp_path / "other")
    layout = resolve_layout(tmp_path / "s", tmp_path / "other")
    assert (layout.train, layout.val) == (tmp_path / "s" / "train", tmp_path / "other")


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("photo.jpg", b"\xff\xd8\xff\xe0 jpeg bytes", "is an image file"),
        ("weights.bin", b"\x00\x01", "neither a folder nor a .csv"),
        ("data.csv", b"PK\x03\x04\x00\x00 zip bytes", "not a UTF-8 text CSV"),
    ],
)
def test_a_file_that_is_not_a_csv_is_one_clear_line(tmp_path, name, content, message):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(DataError, match=message):
        resolve_layout(tmp_path / name)
    with pytest.raises(DataError, match="--val .*does not exist"):
        resolve_layout(_classes(tmp_path / "d"), tmp_path / "nope")


def test_a_split_folder_given_as_val_names_its_val_subfolder(tmp_path):
    _classes(tmp_path / "d" / "train")
    _classes(tmp_path / "d" / "val")
    with pytest.raises(DataError) as err:
        resolve_layout(tmp_path / "d" / "train", tmp_path / "d")
    assert str(err.value) == (f"--val {tmp_path / 'd'} holds train/val splits, not classes: give `--data "
                              f"{tmp_path / 'd'}` alone (it validates on its own val/) or --val {tmp_path / 'd' / 'val'}")


def test_train_with_a_split_as_val_is_one_line_exit_2_and_writes_no_run(tmp_path):
    from click.testing import CliRunner

    from edgetl.cli import cli

    _classes(tmp_path / "d" / "train")
    _classes(tmp_path / "d" / "val")
    result = CliRunner().invoke(cli, ["train", "--data", str(tmp_path / "d" / "train"), "--val", str(tmp_path / "d"),
                                       "--out", str(tmp_path / "run")])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [f"error: --val {tmp_path / 'd'} holds train/val splits, not classes: "
                                                  f"give `--data {tmp_path / 'd'}` alone (it validates on its own "
                                                  f"val/) or --val {tmp_path / 'd' / 'val'}"]
    assert not (tmp_path / "run").exists()


def test_a_split_next_to_other_folders_is_refused_not_read_as_classes_train_and_val(tmp_path):
    _classes(tmp_path / "d" / "train")
    _classes(tmp_path / "d" / "val")
    (tmp_path / "d" / "checkpoints").mkdir()
    with pytest.raises(DataError) as err:
        resolve_layout(tmp_path / "d")
    assert str(err.value) == (f"{tmp_path / 'd'} holds a train/ split of class folders next to other folders "
                              f"(checkpoints): move those out, or give --data {tmp_path / 'd' / 'train'} "
                              f"--val {tmp_path / 'd' / 'val'}")


def test_train_on_a_split_next_to_other_folders_is_exit_2_and_writes_no_run(tmp_path):
    from click.testing import CliRunner

    from edgetl.cli import cli

    _classes(tmp_path / "d" / "train")
    (tmp_path / "d" / "runs").mkdir()
    result = CliRunner().invoke(cli, ["train", "--data", str(tmp_path / "d"), "--out", str(tmp_path / "run")])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [f"error: {tmp_path / 'd'} holds a train/ split of class folders next "
                                                  f"to other folders (runs): move those out, or give --data "
                                                  f"{tmp_path / 'd' / 'train'}"]
    assert not (tmp_path / "run").exists()
