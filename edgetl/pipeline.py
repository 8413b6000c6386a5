"""``edgetl deploy``: train -> compile -> bench -> bundle -> report, in one command.

With ``optimize`` (``--optimize``) an optimize stage follows compile: ``edgetl optimize`` per target
profile, and the bench, bundle and gate table use each target's pick (``<target>/optimized``, its
runtime, variant and threads) instead of the profile's default artifact; a target where nothing met
the budgets keeps its default, with the reason in its row. The stage is current when every target
has a search recorded for the artifacts compile left unchanged.

``deploy`` is a loop over stages (``edgetl.stages``: fingerprint, is-current, run, a result that
decides pass/fail) with one skip rule: a stage whose recorded output is current is not run. Training
is current when the data, backbone, weights and hyper-parameters hash the same; compiling when every
cell was built from the same ONNX, recipe and options (the compiler's own per-cell rule); benching
when a result for the same artifact bytes exists on this device; bundling when every bundle was
made from the current artifact. So adding a target to an existing run only does the
new work. A TOML file can hold every option (``edgetl deploy --config deploy.toml``).

Every option is checked before the first stage (``check_config``): a misspelt target must not cost
a training. At the end a table gives each artifact's gate on this machine, read from the bench
results; an artifact that FAILED a budget is not bundled (``edgetl bundle`` still makes it on request).
"""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path
from typing import Annotated, Any, ClassVar

from pydantic import Field, ValidationError

from edgetl._io import sha256_json
from edgetl.adapt.options import TrainInputs, TrainOptions, keyword_parameters, unknown_options
from edgetl.adapt.select import AUTO, check_auto, strictest_target
from edgetl.adapt.train import TrainRecord
from edgetl.bench.settings import DEFAULTS as BENCH
from edgetl.bench.settings import BenchSettings
from edgetl.compiler import OPTIMIZED, CompiledEntry, compiled_key
from edgetl.config import load_toml, name_list, validation_message
from edgetl.data.layout import resolve_layout
from edgetl.errors import CompileError, ConfigError, DataError, EdgetlError
from edgetl.rundir import RunDir
from edgetl.stages import Reporter, RichReporter, Stage, StageResult
from edgetl.tasks import DEFAULT_TASK

_FLAGS = {"targets": "--targets", "precisions": "--precision", "batches": "--batch"}  # field -> option


class DeployConfig(TrainInputs):
    """Every option of ``edgetl deploy``; the TOML file uses the same names: top-level keys (these
    fields, with ``backbone``, ``weights`` and ``val`` from ``TrainInputs``) and the ``[train]``
    (``TrainOptions``), ``[compile]`` and ``[bench]`` tables."""

    data: str
    out: str = "runs/exp"
    targets: list[str] = Field(default_factory=lambda: ["host-cpu"])
    train: TrainOptions = Field(default_factory=TrainOptions)
    precisions: list[str] | None = None
    calibration: str | None = None
    gpu_arch: str | None = None
    threads: int | None = Field(None, ge=1)
    batches: list[Annotated[int, Field(ge=1)]] = Field(default_factory=lambda: list(BENCH.batches), min_length=1)
    iterations: int = Field(BENCH.iterations, ge=1)
    bundle: bool = True
    optimize: bool = False  # search each target's fastest artifact (edgetl optimize) and ship the pick
    optimize_budget: float | str = Field(600.0, description="time for each target's search: seconds or 90s, 10m")
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


def deploy_with(data: str | Path, *, reporter: Reporter | None = None, console=None, **options) -> dict:
    """``edgetl deploy`` from Python: train -> compile -> bench -> bundle -> report, each stage only
    when its inputs changed. The keywords are the command's options (``DeployConfig``'s fields, and
    ``TrainOptions``' flat, as on the command line); a bad one raises the CLI's one-line
    ``EdgetlError`` before any work. Returns where the report and bundles are, and the gates.
    ``reporter`` (an ``edgetl.stages.SilentReporter`` subclass) gets every stage's progress instead of
    the terminal, and training prints on ``console`` only (see ``deploy``).

    Example::

        import edgetl
        edgetl.deploy("images", targets=["host-cpu", "raspberry-pi-5"], mode="finetune", epochs=10)
    """
    problem = unknown_options(options, {p.name for p in _DEPLOY_KEYWORDS})
    if problem:
        raise ConfigError(problem)
    for names in ("targets", "precisions"):  # one text is the CLI's comma list, as in edgetl.compile
        if isinstance(options.get(names), str):
            options[names] = name_list(names, options[names])
    train = {name: options.pop(name) for name in list(options) if name in TrainOptions.model_fields}
    return deploy(load_config(None, {**options, "data": str(data), "train": train}), console, reporter=reporter)


# The real keywords of ``deploy_with``, from the models: what help() and inspect.signature show.
_DEPLOY_KEYWORDS = keyword_parameters(DeployConfig, TrainOptions, skip={"data", "train"})
deploy_with.__signature__ = inspect.Signature(
    [inspect.Parameter("data", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation="str | Path"), *_DEPLOY_KEYWORDS,
     inspect.Parameter("reporter", inspect.Parameter.KEYWORD_ONLY, annotation="Reporter | None", default=None),
     inspect.Parameter("console", inspect.Parameter.KEYWORD_ONLY, default=None)],
    return_annotation="dict")


def check_config(config: DeployConfig) -> None:
    """Every path, name and number deploy will use, checked before any work: a typo must not cost a
    training. Raises the one-line ``EdgetlError`` the stage itself would raise later."""
    from edgetl.adapt import continual
    from edgetl.adapt.train import check_task_inputs
    from edgetl.backends import get_backend, runtimes
    from edgetl.bench.gates import validate_budgets
    from edgetl.compiler import plan
    from edgetl.config import load_target

    out = Path(config.out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file: give a folder for the run")
    check_task_inputs(config.train, config.task, config.backbone, config.weights, None)
    continual.train_inputs(config.task, config.train,  # --from: the parent run, read-only (edgetl/adapt/continual.py)
                           continual.request(config.from_run, config.memory, config.distill_weight,
                                             config.distill_temperature),
                           out=out, resume=False, backbone=config.backbone, weights=config.weights)
    if config.task == DEFAULT_TASK:
        _check_image_inputs(config)
    elif not Path(config.data).exists():
        raise DataError(f"--data {config.data} does not exist")
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
        elif config.optimize:
            raise ConfigError(f"--optimize searches a device profile's budgets: {name!r} is a runtime name; give a "
                              "profile (`edgetl targets`)")
    if config.optimize:
        from edgetl.optimize import parse_budget

        try:
            parse_budget(config.optimize_budget)
        except ConfigError:
            raise ConfigError(f"--optimize-budget {config.optimize_budget!r}: give seconds or a duration like 90s, "
                              "10m or 1h, more than 0") from None


def _check_image_inputs(config: DeployConfig) -> None:
    """The image task's data layout, backbone and weights."""
    from edgetl.models import registry

    resolve_layout(config.data, config.val)
    if config.weights is not None and not Path(config.weights).is_file():
        raise ConfigError(f"--weights {config.weights} is not a file (expected a .safetensors or .pth state dict)")
    backbone = config.backbone or registry.DEFAULT_BACKBONE
    if backbone == AUTO:
        check_auto(backbone, strictest_target(config.targets), config.weights)
    else:
        registry.resolve(backbone)
    offline = registry.OFFLINE.get(backbone)
    if offline is not None and config.weights is None and config.train.pretrained:
        registry.offline_weights_path(offline)  # a weights package not installed: its pip command, now


def deploy(config: DeployConfig, console=None, *, reporter: Reporter | None = None) -> dict:
    """Run every stage that is out of date; returns where the report and bundles are, the gates, and
    per stage whether it was skipped, its note and the fingerprint of its inputs.

    ``reporter`` (``edgetl.stages``) gets every stage's progress, tables and summary; without one, a
    ``RichReporter`` on ``console`` (default: a new rich Console). Training draws its bars and prints
    its summary on ``console`` (with a reporter and no console: not at all) and reports each epoch to
    the reporter. Raises ``GatesFailed`` (exit 1)
    with ``config.check`` when a budget failed, and ``CompileError`` (exit 2) when an artifact could
    not be built or benched, after the summary is reported."""
    from rich.console import Console

    check_config(config)
    if reporter is None:
        console = console or Console()
    state = _State(config, console)  # training's bars and summary go to ``console`` (None: not shown)
    stages: list[Stage] = [_Train(state), _Compile(state), *([_Optimize(state)] if config.optimize else []),
                           _Bench(state), *([_Bundle(state)] if config.bundle else []),
                           _Report(state)]  # the report last, so it lists the bundles just made
    reporter = reporter or RichReporter(console, [s.name for s in stages])
    done = {}
    for stage in stages:  # one skip rule: a stage whose recorded output is current is not run
        reporter.start(stage.name)
        skipped = stage.is_current()
        result = stage.recorded() if skipped else stage.run(reporter)
        reporter.done(stage.name, f"skipped — {result.note}" if skipped else result.note)
        done[stage.name] = {"skipped": skipped, "note": result.note, "fingerprint": stage.fingerprint()}
    outcome = DeployResult(state.run, state.gates, state.bundles)
    outcome.report(reporter)
    outcome.raise_for_errors()
    if config.check:
        outcome.raise_for_gates()
    return {"run": str(state.run.path), "report": str(state.run.path / "report.html"),
            "bundles": {k: str(v) for k, v in state.bundles.items()}, "gates": state.gates, "stages": done}


class _State:
    """What the stages of one deploy hand each other: the options, the run, and each stage's output."""

    def __init__(self, config: DeployConfig, console):
        self.config, self.console = config, console
        self.run: RunDir | None = None
        self.rows: list[dict] = []  # compile rows, one per cell
        self.gates: list[dict] = []  # gate_rows, after the bench
        self.bundles: dict[str, Path] = {}
        self.compiled_now = False  # the compile stage ran (its artifacts, and so optimize's inputs, may have changed)
        self.no_pick: dict[str, str] = {}  # target -> why optimize promoted nothing


@dataclasses.dataclass
class _Done(StageResult):
    """A stage's outcome in one line; deploy decides pass/fail on the whole (``DeployResult``)."""

    note: str


class _Train:
    name = "train"

    def __init__(self, state: _State):
        self.state = state
        config = state.config
        self.inputs = dict(backbone=config.backbone, val=config.val, weights=config.weights, task=config.task,
                           from_run=config.from_run, memory=config.memory, distill_weight=config.distill_weight,
                           distill_temperature=config.distill_temperature)
        if config.task_heads:  # --task-head: its CSVs are hashed with the data (a changed CSV retrains)
            self.inputs.update(task_heads=config.task_heads, task_weights=config.task_weights)
        if config.backbone == AUTO:  # chosen for the strictest latency budget among the targets
            self.inputs["target"] = strictest_target(config.targets)
        self._fingerprint: str | None = None

    def fingerprint(self) -> str:
        """The data, backbone, weights and options: hashing the data reads every image, so once per deploy."""
        from edgetl.adapt.train import train_inputs_hash

        if self._fingerprint is None:
            self._fingerprint = train_inputs_hash(self.state.config.data, self.state.config.train, **self.inputs)
        return self._fingerprint

    def _existing(self) -> TrainRecord | None:
        try:
            return RunDir.open(self.state.config.out).section(TrainRecord)
        except EdgetlError:  # no run yet, or a training that never finished
            return None

    def is_current(self) -> bool:
        existing = self._existing()
        return bool(existing and existing.inputs_hash == self.fingerprint() and not existing.metrics.interrupted)

    def recorded(self) -> _Done:
        self.state.run = RunDir.open(self.state.config.out, need="train")
        return _Done(f"data and options unchanged (val top-1 {self._existing().metrics.val_top1:.2%})")

    def run(self, reporter: Reporter) -> _Done:
        from edgetl.adapt.train import train

        config = self.state.config
        section = train(config.data, config.train, out=config.out, console=self.state.console, reporter=reporter,
                        **self.inputs)
        self.state.run = RunDir.open(self.state.config.out, need="train")
        return _Done(f"val top-1 {section['metrics']['val_top1']:.2%}")


class _Compile:
    name = "compile"

    def __init__(self, state: _State):
        self.state = state

    def _cells(self):
        from edgetl.compiler import plan

        c = self.state.config
        return plan(c.targets, c.precisions, c.calibration, c.gpu_arch, c.threads)

    def fingerprint(self) -> str:
        from edgetl.compiler import fingerprints

        return sha256_json(fingerprints(self.state.run, self._cells()))

    def _current(self):
        from edgetl.compiler import current_rows

        return current_rows(self.state.run, self._cells())

    def is_current(self) -> bool:
        return self._current() is not None

    def recorded(self) -> _Done:
        self.state.rows = self._current()
        return _Done(f"{len(self.state.rows)} artifact(s) unchanged")

    def run(self, reporter: Reporter) -> _Done:
        from edgetl.compiler import compile as compile_stage
        from edgetl.compiler import summary_table

        c = self.state.config
        rows = compile_stage(self.state.run.path, c.targets, c.precisions, c.calibration, c.gpu_arch, c.threads,
                             reporter=reporter)
        reporter.table(summary_table(rows))
        self.state.rows = rows
        self.state.compiled_now = True
        failed = [r["cell"] for r in rows if r.get("status") == "failed"]
        return _Done(f"{len(rows) - len(failed)} of {len(rows)} artifact(s) ready"
                     + (f"; failed: {', '.join(failed)}" if failed else ""))


class _Optimize:
    """``edgetl optimize`` per target; each pick replaces its target's default artifact in the rows
    that bench, bundle and the gate table read."""

    name = "optimize"

    def __init__(self, state: _State):
        self.state = state

    def _targets(self) -> list[str]:
        from edgetl.config import load_target

        return list(dict.fromkeys(load_target(t).name for t in self.state.config.targets))

    def _records(self) -> dict:
        from edgetl.optimize.record import OptimizeRecord

        return self.state.run.entries(OptimizeRecord)

    def fingerprint(self) -> str:
        records = self._records()
        return sha256_json({t: records[t].fingerprint if t in records else None for t in self._targets()})

    def is_current(self) -> bool:
        """A search recorded for every target, on this machine, with the profile's budgets and the
        deploy's threads, whose pick is still in place; and compile rebuilt nothing since."""
        if self.state.compiled_now:
            return False
        records = self._records()
        return all(t in records and self._still_valid(records[t]) for t in self._targets())

    def _still_valid(self, record) -> bool:
        """The search deploy would run now: same device, budgets, runtimes and threads, not cut short by
        a smaller time budget, and its pick still in place."""
        from edgetl.bench.run import default_threads
        from edgetl.config import load_target
        from edgetl.optimize import _local_usable, parse_budget
        from edgetl.optimize.space import serving_runtimes

        config, profile = self.state.config, load_target(record.target)
        threads = config.threads or profile.threads
        settings = record.settings
        if record.remote is not None or record.budgets != profile.budgets.model_dump():
            return False
        if settings.get("threads") != ([threads] if threads else sorted({1, default_threads()})):
            return False
        try:
            if settings.get("runtimes") != serving_runtimes(profile, None, _local_usable)[0]:
                return False
        except EdgetlError:
            return False
        if record.budget_spent and settings.get("budget_s", 0) < parse_budget(config.optimize_budget):
            return False
        if record.pick is None:
            return True
        try:
            for rel in self.state.run.compiled_entry(f"{record.target}/{OPTIMIZED}").files:
                self.state.run.verify(rel)
        except EdgetlError:
            return False
        return True

    def recorded(self) -> _Done:
        records = self._records()
        self._use_picks({t: records[t] for t in self._targets()})
        return _Done(self._note(records) + " (searches unchanged)")

    def run(self, reporter: Reporter) -> _Done:
        from edgetl.optimize import optimize
        from edgetl.optimize.table import candidate_table

        config, records = self.state.config, {}
        for target in self._targets():
            result = optimize(self.state.run.path, target, budget_s=config.optimize_budget, threads=config.threads,
                              reporter=reporter, progress=False)
            reporter.table(candidate_table(result.record))  # every point and why it lost, as `edgetl optimize` shows
            records[target] = result.record
        self._use_picks(records)
        return _Done(self._note(records))

    def _use_picks(self, records: dict) -> None:
        """Each target with a pick is benched, bundled and gated as its pick alone."""
        picked = {t for t, r in records.items() if r.pick is not None}
        self.state.no_pick = {t: _no_pick_reason(r) for t, r in records.items() if r.pick is None}
        rows = [r for r in self.state.rows if r["target"] not in picked]
        for target in sorted(picked):
            entry = self.state.run.compiled_entry(f"{target}/{OPTIMIZED}")
            rows.append({"cell": compiled_key(entry), "target": target, "runtime": entry.runtime,
                         "precision": entry.precision, "slot": OPTIMIZED, "variant": entry.variant,
                         "threads": entry.threads, "status": "ok"})
        self.state.rows = rows

    @staticmethod
    def _note(records: dict) -> str:
        picks = [f"{t}: {r.point(r.pick).runtime} {r.point(r.pick).variant}" for t, r in records.items() if r.pick]
        none = [t for t, r in records.items() if r.pick is None]
        return "; ".join(picks + [f"{t}: nothing met the budgets, its default artifact stays" for t in none])


def _no_pick_reason(record) -> str:
    return (f"optimize found no point meeting every budget of {record.target} "
            f"({len(record.points)} tried): the profile's default artifact is used")


class _Bench:
    name = "bench"

    def __init__(self, state: _State):
        self.state = state
        self.settings = state.config.bench_settings()

    def _keys(self) -> list[str]:
        return [r["cell"] for r in self.state.rows if r.get("status") != "failed"]

    def fingerprint(self) -> str:
        run = self.state.run
        files = {k: _artifact_files(run, e) for k, e in run.entries(CompiledEntry).items() if k in self._keys()}
        return sha256_json({"files": files, "settings": self.settings.record()})

    def is_current(self) -> bool:
        from edgetl.bench.system import device_slug

        return not _stale_bench_keys(self.state.run, self._keys(), device_slug(), list(self.settings.batches))

    def _gates(self) -> None:
        from edgetl.bench.system import device_slug

        self.state.gates = gate_rows(self.state.run, self.state.rows, device_slug())
        for g in self.state.gates:  # optimize promoted nothing for this target: its default is used, say why
            if g["target"] in self.state.no_pick:
                g["detail"] = "; ".join(filter(None, [g["detail"], self.state.no_pick[g["target"]]]))

    def recorded(self) -> _Done:
        self._gates()
        return _Done("every artifact that runs here is already benched on this device")

    def run(self, reporter: Reporter) -> _Done:
        from edgetl.bench.run import bench
        from edgetl.bench.system import device_slug
        from edgetl.bench.table import rich_table

        run, keys = self.state.run, self._keys()
        stale = _stale_bench_keys(run, keys, device_slug(), list(self.settings.batches))
        # Artifacts that cannot run here (a TensorRT engine without a GPU) keep their row in the table:
        # "n/a here", with the accuracy estimated at compile time.
        elsewhere = [k for k in keys if k not in stale and not _runs_here(run, k)]
        measured, device = [], device_slug()
        for threads, group in _by_threads(run, stale + elsewhere).items():
            settings = self.settings if threads is None else self.settings.with_threads(threads)
            results = bench(run.path, group, settings=settings, reporter=reporter)
            reporter.table(lambda width, results=results: rich_table(results.rows, f"bench on {results.device}",
                                                                     width=width))
            measured += [r for r in results.rows if r.get("status") == "ok" and not r.get("reference")]
            device = results.device
        self._gates()
        return _Done(f"{len(measured)} artifact(s) measured on {device}")


class _Bundle:
    """Bundle every built artifact but those that FAILED a budget: they are named, not shipped as fine.
    With ``sign`` every bundle is signed by that key (an existing one signed otherwise is remade)."""

    name = "bundle"

    def __init__(self, state: _State):
        self.state = state

    def _wanted(self) -> list[dict]:
        from edgetl.bench.gates import FAIL

        return [g for g in self.state.gates if g["gate"] not in (NOT_BUILT, FAIL)]

    def fingerprint(self) -> str:
        return sha256_json({"bundles": [g["key"] for g in self._wanted()], "sign": self.state.config.sign})

    def _existing(self) -> dict[str, Path] | None:
        from edgetl.bundle.create import up_to_date

        made = {}
        for g in self._wanted():
            try:
                made[g["key"]] = up_to_date(self.state.run, g["target"], g["slot"], sign=self.state.config.sign)
            except EdgetlError:
                return None
            if made[g["key"]] is None:
                return None
        return made

    def is_current(self) -> bool:
        return not self._failed() and self._existing() is not None

    def _failed(self) -> list[dict]:
        from edgetl.bench.gates import FAIL

        return [g for g in self.state.gates if g["gate"] == FAIL]

    def recorded(self) -> _Done:
        self.state.bundles = self._existing()
        return _Done(f"{len(self.state.bundles)} bundle(s) unchanged")

    def run(self, reporter: Reporter) -> _Done:
        from edgetl.bundle.create import create_bundle, up_to_date

        run, sign = self.state.run, self.state.config.sign
        for row in self._failed():
            flag = "--optimized" if row["slot"] == OPTIMIZED else f"--precision {row['precision']}"
            reporter.warn(f"bundle {row['key']}: skipped, it FAILED its budget ({row['detail']}); to bundle it "
                          f"anyway: edgetl bundle {run.path} --target {row['target']} {flag}")
        for row in self._wanted():
            try:
                self.state.bundles[row["key"]] = up_to_date(run, row["target"], row["slot"], sign=sign) or \
                    create_bundle(run.path, row["target"], row["slot"], sign=sign)
            except EdgetlError as exc:
                reporter.warn(f"bundle {row['key']}: {exc}")
        return _Done(f"{len(self.state.bundles)} bundle(s)")


class _Report:
    name = "report"

    def __init__(self, state: _State):
        self.state = state

    def fingerprint(self) -> str:
        return sha256_json(self.state.run.manifest)

    def is_current(self) -> bool:
        return False  # cheap, and it says when it was made: always written

    def recorded(self) -> _Done:
        raise AssertionError("the report is never current")

    def run(self, reporter: Reporter) -> _Done:
        from edgetl.report import make_report

        written = make_report(self.state.run.path)
        return _Done(", ".join(str(p) for p in written.files))


def _by_threads(run: RunDir, keys: list[str]) -> dict[int | None, list[str]]:
    """Keys grouped by the threads they are benched at: optimize's pick at the threads it was picked
    at (with PyTorch at the same threads, so its speed-up compares), the rest at the bench's (None)."""
    groups: dict[int | None, list[str]] = {}
    for key in keys:
        entry = run.compiled_entry(key)
        groups.setdefault(entry.threads if entry.slot else None, []).append(key)
    return groups


def _artifact_files(run: RunDir, entry: CompiledEntry) -> dict[str, str | None]:
    artifacts = run.manifest.get("artifacts", {})
    return {f: artifacts.get(f) for f in entry.files or [entry.path]}


def _runs_here(run: RunDir, key: str) -> bool:
    from edgetl.backends import get_backend

    backend = get_backend(run.compiled_entry(key).runtime)
    return backend.available() and backend.can_run_here()


def _stale_bench_keys(run: RunDir, keys: list[str], device: str, batches: list[int]) -> list[str]:
    """Compiled keys without a result on this device for exactly the current artifact bytes."""
    from edgetl.bench.run import BenchDocument, result_path

    stale = []
    for key in keys:
        if not _runs_here(run, key):
            continue  # e.g. a TensorRT engine without a GPU: bench it on the device (edgetl bench BUNDLE)
        try:
            doc, entry = BenchDocument.read(result_path(run, key, device)), run.compiled_entry(key)
            same = doc.artifact["files"] == _artifact_files(run, entry) and \
                (doc.settings or {}).get("batches") == batches and \
                (not entry.slot or entry.threads is None or (doc.settings or {}).get("threads") == entry.threads)
        except (EdgetlError, KeyError):
            same = False
        if not same:
            stale.append(key)
    return stale


# -- the truth at the end: one gate per artifact, read from the bench results ---------------------------
NOT_BUILT, NOT_BENCHED, NOT_HERE = "not built", "bench failed", "not measured here"


def gate_rows(run: RunDir, rows: list[dict], device: str) -> list[dict]:
    """One row per artifact: the gate status the bench stage wrote (PASS, FAIL, n/a, ...) and why,
    or why there is none (not built; bench failed; runtime cannot run here)."""
    from edgetl.bench.run import BenchSummary, DeviceBench

    recorded = run.entries(DeviceBench).get(device)
    results = recorded.results if recorded else {}
    out = []
    for r in rows:
        row = {"key": r["cell"], "target": r["target"], "precision": r["precision"],
               "slot": r.get("slot") or r["precision"], "runs": _runs_as(r)}
        bench = results.get(r["cell"]) or BenchSummary()
        if r.get("status") == "failed":
            out.append({**row, "gate": NOT_BUILT, "detail": r.get("error", "")})
        elif bench.status == "ok":
            gates = _result_gates(run, bench)
            # An UNDECIDED gate is bundled: its reason (too few samples) must be read before it is shipped.
            said = [*gates.failed, *gates.undecided]
            out.append({**row, "gate": gates.status, "detail": "; ".join(said)})
        elif bench.status == "error":
            out.append({**row, "gate": NOT_BENCHED, "detail": bench.reason or ""})
        else:
            detail = bench.reason or (f"bench its bundle on the device: "
                                      f"edgetl bench {run.path}/bundles/{r['target']}-{row['slot']}.tar.gz")
            out.append({**row, "gate": NOT_HERE, "detail": detail + _estimate_over_budget(run, r)})
    return out


def _runs_as(row: dict) -> str | None:
    """How optimize's pick runs (``openvino int8 qdq @2t``); None for the profile's own artifacts."""
    if not row.get("slot"):
        return None
    runs = row.get("variant") or f"{row['runtime']} {row['precision']}"  # the variant is the candidate's whole label
    return runs + (f" @{row['threads']}t" if row.get("threads") else "")


def _estimate_over_budget(run: RunDir, row: dict) -> str:
    """An artifact that cannot run here is still bundled: when the compile stage's estimate of its
    accuracy already misses a goal of the profile, say so before it is shipped."""
    from edgetl.bench.gates import estimates_missing
    from edgetl.bench.run import budgets_for

    entry = run.entries(CompiledEntry).get(row["cell"])
    budgets = budgets_for(entry) if entry is not None else None
    if budgets is None:  # not compiled, or a bare runtime: no goals
        return ""
    missed = estimates_missing(budgets, entry.accuracy.model_dump())
    if not missed:
        return ""
    return f"; {', '.join(missed)}: measure it on the device (edgetl val BUNDLE FOLDER) before shipping"


def _result_gates(run: RunDir, summary):
    """The gates of a bench result file; the manifest's one-word status when the file is gone."""
    from edgetl.bench.run import BenchDocument, BenchGates

    try:
        gates = BenchDocument.read(run.path / summary.file).gates if summary.file else None
    except EdgetlError:
        gates = None
    return gates or BenchGates(status=summary.gate or NOT_BENCHED, failed=[f"result file {summary.file} unreadable"])


@dataclasses.dataclass
class DeployResult(StageResult):
    """The whole deploy: one gate row per artifact and the bundles made. It decides pass/fail: an
    artifact not built or not benched is an error (exit 2), a FAILed budget a failed gate (exit 1)."""

    run: RunDir
    gates: list[dict]
    bundles: dict[str, Path]
    error_class: ClassVar[type[EdgetlError]] = CompileError
    what_failed: ClassVar[str] = "could not be built or benched"

    def errors(self) -> list[str]:
        return [f"{g['key']}: {g['detail']}" for g in self.gates if g["gate"] in (NOT_BUILT, NOT_BENCHED)]

    def failed_gates(self) -> list[str]:
        from edgetl.bench.gates import FAIL

        return [f"{g['key']}: {g['detail']}" for g in self.gates if g["gate"] == FAIL]

    def report(self, reporter: Reporter) -> None:
        """The gates table, then one line: done, or how many budgets failed and artifacts broke."""
        from rich.markup import escape
        from rich.table import Table

        from edgetl.bench.gates import FAIL, NA, PASS

        table = Table("artifact", "gate", "detail", "bundle", title="gates on this machine", title_justify="left")
        colour = {PASS: "green", FAIL: "bold red", NA: "dim", NOT_BUILT: "red", NOT_BENCHED: "red"}
        for g in self.gates:
            text = "no budgets" if g["gate"] == NA else g["gate"]
            bundle = str(self.bundles[g["key"]]) if g["key"] in self.bundles else "-"
            artifact = g["key"] + (f" ({g['runs']})" if g.get("runs") else "")
            table.add_row(escape(artifact), f"[{colour.get(g['gate'], 'yellow')}]{escape(text)}[/]", escape(g["detail"]), bundle)
        reporter.table(table)
        failed, broken = self.failed_gates(), self.errors()
        where = f"report: {self.run.path / 'report.html'} (also report.md, report.json)"
        if failed or broken:
            reporter.warn(f"done, but {len(failed)} budget(s) FAILED and {len(broken)} artifact(s) broken; {where}")
        else:
            reporter.done("deploy", where)
