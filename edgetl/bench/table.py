"""The bench table, formatted once for the console, report.md and report.html.

One row per artifact and batch size; accuracy, size, memory, first inference and the gate appear on
an artifact's first row only. Accuracy and drop carry their 95% intervals in brackets. Rows that
could not be measured, failed or undecided gates, how the PyTorch reference was measured and the
speed-ups measured on a busy machine ("!") get numbered notes under the table. A target that cannot
run here keeps its row, with the accuracy the compile stage estimated. The best artifact of a device
is the fastest (batch-1 p90, else the smallest batch measured) among those that do not fail a gate;
it is marked with a star (``BEST_LEGEND``).
"""

from __future__ import annotations

COLUMNS = ("artifact", "runtime", "batch", "p50 ms", "p90 ms", "p99 ms", "samples/s", "vs PyTorch", "top-1", "top-5",
           "false acc.", "drop pp", "agree", "size MB", "mem MB", "1st inf ms", "gate")
NUMERIC = set(COLUMNS[2:-1])
# The console drops the runtime (the key names the target) and first inference (in the report).
CONSOLE_COLUMNS = tuple(c for c in COLUMNS if c not in ("runtime", "1st inf ms"))
BEST_LEGEND = "★ best: the fastest artifact (batch-1 p90) that does not fail a gate"
BUSY_MARK = "!"


# Columns shown only when some artifact measured them: top-5 (more than 5 classes), the false-accept
# rate (keyword spotting with a background class).
_OPTIONAL = {"top-5": "top5", "false acc.": "false_accept_rate"}


def columns(docs: list[dict], base: tuple[str, ...] = COLUMNS) -> tuple[str, ...]:
    """``base`` without the optional columns no artifact has."""
    measured = {key for d in docs for key, v in (d.get("accuracy") or {}).items() if v is not None}
    return tuple(c for c in base if _OPTIONAL.get(c, c) in measured or c not in _OPTIONAL)


def fmt_ms(v: float | None) -> str:
    if v is None:
        return "—"
    return f"{v:.3f}" if v < 1 else f"{v:.2f}" if v < 10 else f"{v:.1f}" if v < 100 else f"{v:.0f}"


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{v * 100:.1f}%"


def _pct_ci(v: float | None, ci: list[float] | None) -> str:
    """``95.0% [91–98]``: the value and its 95% interval, in percent."""
    if v is None or not ci:
        return _pct(v)
    return f"{v * 100:.1f}% [{ci[0] * 100:.0f}–{ci[1] * 100:.0f}]"


def _drop_ci(v: float | None, ci: list[float] | None) -> str:
    if v is None or not ci:
        return _num(v, "+.2f")
    return f"{v:+.2f} [{_bound(ci[0])},{_bound(ci[1])}]"


def _bound(pp: float) -> str:
    return f"{pp:+.1f}" if abs(pp) < 10 else f"{pp:+.0f}"  # the table stays narrow; the JSON has all digits


def _speedup_text(lat: dict, reference: bool) -> str:
    mark = BUSY_MARK if lat.get("busy") or (reference and (lat.get("contention") or {}).get("busy")) else ""
    if reference:
        return f"1.00×{mark}"
    speedup = lat.get("speedup_vs_reference")
    return f"{speedup:.2f}×{mark}" if speedup else "—"


def _num(v: float | None, spec: str) -> str:
    return "—" if v is None else format(v, spec)


def _speed_key(doc: dict) -> float:
    rows = sorted(doc["latency"], key=lambda r: r["batch"])
    b1 = next((r for r in rows if r["batch"] == 1), rows[0] if rows else None)
    return b1["p90_ms"] / b1["batch"] if b1 else float("inf")


def best_key(docs: list[dict]) -> str | None:
    candidates = [d for d in docs if d.get("status") == "ok" and not d.get("reference") and d.get("latency")
                  and d["gates"]["status"] != "FAIL"]
    return min(candidates, key=_speed_key)["key"] if candidates else None


def _unmeasured_row(doc: dict, base: dict, notes: list[str]) -> dict:
    """A row for an artifact that could not be measured here: why, and the compile stage's accuracy
    estimate when it has one (a TensorRT engine on a machine without an NVIDIA GPU)."""
    unavailable = doc.get("status") == "unavailable"
    estimate = doc.get("accuracy_estimate") or {}
    row = {**{c: "—" for c in COLUMNS}, **base, "_gate": doc.get("status")}
    if unavailable:
        note = f"{doc['key']}: n/a here ({doc.get('reason')})"
        if estimate.get("top1") is not None:
            row.update({"top-1": f"{_pct(estimate['top1'])} est.", "drop pp": f"{estimate['drop_pp']:+.2f} est."})
            note += f": accuracy estimated {_pct(estimate['top1'])} (drop {estimate['drop_pp']:+.2f} pp)"
            if estimate.get("evaluated_with"):
                note += f" with {estimate['evaluated_with']}"
        notes.append(note)
    else:
        notes.append(f"{doc['key']}: error: {doc.get('reason')}")
    row["gate"] = f"[{len(notes)}] {'n/a here' if unavailable else 'error'}"
    return row


def _reference_note(docs: list[dict]) -> str | None:
    method = next((d.get("reference_method") for d in docs if d.get("reference_method")), None)
    return f"vs PyTorch = reference p50 / artifact p50; reference: {method['summary']}" if method else None


def _busy_note(docs: list[dict]) -> str | None:
    busy = [f"{d['key']} b{lat['batch']}" for d in docs if d.get("status") == "ok"
            for lat in d.get("latency") or [] if lat.get("busy") or (lat.get("contention") or {}).get("busy")]
    if not busy:
        return None
    return (f"{BUSY_MARK} measured while other processes used the CPU ({', '.join(busy)}): the speed-up may be "
            "far off; bench on an idle machine for numbers to publish")


def bench_rows(docs: list[dict]) -> tuple[list[dict], list[str]]:
    """Formatted rows (column -> text, plus ``_best``/``_gate``/``_reference`` flags) and the notes."""
    best = best_key(docs)
    rows: list[dict] = []
    notes = [n for n in (_reference_note(docs), _busy_note(docs)) if n]
    for doc in docs:
        artifact = doc.get("artifact") or {}
        base = {"artifact": doc["key"], "runtime": artifact.get("runtime", ""), "_best": doc["key"] == best,
                "_reference": bool(doc.get("reference"))}
        if doc.get("status") != "ok":
            rows.append(_unmeasured_row(doc, base, notes))
            continue
        acc = doc.get("accuracy") or {}
        gate = doc["gates"]["status"]
        gate_text = gate
        said = [*doc["gates"].get("failed", []), *doc["gates"].get("undecided", [])]
        if said:
            notes.append(f"{doc['key']}: " + "; ".join(said))
            gate_text = f"{gate} [{len(notes)}]"
        for skip in doc.get("skipped_batches") or []:
            notes.append(f"{doc['key']}: batch {skip['batch']} skipped: {skip['reason']}")
        for i, lat in enumerate(sorted(doc["latency"], key=lambda r: r["batch"])):
            row = {**base, "batch": str(lat["batch"]), "p50 ms": fmt_ms(lat["p50_ms"]), "p90 ms": fmt_ms(lat["p90_ms"]),
                   "p99 ms": fmt_ms(lat["p99_ms"]), "samples/s": _num(lat["throughput_ips"], ".1f"),
                   "vs PyTorch": _speedup_text(lat, bool(doc.get("reference")))}
            if i == 0:
                row.update({
                    "top-1": _pct_ci(acc.get("top1"), acc.get("top1_ci")), "top-5": _pct(acc.get("top5")),
                    "false acc.": _pct_ci(acc.get("false_accept_rate"), acc.get("false_accept_rate_ci")),
                    "drop pp": _drop_ci(acc.get("drop_pp"), acc.get("drop_ci_pp")),
                    "agree": _pct(acc.get("agreement")), "size MB": _num(artifact.get("size_bytes", 0) / 1e6, ".2f"),
                    "mem MB": _num((doc.get("memory") or {}).get("session_peak_mb"), ".0f"),
                    "1st inf ms": fmt_ms((doc.get("load") or {}).get("first_inference_ms")),
                    "gate": gate_text, "_gate": gate,
                })
            else:
                row["artifact"] = ""
                row["runtime"] = ""
            rows.append({c: row.get(c, "") for c in COLUMNS} | {k: v for k, v in row.items() if k.startswith("_")})
        for name, head in (acc.get("heads") or {}).items():  # --task-head runs: a row per extra head
            row = {"artifact": f"  head {name}", "top-1": _pct_ci(head.get("top1"), head.get("top1_ci")),
                   "top-5": _pct(head.get("top5")), "drop pp": _drop_ci(head.get("drop_pp"), head.get("drop_ci_pp")),
                   "agree": _pct(head.get("agreement"))}
            rows.append({c: row.get(c, "") for c in COLUMNS} | {"_best": False, "_reference": base["_reference"]})
    return rows, notes


# What a narrow terminal loses first, one column at a time, until the table fits.
_DROPPABLE = ("top-5", "p99 ms", "size MB", "samples/s", "mem MB", "agree", "batch")


def rich_table(docs: list[dict], title: str, width: int | None = None):
    """The console table; the best artifact in bold green, FAIL in red. With ``width``, the least
    needed columns are left out until it fits (the result files and the report keep them all)."""
    from rich.markup import escape
    from rich.table import Table

    rows, notes = bench_rows(docs)
    legend = [BEST_LEGEND] if any(r["_best"] for r in rows) else []
    table = Table(title=escape(title), title_justify="left",
                  caption="\n".join([*legend, *(escape(f"[{i}] {n}") for i, n in enumerate(notes, 1))]),
                  caption_justify="left")
    shown = columns(docs, CONSOLE_COLUMNS)
    if width is not None:
        shown = _fitting(rows, shown, width)
    # When the console is narrow, the intervals and the gate wrap onto a second line; names and
    # latencies never do (rich would otherwise squeeze the artifact column to nothing).
    wraps = {"top-1": 7, "drop pp": 7, "gate": 9}
    for col in shown:
        widest = max([len(col), *(len(r[col]) + 2 for r in rows)]) if col == "artifact" else wraps.get(col)
        table.add_column(col, justify="right" if col in NUMERIC else "left", no_wrap=col not in wraps,
                         min_width=widest)
    colours = {"PASS": "green", "FAIL": "bold red", "UNDECIDED": "bold yellow", "not measured here": "yellow",
               "unavailable": "dim", "error": "red"}
    for row in rows:
        cells = [escape(row[c]) for c in shown]
        if row["_best"] and row["artifact"]:
            cells[0] = f"★ {cells[0]}"
        if row.get("_gate") in colours:
            cells[-1] = f"[{colours[row['_gate']]}]{cells[-1]}[/]"
        style = "bold green" if row["_best"] else ("dim" if row.get("_gate") == "unavailable" else None)
        table.add_row(*cells, style=style)
    return table


def _fitting(rows: list[dict], shown: tuple[str, ...], width: int) -> tuple[str, ...]:
    def natural(cols) -> int:  # every cell on one line, plus rich's borders and padding
        return sum(max(len(c), *(len(r[c]) + (2 if c == "artifact" else 0) for r in rows)) + 3 for c in cols) + 1

    for col in _DROPPABLE:
        if natural(shown) <= width:
            break
        shown = tuple(c for c in shown if c != col)
    return shown


def print_table(console, docs: list[dict], title: str) -> None:
    """Print the bench table whole (``RichReporter.table``: a terminal leaves out the least needed
    columns until it fits; a log or a pipe gets as many columns as the table needs)."""
    from edgetl.stages import RichReporter

    RichReporter(console).table(lambda width: rich_table(docs, title, width=width))
