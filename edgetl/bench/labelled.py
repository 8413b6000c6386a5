"""Accuracy on the device: a bundle's top-1, top-5 and per-class top-1 on a labelled image folder.

A labelled folder holds one subfolder per class, named like the bundle's labels (a subset is fine),
or is a CSV of ``path,label`` rows (paths relative to the CSV). Images go through the bundle's own
preprocessing (its task's ``preprocess``) in chunks, so memory stays flat whatever the folder's size.
numpy and Pillow only: this runs on a device without PyTorch.

The device has no FP32 model, so the drop is measured against the workstation's FP32 top-1 (the
bundle manifest's ``workstation.accuracy``), on *different* images: its interval is Newcombe's
unpaired one, wider than the paired interval the workstation gets, and the result says so.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from edgetl.bench.accuracy import collect_outputs, unpaired_drop_interval
from edgetl.data.datasets import csv_entries, folder_entries
from edgetl.data.layout import IMAGE_SUFFIXES
from edgetl.errors import DataError
from edgetl.tasks import DEFAULT_TASK
from edgetl.tasks.base import TaskRecord
from edgetl.tensors import concat

_CHUNK = 64  # images preprocessed at a time: ~40 MB at 224x224


def labelled_images(source: str | Path, labels: Sequence[str], task=None) -> tuple[list, np.ndarray, list[dict]]:
    """(samples, label indices into ``labels``, samples skipped while reading) of a labelled data
    set: images: a folder or CSV of image paths (read later, an unreadable one skipped then);
    another ``task``: its ``read_labelled`` layouts (what it skips, e.g. empty texts, is listed). A
    class that is not one of ``labels`` is an error naming it, so a typo never silently counts as a
    wrong answer."""
    source = Path(source)
    if not source.exists():
        raise DataError(f"labelled data {source} does not exist: give a folder with one subfolder per label, "
                        "or a CSV (images: path,label; text: text,label)")
    skipped: list[dict] = []
    if task is not None and task.name != DEFAULT_TASK:
        found = task.read_labelled(source)
        entries = list(zip(found.samples, found.labels, strict=True))
        skipped = [{"path": str(sample), "reason": reason} for sample, reason in found.skipped]
    else:
        entries = csv_entries(source) if source.is_file() else folder_entries(source)
    unknown = sorted({name for _, name in entries} - set(labels))
    if unknown:
        raise DataError(f"{source}: {', '.join(map(repr, unknown))} {'is' if len(unknown) == 1 else 'are'} not "
                        f"among the bundle's labels ({', '.join(labels)}): rename or remove "
                        f"{'it' if len(unknown) == 1 else 'them'}")
    if not entries:
        raise DataError(f"{source} contains no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    index = {name: i for i, name in enumerate(labels)}
    return [p for p, _ in entries], np.array([index[name] for _, name in entries], np.int64), skipped


def _readable(task, path, record: TaskRecord, skipped: list[dict]) -> bool:
    try:
        task.preprocess([path], record)
        return True
    except DataError as exc:
        skipped.append({"path": str(path), "reason": str(exc)})
        return False


def folder_outputs(session, paths: list[Path], task, record: TaskRecord,
                   progress: Callable[[float, float], None] | None = None) -> tuple[dict[str, np.ndarray], list[int], list[dict]]:
    """Outputs (by name) of every readable sample, the indices of those samples, and the unreadable
    ones (skipped), through the task's own preprocessing."""
    outputs, kept, skipped = [], [], []
    for start in range(0, len(paths), _CHUNK):
        good = list(range(start, min(start + _CHUNK, len(paths))))
        try:  # one batch (a text batch is padded to its longest text, so batches are not concatenated)
            feeds = task.preprocess([paths[i] for i in good], record)
        except DataError:  # find the unreadable samples one by one, then batch the others
            good = [i for i in good if _readable(task, paths[i], record, skipped)]
            feeds = task.preprocess([paths[i] for i in good], record) if good else None
        if good:
            outputs.append(collect_outputs(session, feeds))
            kept += good
        if progress is not None:
            progress(min(start + _CHUNK, len(paths)), len(paths))
    return concat(outputs), kept, skipped


def folder_accuracy(session, source: str | Path, images: tuple[list[Path], np.ndarray, list[dict]], task, record: TaskRecord,
                    workstation: dict | None = None,
                    progress: Callable[[float, float], None] | None = None, enrolled: Sequence[str] = ()) -> dict:
    """The task's metrics against labels only (image classification: ``label_accuracy``) of
    ``session`` on ``images`` (``labelled_images(source, labels)``, scanned before any runtime is
    loaded), plus the drop against the workstation's FP32 top-1 (``workstation``: the bundle's
    ``workstation.accuracy``) with its unpaired interval, unless the images show a class of
    ``enrolled`` (enrolled on a device after that top-1 was measured: no drop to speak of)."""
    paths, targets, skipped_reading = images
    outputs, kept, skipped = folder_outputs(session, paths, task, record, progress)
    skipped = skipped_reading + skipped
    if not kept:
        raise DataError(f"{source}: none of its {len(paths)} images could be read (first: {skipped[0]['reason']})")
    result = task.evaluate(outputs, targets[kept], None, list(record.classes))
    result.update(source=str(source), skipped=skipped)
    ws = workstation or {}
    shown = sorted({record.classes[i] for i in np.unique(targets[kept])} & set(enrolled))
    if shown:
        result.update(drop_against=f"nothing (no drop given): {', '.join(shown)} enrolled on a device after the "
                                   "workstation measured its FP32 top-1, on the trained classes")
    elif ws.get("fp32_top1") is not None and ws.get("n"):
        result.update(
            fp32_top1=ws["fp32_top1"],
            drop_pp=(ws["fp32_top1"] - result["top1"]) * 100.0,
            drop_ci_pp=list(unpaired_drop_interval(ws["fp32_top1"], ws["n"], result["top1"], result["n"])),
            drop_against=f"the workstation's FP32 top-1 on its {ws['n']} validation samples (different samples: "
                         "unpaired 95% interval, Newcombe)",
        )
    return result


def _check_argument_order(path: str | Path, source: str | Path) -> None:
    """``val ./labelled model.tar.gz``: say the bundle comes first, not that the folder is a bad bundle."""
    from edgetl.bundle.format import is_bundle

    if is_bundle(source) and not is_bundle(path):
        raise DataError(f"{path} is the labelled data and {source} the bundle: the bundle comes first, "
                        f"e.g. edgetl val {source} {path}")


def bundle_accuracy(path: str | Path, source: str | Path, threads: int | None = None,
                    progress: Callable[[float, float], None] | None = None) -> dict:
    """``edgetl val``: a bundle's accuracy on a labelled folder, with the workstation's beside it."""
    from edgetl.bundle.runner import open_bundle, open_session

    _check_argument_order(path, source)
    bundle = open_bundle(path)
    images = labelled_images(source, bundle.labels, bundle.task)  # a bad folder fails before the runtime loads
    workstation = (bundle.manifest.get("workstation") or {}).get("accuracy")
    with open_session(bundle, threads) as session:
        accuracy = folder_accuracy(session, source, images, bundle.task, bundle.record, workstation, progress,
                                   enrolled=(bundle.manifest.get("head") or {}).get("enrolled", []))
    return {"bundle": bundle.name, "runtime": bundle.runtime, "precision": bundle.precision,
            "accuracy": accuracy, "workstation_accuracy": workstation}
