"""report.md and report.html from one list of sections, so the two show the same things in the same order.

The order answers a reader's questions in turn: what do I ship and did it pass (the decision), where
is it (bundles), why (charts: speed against accuracy, latency spread, training curves, per-class
accuracy), and only then every number and setting (details, the long ones collapsed).

A section is ``(title, blocks)``; a block is ``("text", str)``, ``("table", columns, rows[, css class])``
(rows: column -> text, with ``_best``/``_gate``/``_reference``/``_verdict`` flags for highlighting),
``("commands", [{"command", "why"}])``, ``("plot", name)`` (charts made by ``make_report``) or
``("details", summary, blocks)`` (collapsed in HTML).
"""

from __future__ import annotations

import html
import re
import shlex

from edgetl.bench.system import summary
from edgetl.bench.table import BUSY_MARK, NUMERIC, bench_rows, columns, fmt_ms
from edgetl.report import optimize
from edgetl.report.data import compile_rows, scalars
from edgetl.report.decide import bundle_flag

DECISION_COLUMNS = ("target", "ship", "verdict", "p90 ms", "vs PyTorch FP32", "top-1", "drop pp", "measured on",
                    "why")
BUNDLE_COLUMNS = ("target", "bundle", "artifact", "size MB", "sha256", "signed")
COMPILE_COLUMNS = ("artifact", "runtime", "precision", "size MB", "compile s", "calibration", "top-1", "drop pp",
                   "agree", "evaluated with", "versions")
_NUMERIC = NUMERIC | {"compile s", "vs PyTorch FP32", "validation images"}
DECISION_TITLE = "Decision: what to ship"
# Manifest fields whose bare name misleads out of context.
_RELABEL = {"dataset.counts": "dataset.counts (images per class, train + validation)"}


def _numeric(col: str) -> bool:
    return col in _NUMERIC or col.startswith("top-1 ")  # the per-class table's one column per artifact


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{v * 100:.1f}%"


# -- the sections, shared by both formats --------------------------------------------------------------
def _false_accepts(metrics: dict) -> str:
    """Keyword spotting: the background clips answered as a keyword, with the interval."""
    rate, ci = metrics.get("false_accept_rate"), metrics.get("false_accept_rate_ci")
    if rate is None:
        return ""
    return f", false accepts {_pct(rate)}" + (f" [{_pct(ci[0])}–{_pct(ci[1])}] of {metrics.get('false_accept_n')} background clips" if ci else "")


def _heads(train: dict) -> str:
    """--task-head runs: each extra head's validation top-1."""
    return "".join(f"; head {h['name']} ({len(h['classes'])} classes) {_pct((h.get('metrics') or {}).get('val_top1'))}"
                   for h in train.get("heads") or [])


def _headline(data: dict) -> str:
    train = data.get("train") or {}
    parts = [f"Run `{data['path']}`"]
    if train:
        metrics, dataset = train.get("metrics") or {}, train.get("dataset") or {}
        parts.append(f"{train.get('backbone')} ({train.get('mode')}), {len(train.get('classes') or [])} classes, "
                     f"validation top-1 {_pct(metrics.get('val_top1'))} on {dataset.get('val_images')} samples"
                     + _false_accepts(metrics) + _heads(train))
    parts.append(f"generated {data['generated']} by edgetl {data['edgetl']}")
    return " · ".join(parts)


def _decision_rows(decisions: list[dict]) -> list[dict]:
    rows = []
    for d in decisions:
        estimated = " (estimated)" if d.get("estimated") else ""
        artifact = f"{d['runtime']} {d['precision']}" if d.get("runtime") else d["artifact"]
        if d["artifact"].endswith("/optimized"):
            artifact += " (optimize's pick)"
        rows.append({
            "target": d["target"],
            "ship": f"nothing (closest: {artifact})" if d["verdict"] == "FAIL" else artifact,
            "verdict": d["verdict"],
            "p90 ms": fmt_ms(d.get("p90_ms")),
            "vs PyTorch FP32": f"{d['speedup']:.1f}× faster{' ' + BUSY_MARK if d.get('busy') else ''}" if d.get("speedup") else "—",
            "top-1": _pct(d.get("top1")) + estimated,
            "drop pp": "—" if d.get("drop_pp") is None else f"{d['drop_pp']:.2f}{_interval(d.get('drop_ci_pp'))}{estimated}",
            "measured on": d.get("device") or "—",
            "why": d["why"],
            "_verdict": d["verdict"],
        })
    return rows


def _interval(ci) -> str:
    return f" [{ci[0]:+.1f}, {ci[1]:+.1f}]" if ci else ""


def _decision(data: dict, notes: list[str]) -> list:
    blocks: list = []
    if data["decisions"]:
        blocks.append(("table", DECISION_COLUMNS, _decision_rows(data["decisions"]), "decision"))
        blocks.append(("text", "Ship: the fastest artifact (batch-1 p90) of the target that meets every budget of "
                               "its device profile. vs PyTorch FP32: batch-1 median speed-up over PyTorch eager FP32 "
                               "in the same bench. Drop: top-1 points lost against FP32 on the validation split, "
                               "with its 95% interval."))
        if any(d.get("busy") for d in data["decisions"]):
            blocks.append(("text", f"{BUSY_MARK} measured while other processes used the CPU: the speed-up may be "
                                   "far off; bench on an idle machine for numbers to publish."))
    else:
        blocks.append(("text", "Nothing to decide yet: no artifact has been compiled."))
    if data["next"]:
        blocks.append(("commands", data["next"]))
    if data["missing"]:
        blocks.append(("text", "Stages not run yet: " + "; ".join(data["missing"]) + "."))
    blocks += [("text", f"Note: {n}") for n in notes]
    return blocks


def _signed(bundle: dict) -> str:
    """Who signed the bundle (its key id), "no", or "not recorded" for manifests older than signing."""
    if "signed_by" not in bundle:
        return "not recorded"
    return f"yes ({bundle['signed_by']})" if bundle["signed_by"] else "no"


def _bundle_hint(data: dict) -> str:
    """The bundle command for the best-decided artifact: a passing one, else any measured or compiled one."""
    ranked = sorted((d for d in data["decisions"] if d.get("precision")), key=lambda d: d["verdict"] != "PASS")
    if not ranked:
        return ""
    best = ranked[0]
    return (f" `edgetl bundle {shlex.quote(data['path'])} --target {shlex.quote(best['target'])} "
            f"{bundle_flag(best['artifact'])}` packages {best['artifact']} with its labels, preprocessing and golden outputs.")


def _bundles(data: dict) -> list:
    if not data["bundles"]:
        return [("text", "No bundles yet." + _bundle_hint(data))]
    rows = []
    for b in data["bundles"]:
        rows.append({"target": b["target"], "bundle": b.get("path", ""), "artifact": b.get("compiled", ""),
                     "size MB": f"{b['size_bytes'] / 1e6:.2f}" if b.get("size_bytes") is not None else "—",
                     "sha256": f"{b['sha256'][:16]}…" if b.get("sha256") else "—",
                     "signed": _signed(b)})
    return [("table", BUNDLE_COLUMNS, rows)]


def _validation(data: dict) -> list:
    val = data.get("validation")
    if not val:
        return [("text", "Not available (see the notes under the decision).")]
    names = list(val["artifacts_top1"])
    cols = ("class", "validation images", "top-1 PyTorch FP32", *(f"top-1 {n}" for n in names))
    order = sorted(range(len(val["classes"])), key=lambda i: (val["fp32_top1"][i] is None, val["fp32_top1"][i] or 0))
    rows = [{"class": val["classes"][i], "validation images": str(val["counts"][i]),
             "top-1 PyTorch FP32": _pct(val["fp32_top1"][i]),
             **{f"top-1 {n}": _pct(val["artifacts_top1"][n][i]) for n in names}} for i in order]
    return [("plot", "confusion"),
            ("text", f"Per-class top-1 on the validation split ({val['n']} images), worst class first; counts are "
                     "validation images."),
            ("table", cols, rows)]


def _bench_details(device: str, docs: list[dict]) -> list:
    rows, bench_notes = bench_rows(docs)
    system = next((d["device"] for d in docs if d.get("status") == "ok"), None)
    blocks = [("text", summary(system) if system else "no measurements on this device")]
    if system:
        runtimes = ", ".join(f"{k} {v}" for k, v in system.get("runtimes", {}).items())
        blocks.append(("text", f"{system.get('os')}, {system.get('python')}; {runtimes}"))
    blocks.append(("table", columns(docs), rows))
    blocks += [("text", f"[{i}] {n}") for i, n in enumerate(bench_notes, 1)]
    blocks.append(("text", "★ the fastest artifact (batch-1 p90) that meets its budgets. Speed-ups are p50 over "
                           "PyTorch eager FP32 measured in the same run; drop is in percentage points of top-1 "
                           "against FP32; agree is the share of images where the artifact's top-1 prediction "
                           "equals FP32's."))
    return blocks


LINEAGE_COLUMNS = ("classes", "model", "top-1", "95% interval", "images")
_LINEAGE_ROWS = (("old_before", "old", "parent"), ("old_after", "old", "this run"), ("new_after", "new", "this run"),
                 ("all_after", "all", "this run"))


def _lineage(lineage: dict) -> list:
    """A run trained with ``--from``: its parent, the classes added, and old-class accuracy before and
    after (edgetl/adapt/continual.py) on the validation split."""
    memory, distill = lineage.get("memory") or {}, lineage.get("distill") or {}
    text = (f"Trained from run **{lineage['parent']}** (checkpoint `{lineage['parent_checkpoint'][:12]}…`): "
            f"{len(lineage['old_classes'])} classes kept, {len(lineage['new_classes'])} added "
            f"({', '.join(map(str, lineage['new_classes'][:20]))}). Rehearsal of {lineage.get('rehearsed', 0)} "
            f"exemplars, distillation weight {distill.get('weight', 0):g} at T={distill.get('temperature', 0):g}; "
            f"this run keeps {memory.get('count', 0)} exemplars for the next one.")
    rows = []
    for key, classes, model in _LINEAGE_ROWS:
        score = lineage["forgetting"][key]
        rows.append({"classes": classes, "model": model, "top-1": _pct(score["top1"]),
                     "95% interval": f"{_pct(score['low'])}–{_pct(score['high'])}", "images": score["n"]})
    return [("text", text), ("table", LINEAGE_COLUMNS, rows)]


def _kv(rows: list[tuple[str, str]]) -> tuple:
    return ("table", ("field", "value"), [{"field": _RELABEL.get(k, k), "value": v} for k, v in rows])


def _details(data: dict) -> list:
    blocks: list = []
    if data["compiled"]:
        blocks += [("text", "**Compile matrix.** Accuracy as measured by `edgetl compile` on the validation split; "
                            "*estimated* means measured on a stand-in runtime (a TensorRT build's QDQ ONNX on ONNX "
                            "Runtime CPU)."),
                   ("table", COMPILE_COLUMNS, compile_rows(data["compiled"]))]
    for device, docs in data["bench"].items():
        blocks += [("text", f"**Bench on {device}.**"), *_bench_details(device, docs)]
    if data.get("export"):
        blocks.append(("details", "Export to ONNX", [_kv(scalars(data["export"]))]))
    train = data.get("train")
    if train:
        classes = train.get("classes") or []
        blocks.append(("details", f"Training settings ({len(classes)} classes)", [
            ("text", f"Classes: {', '.join(map(str, classes[:20]))}{' …' if len(classes) > 20 else ''}"),
            _kv(scalars(train, skip=("classes", "inputs_hash", "lineage"))),
        ]))
    return blocks or [("text", "Nothing yet.")]


def sections(data: dict, notes: list[str]) -> list[tuple[str, list]]:
    out = [(DECISION_TITLE, _decision(data, notes)), ("Bundles", _bundles(data))]
    for target, record in (data.get("optimize") or {}).items():
        out.append((f"Optimize: {target}", optimize.blocks(record)))
    for device in data["bench"]:
        out.append((f"Speed and accuracy on {device}", [("plot", f"bench:{device}")]))
    if data.get("history"):
        out.append(("Training curves", [("plot", "history")]))
    if data.get("train"):
        out.append(("Validation: confusion matrix and per-class accuracy", _validation(data)))
    if (data.get("train") or {}).get("lineage"):
        out.append(("Lineage: classes added", _lineage(data["train"]["lineage"])))
    out.append(("Details", _details(data)))
    return out


# -- Markdown ------------------------------------------------------------------------------------------
def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _md_table(cols, rows) -> list[str]:
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---:" if _numeric(c) else "---" for c in cols) + "|"]
    for row in rows:
        cells = [_md_cell(row.get(c, "")) for c in cols]
        if row.get("_best") and cells[0]:
            cells[0] = f"**★ {cells[0]}**"
        if row.get("_verdict"):
            cells[cols.index("verdict")] = f"**{cells[cols.index('verdict')]}**"
        lines.append("| " + " | ".join(cells) + " |")
    return [*lines, ""]


def _md_blocks(blocks: list, captions: dict[str, list[str]]) -> list[str]:
    lines: list[str] = []
    for block in blocks:
        if block[0] == "text":
            lines += [block[1], ""]
        elif block[0] == "table":
            lines += _md_table(block[1], block[2])
        elif block[0] == "commands":
            lines += ["Next:", "", *(f"- `{c['command']}` — {c['why']}" for c in block[1]), ""]
        elif block[0] == "plot":
            lines += [f"*Chart in report.html: {caption}*" for caption in captions.get(block[1], [])] + [""]
        elif block[0] == "details":
            lines += [f"### {block[1]}", "", *_md_blocks(block[2], captions)]
    return lines


def to_markdown(data: dict, notes: list[str], captions: dict[str, list[str]] | None = None) -> str:
    """``captions``: plot name -> the captions of its charts (named in the Markdown, drawn in the HTML)."""
    lines = [f"# edgetl report: {data['run']}", "", _headline(data), ""]
    for title, blocks in sections(data, notes):
        lines += [f"## {title}", "", *_md_blocks(blocks, captions or {})]
    return "\n".join(lines)


# -- HTML ----------------------------------------------------------------------------------------------
# The decision's background (#e8f1fc) is the report's signature colour: tests look for it on screen.
_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:1.2rem auto;max-width:1240px;
     padding:0 1.2rem;color:#1f2328;line-height:1.45}
h1{font-size:1.5rem;margin:.2rem 0}.headline{color:#57606a;font-size:.88rem;margin:.2rem 0 .9rem}
h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #d0d7de;padding-bottom:.25rem}
section.decision{background:#e8f1fc;border:1px solid #b6d0f2;border-radius:8px;padding:.2rem 1.1rem .6rem}
section.decision h2{margin-top:.6rem;border:none}
table{border-collapse:collapse;margin:.6rem 0;font-size:.86rem;background:#fff}
th,td{border:1px solid #d0d7de;padding:.3rem .55rem;text-align:left;vertical-align:top}
th{background:#f6f8fa}td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
table.decision{font-size:.95rem}table.decision td:nth-child(2){font-weight:600;white-space:nowrap}
table.decision td.why{font-size:.82rem;color:#57606a;min-width:12rem;max-width:30rem}
table.decision td.num{white-space:normal}table.decision{width:100%}
td.v{font-weight:700;text-align:center}
td.v-pass{background:#dafbe1;color:#116329}td.v-fail{background:#ffebe9;color:#a40e26}
td.v-undecided{background:#fff8c5;color:#7d4e00}td.v-other{background:#eaeef2;color:#57606a}
tr.best td{background:#e6f6e6;font-weight:600}tr.ref td{color:#57606a}
td.PASS{color:#116329;font-weight:600}td.FAIL{color:#a40e26;font-weight:700}td.unavailable{color:#888}
td.error{color:#a40e26}.note{color:#57606a;font-size:.88rem;margin:.35rem 0}
ul.next{margin:.3rem 0 .5rem;padding-left:1.2rem;font-size:.88rem}ul.next code{background:#fff;padding:.05rem .3rem;
     border-radius:4px;border:1px solid #d0d7de}
.charts{display:flex;flex-wrap:wrap;gap:0 2rem}figure{margin:.5rem 0;max-width:100%}
svg{max-width:100%;height:auto}figcaption{font-size:.82rem;color:#57606a}
details{margin:.6rem 0}summary{cursor:pointer;font-weight:600}
"""
_VERDICT_CLASS = {"PASS": "v-pass", "FAIL": "v-fail", "UNDECIDED": "v-undecided"}


def _inline(text: str) -> str:
    """Markdown's `code`, **bold** and *emphasis* spans (the texts are shared with report.md) as HTML."""
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))
    text = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", text)
    return re.sub(r"(?<![\w*])\*([^*\s<>][^*<>]*?)\*(?![\w*])", r"<em>\1</em>", text)


def _cell_class(col: str, row: dict) -> str:
    if col == "verdict" and row.get("_verdict"):
        return f"v {_VERDICT_CLASS.get(row['_verdict'], 'v-other')}"
    if col == "why":
        return "why"
    return ("num" if _numeric(col) else "") + (f" {row['_gate']}" if col == "gate" and row.get("_gate") else "")


def _html_table(cols, rows, css: str = "") -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = []
    for row in rows:
        cls = "best" if row.get("_best") else ("ref" if row.get("_reference") else "")
        cells = []
        for c in cols:
            raw = str(row.get(c, ""))
            text = _inline(raw) if c == "why" else html.escape(raw)
            if c == cols[0] and row.get("_best") and text:
                text = f"★ {text}"
            kind = _cell_class(c, row).strip()
            cells.append(f'<td class="{kind}">{text}</td>' if kind
                         else f"<td>{text}</td>")
        body.append((f'<tr class="{cls}">' if cls else "<tr>") + "".join(cells) + "</tr>")
    table_class = f' class="{css}"' if css else ""
    return f"<table{table_class}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _html_blocks(blocks: list, plots: dict[str, list[tuple[str, str]]]) -> list[str]:
    parts: list[str] = []
    for block in blocks:
        if block[0] == "text":
            parts.append(f'<p class="note">{_inline(block[1])}</p>')
        elif block[0] == "table":
            parts.append(_html_table(*block[1:]))
        elif block[0] == "commands":
            items = "".join(f"<li><code>{html.escape(c['command'])}</code> — {_inline(c['why'])}</li>" for c in block[1])
            parts.append(f'<p class="note"><strong>Next:</strong></p><ul class="next">{items}</ul>')
        elif block[0] == "plot" and plots.get(block[1]):
            figures = "".join(f"<figure>{svg}<figcaption>{html.escape(caption)}</figcaption></figure>"
                              for caption, svg in plots[block[1]])
            parts.append(f'<div class="charts">{figures}</div>')
        elif block[0] == "details":
            parts.append(f"<details><summary>{html.escape(block[1])}</summary>"
                         + "".join(_html_blocks(block[2], plots)) + "</details>")
    return parts


def to_html(data: dict, notes: list[str], plots: dict[str, list[tuple[str, str]]]) -> str:
    """``plots``: plot name -> [(caption, inline svg)]; a name missing from it draws nothing."""
    parts = [f"<h1>edgetl report: {html.escape(data['run'])}</h1>", f'<p class="headline">{_inline(_headline(data))}</p>']
    for title, blocks in sections(data, notes):
        inner = f"<h2>{html.escape(title)}</h2>" + "\n".join(_html_blocks(blocks, plots))
        parts.append(f'<section class="decision">{inner}</section>' if title == DECISION_TITLE
                     else f"<section>{inner}</section>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>edgetl report: {html.escape(data['run'])}</title><style>{_CSS}</style></head><body>\n"
            + "\n".join(parts) + "\n</body></html>\n")
