"""Domain adaptation: fine-tuning on the labelled source images that also sees unlabelled images of
the domain the model will run in (``--target-data``), then AdaBN. The model that ships is one plain
network: the alignment exists only during training and AdaBN only changes BatchNorm statistics.

Order (edgetl/adapt/domain.py says why): fine-tuning with BatchNorm in batch mode, so the network
learns to work with the statistics of the images it sees (source batches with their own, target
batches with theirs), the alignment loss (``--alignment``) joining the gradient; the best epoch's
weights with the running statistics re-estimated on the source images ("fine-tuned"); then on
the target images ("adapted": what ships). Only the trained stages' BatchNorm changes: frozen ones
normalised with ImageNet's statistics all along. Source val top-1 after each step goes to the
manifest (``train.adaptation.source_val``); with ``--target-val`` (labelled target images) the
target's too (``train.adaptation.target_val``) and the summary.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
from pydantic import Field

from edgetl.adapt.alignments import NONE, alignments, get_alignment
from edgetl.adapt.options import _Options, flag
from edgetl.adapt.strategies import Phase2, Phase2Result, Strategy, kept_of, plan
from edgetl.data import unlabelled
from edgetl.data.datasets import load_image_set
from edgetl.data.preprocess import decode_images
from edgetl.errors import ConfigError, UnknownNameError

# coral costs less time than mcc and needs no confident target predictions (benchmarks/domain_adapt.py)
DEFAULT_ALIGNMENT = "coral"
MAX_TARGET_IMAGES = 5_000  # the most --target-data images used (a seeded sample); all of them are hashed
RECIPE = {"unfreeze": "all", "backbone_lr_scale": 1.0, "layer_decay": 1.0}  # batch_statistics_recipe


class DomainAdaptOptions(_Options):
    target_data: str | None = Field(None, description="domain-adapt (required): folder of unlabelled images "
                                    "of the domain the model will run in, at any depth; class subfolders are ignored.")
    target_val: str | None = Field(None, description="domain-adapt: labelled target images (same classes, as "
                                   "--data) to report target accuracy before and after adaptation.")
    alignment: str = Field(DEFAULT_ALIGNMENT, description=f"domain-adapt: loss that aligns target with source "
                           f"features while fine-tuning: {', '.join(alignments())}, or {NONE} (AdaBN only).")
    alignment_weight: float = Field(1.0, gt=0, le=1000, description="domain-adapt: weight of the alignment "
                                    "loss beside the cross-entropy.")


class DomainAdapt(Strategy):
    description = "finetune that also sees unlabelled --target-data, then AdaBN (BatchNorm statistics of the target)."
    options_model = DomainAdaptOptions

    def check(self, opts) -> None:
        if opts.target_data is None:
            raise ValueError("--mode domain-adapt needs --target-data DIR: a folder of unlabelled images from "
                             "the domain the model will run in")
        if opts.alignment not in (*alignments(), NONE):
            raise ValueError(f"option {flag('alignment')}: {UnknownNameError('alignment', opts.alignment, (*alignments(), NONE))}")

    def check_inputs(self, opts) -> None:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise ConfigError("--mode domain-adapt trains in one process: run it without torchrun")
        unlabelled.check_readable(unlabelled.image_files(opts.target_data, "--target-data"), "--target-data")
        if opts.target_val is not None:
            load_image_set(opts.target_val)  # a wrong path or an empty folder answers now

    def check_classes(self, opts, classes: list[str]) -> None:
        if opts.target_val is not None:  # a class the model does not know answers before the head trains
            load_image_set(opts.target_val, classes=classes)

    def input_hashes(self, opts) -> dict[str, str]:
        files = unlabelled.image_files(opts.target_data, "--target-data")
        hashes = {"target_data": unlabelled.files_hash(opts.target_data, files)}
        if opts.target_val is not None:
            hashes["target_val"] = load_image_set(opts.target_val).content_hash()
        return hashes

    def after_head(self, p: Phase2) -> Phase2Result:
        from edgetl.adapt import domain
        from edgetl.adapt.finetune import finetune

        opts = p.opts
        every = unlabelled.image_files(opts.target_data, "--target-data")
        files = _at_most(every, MAX_TARGET_IMAGES, opts.seed)
        target_pixels = decode_images(files, p.spec)
        scores = _Scores(p)
        scores.score("head only")
        recipe = batch_statistics_recipe(opts)
        chosen = plan(dataclasses.replace(p, opts=opts.model_copy(update=recipe)))
        train_net = None
        if opts.alignment != NONE:
            target_data = chosen.images([str(f) for f in files], target_pixels, np.zeros(len(files), np.int64), p.spec)
            train_net = domain.aligner(target_data, get_alignment(opts.alignment), opts.alignment_weight,
                                       opts.batch_size, opts.seed, p.dist.execution)
        result = finetune(p.model, chosen.train_data, p.val_pixels, p.y_val, p.spec, chosen.options, p.dist,
                          on_improve=p.save, keep_bn_stats=False, console=p.console, on_epoch=p.on_epoch,
                          train_net=train_net, checkpoint=p.checkpoint)
        kept = kept_of("head", p.head)
        if result.best_state is not None:
            p.model.load_state_dict(result.best_state)
            kept = kept_of("finetune", result)
        # the frozen stages' BatchNorm normalised with ImageNet's statistics while training: only the
        # layers that learned with batch statistics take the source's, then the target's
        adapted = domain.trained_batchnorms(p.model)
        domain.reestimate_batchnorm(p.model, p.train_pixels, p.spec, layers=adapted)  # the running average's drift gone
        scores.score("fine-tuned")
        domain.reestimate_batchnorm(p.model, target_pixels, p.spec, layers=adapted)
        scores.score("adapted")
        record = {
            "method": "adabn" if opts.alignment == NONE else f"adabn+{opts.alignment}",
            "alignment": opts.alignment,
            "alignment_weight": opts.alignment_weight,
            "target_data": str(opts.target_data),
            "target_images": len(files),
            "target_images_found": len(every),
            "target_hash": unlabelled.files_hash(opts.target_data, every),
            "recipe": {key: getattr(chosen.options, key) for key in RECIPE},
            "adapted_batchnorms": len(adapted),
            **scores.record(),
        }
        return Phase2Result(result, kept, record, chosen.choices)

    def summary_rows(self, record: dict) -> list[tuple[str, str]]:
        rows = [("adaptation", f"{record['method']} on {record['target_images']} target images "
                 f"({record['target_data']})")]
        if "target_val" in record:
            steps = " → ".join(f"{step} {top1:.1%}" for step, top1 in record["target_val"]["top1"].items())
            rows.append(("target val top-1", f"{steps} ({record['target_val']['images']} images)"))
            if record["target_val"].get("warning"):
                rows.append(("warning", f"[yellow]{record['target_val']['warning']}[/]"))
        steps = " → ".join(f"{step} {top1:.1%}" for step, top1 in record["source_val"]["top1"].items())
        rows.append(("source val top-1", steps))
        return rows


def _at_most(files: list, n: int, seed: int) -> list:
    """A seeded sample of ``n`` files when there are more: decoded target images are held in memory, and
    AdaBN's statistics and the alignment's batches settle long before tens of thousands."""
    if len(files) <= n:
        return files
    keep = np.sort(np.random.default_rng(seed).choice(len(files), n, replace=False))
    return [files[i] for i in keep]


def batch_statistics_recipe(opts) -> dict:
    """The options this strategy trains with where the user gave none: every stage, and the
    backbone at the head's learning rate. With BatchNorm in batch mode the pretrained features must
    be relearned, which the finetune defaults do too slowly (the digits of benchmarks/domain_adapt.py,
    48 px: source val 49% after 3 epochs at 0.1 x and layer decay 0.5; 76% at 1 x and 1, 95% after 5)."""
    return {key: value for key, value in RECIPE.items() if key not in opts.model_fields_set}


class _Scores:
    """Top-1 on the source validation split, and on --target-val (labelled target images) when
    given, after each step."""

    def __init__(self, p: Phase2):
        self.p, self.top1, self.source_top1 = p, {}, {}
        if p.opts.target_val is not None:
            samples = load_image_set(p.opts.target_val, classes=p.classes).samples
            self.pixels = decode_images([path for path, _ in samples], p.spec)
            self.labels = np.array([label for _, label in samples])

    def score(self, step: str) -> None:
        from edgetl.adapt import domain

        p = self.p
        self.source_top1[step] = domain.top1(p.model, p.val_pixels, p.y_val, p.spec, p.dist.execution)
        if p.opts.target_val is not None:
            self.top1[step] = domain.top1(p.model, self.pixels, self.labels, p.spec, p.dist.execution)

    def record(self) -> dict:
        record = {"source_val": {"top1": self.source_top1}}
        if self.p.opts.target_val is not None:
            record["target_val"] = {"source": str(self.p.opts.target_val), "images": len(self.labels),
                                    "top1": self.top1, "warning": worse_after_adapting(self.top1)}
        return record


def worse_after_adapting(top1: dict[str, float]) -> str | None:
    """A warning when the model that ships (``adapted``) scores below an earlier step on the labelled
    target images: adaptation did not pay on this data, and the user must know before shipping."""
    best_step = max(top1, key=top1.get)
    if top1["adapted"] >= top1[best_step]:
        return None
    return (f"adaptation lowered target val top-1 ({best_step} {top1[best_step]:.1%} -> adapted "
            f"{top1['adapted']:.1%}); the adapted model is the one saved: try --alignment none, more target "
            "images, or --mode finetune")
