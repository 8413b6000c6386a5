"""``edgetl report``: report.json (all data), report.md (tables), report.html (tables and charts).

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
    if not data["bench"]:
        return {}
    if not available("matplotlib"):
        notes.append("charts left out: matplotlib is not installed (pip install 'edgetl[report]')")
        return {}
    from edgetl.report.plots import accuracy_latency_svg, latency_distribution_svg

    plots: dict[str, list[tuple[str, str]]] = {}
    for device, docs in data["bench"].items():
        charts = [
            ("Latency of every timed run: where most runs fall (box), the median (line) and the tail "
             "(whiskers, dots, p90 tick).", latency_distribution_svg(docs, device)),
            ("Accuracy against latency: artifacts on the black line are the best trade-offs; anything "
             "below or right of it is beaten by one of them on both.", accuracy_latency_svg(docs, device)),
        ]
        plots[device] = [(caption, svg) for caption, svg in charts if svg]
    return plots


def make_report(run_path: str | Path) -> Written:
    """Write ``report.{json,md,html}`` into the run directory (atomically) and return their paths."""
    run = RunDir.open(run_path)
    data, notes = collect(run)
    plots = _plots(data, notes)
    written = Written(notes=notes)
    for name, content in (("report.json", None), ("report.md", to_markdown(data, notes)),
                          ("report.html", to_html(data, notes, plots))):
        path = run.path / name
        if content is None:
            write_json(path, {**data, "notes": notes})
        else:
            write_text(path, content)
        written.files.append(path)
    return written
