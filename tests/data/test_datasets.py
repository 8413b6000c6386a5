from __future__ import annotations

import pytest
from PIL import Image

from edgetl.data.datasets import load_image_set, stratified_split
from edgetl.errors import DataError


def _folder(tmp_path, spec: dict[str, int], mode="RGB"):
    for cls, n in spec.items():
        (tmp_path / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.new(mode, (12, 10), color=(i * 10) % 255 if mode == "L" else None).save(tmp_path / cls / f"{i}.png")
    return tmp_path


def test_image_folder_with_corrupt_files_lists_and_skips_them(tmp_path):
    root = _folder(tmp_path, {"cat": 3, "dog": 3})
    (root / "cat" / "broken.jpg").write_bytes(b"not a jpeg")
    (root / "dog" / "notes.txt").write_text("ignored: not an image")
    data = load_image_set(root)
    assert data.classes == ["cat", "dog"]
    assert len(data.samples) == 6
    assert [p for p, _ in data.skipped] == [str(root / "cat" / "broken.jpg")]


def test_grayscale_and_rgba_images_are_used(tmp_path):
    _folder(tmp_path / "d", {"a": 2}, mode="L")
    _folder(tmp_path / "d", {"b": 2}, mode="RGBA")
    assert len(load_image_set(tmp_path / "d").samples) == 4


def test_csv_manifest(tmp_path):
    root = _folder(tmp_path / "imgs", {"x": 2, "y": 2})
    csv = tmp_path / "data.csv"
    csv.write_text("path,label\n" + "".join(f"imgs/{c}/{i}.png,{c}\n" for c in "xy" for i in range(2)))
    data = load_image_set(csv)
    assert data.classes == ["x", "y"] and len(data.samples) == 4
    assert all(str(root) in p for p, _ in data.samples)


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        ({}, "no class subfolders"),
        ({"only": 3}, "at least two"),
        ({"a": 2, "b": 0}, "no readable images"),
    ],
)
def test_unusable_data_sets_are_clear_errors(tmp_path, layout, message):
    root = _folder(tmp_path / "d", layout)
    root.mkdir(exist_ok=True)
    for cls, n in layout.items():
        if n == 0:
            (root / cls / "bad.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(DataError, match=message):
        load_image_set(root)


def test_missing_path_and_bad_csv_rows(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_image_set(tmp_path / "nope")
    bad = tmp_path / "bad.csv"
    bad.write_text("path,label\nimg.png\n")
    with pytest.raises(DataError, match=r"bad.csv:2"):
        load_image_set(bad)


def test_stratified_split_is_seeded_and_keeps_every_class(tmp_path):
    data = load_image_set(_folder(tmp_path, {"a": 10, "b": 5, "c": 2}))
    train1, val1 = stratified_split(data, 0.2, seed=1)
    train2, val2 = stratified_split(data, 0.2, seed=1)
    assert (train1, val1) == (train2, val2)
    assert {lab for _, lab in val1} == {0, 1, 2} == {lab for _, lab in train1}
    assert not set(train1) & set(val1)
    assert len(val1) == 2 + 1 + 1
    assert stratified_split(data, 0.2, seed=2)[1] != val1


def test_csv_that_is_not_utf8_is_a_data_error(tmp_path):
    bad = tmp_path / "latin1.csv"
    bad.write_bytes("path,label\nimg\xe9.png,caf\xe9\n".encode("latin-1"))
    with pytest.raises(DataError, match="not a UTF-8 text CSV"):
        load_image_set(bad)


def test_a_held_out_sets_content_is_part_of_the_data_hash(tmp_path):
    """With a separate validation set of files (audio clips), re-recording one under the same name
    changes the hash (deploy retrains; cached features are not reused)."""
    import wave

    import numpy as np

    from edgetl.data.datasets import task_split
    from edgetl.tasks import get_task

    def clip(path, seed):
        path.parent.mkdir(parents=True, exist_ok=True)
        samples = (np.random.default_rng(seed).standard_normal(1600) * 3000).astype("<i2")
        with wave.open(str(path), "wb") as out:
            out.setnchannels(1), out.setsampwidth(2), out.setframerate(16000)
            out.writeframes(samples.tobytes())

    for part in ("train", "val"):
        for word in ("yes", "no"):
            for i in range(2):
                clip(tmp_path / part / word / f"{i}.wav", hash((part, word, i)) % 1000)
    task = get_task("audio-classification")
    before = task_split(task, tmp_path / "train", tmp_path / "val", 0.2, 0).hash
    clip(tmp_path / "val" / "yes" / "0.wav", 12345)
    assert task_split(task, tmp_path / "train", tmp_path / "val", 0.2, 0).hash != before

