"""report.md and report.html from one list of sections, so the two always show the same tables.

A section is a title and blocks: ``("text", str)``, ``("table", columns, rows)`` (rows are dicts of
column -> text, with ``_best``/``_gate`` flags for highlighting) or ``("plot", device)``.
"""

from __future__ import annotations

import html
import re

from edgetl.bench.system import summary
from edgetl.bench.table import NUMERIC, bench_rows, columns
from edgetl.report.data import compile_rows, scalars

_NUMERIC = NUMERIC | {"compile s"}
COMPILE_COLUMNS = ("artifact", "runtime", "precision", "size MB", "compile s", "calibration", "top-1", "drop pp",
                   "agree", "evaluated with", "versions")


def _kv(rows: list[tuple[str, str]]) -> tuple:
    return ("table", ("field", "value"), [{"field": k, "value": v} for k, v in rows])


def sections(data: dict, notes: list[str]) -> list[tuple[str, list]]:
    out = []
    intro = [("text", f"Run `{data['path']}`, generated {data['generated']} by edgetl {data['edgetl']}.")]
    if data["missing"]:
        intro.append(("text", "Stages not run yet: " + "; ".join(data["missing"]) + "."))
    intro += [("text", f"Note: {n}") for n in notes]
    out.append(("Summary", intro))

    train = data.get("train")
    if train:
        classes = train.get("classes") or []
        out.append(("Train", [
            ("text", f"{len(classes)} classes: {', '.join(map(str, classes[:20]))}{' …' if len(classes) > 20 else ''}"),
            _kv(scalars(train, skip=("classes", "inputs_hash"))),
        ]))
    else:
        out.append(("Train", [("text", "Not run yet.")]))
    out.append(("Export", [_kv(scalars(data["export"]))] if data.get("export") else [("text", "Not run yet.")]))
    if data["compiled"]:
        out.append(("Compile matrix", [
            ("text", "Accuracy as measured by `edgetl compile` on the validation split; *estimated* means "
                     "measured on a stand-in runtime (a TensorRT build's QDQ ONNX on ONNX Runtime CPU)."),
            ("table", COMPILE_COLUMNS, compile_rows(data["compiled"])),
        ]))
    else:
        out.append(("Compile matrix", [("text", "Not run yet.")]))

    if not data["bench"]:
        out.append(("Bench", [("text", "Not run yet.")]))
    for device, docs in data["bench"].items():
        rows, bench_notes = bench_rows(docs)
        system = next((d["device"] for d in docs if d.get("status") == "ok"), None)
        blocks = [("text", summary(system) if system else "no measurements on this device")]
        if system:
            runtimes = ", ".join(f"{k} {v}" for k, v in system.get("runtimes", {}).items())
            blocks.append(("text", f"{system.get('os')}, {system.get('python')}; {runtimes}"))
        blocks.append(("table", columns(docs), rows))
        blocks += [("text", f"[{i}] {n}") for i, n in enumerate(bench_notes, 1)]
        blocks.append(("text", "★ the fastest artifact (batch-1 p90) that meets its budgets. Speed-ups are p50 "
                               "over PyTorch eager FP32 measured in the same run; drop is in percentage points of "
                               "top-1 against FP32; agree is the share of images where the artifact's top-1 "
                               "prediction equals FP32's."))
        blocks.append(("plot", device))
        out.append((f"Bench on {device}", blocks))
    return out


# -- Markdown ------------------------------------------------------------------------------------------
def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def to_markdown(data: dict, notes: list[str]) -> str:
    lines = [f"# edgetl report: {data['run']}", ""]
    for title, blocks in sections(data, notes):
        lines += [f"## {title}", ""]
        for block in blocks:
            if block[0] == "text":
                lines += [block[1], ""]
            elif block[0] == "table":
                _, cols, rows = block
                lines.append("| " + " | ".join(cols) + " |")
                lines.append("|" + "|".join("---:" if c in _NUMERIC else "---" for c in cols) + "|")
                for row in rows:
                    cells = [_md_cell(row.get(c, "")) for c in cols]
                    if row.get("_best") and cells[0]:
                        cells[0] = f"**★ {cells[0]}**"
                    lines.append("| " + " | ".join(cells) + " |")
                lines.append("")
            elif block[0] == "plot":
                lines += ["Plots: see report.html.", ""]
    return "\n".join(lines)


# -- HTML ----------------------------------------------------------------------------------------------
_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1280px;
     padding:0 1rem;color:#222;line-height:1.45}
h1{font-size:1.6rem}h2{font-size:1.25rem;margin-top:2.2rem;border-bottom:1px solid #ddd;padding-bottom:.2rem}
table{border-collapse:collapse;margin:.6rem 0;font-size:.86rem}
th,td{border:1px solid #ddd;padding:.25rem .5rem;text-align:left;vertical-align:top}
th{background:#f4f4f4}td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.best td{background:#e6f6e6;font-weight:600}tr.ref td{color:#555}
td.PASS{color:#137333;font-weight:600}td.FAIL{color:#c5221f;font-weight:700}td.unavailable{color:#888}
td.error{color:#c5221f}.note{color:#555;font-size:.9rem}figure{margin:1rem 0}svg{max-width:100%;height:auto}
figcaption{font-size:.85rem;color:#555}
"""


def _inline_code(text: str) -> str:
    """Markdown's `code` spans (the texts are shared with report.md) as <code>."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", text)


def _html_table(cols, rows) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = []
    for row in rows:
        cls = "best" if row.get("_best") else ("ref" if row.get("_reference") else "")
        cells = []
        for c in cols:
            text = html.escape(str(row.get(c, "")))
            if c == cols[0] and row.get("_best") and text:
                text = f"★ {text}"
            kind = ("num" if c in _NUMERIC else "") + (f" {row['_gate']}" if c == "gate" and row.get("_gate") else "")
            cells.append(f'<td class="{kind.strip()}">{text}</td>' if kind.strip() else f"<td>{text}</td>")
        body.append(f'<tr class="{cls}">' + "".join(cells) + "</tr>" if cls else "<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def to_html(data: dict, notes: list[str], plots: dict[str, list[tuple[str, str]]]) -> str:
    """``plots``: device -> [(caption, inline svg)]; a device missing from it gets no charts."""
    parts = [f"<h1>edgetl report: {html.escape(data['run'])}</h1>"]
    for title, blocks in sections(data, notes):
        parts.append(f"<h2>{html.escape(title)}</h2>")
        for block in blocks:
            if block[0] == "text":
                parts.append(f'<p class="note">{_inline_code(html.escape(block[1]))}</p>')
            elif block[0] == "table":
                parts.append(_html_table(block[1], block[2]))
            elif block[0] == "plot":
                for caption, svg in plots.get(block[1], []):
                    parts.append(f"<figure>{svg}<figcaption>{html.escape(caption)}</figcaption></figure>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>edgetl report: {html.escape(data['run'])}</title><style>{_CSS}</style></head><body>\n"
            + "\n".join(parts) + "\n</body></html>\n")
