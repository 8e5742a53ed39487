"""The audio front end of voice cloning: reference audio in, 24 kHz mono and the speaker encoder's log-mel out.

* :func:`load_audio` reads WAV / FLAC / OGG through ``soundfile`` (libsndfile), down-mixes to mono (channel
  mean, as the reference wrapper does) and rejects what cannot be a usable voice reference.
* :func:`resample` is the reference's ``librosa.resample`` (default ``soxr_hq``) without librosa: ``soxr`` in
  its HQ mode, then librosa's length fix (``ceil(n * ratio)`` samples).
* :func:`log_mel` is the reference's ``mel_spectrogram`` (model.md 5.1) in numpy.

Runtime dependencies: numpy, soundfile, soxr.
"""

from __future__ import annotations

import math
import os
from typing import BinaryIO, Union

import numpy as np

SAMPLE_RATE = 24000          # the speaker encoder's (and the codec's) rate
MIN_SECONDS = 1.0            # shorter references are refused at load
MAX_SECONDS = 60.0           # longer ones too (a good reference is 3-30 s of clean speech)
SILENCE_PEAK = 1e-4          # a peak below this is silence

# model.md 5.1
N_FFT = 1024
HOP = 256
WIN = 1024
N_MELS = 128
FMIN = 0.0
FMAX = 12000.0

AudioSource = Union[str, "os.PathLike[str]", BinaryIO]


def _describe(src: AudioSource) -> str:
    if isinstance(src, (str, os.PathLike)):
        return repr(os.fspath(src))
    name = getattr(src, "name", None)
    return repr(name) if isinstance(name, str) else "the audio data"


def load_audio(src: AudioSource) -> tuple[np.ndarray, int]:
    """Read a reference recording (path or binary file object; WAV, FLAC, OGG/Vorbis or anything else
    libsndfile reads) as (float32 mono samples in [-1, 1], sample rate). Multi-channel audio is down-mixed by
    averaging the channels.

    Raises FileNotFoundError for a missing path and ValueError for something that is not audio, holds no
    samples, is shorter than 1 s, longer than 60 s, or silent."""
    import soundfile as sf

    what = _describe(src)
    if isinstance(src, (str, os.PathLike)) and not os.path.isfile(src):
        raise FileNotFoundError(f"reference audio {what} not found")
    try:
        with sf.SoundFile(src) as f:
            sr = _check_header(f, what)
            data = f.read(dtype="float32", always_2d=True)
    except _soundfile_errors(sf) as e:  # libsndfile's "Format not recognised" & co.
        raise ValueError(f"{what} is not a readable audio file (WAV, FLAC or OGG expected): {e}") from None
    if data.shape[0] == 0:
        raise ValueError(f"{what} holds no audio samples")
    wav = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]
    wav = np.ascontiguousarray(wav, dtype=np.float32)
    _check_signal(wav, what)
    return wav, sr


def check_reference(path: str | os.PathLike[str]) -> None:
    """What :func:`load_audio` checks before reading a sample (a readable file of 1-60 s), from the file's header
    alone: a two-hour recording is refused without being read. Raises FileNotFoundError or ValueError."""
    import soundfile as sf

    what = _describe(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"reference audio {what} not found")
    try:
        with sf.SoundFile(path) as f:
            _check_header(f, what)
    except _soundfile_errors(sf) as e:
        raise ValueError(f"{what} is not a readable audio file (WAV, FLAC or OGG expected): {e}") from None


def _check_header(f, what: str) -> int:
    """The sample rate of an open soundfile.SoundFile whose header promises 1-60 s of audio; else ValueError."""
    sr = int(f.samplerate)
    n = int(f.frames)
    if sr <= 0:
        raise ValueError(f"{what} declares an invalid sample rate ({sr} Hz)")
    if n <= 0:
        raise ValueError(f"{what} holds no audio samples")
    seconds = n / sr
    if seconds > MAX_SECONDS:
        raise ValueError(f"{what} is {seconds:.1f} s long; the limit is {MAX_SECONDS:.0f} s (a voice reference "
                         "should be 3-30 s of clean speech: trim it)")
    if seconds < MIN_SECONDS:
        raise ValueError(f"{what} is only {seconds:.2f} s long; a voice reference needs at least "
                         f"{MIN_SECONDS:.0f} s (3-30 s of clean speech works best)")
    return sr


def _soundfile_errors(sf) -> tuple[type[BaseException], ...]:
    return tuple(e for e in (getattr(sf, "SoundFileError", None), RuntimeError, TypeError) if e is not None)


def _check_signal(wav: np.ndarray, what: str) -> None:
    if not np.all(np.isfinite(wav)):
        raise ValueError(f"{what} holds NaN or infinite samples")
    peak = float(np.max(np.abs(wav))) if wav.size else 0.0
    if peak < SILENCE_PEAK:
        raise ValueError(f"{what} is silent (peak amplitude {peak:.1e}); record the reference voice again")


def resample(wav: np.ndarray, sr: int, target_sr: int = SAMPLE_RATE) -> np.ndarray:
    """float32 mono wav from sr to target_sr, as the reference's ``librosa.resample(res_type="soxr_hq")``:
    soxr HQ, then trimmed or zero-padded to ceil(n * target_sr / sr) samples. Returns wav itself (as float32)
    when the rates already agree."""
    wav = np.asarray(wav, dtype=np.float32)
    if wav.ndim != 1:
        raise ValueError(f"expected mono audio (1-D), got shape {wav.shape}")
    if sr <= 0 or target_sr <= 0:
        raise ValueError("sample rates must be positive")
    if sr == target_sr:
        return wav
    import soxr

    n_out = int(math.ceil(wav.shape[0] * (float(target_sr) / sr)))
    y = soxr.resample(wav, sr, target_sr, quality="HQ")
    if y.shape[0] > n_out:
        y = y[:n_out]
    elif y.shape[0] < n_out:
        y = np.pad(y, (0, n_out - y.shape[0]))
    return np.ascontiguousarray(y, dtype=np.float32)


# ---------------------------------------------------------------------------------------------------- mel

# Slaney's mel scale (librosa, htk=False): linear below 1 kHz (200/3 Hz per mel), logarithmic above.
_F_SP = 200.0 / 3
_MIN_LOG_HZ = 1000.0
_MIN_LOG_MEL = _MIN_LOG_HZ / _F_SP
_LOGSTEP = np.log(6.4) / 27.0


def _hz_to_mel(f: np.ndarray) -> np.ndarray:
    f = np.asarray(f, dtype=np.float64)
    mels = f / _F_SP
    log_t = f >= _MIN_LOG_HZ
    mels[log_t] = _MIN_LOG_MEL + np.log(f[log_t] / _MIN_LOG_HZ) / _LOGSTEP
    return mels


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    freqs = _F_SP * m
    log_t = m >= _MIN_LOG_MEL
    freqs[log_t] = _MIN_LOG_HZ * np.exp(_LOGSTEP * (m[log_t] - _MIN_LOG_MEL))
    return freqs


def mel_filterbank(sr: int = SAMPLE_RATE, n_fft: int = N_FFT, n_mels: int = N_MELS, fmin: float = FMIN,
                   fmax: float = FMAX) -> np.ndarray:
    """float32 [n_mels, 1 + n_fft // 2]: ``librosa.filters.mel(sr, n_fft, n_mels, fmin, fmax)`` (Slaney scale,
    Slaney area normalisation), computed the way librosa does it (float64 triangles rounded to float32, then
    scaled by 2 / (f[i+2] - f[i]))."""
    fftfreqs = np.fft.rfftfreq(n_fft, d=1.0 / sr)
    mel_f = _mel_to_hz(np.linspace(_hz_to_mel(np.array([fmin]))[0], _hz_to_mel(np.array([fmax]))[0], n_mels + 2))
    fdiff = np.diff(mel_f)
    ramps = np.subtract.outer(mel_f, fftfreqs)
    weights = np.zeros((n_mels, 1 + n_fft // 2), dtype=np.float32)
    for i in range(n_mels):
        lower = -ramps[i] / fdiff[i]
        upper = ramps[i + 2] / fdiff[i + 1]
        weights[i] = np.maximum(0, np.minimum(lower, upper))
    enorm = 2.0 / (mel_f[2:n_mels + 2] - mel_f[:n_mels])
    weights *= enorm[:, np.newaxis]
    return weights


_MEL_BASIS: np.ndarray | None = None


def _mel_basis() -> np.ndarray:
    global _MEL_BASIS
    if _MEL_BASIS is None:
        _MEL_BASIS = mel_filterbank()
    return _MEL_BASIS


_MEL_SETS: list[tuple[np.ndarray, np.ndarray]] | None = None


def _mel_sets() -> list[tuple[np.ndarray, np.ndarray]] | None:
    """The filterbank as two sets of mel bins, even and odd, whose triangles do not overlap within a set: per set
    one float64 weight per FFT bin (the set's only nonzero weight there, or 0) and the first nonzero FFT bin of each
    of its mel bins (ascending). None for a filterbank without that structure (not librosa's Slaney one)."""
    global _MEL_SETS
    if _MEL_SETS is None:
        fb = _mel_basis().astype(np.float64)
        rows = [np.flatnonzero(r) for r in fb]
        sets = []
        for members in (list(range(0, len(fb), 2)), list(range(1, len(fb), 2))):
            if any(rows[m].size == 0 for m in members) or any(
                    rows[a][-1] >= rows[b][0] for a, b in zip(members, members[1:])):
                sets = []
                break
            sets.append((fb[members].sum(axis=0), np.array([rows[m][0] for m in members])))
        _MEL_SETS = sets
    return _MEL_SETS or None


def log_mel(wav24k: np.ndarray) -> np.ndarray:
    """The speaker encoder's input (model.md 5.1) of float mono 24 kHz audio: float32 [frames, 128] with
    frames = len // 256. Reflect-pad by 384, periodic Hann 1024, hop 256, one-sided FFT magnitude
    sqrt(re² + im² + 1e-9), Slaney mel filterbank (0-12 kHz), log(max(mel, 1e-5)); no normalisation."""
    y = np.asarray(wav24k, dtype=np.float32)
    if y.ndim != 1:
        raise ValueError(f"expected mono audio (1-D), got shape {y.shape}")
    pad = (N_FFT - HOP) // 2
    if y.shape[0] <= pad:
        raise ValueError(f"audio too short for a mel spectrogram: {y.shape[0]} samples (need more than {pad})")
    if not np.all(np.isfinite(y)):
        raise ValueError("audio holds NaN or infinite samples")
    y = np.pad(y.astype(np.float64), (pad, pad), mode="reflect")
    n_frames = 1 + (y.shape[0] - N_FFT) // HOP
    window = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(WIN) / WIN)  # periodic Hann
    frames = np.lib.stride_tricks.sliding_window_view(y, N_FFT)[::HOP][:n_frames]
    spec = np.fft.rfft(frames * window, n=N_FFT, axis=1)  # [frames, 513]
    mag = spec.real * spec.real
    mag += spec.imag * spec.imag
    mag += 1e-9
    np.sqrt(mag, out=mag)
    # mag @ filterbank.T in plain numpy, as sums over each mel bin's band (in FFT-bin order): a float64 GEMM would go
    # to the BLAS, whose worker threads keep spinning after it and slow the speaker encoder's threads that run next
    fb = _mel_basis()
    mel = np.empty((mag.shape[0], fb.shape[0]))
    sets = _mel_sets()
    if sets:
        for k, (w, starts) in enumerate(sets):
            mel[:, k::2] = np.add.reduceat(mag * w, starts, axis=1)
    else:
        for m, row in enumerate(fb.astype(np.float64)):
            mel[:, m] = (mag * row).sum(axis=1)
    return np.log(np.maximum(mel, 1e-5)).astype(np.float32)
