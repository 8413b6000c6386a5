"""The train summary: every validation top-1 carries its 95% interval and image count."""

from __future__ import annotations

from rich.console import Console

from edgetl.adapt.report import interval_text, print_summary


def _section(heads: list[dict]) -> dict:
    return {"backbone": "efficientnet_lite0", "mode": "feature-extraction",
            "preprocess": {"input_size": [64, 64]},
            "dataset": {"train_images": 288, "val_images": 72, "skipped": [], "val_counts": {"A": 36, "B": 36}},
            "metrics": {"train_top1": 0.8, "val_top1": 57 / 72, "train_images_per_s": 1000.0, "seconds": 1.0,
                        "interrupted": False, "per_class_val_top1": {"A": 0.9, "B": 0.68}},
            "heads": heads}


def _printed(section: dict) -> str:
    console = Console(record=True, width=200)
    print_summary(console, section, history=[])
    return console.export_text()


def test_interval_text_is_the_wilson_interval_of_the_count():
    assert interval_text(57 / 72, 72) == "[68.4%, 86.9%] of 72"  # the same numbers as train --from's old classes
    assert interval_text(1.0, 12) == "[75.8%, 100.0%] of 12"


def test_summary_gives_the_primary_and_every_head_an_interval():
    head = {"name": "family", "metrics": {"val_top1": 34 / 72}, "classes": ["mono", "sans", "serif"],
            "weight": 1.0, "output": "logits_family"}
    text = _printed(_section([head]))
    assert "79.17% [68.4%, 86.9%] of 72" in text
    assert "val top-1 47.22% [36.1%, 58.6%] of 72 (3 classes, weight 1, output logits_family)" in text
