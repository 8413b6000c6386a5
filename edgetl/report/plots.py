"""The report's charts, as inline SVG (crisp at any zoom, text stays text, no extra files).

matplotlib's object API (``Figure``) is used, not pyplot: no global state, no GUI backend.
"""

from __future__ import annotations

import io

from edgetl.bench.table import fmt_ms

# One colour per runtime, so the two charts read together.
RUNTIME_COLOURS = {"torch": "#7f7f7f", "onnxruntime": "#1f77b4", "openvino": "#6f2da8", "tensorrt": "#76b900"}
_MARKERS = {"torch": "*", "onnxruntime": "o", "openvino": "s", "tensorrt": "D"}
_RC = {"svg.fonttype": "none", "font.size": 10, "axes.spines.top": False, "axes.spines.right": False}


def pareto_front(points: list[tuple[float, float, str]]) -> list[str]:
    """Labels of the points no other point beats on both latency (lower) and accuracy (higher),
    from fastest to most accurate."""
    front, best_acc = [], float("-inf")
    for _latency, acc, label in sorted(points, key=lambda p: (p[0], -p[1])):
        if acc > best_acc:
            front.append(label)
            best_acc = acc
    return front


def _first_batch(doc: dict) -> dict | None:
    rows = sorted(doc.get("latency") or [], key=lambda r: r["batch"])
    return next((r for r in rows if r["batch"] == 1), rows[0] if rows else None)


def _runtime(doc: dict) -> str:
    return (doc.get("artifact") or {}).get("runtime") or "?"


def _scale_x(ax, values: list[float]) -> None:
    """Log scale when the values span more than 20x (PyTorch vs int8), with plain-number ticks."""
    if max(values) / max(min(values), 1e-9) <= 20:
        return
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def _label_offsets(points: list[tuple]) -> list[tuple[int, int]]:
    """Label offsets (points) that keep labels of equally accurate artifacts from overprinting:
    the fastest of a group is labelled above its dot, the others stacked below with a leader."""
    offsets: dict[int, tuple[int, int]] = {}
    groups: dict[float, list[int]] = {}
    for i, (_, y, _, _) in enumerate(points):
        groups.setdefault(round(y, 1), []).append(i)
    for members in groups.values():
        for rank, i in enumerate(sorted(members, key=lambda j: points[j][0])):
            offsets[i] = (7, 6) if rank == 0 else (12, -8 - 24 * rank)
    return [offsets[i] for i in range(len(points))]


def _svg(fig) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    svg = buf.getvalue()
    return svg[svg.index("<svg"):]  # drop the XML prolog and doctype: the SVG goes inline in HTML


def latency_distribution_svg(docs: list[dict], device: str) -> str | None:
    """Horizontal box plots of every artifact's per-run latency samples (batch 1, else smallest)."""
    from matplotlib import rc_context
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    series = []
    for doc in docs:
        row = _first_batch(doc)
        if doc.get("status") == "ok" and row and row.get("samples_ms"):
            series.append((f"{doc['key']}  (batch {row['batch']})", row, _runtime(doc)))
    if not series:
        return None
    series.reverse()  # matplotlib draws the first box at the bottom: keep the table's order top-down
    with rc_context(_RC):
        fig = Figure(figsize=(8.5, 1.2 + 0.5 * len(series)))
        ax = fig.add_subplot()
        box = ax.boxplot([r["samples_ms"] for _, r, _ in series], orientation="horizontal", whis=(1, 99),
                         widths=0.6, patch_artist=True, flierprops={"marker": ".", "markersize": 3, "alpha": 0.5},
                         medianprops={"color": "black"})
        for patch, (_, _, runtime) in zip(box["boxes"], series, strict=True):
            patch.set_facecolor(RUNTIME_COLOURS.get(runtime, "#bbbbbb"))
            patch.set_alpha(0.55)
        ax.scatter([r["p90_ms"] for _, r, _ in series], range(1, len(series) + 1), marker="|", s=250, color="crimson",
                   zorder=3)
        ax.set_yticks(range(1, len(series) + 1), [label for label, _, _ in series])
        _scale_x(ax, [v for _, r, _ in series for v in (r["min_ms"], r["max_ms"])])
        ax.set_xlabel("latency per run (ms, lower is better)")
        ax.set_title(f"Latency distribution on {device}: box p25–p75, black line median, whiskers p1–p99",
                     loc="left", fontsize=10)
        ax.grid(axis="x", alpha=0.3)
        handles = [Line2D([], [], color="crimson", marker="|", linestyle="", markersize=12, label="p90")]
        handles += [Line2D([], [], color=RUNTIME_COLOURS.get(rt, "#bbbbbb"), marker="s", linestyle="", label=rt)
                    for rt in dict.fromkeys(rt for _, _, rt in reversed(series))]
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
        return _svg(fig)


def accuracy_latency_svg(docs: list[dict], device: str) -> str | None:
    """Top-1 against batch-1 p90 latency; the Pareto front (nothing faster is as accurate) joined."""
    from matplotlib import rc_context
    from matplotlib.figure import Figure

    points = []
    for doc in docs:
        row, acc = _first_batch(doc), doc.get("accuracy") or {}
        if doc.get("status") == "ok" and row and acc.get("top1") is not None:
            label = doc["key"] if row["batch"] == 1 else f"{doc['key']} (batch {row['batch']})"
            points.append((row["p90_ms"], acc["top1"] * 100, label, _runtime(doc)))
    if not points:
        return None
    front = pareto_front([(x, y, k) for x, y, k, _ in points])
    with rc_context(_RC):
        fig = Figure(figsize=(8.5, 5))
        ax = fig.add_subplot()
        for runtime in dict.fromkeys(p[3] for p in points):
            mine = [p for p in points if p[3] == runtime]
            ax.scatter([p[0] for p in mine], [p[1] for p in mine], s=140 if runtime == "torch" else 60,
                       marker=_MARKERS.get(runtime, "o"), color=RUNTIME_COLOURS.get(runtime, "#bbbbbb"),
                       label="PyTorch eager FP32 (reference)" if runtime == "torch" else runtime, zorder=3)
        by_key = {p[2]: p for p in points}
        fx, fy = [by_key[k][0] for k in front], [by_key[k][1] for k in front]
        ax.plot(fx, fy, drawstyle="steps-post", color="black", linewidth=1, alpha=0.6, zorder=2)
        ax.scatter(fx, fy, s=260, facecolors="none", edgecolors="black", linewidths=1.2, zorder=4,
                   label="Pareto front (best trade-offs)")
        for (x, y, key, _), (dx, dy) in zip(points, _label_offsets(points), strict=True):
            ax.annotate(f"{key}\n{fmt_ms(x)} ms, {y:.1f}%", (x, y), textcoords="offset points", xytext=(dx, dy),
                        fontsize=8, arrowprops={"arrowstyle": "-", "color": "#999999", "lw": 0.6} if dy < 0 else None)
        _scale_x(ax, [p[0] for p in points])
        ax.set_xlabel("p90 latency, batch 1 (ms, lower is better)")
        ax.set_ylabel("top-1 on the validation split (%, higher is better)")
        ax.set_title(f"Accuracy vs latency on {device}", loc="left", fontsize=10)
        ax.grid(alpha=0.3)
        ax.margins(x=0.25, y=0.15)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
        return _svg(fig)

