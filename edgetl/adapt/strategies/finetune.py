"""Fine-tuning: after the head (LP-FT), the last ``--unfreeze`` stages with the head on augmented
images (edgetl/adapt/finetune.py); the probe is kept when fine-tuning never beats it."""

from __future__ import annotations

from edgetl.adapt.strategies import Phase2, Phase2Result, Strategy, kept_of


def training_images(p: Phase2, paths, pixels, labels):
    """Augmented images (random resized crop + flip), or the eval preprocessing with --no-augment."""
    import torch

    from edgetl.adapt.finetune import AugmentedImages
    from edgetl.data import arrays

    if p.opts.augment:
        return AugmentedImages(paths, labels, p.spec)
    return torch.utils.data.TensorDataset(torch.from_numpy(arrays.normalize(pixels, p.spec)), torch.from_numpy(labels))


class Finetune(Strategy):
    description = "head first, then the last N stages."

    def after_head(self, p: Phase2) -> Phase2Result:
        from edgetl.adapt.finetune import finetune

        train_data = training_images(p, p.train_paths, p.train_pixels, p.y_train)
        result = finetune(p.model, train_data, p.val_pixels, p.y_val, p.spec, p.opts, p.dist, on_improve=p.save,
                          keep_bn_stats=p.pretrained_start, console=p.console, on_epoch=p.on_epoch,
                          checkpoint=p.checkpoint)
        if result.best_state is not None and result.best_val_top1 >= p.head.best_val_top1:
            p.model.load_state_dict(result.best_state)
            return Phase2Result(result, kept_of("finetune", result))
        # fine-tuning never beat the probe: keep the probe (its checkpoint is re-saved by train)
        p.model.load_state_dict(p.probe_state)
        kept = kept_of("head", p.head)
        kept["finetune_best_val_top1"] = result.best_val_top1 if result.best_state is not None else None
        return Phase2Result(result, kept)
