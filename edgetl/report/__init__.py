"""``edgetl report``: report.json (all data), report.md (tables), report.html (tables and charts).

Both documents lead with the decision (per target: the artifact to ship, PASS/FAIL), then the
bundles, the charts and the details (``edgetl.report.render``).

The report works on a run at any stage and says which stages are missing. Charts need matplotlib
(the ``[report]`` extra); without it the HTML still has every table and says how to get the charts,
because a report without pictures is still worth more than no report.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from edgetl._io import write_json, write_text
from edgetl._lazy import available
from edgetl.report.data import collect
from edgetl.report.render import to_html, to_markdown
from edgetl.rundir import RunDir


@dataclass
class Written:
    files: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _plots(data: dict, notes: list[str]) -> dict[str, list[tuple[str, str]]]:
    """Chart name (as in ``render.sections``) -> [(caption, inline svg)]."""
    validation = data.get("validation") or {}
    if not (data["bench"] or data.get("history") or validation.get("confusion") or data.get("optimize")):
        return {}
    if not available("matplotlib"):
        notes.append("charts left out: matplotlib is not installed (pip install 'edgetl[report]')")
        return {}
    from edgetl.report import optimize as p_opt
    from edgetl.report import plots as p

    charts: dict[str, list[tuple[str, str | None]]] = {}
    for device, docs in data["bench"].items():
        charts[f"bench:{device}"] = [
            ("Accuracy against latency: artifacts on the black line are the best trade-offs; anything "
             "below or right of it is beaten by one of them on both.", p.accuracy_latency_svg(docs, device)),
            ("Latency of every timed run: where most runs fall (box), the median (line) and the tail "
             "(whiskers, dots, p90 tick).", p.latency_distribution_svg(docs, device)),
        ]
    for target, record in (data.get("optimize") or {}).items():
        charts[f"optimize:{target}"] = [
            ("Accuracy drop against latency of every point optimize timed: the star is the pick, the black line the "
             "best trade-offs, the dashed line the drop budget; faded points miss a budget.", p_opt.pareto_svg(record))]
    if data.get("history"):
        phases = len({r.get("phase") for r in data["history"]})
        caption = "Loss and top-1 per epoch" + ("; the dashed line is where the next training phase starts (the "
                                                "head first, then the backbone)." if phases > 1 else ".")
        charts["history"] = [(caption, p.training_curves_svg(data["history"]))]
    if validation.get("confusion"):
        charts["confusion"] = [("Rows are the true classes, columns the predictions; the diagonal is what the "
                                "model gets right.", p.confusion_svg(validation))]
    return {name: [(caption, svg) for caption, svg in made if svg] for name, made in charts.items()}


def make_report(run_path: str | Path) -> Written:
    """Write ``report.{json,md,html}`` into the run directory (atomically) and return their paths."""
    run = RunDir.open(run_path)
    data, notes = collect(run)
    plots = _plots(data, notes)
    captions = {name: [caption for caption, _ in charts] for name, charts in plots.items()}
    written = Written(notes=notes)
    for name, content in (("report.json", None), ("report.md", to_markdown(data, notes, captions)),
                          ("report.html", to_html(data, notes, plots))):
        path = run.path / name
        if content is None:
            write_json(path, {**data, "notes": notes})
        else:
            write_text(path, content)
        written.files.append(path)
    return written
