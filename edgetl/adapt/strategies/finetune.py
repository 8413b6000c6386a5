"""Fine-tuning: after the head (LP-FT), the last ``--unfreeze`` stages with the head on augmented
images (edgetl/adapt/finetune.py; ``auto`` values measured by edgetl/adapt/auto.py); the probe is
kept when fine-tuning never beats it."""

from __future__ import annotations

from edgetl.adapt.strategies import Phase2, Phase2Result, Strategy, kept_of, plan


class Finetune(Strategy):
    description = "head first, then the last N stages."

    def after_head(self, p: Phase2) -> Phase2Result:
        from edgetl.adapt.finetune import finetune

        chosen = plan(p)
        result = finetune(p.model, chosen.train_data, p.val_pixels, p.y_val, p.spec, chosen.options, p.dist,
                          on_improve=p.save, keep_bn_stats=p.pretrained_start, console=p.console, on_epoch=p.on_epoch,
                          checkpoint=p.checkpoint, train_net=p.train_net, joint=p.joint)
        if result.best_state is not None and result.best_val_top1 >= p.head.best_val_top1:
            p.model.load_state_dict(result.best_state)
            return Phase2Result(result, kept_of("finetune", result), choices=chosen.choices)
        # fine-tuning never beat the probe: keep the probe (its checkpoint is re-saved by train)
        p.model.load_state_dict(p.probe_state)
        kept = kept_of("head", p.head)
        kept["finetune_best_val_top1"] = result.best_val_top1 if result.best_state is not None else None
        return Phase2Result(result, kept, choices=chosen.choices)
