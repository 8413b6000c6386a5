"""What ``edgetl optimize`` prints: the candidate table and one paragraph on the pick."""

from __future__ import annotations

from rich.markup import escape
from rich.table import Table

from edgetl.optimize.record import OptimizeRecord, PointResult


def _ms(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def _drop(acc: dict | None) -> str:
    if not acc:
        return "—"
    ci = acc.get("drop_ci_pp")
    return f"{acc['drop_pp']:+.2f}" + (f" [{ci[0]:+.1f},{ci[1]:+.1f}]" if ci else "")


def _vs_torch(record: OptimizeRecord, row: PointResult) -> str:
    ref = record.reference or {}
    by = (ref.get("by_threads") or {}).get(str(row.threads)) or (ref if ref.get("threads") == row.threads else None)
    if not by or not row.latency:
        return "—"
    return f"{by['p50_ms'] / row.latency['p50_ms']:.1f}x"


_STATUS_STYLE = {"picked": "bold green", "measured": "", "pruned": "dim", "failed": "red", "skipped": "dim"}


def candidate_table(record: OptimizeRecord) -> Table:
    table = Table(title=f"optimize {record.target} on {record.device}", title_justify="left")
    for col, just in [("id", "left"), ("runtime", "left"), ("variant", "left"), ("precision", "left"),
                      ("threads", "right"), ("size MB", "right"), ("top-1", "right"), ("drop pp [95% CI]", "right"),
                      ("p50 ms", "right"), ("p90 ms", "right"), ("vs PyTorch", "right"), ("pareto", "center"),
                      ("status", "left")]:
        table.add_column(col, justify=just)
    order = {"picked": 0, "measured": 1, "pruned": 2, "failed": 3, "skipped": 4}
    notes = []
    for row in sorted(record.points, key=lambda r: (order[r.status], (r.latency or {}).get("p50_ms", float("inf")))):
        lat, acc = row.latency or {}, row.accuracy
        status = row.status + ("*" if lat.get("busy") else "")
        if row.meets and (row.gates or {}).get("status") == "UNDECIDED":  # met on the point estimate only
            status += " (undecided)"
        if row.why:
            notes.append(f"{row.id}: {escape(row.why)}")
            status += f" [{len(notes)}]"
        style = _STATUS_STYLE[row.status]
        table.add_row(row.artifact[:8], row.runtime, escape(row.variant) + (f" +{len(row.keep_float)} float" if row.keep_float else ""),
                      row.precision, str(row.threads or "—"),
                      "—" if row.size_bytes is None else f"{row.size_bytes / 1e6:.2f}",
                      "—" if not acc else f"{acc['top1']:.2%}", _drop(acc), _ms(lat.get("p50_ms")),
                      _ms(lat.get("p90_ms")), _vs_torch(record, row), "◆" if row.pareto else "",
                      f"[{style}]{status}[/]" if style else status)
    if any((r.latency or {}).get("busy") for r in record.points):
        notes.append("* timed while other processes used the CPU: that latency may be high")
    if any(r.meets and (r.gates or {}).get("status") == "UNDECIDED" for r in record.points):
        notes.append("* (undecided): an accuracy interval straddles its budget (too few validation samples); "
                     "the point estimate meets it")
    table.caption = "\n".join(n if n.startswith("*") else f"[{i}] {n}" for i, n in enumerate(notes, 1)) or None
    table.caption_justify = "left"
    return table


def summary(record: OptimizeRecord) -> str:
    """One paragraph: the pick and why it won, the runners-up and why they lost, what the fallback
    kept float, the budget spent and what was not tried, and a warning on busy timings."""
    parts = []
    pick = record.point(record.pick)
    if pick is None:
        parts.append(f"No candidate meets every budget of {record.target} ({_budgets(record.budgets)}); nothing was "
                     "promoted: the table says why each one lost.")
    else:
        ref = f", {_vs_torch(record, pick)} faster than PyTorch eager" if _vs_torch(record, pick) != "—" else ""
        at = f" at {pick.threads} thread{'s' if pick.threads != 1 else ''}" if pick.threads else ""
        parts.append(f"Picked {pick.runtime} {pick.variant}{at} [{pick.id}]: p50 "
                     f"{pick.latency['p50_ms']:.3f} ms{ref}, drop {pick.accuracy['drop_pp']:+.2f} pp, the fastest of the "
                     f"points that meet every budget ({_budgets(record.budgets)}); promoted to "
                     f"compiled/{record.target}/optimized.")
        runners = [r for r in record.points if r.status == "measured" and r.meets][:2]
        for r in runners:
            parts.append(f"Runner-up {r.runtime} {r.variant} @{r.threads or '-'}t: {r.why}.")
    if record.fallback:
        parts.append(_fallback_text(record))
    parts.append(f"Search took {record.elapsed_s:.0f} s of its {record.settings.get('budget_s', 0):.0f} s budget"
                 + (" (spent: no new builds or screening rounds after it)" if record.budget_spent else "") + ".")
    if record.not_tried:
        parts.append("Not tried: " + "; ".join(record.not_tried) + ".")
    if any((r.latency or {}).get("busy") for r in record.points):
        parts.append("Warning: some timings were taken while other processes used the CPU; rerun with --force "
                     "on a quiet machine to trust small differences.")
    return " ".join(parts)


def _fallback_text(record: OptimizeRecord) -> str:
    """Where the keep-float fallback started, what it kept, whether that met the budget, and every
    count of float layers it measured (so a budget it cannot reach reads as such)."""
    fb = record.fallback
    source = next((r for r in record.points if r.artifact == fb.get("from")), None)
    start = f"{source.runtime} {source.variant} [{fb.get('from')}]" if source else f"[{fb.get('from')}]"
    kept = fb.get("kept") or []
    layers = f"{len(kept)} layer{'s' if len(kept) != 1 else ''} float ({', '.join(kept)})" if kept else "no layer float"
    drop = f", drop {fb['drop_pp']:+.2f} pp" if fb.get("drop_pp") is not None else ""
    if fb.get("met"):
        text = f"The keep-float fallback from {start} met the budget with {layers}{drop}{_speed_cost(record)}."
    else:
        text = f"The keep-float fallback from {start} did not meet the budget: its best was {layers}{drop}."
    tried = ", ".join(f"{k} float {d:+.2f} pp" for k, d in fb.get("tried") or [])
    return text + (f" Tried: {tried}." if tried else "")


def _speed_cost(record: OptimizeRecord) -> str:
    """What keeping layers float cost: the recovered point's p50 against the int8 point it came from."""
    base = {r.threads: r for r in record.points if r.artifact == record.fallback.get("from") and r.latency}
    for r in record.points:
        if r.keep_float and r.latency and r.threads in base:
            before = base[r.threads].latency["p50_ms"]
            return (f"; it costs {r.latency['p50_ms'] / before:.2f}x in speed (p50 {r.latency['p50_ms']:.3f} vs "
                    f"{before:.3f} ms" + (f" at {r.threads} thread{'s' if r.threads != 1 else ''})" if r.threads else ")"))
    return ""


def _budgets(budgets: dict) -> str:
    named = [f"{k} {v:g}" for k, v in budgets.items() if isinstance(v, (int, float))]
    named += [f"{k} {next(iter(v.items()))[0]} {next(iter(v.values())):g}" for k, v in (budgets.get("goals") or {}).items()
              if v]
    return ", ".join(named) or "no budgets"
