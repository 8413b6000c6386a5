"""The notebook API: the real stage functions, light to import, with the CLI's one-line errors."""

from __future__ import annotations

import inspect
import pydoc
import subprocess
import sys

import pytest

import edgetl
from edgetl.adapt.options import TrainOptions
from edgetl.errors import ConfigError, EdgetlError, UnknownNameError


def test_importing_edgetl_imports_neither_torch_nor_a_stage():
    code = ("import sys, edgetl\n"
            "loaded = [m for m in ('torch', 'pydantic', 'edgetl.pipeline', 'edgetl.compiler') if m in sys.modules]\n"
            "assert not loaded, loaded\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("name, module, attribute", [
    ("select", "edgetl.adapt.select", "select"),
    ("train", "edgetl.adapt.train", "train"),
    ("compile", "edgetl.compiler", "compile"),
    ("run_bench", "edgetl.bench.run", "bench"),
    ("run_optimize", "edgetl.optimize", "optimize"),
    ("make_report", "edgetl.report", "make_report"),
    ("deploy", "edgetl.pipeline", "deploy_with"),
    ("TrainOptions", "edgetl.adapt.options", "TrainOptions"),
    ("enroll", "edgetl.bundle.enroll", "enroll"),
])
def test_the_api_names_are_the_real_functions(name, module, attribute):
    real = getattr(__import__(module, fromlist=[attribute]), attribute)
    assert getattr(edgetl, name) is real
    assert "*args" not in str(inspect.signature(real)) and real.__doc__
    assert real.__doc__.strip().splitlines()[0] in pydoc.render_doc(real)
    assert name in dir(edgetl)


def test_signatures_show_the_real_parameters_and_the_models_defaults():
    train = inspect.signature(edgetl.train).parameters
    assert list(train)[:2] == ["data", "options"] and train["out"].default == "runs/exp"
    deploy = inspect.signature(edgetl.deploy).parameters
    assert list(deploy)[0] == "data"
    assert "**" not in str(inspect.signature(edgetl.deploy))
    for name, field in TrainOptions.model_fields.items():  # flat, as on the command line
        assert deploy[name].default == field.default and deploy[name].kind is inspect.Parameter.KEYWORD_ONLY
    assert deploy["targets"].default == ["host-cpu"] and deploy["iterations"].default == 200
    assert "epochs" in pydoc.render_doc(edgetl.deploy) and "Example" in pydoc.render_doc(edgetl.deploy)
    with pytest.raises(AttributeError, match="no attribute 'trian'"):
        edgetl.trian  # noqa: B018


def _cli_error(*args) -> str:
    from click.testing import CliRunner

    from edgetl.cli import cli

    result = CliRunner().invoke(cli, list(args))
    assert result.exit_code == 2, result.output
    return result.output.strip().removeprefix("error: ")


@pytest.mark.parametrize("options, flags", [
    ({"epochs": 0}, ["--epochs", "0"]),
    ({"unfreeze": "few"}, ["--unfreeze", "few"]),
    ({"targets": ["host-cpux"]}, ["--targets", "host-cpux"]),
    ({"precisions": ["int4"]}, ["--precision", "int4"]),
    ({"iterations": 0}, ["--iterations", "0"]),
])
def test_a_bad_option_is_the_clis_one_line_error(digits_dir, tmp_path, options, flags):
    out = tmp_path / "run"
    with pytest.raises(EdgetlError) as exc:
        edgetl.deploy(digits_dir, out=str(out), **options)
    assert str(exc.value) == _cli_error("deploy", "--data", str(digits_dir), "--out", str(out), *flags)
    assert "\n" not in str(exc.value)
    assert not out.exists()  # nothing trained, nothing written


def test_an_unknown_keyword_names_the_closest_option(digits_dir, tmp_path):
    with pytest.raises(ConfigError, match=r"unknown option 'epoch'\. Did you mean 'epochs'\? Valid: .*batches"):
        edgetl.deploy(digits_dir, out=str(tmp_path / "run"), epoch=3)
    with pytest.raises(UnknownNameError, match="Did you mean 'host-cpu'"):
        edgetl.deploy(digits_dir, out=str(tmp_path / "run"), targets=["host-cpux"])
    assert not (tmp_path / "run").exists()


def test_train_options_built_in_a_notebook_raise_the_clis_message():
    with pytest.raises(ConfigError) as exc:
        TrainOptions(epochs=0)
    assert str(exc.value) == "option --epochs: Input should be greater than or equal to 1 (got 0)"
    with pytest.raises(ConfigError, match=r"unknown option 'lr_scale'\. Did you mean 'backbone_lr_scale'\?"):
        TrainOptions(lr_scale=0.1)
    with pytest.raises(ConfigError, match=r"option --mode: unknown training strategy 'fine-tune'\. Did you mean "
                       r"'finetune'\? Valid: domain-adapt, feature-extraction, finetune\. \(got 'fine-tune'\)"):
        edgetl.TrainOptions(mode="fine-tune")


@pytest.mark.parametrize("call, message", [
    (lambda data, out: edgetl.train(data, {"epochs": 0}, out=out), "option --epochs: Input should be greater than or equal to 1 (got 0)"),
    (lambda data, out: edgetl.train(data, "fast", out=out), "options must be an edgetl.TrainOptions"),
    (lambda data, out: edgetl.train(data, backbone=5, out=out), "option --backbone: Input should be a valid string (got 5)"),
])
def test_train_s_options_of_the_wrong_kind_are_one_line(digits_dir, tmp_path, call, message):
    """A dict of options is read as TrainOptions; anything else is named, not an AttributeError."""
    out = tmp_path / "run"
    with pytest.raises(ConfigError) as exc:
        call(digits_dir, out)
    assert str(exc.value).startswith(message) and "\n" not in str(exc.value)
    assert not out.exists()


@pytest.mark.parametrize("call, message", [
    (lambda run: edgetl.compile(run, [1], progress=False),
     "targets must be a list of names, e.g. ['host-cpu'], or one comma-separated text, not [1]"),
    (lambda run: edgetl.compile(run, ["onnxruntime"], {"fp32"}, progress=False),
     "precisions must be a list of names, e.g. ['host-cpu'], or one comma-separated text, not {'fp32'}"),
    (lambda run: edgetl.compile(run, ["onnxruntime"], gpu_arch=89, progress=False), "--gpu-arch 89 must be a text"),
    (lambda run: edgetl.run_bench(run, targets=7), "targets must be a list of names"),
])
def test_names_of_the_wrong_kind_are_one_line(copy_run, call, message):
    """Neither a traceback nor read letter by letter, and nothing is built or measured."""
    run = copy_run()
    before = run.manifest
    with pytest.raises(ConfigError) as exc:
        call(run.path)
    assert str(exc.value).startswith(message) and "\n" not in str(exc.value), str(exc.value)
    assert run.manifest == before


def test_deploy_takes_a_reporter_so_a_notebook_can_silence_or_redirect_it(copy_run, digits_dir, capfd):
    """``edgetl.deploy(..., reporter=)``: every stage reports to it, nothing reaches stdout or stderr."""
    from edgetl.stages import SilentReporter

    class Collect(SilentReporter):
        def __init__(self):
            self.done_stages = []

        def done(self, stage, note):
            self.done_stages.append(stage)

    run, reporter = copy_run(), Collect()
    assert inspect.signature(edgetl.deploy).parameters["reporter"].default is None
    # the tiny run's own training options: train is current and skipped
    edgetl.deploy(digits_dir, out=str(run.path), backbone="timm:test_efficientnet", pretrained=False, image_size=32,
                  mode="finetune", unfreeze="all", augment=False, epochs=8, head_epochs=10, lr=1e-2, seed=0,
                  targets=["onnxruntime"], precisions=["fp32"], iterations=20, bundle=False, reporter=reporter)
    assert reporter.done_stages == ["train", "compile", "bench", "report", "deploy"]
    assert capfd.readouterr() == ("", "")
    assert (run.path / "report.json").is_file()


def test_a_string_of_names_is_the_clis_comma_list_not_its_characters(copy_run):
    """``edgetl.compile(run, "host-cpu")``: a notebook passes one name as a string; it is that name
    (or the CLI's comma list), never one target per character."""
    run = copy_run()
    with pytest.raises(UnknownNameError, match=r"unknown target 'onnxruntme'\. Did you mean 'onnxruntime'"):
        edgetl.compile(run.path, "onnxruntime,onnxruntme", precisions="fp32")
    assert not (run.path / "compiled").exists()
    rows = edgetl.compile(run.path, "onnxruntime", precisions="fp32", progress=False)
    assert [(r["target"], r["precision"], r["status"]) for r in rows] == [("onnxruntime", "fp32", "ok")]
    with pytest.raises(UnknownNameError, match=r"unknown compiled target 'openvino'"):
        edgetl.run_bench(run.path, targets="onnxruntime,openvino")
    with pytest.raises(ConfigError, match=r"^--batch 8: Input should be a valid tuple"):  # not a TypeError
        edgetl.run_bench(run.path, batches=8)


def test_deploy_reads_a_string_of_targets_as_the_clis_comma_list(digits_dir, tmp_path):
    """As in edgetl.compile: a text is names, not "Input should be a valid list"; checked before training."""
    out = tmp_path / "run"
    with pytest.raises(UnknownNameError, match=r"unknown target 'onnxruntme'\. Did you mean 'onnxruntime'"):
        edgetl.deploy(digits_dir, out=str(out), targets="host-cpu,onnxruntme", precisions="fp32")
    assert not out.exists()
