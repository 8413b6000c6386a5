"""Training strategies are plugins: the registry, the flags and TOML keys their options models give,
and a new strategy (and a new alignment loss) as one file plus one entry point."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from edgetl.adapt import options
from edgetl.adapt.alignments import alignments
from edgetl.adapt.strategies import get_strategy, strategies
from edgetl.cli import cli
from edgetl.errors import ConfigError
from edgetl.pipeline import load_config
from tests.adapt.plugin import install

BACKBONE = "timm:test_efficientnet"
TINY = ["--backbone", BACKBONE, "--image-size", "32", "--no-pretrained", "--head-epochs", "3"]


def test_the_built_in_strategies_and_alignments_are_registered():
    assert strategies() == ("domain-adapt", "feature-extraction", "finetune")
    assert {"coral", "mcc"} <= set(alignments())
    fields = options.TrainOptions.model_fields
    assert {"target_data", "target_val", "alignment", "alignment_weight"} <= set(fields)
    for name in strategies():  # --mode's help is the strategies' own descriptions
        assert f"{name}: {get_strategy(name).description}" in fields["mode"].description


def test_a_strategy_s_options_are_flags_of_train_and_deploy():
    for command in ("train", "deploy"):
        result = CliRunner().invoke(cli, [command, "--help"], terminal_width=200)
        assert result.exit_code == 0, result.output
        for flag in ("--target-data", "--target-val", "--alignment", "--alignment-weight", "--mode"):
            assert flag in result.output, (command, flag)
        assert "domain-adapt: finetune that also sees unlabelled" in " ".join(result.output.split())


def test_a_strategy_s_options_are_keys_of_deploy_s_train_table(tmp_path):
    config = tmp_path / "deploy.toml"
    config.write_text('data = "images"\n[train]\nmode = "domain-adapt"\ntarget_data = "frames"\nalignment = "mcc"\n')
    loaded = load_config(config, {})
    assert loaded.train.target_data == "frames" and loaded.train.alignment == "mcc"
    config.write_text('data = "images"\n[train]\nmode = "domain-adapt"\ntarget_data = "frames"\nalignment_weight = -1\n')
    with pytest.raises(ConfigError, match="deploy.toml: field 'train.alignment_weight'"):
        load_config(config, {})
    config.write_text('data = "images"\n[train]\nmode = "domain-adapt"\n')
    with pytest.raises(ConfigError, match="needs --target-data DIR"):
        load_config(config, {})


def test_hparams_hold_the_chosen_strategy_s_options_only():
    finetune = options.TrainOptions(mode="finetune")
    assert not {"target_data", "alignment"} & set(finetune.hparams())
    adapt = options.TrainOptions(mode="domain-adapt", target_data="frames")
    assert adapt.hparams()["target_data"] == "frames" and adapt.hparams()["alignment"] == "coral"


@pytest.mark.parametrize(("args", "message"), [
    (["--mode", "finetun"], "option --mode: unknown training strategy 'finetun'. Did you mean 'finetune'?"),
    (["--mode", "finetune", "--target-data", "frames"], "option --target-data is for --mode domain-adapt, not finetune"),
    (["--mode", "domain-adapt"], "--mode domain-adapt needs --target-data DIR"),
    (["--mode", "domain-adapt", "--target-data", "x", "--alignment", "corl"],
     "option --alignment: unknown alignment 'corl'. Did you mean 'coral'?"),
    (["--mode", "domain-adapt", "--target-data", "x", "--alignment-weight", "0"],
     "option --alignment-weight: Input should be greater than 0"),
])
def test_a_bad_mode_or_strategy_option_is_one_line_and_exit_2(digits_dir, tmp_path, args, message):
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, ["train", "--data", str(digits_dir), "--out", str(out), *TINY, *args])
    assert result.exit_code == 2, result.output
    assert message in result.output and len(result.output.strip().splitlines()) == 1, result.output
    assert "Traceback" not in result.output
    assert not out.exists()


def _cli(site, *args) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH")) if p),
           "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "edgetl.cli", *args], capture_output=True, text=True, env=env,
                          timeout=600)


def test_a_new_strategy_is_one_file_and_one_entry_point(digits_dir, tmp_path, monkeypatch):
    """shrink_head.py, from its own distribution: its --mode, its own flag (--shrink), validated like
    any option, its phase 2 run by `edgetl train`, its record in the manifest and its summary row."""
    site = install(tmp_path / "site")
    help_text = _cli(site, "train", "--help")
    assert help_text.returncode == 0, help_text.stderr
    assert "--shrink" in help_text.stdout and "shrink-head: the probe, its head's weights" in help_text.stdout

    bad = _cli(site, "train", "--data", str(digits_dir), "--out", str(tmp_path / "bad"), *TINY,
               "--mode", "shrink-head", "--shrink", "2")
    assert bad.returncode == 2 and "option --shrink: Input should be less than or equal to 1" in bad.stderr
    assert not (tmp_path / "bad").exists()

    out = tmp_path / "run"
    result = _cli(site, "train", "--data", str(digits_dir), "--out", str(out), *TINY, "--mode", "shrink-head",
                  "--shrink", "0.25")
    assert result.returncode == 0, result.stderr
    assert "head shrunk by" in result.stdout
    train = json.loads((out / "manifest.json").read_text())["train"]
    assert train["mode"] == "shrink-head" and train["hparams"]["shrink"] == 0.25
    assert train["adaptation"] == {"shrunk_by": 0.25}

    # In this process too, once its distribution is on sys.path: the options model grows its field.
    monkeypatch.syspath_prepend(str(site))
    assert "shrink-head" in strategies() and "mean-gap" in alignments()
    assert options.TrainOptions(mode="shrink-head", shrink=0.5).hparams()["shrink"] == 0.5
    with pytest.raises(ConfigError, match="option --shrink is for --mode shrink-head, not finetune"):
        options.TrainOptions(mode="finetune", shrink=0.3)
    # ... and a new alignment loss is one file too: a value of --alignment
    assert options.TrainOptions(mode="domain-adapt", target_data="frames", alignment="mean-gap").alignment == "mean-gap"


def test_a_strategy_plugin_that_fails_to_import_breaks_only_its_own_mode(digits_dir, tmp_path):
    """A broken third-party strategy (a missing dependency) must not take every command down: its
    --mode is one line naming it, the other commands and modes work."""
    site = tmp_path / "site"
    info = site / "broken_plugin-0.1.dist-info"
    info.mkdir(parents=True)
    (site / "broken_strategy.py").write_text("import no_such_module_for_edgetl\n")
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[edgetl.strategies]\nbroken = broken_strategy:Broken\n")
    for args in (["backbones"], ["train", "--help"]):
        result = _cli(site, *args)
        assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    out = tmp_path / "run"
    result = _cli(site, "train", "--data", str(digits_dir), "--out", str(out), *TINY, "--mode", "broken")
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == ("error: training strategy 'broken' (broken_strategy:Broken) cannot be imported: "
                                     "No module named 'no_such_module_for_edgetl'; reinstall or remove the package "
                                     "that registers it")
    assert not out.exists()
