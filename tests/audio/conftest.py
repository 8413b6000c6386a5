"""Real spoken words for the audio tests: espeak-ng (a Debian package, installed in CI by
scripts/ensure-test-tools.sh) says 2 keywords, with background noise and other words, once per session."""

from __future__ import annotations

import os
import shutil

import pytest


@pytest.fixture(scope="session")
def kws_dir(tmp_path_factory):
    """DEST/train/<word>/*.wav and DEST/val/<word>/*.wav: yes, no and _background_, 1 clip per speaker
    (32 training speakers, 10 held out)."""
    if shutil.which("espeak-ng") is None:
        if os.environ.get("CI"):
            pytest.fail("espeak-ng is not installed and CI is set: run `bash scripts/ensure-test-tools.sh` first")
        pytest.skip("espeak-ng is not installed (scripts/ensure-test-tools.sh installs it: apt-get install espeak-ng)")
    from edgetl.data.demo_audio import write_keywords

    return write_keywords(tmp_path_factory.mktemp("audio") / "kws", words=2, per_speaker=1)


@pytest.fixture(scope="session")
def clips(kws_dir):
    """A few real clips (float32, 16 kHz, 1 s): one per class and split."""
    import numpy as np

    from edgetl.audio.wav import read_clip

    paths = sorted(kws_dir.glob("*/*/*.wav"))[::20][:6]
    return np.stack([read_clip(p, 16_000, 16_000) for p in paths])


@pytest.fixture(scope="session")
def kws_run(tmp_path_factory, kws_dir):
    """A keyword spotter trained for 3 epochs (logmel-cnn, CPU). Read-only for tests."""
    from edgetl.adapt.options import TrainOptions
    from edgetl.audio.workstation import train
    from edgetl.rundir import RunDir

    out = tmp_path_factory.mktemp("runs") / "kws"
    train(kws_dir, TrainOptions(mode="finetune", epochs=3, device="cpu", seed=0), out=out, backbone="logmel-cnn")
    return RunDir.open(out)
