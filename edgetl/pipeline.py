"""``edgetl deploy``: train -> compile -> bench -> report -> bundle, in one command.

Each stage is skipped when its inputs did not change: training when the data, backbone, weights and
hyper-parameters hash the same; compiling per cell (the compiler compares the ONNX, recipe and
options); benching when a result for the same artifact bytes exists on this device; bundling when
the bundle was made from the current artifact. So adding a target to an existing run only does the
new work. A TOML file can hold every option (``edgetl deploy --config deploy.toml``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgetl.adapt.train import TrainOptions
from edgetl.config import load_toml, validation_message
from edgetl.errors import ConfigError, EdgetlError
from edgetl.rundir import RunDir


class DeployConfig(BaseModel):
    """Every option of ``edgetl deploy``; the TOML file uses the same names (``[train]`` etc. sections)."""

    model_config = ConfigDict(extra="forbid")

    data: str
    out: str = "runs/exp"
    backbone: str = "efficientnet_lite0"
    targets: list[str] = Field(default_factory=lambda: ["host-cpu"])
    val: str | None = None
    weights: str | None = None
    train: TrainOptions = Field(default_factory=TrainOptions)
    precisions: list[str] | None = None
    calibration: str | None = None
    gpu_arch: str | None = None
    threads: int | None = Field(None, ge=1)
    batches: list[int] = Field(default_factory=lambda: [1])
    iterations: int = Field(200, ge=1)
    bundle: bool = True
    check: bool = False


def load_config(path: str | Path | None, overrides: dict[str, Any]) -> DeployConfig:
    """The TOML file's values, then the command line's (only the options actually given)."""
    data: dict[str, Any] = load_toml(path) if path else {}
    for section in ("compile", "bench"):  # flatten optional [compile] / [bench] tables
        data.update(data.pop(section, {}) or {})
    train = {**data.pop("train", {}), **overrides.pop("train", {})}
    data.update({k: v for k, v in overrides.items() if v is not None})
    data["train"] = train
    try:
        return DeployConfig.model_validate(data)
    except ValidationError as exc:
        if path:
            raise ConfigError(validation_message(Path(path), DeployConfig, exc)) from None
        first = exc.errors()[0]
        raise ConfigError(f"option --{str(first['loc'][-1]).replace('_', '-')}: {first['msg']}") from None


def deploy(config: DeployConfig, console=None) -> dict:
    """Run every stage that is out of date; returns where the report and bundles are."""
    from rich.console import Console

    console = console or Console()
    steps = ["train", "compile", "bench", "report", *(["bundle"] if config.bundle else [])]
    say = _Stages(console, steps)
    run = _train(config, say, console)
    rows = _compile(config, run, say)
    bench = _bench(config, run, [r["cell"] for r in rows if r.get("status") != "failed"], say, console)
    from edgetl.report import make_report

    say.start("report")
    written = make_report(run.path)
    say.done("report", ", ".join(str(p) for p in written.files))
    bundles = _bundle(config, run, rows, say) if config.bundle else {}
    console.rule("[bold green]done")
    console.print(f"report:  [bold]{run.path / 'report.html'}[/] (also report.md, report.json)")
    for target, path in bundles.items():
        console.print(f"bundle:  [bold]{path}[/] ({target})")
    if config.check and bench is not None:
        bench.raise_for_gates()
    return {"run": str(run.path), "report": str(run.path / "report.html"), "bundles": {k: str(v) for k, v in bundles.items()}}


class _Stages:
    def __init__(self, console, steps: list[str]):
        self.console, self.steps = console, steps

    def start(self, step: str) -> None:
        self.console.rule(f"[bold]{self.steps.index(step) + 1}/{len(self.steps)} {step}")

    def done(self, step: str, note: str) -> None:
        self.console.print(f"[green]✓[/] {step}: {note}", highlight=False)


def _train(config: DeployConfig, say: _Stages, console) -> RunDir:
    from edgetl.adapt.train import train, train_inputs_hash

    say.start("train")
    kwargs = dict(backbone=config.backbone, val=config.val, weights=config.weights,
                  **config.train.model_dump(exclude_defaults=True))
    wanted = train_inputs_hash(config.data, **kwargs)
    existing = _existing_train(config.out)
    if existing and existing.get("inputs_hash") == wanted and not existing["metrics"].get("interrupted"):
        say.done("train", f"skipped — data and options unchanged (val top-1 {existing['metrics']['val_top1']:.2%})")
    else:
        section = train(config.data, out=config.out, console=console, **kwargs)
        say.done("train", f"val top-1 {section['metrics']['val_top1']:.2%}")
    return RunDir.open(config.out, need="train")


def _existing_train(out: str) -> dict | None:
    try:
        return RunDir.open(out).get("train")
    except EdgetlError:
        return None


def _compile(config: DeployConfig, run: RunDir, say: _Stages) -> list[dict]:
    from edgetl.compiler import compile as compile_stage
    from edgetl.compiler import summary_table

    say.start("compile")
    rows = compile_stage(run.path, config.targets, config.precisions, config.calibration, config.gpu_arch, config.threads)
    say.console.print(summary_table(rows))
    failed = [r for r in rows if r.get("status") == "failed"]
    say.done("compile", f"{len(rows) - len(failed)} of {len(rows)} artifact(s) ready"
             + (f"; failed: {', '.join(r['cell'] for r in failed)}" if failed else ""))
    return rows


def _stale_bench_keys(run: RunDir, keys: list[str], device: str, batches: list[int]) -> list[str]:
    """Compiled keys without a result on this device for exactly the current artifact bytes."""
    from edgetl.backends import get_backend
    from edgetl.bench.run import result_path

    artifacts = run.manifest.get("artifacts", {})
    stale = []
    for key in keys:
        entry = run.manifest["compiled"][key]
        backend = get_backend(entry["runtime"])
        if not (backend.available() and backend.can_run_here()):
            continue  # e.g. a TensorRT engine without a GPU: bench it on the device (edgetl bench BUNDLE)
        path = result_path(run, key, device)
        try:
            doc = json.loads(path.read_text())
            current = {f: artifacts.get(f) for f in entry.get("files") or [entry["path"]]}
            same = doc["artifact"]["files"] == current and doc["settings"]["batches"] == batches
        except (OSError, ValueError, KeyError, TypeError):
            same = False
        if not same:
            stale.append(key)
    return stale


def _bench(config: DeployConfig, run: RunDir, keys: list[str], say: _Stages, console):
    from edgetl.bench.run import bench
    from edgetl.bench.system import device_slug
    from edgetl.bench.table import rich_table

    say.start("bench")
    stale = _stale_bench_keys(run, keys, device_slug(), config.batches)
    if not stale:
        say.done("bench", "skipped — every artifact that runs here is already benched on this device")
        return None
    results = bench(run.path, stale, batches=config.batches, threads=config.threads, iterations=config.iterations,
                    console=console)
    console.print(rich_table(results.rows, f"bench on {results.device}"))
    measured = [r for r in results.rows if r.get("status") == "ok" and not r.get("reference")]
    say.done("bench", f"{len(measured)} artifact(s) measured on {results.device}")
    return results


def _bundle(config: DeployConfig, run: RunDir, rows: list[dict], say: _Stages) -> dict[str, Path]:
    from edgetl.bundle.create import create_bundle, up_to_date

    say.start("bundle")
    targets = dict.fromkeys(r["target"] for r in rows if r.get("status") != "failed")
    out: dict[str, Path] = {}
    for target in targets:
        try:
            out[target] = up_to_date(run, target) or create_bundle(run.path, target)
        except EdgetlError as exc:
            say.console.print(f"[yellow]bundle {target}: {exc}[/]")
    say.done("bundle", f"{len(out)} bundle(s)")
    return out
