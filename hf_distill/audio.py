"""Audio for the `hf-distill` command: WAV files read with the standard library, resampled, padded into batches.

`datasets` 5.x decodes its `Audio` feature with `torchcodec`, which is often not installed. A column of WAV file paths,
or an `Audio` column whose files (or bytes) are WAV, is read here instead with `wave` and numpy, mixed down to mono and
resampled to the feature extractor's sampling rate (`resample`: band-limited, through the FFT). Other formats (FLAC,
MP3, ...) go through `datasets`' own decoder, with an error naming the missing package when it cannot run.
"""

from __future__ import annotations

import io
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["AudioCollator", "decode_audio_column", "read_wav", "resample"]

_SAMPLE_TYPES = {1: np.uint8, 2: np.int16, 4: np.int32}  # 8-bit WAV is unsigned, the others signed


def read_wav(source: str | Path | bytes) -> tuple[np.ndarray, int]:
    """`(samples, sampling_rate)` of a PCM WAV file (path or bytes): float32 mono in `[-1, 1]`, channels averaged.

    Raises:
        `ValueError` for a file that is not 8/16/24/32-bit integer PCM WAV (e.g. float WAV, FLAC, MP3).
    """
    name = "the WAV bytes" if isinstance(source, bytes) else str(source)
    try:
        with wave.open(io.BytesIO(source) if isinstance(source, bytes) else str(source), "rb") as file:
            channels, width, rate = file.getnchannels(), file.getsampwidth(), file.getframerate()
            raw = file.readframes(file.getnframes())
    except (wave.Error, EOFError) as error:
        raise ValueError(
            f"{name} is not a PCM WAV file that Python's `wave` module reads ({error}). Convert it to 16-bit PCM WAV "
            "(e.g. `ffmpeg -i in.flac -c:a pcm_s16le out.wav`), or install torchcodec so `datasets` can decode it."
        ) from error
    if width == 3:  # 24-bit: widen each little-endian sample to 32 bits
        triples = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3)
        raw = np.concatenate([np.zeros((len(triples), 1), np.uint8), triples], axis=1).tobytes()
        width = 4
    samples = np.frombuffer(raw, dtype=np.dtype(_SAMPLE_TYPES[width]).newbyteorder("<")).astype(np.float32)
    if width == 1:
        samples = (samples - 128.0) / 128.0
    else:
        samples = samples / float(2 ** (8 * width - 1))
    return samples.reshape(-1, channels).mean(axis=1), rate


def resample(samples: np.ndarray, orig_rate: int, target_rate: int) -> np.ndarray:
    """`samples` (1-D) resampled from `orig_rate` to `target_rate` Hz, band-limited, through the FFT.

    The spectrum is cut (or zero-padded) at the lower of the two Nyquist frequencies and transformed back to
    `round(len * target / orig)` samples, as `scipy.signal.resample` does: exact for band-limited periodic signals,
    with no aliasing when downsampling (the content above the new Nyquist frequency is removed).
    """
    if orig_rate <= 0 or target_rate <= 0:
        raise ValueError(f"sampling rates must be positive, got {orig_rate} and {target_rate}.")
    samples = np.asarray(samples, dtype=np.float64)
    if orig_rate == target_rate or samples.size == 0:
        return samples.astype(np.float32)
    n, m = samples.shape[-1], max(1, round(samples.shape[-1] * target_rate / orig_rate))
    spectrum = np.fft.rfft(samples)
    kept = np.zeros(m // 2 + 1, dtype=complex)
    bins = min(len(spectrum), len(kept))
    kept[:bins] = spectrum[:bins]
    if m < n and m % 2 == 0:  # the new Nyquist bin gathers +f and -f (irfft reads its real part): 2 Re X[f]
        kept[-1] *= 2.0
    if m > n and n % 2 == 0:  # the old Nyquist bin was one value for +f and -f: split it between them
        kept[n // 2] *= 0.5
    return (np.fft.irfft(kept, m) * (m / n)).astype(np.float32)


def _is_audio_feature(feature: Any) -> bool:
    from datasets import Audio

    return isinstance(feature, Audio)


def decode_audio_column(dataset, column: str, sampling_rate: int, base_dir: Path | None, split: str) -> list:
    """Every row's waveform (float32 mono at `sampling_rate`) from an `Audio` column or a column of WAV paths.

    Relative paths are read from the working directory, else from `base_dir` (the data file's folder). Every file
    is checked to exist before any is read.

    Raises:
        `ValueError` naming `--audio_column` when the column holds neither, a file is missing, or a file is not WAV
        and `torchcodec` (which `datasets` decodes other formats with) is not installed.
    """
    from datasets import Audio

    feature = dataset.features[column]
    if _is_audio_feature(feature):
        entries = dataset.cast_column(column, Audio(decode=False))[column]  # {"path", "bytes"}: no decoder needed
    elif getattr(feature, "dtype", None) in ("string", "large_string"):
        entries = [{"path": path, "bytes": None} for path in dataset[column]]
    else:
        raise ValueError(
            f"--audio_column={column!r} of the {split} data is {feature}, not audio: give a `datasets.Audio` column "
            "or a column of WAV file paths, and name it with --audio_column."
        )
    located = []
    for row, entry in enumerate(entries):
        if entry.get("bytes") is not None:
            located.append(entry["bytes"])
            continue
        path = Path(str(entry.get("path")))
        if not path.is_file() and base_dir is not None and (base_dir / path).is_file():
            path = base_dir / path
        if not path.is_file():
            raise ValueError(
                f"--audio_column={column!r}: row {row} of the {split} data names the file {str(entry.get('path'))!r}, "
                f"which does not exist (relative paths are read from the working directory or from {base_dir})."
            )
        located.append(path)
    return [_waveform(source, sampling_rate, dataset, column, row) for row, source in enumerate(located)]


def _waveform(source: bytes | Path, sampling_rate: int, dataset, column: str, row: int) -> np.ndarray:
    head = source[:4] if isinstance(source, bytes) else source.open("rb").read(4)
    if head == b"RIFF":
        samples, rate = read_wav(source)
        return resample(samples, rate, sampling_rate)
    try:  # not WAV: datasets' own decoder (torchcodec), at the extractor's rate
        from datasets import Audio

        decoded = dataset.select([row]).cast_column(column, Audio(sampling_rate=sampling_rate))[0][column]
    except ImportError as error:
        raise ValueError(
            f"--audio_column={column!r}: row {row} ({source if isinstance(source, Path) else 'bytes'}) is not a WAV "
            f"file, and decoding other formats needs torchcodec ({error}). Install it (`pip install torchcodec`, "
            "with ffmpeg), or convert the audio to 16-bit PCM WAV."
        ) from error
    samples = np.asarray(decoded["array"], dtype=np.float32)
    return samples.mean(axis=0) if samples.ndim > 1 else samples


@dataclass
class AudioCollator:
    """Pads a list of featurised examples into a batch with the feature extractor's `pad`; `label` becomes `labels`.

    Args:
        feature_extractor: the teacher's feature extractor (a `SequenceFeatureExtractor`).
        return_attention_mask (`bool`, *optional*): add the `attention_mask` over the padded samples, for models
            trained with one (wav2vec2 with layer norm, HuBERT-large); by default the extractor's own setting
            (`False` for wav2vec2-base, whose padding is zeros the model reads, and for Whisper, which has no mask).
    """

    feature_extractor: Any
    return_attention_mask: bool | None = None

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        with_mask = self.return_attention_mask
        if with_mask is None:
            with_mask = bool(getattr(self.feature_extractor, "return_attention_mask", False))
        labels = [f.get("labels", f.get("label")) for f in features]
        inputs = [{k: v for k, v in f.items() if k not in ("label", "labels")} for f in features]
        batch = self.feature_extractor.pad(inputs, return_attention_mask=with_mask, return_tensors="pt")
        batch = {k: v for k, v in batch.items() if k != "attention_mask" or with_mask}
        if labels[0] is not None:
            batch["labels"] = torch.tensor(labels, dtype=torch.long)
        return dict(batch)
