"""Domain adaptation: fine-tuning on the labelled source images that also sees unlabelled images of
the domain the model will run in (``--target-data``), then AdaBN. The model that ships is one plain
network: the alignment exists only during training and AdaBN only changes BatchNorm statistics.

Order (edgetl/adapt/domain.py says why AdaBN needs source statistics): BatchNorm statistics
re-estimated on the source images and the head fitted again on the features they give; fine-tuning
with those statistics kept (BatchNorm learning them from batches of 32 loses the probe's accuracy),
the alignment loss (``--alignment``) joining the gradient; the best epoch's weights with clean
source statistics; finally every statistic re-estimated on the target images. With ``--target-val`` (labelled target images) the target accuracy after each step
goes to the manifest (``train.adaptation.target_val``) and the summary.
"""

from __future__ import annotations

import os

import numpy as np
from pydantic import Field

from edgetl.adapt.alignments import NONE, alignments, get_alignment
from edgetl.adapt.options import _Options, flag
from edgetl.adapt.strategies import Phase2, Phase2Result, Strategy, kept_of, plan
from edgetl.data import unlabelled
from edgetl.data.datasets import load_image_set
from edgetl.errors import ConfigError, UnknownNameError

# benchmarks/domain_adapt.py (48 px, 3 epochs): target top-1 30.8% AdaBN alone, 33.6% coral, 34.0% mcc
# (one image of 250 apart); coral costs less time and needs no confident target predictions
DEFAULT_ALIGNMENT = "coral"


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
        files = unlabelled.image_files(opts.target_data, "--target-data")
        target_pixels = unlabelled.decode(files, p.spec)
        target_val = _TargetVal(p)
        target_val.score("head only")
        chosen = plan(p)  # --augment/--unfreeze auto measured on the model phase 1 left (its features are f_train)
        domain.reestimate_batchnorm(p.model, p.train_pixels, p.spec)  # AdaBN needs source statistics to replace
        head = _refit_head(p)
        train_net = None
        if opts.alignment != NONE:
            target_data = chosen.images([str(f) for f in files], target_pixels, np.zeros(len(files), np.int64), p.spec)
            train_net = domain.aligner(target_data, get_alignment(opts.alignment), opts.alignment_weight,
                                       opts.batch_size, opts.seed)
        result = finetune(p.model, chosen.train_data, p.val_pixels, p.y_val, p.spec, chosen.options, p.dist,
                          on_improve=p.save, keep_bn_stats=True, console=p.console, on_epoch=p.on_epoch,
                          train_net=train_net, checkpoint=p.checkpoint)
        kept = kept_of("head", p.head)
        if result.best_state is not None:
            p.model.load_state_dict(result.best_state)
            kept = kept_of("finetune", result)
        domain.reestimate_batchnorm(p.model, p.train_pixels, p.spec)
        target_val.score("fine-tuned")
        domain.reestimate_batchnorm(p.model, target_pixels, p.spec)
        target_val.score("adapted")
        record = {
            "method": "adabn" if opts.alignment == NONE else f"adabn+{opts.alignment}",
            "alignment": opts.alignment,
            "alignment_weight": opts.alignment_weight,
            "target_data": str(opts.target_data),
            "target_images": len(files),
            "target_hash": unlabelled.files_hash(opts.target_data, files),
            "head_on_source_statistics_val_top1": head.best_val_top1,
            **target_val.record(),
        }
        return Phase2Result(result, kept, record, chosen.choices)

    def summary_rows(self, record: dict) -> list[tuple[str, str]]:
        rows = [("adaptation", f"{record['method']} on {record['target_images']} target images "
                 f"({record['target_data']})")]
        if "target_val" in record:
            steps = " → ".join(f"{step} {top1:.1%}" for step, top1 in record["target_val"]["top1"].items())
            rows.append(("target val top-1", f"{steps} ({record['target_val']['images']} images)"))
        return rows


def _refit_head(p: Phase2):
    """The head again, on the features the source statistics give (phase 1 saw ImageNet's)."""
    from edgetl.adapt.feature_extraction import extract, train_head

    f_train = extract(p.model, p.train_pixels, p.spec, p.dist, "features (source statistics)", console=p.console)
    f_val = extract(p.model, p.val_pixels, p.spec, p.dist, "features (source statistics, val)", console=p.console)
    head = p.model.get_classifier()
    fit = train_head(f_train, p.y_train, f_val, p.y_val, head, p.opts, p.dist, console=p.console)
    if fit.best_state is not None:  # None: interrupted before its first epoch ended
        head.load_state_dict(fit.best_state)
    return fit


class _TargetVal:
    """Top-1 on --target-val (labelled target images) after each step; nothing without the option."""

    def __init__(self, p: Phase2):
        self.p, self.top1 = p, {}
        if p.opts.target_val is not None:
            samples = load_image_set(p.opts.target_val, classes=p.classes).samples
            self.pixels = unlabelled.decode([path for path, _ in samples], p.spec)
            self.labels = np.array([label for _, label in samples])

    def score(self, step: str) -> None:
        from edgetl.adapt import domain

        if self.p.opts.target_val is not None:
            self.top1[step] = domain.top1(self.p.model, self.pixels, self.labels, self.p.spec, self.p.dist.execution)

    def record(self) -> dict:
        if self.p.opts.target_val is None:
            return {}
        return {"target_val": {"source": str(self.p.opts.target_val), "images": len(self.labels), "top1": self.top1}}
