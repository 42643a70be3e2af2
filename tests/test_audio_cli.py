"""`hf-distill` on audio: spoken words synthesised offline with espeak-ng (skipped where it is not installed), tones
written with the standard library (always), and the bad input the command refuses before any training."""

import json
import shutil
import subprocess
import wave
from pathlib import Path

import numpy as np
import pytest
import torch
from test_audio_classification import speech_extractor, wav2vec2, whisper_extractor, write_wav
from test_cli import to_argv
from test_cli_tasks import refused, run_ok, write_jsonl
from transformers import AutoFeatureExtractor, AutoModelForAudioClassification

from hf_distill import load_training_history

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: tiny models on one thread

WORDS = ["yes", "no", "up", "down"]
FRAMES_20MS = {"conv_dim": (16, 16, 16), "conv_kernel": (10, 8, 8), "conv_stride": (5, 8, 8)}  # 320 samples a frame


def options(teacher: str, train: str, dev: str, out: Path, **overrides) -> list[str]:
    settings = {
        "teacher_model_name_or_path": teacher, "student_num_layers": 2, "train_file": train, "validation_file": dev,
        "output_dir": str(out), "max_steps": 4, "per_device_train_batch_size": 8, "per_device_eval_batch_size": 8,
        "logging_steps": 2, "eval_strategy": "steps", "eval_steps": 4, "save_strategy": "steps", "save_steps": 4,
        "latency_samples": 1, "use_cpu": True, "report_to": "none", "disable_tqdm": True, "seed": 0,
        "learning_rate": 1e-3,
    } | overrides  # fmt: skip
    return to_argv({k: v for k, v in settings.items() if v is not None})


def fit(model, batch: dict, labels: torch.Tensor, steps: int) -> None:
    """A few full-batch Adam steps, so that the teacher's predictions depend on the audio."""
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    model.train()
    for _ in range(steps):
        optimizer.zero_grad()
        model(**batch, labels=labels).loss.backward()
        optimizer.step()
    model.eval()


def save_teacher(rows: list[dict], folder: Path, labels: dict[int, str], steps: int) -> str:
    """A tiny wav2vec2 teacher (wav2vec2's 20 ms frames), trained on `rows` (WAV paths and labels, read at 16 kHz),
    saved with its feature extractor."""
    from hf_distill.audio import read_wav, resample

    label2id = {v: k for k, v in labels.items()}
    extractor, teacher = speech_extractor(), wav2vec2(id2label=labels, label2id=label2id, **FRAMES_20MS)
    waves = [resample(*read_wav(row["audio"]), 16000) for row in rows]
    batch = extractor(waves, sampling_rate=16000, padding=True, return_attention_mask=True, return_tensors="pt")
    fit(teacher, dict(batch), torch.tensor([row["label"] for row in rows]), steps)
    teacher.save_pretrained(folder)
    extractor.save_pretrained(folder)
    return str(folder)


def tone_rows(folder: Path, n: int, seed: int) -> list[dict]:
    """Three classes of 0.3 s tones at 8 kHz (resampled to 16 kHz by the command): low, middle, high pitch."""
    rng = np.random.default_rng(seed)
    folder.mkdir(exist_ok=True)
    rows = []
    for i in range(n):
        label = i % 3
        freq = (300.0, 900.0, 2700.0)[label] * rng.uniform(0.9, 1.1)
        samples = 0.5 * np.sin(2 * np.pi * freq * np.arange(int(8000 * rng.uniform(0.2, 0.3))) / 8000)
        write_wav(folder / f"tone{seed}_{i}.wav", samples, 8000)
        rows.append({"audio": str(folder / f"tone{seed}_{i}.wav"), "label": label})
    return rows


@pytest.fixture(scope="module")
def tones(tmp_path_factory):
    root = tmp_path_factory.mktemp("tones")
    torch.set_num_threads(1)
    train, dev = tone_rows(root / "wav", 12, seed=0), tone_rows(root / "wav", 6, seed=1)
    teacher = save_teacher(train, root / "teacher", {0: "low", 1: "middle", 2: "high"}, steps=10)
    for rows in (train, dev):  # paths relative to the data file's folder
        for row in rows:
            row["audio"] = str(Path(row["audio"]).relative_to(root))
    return {"teacher": teacher, "train": write_jsonl(root / "train.jsonl", train),
            "dev": write_jsonl(root / "dev.jsonl", dev), "root": root}  # fmt: skip


def test_tones_end_to_end_with_the_teacher_cache(tones, tmp_path, capsys):
    out = tmp_path / "out"
    cache = tmp_path / "cache"  # the `logits` recipe needs only the teacher's logits: they can be cached
    argv = options(tones["teacher"], tones["train"], tones["dev"], out, teacher_cache_dir=cache, recipe="logits")
    report = run_ok(argv, capsys, "accuracy", {"accuracy"})
    assert report["training"]["settings"]["gamma"] == 0 and len([p for p in cache.iterdir() if p.is_dir()]) == 1
    assert report["task"] == "audio-classification" and report["data"]["audio_column"] == "audio"
    assert report["data"]["sampling_rate"] == 16000 and "max_seq_length" not in report["data"]
    assert (out / "preprocessor_config.json").is_file()
    card = (out / "README.md").read_text()
    assert "pipeline_tag: audio-classification" in card and "AutoFeatureExtractor" in card


@pytest.mark.parametrize(("change", "overrides", "expected"), [
    (lambda rows: rows[0].update(label=7), {}, "the train labels include [7], outside the teacher's label set"),
    (lambda rows: [r.update(audio=1) for r in rows], {}, "--audio_column='audio' of the train data is Value('int64')"),
    (lambda rows: rows[1].update(audio="gone.wav"), {}, "row 1 of the train data names the file 'gone.wav'"),
    (lambda rows: [r.update(sound=r.pop("audio")) for r in rows], {}, "no audio column"),
    (lambda rows: None, {"audio_column": "clip"}, "--audio_column='clip' is not a column of the train data"),
    (lambda rows: None, {"text_column": "audio"}, "--text_column='audio' has no use with --task audio-classification"),
    (lambda rows: None, {"task": "sequence-classification"}, "--task='sequence-classification', but the teacher is "
     "a Wav2Vec2ForSequenceClassification (audio-classification)"),
])  # fmt: skip
def test_bad_audio_data_is_refused(tones, tmp_path, capsys, change, overrides, expected):
    rows = [json.loads(line) for line in Path(tones["train"]).read_text().splitlines()]
    change(rows)
    train = write_jsonl(tones["root"] / "bad.jsonl", rows)
    assert expected in refused(options(tones["teacher"], train, tones["dev"], tmp_path / "o", **overrides), capsys)


def test_a_feature_extractor_of_another_model_is_refused(tones, tmp_path, capsys):
    whisper_extractor().save_pretrained(tmp_path / "whisper")
    argv = options(tones["teacher"], tones["train"], tones["dev"], tmp_path / "o", tokenizer_name=tmp_path / "whisper")
    assert "the WhisperFeatureExtractor makes 'input_features' but the Wav2Vec2" in refused(argv, capsys)


# ---- spoken words --------------------------------------------------------------------------------------------------


def speak(folder: Path, word: str, voice: str, speed: int, pitch: int) -> str:
    path = folder / f"{word}_{voice.replace('+', '_')}_{speed}_{pitch}.wav"
    subprocess.run(["espeak-ng", "-w", str(path), "-v", voice, "-s", str(speed), "-p", str(pitch), word], check=True,
                   capture_output=True, timeout=60)  # fmt: skip
    return str(path)


def reference_accuracy(model_dir: Path, rows: list[dict]) -> float:
    """Accuracy from the saved model and extractor, one clip at a time, read with `wave` and resampled by
    `scipy.signal.resample` (independent of the command's reader and resampler)."""
    signal = pytest.importorskip("scipy.signal")
    model = AutoModelForAudioClassification.from_pretrained(model_dir).eval()
    extractor = AutoFeatureExtractor.from_pretrained(model_dir)
    correct = 0
    for row in rows:
        with wave.open(row["audio"]) as file:  # espeak-ng: 16-bit mono
            rate, samples = file.getframerate(), np.frombuffer(file.readframes(file.getnframes()), "<i2") / 32768.0
        waveform = signal.resample(samples, round(len(samples) * 16000 / rate)).astype(np.float32)
        inputs = extractor(waveform, sampling_rate=16000, return_tensors="pt")
        with torch.no_grad():
            correct += int(model(**inputs).logits.argmax(-1).item() == row["label"])
    return correct / len(rows)


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")
def test_spoken_words_end_to_end(tmp_path, capsys):
    """yes/no/up/down spoken by espeak-ng (22.05 kHz WAV, resampled to 16 kHz), a tiny wav2vec2 teacher trained on
    them, distilled into a 2-layer student through the command with every loss term."""
    folder = tmp_path / "wav"
    folder.mkdir()
    voices, speeds, pitches = ["en-us", "en+f3", "en+m3"], [120, 170], [35, 65]
    train = [{"audio": speak(folder, w, v, s, p), "label": i}
             for i, w in enumerate(WORDS) for v in voices for s in speeds for p in pitches]  # fmt: skip
    dev = [{"audio": speak(folder, w, v, 145, 50), "label": i} for i, w in enumerate(WORDS) for v in [*voices, "en"]]
    teacher = save_teacher(train, tmp_path / "teacher", dict(enumerate(WORDS)), steps=30)
    out = tmp_path / "out"
    train_file, dev_file = write_jsonl(tmp_path / "train.jsonl", train), write_jsonl(tmp_path / "dev.jsonl", dev)
    terms = {"gamma": 0.5, "hidden_weight": 0.5, "relation_weight": 0.5}
    argv = options(teacher, train_file, dev_file, out, max_steps=8, eval_steps=8, save_steps=8, **terms)
    report = run_ok(argv, capsys, "accuracy", {"accuracy"})
    assert report["evaluation"]["teacher"]["metrics"]["accuracy"] > 0.5  # chance is 0.25: the teacher hears words
    # the same accuracy from the saved teacher, clip by clip (one clip may flip on float32 rounding)
    assert report["evaluation"]["teacher"]["metrics"]["accuracy"] == pytest.approx(
        reference_accuracy(Path(teacher), dev), abs=1.5 / len(dev))  # fmt: skip
    history = load_training_history(out)
    logged = [e for e in history["train"] if "loss_kd" in e]
    assert logged and {"loss_ce", "loss_kd", "loss_attn", "loss_hidden", "loss_relation"} <= set(logged[-1])
    checkpoint = out / "checkpoint-8"
    for name in ("config.json", "distillation_config.json", "preprocessor_config.json", "model.safetensors"):
        assert (checkpoint / name).is_file(), name
    assert json.loads((checkpoint / "distillation_config.json").read_text())["task"] == "audio-classification"
