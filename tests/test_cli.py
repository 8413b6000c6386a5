"""The command line as a new user meets it first."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

EDGETL = [sys.executable, "-m", "edgetl.cli"]


def _run(*args):
    return subprocess.run([*EDGETL, *args], capture_output=True, text=True, timeout=300)


def test_help_lists_every_stage():
    result = _run("--help")
    assert result.returncode == 0
    for command in ("train", "compile", "bench", "report", "bundle", "ship", "verify", "predict", "deploy",
                    "targets", "backbones", "select"):
        assert f"  {command}" in result.stdout, command


def test_backbones_lists_the_embedded_default_as_offline():
    result = _run("backbones")
    assert result.returncode == 0
    default = next(line for line in result.stdout.splitlines() if "efficientnet_lite0 *" in line)
    assert "yes" in default and "* the default" in result.stdout
    # the table ends by saying how to choose among them for one's own images and device
    assert result.stdout.rstrip().splitlines()[-1].startswith("which one for your images and device: edgetl select ")


def test_cli_and_device_side_modules_import_without_torch():
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import edgetl.cli, edgetl.bench.latency, edgetl.data.preprocess, edgetl.backends.onnxruntime\n"
        "assert 'timm' not in sys.modules\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


# Blocks torch and timm: a command that imports them fails, so these prove the fast paths stay fast.
_NO_TORCH = "import sys; sys.modules['torch'] = None; sys.modules['timm'] = None\nfrom edgetl.cli import main; main()"


def _run_without_torch(*args):
    return subprocess.run([sys.executable, "-c", _NO_TORCH, *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "COLUMNS": "200"})


def test_backbones_lists_without_importing_torch_or_timm():
    result = _run_without_torch("backbones")
    assert result.returncode == 0, result.stderr
    assert "timm:mobilenetv3_large_100" in result.stdout


def test_a_wrong_data_path_answers_before_torch_loads(tmp_path):
    (tmp_path / "photo.jpg").write_bytes(b"\xff\xd8\xff\xe0 jpeg")
    for data, message in [(tmp_path / "missing", "does not exist"), (tmp_path / "photo.jpg", "is an image file")]:
        result = _run_without_torch("train", "--data", str(data), "--out", str(tmp_path / "run"))
        assert result.returncode == 2, result.stderr
        assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
        assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("command", [["verify"], ["predict"], ["build"], ["val"]])
def test_a_bundle_command_on_a_run_folder_says_how_to_make_a_bundle(tmp_path, command):
    run = tmp_path / "run"
    run.mkdir()
    (run / "manifest.json").write_text('{"train": {}, "compiled": {"host-cpu/int8": {"target": "host-cpu"}}}')
    images = tmp_path / "images"
    (images / "a").mkdir(parents=True)
    extra = [str(images)] if command[0] in ("predict", "val") else []
    result = _run(*command, str(run), *extra)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == f"error: {run} is a run folder, not a bundle: edgetl bundle {run} --target " \
        "host-cpu, then verify the .tar.gz it writes"


def test_compile_prints_a_next_step_that_works(copy_run):
    import shlex

    from click.testing import CliRunner

    from edgetl.cli import cli

    run = copy_run()
    result = CliRunner().invoke(cli, ["compile", str(run.path), "--target", "onnxruntime", "--precision", "fp32"])
    assert result.exit_code == 0, result.output
    line = next(x for x in result.output.splitlines() if x.startswith("next: "))
    assert line.split("   then: ")[0] == f"next: edgetl bench {run.path} --target onnxruntime"
    bundle = shlex.split(line.split("   then: ")[1])
    assert bundle[:2] == ["edgetl", "bundle"]
    made = CliRunner().invoke(cli, bundle[1:])
    assert made.exit_code == 0, made.output
    assert (run.path / "bundles" / "onnxruntime-fp32.tar.gz").is_file()


# -- train flags are generated from the options models ------------------------------------------------
def test_every_train_option_is_a_teaching_flag_of_train_and_deploy():
    import click

    from edgetl.adapt.options import TrainInputs, TrainOptions
    from edgetl.cli import deploy, train

    for command in (train, deploy):
        options = {p.name: p for p in command.params if isinstance(p, click.Option)}
        assert all(o.help for o in options.values()), [n for n, o in options.items() if not o.help]
        for model in (TrainInputs, TrainOptions):
            for name, field in model.model_fields.items():
                flag = ("--no-" if field.default is True else "--") + name.replace("_", "-")
                flag = (field.json_schema_extra or {}).get("flag", flag)  # a name of its own: --from, --task-head
                assert flag in options[name].opts, (command.name, flag)
                assert field.description in options[name].help
                if field.default is True:  # the flag turns it off: the help says so before what "on" does
                    assert options[name].help == f"Turns off (on by default): {field.description}"
                if options[name].multiple:  # a repeatable pair (default: none given), each use one NAME=VALUE
                    assert options[name].metavar == "NAME=VALUE" and "repeatable" in options[name].help
                elif field.default not in (None, True, False):
                    assert f"[default: {field.default}]" in options[name].help
    # one default, the model's: a flag not given is None, left out, so TrainOptions' default applies (and
    # model_fields_set says what the user chose: domain-adapt fills only the rest with its recipe)
    assert {n: o.default for n, o in {p.name: p for p in train.params}.items() if n in TrainOptions.model_fields} == \
        dict.fromkeys(TrainOptions.model_fields)
    help_text = _run("train", "--help").stdout
    assert "--no-pretrained" in help_text and "--no-augment" in help_text and "[default: 100]" in help_text


def test_a_bad_generated_flag_is_one_line_before_torch_loads(digits_dir, tmp_path):
    def train(*args):
        return _run_without_torch("train", "--data", str(digits_dir), "--out", str(tmp_path / "run"), *args)

    for args, message in [(["--label-smoothing", "2"], "option --label-smoothing: Input should be less than 1 (got 2.0)"),
                          (["--epochs", "0"], "option --epochs: Input should be greater than or equal to 1 (got 0)")]:
        result = train(*args)
        assert result.returncode == 2, result.stderr
        assert result.stderr.strip() == f"error: {message}"
    # a Literal is click's choice: click's usage error, exit 2
    result = train("--head", "cnn")
    assert result.returncode == 2 and "'cnn' is not one of 'linear', 'mlp'" in result.stderr
    assert not (tmp_path / "run").exists()


def test_a_repeated_target_flag_adds_targets_instead_of_replacing_them(copy_run, digits_dir, tmp_path):
    """`-t host-cpu -t raspberry-pi-5` is both targets: a typo in the first one is not silently dropped."""
    from click.testing import CliRunner

    from edgetl.cli import cli

    run = copy_run()
    before = (run.path / "manifest.json").read_bytes()
    out = tmp_path / "deployed"
    for args in (["compile", str(run.path), "-t", "raspbery-pi-5", "-t", "host-cpu"],
                 ["deploy", "--data", str(digits_dir), "--out", str(out), "-t", "raspbery-pi-5", "-t", "host-cpu"]):
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 2, (args, result.output)
        assert "raspbery-pi-5" in result.output and "raspberry-pi-5" in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output
    assert (run.path / "manifest.json").read_bytes() == before and not (run.path / "compiled").exists()
    assert not out.exists()


def test_device_commands_help_speaks_of_every_task_not_only_images():
    predict = _run("predict", "--help").stdout
    assert "BUNDLE INPUTS..." in predict and '"the battery died after a week"' in predict
    val = _run("val", "--help").stdout
    assert "text: text,label" in val and "labelled samples" in val and "labelled images" not in val
    train = " ".join(_run("train", "--help").stdout.split())
    assert "Text: a text,label CSV or folders of .txt" in train
