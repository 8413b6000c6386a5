"""The report's charts, as inline SVG (crisp at any zoom, text stays text, no extra files).

matplotlib's object API (``Figure``) is used, not pyplot: no global state, no GUI backend.
"""

from __future__ import annotations

import io

from edgetl.bench.table import fmt_ms

# One colour per runtime (its backend's ``plot_style``), so the two charts read together.
_REFERENCE_STYLE = ("#7f7f7f", "*")  # the PyTorch FP32 reference ("torch"), not a registered runtime
_UNKNOWN_STYLE = ("#bbbbbb", "o")  # a runtime no longer registered here (its plugin uninstalled)


def _colour(runtime: str) -> str:
    return _style(runtime)[0]


def _marker(runtime: str) -> str:
    return _style(runtime)[1]


def _style(runtime: str) -> tuple[str, str]:
    from edgetl.backends import get_backend, runtimes

    if runtime == "torch":
        return _REFERENCE_STYLE
    return get_backend(runtime).plot_style if runtime in runtimes() else _UNKNOWN_STYLE
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


def _scale_x(ax, values: list[float]) -> bool:
    """Log scale when the values span more than 20x (PyTorch vs int8), with plain-number ticks;
    whether it did."""
    if max(values) / max(min(values), 1e-9) <= 20:
        return False
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    return True


def _label_offsets(points: list[tuple]) -> list[tuple[int, int]]:
    """Label offsets (points) that keep labels of equally accurate artifacts from overprinting:
    the fastest of a group is labelled right of its dot (so labels at 100% stay inside the axes), the
    others stacked below with a leader."""
    offsets: dict[int, tuple[int, int]] = {}
    groups: dict[float, list[int]] = {}
    for i, (_, y, _, _) in enumerate(points):
        groups.setdefault(round(y, 1), []).append(i)
    for members in groups.values():
        for rank, i in enumerate(sorted(members, key=lambda j: points[j][0])):
            offsets[i] = (9, 0) if rank == 0 else (12, -14 - 24 * rank)
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
            patch.set_facecolor(_colour(runtime))
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
        handles += [Line2D([], [], color=_colour(rt), marker="s", linestyle="", label=rt)
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
                       marker=_marker(runtime), color=_colour(runtime), clip_on=False,
                       label="PyTorch eager FP32 (reference)" if runtime == "torch" else runtime, zorder=3)
        by_key = {p[2]: p for p in points}
        fx, fy = [by_key[k][0] for k in front], [by_key[k][1] for k in front]
        ax.plot(fx, fy, drawstyle="steps-post", color="black", linewidth=1, alpha=0.6, zorder=2)
        ax.scatter(fx, fy, s=260, facecolors="none", edgecolors="black", linewidths=1.2, zorder=4, clip_on=False,
                   label="Pareto front (best trade-offs)")
        for (x, y, key, _), (dx, dy) in zip(points, _label_offsets(points), strict=True):
            ax.annotate(f"{key}\n{fmt_ms(x)} ms, {y:.1f}%", (x, y), textcoords="offset points", xytext=(dx, dy),
                        fontsize=8, va="center", arrowprops={"arrowstyle": "-", "color": "#999999", "lw": 0.6} if dy < 0 else None)
        ax.margins(x=0.25)
        if not _scale_x(ax, [p[0] for p in points]):
            ax.set_xlim(left=max(0.0, ax.get_xlim()[0]))  # no negative latencies
        ax.set_ylim(*accuracy_limits([p[1] for p in points]))
        ax.set_xlabel("p90 latency, batch 1 (ms, lower is better)")
        ax.set_ylabel("top-1 on the validation split (%, higher is better)")
        ax.set_title(f"Accuracy vs latency on {device}", loc="left", fontsize=10, pad=12)
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
        return _svg(fig)


def accuracy_limits(values: list[float]) -> tuple[float, float]:
    """A y range (%) tight around the accuracies, never outside [0, 100]: a 0.5-point gap between
    int8 and FP32 must stay visible, and no axis may suggest an accuracy above 100%."""
    lo, hi = min(values), max(values)
    pad = max((hi - lo) * 0.2, 1.0)  # room for the labels stacked under the lowest point
    return max(0.0, lo - pad), min(100.0, hi + pad)


def training_curves_svg(history: list[dict]) -> str | None:
    """Loss and top-1 (train, validation) per epoch, phases (head, then fine-tuning) side by side."""
    from matplotlib import rc_context
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    rows = [r for r in history if r.get("loss") is not None]
    if not rows:
        return None
    x = list(range(1, len(rows) + 1))
    with rc_context(_RC):
        fig = Figure(figsize=(8.5, 3.4))
        loss_ax, acc_ax = fig.subplots(1, 2)
        loss_ax.plot(x, [r["loss"] for r in rows], color="#1f77b4", marker=".")
        loss_ax.set_ylabel("training loss")
        for key, label, colour in (("train_top1", "train", "#7f7f7f"), ("val_top1", "validation", "#d62728")):
            points = [(i, r[key] * 100) for i, r in zip(x, rows, strict=True) if r.get(key) is not None]
            acc_ax.plot([p[0] for p in points], [p[1] for p in points], marker=".", color=colour, label=label,
                        clip_on=False)
        best = max(((r["val_top1"], -i) for i, r in zip(x, rows, strict=True) if r.get("val_top1") is not None),
                   default=None)
        if best:  # the first epoch with the highest validation top-1
            acc_ax.scatter([-best[1]], [best[0] * 100], s=120, facecolors="none", edgecolors="#d62728", zorder=4,
                           clip_on=False, label="best validation")
        acc_ax.set_ylim(0, 100)  # accuracy has a natural scale: the whole of it shows progress honestly
        acc_ax.set_ylabel("top-1 (%)")
        acc_ax.legend(frameon=False, loc="lower right")
        for ax in (loss_ax, acc_ax):
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            _mark_phases(ax, rows)
            ax.set_xlabel("epoch (all phases)")
            ax.grid(alpha=0.3)
        fig.tight_layout()
        return _svg(fig)


def _mark_phases(ax, rows: list[dict]) -> None:
    """A dashed line and the phase's name where the training phase changes (e.g. head -> finetune)."""
    starts = [i for i, r in enumerate(rows) if i == 0 or r.get("phase") != rows[i - 1].get("phase")]
    if len(starts) < 2:
        return
    for i in starts:
        if i:
            ax.axvline(i + 0.5, color="#999999", linestyle="--", linewidth=0.8)
        ax.annotate(str(rows[i].get("phase")), (i + 0.7, 1), xycoords=("data", "axes fraction"), va="top",
                    fontsize=8, color="#555555")


def confusion_svg(validation: dict) -> str | None:
    """The FP32 model's confusion matrix on the validation split: counts, shaded per true class."""
    from matplotlib import rc_context
    from matplotlib.figure import Figure

    matrix, classes = validation.get("confusion"), validation["classes"]
    if not matrix:
        return None
    import numpy as np

    counts = np.asarray(matrix)
    share = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    k = len(classes)
    side = min(8.5, 2.2 + 0.38 * k)
    with rc_context(_RC):
        fig = Figure(figsize=(side + 1.2, side))
        ax = fig.add_subplot()
        ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
        if k <= 20:  # beyond that the numbers no longer fit their cells
            for (i, j), n in np.ndenumerate(counts):
                if n:
                    ax.text(j, i, str(n), ha="center", va="center", fontsize=9,
                            color="white" if share[i, j] > 0.6 else "black")
        ax.set_xticks(range(k), classes, rotation=90 if k > 8 else 0)
        ax.set_yticks(range(k), classes)
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
        ax.spines[:].set_visible(False)
        ax.set_title(f"Confusion matrix, PyTorch FP32, validation split ({validation['n']} images)",
                     loc="left", fontsize=10)
        return _svg(fig)

