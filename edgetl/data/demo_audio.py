"""The keyword-spotting demo data: words spoken by ``espeak-ng`` (a Debian package, a formant
synthesiser: nothing is downloaded), written as an ordinary folder of 16 kHz mono WAVs per word, so
the demo takes the path a user's own recordings take::

    DEST/train/<word>/<speaker>-<n>.wav     DEST/val/<word>/<speaker>-<n>.wav

A *speaker* is an espeak-ng accent with a voice variant (``en-gb-scotland+f2``); the speakers of
``val/`` never occur in ``train/``, so validation measures new voices. Each clip gets a random speed,
pitch, gain and time position and background noise (white, pink or brown, 10-30 dB below the
speech). ``_background_`` holds what must not fire a keyword: noise alone, near-silence and other
words. Seeded: the same arguments write the same files. ``python -m edgetl.data.demo_audio DEST``.
"""

from __future__ import annotations

import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from edgetl._io import atomic_dir
from edgetl.audio.wav import fit_window, read_wav, resample, write_wav
from edgetl.errors import MissingDependencyError

WORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
OTHER_WORDS = ("bed", "cat", "tree", "house", "seven", "wow", "happy", "bird", "dog", "learn", "follow", "zero")
BACKGROUND = "_background_"
ACCENTS = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029")
VARIANTS = ("m1", "m3", "m7", "f1", "f2", "f4")
SAMPLE_RATE, SECONDS = 16_000, 1.0
INSTALL = "sudo apt-get install -y espeak-ng"


def espeak() -> str:
    path = shutil.which("espeak-ng")
    if path is None:
        raise MissingDependencyError(f"the audio demo data is spoken by espeak-ng, which is not installed: {INSTALL}")
    return path


def speakers(seed: int = 0, val_share: float = 0.25) -> tuple[list[str], list[str]]:
    """(train, val) speakers: every accent x variant, a seeded quarter held out for validation."""
    every = [f"{a}+{v}" for a in ACCENTS for v in VARIANTS]
    random.Random(seed).shuffle(every)
    n_val = max(1, round(len(every) * val_share))
    return sorted(every[n_val:]), sorted(every[:n_val])


def say(word: str, speaker: str, speed: int, pitch: int, workdir: Path) -> np.ndarray:
    """espeak-ng's 22.05 kHz speech of ``word`` -> float32 at 16 kHz."""
    out = workdir / "say.wav"
    subprocess.run([espeak(), "-v", speaker, "-s", str(speed), "-p", str(pitch), "-w", str(out), word],
                   check=True, capture_output=True, timeout=30)
    audio, rate = read_wav(out)
    return resample(audio, rate, SAMPLE_RATE)


def noise(rng: np.random.Generator, n: int) -> np.ndarray:
    """Unit-RMS white, pink (1/f) or brown (1/f^2) noise."""
    colour = rng.integers(3)
    spectrum = np.fft.rfft(rng.standard_normal(n))
    f = np.maximum(np.arange(spectrum.size), 1)
    spectrum = spectrum / (f ** (colour / 2))
    x = np.fft.irfft(spectrum, n)
    return (x / (np.sqrt(np.mean(x**2)) + 1e-12)).astype(np.float32)


def place(rng: np.random.Generator, speech: np.ndarray, samples: int) -> np.ndarray:
    """The speech at a random position of the window (kept whole where it fits)."""
    speech = speech[: samples] if speech.size > samples else speech
    out = np.zeros(samples, np.float32)
    start = int(rng.integers(0, samples - speech.size + 1))
    out[start:start + speech.size] = speech
    return out


def mix(rng: np.random.Generator, clip: np.ndarray, snr_db: float) -> np.ndarray:
    rms = np.sqrt(np.mean(clip**2)) or 0.05
    noisy = clip + noise(rng, clip.size) * rms / 10 ** (snr_db / 20)
    return (noisy / (np.abs(noisy).max() + 1e-9) * rng.uniform(0.2, 0.9)).astype(np.float32)


def spoken(rng, word: str, speaker: str, samples: int, workdir: Path) -> np.ndarray:
    speech = say(word, speaker, int(rng.integers(120, 200)), int(rng.integers(30, 80)), workdir)
    speech = fit_window(speech, samples) if speech.size > samples else speech
    nonzero = np.flatnonzero(np.abs(speech) > 1e-3)  # espeak pads with silence: keep the word itself
    if nonzero.size:
        speech = speech[nonzero[0]:nonzero[-1] + 1]
    return mix(rng, place(rng, speech, samples), rng.uniform(10, 30))


def background(rng, speaker: str, samples: int, workdir: Path) -> np.ndarray:
    kind = rng.integers(3)
    if kind == 0:  # another word: a keyword spotter must not answer it
        return spoken(rng, OTHER_WORDS[int(rng.integers(len(OTHER_WORDS)))], speaker, samples, workdir)
    level = rng.uniform(0.05, 0.5) if kind == 1 else rng.uniform(0.001, 0.01)  # noise, or near-silence
    return (noise(rng, samples) * level / 4).astype(np.float32)


def write_keywords(dest: str | Path, *, words: int = len(WORDS), per_speaker: int = 2, seed: int = 0) -> Path:
    """Write the data set (``words`` keywords and ``_background_``; ``per_speaker`` clips of each word
    per speaker) into ``dest`` atomically; an existing complete copy with these arguments is kept."""
    dest = Path(dest)
    marker = dest / ".complete"
    wanted = f"{words}:{per_speaker}:{seed}"
    if marker.is_file() and marker.read_text() == wanted:
        return dest
    espeak()
    samples = int(SAMPLE_RATE * SECONDS)
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory() as work, atomic_dir(dest) as tmp:
        for part, people in zip(("train", "val"), speakers(seed), strict=True):
            for word in (*WORDS[:words], BACKGROUND):
                folder = tmp / part / word
                folder.mkdir(parents=True)
                for speaker in people:
                    for n in range(per_speaker):
                        clip = (background(rng, speaker, samples, Path(work)) if word == BACKGROUND
                                else spoken(rng, word, speaker, samples, Path(work)))
                        write_wav(folder / f"{speaker.replace('+', '_')}-{n}.wav", clip, SAMPLE_RATE)
        (tmp / ".complete").write_text(wanted)
    return dest


if __name__ == "__main__":  # `python -m edgetl.data.demo_audio DEST [PER_SPEAKER]` (used by `make demo-audio`)
    if len(sys.argv) not in (2, 3):
        sys.exit("usage: python -m edgetl.data.demo_audio DEST [PER_SPEAKER]")
    try:
        out = write_keywords(sys.argv[1], per_speaker=int(sys.argv[2]) if len(sys.argv) == 3 else 2)
    except MissingDependencyError as exc:
        sys.exit(f"error: {exc}")
    print(out)
