"""--augment auto and --unfreeze auto: crop scale from the objects' extent, flips only where they keep the
label, the depth from short runs on an inner split; each choice recorded with its evidence."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import numpy as np
import pytest
from rich.console import Console

torch = pytest.importorskip("torch")

from edgetl.adapt.auto import (  # noqa: E402
    DEPTHS,
    NO_CROP_ABOVE,
    _decided_without_runs,
    choose_depth,
    crop_scale_from,
    flip_changes_labels,
    foreground_box,
    handedness,
    inner_split,
    short_run_images,
)
from edgetl.adapt.options import TrainOptions  # noqa: E402
from edgetl.adapt.train import train  # noqa: E402
from edgetl.rundir import RunDir  # noqa: E402

DEFAULT = (0.25, 1.0)


def _paper(size: int = 100) -> np.ndarray:
    return np.full((size, size, 3), 250, np.uint8)


def test_crop_scale_keeps_an_object_of_known_extent():
    """A dark square over rows and columns 40..59 of 100: a crop keeps it wherever it lies only if its side is
    at least 0.6 of the frame, so the smallest crop area is 0.36."""
    image = _paper()
    image[40:60, 40:60] = 10
    assert foreground_box(image) == (0.4, 0.4, 0.6, 0.6)
    scale, evidence = crop_scale_from([image] * 5, DEFAULT)
    assert scale == (0.36, 1.0)
    assert evidence["measured"] == 5 and evidence["crop_side"] == 0.6

    off_centre = _paper()
    off_centre[0:20, 70:90] = 10  # touches the top: only crops that include the top row keep it
    assert crop_scale_from([off_centre], DEFAULT)[0] is None


def test_an_object_that_fills_the_frame_gets_no_crop_and_a_photo_the_default():
    digit = _paper()
    digit[0:100, 20:30] = digit[0:100, 70:80] = 0  # like the digits: strokes from the top row to the bottom row
    scale, evidence = crop_scale_from([digit], DEFAULT)
    assert scale is None and evidence["crop_side"] ** 2 > NO_CROP_ABOVE
    noise = np.random.default_rng(0).integers(0, 256, (100, 100, 3), dtype=np.uint8)  # no border colour
    scale, evidence = crop_scale_from([noise] * 3, DEFAULT)
    assert scale == DEFAULT and evidence["measured"] == 0 and "default" in evidence["reason"]


def _bars(where: list[str], size: int = 24) -> np.ndarray:
    """Dark bars on white paper: a tall bar left or right (a mirror swaps them), or a tall or a flat bar
    in the middle (a mirror keeps them)."""
    places = {"left": (slice(2, 22), slice(2, 8)), "right": (slice(2, 22), slice(16, 22)),
              "tall": (slice(2, 22), slice(9, 15)), "flat": (slice(9, 15), slice(2, 22))}
    out = []
    for place in where:
        image = np.full((size, size), 255, np.uint8)
        image[places[place]] = 0
        out.append(image)
    return np.stack(out).astype(np.float32)


def _nearest_centroid(images: np.ndarray, labels: np.ndarray):
    centroids = np.stack([images[labels == k].mean(0) for k in np.unique(labels)])
    return lambda x: ((x[:, None] - centroids[None]) ** 2).sum(axis=(2, 3)).argmin(1)


@pytest.mark.parametrize(("classes", "changes"), [(["left", "right"], True), (["tall", "flat"], False)])
def test_flip_check_tells_a_set_whose_labels_flips_change(classes, changes):
    """Left vs right bars: a mirror image is the other class. Tall vs flat bars in the middle: a mirror
    image is the same image."""
    labels = np.repeat([0, 1], 20)
    images = _bars([classes[k] for k in labels])
    classify = _nearest_centroid(images, labels)
    ok, ok_flipped = classify(images) == labels, classify(images[:, :, ::-1]) == labels
    verdict, evidence = flip_changes_labels(ok, ok_flipped)
    assert verdict is changes
    assert evidence["top1"] == 1.0 and evidence["images"] == 40


def _symmetric_shapes(n: int, size: int = 32, seed: int = 0) -> np.ndarray:
    """Discs, squares and upright bars, each its own mirror image, anywhere in the frame (a place and its
    mirror place are equally likely): a set whose mirror images look like more of it."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[:size, :size]
    out = np.full((n, size, size, 3), 255, np.uint8)
    for i in range(n):
        r = int(rng.integers(3, size // 4))
        cy, cx = rng.integers(r, size - r, 2)
        shape = [(rows - cy) ** 2 + (cols - cx) ** 2 < r * r,
                 (abs(rows - cy) < r) & (abs(cols - cx) < r),
                 (abs(rows - cy) < r) & (abs(cols - cx) < max(1, r // 3))][i % 3]
        out[i][shape] = rng.integers(0, 200, 3)
    return out


def test_handedness_tells_digits_from_symmetric_shapes(tmp_path):
    """The embedded backbone's frozen features tell a digit from its mirror image (a mirrored 3 is no
    digit), and do not tell symmetric shapes from theirs (flips keep such a set as it is)."""
    from edgetl.adapt.loop import predict
    from edgetl.data.demo import write_digits
    from edgetl.data.preprocess import normalize, open_rgb
    from edgetl.models import registry
    from edgetl.models.build import create_model, preprocess_spec

    model = create_model(registry.resolve("efficientnet_lite0"), 2, pretrained=True)
    model.reset_classifier(0)
    spec = preprocess_spec(model, 32)

    def told_apart(pixels: np.ndarray) -> tuple[bool, dict]:
        features = predict(model, normalize(pixels, spec))
        return handedness(features, predict(model, normalize(pixels[:, :, ::-1].copy(), spec)), seed=0)

    digits = write_digits(tmp_path / "digits", per_class=30, size=32)
    pixels = np.stack([np.asarray(open_rgb(p)) for p in sorted(digits.rglob("*.png"))])
    handed, evidence = told_apart(pixels)
    assert handed and evidence["pairs"] == 300 and evidence["told_apart_ci"][0] > 0.55
    handed, evidence = told_apart(_symmetric_shapes(300))
    assert not handed and abs(evidence["told_apart"] - 0.5) < 0.1  # chance: a mirror image is one more shape


def test_depth_rule_prefers_the_deepest_fine_tuning_within_one_standard_error():
    rows = [{"unfreeze": "0", "inner_val_top1": 0.99}, {"unfreeze": "1", "inner_val_top1": 0.96},
            {"unfreeze": "2", "inner_val_top1": 0.90}, {"unfreeze": "all", "inner_val_top1": 0.955}]
    assert choose_depth(rows, held_images=100) == "all"  # 0.96 - sqrt(.96 * .04 / 100) = 0.940; the probe's row is no run
    assert choose_depth(rows, held_images=100_000) == "1"
    assert choose_depth(rows[:3], held_images=100) == "1"  # depth 2 is far below the best


def test_short_runs_stay_a_share_of_fine_tuning():
    assert short_run_images(fit_images=1150, train_images=1438, epochs=15, depths=4) == 1024
    assert short_run_images(fit_images=1150, train_images=1438, epochs=4, depths=4) == int(0.5 * 4 * 1438 / 4)
    assert short_run_images(fit_images=40, train_images=48, epochs=1, depths=4) == 6


def test_no_short_runs_when_there_is_nothing_to_measure():
    inner = {"probe_top1": 0.8, "chance": 0.25}
    assert _decided_without_runs(inner, held_images=7)[0] == "1"  # under 2 per class for 4 classes
    assert _decided_without_runs({**inner, "probe_top1": 1.0}, held_images=40)[0] == "0"
    assert _decided_without_runs(inner, held_images=40) is None


def test_inner_split_is_stratified_and_disjoint():
    labels = np.repeat([0, 1, 2], [10, 20, 1])
    fit, held = inner_split(labels, seed=0)
    assert not set(fit) & set(held) and len(fit) + len(held) == len(labels)
    assert [int((labels[held] == k).sum()) for k in range(3)] == [2, 4, 0]
    fit, held = inner_split(np.repeat([0, 1], [2, 2]), seed=0)  # two per class: one held out each, not none
    assert len(fit) == 2 and len(held) == 2


def test_one_training_image_per_class_is_not_measured_and_says_so(tmp_path):
    from edgetl.data.demo import write_digits

    data = write_digits(tmp_path / "d", per_class=2, classes=3)  # the split leaves one training image per class
    options = TrainOptions(pretrained=False, image_size=32, seed=0, mode="finetune", unfreeze="auto",
                           epochs=1, head_epochs=2, transfer_check=False)
    section = train(data, options, out=tmp_path / "run", backbone="timm:test_efficientnet")
    assert section["dataset"]["train_images"] == 3
    assert "no inner split" in section["choices"]["unmeasured"] and "unfreeze" not in section["choices"]


def test_recipe_defaults_to_one_rate_under_auto_and_keeps_given_values():
    assert TrainOptions(mode="finetune", unfreeze="auto").recipe() == {"backbone_lr_scale": 0.3, "layer_decay": 1.0}
    assert TrainOptions(mode="finetune", unfreeze="2").recipe() == {"backbone_lr_scale": 0.1, "layer_decay": 0.5}
    given = TrainOptions(mode="finetune", unfreeze="auto", layer_decay=0.7)
    assert given.recipe() == {"backbone_lr_scale": 0.3, "layer_decay": 0.7}
    assert given.hparams()["backbone_lr_scale"] is None  # what was not given is recorded as not given


def test_augment_keeps_its_former_bool_form():
    assert TrainOptions(augment=False).augment == "off" and TrainOptions(augment=True).augment == "on"
    assert TrainOptions().augment == "auto"


def test_auto_choices_are_recorded_and_sane(digits_dir, tmp_path):
    options = TrainOptions(pretrained=False, image_size=32, seed=0, mode="finetune", unfreeze="auto",
                           augment="auto", epochs=1, head_epochs=5, transfer_check=False)
    shown = io.StringIO()
    section = train(digits_dir, options, out=tmp_path / "run", backbone="timm:test_efficientnet",
                    console=Console(file=shown, width=400))
    choices = RunDir.open(tmp_path / "run").manifest["train"]["choices"]
    assert choices == json.loads(json.dumps(section["choices"]))
    assert "transfer_check" not in choices
    inner = choices["inner_split"]
    assert inner["fit_images"] + inner["held_out_images"] == section["dataset"]["train_images"]

    depth = choices["unfreeze"]
    assert [r["unfreeze"] for r in depth["runs"]] == ["0", *DEPTHS]
    assert all(r["images"] > 0 and r["seconds"] >= 0 for r in depth["runs"][1:])
    assert depth["chosen"] == choose_depth(depth["runs"], inner["held_out_images"])
    assert depth["recipe"] == {"backbone_lr_scale": 0.3, "layer_decay": 1.0}  # auto's recipe, in every short run
    short = depth["short_runs"]
    assert short["images"] == sum(r["images"] for r in depth["runs"]) <= 0.5 * short["finetune_images"]
    assert section["hparams"]["unfreeze"] == "auto"  # the option as given; the choice is in choices

    for depth_run in depth["runs"][1:]:  # each short run is shown as it ends, the choice in the summary
        assert f"unfreeze {depth_run['unfreeze']}: inner top-1 {depth_run['inner_val_top1']:.1%}" in shown.getvalue()
    assert f"│ unfreeze auto │ {depth['chosen']} (inner top-1 per depth: 0: " in shown.getvalue()

    augment = choices["augment"]
    # sklearn's digits span the whole height of the frame, and a mirrored 2 is no 2
    assert augment["crop_scale"] is None and augment["crop"]["crop_side"] == 1.0
    handed = augment["handedness"]
    assert handed["pairs"] == inner["fit_images"] + inner["held_out_images"]  # under 512: every training image
    assert augment["flip"] is not (handed["handed"] or augment["flip_check"]["drop_ci_pp"][0] > 2.0)
    summary = shown.getvalue()
    assert "of pairs; mirrored top-1" in summary, summary[summary.find("augment auto"):][:400]
    assert "│ short runs" in summary, summary[summary.find("unfreeze auto"):][:600]


def _cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgetl.cli", *args], capture_output=True, text=True, timeout=600)


def test_no_augment_is_still_augment_off(digits_dir, tmp_path):
    out = tmp_path / "run"
    result = _cli("train", "--data", str(digits_dir), "--out", str(out), "--backbone", "timm:test_efficientnet",
                  "--no-pretrained", "--image-size", "32", "--mode", "finetune", "--unfreeze", "1", "--epochs", "1",
                  "--head-epochs", "2", "--no-augment", "--no-transfer-check")
    assert result.returncode == 0, result.stderr[-2000:]
    section = RunDir.open(out).manifest["train"]
    assert section["hparams"]["augment"] == "off" and section["choices"] == {}


def test_a_bad_auto_option_exits_2_and_nothing_is_written(digits_dir, tmp_path):
    out = tmp_path / "run"

    def train_cli(*args):
        return _cli("train", "--data", str(digits_dir), "--out", str(out), "--mode", "finetune", *args)

    result = train_cli("--unfreeze", "most")
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == "error: option --unfreeze: expected a number of stages, 'all' or 'auto' (got 'most')"
    result = train_cli("--unfreeze", "autoo")  # a typo gets the word it is closest to
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == ("error: option --unfreeze: expected a number of stages, 'all' or 'auto'; "
                                     "did you mean 'auto'? (got 'autoo')")
    # a Literal is click's choice (as --mode and --head): click's usage error, exit 2
    result = train_cli("--augment", "sometimes")
    assert result.returncode == 2 and "'sometimes' is not one of 'auto', 'on', 'off'" in result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists()


def test_unfreeze_as_a_number_from_python_or_toml_means_that_many_stages():
    assert TrainOptions(mode="finetune", unfreeze=2).unfreeze == "2"
    with pytest.raises(Exception, match=r"^option --unfreeze: Input should be a valid string \(got True\)$"):
        TrainOptions(mode="finetune", unfreeze=True)
