"""Console output of the train stage: skipped images and the closing summary table."""

from __future__ import annotations

from rich.table import Table


def report_skipped(console, skipped: list[tuple[str, str]], limit: int = 20, what: str = "unreadable image(s)") -> None:
    if not skipped:
        return
    console.print(f"[yellow]skipped {len(skipped)} {what}:[/]")
    for path, reason in skipped[:limit]:
        console.print(f"  [yellow]{path}[/]: {reason}", highlight=False)
    if len(skipped) > limit:
        console.print(f"  … and {len(skipped) - limit} more (all listed in manifest.json)")


def kept_text(kept: dict) -> str:
    """Which phase produced the saved weights, e.g. when fine-tuning never beat the linear probe."""
    if kept["phase"] == "finetune":
        return f"fine-tuned weights (epoch {kept['epoch']} of fine-tuning, val {kept['val_top1']:.1%})"
    text = f"linear probe (epoch {kept['epoch']} of the head phase, val {kept['val_top1']:.1%})"
    if kept.get("finetune_best_val_top1") is not None:
        text += f"; fine-tuning did not improve on it (best {kept['finetune_best_val_top1']:.1%})"
    return text


def choice_rows(choices: dict) -> list[tuple[str, str]]:
    """Summary rows for what ``--unfreeze auto``/``--augment auto`` chose and the negative-transfer check."""
    rows = []
    if "unfreeze" in choices:
        runs = ", ".join(f"{r['unfreeze']}: {r['inner_val_top1']:.1%} ({r['seconds']:.0f} s)"
                         for r in choices["unfreeze"]["runs"])
        rows.append(("unfreeze auto", f"{choices['unfreeze']['chosen']} (inner top-1 per depth: {runs})"))
        rows.extend(_recipe_rows(choices["unfreeze"]))
    if "augment" in choices:
        aug = choices["augment"]
        crop = f"crop {aug['crop_scale'][0]:.0%}-100% of the area" if aug["crop_scale"] else "no crop"
        rows.append(("augment auto", f"{crop} ({aug['crop']['reason']}); flips {'on' if aug['flip'] else 'off'} "
                     f"({flip_text(aug)})"))
    check = choices.get("transfer_check")
    if check is not None:
        text = f"probe {check['probe_val_top1']:.1%} vs small CNN from scratch {check['scratch_val_top1']:.1%}"
        rows.append(("transfer", f"[yellow]{check['warning']}[/]" if check["warning"] else text))
    return rows


def _recipe_rows(unfreeze: dict) -> list[tuple[str, str]]:
    """The recipe the short runs and fine-tuning used, and what the short runs cost (runs before
    they were recorded have neither)."""
    rows = []
    if "recipe" in unfreeze:
        recipe = unfreeze["recipe"]
        rows.append(("recipe", f"backbone LR {recipe['backbone_lr_scale']:g} of the head's, layer decay "
                     f"{recipe['layer_decay']:g}"))
    if "short_runs" in unfreeze:
        short = unfreeze["short_runs"]
        rows.append(("short runs", f"{short['images']:,} images in {short['seconds']:.0f} s "
                     f"(fine-tuning: {short['finetune_images']:,} images at most)"))
    return rows


def flip_text(augment: dict) -> str:
    """The evidence of the flip choice: how often the features tell an image from its mirror image
    (runs before the check have none), and the probe's top-1 on mirror images."""
    flip = augment["flip_check"]
    text = f"mirrored top-1 {flip['flipped_top1']:.1%} vs {flip['top1']:.1%}"
    hand = augment.get("handedness")
    if hand is None:
        return text
    verdict = "handed data" if hand["handed"] else "no handedness"
    return f"{verdict}: features tell an image from its mirror in {hand['told_apart']:.0%} of pairs; {text}"


def device_text(execution: dict, world: int) -> str:
    """Where it trained, e.g. ``cuda:0 (NVIDIA H200), bf16 autocast, channels-last, 4 workers, 2 processes``."""
    parts = [execution.get("device", "cpu")]
    if execution.get("amp", "off") != "off":
        parts.append(f"{execution['amp']} autocast")
    if execution.get("channels_last"):
        parts.append("channels-last")
    if execution.get("workers"):
        parts.append(f"{execution['workers']} loader workers")
    if world > 1:
        parts.append(f"{world} processes")
    if execution.get("resumed_from"):
        at = execution["resumed_from"]
        parts.append(f"resumed after {at['phase']} epoch {at['after_epoch']}")
    return ", ".join(parts)


def interval_text(top1: float, n: int) -> str:
    """The Wilson 95% interval of a top-1 measured on ``n`` images, e.g. ``[68.4%, 86.9%] of 72``: on
    the few hundred validation images of a small set a point estimate alone reads more exact than it is."""
    from edgetl.bench.accuracy import wilson

    low, high = wilson(round(top1 * n), n)
    return f"[{low:.1%}, {high:.1%}] of {n}"


def print_summary(console, section: dict, history: list[dict], strategy_rows: list[tuple[str, str]] = ()) -> None:
    """``strategy_rows``: what the training strategy adds (domain adaptation: target accuracy)."""
    m, d = section["metrics"], section["dataset"]
    table = Table(title=f"edgetl train — {section['backbone']} ({section['mode']})", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    if section.get("selection"):
        chosen = section["selection"]
        table.add_row("backbone", f"{section['backbone']}, chosen by --backbone auto for {chosen['target']}: "
                      f"{chosen['reason']}")
    table.add_row("images", f"{d['train_images']} train / {d['val_images']} val, {len(d['skipped'])} skipped")
    table.add_row("input", "x".join(str(s) for s in section["preprocess"]["input_size"]))
    table.add_row("train top-1", f"{m['train_top1']:.2%}")
    n_val = d["val_images"]
    table.add_row("val top-1", f"[bold green]{m['val_top1']:.2%}[/] {interval_text(m['val_top1'], n_val)}")
    for head in section.get("heads") or []:  # --task-head: each extra head on the same backbone (every image labelled)
        top1 = head["metrics"]["val_top1"]
        table.add_row(f"head {head['name']}", f"val top-1 {top1:.2%} {interval_text(top1, n_val)} "
                      f"({len(head['classes'])} classes, weight {head['weight']:g}, output {head['output']})")
    if "kept" in m:
        table.add_row("kept", kept_text(m["kept"]))
    table.add_row("device", device_text(section.get("execution", {}), section.get("world_size", 1)))
    for name, text in [*choice_rows(section.get("choices", {})), *strategy_rows]:
        table.add_row(name, text)
    table.add_row("throughput", f"{m['train_images_per_s']:,.0f} images/s ({history[-1]['phase'] if history else '-'})")
    table.add_row("time", f"{m['seconds']:.1f} s")
    if m["interrupted"]:
        table.add_row("status", "[yellow]interrupted — best checkpoint so far kept; the same command with --resume "
                                "continues at the next epoch[/]")
    console.print(table)
    per_class = Table(title="val top-1 per class")
    per_class.add_column("class")
    per_class.add_column("val images", justify="right")
    per_class.add_column("top-1", justify="right")
    for name, acc in m["per_class_val_top1"].items():
        per_class.add_row(name, str(d.get("val_counts", {}).get(name, "")), f"{acc:.1%}")
    console.print(per_class)
