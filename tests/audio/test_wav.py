"""WAV reading on the device side: formats, rates, channels, windows, and every bad file as one line."""

from __future__ import annotations

import os
import struct
import wave

import numpy as np
import pytest

from edgetl.audio.wav import MAX_BYTES, fit_window, read_clip, read_wav, resample, write_wav
from edgetl.errors import DataError

RATE = 16_000


def _pcm(path, audio: np.ndarray, rate: int, width: int, channels: int = 1) -> None:
    """``audio`` (frames, channels) in [-1, 1] as a PCM WAV of ``width`` bytes per sample."""
    if width == 1:
        data = np.round(audio * 127 + 128).astype(np.uint8).tobytes()
    elif width == 3:
        ints = np.round(audio * (2**23 - 1)).astype("<i4").reshape(-1)
        data = b"".join(int(v).to_bytes(4, "little", signed=True)[:3] for v in ints)
    else:
        data = np.round(audio * (2 ** (8 * width - 1) - 1)).astype(f"<i{width}").tobytes()
    with wave.open(str(path), "wb") as out:
        out.setnchannels(channels)
        out.setsampwidth(width)
        out.setframerate(rate)
        out.writeframes(data)


def _float_wav(path, audio: np.ndarray, rate: int) -> None:
    """A mono IEEE-float WAV (format tag 3), which the ``wave`` module cannot write."""
    data = audio.astype("<f4").tobytes()
    fmt = struct.pack("<HHIIHH", 3, 1, rate, rate * 4, 4, 32)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)


def _tone(freq: float, rate: int, seconds: float = 0.5, level: float = 0.5) -> np.ndarray:
    return (level * np.sin(2 * np.pi * freq * np.arange(int(rate * seconds)) / rate)).astype(np.float32)


@pytest.mark.parametrize("width", [1, 2, 3, 4])
def test_pcm_widths_read_back(tmp_path, width):
    tone = _tone(440, RATE)
    _pcm(tmp_path / "a.wav", tone[:, None], RATE, width)
    audio, rate = read_wav(tmp_path / "a.wav")
    assert rate == RATE and audio.dtype == np.float32
    assert np.abs(audio - tone).max() < (0.02 if width == 1 else 1e-4)


def test_float_wav_reads_back(tmp_path):
    tone = _tone(440, RATE)
    _float_wav(tmp_path / "f.wav", tone, RATE)
    audio, _ = read_wav(tmp_path / "f.wav")
    np.testing.assert_array_equal(audio, tone)


def test_stereo_is_mixed_down(tmp_path):
    left, right = _tone(440, RATE), _tone(660, RATE, level=0.2)
    _pcm(tmp_path / "s.wav", np.stack([left, right], 1), RATE, 2, channels=2)
    audio, _ = read_wav(tmp_path / "s.wav")
    assert np.abs(audio - (left + right) / 2).max() < 1e-4


@pytest.mark.parametrize("rate", [8_000, 44_100])
def test_other_rates_are_resampled_keeping_the_pitch(tmp_path, rate):
    _pcm(tmp_path / "r.wav", _tone(1000, rate, seconds=1.0)[:, None], rate, 2)
    clip = read_clip(tmp_path / "r.wav", RATE, RATE)
    spectrum = np.abs(np.fft.rfft(clip))
    assert abs(int(np.argmax(spectrum)) - 1000) <= 2  # 1 Hz bins over one second


def test_downsampling_filters_what_16k_cannot_hold():
    """A 10 kHz tone at 44.1 kHz is above the 8 kHz Nyquist limit: it must not fold into the band."""
    folded = resample(_tone(10_000, 44_100, seconds=1.0), 44_100, RATE)
    kept = resample(_tone(1_000, 44_100, seconds=1.0), 44_100, RATE)
    assert np.sqrt(np.mean(folded**2)) < 0.1 * np.sqrt(np.mean(kept**2))


def test_short_clips_are_centred_and_long_ones_cut_to_the_loudest_window(tmp_path):
    short = fit_window(np.ones(4000, np.float32), RATE)
    assert short.shape == (RATE,) and short[:6000].sum() == 0 and short[6000:10000].sum() == 4000
    long = np.zeros(5 * RATE, np.float32)
    long[3 * RATE:3 * RATE + 8000] = 0.5  # the word, late in a long recording
    assert fit_window(long, RATE).sum() == pytest.approx(4000)


@pytest.mark.parametrize("content, message", [
    (b"", "not a readable WAV file (no RIFF/WAVE header)"),
    (b"RIFF\x24\x00\x00\x00WAVEjunk", "not a readable WAV file (no fmt chunk)"),
    (b"hello, this is text and not audio at all" * 3, "not a readable WAV file (no RIFF/WAVE header)"),
])
def test_corrupt_files_are_one_line(tmp_path, content, message):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(content)
    with pytest.raises(DataError) as err:
        read_clip(bad, RATE, RATE)
    assert str(err.value) == f"{bad}: {message}"


def test_a_wav_without_samples_is_refused(tmp_path):
    _pcm(tmp_path / "empty.wav", np.zeros((0, 1), np.float32), RATE, 2)
    with pytest.raises(DataError, match=r"empty\.wav: the WAV file holds no samples$"):
        read_wav(tmp_path / "empty.wav")


def test_a_huge_file_is_refused_before_it_is_read(tmp_path):
    huge = tmp_path / "huge.wav"
    with huge.open("wb") as fh:
        fh.truncate(MAX_BYTES + 1)  # sparse: nothing is written
    with pytest.raises(DataError, match=r"huge\.wav: 64 MiB is too large for a clip \(at most 64 MiB\)$"):
        read_wav(huge)


def test_write_then_read_is_the_same_clip(tmp_path):
    tone = _tone(300, RATE)
    write_wav(tmp_path / "w.wav", tone, RATE)
    audio, rate = read_wav(tmp_path / "w.wav")
    assert rate == RATE and np.abs(audio - tone).max() < 1e-4


def test_a_fifo_named_like_a_clip_is_refused_without_opening_it(tmp_path):
    fifo = tmp_path / "clip.wav"
    os.mkfifo(fifo)  # opening it would block: the test would hang, not fail, without the check
    with pytest.raises(DataError, match=r"clip\.wav: not a regular file \(a FIFO, socket or device\)"):
        read_wav(fifo)


def test_float64_samples_past_float32_are_refused_in_one_line(tmp_path, recwarn):
    data = np.full(1600, 1e300, "<f8").tobytes()
    fmt = struct.pack("<HHIIHH", 3, 1, RATE, RATE * 8, 8, 64)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data
    (tmp_path / "big.wav").write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    with pytest.raises(DataError, match=r"big\.wav: the WAV file holds NaN or infinite samples$"):
        read_wav(tmp_path / "big.wav")
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]  # no stray "overflow" line
