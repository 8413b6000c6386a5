"""The report's "Optimize" section, one per target ``edgetl optimize`` searched: what was picked and
why, the accuracy-vs-latency Pareto chart with the pick marked, the full candidate table with each
runner-up's reason, and what the keep-float fallback kept (``manifest["optimize"][<target>]``, an
``OptimizeRecord``: edgetl/optimize/record.py)."""

from __future__ import annotations

import math

from edgetl.bench.table import fmt_ms
from edgetl.errors import EdgetlError
from edgetl.rundir import RunDir

COLUMNS = ("point", "runtime", "variant", "threads", "recipe", "status", "p50 ms", "p90 ms", "vs PyTorch",
           "top-1", "drop pp", "size MB", "why")
_ORDER = {"picked": 0, "measured": 1, "pruned": 2, "failed": 3, "skipped": 4}


def collect(run: RunDir, manifest: dict, notes: list[str]) -> dict[str, dict]:
    """Target -> its optimize record as JSON; a record that does not fit its model is left out with a note."""
    from edgetl.optimize.record import OptimizeRecord

    try:
        return {target: record.fields() for target, record in sorted(run.entries(OptimizeRecord, manifest).items())}
    except EdgetlError as exc:
        notes.append(f"optimize results left out: {exc}")
        return {}


def label(point: dict) -> str:
    kept = point.get("keep_float") or []
    return f"{point['runtime']} {point['variant']}" + (f" +{len(kept)} float" if kept else "")


def _reference_p50(record: dict, threads: int | None) -> float | None:
    ref = record.get("reference") or {}
    by = (ref.get("by_threads") or {}).get(str(threads)) or (ref if ref.get("threads") == threads else None)
    return (by or {}).get("p50_ms")


def _speedup(record: dict, point: dict) -> float | None:
    ref, p50 = _reference_p50(record, point.get("threads")), (point.get("latency") or {}).get("p50_ms")
    return ref / p50 if ref and p50 else None


def rows(record: dict) -> list[dict]:
    """The candidate table: the pick first, then by status and p50."""
    out = []
    points = sorted(record.get("points") or [], key=lambda p: (_ORDER.get(p.get("status"), 9),
                                                              (p.get("latency") or {}).get("p50_ms", float("inf"))))
    for p in points:
        lat, acc, speedup = p.get("latency") or {}, p.get("accuracy") or {}, _speedup(record, p)
        ci = acc.get("drop_ci_pp")
        out.append({
            "point": p["id"], "runtime": p["runtime"], "variant": label(p).removeprefix(p["runtime"] + " "),
            "threads": str(p.get("threads") or "—"), "recipe": p.get("recipe") or "—",
            "status": p["status"] + (" ◆" if p.get("pareto") else ""),
            "p50 ms": fmt_ms(lat.get("p50_ms")), "p90 ms": fmt_ms(lat.get("p90_ms")),
            "vs PyTorch": f"{speedup:.1f}×" if speedup else "—",
            "top-1": "—" if acc.get("top1") is None else f"{acc['top1'] * 100:.1f}%",
            "drop pp": "—" if acc.get("drop_pp") is None else f"{acc['drop_pp']:+.2f}"
                       + (f" [{ci[0]:+.1f}, {ci[1]:+.1f}]" if ci else ""),
            "size MB": "—" if p.get("size_bytes") is None else f"{p['size_bytes'] / 1e6:.2f}",
            "why": p.get("error") or p.get("why") or ("the fastest point that meets every budget"
                                                       if p["status"] == "picked" else ""),
            "_best": p["status"] == "picked",
        })
    return out


def headline(record: dict) -> str:
    """What was searched, where, and what was picked (or that nothing met the budgets)."""
    points = record.get("points") or []
    pick = next((p for p in points if p["id"] == record.get("pick")), None)
    searched = (f"Searched {len(points)} points ({len({p['artifact'] for p in points})} artifacts x threads) on "
                f"{record.get('device')} in {record.get('elapsed_s', 0):.0f} s")
    if pick is None:
        return f"{searched}: no point meets every budget, nothing was promoted; each row says why it lost."
    lat, acc = pick.get("latency") or {}, pick.get("accuracy") or {}
    speedup = _speedup(record, pick)
    at = f" at {pick['threads']} thread{'s' if pick['threads'] != 1 else ''}" if pick.get("threads") else ""
    return (f"{searched}. **Picked {label(pick)}{at}**: p50 {fmt_ms(lat.get('p50_ms'))} ms"
            + (f", {speedup:.1f}× PyTorch eager" if speedup else "")
            + (f", drop {acc['drop_pp']:+.2f} pp" if acc.get("drop_pp") is not None else "")
            + f"; it is `compiled/{record['target']}/optimized`, what `edgetl bundle --optimized` and "
              "`deploy --optimize` ship.")


def _fallback(record: dict) -> str | None:
    fb = record.get("fallback")
    if not fb:
        return None
    kept = fb.get("kept") or []
    tried = ", ".join(f"{k} float: " + (f"{drop:+.2f} pp" if _finite(drop) else "no result")
                      for k, drop in fb.get("tried") or [])
    return (f"Keep-float fallback from {fb.get('from')}: kept {len(kept)} layer(s) float"
            + (f" ({', '.join(kept[:8])}{' …' if len(kept) > 8 else ''})" if kept else "")
            + ("; met the accuracy budget" if fb.get("met") else "; the budget still did not hold")
            + (f". Tried: {tried}." if tried else "."))


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def blocks(record: dict) -> list:
    """The section's blocks (edgetl/report/render.py's vocabulary)."""
    out: list = [("text", headline(record)), ("plot", f"optimize:{record['target']}"),
                 ("table", COLUMNS, rows(record)),
                 ("text", "◆ on the accuracy-vs-latency Pareto front. vs PyTorch: PyTorch eager FP32's p50 at the "
                          "same threads over the point's. Pruned points lost a screening round (successive halving); "
                          "their latency is that round's.")]
    if (fallback := _fallback(record)) is not None:
        out.append(("text", fallback))
    if record.get("not_tried"):
        out.append(("text", "Not tried: " + "; ".join(record["not_tried"])
                    + (" (the time budget was spent)." if record.get("budget_spent") else ".")))
    return out


def pareto_svg(record: dict) -> str | None:
    """Accuracy drop against p50 latency for every timed point, the Pareto front drawn, the pick starred."""
    from matplotlib import rc_context
    from matplotlib.figure import Figure

    from edgetl.report.plots import _RC, _colour, _scale_x, _svg

    points = [p for p in record.get("points") or []
              if (p.get("latency") or {}).get("p50_ms") and (p.get("accuracy") or {}).get("drop_pp") is not None]
    if not points:
        return None
    xy = lambda p: (p["latency"]["p50_ms"], p["accuracy"]["drop_pp"])  # noqa: E731
    front = sorted((p for p in points if p.get("pareto")), key=lambda p: xy(p)[0])
    budget = (record.get("budgets") or {}).get("max_accuracy_drop_pp")
    with rc_context(_RC):
        fig = Figure(figsize=(8.5, 4.8))
        ax = fig.add_subplot()
        for runtime in dict.fromkeys(p["runtime"] for p in points):
            mine = [p for p in points if p["runtime"] == runtime]
            ax.scatter([xy(p)[0] for p in mine], [xy(p)[1] for p in mine], s=50, color=_colour(runtime), zorder=3,
                       alpha=[1.0 if p.get("meets") else 0.45 for p in mine], label=runtime)
        if front:
            ax.plot([xy(p)[0] for p in front], [xy(p)[1] for p in front], drawstyle="steps-post", color="black",
                    linewidth=1, alpha=0.6, zorder=2, label="Pareto front")
        if budget is not None:
            ax.axhline(budget, color="crimson", linestyle="--", linewidth=0.9, label=f"drop budget {budget:g} pp")
        pick = next((p for p in points if p["id"] == record.get("pick")), None)
        if pick is not None:
            ax.scatter(*xy(pick), s=320, marker="*", color="gold", edgecolors="black", zorder=5, label="pick")
            ax.annotate(f"{label(pick)} @{pick.get('threads') or '-'}t", xy(pick), textcoords="offset points",
                        xytext=(10, 8), fontsize=8)
        _scale_x(ax, [xy(p)[0] for p in points])
        ax.set_xlabel("p50 latency, batch 1 (ms, lower is better)")
        ax.set_ylabel("top-1 drop vs FP32 (pp, lower is better)")
        ax.set_title(f"optimize {record['target']} on {record.get('device')}: every timed point", loc="left",
                     fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
        return _svg(fig)
