"""``edgetl select`` and ``--backbone auto``: rank candidate backbones for a data set and a target.

For each candidate: its frozen features on a class-balanced sample of the user's labelled images
(progress bars), scored by LogME and checked by a k-NN probe (``edgetl.adapt.transferability``),
its parameter count, and its latency for the target (``edgetl.adapt.target_latency``: measured
here or read from the cache; "not measured here" when this machine cannot run the target's
runtime). The recommendation is the best LogME among the candidates within the target's p90
latency budget; with no budget, or no latency measured, the best LogME, and the reason says so.
The result is a ``SelectRecord``: the ``select`` section of a run's manifest.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from edgetl.config import load_target, target_names
from edgetl.errors import ConfigError, EdgetlError, MissingDependencyError
from edgetl.models import registry
from edgetl.rundir import Record

# Torch-free and numpy-free at import: the CLI imports this module to build its flags.
AUTO = "auto"  # the --backbone value that runs the selection
DEFAULT_SAMPLES = 500  # LogME and the probe settle with a few hundred images; features cost the most
KNN_K = 5


class Candidate(BaseModel):
    """One row of the ranking. ``latency`` is None with a ``latency_note`` saying why."""

    model_config = ConfigDict(extra="allow")

    backbone: str
    arch: str
    image_size: int
    params: int
    feature_dim: int
    logme: float
    knn_top1: float
    knn_ci: tuple[float, float]
    knn_k: int
    latency: dict[str, Any] | None = None  # p50_ms, p90_ms, threads, runtime, precision, cpu, source
    latency_note: str | None = None
    within_budget: bool | None = None  # None: no budget, or no latency


class SelectRecord(Record):
    """The manifest's ``select`` section: the ranking, the recommendation and why."""

    SECTION: ClassVar[str] = "select"

    target: str
    runtime: str
    precision: str
    budget_p90_ms: float | None
    data: str
    samples: int
    classes: int
    pretrained: bool = True
    candidates: list[Candidate]  # best LogME first
    recommended: str
    reason: str


def default_candidates() -> list[str]:
    """Every offline backbone whose weights package is installed (``missing_candidates`` names the others)."""
    return [b.name for b in registry.offline_backbones() if registry.weights_installed(b)]


def missing_candidates() -> str | None:
    """One line naming the offline backbones left out for want of their weights, or None."""
    missing = [b for b in registry.offline_backbones() if not registry.weights_installed(b)]
    if not missing:
        return None
    return "left out (weights not installed): " + "; ".join(f"{b.name} ({b.weights.pip})" for b in missing)


def candidate_names(text: str | Sequence[str] | None) -> list[str]:
    """``"a,b"`` or a list -> checked names (an unknown one is one line with the valid names)."""
    names = [n.strip() for n in text.split(",")] if isinstance(text, str) else list(text or [])
    names = list(dict.fromkeys(n for n in names if n)) or default_candidates()
    if not names:
        pips = "; ".join(b.weights.pip for b in registry.offline_backbones())
        raise MissingDependencyError(f"no offline backbone's weights are installed: {pips}; or name candidates "
                                     "with --candidates")
    for name in names:
        if name == AUTO:
            raise ConfigError("--candidates lists backbones to compare; 'auto' is what chooses among them")
        registry.resolve(name)
    return names


def target_cell(target: str):
    """The compile cell the latency is measured with, and the profile's p90 budget (None: none)."""
    from edgetl.compiler import plan

    cell = plan([target])[0]
    budget = None
    if target in target_names() or target.endswith(".toml"):
        goals = load_target(target).budgets.as_goals()
        budget = next((g.value for g in goals if g.metric == "p90_latency_ms" and g.bound == "max"), None)
    return cell, budget


def strictest_target(targets: Sequence[str]) -> str:
    """Of deploy's targets, the one with the lowest p90 budget (the first when none has one)."""
    budgets = [(target_cell(t)[1], i, t) for i, t in enumerate(targets)]
    with_budget = [b for b in budgets if b[0] is not None]
    return min(with_budget)[2] if with_budget else targets[0]


def sample(samples: list[tuple[str, int]], n: int, seed: int) -> list[tuple[str, int]]:
    """At most ``n`` samples, class-balanced and seeded (the calibration sampler's rule)."""
    from edgetl.data.arrays import sample_calibration

    labels = dict(samples)
    return [(p, labels[p]) for p in sample_calibration(samples, n, "class-balanced", seed)]


def select(data: str | Path, target: str, *, candidates: str | Sequence[str] | None = None,
           samples: int = DEFAULT_SAMPLES, image_size: int | None = None, pretrained: bool = True,
           seed: int = 0, console=None) -> SelectRecord:
    """Rank ``candidates`` (default: every offline backbone) on a sample of the labelled images in
    ``data`` for ``target`` (a profile or runtime name, as ``edgetl targets`` lists them).

    Example::

        from edgetl.adapt.select import select
        record = select("images", "raspberry-pi-5", candidates="efficientnet_lite0,timm:resnet18")
        print(record.recommended, record.reason)
    """
    from edgetl.data.datasets import load_image_set

    names = candidate_names(candidates)
    target_cell(target)  # a wrong target answers before any image is read
    image_set = load_image_set(data)
    return rank(image_set.samples, image_set.classes, target, names, samples=samples, image_size=image_size,
                pretrained=pretrained, seed=seed, source=str(data), console=console)


def rank(items: list[tuple[str, int]], classes: list[str], target: str, names: list[str], *,
         samples: int = DEFAULT_SAMPLES, image_size: int | None = None, pretrained: bool = True, seed: int = 0,
         source: str = "", console=None, execution=None) -> SelectRecord:
    """``select`` on labelled ``items`` (path, class index) already read, e.g. a training split;
    ``execution``: where features are extracted (``edgetl.adapt.device``; None: the CPU)."""
    if samples < 2 * len(classes):
        raise ConfigError(f"--samples {samples}: give at least 2 per class ({2 * len(classes)} for "
                          f"{len(classes)} classes)")
    chosen = sample(items, samples, seed)
    cell, budget = target_cell(target)
    pixels = _Pixels([p for p, _ in chosen])
    labels = [label for _, label in chosen]
    rows = [_candidate(name, pixels, labels, len(classes), cell, budget, image_size, pretrained, seed, console,
                       execution) for name in names]
    rows.sort(key=lambda r: r.logme, reverse=True)
    recommended, reason = recommend(rows, target, budget)
    return SelectRecord(target=target, runtime=cell.runtime, precision=cell.precision, budget_p90_ms=budget,
                        data=source, samples=len(chosen), classes=len(classes), pretrained=pretrained,
                        candidates=rows, recommended=recommended, reason=reason)


class _Pixels:
    """The sample decoded once per resize rule (candidates at the same size share it)."""

    def __init__(self, paths: list[str]):
        self.paths, self._decoded = paths, {}

    def at(self, spec):
        from edgetl.data.preprocess import decode_images

        key = (spec.input_size, spec.interpolation, spec.crop_pct, spec.crop_mode)
        if key not in self._decoded:  # open_rgb raises the one-line DataError for an unreadable image
            self._decoded[key] = decode_images(self.paths, spec)
        return self._decoded[key]


def _candidate(name, pixels, labels, num_classes, cell, budget, image_size, pretrained, seed, console,
               execution=None) -> Candidate:
    import numpy as np
    import torch

    from edgetl.adapt.distributed import Dist
    from edgetl.adapt.feature_extraction import extract
    from edgetl.adapt.transferability import knn_probe, logme
    from edgetl.models.build import create_model, preprocess_spec

    backbone = registry.resolve(name)
    torch.manual_seed(seed)  # random weights (--no-pretrained) and the new head: the same on every run
    model = create_model(backbone, num_classes, pretrained=pretrained).eval()
    spec = preprocess_spec(model, image_size)
    decoded = pixels.at(spec)
    dist = Dist() if execution is None else Dist(execution=execution.without_amp())  # LogME wants fp32 features
    features = extract(dist.execution.place(model), decoded, spec, dist, f"features {name}", console=console)
    model.cpu()  # the latency export runs on the CPU
    y = np.asarray(labels)
    knn = knn_probe(features, y, KNN_K)
    latency, note = _latency(name, model, decoded, spec, cell, console)
    within = None if budget is None or latency is None else latency["p90_ms"] <= budget
    return Candidate(backbone=name, arch=backbone.arch, image_size=spec.input_size[0],
                     params=sum(p.numel() for p in model.parameters()), feature_dim=features.shape[1],
                     logme=logme(features, y), knn_top1=knn.top1, knn_ci=knn.ci, knn_k=knn.k,
                     latency=latency, latency_note=note, within_budget=within)


def _latency(name, model, decoded, spec, cell, console) -> tuple[dict | None, str | None]:
    """(latency, None), or (None, why there is none); a candidate that cannot be built for the
    target says so in its row and the others are still measured."""
    from edgetl.adapt import target_latency
    from edgetl.data.preprocess import normalize

    why = target_latency.not_measured(cell)
    if why:
        return None, why
    key = target_latency.latency_key(name, spec.input_size[-1], cell)
    cached = target_latency.cached_latency(key)
    if cached is not None:
        return {**cached, "source": "cache"}, None
    x = normalize(decoded[: target_latency.CALIBRATION_IMAGES], spec)  # what the export and calibration read
    try:
        if console is not None:
            with console.status(f"latency {name}: export, compile {cell.runtime} {cell.precision}, time"):
                measured = target_latency.measure_candidate(model, x, cell, key)
        else:
            measured = target_latency.measure_candidate(model, x, cell, key)
    except EdgetlError as exc:
        return None, f"not measured: {exc}"
    return {**measured, "source": "measured"}, None


def recommend(rows: list[Candidate], target: str, budget: float | None) -> tuple[str, str]:
    """(backbone, why): the best LogME within the budget; rows arrive best LogME first."""
    best = rows[0]
    if budget is None:
        return best.backbone, f"best LogME ({best.logme:.3f}); {target} sets no latency budget"
    measured = [r for r in rows if r.latency is not None]
    if not measured:
        return best.backbone, (f"best LogME ({best.logme:.3f}); latency not measured here, so the "
                               f"{budget:g} ms p90 budget of {target} was not applied")
    within = [r for r in measured if r.within_budget]
    if within:
        pick = within[0]
        return pick.backbone, (f"best LogME ({pick.logme:.3f}) of the {len(within)} candidate(s) within {target}'s "
                               f"p90 budget of {budget:g} ms (p90 {pick.latency['p90_ms']:.1f} ms on this machine)")
    fastest = min(measured, key=lambda r: r.latency["p90_ms"])
    return fastest.backbone, (f"no candidate meets {target}'s p90 budget of {budget:g} ms on this machine; "
                              f"the fastest (p90 {fastest.latency['p90_ms']:.1f} ms)")


def _latency_text(row: Candidate) -> str:
    if row.latency is None:
        return row.latency_note or "-"
    cached = " (cached)" if row.latency.get("source") == "cache" else ""
    busy = " !" if row.latency.get("busy") else ""
    return f"{row.latency['p50_ms']:.1f} / {row.latency['p90_ms']:.1f}{cached}{busy}"


def table(record: SelectRecord):
    """The ranking as a rich Table, best LogME first; the recommended row in bold."""
    from rich.markup import escape
    from rich.table import Table

    budget = f"p90 budget {record.budget_p90_ms:g} ms" if record.budget_p90_ms is not None else "no latency budget"
    title = (f"backbones for {record.target} ({record.runtime} {record.precision}, {budget}), "
             f"{record.samples} images of {record.classes} classes")
    out = Table(title=title, title_justify="left")
    for col, justify in (("#", "right"), ("backbone", "left"), ("LogME", "right"), ("k-NN top-1 (95% CI)", "right"),
                         ("params", "right"), ("size", "right"), ("latency p50 / p90 ms", "right"),
                         ("within budget", "left")):
        out.add_column(col, justify=justify)
    for i, r in enumerate(record.candidates, 1):
        within = {True: "[green]yes[/]", False: "[red]no[/]", None: "-"}[r.within_budget]
        name = f"[bold]{escape(r.backbone)}[/] (recommended)" if r.backbone == record.recommended else escape(r.backbone)
        out.add_row(str(i), name, f"{r.logme:.3f}", f"{r.knn_top1:.1%} ({r.knn_ci[0]:.0%}-{r.knn_ci[1]:.0%})",
                    f"{r.params / 1e6:.1f}M", str(r.image_size), escape(_latency_text(r)), within)
    return out


def latency_where(record: SelectRecord) -> str | None:
    """Where the latencies were measured: this machine, not the device the profile describes."""
    cpus = {r.latency["cpu"] for r in record.candidates if r.latency}
    threads = {r.latency["threads"] for r in record.candidates if r.latency}
    if not cpus:
        return None
    return (f"latency: batch 1 on this machine ({', '.join(sorted(cpus))}, {', '.join(map(str, sorted(threads)))} "
            f"thread(s)) with {record.target}'s runtime and precision; the device itself will differ")


def busy_note(record: SelectRecord) -> str | None:
    """What a ``!`` in the latency column means, when a row has one: other processes used the CPU
    while it was timed, so its number (and the budget check on it) may be far off. The cache keeps
    such a measurement too, so the note says how to time it again."""
    busy = [r.backbone for r in record.candidates if r.latency and r.latency.get("busy")]
    if not busy:
        return None
    from edgetl._cache import cache_root

    return (f"! other processes used the CPU while {', '.join(busy)} were timed: those latencies may be far off, "
            f"and so may the budget check; to time them again on an idle machine, delete {cache_root() / 'latency'}")


# -- --backbone auto ---------------------------------------------------------------------------------
def check_auto(backbone: str, target: str | None, weights) -> None:
    """``--backbone auto`` needs a target and starts from pretrained weights, not a checkpoint; a
    target with a named backbone would be ignored, so it is refused."""
    if backbone != AUTO:
        if target:
            raise ConfigError(f"--target is used only by --backbone auto (to choose the backbone); with "
                              f"--backbone {backbone} leave it out and compile for {target} afterwards")
        return
    if not target:
        raise ConfigError("--backbone auto needs --target (a profile from `edgetl targets`): its runtime, "
                          "precision and latency budget decide among the backbones")
    if weights is not None:
        raise ConfigError("--backbone auto chooses pretrained weights itself: leave out --weights, or name "
                          "the backbone the checkpoint belongs to")
    target_cell(target)  # a wrong name answers before training starts


def auto_identity(target: str) -> str:
    """What a run trained with ``--backbone auto`` hashes instead of the backbone: the request, so
    an unchanged rerun is skipped without selecting again."""
    return f"{AUTO}:{target}"


def choose_for_training(train_samples: list[tuple[str, int]], classes: list[str], target: str, *,
                        image_size: int | None, pretrained: bool, seed: int, dist, console) -> SelectRecord:
    """The selection on a sample of the training split (never the validation split, which judges
    the trained model); the first rank selects, every rank gets its result."""
    record = None
    names = candidate_names(None)  # on every rank: a failure here must not leave the others waiting
    if dist.is_main:
        if console is not None:
            console.print(f"--backbone auto: ranking {', '.join(names)} for {target}", highlight=False)
            if missing_candidates():
                console.print(missing_candidates(), highlight=False)
        record = rank(train_samples, classes, target, names, samples=max(DEFAULT_SAMPLES, 2 * len(classes)),
                      image_size=image_size, pretrained=pretrained, seed=seed, source="training split",
                      console=console, execution=dist.execution)
    if dist.enabled:
        import torch.distributed

        box = [record.dump() if record is not None else None]
        torch.distributed.broadcast_object_list(box, src=0)
        record = SelectRecord.model_validate(box[0])
    return record


def choice_summary(record: SelectRecord) -> dict[str, Any]:
    """What the train section records of the choice (the ranking itself is the ``select`` section)."""
    return {"by": AUTO, "target": record.target, "backbone": record.recommended, "reason": record.reason}
