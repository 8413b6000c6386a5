"""``--augment auto`` and ``--unfreeze auto``: fine-tuning choices made by measurement on the training split.

* Crop scale from the objects' extent: on a sample of training images, the foreground is what
  differs from the border colour; a random crop placed anywhere keeps an object that spans
  ``[a, b]`` of an axis only if its side is at least ``max(b, 1 - a)``, so the smallest area is that
  side squared (90th percentile over the sample). A centred dot gives ImageNet-style 25%, an object
  that touches the frame gives no crop at all. A textured border (a photo) cannot be measured: the
  default range applies.
* Flips only where the data has no handedness: a mirror image of a photo of a cat is another photo
  of a cat, a mirrored 3 is no digit at all. A ridge classifier on the frozen features learns to
  tell training images from their mirror images (two folds, each image and its mirror on the same
  side); when it tells the held-out pairs apart clearly above chance (the 95% lower bound above
  ``HANDED_ABOVE``), the data is handed and flips are off. A set of symmetric objects, or photos,
  stays at chance: its mirror images look like more of it. Flips are off too when the inner probe's
  top-1 on mirror images drops by more than ``FLIP_DROP_PP`` (95% interval above it).
* Depth: short runs of a few depths (``DEPTHS``), each from the inner probe with the recipe
  fine-tuning will use (``TrainOptions.recipe``: one backbone rate for every stage unless given) and
  the same budget of images, scored on the inner held-out images (never the validation split). All
  short runs together see at most ``SHORT_RUNS_SHARE`` of the images fine-tuning will see. One pass
  from the probe dips below it at every depth (LP-FT's first epoch; on the digits 92-93% against the
  probe's 95%), the deeper the further it has moved: the short runs rank fine-tuning depths, and the
  deepest within one standard error of the best wins (the one that can adapt the most of the
  network at no measured cost). Whether fine-tuning beats the probe is decided on the validation
  split at the end: the probe is kept when it does not. No runs when there is nothing to measure:
  under 2 held-out images per class (the last stage only), or an inner probe already right on every
  held-out image (no stage).

Each choice is recorded with its evidence (``choices`` in the manifest's train section).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field

import numpy as np

from edgetl.adapt.distributed import Dist
from edgetl.adapt.options import TrainOptions
from edgetl.data.preprocess import PreprocessSpec

BORDER_TOLERANCE = 32  # 0-255: a pixel further than this from the border colour is foreground
UNIFORM_BORDER = 0.75  # the border is one colour when this fraction of it is within the tolerance
EXTENT_SAMPLE = 256
EXTENT_QUANTILE = 0.9
NO_CROP_ABOVE = 0.9  # a smallest crop area above this is no crop: the object fills the frame
FLIP_DROP_PP = 2.0
HANDED_ABOVE = 0.55  # chance is 0.5: telling an image from its mirror this often means the data is handed
HANDED_IMAGES = 512  # images (and as many mirror images) the handedness check looks at
INNER_FRACTION = 0.2
DEPTHS = ("1", "2", "4", "all")
PROBE_IMAGES = 1024  # each depth's budget: images seen (one pass over at most this many inner images)
SHORT_RUNS_SHARE = 0.5  # all short runs together: at most this share of the images fine-tuning sees
PROBE_VAL_IMAGES = 512
MIN_HELD_PER_CLASS = 2


@dataclass
class FinetunePlan:
    """What fine-tuning runs with: options with ``unfreeze`` resolved, its training images (augmented
    as chosen), and the evidence of each choice (for the manifest's ``choices``)."""

    options: TrainOptions
    train_data: object
    choices: dict = field(default_factory=dict)
    crop: tuple[float, float] | None = None  # the augmentation chosen, for other images (domain-adapt's target)
    flip: bool = False

    def images(self, paths: list[str], pixels: np.ndarray, labels: np.ndarray, spec: PreprocessSpec):
        """Other images (e.g. the unlabelled target domain's), augmented as the training images are."""
        return training_images(paths, pixels, labels, spec, self.crop, self.flip)


def training_images(paths: list[str], pixels: np.ndarray, labels: np.ndarray, spec: PreprocessSpec,
                    crop: tuple[float, float] | None, flip: bool):
    """Augmented images (random resized crop in ``crop``, ``flip``), or the eval preprocessing when neither."""
    import torch

    from edgetl.adapt.finetune import AugmentedImages
    from edgetl.data.preprocess import normalize

    if crop is not None or flip:
        return AugmentedImages(paths, labels, spec, crop_scale=crop, flip=flip)
    return torch.utils.data.TensorDataset(torch.from_numpy(normalize(pixels, spec)), torch.from_numpy(labels))


# --- the crop scale -------------------------------------------------------------------------------

def foreground_box(image: np.ndarray) -> tuple[float, float, float, float] | None:
    """(top, left, bottom, right) of what differs from the border colour, as fractions of the frame;
    None when the border is not one colour (a textured background) or nothing differs from it."""
    pixels = image.reshape(*image.shape[:2], -1).astype(np.int16)
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    colour = np.median(border, axis=0)
    if (np.abs(border - colour).max(axis=1) <= BORDER_TOLERANCE).mean() < UNIFORM_BORDER:
        return None
    mask = np.abs(pixels - colour).max(axis=2) > BORDER_TOLERANCE
    if not mask.any():
        return None
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    h, w = mask.shape
    return rows[0] / h, cols[0] / w, (rows[-1] + 1) / h, (cols[-1] + 1) / w


def crop_side_keeping(box: tuple[float, float, float, float]) -> float:
    """The smallest side (a fraction of the frame) of a crop that keeps the box wherever it lies."""
    top, left, bottom, right = box
    return max(bottom, 1 - top, right, 1 - left)


def crop_scale_from(images: list[np.ndarray], default: tuple[float, float]) -> tuple[tuple[float, float] | None, dict]:
    """The random-resized-crop area range that keeps the objects of these images (None: no crop)."""
    boxes = [b for b in (foreground_box(im) for im in images) if b is not None]
    evidence = {"images": len(images), "measured": len(boxes)}
    if not boxes or len(boxes) < len(images) / 2:
        return default, {**evidence, "reason": "background not one colour: objects not measurable, default range"}
    side = float(np.quantile([crop_side_keeping(b) for b in boxes], EXTENT_QUANTILE))
    smallest = round(side * side, 3)
    evidence["crop_side"] = round(side, 3)
    if smallest > NO_CROP_ABOVE:
        return None, {**evidence, "reason": "objects fill the frame: no random crop"}
    return (smallest, 1.0), {**evidence, "reason": f"the smallest crop that keeps {EXTENT_QUANTILE:.0%} of the objects"}


# --- flips ------------------------------------------------------------------------------------------

def flip_changes_labels(ok: np.ndarray, ok_flipped: np.ndarray) -> tuple[bool, dict]:
    """True when accuracy on mirror images drops by more than ``FLIP_DROP_PP`` (its 95% interval above it)."""
    from edgetl.bench.accuracy import paired_drop_interval

    lo, hi = paired_drop_interval(ok, ok_flipped)
    changes = lo > FLIP_DROP_PP
    return changes, {"top1": round(float(ok.mean()), 4), "flipped_top1": round(float(ok_flipped.mean()), 4),
                     "drop_ci_pp": [round(lo, 2), round(hi, 2)], "images": int(ok.size)}


def handedness(features: np.ndarray, mirrored: np.ndarray, seed: int) -> tuple[bool, dict]:
    """Whether the features tell images (``features``) from their mirror images (``mirrored``, row
    for row) on images they were not fitted on: True when the share of held-out pairs told apart
    has its 95% interval above ``HANDED_ABOVE``."""
    from edgetl.bench.accuracy import wilson

    order = np.random.default_rng(seed).permutation(len(features))
    folds = (order[: len(order) // 2], order[len(order) // 2 :])
    told = 0
    for fit, test in (folds, folds[::-1]):
        direction, scale = _mirror_direction(features[fit], mirrored[fit])
        told += int(((features[test] - mirrored[test]) / scale @ direction > 0).sum())
    low, high = wilson(told, len(features))
    return low > HANDED_ABOVE, {"pairs": len(features), "told_apart": round(told / max(len(features), 1), 4),
                                "told_apart_ci": [round(low, 4), round(high, 4)]}


def _mirror_direction(features: np.ndarray, mirrored: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(weights, feature scale) of a ridge classifier, original = +1 and mirror = -1, on standardised
    features; solved through the n x n kernel, since there are fewer images than feature dimensions."""
    x = np.concatenate([features, mirrored]).astype(np.float64)
    scale = x.std(axis=0) + 1e-6
    x = (x - x.mean(axis=0)) / scale
    y = np.concatenate([np.ones(len(features)), -np.ones(len(mirrored))])
    alpha = np.linalg.solve(x @ x.T + x.shape[1] * np.eye(len(x)), y)  # ridge of one per dimension
    return x.T @ alpha, scale


# --- the inner split -------------------------------------------------------------------------------

def inner_split(labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified (fit, held-out) indices of the training split; a class with one image stays in fit."""
    rng = np.random.default_rng(seed)
    fit, held = [], []
    for label in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == label))
        n = max(1, int(round(len(idx) * INNER_FRACTION))) if len(idx) > 1 else 0
        held.extend(idx[:n][: max(1, PROBE_VAL_IMAGES // len(np.unique(labels)))])
        fit.extend(idx[n:])
    return np.sort(np.array(fit, dtype=int)), np.sort(np.array(held, dtype=int))


def _inner_head(f_train, y_train, fit_idx, held_idx, width, num_classes, opts, dist):
    """A linear probe on the fit part's cached features, scored on the held-out part."""
    from edgetl.adapt.feature_extraction import build_head, train_head

    head = dist.execution.without_amp().place(build_head(width, num_classes, opts.head))  # where train_head trains
    result = train_head(f_train[fit_idx], y_train[fit_idx], f_train[held_idx], y_train[held_idx], head, opts, dist)
    head.load_state_dict(result.best_state)
    return head, result


# --- the depth --------------------------------------------------------------------------------------

def _depths(n_stages: int) -> list[str]:
    """The candidate depths that exist in this model, each once ('4' of a 4-stage model is 'all')."""
    out = []
    for depth in DEPTHS:
        if depth == "all" or int(depth) < n_stages:
            out.append(depth)
    return out


def _probe_run(model, depth: str, train_data, held_pixels, y_held, spec, opts, dist, keep_bn_stats) -> dict:
    from edgetl.adapt.finetune import finetune

    started = time.perf_counter()
    short = opts.model_copy(update={"unfreeze": depth, "epochs": 1, "patience": 1})
    result = finetune(model, train_data, held_pixels, y_held, spec, short, dist, keep_bn_stats=keep_bn_stats)
    if result.interrupted:  # fit() swallows Ctrl-C to keep its best state; here it must stop the run
        raise KeyboardInterrupt
    return {"unfreeze": depth, "inner_val_top1": round(result.best_val_top1, 4), "images": len(train_data),
            "seconds": round(time.perf_counter() - started, 1)}


def choose_depth(rows: list[dict], held_images: int) -> str:
    """The deepest fine-tuning depth (rows in increasing depth; the probe's row, "0", is evidence,
    not a candidate) within one standard error of the best inner accuracy."""
    runs = [r for r in rows if r["unfreeze"] != "0"]
    best = max(r["inner_val_top1"] for r in runs)
    se = math.sqrt(best * (1 - best) / max(held_images, 1))
    return [r["unfreeze"] for r in runs if r["inner_val_top1"] >= best - se][-1]


def short_run_images(fit_images: int, train_images: int, epochs: int, depths: int) -> int:
    """Each short run's images: at most ``PROBE_IMAGES`` and the fit part, and all of them together at
    most ``SHORT_RUNS_SHARE`` of fine-tuning's (``epochs`` passes over the training images)."""
    return max(1, min(PROBE_IMAGES, fit_images, int(SHORT_RUNS_SHARE * epochs * train_images / depths)))


def plan_finetune(model, head_prefix: str, *, train_paths: list[str], train_pixels: np.ndarray, y_train: np.ndarray,
                  f_train: np.ndarray, spec: PreprocessSpec, opts: TrainOptions, dist: Dist, keep_bn_stats: bool,
                  extract_features, console=None) -> FinetunePlan:
    """Resolve ``--augment auto`` and ``--unfreeze auto`` (other values pass through, unmeasured).

    ``extract_features(pixels, desc)``: the frozen backbone's pooled features (for mirror images);
    ``console``: where each short run's result is printed as it ends (None: nowhere).
    """
    from edgetl.adapt.finetune import DEFAULT_CROP_SCALE

    choices: dict = {}
    crop, flip = (DEFAULT_CROP_SCALE, True) if opts.augment == "on" else (None, False)
    need_inner = opts.augment == "auto" or opts.unfreeze == "auto"
    fit_idx, held_idx = inner_split(y_train, opts.seed) if need_inner else (None, None)
    if need_inner and len(held_idx) == 0:  # one training image per class: nothing to hold out, nothing to measure
        choices["unmeasured"] = ("one training image per class: no inner split to measure on, so auto means no "
                                 "augmentation and the last stage")
        resolved = opts.model_copy(update={"unfreeze": "1" if opts.unfreeze == "auto" else opts.unfreeze})
        return FinetunePlan(options=resolved.model_copy(update=resolved.recipe()), choices=choices, crop=crop,
                            flip=flip, train_data=training_images(list(train_paths), train_pixels, y_train, spec,
                                                                  crop, flip))
    if need_inner:
        num_classes = int(y_train.max()) + 1
        head, head_result = _inner_head(f_train, y_train, fit_idx, held_idx, f_train.shape[1],
                                        num_classes, opts, dist)
        inner = {"fit_images": len(fit_idx), "held_out_images": len(held_idx),
                 "probe_top1": round(head_result.best_val_top1, 4), "chance": round(1 / num_classes, 4)}
        choices["inner_split"] = inner
    if opts.augment == "auto":
        crop, crop_evidence = crop_scale_from(_sample_images(train_paths, spec, opts.seed), DEFAULT_CROP_SCALE)
        from edgetl.adapt.loop import predict

        sample = _mirror_sample(held_idx, fit_idx, opts.seed)  # the held-out images first: the probe's check
        mirrored = extract_features(train_pixels[sample][:, :, ::-1].copy(), "features (mirrored)")
        handed, handed_evidence = handedness(f_train[sample], mirrored, opts.seed)
        fp32 = dist.execution.without_amp()  # where the inner head is
        ok = predict(head, f_train[held_idx], execution=fp32).argmax(1) == y_train[held_idx]
        ok_flipped = predict(head, mirrored[: len(held_idx)], execution=fp32).argmax(1) == y_train[held_idx]
        changes, flip_evidence = flip_changes_labels(ok, ok_flipped)
        flip = not (handed or changes)
        choices["augment"] = {"crop_scale": list(crop) if crop else None, "crop": crop_evidence, "flip": flip,
                              "handedness": {**handed_evidence, "handed": handed}, "flip_check": flip_evidence}

    def images(idx: np.ndarray | None):
        if idx is None:
            return training_images(list(train_paths), train_pixels, y_train, spec, crop, flip)
        return training_images([train_paths[i] for i in idx], train_pixels[idx], y_train[idx], spec, crop, flip)

    unfreeze, recipe = opts.unfreeze, opts.recipe()  # the recipe as --unfreeze auto resolves it, for every depth
    if opts.unfreeze == "auto":
        choices["unfreeze"] = _choose_unfreeze(model, head, head_prefix, images, fit_idx, held_idx, inner, train_pixels,
                                               y_train, spec, opts.model_copy(update=recipe), dist, keep_bn_stats,
                                               console)
        unfreeze = choices["unfreeze"]["chosen"]
    return FinetunePlan(options=opts.model_copy(update={"unfreeze": unfreeze, **recipe}), train_data=images(None),
                        choices=choices, crop=crop, flip=flip)


def _decided_without_runs(inner: dict, held_images: int) -> tuple[str, str] | None:
    """(depth, why) when the data set's size or the probe's gap leave nothing to measure, else None."""
    classes = round(1 / inner["chance"])
    if held_images < MIN_HELD_PER_CLASS * classes:  # too few images to tell depths apart: the least that adapts
        return "1", f"fewer than {MIN_HELD_PER_CLASS} held-out images per class: no short runs, the last stage only"
    if inner["probe_top1"] >= 1.0:  # nothing left for fine-tuning to gain on the inner split
        return "0", "the probe classifies every held-out image: no short runs, no stage trained"
    return None


def _choose_unfreeze(model, head, head_prefix, images, fit_idx, held_idx, inner, train_pixels, y_train, spec, opts,
                     dist, keep_bn_stats, console) -> dict:
    """The depth and its evidence: one short run per depth from the inner probe, or a rule when none is needed."""
    from edgetl.models.build import body_stages

    rows = [{"unfreeze": "0", "inner_val_top1": inner["probe_top1"], "images": 0, "seconds": 0.0}]
    recipe = {"backbone_lr_scale": opts.backbone_lr_scale, "layer_decay": opts.layer_decay}
    decided = _decided_without_runs(inner, len(held_idx))
    if decided is not None:
        return {"chosen": decided[0], "runs": rows, "train_images": len(y_train), "rule": decided[1], "recipe": recipe}
    depths = _depths(len(body_stages(model)))
    finetune_images = opts.phase_epochs("finetune") * len(y_train)
    budget = short_run_images(len(fit_idx), len(y_train), opts.phase_epochs("finetune"), len(depths))
    budget_idx = fit_idx[np.random.default_rng(opts.seed).permutation(len(fit_idx))[:budget]]
    probe_data = images(np.sort(budget_idx))
    for depth in depths:
        candidate = copy.deepcopy(model)
        candidate.set_submodule(head_prefix, copy.deepcopy(head))
        rows.append(_probe_run(candidate, depth, probe_data, train_pixels[held_idx], y_train[held_idx], spec,
                               opts, dist, keep_bn_stats))
        if console is not None:
            console.print(f"unfreeze {depth}: inner top-1 {rows[-1]['inner_val_top1']:.1%} after "
                          f"{rows[-1]['images']} images ({rows[-1]['seconds']:.0f} s)", highlight=False)
    return {"chosen": choose_depth(rows, len(held_idx)), "runs": rows, "train_images": len(y_train),
            "rule": "the deepest fine-tuning depth within one standard error of the best inner top-1; the probe is "
                    "kept at the end if fine-tuning does not beat it on the validation split",
            "recipe": recipe, "short_runs": {"images": sum(r["images"] for r in rows),
                                             "seconds": round(sum(r["seconds"] for r in rows), 1),
                                             "finetune_images": finetune_images}}


def _mirror_sample(held_idx: np.ndarray, fit_idx: np.ndarray, seed: int) -> np.ndarray:
    """The images whose mirror images are measured: every held-out one, then fit images up to ``HANDED_IMAGES``."""
    extra = np.random.default_rng(seed).permutation(fit_idx)[: max(0, HANDED_IMAGES - len(held_idx))]
    return np.concatenate([held_idx, np.sort(extra)]).astype(int)


def _sample_images(paths: list, spec: PreprocessSpec, seed: int) -> list[np.ndarray]:
    """Up to ``EXTENT_SAMPLE`` training images as the augmentation sees them (shrunk to the eval scale)."""
    from edgetl.adapt.finetune import AugmentedImages, open_item
    from edgetl.data.preprocess import _INTERPOLATION

    rng = np.random.default_rng(seed)
    chosen = rng.permutation(len(paths))[:EXTENT_SAMPLE]
    interp, scale = _INTERPOLATION[spec.interpolation], max(spec.scale_size())
    return [np.asarray(AugmentedImages._shrink(open_item(paths[i]), scale, interp)) for i in sorted(chosen)]
