"""Training on CUDA: autocast (bf16, fp16) with channels-last, --device auto, resuming on another
device, and DDP over two GPUs with NCCL. Marked ``gpu``: skipped on a machine without one."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from safetensors.torch import load_file  # noqa: E402

from edgetl.adapt import device  # noqa: E402
from edgetl.adapt.loop import predict  # noqa: E402
from edgetl.adapt.options import TrainOptions  # noqa: E402
from edgetl.adapt.train import train  # noqa: E402
from edgetl.models.build import create_model  # noqa: E402
from edgetl.models.registry import resolve  # noqa: E402
from edgetl.rundir import RunDir  # noqa: E402

pytestmark = pytest.mark.gpu

BACKBONE = "timm:test_efficientnet"


def _tiny(**options) -> TrainOptions:
    return TrainOptions(**{"pretrained": False, "image_size": 32, "seed": 0, "mode": "finetune", "unfreeze": "all",
                           "epochs": 2, "head_epochs": 3, **options})


def _val_inputs(out) -> np.ndarray:
    """The run's own validation images, preprocessed as training saw them."""
    from edgetl.data import arrays

    run = RunDir.open(out)
    pixels, _ = arrays.split_set(run, "val")
    return arrays.normalize(pixels, arrays.spec_of(run))


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_cuda_autocast_channels_last_gives_a_cpu_checkpoint_that_predicts_as_on_the_gpu(digits_dir, tmp_path, amp):
    out = tmp_path / "run"
    section = train(digits_dir, _tiny(device="cuda", amp=amp, channels_last=True), out=out, backbone=BACKBONE)
    execution = section["execution"]
    assert execution["device"].startswith("cuda:0 (") and execution["amp"] == amp and execution["channels_last"]
    assert execution["workers"] > 0 and any(r["phase"] == "finetune" for r in json.loads(
        (out / "train/history.json").read_text()))

    state = load_file(out / "train/model.safetensors")
    assert {v.device.type for v in state.values()} == {"cpu"}
    assert {v.dtype for v in state.values() if v.is_floating_point()} == {torch.float32}
    model = create_model(resolve(BACKBONE), 3, pretrained=False)
    model.load_state_dict(state)
    x = _val_inputs(out)
    on_cpu = predict(model, x)
    on_gpu = predict(device.resolve("cuda", amp, True).place(model), x, execution=device.resolve("cuda", amp, True))
    scale = np.abs(on_cpu).max()
    assert np.abs(on_cpu - on_gpu).max() <= 0.05 * scale + 1e-3, (amp, np.abs(on_cpu - on_gpu).max(), scale)
    assert (on_cpu.argmax(1) == on_gpu.argmax(1)).mean() >= 0.9


def test_auto_picks_cuda_with_autocast_channels_last_and_workers(digits_dir, tmp_path):
    chosen = device.resolve()
    assert chosen.device == "cuda:0" and chosen.channels_last and chosen.workers > 0
    assert chosen.amp == ("bf16" if torch.cuda.is_bf16_supported() else "fp16")
    section = train(digits_dir, _tiny(), out=tmp_path / "run", backbone=BACKBONE)
    assert section["execution"]["device"] == chosen.label and section["execution"]["amp"] == chosen.amp


def test_a_run_interrupted_on_the_gpu_resumes_on_the_cpu(digits_dir, tmp_path):
    """The device is an execution setting: last.pt holds CPU tensors and continues anywhere."""

    class StopAfterFirstFinetuneEpoch:
        def step(self, stage, message):
            if message.startswith("finetune epoch 1:"):
                raise KeyboardInterrupt

    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train(digits_dir, _tiny(device="cuda", amp="bf16", epochs=3), out=out, backbone=BACKBONE,
              reporter=StopAfterFirstFinetuneEpoch())
    section = train(digits_dir, _tiny(device="cpu", amp="bf16", epochs=3), out=out, backbone=BACKBONE, resume=True)
    assert section["execution"]["device"] == "cpu"
    assert section["execution"]["resumed_from"] == {"phase": "finetune", "after_epoch": 1}
    history = json.loads((out / "train/history.json").read_text())
    assert [r["epoch"] for r in history if r["phase"] == "finetune"] == [1, 2, 3]


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_torchrun_on_two_gpus_uses_one_gpu_per_rank(digits_dir, tmp_path):
    out = tmp_path / "ddp"
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "edgetl.cli",
         "train", "--data", str(digits_dir), "--backbone", BACKBONE, "--no-pretrained", "--image-size", "32",
         "--mode", "finetune", "--unfreeze", "all", "--epochs", "2", "--head-epochs", "3", "--out", str(out)],
        capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    section = RunDir.open(out, need="train").manifest["train"]
    assert section["world_size"] == 2 and section["execution"]["device"].startswith("cuda:0 (")
    assert any(r["phase"] == "finetune" for r in json.loads((out / "train/history.json").read_text()))
