"""A training strategy from outside edgetl: after the probe, scale the head's weights by --shrink
(logits shrink, predictions stay). One class, one options model, one entry point."""

from __future__ import annotations

from pydantic import Field

from edgetl.adapt.loop import FitResult
from edgetl.adapt.options import _Options
from edgetl.adapt.strategies import Phase2, Phase2Result, Strategy, kept_of


class ShrinkOptions(_Options):
    shrink: float = Field(0.5, gt=0, le=1, description="shrink-head: factor for the head's weights.")


class ShrinkHead(Strategy):
    description = "the probe, its head's weights scaled by --shrink."
    options_model = ShrinkOptions

    def after_head(self, p: Phase2) -> Phase2Result:
        import torch

        with torch.no_grad():
            for weight in p.model.get_classifier().parameters():
                weight.mul_(p.opts.shrink)
        return Phase2Result(FitResult(), kept_of("head", p.head), {"shrunk_by": p.opts.shrink})

    def summary_rows(self, record: dict) -> list[tuple[str, str]]:
        return [("head shrunk by", str(record["shrunk_by"]))]
