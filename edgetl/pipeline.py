"""``edgetl deploy``: train -> compile -> bench -> bundle -> report, in one command.

Each stage is skipped when its inputs did not change: training when the data, backbone, weights and
hyper-parameters hash the same; compiling per cell (the compiler compares the ONNX, recipe and
options); benching when a result for the same artifact bytes exists on this device; bundling when
the bundle was made from the current artifact. So adding a target to an existing run only does the
new work. A TOML file can hold every option (``edgetl deploy --config deploy.toml``).

Every option is checked before the first stage (``check_config``): a misspelt target must not cost
a training. At the end a table gives each artifact's gate on this machine, read from the bench
results; an artifact that FAILED a budget is not bundled (``edgetl bundle`` still makes it on request).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgetl.adapt.train import TrainOptions
from edgetl.bench.settings import DEFAULTS as BENCH
from edgetl.bench.settings import BenchSettings
from edgetl.config import load_toml, validation_message
from edgetl.data.layout import resolve_layout
from edgetl.errors import CompileError, ConfigError, EdgetlError
from edgetl.rundir import RunDir

_FLAGS = {"targets": "--targets", "precisions": "--precision", "batches": "--batch"}  # field -> option


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
    batches: list[Annotated[int, Field(ge=1)]] = Field(default_factory=lambda: list(BENCH.batches), min_length=1)
    iterations: int = Field(BENCH.iterations, ge=1)
    bundle: bool = True
    sign: str | None = None  # Ed25519 private key that signs every bundle (edgetl keys new)
    check: bool = False

    def bench_settings(self) -> BenchSettings:
        """The bench stage's settings: these options over ``BenchSettings``' defaults."""
        return BenchSettings.parse(batches=tuple(self.batches), threads=self.threads, iterations=self.iterations)


def load_config(path: str | Path | None, overrides: dict[str, Any]) -> DeployConfig:
    """The TOML file's values, then the command line's (only the options actually given)."""
    data: dict[str, Any] = load_toml(path) if path else {}
    for section in ("compile", "bench", "train"):
        if not isinstance(data.get(section, {}), dict):
            raise ConfigError(f"{path}: '{section}' must be a table ([{section}] with its fields), "
                              f"not {data[section]!r}")
    for section in ("compile", "bench"):  # flatten optional [compile] / [bench] tables
        data.update(data.pop(section, {}))
    train = {**data.pop("train", {}), **overrides.pop("train", {})}
    data.update({k: v for k, v in overrides.items() if v is not None})
    data["train"] = train
    try:
        return DeployConfig.model_validate(data)
    except ValidationError as exc:
        if path:
            raise ConfigError(validation_message(Path(path), DeployConfig, exc)) from None
        first = exc.errors()[0]
        field = str(first["loc"][0])
        if field == "train" and len(first["loc"]) > 1:
            field = str(first["loc"][1])
        flag = _FLAGS.get(field, "--" + field.replace("_", "-"))
        raise ConfigError(f"option {flag}: {first['msg']} (got {first.get('input')!r})") from None


def check_config(config: DeployConfig) -> None:
    """Every path, name and number deploy will use, checked before any work: a typo must not cost a
    training. Raises the one-line ``EdgetlError`` the stage itself would raise later."""
    from edgetl.backends import get_backend, runtimes
    from edgetl.bench.gates import validate_budgets
    from edgetl.compiler import plan
    from edgetl.config import load_target
    from edgetl.models import registry

    out = Path(config.out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file: give a folder for the run")
    resolve_layout(config.data, config.val)
    if config.weights is not None and not Path(config.weights).is_file():
        raise ConfigError(f"--weights {config.weights} is not a file (expected a .safetensors or .pth state dict)")
    registry.resolve(config.backbone)
    if config.sign is not None:
        from edgetl.bundle.signing import load_private_key

        load_private_key(config.sign)  # a wrong key path fails now, not after training
    for cell in plan(config.targets, config.precisions, config.calibration, config.gpu_arch, config.threads):
        precisions = get_backend(cell.runtime).precisions
        if cell.precision not in precisions:
            raise ConfigError(f"target {cell.target}: {cell.runtime} cannot build {cell.precision} "
                              f"(it builds {', '.join(precisions)}): change --precision")
    for name in config.targets:
        if name not in runtimes():
            validate_budgets(load_target(name).budgets, f"target profile {name!r}")


def deploy(config: DeployConfig, console=None) -> dict:
    """Run every stage that is out of date; returns where the report and bundles are, and the gates.

    Raises ``GatesFailed`` (exit 1) with ``config.check`` when a budget failed, and ``CompileError``
    (exit 2) when an artifact could not be built or benched, after the summary is printed."""
    from rich.console import Console

    from edgetl.bench.system import device_slug

    check_config(config)
    console = console or Console()
    steps = ["train", "compile", "bench", *(["bundle"] if config.bundle else []), "report"]
    say = _Stages(console, steps)
    run = _train(config, say, console)
    rows = _compile(config, run, say)
    _bench(config, run, [r["cell"] for r in rows if r.get("status") != "failed"], say, console)
    gates = gate_rows(run, rows, device_slug())
    bundles = _bundle(run, gates, say, config.sign) if config.bundle else {}
    from edgetl.report import make_report

    say.start("report")  # last, so it lists the bundles just made
    written = make_report(run.path)
    say.done("report", ", ".join(str(p) for p in written.files))
    _summary(console, run, gates, bundles)
    _raise_for_outcome(gates, config.check)
    return {"run": str(run.path), "report": str(run.path / "report.html"),
            "bundles": {k: str(v) for k, v in bundles.items()}, "gates": gates}


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


def _runs_here(run: RunDir, key: str) -> bool:
    from edgetl.backends import get_backend

    backend = get_backend(run.manifest["compiled"][key]["runtime"])
    return backend.available() and backend.can_run_here()


def _stale_bench_keys(run: RunDir, keys: list[str], device: str, batches: list[int]) -> list[str]:
    """Compiled keys without a result on this device for exactly the current artifact bytes."""
    from edgetl.bench.run import result_path

    artifacts = run.manifest.get("artifacts", {})
    stale = []
    for key in keys:
        entry = run.manifest["compiled"][key]
        if not _runs_here(run, key):
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


def _bench(config: DeployConfig, run: RunDir, keys: list[str], say: _Stages, console) -> None:
    from edgetl.bench.run import bench
    from edgetl.bench.system import device_slug
    from edgetl.bench.table import print_table

    say.start("bench")
    stale = _stale_bench_keys(run, keys, device_slug(), config.batches)
    if not stale:
        say.done("bench", "skipped — every artifact that runs here is already benched on this device")
        return
    # Artifacts that cannot run here (a TensorRT engine without a GPU) keep their row in the table:
    # "n/a here", with the accuracy estimated at compile time.
    elsewhere = [k for k in keys if k not in stale and not _runs_here(run, k)]
    results = bench(run.path, stale + elsewhere, batches=config.batches, threads=config.threads,
                    iterations=config.iterations, console=console)
    print_table(console, results.rows, f"bench on {results.device}")
    measured = [r for r in results.rows if r.get("status") == "ok" and not r.get("reference")]
    say.done("bench", f"{len(measured)} artifact(s) measured on {results.device}")


# -- the truth at the end: one gate per artifact, read from the bench results ---------------------------
NOT_BUILT, NOT_BENCHED, NOT_HERE = "not built", "bench failed", "not measured here"


def gate_rows(run: RunDir, rows: list[dict], device: str) -> list[dict]:
    """One row per artifact: the gate status the bench stage wrote (PASS, FAIL, n/a, ...) and why,
    or why there is none (not built; bench failed; runtime cannot run here)."""
    results = ((run.manifest.get("bench") or {}).get(device) or {}).get("results") or {}
    out = []
    for r in rows:
        row = {"key": r["cell"], "target": r["target"], "precision": r["precision"]}
        bench = results.get(r["cell"]) or {}
        if r.get("status") == "failed":
            out.append({**row, "gate": NOT_BUILT, "detail": r.get("error", "")})
        elif bench.get("status") == "ok":
            gates = _result_gates(run, bench)
            # An UNDECIDED gate is bundled: its reason (too few images) must be read before it is shipped.
            said = [*(gates.get("failed") or []), *(gates.get("undecided") or [])]
            out.append({**row, "gate": gates["status"], "detail": "; ".join(said)})
        elif bench.get("status") == "error":
            out.append({**row, "gate": NOT_BENCHED, "detail": bench.get("reason") or ""})
        else:
            detail = bench.get("reason") or (f"bench its bundle on the device: "
                                             f"edgetl bench {run.path}/bundles/{r['target']}-{r['precision']}.tar.gz")
            out.append({**row, "gate": NOT_HERE, "detail": detail + _estimate_over_budget(run, r)})
    return out


def _estimate_over_budget(run: RunDir, row: dict) -> str:
    """An artifact that cannot run here is still bundled: when the compile stage's estimate of its drop
    is already over the profile's budget, say so before it is shipped."""
    from edgetl.backends import RUNTIMES
    from edgetl.config import load_target

    drop = (((run.manifest.get("compiled") or {}).get(row["cell"]) or {}).get("accuracy") or {}).get("drop_pp")
    if drop is None or row["target"] in RUNTIMES:
        return ""
    budget = load_target(row["target"]).budgets.max_accuracy_drop_pp
    if budget is None or drop <= budget:
        return ""
    return (f"; estimated drop {drop:+.2f} pp is over its {budget:g} pp budget: measure it on the device "
            f"(edgetl val BUNDLE FOLDER) before shipping")


def _result_gates(run: RunDir, summary: dict) -> dict:
    """The gates of a bench result file; the manifest's one-word status when the file is gone."""
    try:
        return json.loads((run.path / summary["file"]).read_text(encoding="utf-8"))["gates"]
    except (OSError, ValueError, KeyError, TypeError):
        return {"status": summary.get("gate") or NOT_BENCHED, "failed": [f"result file {summary.get('file')} unreadable"]}


def _bundle(run: RunDir, gates: list[dict], say: _Stages, sign: str | None = None) -> dict[str, Path]:
    """Bundle every built artifact but those that FAILED a budget: they are named, not shipped as fine.
    With ``sign`` every bundle is signed by that key (an existing one signed otherwise is remade)."""
    from edgetl.bench.gates import FAIL
    from edgetl.bundle.create import create_bundle, up_to_date

    say.start("bundle")
    out: dict[str, Path] = {}
    for row in gates:
        if row["gate"] == NOT_BUILT:
            continue
        if row["gate"] == FAIL:
            say.console.print(f"[red]bundle {row['key']}: skipped, it FAILED its budget[/] ({row['detail']}); "
                              f"to bundle it anyway: edgetl bundle {run.path} --target {row['target']} "
                              f"--precision {row['precision']}", highlight=False)
            continue
        try:
            out[row["key"]] = up_to_date(run, row["target"], row["precision"], sign=sign) or \
                create_bundle(run.path, row["target"], row["precision"], sign=sign)
        except EdgetlError as exc:
            say.console.print(f"[yellow]bundle {row['key']}: {exc}[/]", highlight=False)
    say.done("bundle", f"{len(out)} bundle(s)")
    return out


def _summary(console, run: RunDir, gates: list[dict], bundles: dict[str, Path]) -> None:
    from rich.markup import escape
    from rich.table import Table

    from edgetl.bench.gates import FAIL, NA, PASS

    failed = [g for g in gates if g["gate"] == FAIL]
    broken = [g for g in gates if g["gate"] in (NOT_BUILT, NOT_BENCHED)]
    if failed or broken:
        console.rule(f"[bold red]done, but {len(failed)} budget(s) FAILED and {len(broken)} artifact(s) broken")
    else:
        console.rule("[bold green]done")
    table = Table("artifact", "gate", "detail", "bundle", title="gates on this machine", title_justify="left")
    colour = {PASS: "green", FAIL: "bold red", NA: "dim", NOT_BUILT: "red", NOT_BENCHED: "red"}
    for g in gates:
        text = "no budgets" if g["gate"] == NA else g["gate"]
        bundle = str(bundles[g["key"]]) if g["key"] in bundles else "-"
        table.add_row(g["key"], f"[{colour.get(g['gate'], 'yellow')}]{escape(text)}[/]", escape(g["detail"]), bundle)
    console.print(table)
    console.print(f"report:  [bold]{run.path / 'report.html'}[/] (also report.md, report.json)")


def _raise_for_outcome(gates: list[dict], check: bool) -> None:
    from edgetl.bench.gates import FAIL
    from edgetl.bench.run import GatesFailed

    broken = [f"{g['key']}: {g['detail']}" for g in gates if g["gate"] in (NOT_BUILT, NOT_BENCHED)]
    if broken:
        raise CompileError(f"{len(broken)} artifact(s) could not be built or benched: " + " | ".join(broken))
    failed = [f"{g['key']}: {g['detail']}" for g in gates if g["gate"] == FAIL]
    if check and failed:
        raise GatesFailed("budget failed: " + " | ".join(failed))
