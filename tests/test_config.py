"""Device profiles and calibration recipes: the shipped ones load, bad ones say file and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgetl.backends import get_backend, runtimes
from edgetl.config import (
    Budgets,
    TargetProfile,
    load_recipe,
    load_target,
    recipe_names,
    target_names,
)
from edgetl.errors import ConfigError, UnknownNameError

REPO = Path(__file__).resolve().parent.parent
REQUIRED_TARGETS = {"host-cpu", "host-openvino", "jetson-orin-nano", "raspberry-pi-5", "intel-nuc", "rtx-4090"}


def _write(folder: Path, name: str, text: str) -> Path:
    path = folder / f"{name}.toml"
    path.write_text(text, encoding="utf-8")
    return path


# -- what ships ------------------------------------------------------------------------------------
def test_the_issue_profiles_and_recipes_ship():
    assert REQUIRED_TARGETS <= set(target_names())
    assert {"default", "entropy", "percentile"} <= set(recipe_names())


@pytest.mark.parametrize("name", target_names())
def test_every_shipped_profile_loads(name):
    profile = load_target(name)
    assert profile.name == name and profile.description
    # budgets are what bench enforces: every shipped device has an accuracy and a latency gate
    assert profile.budgets.max_accuracy_drop_pp is not None and profile.budgets.p90_latency_ms is not None
    assert (profile.runtime == "tensorrt") == ("gpu_arch" in profile.options) == (profile.device == "gpu")
    load_recipe(profile.calibration)


@pytest.mark.parametrize("name", recipe_names())
def test_every_shipped_recipe_loads(name):
    recipe = load_recipe(name)
    assert recipe.name == name and recipe.description


def test_one_profile_documents_every_field():
    text = (REPO / "targets" / "host-cpu.toml").read_text()
    runtime_fields = {f for r in runtimes() for f in get_backend(r).options_model.model_fields}
    fields = (set(TargetProfile.model_fields) - {"name", "budgets", "options"}) | set(Budgets.model_fields) | {"[budgets]"}
    fields |= runtime_fields
    missing = [f for f in sorted(fields) if f not in text]
    assert not missing, f"targets/host-cpu.toml should show (at least commented) {missing}"


# -- a user's own files ----------------------------------------------------------------------------
def test_user_profiles_join_the_shipped_ones(tmp_path, monkeypatch):
    (tmp_path / "targets").mkdir()
    _write(tmp_path / "targets", "my-board", 'runtime = "onnxruntime"\nthreads = 2\n')
    monkeypatch.chdir(tmp_path)
    assert {"my-board", "host-cpu"} <= set(target_names())
    assert load_target("my-board").threads == 2
    assert load_target(tmp_path / "targets" / "my-board.toml").name == "my-board"


GOOD_TRT = 'runtime = "tensorrt"\ndevice = "gpu"\n'


@pytest.mark.parametrize(
    ("text", "field", "hint"),
    [
        ('runtime = "onnxruntime"\nthreads = "4"\n', "threads", "valid integer"),
        ('runtime = "onnxruntime"\nthreads = 0\n', "threads", "greater than or equal to 1"),
        ('runtime = "onnxruntime"\nthreads = 100000000\n', "threads", "less than or equal to 1024"),
        ('runtime = "openvno"\n', "runtime", "Did you mean 'openvino'"),
        ('runtime = "onnxruntime"\nthread = 4\n', "thread", "Did you mean 'threads'"),
        ('runtime = "onnxruntime"\nprecision = "int4"\n', "precision", "'int8'"),
        ('runtime = "onnxruntime"\n[budgets]\np90_latency = 5\n', "budgets.p90_latency", "Did you mean 'p90_latency_ms'"),
        ('runtime = "onnxruntime"\n[budgets]\nmax_accuracy_drop_pp = -1\n', "budgets.max_accuracy_drop_pp", "greater"),
        ('runtime = "onnxruntime"\n[budgets]\np90_latency_ms = inf\n', "budgets.p90_latency_ms", "finite"),
        (GOOD_TRT + 'gpu_arch = "87"\n', "gpu_arch", "sm87"),
        ('runtime = "onnxruntime"\ngpu_arch = "sm87"\n', "gpu_arch", "only applies to runtime 'tensorrt'"),
        ('runtime = "tensorrt"\n', "device", 'set device = "gpu"'),
        ('runtime = "onnxruntime"\ndevice = "tpu"\n', "device", "'cpu', 'gpu' or 'npu'"),
        ('runtime = "onnxruntime"\ncalibration = "defualt"\n', "calibration", "Did you mean 'default'"),
        ('name = "other-board"\nruntime = "onnxruntime"\n', "name", "differs from the file name"),
        ("threads = 4\n", "runtime", "Field required"),
        # the runtime's own fields, validated by its backend's options model
        ('runtime = "onnxruntime"\ncpu_arch = "arm"\n', "cpu_arch", "'aarch64'"),
        ('runtime = "openvino"\ncpu_flags = "avx2"\n', "cpu_flags", "valid list"),
        ('runtime = "onnxruntime"\ncpu_flag = ["avx2"]\n', "cpu_flag", "Did you mean 'cpu_flags'"),
        ('runtime = "tensorrt"\ndevice = "gpu"\ncpu_arch = "aarch64"\n', "cpu_arch",
         "only applies to runtime 'onnxruntime' or 'openvino'"),
        (GOOD_TRT + "max_batch = 0\n", "max_batch", "greater than or equal to 1"),
        # goals on any metric a task declares or the bench measures
        ('runtime = "onnxruntime"\n[budgets.goals]\ntop5 = { min = 0.9 }\n', "budgets.goals",
         "unknown metric 'top5'. Did you mean 'top1'? Valid: accuracy_drop_pp, agreement, false_accept_rate, macro_f1, memory_mb, p90_latency_ms, top1"),
        ('runtime = "onnxruntime"\n[budgets.goals]\ntop1 = { mn = 0.9 }\n', "budgets.goals.top1.mn",
         "unknown field. Did you mean 'min'? Valid: max, min"),
        ('runtime = "onnxruntime"\n[budgets.goals]\ntop1 = 0.9\n', "budgets.goals.top1", "valid dictionary"),
        ('runtime = "onnxruntime"\n[budgets.goals]\naccuracy_drop_pp = { max = -5 }\n', "budgets.goals",
         "accuracy_drop_pp = { max = -5 } can never be met: give a value >= 0"),
        ('runtime = "onnxruntime"\n[budgets.goals]\np90_latency_ms = { max = -1e-3 }\n', "budgets.goals",
         "p90_latency_ms = { max = -0.001 } can never be met"),
    ],
)
def test_bad_profile_names_file_and_field(tmp_path, text, field, hint):
    path = _write(tmp_path, "mine", text)
    with pytest.raises(ConfigError) as info:
        load_target(path)
    message = str(info.value)
    assert message.startswith(f"{path}: field '{field}'") and hint in message, message
    assert "\n" not in message


def test_runtime_fields_validate_and_dump_flat(tmp_path):
    """A profile's runtime fields land in ``options`` and dump back flat, as in the TOML (bundle manifests)."""
    path = _write(tmp_path, "pi", 'runtime = "onnxruntime"\ncpu_arch = "aarch64"\ncpu_flags = ["asimd", "asimddp"]\n')
    profile = load_target(path)
    assert profile.options == {"cpu_arch": "aarch64", "cpu_flags": ["asimd", "asimddp"]}
    dumped = profile.model_dump()
    assert dumped["cpu_arch"] == "aarch64" and "options" not in dumped
    assert TargetProfile.model_validate(dumped) == profile
    # manifests of older bundles list unset fields as null
    assert TargetProfile.model_validate({**dumped, "gpu_arch": None}) == profile


@pytest.mark.parametrize(
    ("text", "field", "hint"),
    [
        ('method = "kl"\n', "method", "'entropy'"),
        ('method = "entropi"\n', "method", "Did you mean 'entropy'"),
        ('per_channel = "yes"\n', "per_channel", "valid boolean"),
        ("percentile = 40\n", "percentile", "greater than 50"),
        ('keep_float_ops = "Sigmoid"\n', "keep_float_ops", "valid list"),
        ('bias_correction = "slow"\n', "bias_correction", "'accurate'"),
        ("sample = 300\n", "sample", "Did you mean 'samples'"),
    ],
)
def test_bad_recipe_names_file_and_field(tmp_path, text, field, hint):
    path = _write(tmp_path, "mine", text)
    with pytest.raises(ConfigError) as info:
        load_recipe(path)
    message = str(info.value)
    assert message.startswith(f"{path}: field '{field}'") and hint in message, message


@pytest.mark.parametrize(
    ("content", "hint"),
    [(b'runtime = "onnxruntime\n', "invalid TOML"), (b"\xff\xfe\x00r", "UTF-8")],
)
def test_unreadable_file_is_a_config_error(tmp_path, content, hint):
    path = tmp_path / "broken.toml"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=hint) as info:
        load_target(path)
    assert str(path) in str(info.value)


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_target(tmp_path / "nowhere.toml")
    with pytest.raises(ConfigError, match="does not exist"):
        load_recipe(tmp_path / "nowhere.toml")


# -- names -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("load", "name", "closest"),
    [(load_target, "jetson-orin-nan", "jetson-orin-nano"), (load_target, "raspberry-pi5", "raspberry-pi-5"),
     (load_recipe, "entropi", "entropy"), (load_recipe, "percentil", "percentile")],
)
def test_unknown_name_gets_the_closest_and_the_list(load, name, closest):
    with pytest.raises(UnknownNameError) as info:
        load(name)
    message = str(info.value)
    assert f"Did you mean {closest!r}" in message and "Valid:" in message
    assert "host-cpu" in message or "default" in message


def test_a_profile_sets_goals_on_declared_metrics(tmp_path):
    path = _write(tmp_path, "pi", 'runtime = "onnxruntime"\n[budgets]\np90_latency_ms = 20\n'
                  '[budgets.goals]\ntop1 = { min = 0.9 }\nagreement = { min = 0.98 }\n')
    goals = load_target(path).budgets.as_goals()
    assert [(g.metric, g.bound, g.value) for g in goals] == [
        ("p90_latency_ms", "max", 20), ("top1", "min", 0.9), ("agreement", "min", 0.98)]
    assert [g.key for g in goals] == ["p90_latency_ms", "goals.top1", "goals.agreement"]


def test_an_options_value_that_is_not_a_table_is_one_line(tmp_path, monkeypatch):
    """`options = 3` in a profile: the field named, not a TypeError traceback; `edgetl targets` lists the others."""
    from click.testing import CliRunner

    from edgetl.cli import cli

    (tmp_path / "targets").mkdir()
    _write(tmp_path / "targets", "badopt", 'runtime = "onnxruntime"\noptions = 3\n')
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="field 'options' must be a table of the runtime's own fields"):
        load_target("badopt")
    result = CliRunner().invoke(cli, ["targets"])
    assert result.exit_code == 0 and "Traceback" not in result.output
    assert "badopt" in result.output  # its row holds the error (folded by the table)
