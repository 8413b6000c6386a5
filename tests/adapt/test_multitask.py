"""Several tasks on one backbone (``edgetl train --task-head NAME=CSV``): real digit images, a second
label derived from a real property of each digit (odd or even), the whole path through the CLI, and
every refusal of a bad head CSV or a hostile bundle manifest."""

from __future__ import annotations

import csv
import json
import shutil
import tarfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgetl.adapt import multitask
from edgetl.cli import cli

TINY = ["--backbone", "timm:test_efficientnet", "--no-pretrained", "--image-size", "32", "--mode", "finetune",
        "--unfreeze", "all", "--augment", "off", "--epochs", "3", "--head-epochs", "10", "--lr", "0.01",
        "--no-transfer-check"]
FAST = ["--iterations", "20", "--threads", "1", "--device", "ci", "--batch", "1"]


def parity(digit: str) -> str:
    return "odd" if int(digit) % 2 else "even"


def write_csv(path: Path, rows) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label"])
        writer.writerows(rows)
    return path


def image_rows(data: Path) -> list[tuple[str, str]]:
    """Every image of the digits folder, relative to it, with its parity."""
    return [(p.relative_to(data).as_posix(), parity(p.parent.name)) for p in sorted(data.rglob("*.png"))]


def invoke(*args: str):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def parity_csv(digits_dir, tmp_path_factory) -> Path:
    return write_csv(tmp_path_factory.mktemp("heads") / "parity.csv", image_rows(Path(digits_dir)))


@pytest.fixture(scope="module")
def multitask_run(digits_dir, parity_csv, tmp_path_factory) -> Path:
    """Trained with a parity head, compiled for onnxruntime fp32 + int8, benched and bundled, all through the CLI."""
    out = tmp_path_factory.mktemp("mt") / "run"
    steps = [
        ["train", "--data", digits_dir, "--out", out, "--task-head", f"parity={parity_csv}",
         "--task-weight", "parity=0.5", *TINY],
        ["compile", out, "--target", "onnxruntime", "--precision", "fp32,int8"],
        ["bench", out, "--target", "onnxruntime", *FAST],
        ["bundle", out, "--target", "onnxruntime", "--precision", "fp32"],
    ]
    for step in steps:
        result = invoke(*step)
        assert result.exit_code == 0, (step[0], result.output)
        if step[0] in ("train", "compile", "bench"):  # the summary and both tables: a row per head
            assert "head parity" in result.output, (step[0], result.output)
    return out


def test_train_records_every_head(multitask_run, parity_csv):
    import hashlib

    train = json.loads((multitask_run / "manifest.json").read_text())["train"]
    (head,) = train["heads"]
    assert head["name"] == "parity" and head["output"] == "logits_parity" and head["classes"] == ["even", "odd"]
    assert head["weight"] == 0.5 and head["labels_hash"] == hashlib.sha256(parity_csv.read_bytes()).hexdigest()
    assert 0 <= head["metrics"]["val_top1"] <= 1
    split = json.loads((multitask_run / "train" / "split.json").read_text())
    assert [parity(Path(p).parent.name) for p, _ in split["val"]] == [
        ["even", "odd"][i] for i in split["heads"]["parity"]["val"]]
    export = json.loads((multitask_run / "manifest.json").read_text())["export"]
    assert [o["name"] for o in export["outputs"]] == ["logits", "logits_parity"]
    assert [o["shape"] for o in export["outputs"]] == [["batch", 3], ["batch", 2]]


def test_compile_and_bench_measure_every_head(multitask_run):
    manifest = json.loads((multitask_run / "manifest.json").read_text())
    for key in ("onnxruntime/fp32", "onnxruntime/int8"):
        accuracy = manifest["compiled"][key]["accuracy"]
        head = accuracy["heads"]["parity"]
        assert {"n", "top1", "fp32_top1", "drop_pp", "agreement"} <= set(head) and head["n"] == accuracy["n"]
    assert manifest["compiled"]["onnxruntime/fp32"]["accuracy"]["heads"]["parity"]["agreement"] == 1.0
    docs = [json.loads(p.read_text()) for p in (multitask_run / "bench").rglob("*.json")]
    measured = [d for d in docs if d.get("status") == "ok" and not d.get("reference")]
    assert measured and all("parity" in d["accuracy"]["heads"] for d in measured)


def test_bundle_verify_and_predict_print_both_heads(multitask_run, digits_dir):
    bundle = multitask_run / "bundles" / "onnxruntime-fp32.tar.gz"
    with tarfile.open(bundle) as tar:
        manifest = json.load(tar.extractfile(next(m for m in tar.getmembers() if m.name.endswith("/manifest.json"))))
    assert manifest["heads"] == [{"name": "parity", "output": "logits_parity", "labels": ["even", "odd"]}]
    verified = invoke("verify", bundle)
    assert verified.exit_code == 0, verified.output
    image = sorted(Path(digits_dir, "1").glob("*.png"))[0]
    table = invoke("predict", bundle, image, "--top", "1")
    assert table.exit_code == 0, table.output
    assert "parity" in table.output and ("odd (" in table.output or "even (" in table.output)
    answer = invoke("predict", bundle, image, "--top", "2", "--json")
    (row,) = json.loads(answer.output)
    assert [t["label"] for t in row["top"]][0] in ("0", "1", "2")
    assert sorted(t["label"] for t in row["heads"]["parity"]) == ["even", "odd"]
    assert abs(sum(t["score"] for t in row["heads"]["parity"]) - 1) < 1e-6


def _hostile(manifest: dict, case: str) -> dict:
    heads = manifest["heads"]
    if case == "unknown output":
        heads[0] = {**heads[0], "name": "colour", "output": "logits_colour"}
    elif case == "label count":
        heads[0]["labels"] = ["even", "odd", "prime"]
    elif case == "bad name":
        heads[0] = {**heads[0], "name": "../x", "output": "logits_../x"}
    elif case == "output of another name":
        heads[0]["output"] = "logits"
    return manifest


@pytest.mark.parametrize(("case", "message"), [
    ("unknown output", "head 'colour' names the output 'logits_colour', which the model does not have"),
    ("label count", "head 'parity': 3 labels for an output with 2 classes"),
    ("bad name", "field heads[0].name: String should match pattern"),
    ("output of another name", "its output must be 'logits_parity'"),
])
def test_hostile_heads_are_one_line_refusals(multitask_run, tmp_path, case, message):
    bundle = multitask_run / "bundles" / "onnxruntime-fp32.tar.gz"
    with tarfile.open(bundle) as tar:
        tar.extractall(tmp_path, filter="data")
    (folder,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    manifest = json.loads((folder / "manifest.json").read_text())
    (folder / "manifest.json").write_text(json.dumps(_hostile(manifest, case)))
    result = invoke("verify", folder)
    assert result.exit_code == 2, result.output
    assert message in result.output and len(result.output.strip().splitlines()) == 1, result.output


@pytest.mark.parametrize(("case", "message"), [
    ("missing label", "no label for 1/"),
    ("unknown path", "nowhere/0001.png is not an image of --data"),
    ("empty label", ":2: empty label for"),
    ("one class", "one class ('odd') among the images"),
    ("header", "the first line must be the header 'path,label'"),
    ("two labels", "has two labels"),
    ("NUL in a path", ":2: the path '0/\\x00.png' must be 1..4096 characters without control characters"),
    ("escape in a path", ":2: the path '0/\\x1b[2J.png' must be 1..4096 characters"),
    ("newline in a quoted path", ":2: the path '0/x.png\\nmore' must be 1..4096 characters"),
    ("a 200 kB cell", "a cell longer than"),
    ("a file over the size limit", "bytes, more than a head CSV may hold"),
])
def test_bad_head_csv_is_one_line_and_writes_nothing(digits_dir, tmp_path, case, message):
    rows = image_rows(Path(digits_dir))
    path = tmp_path / "head.csv"
    if case == "missing label":
        write_csv(path, [r for r in rows if not r[0].startswith("1/")])
    elif case == "unknown path":
        write_csv(path, [*rows, ("nowhere/0001.png", "odd")])
    elif case == "empty label":
        write_csv(path, [(rows[0][0], ""), *rows[1:]])
    elif case == "one class":
        write_csv(path, [(p, "odd") for p, _ in rows])
    elif case == "header":
        path.write_text("image,parity\n" + "".join(f"{p},{label}\n" for p, label in rows))
    elif case == "two labels":
        write_csv(path, [*rows, (rows[0][0], "odd" if rows[0][1] == "even" else "even")])
    elif case == "NUL in a path":
        write_csv(path, [("0/\x00.png", "odd"), *rows])
    elif case == "escape in a path":
        write_csv(path, [("0/\x1b[2J.png", "odd"), *rows])
    elif case == "newline in a quoted path":
        write_csv(path, [("0/x.png\nmore", "odd"), *rows])
    elif case == "a 200 kB cell":
        write_csv(path, [*rows, ("0/x.png", "o" * 200_000)])
    else:  # sparse: its size is on disk, not in memory, and nothing of it is read
        write_csv(path, rows)
        with open(path, "r+b") as fh:
            fh.truncate(multitask.MAX_CSV_BYTES + 1)
    out = tmp_path / "run"
    result = invoke("train", "--data", digits_dir, "--out", out, "--task-head", f"parity={path}", *TINY)
    assert result.exit_code == 2, result.output
    assert message in result.output and len(result.output.strip().splitlines()) == 1, result.output
    assert not out.exists()


@pytest.mark.parametrize(("args", "message"), [
    (["--task-head", "logits=x.csv"], "not 'logits'"),
    (["--task-head", "Colour=x.csv"], "the name must be a slug"),
    (["--task-head", "colour"], "expected NAME=VALUE"),
    (["--task-head", "a=x.csv", "--task-weight", "b=2"], "--task-weight 'b': no --task-head of that name"),
    (["--task-head", "a=x.csv", "--task-weight", "a=0"], "a weight is a number in (0, 1000]"),
    (["--task-head", "a=missing.csv"], "--task-head a=missing.csv: no such file"),
    ([arg for i in range(16) for arg in ("--task-head", f"h{i}=x.csv")], "16 heads: a bundle holds at most 15"),
    (["--task-head", "a=x.csv", "--mode", "domain-adapt", "--target-data", "."], "--task-head trains with --mode"),
    (["--task-head", "a=x.csv", "--from", "runs/parent"], "--task-head cannot be combined with --from yet"),
])
def test_bad_head_options_are_one_line(digits_dir, tmp_path, args, message):
    out = tmp_path / "run"
    result = invoke("train", "--data", digits_dir, "--out", out, *args, *TINY[:2])
    assert result.exit_code == 2, result.output
    assert message in result.output and len(result.output.strip().splitlines()) == 1, result.output
    assert not out.exists()


def test_task_heads_are_for_image_runs(tmp_path):
    data = tmp_path / "reviews.csv"
    data.write_text("text,label\ngood,pos\nbad,neg\n")
    out = tmp_path / "run"
    result = invoke("train", "--task", "text-classification", "--data", data, "--out", out,
                    "--task-head", f"tone={data}")
    assert result.exit_code == 2, result.output
    assert "--task-head is for image runs (--task image-classification)" in result.output
    assert not out.exists()


def test_a_changed_head_csv_changes_the_inputs_hash(digits_dir, tmp_path):
    from edgetl.adapt.train import train_inputs_hash

    rows = image_rows(Path(digits_dir))
    first = write_csv(tmp_path / "a.csv", rows)
    second = write_csv(tmp_path / "b.csv", [(p, "odd" if label == "even" else "even") for p, label in rows])
    plain = train_inputs_hash(digits_dir)
    with_head = train_inputs_hash(digits_dir, task_heads={"parity": str(first)})
    assert plain != with_head
    assert with_head == train_inputs_hash(digits_dir, task_heads={"parity": str(first)})
    assert with_head != train_inputs_hash(digits_dir, task_heads={"parity": str(second)})
    assert with_head != train_inputs_hash(digits_dir, task_heads={"parity": str(first)}, task_weights={"parity": 2.0})


def test_a_copied_run_keeps_its_heads(multitask_run, tmp_path):
    """``load_trained`` rebuilds the multi-output network from the run alone."""
    import numpy as np

    from edgetl.data.arrays import DataView
    from edgetl.models.build import load_trained
    from edgetl.rundir import RunDir

    dest = tmp_path / "copy"
    shutil.copytree(multitask_run, dest)
    run = RunDir.open(dest)
    view = DataView(run)
    import torch

    with torch.inference_mode():
        logits, parity_logits = load_trained(run)(torch.from_numpy(view.val_feeds()["input"][:4]))
    assert logits.shape == (4, 3) and parity_logits.shape == (4, 2)
    reference = view.reference()
    assert np.allclose(reference["logits_parity"][:4], parity_logits.numpy(), atol=1e-5)


def test_gates_apply_the_accuracy_budgets_to_every_head():
    from edgetl.bench.gates import evaluate_gates
    from edgetl.config import Budgets

    result = {"latency": [{"batch": 1, "p90_ms": 5.0}], "memory": {"session_peak_mb": 10.0},
              "accuracy": {"n": 400, "drop_pp": 0.0, "drop_ci_pp": [-0.2, 0.3],
                           "heads": {"parity": {"n": 400, "drop_pp": 6.0, "drop_ci_pp": [4.0, 8.0]}}}}
    gates = evaluate_gates(Budgets(max_accuracy_drop_pp=1.0, p90_latency_ms=50), result)
    heads = [c for c in gates["checks"] if c.get("head") == "parity"]
    assert [c["metric"] for c in heads] == ["accuracy_drop_pp[parity]"]  # latency is the artifact's, once
    assert gates["status"] == "FAIL" and gates["failed"] == [heads[0]["reason"]]
    assert heads[0]["reason"].startswith("head parity: accuracy_drop +6.00 pp")


def test_deploy_trains_the_heads_and_retrains_when_a_csv_changes(digits_dir, tmp_path):
    """deploy's skip rule: the head CSV's bytes are in ``inputs_hash``."""
    import os
    import subprocess
    import sys

    rows = image_rows(Path(digits_dir))
    labels = write_csv(tmp_path / "parity.csv", rows)
    out = tmp_path / "run"
    args = [sys.executable, "-m", "edgetl.cli", "deploy", "--data", str(digits_dir), "--out", str(out), "--targets",
            "onnxruntime", "--precision", "fp32", "--no-bundle", "--task-head", f"parity={labels}", *TINY[:5], "--no-transfer-check",
            "--epochs", "1", "--iterations", "20"]

    def deploy():
        done = subprocess.run(args, capture_output=True, text=True, timeout=900, env={**os.environ, "COLUMNS": "200"})
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        return done.stdout, json.loads((out / "manifest.json").read_text())

    first, manifest = deploy()
    assert manifest["train"]["heads"][0]["name"] == "parity" and "parity" in manifest["compiled"]["onnxruntime/fp32"][
        "accuracy"]["heads"]
    again, _ = deploy()
    assert "train: skipped" in again
    write_csv(labels, [(p, "odd" if label == "even" else "even") for p, label in rows])  # the labels swapped
    changed, retrained = deploy()
    assert "train: skipped" not in changed
    assert retrained["train"]["inputs_hash"] != manifest["train"]["inputs_hash"]
    assert retrained["train"]["heads"][0]["labels_hash"] != manifest["train"]["heads"][0]["labels_hash"]


def test_a_head_csv_saved_with_a_byte_order_mark_is_read(tmp_path):
    """Spreadsheets write UTF-8 with a BOM: the header is still 'path,label'."""
    path = tmp_path / "head.csv"
    path.write_bytes("\ufeffpath,label\n0/a.png,even\n1/b.png,odd\n".encode())
    head = multitask.read_head("parity", path, tmp_path)
    assert head.classes == ["even", "odd"] and len(head.by_path) == 2
