"""WAV files -> fixed-length float32 mono clips, with the standard library's ``wave`` and numpy only
(the device side: no torch, no soundfile).

Read: PCM 8 (unsigned), 16, 24 and 32-bit, and IEEE float 32/64 (``WAVE_FORMAT_IEEE_FLOAT`` and the
``WAVE_FORMAT_EXTENSIBLE`` variants, which ``wave`` refuses, are parsed here from the RIFF chunks).
Channels are averaged (stereo mixed down); another sample rate is resampled (``resample``); the clip
is then centred in the window: cut around its loudest window, or padded with zeros on both sides.
Anything unreadable is one ``DataError`` line naming the file.
"""

from __future__ import annotations

import stat
import struct
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edgetl.errors import DataError

SUFFIXES = (".wav",)
MAX_BYTES = 64 * 1024 * 1024  # a keyword clip is kilobytes; refuse a file that would fill the memory
MAX_SECONDS = 600
_PCM, _FLOAT, _EXTENSIBLE = 1, 3, 0xFFFE


def read_clip(path: str | Path, sample_rate: int, samples: int) -> np.ndarray:
    """One file -> float32 (samples,) in [-1, 1] at ``sample_rate``, centred in the window."""
    audio, rate = read_wav(path)
    if rate != sample_rate:
        audio = resample(audio, rate, sample_rate)
    return fit_window(audio, samples)


def read_clips(paths: Sequence[str | Path], sample_rate: int, samples: int) -> np.ndarray:
    """Many files -> float32 (N, samples)."""
    out = np.zeros((len(paths), samples), np.float32)
    for i, path in enumerate(paths):
        out[i] = read_clip(path, sample_rate, samples)
    return out


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """float32 mono samples in [-1, 1] and the file's sample rate."""
    path = Path(path)
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):  # a FIFO reports 0 bytes and then blocks the read forever
            raise DataError(f"{path}: not a regular file (a FIFO, socket or device): skipped without reading it")
        size = info.st_size
        if size > MAX_BYTES:
            raise DataError(f"{path}: {size / 2**20:.0f} MiB is too large for a clip (at most {MAX_BYTES // 2**20} MiB)")
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read the WAV file ({exc.strerror or exc})") from None
    try:
        fmt, rate, channels, bits, frames = _parse(data)
    except (ValueError, struct.error) as exc:
        raise DataError(f"{path}: not a readable WAV file ({exc})") from None
    if not frames:
        raise DataError(f"{path}: the WAV file holds no samples")
    if len(frames) // (channels * bits // 8) > MAX_SECONDS * rate:
        raise DataError(f"{path}: longer than {MAX_SECONDS} s; cut it into clips")
    audio = _decode(frames, fmt, bits, channels)
    if not np.isfinite(audio).all():
        raise DataError(f"{path}: the WAV file holds NaN or infinite samples")
    return audio, rate


def _parse(data: bytes) -> tuple[int, int, int, int, bytes]:
    """RIFF chunks -> (format tag, rate, channels, bits per sample, the data chunk's bytes)."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise ValueError("no RIFF/WAVE header")
    fmt = frames = None
    at = 12
    while at + 8 <= len(data):
        kind, size = data[at:at + 4], struct.unpack("<I", data[at + 4:at + 8])[0]
        body = data[at + 8:at + 8 + size]
        if kind == b"fmt ":
            fmt = body
        elif kind == b"data":
            frames = body
        at += 8 + size + (size & 1)  # chunks are word-aligned
    if fmt is None or len(fmt) < 16:
        raise ValueError("no fmt chunk")
    if frames is None:
        raise ValueError("no data chunk")
    tag, channels, rate, _, _, bits = struct.unpack("<HHIIHH", fmt[:16])
    if tag == _EXTENSIBLE and len(fmt) >= 26:
        tag = struct.unpack("<H", fmt[24:26])[0]  # the sub-format GUID's first two bytes
    if tag not in (_PCM, _FLOAT):
        raise ValueError(f"format tag {tag}: only PCM and IEEE float are read")
    if not 1 <= channels <= 32 or not 1 <= rate <= 384_000:
        raise ValueError(f"{channels} channels at {rate} Hz")
    if (tag, bits) not in {(_PCM, 8), (_PCM, 16), (_PCM, 24), (_PCM, 32), (_FLOAT, 32), (_FLOAT, 64)}:
        raise ValueError(f"{bits}-bit {'float' if tag == _FLOAT else 'PCM'} samples")
    width = channels * bits // 8
    return tag, rate, channels, bits, frames[: len(frames) // width * width]


def _decode(frames: bytes, fmt: int, bits: int, channels: int) -> np.ndarray:
    if fmt == _FLOAT:
        with np.errstate(over="ignore"):  # a float64 past float32's range becomes inf: refused by read_wav, no warning
            x = np.frombuffer(frames, "<f4" if bits == 32 else "<f8").astype(np.float32)
    elif bits == 8:
        x = (np.frombuffer(frames, np.uint8).astype(np.float32) - 128) / 128  # 8-bit WAV is unsigned
    elif bits == 24:
        b = np.frombuffer(frames, np.uint8).reshape(-1, 3).astype(np.int32)
        x = ((b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)) << 8 >> 8).astype(np.float32) / 2**23  # sign-extend
    else:
        x = np.frombuffer(frames, "<i2" if bits == 16 else "<i4").astype(np.float32) / 2 ** (bits - 1)
    return x.reshape(-1, channels).mean(axis=1, dtype=np.float32)


def resample(audio: np.ndarray, rate: int, target: int) -> np.ndarray:
    """Band-limited resampling by linear interpolation after a low-pass: a windowed-sinc FIR (Hann,
    63 taps) at 0.9 x the lower Nyquist frequency, so downsampling (44.1 kHz -> 16 kHz) does not fold
    energy above 8 kHz into the band. Numpy only; good to about -40 dB, plenty for log-mel features."""
    if rate == target or audio.size == 0:
        return audio.astype(np.float32)
    if target < rate:
        cutoff = 0.9 * target / rate  # as a fraction of the input's Nyquist
        taps = np.arange(63) - 31
        kernel = cutoff * np.sinc(cutoff * taps) * np.hanning(63)
        audio = np.convolve(audio, kernel / kernel.sum(), mode="same")
    n_out = max(1, round(audio.size * target / rate))
    positions = np.arange(n_out) * (rate / target)
    return np.interp(positions, np.arange(audio.size), audio).astype(np.float32)


def fit_window(audio: np.ndarray, samples: int) -> np.ndarray:
    """Pad (centred, zeros) a short clip; cut a long one to its loudest ``samples`` window (by energy
    in 10 ms steps), so a keyword said late in a long recording is kept."""
    if audio.size <= samples:
        out = np.zeros(samples, np.float32)
        start = (samples - audio.size) // 2
        out[start:start + audio.size] = audio
        return out
    energy = np.concatenate([[0.0], np.cumsum(audio.astype(np.float64) ** 2)])
    hop = max(1, samples // 100)
    starts = np.arange(0, audio.size - samples + 1, hop)
    best = int(starts[np.argmax(energy[starts + samples] - energy[starts])])
    return audio[best:best + samples].astype(np.float32)


def write_wav(path: str | Path, audio: np.ndarray, sample_rate: int) -> None:
    """float samples in [-1, 1] -> a 16-bit mono PCM WAV file (the demo data and the tests)."""
    import wave

    pcm = np.clip(np.round(np.asarray(audio, np.float64) * 32767), -32768, 32767).astype("<i2")
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(sample_rate)
        out.writeframes(pcm.tobytes())
