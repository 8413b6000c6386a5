"""Text classification: token ids and an attention mask in (int64, batch x sequence), class logits out.

Samples are the texts themselves (a CSV row's text, a ``.txt`` file's content), so a run never
re-reads the user's files. The tokenizer is the backbone's ``tokenizer.json``, a run's and a bundle's
asset, run by the ``tokenizers`` package (Rust, no torch): this module is the device side.
See docs/architecture.md, "Text classification".
"""

from __future__ import annotations

import csv
import functools
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from edgetl.errors import DataError
from edgetl.tasks.base import Classifier, LabelledSamples, Metric, TaskRecord, check_label
from edgetl.tensors import TensorSpec

IDS, MASK, OUTPUT = "input_ids", "attention_mask", "logits"
TOKENIZER = "tokenizer.json"
MAX_LENGTH_CAP = 128  # a longer default costs quadratic attention for the rare long text
LENGTH_PERCENTILE = 95
TEXT_SUFFIX = ".txt"
# What one text may cost: the tokenizer sees at most this many characters of it (the csv module's
# field limit, so a CSV's longest text is seen whole; 512 tokens fit many times over), and predict
# reads at most this much text from a file or stdin, so a 100 MB line or a stdin that never ends is
# one line, not the memory of the device.
MAX_TEXT_CHARS = 131_072
MAX_PREDICT_CHARS = 16 << 20
MAX_CSV_LINE = 1 << 20  # characters of one line of a text,label CSV
MAX_PREDICT_TEXTS = 100_000  # one row each in predict's answer
MAX_TOKENIZER_BYTES = 32 << 20  # MiniLM's tokenizer.json is 0.5 MB; a multilingual one ~17 MB
MAX_VOCAB = 500_000  # entries of the model's vocabulary (MiniLM: 30,522; the largest common ones: 250k)
# What a bundle's tokenizer.json may be made of: the parts of the BERT tokenizers edgetl trains with,
# none of which takes a pattern (Split and Replace run a backtracking regex or grow the text
# without bound), and sizes that keep a text's cost linear in its length.
TOKENIZER_PARTS = {
    "normalizer": {"BertNormalizer", "Lowercase", "NFC", "NFD", "NFKC", "NFKD", "StripAccents", "Strip", "Sequence"},
    "pre_tokenizer": {"BertPreTokenizer", "Whitespace", "WhitespaceSplit", "Punctuation", "Digits", "Sequence"},
    "model": {"WordPiece", "WordLevel"},
    "post_processor": {"TemplateProcessing", "BertProcessing"},
    "decoder": {"WordPiece"},
}
MAX_PARTS = 16  # normalizers in a Sequence, pieces of a template, ids of a special token
MAX_CHARS_PER_WORD = 200  # WordPiece's max_input_chars_per_word (default 100): its cost grows as its cube
MAX_ADDED_TOKENS = 10_000

# int8 per runtime, chosen by measurement on all-MiniLM-L6-v2 with 2,000 movie reviews (400 validation:
# differences under ~2 pp are within noise) on an AVX2 CPU without VNNI, where no int8 scheme ran
# faster than ONNX Runtime fp32 (benchmarks/text_classification.py; README "Text classification").
QUANTIZATION = {
    "onnxruntime": {"scheme": "dynamic", "fusion": "bert", "per_channel": True, "reduce_range": False,
                    "why": "ONNX Runtime's transformer fusion (SkipLayerNormalization, BiasGelu: in fp32 as exact as "
                    "the unfused graph, 2e-6 from PyTorch) then dynamic int8 of every op, per-channel, full range: -1.0 pp on movie reviews, "
                    "a quarter of the fp32 size (the embedding table too), as fast as fp32 or slightly faster on "
                    "an AVX2 CPU without VNNI; dynamic int8 of MatMul/Gemm alone lost 1.5 pp at two thirds of "
                    "the size, static QDQ of MatMul/Gemm 2.7 pp and of every op 16 pp"},
    "openvino": {"scheme": "weights", "weights_mode": "int8_asym",
                 "why": "NNCF weight-only int8 (asymmetric, per output channel; activations float): a quarter "
                 "of the fp32 size at fp32's accuracy and speed on an AVX2 CPU without VNNI, where NNCF's "
                 "int8 transformer type (SmoothQuant, int8 activations) lost 2.2 pp and ran about 2x slower "
                 "than fp32: int8 arithmetic does not pay on such a CPU"},
    "tensorrt": {"op_types": ["MatMul", "Gemm"], "why": "static QDQ of MatMul/Gemm only, per-channel, lost 2.7 pp on "
                 "movie reviews (its ONNX twin on ONNX Runtime) where QDQ of every op lost 16 pp"},
}


class TextPreprocess(BaseModel):
    """``preprocess`` of a text run or bundle (untrusted in a bundle: every value bounded)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)  # "8" is not 8 in a manifest

    max_length: int = Field(ge=2, le=512, description="tokens per text, [CLS] and [SEP] included; longer texts are cut")
    tokenizer: str = Field(TOKENIZER, pattern=r"^[A-Za-z0-9_.-]{1,64}\.json$", description="the tokenizer asset")
    pad_id: int = Field(0, ge=0, le=10_000_000, description="the id of the padding token")


class TextClassification(Classifier):
    name = "text-classification"
    sample_kind = "text"  # a sample is the text itself, never a file name (predict does not stat it)
    description = "one text in (int64 token ids + attention mask, batch x sequence), one score per class out; top-1 and macro-F1"
    metrics = (
        Metric("top1", "higher", "", "top-1 accuracy on the validation split"),
        Metric("accuracy_drop_pp", "lower", "pp", "top-1 drop against the FP32 PyTorch reference"),
        Metric("agreement", "higher", "", "share of texts whose top-1 equals the reference's"),
        Metric("macro_f1", "higher", "", "F1 averaged over the classes (unbalanced classes weigh equally)"),
    )
    preprocess_model = TextPreprocess
    workstation = "edgetl.text.train"
    requires = ("tokenizers",)
    extra = "text"

    def inputs(self, record: TaskRecord | None = None) -> list[TensorSpec]:
        return [TensorSpec(IDS, "int64", ("batch", "sequence")), TensorSpec(MASK, "int64", ("batch", "sequence"))]

    def assets(self, record: TaskRecord) -> list[str]:
        return [TextPreprocess(**record.preprocess).tokenizer]

    def check_assets(self, record: TaskRecord) -> None:
        """The tokenizer is one edgetl runs (``check_tokenizer``): a bundle's is checked when it opens."""
        check_tokenizer(_asset(record, TextPreprocess(**record.preprocess).tokenizer))

    def max_dims(self, record: TaskRecord) -> dict[str, int]:
        return {"sequence": TextPreprocess(**record.preprocess).max_length}

    def quantization(self, record: TaskRecord, runtime: str, precision: str) -> dict[str, Any]:
        return dict(QUANTIZATION.get(runtime, {})) if precision == "int8" else {}

    # -- data ---------------------------------------------------------------------------------------

    def read_labelled(self, source: Path) -> LabelledSamples:
        """A CSV with a header naming ``text`` and ``label`` columns (quoted fields, UTF-8), or a folder
        of class folders of ``.txt`` files (one text per file). Empty texts or labels are skipped."""
        source = Path(source)
        if not source.exists():
            raise DataError(f"{source} does not exist: give a CSV of text,label rows or a folder of class folders of .txt files")
        if not (source.is_file() or source.is_dir()):  # a FIFO or a device would block or never end
            raise DataError(f"{source} is not a regular file nor a folder: give a CSV of text,label rows or a folder "
                            "of class folders of .txt files")
        rows, skipped = (_csv_rows(source) if source.is_file() else _folder_rows(source))
        classes = sorted({label for _, label in rows})
        if not rows:
            raise DataError(f"{source}: no usable texts ({len(skipped)} skipped): expected rows of text,label")
        if len(classes) < 2:
            raise DataError(f"{source}: found 1 class ({classes[0]!r}); classification needs at least two")
        return LabelledSamples([t for t, _ in rows], [label for _, label in rows], classes, skipped, str(source),
                               files=False)

    def predict_samples(self, args: Sequence[str], stdin: IO[str] | None) -> list[tuple[str, str]]:
        """``-``: one text per non-empty line of stdin; an existing file: one per non-empty line of it;
        anything else is the text itself."""
        out: list[tuple[str, str]] = []
        for arg in args:
            if arg == "-":
                out += _lines("stdin", _read_stdin(stdin))
            elif os.path.isfile(arg):  # os.path: a text longer than a file name is a text, not an OSError
                out += _lines(arg, _read_text(Path(arg)))
            elif os.path.isdir(arg):
                raise DataError(f"{arg} is a folder: give a text, a file of texts (one per line) or - for stdin")
            elif _looks_like_a_file(arg):  # a mistyped file name would be classified as a text
                raise DataError(f"{arg}: no such file; to classify this string itself, give it on stdin: "
                                f"echo '{arg}' | edgetl predict BUNDLE -")
            elif arg.strip():
                out.append((_shorten(arg), arg))
        if not out:
            raise DataError("no text to classify: give a text, a file of texts (one per line) or - for stdin")
        if len(out) > MAX_PREDICT_TEXTS:
            raise DataError(f"{len(out)} texts: at most {MAX_PREDICT_TEXTS} per predict call, split them")
        return out

    def load(self, samples: Sequence[str | Path], record: TaskRecord) -> dict[str, np.ndarray]:
        """Token ids and mask, padded to the longest text of ``samples`` (at most ``max_length``)."""
        spec = TextPreprocess(**record.preprocess)
        ids, mask = tokenize([str(s) for s in samples], _asset(record, spec.tokenizer), spec.max_length, spec.pad_id)
        return {IDS: ids, MASK: mask}

    def feeds(self, loaded: Mapping[str, np.ndarray], record: TaskRecord) -> dict[str, np.ndarray]:
        return {IDS: loaded[IDS], MASK: loaded[MASK]}

    def dummy_inputs(self, record: TaskRecord, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
        """Random ids (no special tokens needed for timing) at ``max_length``, every token attended."""
        spec = TextPreprocess(**record.preprocess)
        vocab = load_tokenizer(_asset(record, spec.tokenizer)).get_vocab_size()
        ids = np.random.default_rng(seed).integers(0, vocab, (batch, spec.max_length), dtype=np.int64)
        return {IDS: ids, MASK: np.ones_like(ids)}

    # -- answers and metrics ------------------------------------------------------------------------

    def check_bundle(self, inputs: list[TensorSpec], outputs: list[TensorSpec], record: TaskRecord) -> str | None:
        return self.check_tensors(inputs, outputs, record)

    def evaluate(self, outputs: Mapping[str, np.ndarray], labels: np.ndarray,
                 reference: Mapping[str, np.ndarray] | None, classes: Sequence[str] | None = None) -> dict[str, Any]:
        """The image task's top-1 (Wilson interval), drop (paired interval) and agreement
        (``bench/accuracy.py``), plus macro-F1 with a seeded bootstrap interval."""
        result = super().evaluate(outputs, labels, reference, classes)
        logits = outputs[OUTPUT]
        num_classes = np.asarray(logits).shape[1]
        pred = np.asarray(logits).argmax(1)
        result["macro_f1"] = macro_f1(pred, np.asarray(labels), num_classes)
        result["macro_f1_ci"] = list(bootstrap_interval(pred, np.asarray(labels), num_classes))
        return result


# -- tokenizer ----------------------------------------------------------------------------------------


def load_tokenizer(path: Path):
    """A ``tokenizers.Tokenizer`` from ``tokenizer.json``, without its own padding and truncation
    (``tokenize`` sets them); a file it cannot read is one line. Cached by path *and* file identity,
    so a tokenizer replaced under the same path (a run retrained in place) is read and checked again."""
    try:
        stat = Path(path).stat()
    except OSError as exc:
        raise DataError(f"{path}: cannot read it ({exc.strerror})") from None
    return _load_tokenizer(Path(path), stat.st_mtime_ns, stat.st_size, stat.st_ino)


@functools.lru_cache(maxsize=4)
def _load_tokenizer(path: Path, mtime_ns: int, size: int, inode: int):
    from edgetl._lazy import require

    tokenizers = require("tokenizers", "text")
    check_tokenizer(path)
    try:
        tokenizer = tokenizers.Tokenizer.from_file(str(path))
    except Exception as exc:  # the Rust side raises plain Exception for every parse error
        raise DataError(f"{path}: not a tokenizers tokenizer.json ({str(exc).splitlines()[0][:200]})") from None
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return tokenizer


def check_tokenizer(path: Path) -> None:
    """One ``DataError`` line unless ``path`` is a ``tokenizer.json`` made only of ``TOKENIZER_PARTS``
    within the bounds above: read as JSON before the Rust side runs any of it (it cannot be
    interrupted, and a hostile one loops, exhausts memory or panics)."""
    try:
        if Path(path).stat().st_size > MAX_TOKENIZER_BYTES:
            raise ValueError(f"larger than {MAX_TOKENIZER_BYTES >> 20} MiB")
        spec = json.loads(Path(path).read_bytes())
        if not isinstance(spec, dict):
            raise ValueError("not a JSON object")
        for part, allowed in TOKENIZER_PARTS.items():
            _check_part(spec.get(part), part, allowed, depth=0)
        _check_sizes(spec)
    except (ValueError, RecursionError, OSError, TypeError, AttributeError) as exc:
        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise DataError(f"{path}: not a tokenizer.json edgetl runs ({reason})") from None


def _check_part(value: Any, part: str, allowed: set[str], depth: int) -> None:
    if value is None and part != "model":
        return
    kind = value.get("type") if isinstance(value, dict) else None
    if kind not in allowed:
        raise ValueError(f"{part} {str(kind)[:40]!r} is not one of {', '.join(sorted(allowed))}")
    if kind == "Sequence":
        items = value.get("normalizers" if part == "normalizer" else "pretokenizers")
        if depth > 2 or not isinstance(items, list) or len(items) > MAX_PARTS:
            raise ValueError(f"{part} Sequence: at most {MAX_PARTS} parts, nested at most twice")
        for item in items:
            _check_part(item, part, allowed - {"Sequence"} if depth == 2 else allowed, depth + 1)


def _check_sizes(spec: dict) -> None:
    model, post = spec["model"], spec.get("post_processor") or {}
    if len(model.get("vocab") or {}) > MAX_VOCAB:
        raise ValueError(f"a vocabulary of more than {MAX_VOCAB} entries")
    if not 1 <= model.get("max_input_chars_per_word", 100) <= MAX_CHARS_PER_WORD:
        raise ValueError(f"max_input_chars_per_word must be 1..{MAX_CHARS_PER_WORD}")
    if len(spec.get("added_tokens") or []) > MAX_ADDED_TOKENS:
        raise ValueError(f"more than {MAX_ADDED_TOKENS} added tokens")
    specials = (post.get("special_tokens") or {}).values()
    if any(len(post.get(k) or []) > MAX_PARTS for k in ("single", "pair")) or len(specials) > MAX_PARTS or any(
            len(s.get("ids") or []) > MAX_PARTS for s in specials):
        raise ValueError(f"a post-processor template of more than {MAX_PARTS} pieces or ids")


def tokenize(texts: Sequence[str], tokenizer_path: Path, max_length: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """int64 (ids, mask) of ``texts``, each cut to ``max_length`` tokens (special tokens kept) and
    padded with ``pad_id`` to the longest of them."""
    encodings = load_tokenizer(Path(tokenizer_path)).encode_batch([t[:MAX_TEXT_CHARS] for t in texts])
    rows = [e.ids[: max_length - 1] + e.ids[-1:] if len(e.ids) > max_length else e.ids for e in encodings]
    width = max((len(r) for r in rows), default=1)
    ids = np.full((len(rows), width), pad_id, np.int64)
    mask = np.zeros((len(rows), width), np.int64)
    for i, row in enumerate(rows):
        ids[i, : len(row)], mask[i, : len(row)] = row, 1
    return ids, mask


def token_counts(texts: Sequence[str], tokenizer_path: Path) -> np.ndarray:
    """Tokens per text, special tokens included, uncut (but for ``MAX_TEXT_CHARS``)."""
    encodings = load_tokenizer(Path(tokenizer_path)).encode_batch([t[:MAX_TEXT_CHARS] for t in texts])
    return np.array([len(e.ids) for e in encodings], np.int64)


def length_from_data(texts: Sequence[str], tokenizer_path: Path, cap: int = MAX_LENGTH_CAP) -> dict[str, int]:
    """``max_length`` for a data set: the 95th percentile of its token counts, at most ``cap``; with
    the median and the longest, for the record and the benchmarks."""
    counts = token_counts(texts, tokenizer_path)
    return {"max_length": int(min(cap, max(2, np.ceil(np.percentile(counts, LENGTH_PERCENTILE))))),
            "median_tokens": int(np.median(counts)), "longest_tokens": int(counts.max())}


def _asset(record: TaskRecord, name: str) -> Path:
    if name not in record.assets:
        raise DataError(f"the tokenizer {name!r} is not among the model's assets {sorted(record.assets)}")
    return Path(record.assets[name])


# -- metrics --------------------------------------------------------------------------------------


def macro_f1(pred: np.ndarray, labels: np.ndarray, num_classes: int) -> float:
    """The mean over classes of F1 (a class never predicted nor present counts 0 only if present)."""
    scores = []
    for c in range(num_classes):
        tp = int(((pred == c) & (labels == c)).sum())
        fp, fn = int(((pred == c) & (labels != c)).sum()), int(((pred != c) & (labels == c)).sum())
        if tp + fp + fn:
            scores.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores)) if scores else 0.0


def bootstrap_interval(pred: np.ndarray, labels: np.ndarray, num_classes: int, rounds: int = 200,
                       seed: int = 0) -> tuple[float, float]:
    """A 95% percentile bootstrap interval of macro-F1 (seeded: the same outputs give the same interval)."""
    if len(labels) == 0:
        return 0.0, 0.0
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(labels), (rounds, len(labels)))
    scores = [macro_f1(pred[d], labels[d], num_classes) for d in draws]
    return float(np.percentile(scores, 2.5)), float(np.percentile(scores, 97.5))


# -- readers --------------------------------------------------------------------------------------


def _read_text(path: Path) -> str:
    """A text file of at most ``MAX_PREDICT_CHARS`` bytes (a sample, or predict's lines), whole."""
    try:
        if path.stat().st_size > MAX_PREDICT_CHARS:
            raise DataError(f"{path}: more than {MAX_PREDICT_CHARS >> 20} MB of text: split it into several files")
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read it ({exc.strerror})") from None


def _read_stdin(stdin: IO[str] | None) -> str:
    """At most ``MAX_PREDICT_CHARS`` of UTF-8 text (a stdin that never ends stops there)."""
    try:
        text = stdin.read(MAX_PREDICT_CHARS + 1) if stdin is not None else ""
        text.encode("utf-8")  # a terminal's undecodable bytes arrive as surrogates the tokenizer refuses
    except (UnicodeDecodeError, UnicodeEncodeError):
        raise DataError("stdin: not UTF-8 text") from None
    if len(text) > MAX_PREDICT_CHARS:
        raise DataError(f"stdin: more than {MAX_PREDICT_CHARS >> 20} MB of texts: split them into several predict calls")
    return text


def _looks_like_a_file(arg: str) -> bool:
    """One word ending like a file of texts (``notes.txt``), which no one means as the text."""
    return not any(c.isspace() for c in arg) and Path(arg).suffix.lower() in (".txt", ".csv", ".tsv", ".text")


def _csv_rows(path: Path) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(text, label) rows of a CSV with a ``text,label`` header (other columns ignored), and the skipped."""
    if path.suffix.lower() != ".csv":
        raise DataError(f"{path} is not a .csv: give a CSV of text,label rows or a folder of class folders of .txt files")
    try:
        with path.open(encoding="utf-8-sig", newline="") as fh:
            return _rows_of(path, csv.reader(_bounded_lines(path, fh), strict=True))
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason})") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read it ({exc.strerror})") from None


def _bounded_lines(path: Path, fh: IO[str], limit: int = MAX_CSV_LINE) -> Iterator[str]:
    """``fh``'s lines, streamed: a line longer than ``limit`` is one line of error, never read whole
    (csv's field limit only speaks once a line is in memory: a 1 GB field took gigabytes)."""
    for number, line in enumerate(iter(lambda: fh.readline(limit + 1), ""), start=1):
        if len(line) > limit:
            raise DataError(f"{path}:{number}: a line of more than {limit} characters: not a CSV of texts")
        yield line


def _rows_of(path: Path, reader) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    try:
        header = [h.strip().lower() for h in next(reader, [])]
        if "text" not in header or "label" not in header:
            raise DataError(f"{path}: the header {header[:8]} lacks a 'text' and a 'label' column: the first row "
                            "must name them, e.g. text,label")
        t, lab = header.index("text"), header.index("label")
        rows, skipped = [], []
        next_start = reader.line_num + 1
        for row in reader:
            next_start = reader.line_num + 1  # where the next row starts (a quoted field may span lines)
            where = f"{path}:{reader.line_num}"
            if not any(cell.strip() for cell in row):
                continue  # a blank line
            text = row[t].strip() if t < len(row) else ""
            label = row[lab].strip() if lab < len(row) else ""
            if not text or not label:
                skipped.append((where, "empty text" if not text else "empty label"))
            else:
                rows.append((text, check_label(label, where)))
    except csv.Error as exc:  # strict: a quote left open would otherwise swallow the rest of the file
        if "unexpected end of data" in str(exc):
            raise DataError(f"{path}:{next_start}: a quoted field opened in this row is never closed (a missing \"?): "
                            "every line after it would be read as one text") from None
        raise DataError(f"{path}:{reader.line_num}: not a valid CSV row ({exc})") from None
    return rows, skipped


def _folder_rows(root: Path) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(text, class folder) for every ``.txt`` file one level down, and the skipped ones."""
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise DataError(f"{root} has no class folders: expected {root}/<class>/<text>.txt or a CSV of text,label rows")
    rows, skipped = [], []
    for folder in folders:
        check_label(folder.name, str(folder))
        for path in sorted(folder.glob(f"*{TEXT_SUFFIX}")):
            if not path.is_file():  # a FIFO named like a text would block the read forever
                skipped.append((str(path), "not a regular file"))
                continue
            try:
                text = _read_text(path).strip()
            except DataError as exc:
                skipped.append((str(path), str(exc).split(": ", 1)[-1]))
                continue
            if text:
                rows.append((text, folder.name))
            else:
                skipped.append((str(path), "empty text"))
    return rows, skipped


def _lines(name: str, text: str) -> list[tuple[str, str]]:
    return [(f"{name}:{i}", line.strip()) for i, line in enumerate(text.splitlines(), start=1) if line.strip()]


def _shorten(text: str, width: int = 40) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"
