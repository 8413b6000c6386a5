"""Where training runs (--device, --amp, --workers) and --resume, on the CPU, with real tiny runs.
The CUDA paths are in test_device_gpu.py."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")

from click.testing import CliRunner  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from edgetl.adapt import device  # noqa: E402
from edgetl.adapt.options import TrainOptions  # noqa: E402
from edgetl.adapt.train import train, train_inputs_hash  # noqa: E402
from edgetl.cli import cli  # noqa: E402
from edgetl.errors import ConfigError  # noqa: E402
from edgetl.rundir import RunDir  # noqa: E402
from tests.conftest import signal_when  # noqa: E402

BACKBONE = "timm:test_efficientnet"
# Fine-tuning with augmentation: the resumed run must replay the crops' random stream too.
RESUMABLE = {"mode": "finetune", "unfreeze": "all", "epochs": 3, "head_epochs": 3}


def _tiny(**options) -> TrainOptions:
    return TrainOptions(pretrained=False, image_size=32, seed=0, **options)


def _train_cli(*args):
    return CliRunner().invoke(cli, ["train", "--backbone", BACKBONE, "--no-pretrained", "--image-size", "32", *args])


class _StopAfter:
    """A stage reporter that presses Ctrl-C once the epoch it names (e.g. "finetune epoch 1") ends."""

    def __init__(self, epoch: str):
        self.epoch = epoch

    def step(self, stage: str, message: str) -> None:
        if message.startswith(self.epoch + ":"):
            raise KeyboardInterrupt


def _interrupted(digits_dir, out, epoch: str, options: TrainOptions):
    with pytest.raises(KeyboardInterrupt):
        train(digits_dir, options, out=out, backbone=BACKBONE, reporter=_StopAfter(epoch))
    return out / "train" / "last.pt"


def _history(out) -> list[dict]:
    return json.loads((out / "train" / "history.json").read_text())


# -- --device ----------------------------------------------------------------------------------------
@pytest.mark.skipif(torch.cuda.is_available() or torch.backends.mps.is_available(), reason="a GPU is here")
@pytest.mark.parametrize("wanted", ["cuda", "cuda:7", "mps"])
def test_a_device_that_is_not_here_is_one_line_naming_what_is(digits_dir, tmp_path, wanted):
    out = tmp_path / "run"
    result = _train_cli("--data", str(digits_dir), "--out", str(out), "--device", wanted)
    assert result.exit_code == 2, result.output
    assert result.output.strip() == f"error: --device {wanted}: not available here; this machine has: cpu"
    assert not out.exists()


@pytest.mark.parametrize(("given", "hint"), [("gpu", "; did you mean 'cuda'?"), ("CPU", "; did you mean 'cpu'?"),
                                             ("vulkan", "")])
def test_a_device_name_that_does_not_exist_is_refused_before_torch_runs(digits_dir, tmp_path, given, hint):
    result = _train_cli("--data", str(digits_dir), "--out", str(tmp_path / "run"), "--device", given)
    assert result.exit_code == 2, result.output
    assert result.output.strip() == f"error: option --device: expected auto, cpu, cuda, cuda:N or mps{hint} (got {given!r})"
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(torch.cuda.is_available() or torch.backends.mps.is_available(), reason="a GPU is here")
def test_auto_on_a_cpu_is_the_cpu_in_fp32_without_workers():
    assert device.resolve() == device.Execution(device="cpu", label="cpu", amp="off", channels_last=False, workers=0)
    assert device.resolve("cpu", "bf16", True, 2).record() == {"device": "cpu", "amp": "bf16", "channels_last": True,
                                                               "workers": 2}


def test_execution_settings_are_not_new_work_but_amp_is(digits_dir):
    base = train_inputs_hash(digits_dir, _tiny(), backbone=BACKBONE)
    assert train_inputs_hash(digits_dir, _tiny(device="cpu", workers=3, channels_last=True), backbone=BACKBONE) == base
    assert train_inputs_hash(digits_dir, _tiny(amp="bf16"), backbone=BACKBONE) != base


# -- --amp and --workers on the CPU -------------------------------------------------------------------
def test_bf16_autocast_on_the_cpu_trains_and_its_checkpoint_loads_in_fp32(digits_dir, tmp_path):
    from edgetl.adapt.loop import predict
    from edgetl.models.build import create_model
    from edgetl.models.registry import resolve

    options = _tiny(mode="finetune", unfreeze="all", epochs=2, head_epochs=3, amp="bf16", augment=False)
    section = train(digits_dir, options, out=tmp_path / "run", backbone=BACKBONE)
    assert section["execution"] == {"device": "cpu", "amp": "bf16", "channels_last": False, "workers": 0,
                                    "resumed_from": None}
    assert section["hparams"]["amp"] == "bf16"
    assert any(r["phase"] == "finetune" for r in _history(tmp_path / "run"))
    state = load_file(tmp_path / "run" / "train" / "model.safetensors")
    assert {v.dtype for v in state.values() if v.is_floating_point()} == {torch.float32}
    model = create_model(resolve(BACKBONE), 3, pretrained=False)
    model.load_state_dict(state)
    x = torch.rand(4, 3, 32, 32).numpy()
    fp32, bf16 = predict(model, x), predict(model, x, execution=device.resolve("cpu", "bf16"))
    assert fp32.shape == (4, 3) and torch.isfinite(torch.from_numpy(fp32)).all()
    assert abs(fp32 - bf16).max() < 0.1  # bf16 keeps 8 bits of mantissa: close, not equal


def test_loader_workers_keep_the_seeded_order(digits_dir, tmp_path):
    """Two runs with worker processes and random crops give the same weights (the workers are seeded
    from the loader's generator)."""
    options = _tiny(mode="finetune", unfreeze="all", epochs=2, head_epochs=2, workers=2)
    for name in ("a", "b"):
        section = train(digits_dir, options, out=tmp_path / name, backbone=BACKBONE)
        assert section["execution"]["workers"] == 2
    hashes = [RunDir(tmp_path / name).manifest["artifacts"]["train/model.safetensors"] for name in ("a", "b")]
    assert hashes[0] == hashes[1]


# -- --resume ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("stop", "amp"), [("head epoch 2", "auto"), ("head epoch 3", "auto"),
                                           ("finetune epoch 1", "auto"), ("finetune epoch 1", "fp16")])
def test_an_interrupted_run_resumes_at_the_next_epoch_as_if_never_stopped(digits_dir, tmp_path, stop, amp):
    """Ctrl-C after an epoch (mid-phase, at the end of the head phase, in fine-tuning, with fp16's
    loss scaling); --resume continues after it and ends where the uninterrupted run ends (this is
    deterministic on a CPU)."""
    options = _tiny(**RESUMABLE, amp=amp)
    train(digits_dir, options, out=tmp_path / "whole", backbone=BACKBONE)
    out = tmp_path / "resumed"
    last = _interrupted(digits_dir, out, stop, options)
    saved = torch.load(last, weights_only=True)  # data only: tensors, numbers, strings, lists, dicts
    assert list(saved["phases"])[-1] == stop.split()[0]
    if amp == "fp16":
        assert saved["phases"]["finetune"]["scaler"]["scale"] > 0  # the loss scale goes on where it was
    assert RunDir.open(out).manifest["train"]["metrics"]["interrupted"] is True
    assert [f"{r['phase']} epoch {r['epoch']}" for r in _history(out)][-1] == stop

    section = train(digits_dir, options, out=out, backbone=BACKBONE, resume=True)
    phase, epoch = stop.split(" epoch ")
    assert section["execution"]["resumed_from"] == {"phase": phase, "after_epoch": int(epoch)}
    assert not last.exists()  # a finished run leaves nothing to resume
    whole, resumed = _history(tmp_path / "whole"), _history(out)
    assert [(r["phase"], r["epoch"]) for r in resumed] == [(r["phase"], r["epoch"]) for r in whole]
    assert [r["loss"] for r in resumed] == pytest.approx([r["loss"] for r in whole], rel=1e-5)
    a, b = load_file(tmp_path / "whole/train/model.safetensors"), load_file(out / "train/model.safetensors")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert section["metrics"]["val_top1"] == RunDir(tmp_path / "whole").manifest["train"]["metrics"]["val_top1"]


def test_resume_on_the_command_line_says_where_it_continued(digits_dir, tmp_path):
    out = tmp_path / "run"
    _interrupted(digits_dir, out, "finetune epoch 1", _tiny(**RESUMABLE))
    args = [f"--{k.replace('_', '-')}={v}" for k, v in RESUMABLE.items()]
    result = _train_cli("--data", str(digits_dir), "--out", str(out), *args, "--device", "cpu", "--resume")
    assert result.exit_code == 0, result.output
    assert "cpu, resumed after finetune epoch 1" in result.output
    assert [(r["phase"], r["epoch"]) for r in _history(out)][-3:] == [("finetune", 1), ("finetune", 2), ("finetune", 3)]


def test_ctrl_c_on_the_command_line_says_how_to_continue(digits_dir, tmp_path):
    """A real SIGINT once an epoch is saved: exit 130 and one line naming last.pt and --resume."""
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "edgetl.cli", "train", "--data", str(digits_dir), "--out", str(out),
                             "--backbone", BACKBONE, "--no-pretrained", "--image-size", "32", "--mode", "finetune",
                             "--unfreeze", "all", "--head-epochs", "1", "--epochs", "500", "--patience", "500",
                             "--no-transfer-check", "--augment", "off"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    err = signal_when(proc, lambda: (out / "train" / "last.pt").exists(), signal.SIGINT, "it saved an epoch")
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == (f"interrupted: {out / 'train' / 'last.pt'} holds the last finished "
                                            "epoch: the same command with --resume continues from it")
    assert "Traceback" not in err and (out / "train" / "last.pt").is_file()


def test_resume_with_nothing_to_resume_is_one_line(digits_dir, tmp_path):
    out = tmp_path / "run"
    result = _train_cli("--data", str(digits_dir), "--out", str(out), "--resume")
    assert result.exit_code == 2, result.output
    assert result.output.strip() == (f"error: --resume: nothing to resume in {out} (no train/last.pt: the run "
                                     "finished, or it never completed an epoch); train without --resume")
    assert not out.exists()


def test_resume_refuses_other_data_backbone_or_hyper_parameters_and_says_which(digits_dir, tmp_path):
    out = tmp_path / "run"
    last = _interrupted(digits_dir, out, "head epoch 2", _tiny(**RESUMABLE))
    kept = {p.name: p.read_bytes() for p in (out / "train").iterdir()} | {"manifest": (out / "manifest.json").read_bytes()}
    other_data = tmp_path / "fewer"
    shutil.copytree(digits_dir, other_data)
    next((other_data / "0").iterdir()).unlink()
    args = [f"--{k.replace('_', '-')}={v}" for k, v in RESUMABLE.items()]
    for extra, problem in [
        (["--epochs", "4"], "--epochs 4 (the interrupted run: 3)"),
        (["--amp", "bf16"], "--amp bf16 (the interrupted run: auto)"),
        (["--data", str(other_data)], "the data differ (other images, another split or --val)"),
        (["--backbone", "timm:test_resnet"], "backbone timm:test_resnet (the interrupted run: timm:test_efficientnet)"),
    ]:
        result = _train_cli("--data", str(digits_dir), "--out", str(out), *args, *extra, "--resume")
        assert result.exit_code == 2, result.output
        assert result.output.strip() == (f"error: --resume: {out} was interrupted training something else: {problem}; "
                                         "train without --resume to start over")
    assert kept == {p.name: p.read_bytes() for p in (out / "train").iterdir()} | \
        {"manifest": (out / "manifest.json").read_bytes()}
    assert last.is_file()


def test_without_resume_an_interrupted_run_starts_over(digits_dir, tmp_path):
    out = tmp_path / "run"
    _interrupted(digits_dir, out, "head epoch 2", _tiny(epochs=3))
    section = train(digits_dir, _tiny(epochs=3), out=out, backbone=BACKBONE)
    assert section["execution"]["resumed_from"] is None
    assert [r["epoch"] for r in _history(out)] == [1, 2, 3]
    assert not (out / "train" / "last.pt").exists()


def test_a_corrupt_resumable_state_is_one_line(digits_dir, tmp_path):
    out = tmp_path / "run"
    last = _interrupted(digits_dir, out, "head epoch 1", _tiny(epochs=3))
    last.write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match=r"--resume: .*last\.pt is not a resumable state"):
        train(digits_dir, _tiny(epochs=3), out=out, backbone=BACKBONE, resume=True)



# -- a hostile train/last.pt (a run folder someone else prepared) ------------------------------------------
def _first_float(state: dict) -> str:
    return next(k for k, v in state.items() if v.is_floating_point() and v.dim() > 0)


def _wrong_shape(saved):
    model = saved["phases"]["finetune"]["model"]
    model[_first_float(model)] = torch.zeros(3)


def _nan_weights(saved):
    model = saved["phases"]["finetune"]["model"]
    model[_first_float(model)] = model[_first_float(model)] * float("nan")


def _missing_weight(saved):
    model = saved["phases"]["finetune"]["model"]
    del model[_first_float(model)]


def _nan_best_head(saved):  # the finished head phase's weights are what fine-tuning starts from
    best = saved["phases"]["head"]["best_state"]
    best[_first_float(best)] = torch.full_like(best[_first_float(best)], float("inf"))


def _optimizer_moments_of_another_shape(saved):
    moments = saved["phases"]["finetune"]["optimizer"]["state"]
    first = next(iter(moments))
    moments[first]["exp_avg"] = torch.zeros(2, 2)


TAMPERED = {
    "fingerprint without hparams": lambda s: s["fingerprint"].pop("hparams"),
    "fingerprint not a dict": lambda s: s.update(fingerprint=["timm:test_efficientnet"]),
    "phases a list": lambda s: s.update(phases=[1, 2]),
    "no phases": lambda s: s.update(phases={}),
    "phase without epoch": lambda s: s["phases"]["finetune"].pop("epoch"),
    "epoch a string": lambda s: s["phases"]["finetune"].update(epoch="one"),
    "epoch past the end": lambda s: s["phases"]["finetune"].update(epoch=99),
    "history not rows": lambda s: s["phases"]["finetune"].update(history="x"),
    "weights of another shape": _wrong_shape,
    "a weight missing": _missing_weight,
    "NaN weights": _nan_weights,
    "inf in the head's best weights": _nan_best_head,
    "optimizer moments of another shape": _optimizer_moments_of_another_shape,
    "rng state garbage": lambda s: s["phases"]["finetune"]["rng"].update(torch=torch.zeros(3)),
}


@pytest.fixture(scope="module")
def interrupted_finetune(digits_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("interrupted") / "run"
    _interrupted(digits_dir, out, "finetune epoch 1", _tiny(**RESUMABLE))
    return out


@pytest.mark.parametrize("case", TAMPERED)
def test_a_tampered_resumable_state_is_one_line_and_keeps_the_run(digits_dir, interrupted_finetune, tmp_path, case):
    out = tmp_path / "run"
    shutil.copytree(interrupted_finetune, out)
    last = out / "train" / "last.pt"
    saved = torch.load(last, weights_only=True)
    TAMPERED[case](saved)
    torch.save(saved, last)
    kept = {p.name: p.read_bytes() for p in (out / "train").iterdir()} | {"manifest": (out / "manifest.json").read_bytes()}
    args = [f"--{k.replace('_', '-')}={v}" for k, v in RESUMABLE.items()]
    result = _train_cli("--data", str(digits_dir), "--out", str(out), *args, "--resume")
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and result.output.count("error:") == 1, result.output
    line = result.output.strip().splitlines()[-1]  # after the bars of the phases the state did not need
    assert line.startswith(f"error: --resume: {last} is not a resumable state of this run (") and \
        line.endswith("); train without --resume to start over"), line
    assert kept == {p.name: p.read_bytes() for p in (out / "train").iterdir()} | \
        {"manifest": (out / "manifest.json").read_bytes()}


def test_a_resumable_state_that_links_elsewhere_is_refused(digits_dir, interrupted_finetune, tmp_path):
    """The run writes last.pt itself, as a file: a link names someone else's file."""
    out = tmp_path / "run"
    shutil.copytree(interrupted_finetune, out)
    last = out / "train" / "last.pt"
    elsewhere = tmp_path / "elsewhere.pt"
    last.rename(elsewhere)
    last.symlink_to(elsewhere)
    args = [f"--{k.replace('_', '-')}={v}" for k, v in RESUMABLE.items()]
    result = _train_cli("--data", str(digits_dir), "--out", str(out), *args, "--resume")
    assert result.exit_code == 2, result.output
    assert result.output.strip() == (f"error: --resume: {last} is a link, not the run's own state; train without "
                                     "--resume to start over")
    assert last.is_symlink() and elsewhere.is_file()
