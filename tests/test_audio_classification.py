"""Audio classification: detection by the model's input, frame masks, recorded attention, the trainer, the cache, the
WAV reader and resampler, and the bad input refused before training. Tiny wav2vec2/HuBERT/Whisper models built from
configs; random waveforms (the spoken-word run through the command is in test_audio_cli.py)."""

import copy
import io
import math
import wave

import numpy as np
import pytest
import torch
from conftest import recorded_and_eager_maps
from datasets import Audio, Dataset, load_from_disk
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    HubertConfig,
    HubertForSequenceClassification,
    Wav2Vec2Config,
    Wav2Vec2FeatureExtractor,
    Wav2Vec2ForSequenceClassification,
    WhisperConfig,
    WhisperFeatureExtractor,
    WhisperForAudioClassification,
)

from hf_distill import DistillationArguments, DistillationTrainer
from hf_distill.audio import AudioCollator, decode_audio_column, read_wav, resample
from hf_distill.modeling import find_layers
from hf_distill.task_data import resolve_task
from hf_distill.tasks import AUDIO_CLASSIFICATION, SEQUENCE_CLASSIFICATION, detect_task, task_of_class
from hf_distill.tasks.audio_classification import frame_mask

LABELS = {0: "yes", 1: "no", 2: "up"}
SPEECH = dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=64, conv_dim=(16, 16),
              conv_stride=(5, 4), conv_kernel=(10, 8), num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=4,
              classifier_proj_size=16, vocab_size=32, layerdrop=0.0, mask_time_prob=0.0, id2label=LABELS,
              label2id={v: k for k, v in LABELS.items()})  # fmt: skip
STABLE = dict(feat_extract_norm="layer", do_stable_layer_norm=True)  # masks padding (wav2vec2-large style)


def wav2vec2(**overrides) -> Wav2Vec2ForSequenceClassification:
    torch.manual_seed(0)
    return Wav2Vec2ForSequenceClassification(Wav2Vec2Config(**(SPEECH | STABLE | overrides)))


def hubert() -> HubertForSequenceClassification:
    torch.manual_seed(0)
    return HubertForSequenceClassification(HubertConfig(**(SPEECH | STABLE)))


def whisper_config(**overrides) -> WhisperConfig:
    return WhisperConfig(**{
        "d_model": 32, "encoder_layers": 2, "decoder_layers": 1, "encoder_attention_heads": 4,
        "decoder_attention_heads": 4, "encoder_ffn_dim": 64, "decoder_ffn_dim": 64, "num_mel_bins": 16,
        "max_source_positions": 50, "vocab_size": 64, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2,
        "decoder_start_token_id": 1, "encoder_layerdrop": 0.0, "id2label": LABELS,
        "label2id": {v: k for k, v in LABELS.items()}, **overrides,
    })  # fmt: skip


def whisper() -> WhisperForAudioClassification:
    torch.manual_seed(0)
    return WhisperForAudioClassification(whisper_config())


def whisper_extractor(**overrides) -> WhisperFeatureExtractor:
    """100 frames of 16 mel bins (1 s at hop 160): what the tiny Whisper's encoder (2 * 50 positions) reads."""
    return WhisperFeatureExtractor(**{"feature_size": 16, "chunk_length": 1, "hop_length": 160} | overrides)


def speech_extractor(**overrides) -> Wav2Vec2FeatureExtractor:
    settings = {"feature_size": 1, "sampling_rate": 16000, "padding_value": 0.0, "do_normalize": True,
                "return_attention_mask": True} | overrides  # fmt: skip
    return Wav2Vec2FeatureExtractor(**settings)


def clips(n: int, seed: int = 0, shortest: int = 800, longest: int = 2400) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(int(rng.integers(shortest, longest))).astype(np.float32) * 0.1 for _ in range(n)]


def speech_dataset(n: int, extractor, labels=None, seed: int = 0) -> Dataset:
    name = extractor.model_input_names[0]
    features = extractor(clips(n, seed), sampling_rate=16000)[name]
    labels = labels if labels is not None else [i % 3 for i in range(n)]
    return Dataset.from_dict({name: [np.asarray(f).tolist() for f in features], "label": labels})


def distillation_args(tmp_path, **overrides) -> DistillationArguments:
    settings = dict(output_dir=str(tmp_path / "out"), max_steps=2, per_device_train_batch_size=4, learning_rate=1e-3,
                    logging_steps=1, save_strategy="no", report_to="none", use_cpu=True, seed=0, disable_tqdm=True,
                    alpha=0.5, beta=0.5, gamma=0.0, hidden_weight=0.0, relation_weight=0.0) | overrides  # fmt: skip
    return DistillationArguments(**settings)


# ---- detection -------------------------------------------------------------------------------------------------


def test_speech_sequence_classifiers_are_audio_and_text_ones_stay_text():
    assert detect_task(wav2vec2()) is AUDIO_CLASSIFICATION
    assert detect_task(hubert()) is AUDIO_CLASSIFICATION
    assert detect_task(whisper()) is AUDIO_CLASSIFICATION
    bert = BertForSequenceClassification(BertConfig(vocab_size=32, hidden_size=16, num_hidden_layers=1,
                                                    num_attention_heads=2, intermediate_size=16))  # fmt: skip
    assert detect_task(bert) is SEQUENCE_CLASSIFICATION
    for name in ("Wav2Vec2ForSequenceClassification", "WavLMForSequenceClassification", "ASTForAudioClassification",
                 "Data2VecAudioForSequenceClassification"):  # fmt: skip
        assert task_of_class(name) is AUDIO_CLASSIFICATION, name
    assert task_of_class("RobertaForSequenceClassification") is SEQUENCE_CLASSIFICATION
    assert task_of_class("MyForSequenceClassification") is SEQUENCE_CLASSIFICATION  # unknown input: text, as before
    config = Wav2Vec2Config(architectures=["Wav2Vec2ForSequenceClassification"])
    assert resolve_task(None, config) == (AUDIO_CLASSIFICATION, False)
    with pytest.raises(ValueError, match="--task='sequence-classification', but the teacher is a Wav2Vec2For"):
        resolve_task("sequence-classification", config)


# ---- frame masks and attention maps ----------------------------------------------------------------------------


def _frames(samples: int) -> int:
    """The conv front end's output length, from the definition: floor((L - kernel) / stride) + 1 per layer."""
    for kernel, stride in ((10, 5), (8, 4)):
        samples = (samples - kernel) // stride + 1
    return samples


def test_frame_mask_marks_the_frames_of_the_real_samples():
    mask = torch.ones(2, 1600, dtype=torch.long)
    mask[1, 1000:] = 0
    frames = frame_mask(wav2vec2(), mask)
    assert frames.shape == (2, _frames(1600)) and frames.sum(dim=1).tolist() == [_frames(1600), _frames(1000)]
    assert frames[1, : _frames(1000)].all() and not frames[1, _frames(1000) :].any()
    assert frame_mask(whisper(), None) is None


@pytest.mark.parametrize("build", [wav2vec2, hubert, whisper], ids=["wav2vec2", "hubert", "whisper-encoder"])
def test_recorded_maps_equal_eager_maps(build):
    model = build().eval()
    if model.main_input_name == "input_features":  # Whisper: no attention mask, every frame is read
        inputs = {"input_features": torch.randn(2, 16, 100)}
    else:
        mask = torch.ones(2, 1600, dtype=torch.long)
        mask[1, 1000:] = 0
        inputs = {"input_values": torch.randn(2, 1600), "attention_mask": mask}
    layers = list(range(len(find_layers(model))))
    recorded, eager = recorded_and_eager_maps(model, layers, **inputs)
    for got, want in zip(recorded, eager):
        assert got.shape == want.shape and got.dtype == torch.float32
        torch.testing.assert_close(got, want.float(), atol=1e-5, rtol=1e-4)
    if "attention_mask" in inputs:  # padded frames get no attention
        assert (recorded[0][1, :, :, _frames(1000) :] == 0).all()


# ---- the trainer -----------------------------------------------------------------------------------------------


def test_padding_changes_no_term(tmp_path):
    """Extra padded samples (attention mask 0) change no loss term: every term reads only the real frames."""
    teacher = wav2vec2()
    args = distillation_args(tmp_path, gamma=1.0, hidden_weight=1.0, relation_weight=1.0, student_num_layers=2)
    trainer = DistillationTrainer(model=teacher, args=args)
    extractor = speech_extractor()
    rows = speech_dataset(3, extractor)
    collate = AudioCollator(extractor)
    batch = collate([rows[i] for i in range(3)])
    padded = dict(batch)
    padded["input_values"] = torch.nn.functional.pad(batch["input_values"], (0, 800))
    padded["attention_mask"] = torch.nn.functional.pad(batch["attention_mask"], (0, 800))
    trainer.model.eval()
    means = []
    for inputs in (batch, padded):
        with torch.no_grad():
            trainer.compute_loss(trainer.model, inputs)
        means.append(trainer._pop_term_means("eval"))
    assert set(means[0]) == {"loss_ce", "loss_kd", "loss_attn", "loss_hidden", "loss_relation"}
    for name, value in means[0].items():
        assert means[1][name] == pytest.approx(value, rel=1e-4, abs=1e-6), name
    assert means[0]["loss_attn"] > 0 and means[0]["loss_hidden"] > 0


@pytest.mark.parametrize("family", ["wav2vec2", "whisper"])
def test_trainer_distils_a_built_student_with_every_term(tmp_path, family):
    if family == "wav2vec2":
        teacher, extractor = wav2vec2(), speech_extractor()
    else:
        teacher, extractor = whisper(), whisper_extractor()
    data = speech_dataset(8, extractor)
    layers = 2 if family == "wav2vec2" else 1
    args = distillation_args(tmp_path, gamma=0.5, hidden_weight=0.5, relation_weight=0.5, student_num_layers=layers)
    teacher_before = copy.deepcopy(teacher.state_dict())
    trainer = DistillationTrainer(model=teacher, args=args, train_dataset=data, data_collator=AudioCollator(extractor),
                                  processing_class=extractor)  # fmt: skip
    assert trainer.task is AUDIO_CLASSIFICATION and trainer.distillation_record().task == "audio-classification"
    student_before = copy.deepcopy(trainer.model.state_dict())
    trainer.train()
    assert any(not torch.equal(student_before[k], v) for k, v in trainer.model.state_dict().items())
    assert all(torch.equal(teacher_before[k], v) for k, v in teacher.state_dict().items())
    logged = [e for e in trainer.state.log_history if "loss" in e and "loss_kd" in e]
    assert logged and {"loss_ce", "loss_kd", "loss_attn", "loss_hidden", "loss_relation"} <= set(logged[-1])
    assert all(math.isfinite(e["loss_attn"]) and e["loss_attn"] > 0 for e in logged)
    trainer.save_model()
    assert (tmp_path / "out" / "preprocessor_config.json").is_file()
    assert (tmp_path / "out" / "distillation_config.json").is_file()
    assert "pipeline_tag: audio-classification" in (tmp_path / "out" / "README.md").read_text()
    assert "AutoFeatureExtractor.from_pretrained" in (tmp_path / "out" / "README.md").read_text()


def test_teacher_cache_holds_each_rows_own_logits(tmp_path):
    """The cached logits of row i are the teacher's logits of clip i alone (unpadded): row identity survives the
    batching, padding and masking of the cache pass."""
    teacher, extractor = wav2vec2(), speech_extractor()
    data = speech_dataset(6, extractor)
    args = distillation_args(tmp_path, student_num_layers=2, teacher_cache_dir=str(tmp_path / "cache"))
    trainer = DistillationTrainer(model=teacher, args=args, train_dataset=data, data_collator=AudioCollator(extractor))
    trainer.train()
    (folder,) = [p for p in (tmp_path / "cache").iterdir() if p.is_dir()]
    cached = torch.tensor(load_from_disk(str(folder))["teacher_logits"])
    teacher.eval()
    with torch.no_grad():
        alone = torch.cat([teacher(input_values=torch.tensor([row["input_values"]])).logits for row in data])
    torch.testing.assert_close(cached, alone, atol=1e-4, rtol=1e-4)


# ---- bad input -------------------------------------------------------------------------------------------------


def test_mismatched_models_are_refused(tmp_path):
    args = distillation_args(tmp_path)
    bert = BertForSequenceClassification(
        BertConfig(vocab_size=32, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16,
                   num_labels=3)
    )  # fmt: skip
    with pytest.raises(ValueError, match="Wav2Vec2ForSequenceClassification \\(audio-classification\\) but the"):
        DistillationTrainer(model=wav2vec2(), teacher_model=bert, args=args)
    with pytest.raises(ValueError, match="reads 'input_values' but the teacher .* reads 'input_features'"):
        DistillationTrainer(model=wav2vec2(), teacher_model=whisper(), args=args)
    with pytest.raises(ValueError, match="config.layerdrop=0.1 skips random layers.*student.config.layerdrop = 0"):
        DistillationTrainer(model=wav2vec2(layerdrop=0.1), args=distillation_args(tmp_path, gamma=0.5,
                                                                                  student_num_layers=2))  # fmt: skip


def test_a_student_with_another_ctc_vocabulary_is_accepted(tmp_path):
    """wav2vec2's `vocab_size` is its CTC head's, unused by a classifier: it is no input vocabulary to match."""
    trainer = DistillationTrainer(
        model=wav2vec2(vocab_size=40), teacher_model=wav2vec2(), args=distillation_args(tmp_path)
    )
    assert trainer.task is AUDIO_CLASSIFICATION


def test_labels_out_of_range_are_refused_before_training(tmp_path):
    extractor = speech_extractor()
    data = speech_dataset(4, extractor, labels=[0, 1, 2, 7])
    trainer = DistillationTrainer(model=wav2vec2(), args=distillation_args(tmp_path, student_num_layers=2),
                                  train_dataset=data, data_collator=AudioCollator(extractor))  # fmt: skip
    with pytest.raises(ValueError, match=r"label values \[7\] outside the student's label set 0..2"):
        trainer.train()
    assert trainer.state.global_step == 0


@pytest.mark.parametrize(
    "extractor, model, expected",
    [
        (lambda: WhisperFeatureExtractor(feature_size=80), whisper, "makes 80 features per frame but the model has "
         "num_mel_bins=16"),
        (lambda: whisper_extractor(chunk_length=2), whisper, "pads every clip to 200 frames but the Whisper"),
        (speech_extractor, whisper, "makes 'input_values' but the WhisperForAudioClassification reads 'input_feat"),
        (lambda: speech_extractor(feature_size=2), wav2vec2, "feature_size=2, but the Wav2Vec2ForSequenceClassif"),
    ],
)  # fmt: skip
def test_a_feature_extractor_that_does_not_fit_the_model_is_refused(extractor, model, expected):
    with pytest.raises(ValueError, match=expected):
        AUDIO_CLASSIFICATION.check_processor(extractor(), model(), "tokenizer_name")
    AUDIO_CLASSIFICATION.check_processor(whisper_extractor(), whisper(), "tokenizer_name")  # the matching pair passes
    AUDIO_CLASSIFICATION.check_processor(speech_extractor(), wav2vec2(), "tokenizer_name")


def test_a_column_that_is_not_audio_or_names_a_missing_file_is_refused(tmp_path):
    numbers = Dataset.from_dict({"audio": [1, 2], "label": [0, 1]})
    with pytest.raises(ValueError, match="--audio_column='audio' of the train data is Value\\('int64'\\), not audio"):
        decode_audio_column(numbers, "audio", 16000, None, "train")
    missing = Dataset.from_dict({"audio": ["nowhere.wav"], "label": [0]})
    with pytest.raises(ValueError, match="row 0 of the train data names the file 'nowhere.wav', which does not exist"):
        decode_audio_column(missing, "audio", 16000, tmp_path, "train")
    (tmp_path / "clip.flac").write_bytes(b"fLaC" + bytes(100))
    flac = Dataset.from_dict({"audio": [str(tmp_path / "clip.flac")]})
    with pytest.raises(ValueError, match="not a WAV file, and decoding other formats needs torchcodec"):
        decode_audio_column(flac, "audio", 16000, None, "train")


# ---- WAV files, resampling, batches ----------------------------------------------------------------------------


def write_wav(path, samples: np.ndarray, rate: int, width: int = 2, channels: int = 1) -> None:
    """PCM WAV from float samples in [-1, 1) (`channels` copies), written with the standard library."""
    scale = 2 ** (8 * width - 1)
    ints = np.clip(np.round(samples * scale), -scale, scale - 1).astype(np.int64)
    if width == 1:
        raw = (ints + 128).astype(np.uint8).tobytes()
    else:
        raw = b"".join(int(v).to_bytes(width, "little", signed=True) for v in np.repeat(ints, channels))
    with wave.open(path if isinstance(path, io.BytesIO) else str(path), "wb") as file:
        file.setnchannels(channels if width > 1 else 1)
        file.setsampwidth(width)
        file.setframerate(rate)
        file.writeframes(raw)


@pytest.mark.parametrize("width, channels", [(1, 1), (2, 1), (2, 2), (3, 1), (4, 1)])
def test_read_wav_returns_the_written_samples(tmp_path, width, channels):
    samples = np.sin(2 * np.pi * 5 * np.arange(200) / 200) * 0.5
    write_wav(tmp_path / "x.wav", samples, 8000, width, channels)
    got, rate = read_wav(tmp_path / "x.wav")
    assert rate == 8000 and got.dtype == np.float32 and got.shape == (200,)
    np.testing.assert_allclose(got, samples, atol=1.0 / 2 ** (8 * width - 1))
    assert np.array_equal(read_wav((tmp_path / "x.wav").read_bytes())[0], got)


def test_read_wav_refuses_what_is_not_pcm_wav(tmp_path):
    (tmp_path / "x.wav").write_bytes(b"RIFF" + bytes(40))
    with pytest.raises(ValueError, match="is not a PCM WAV file .* Convert it to 16-bit PCM WAV"):
        read_wav(tmp_path / "x.wav")


def test_resample_a_sine_to_its_samples_at_the_new_rate():
    """A band-limited periodic signal (whole cycles in the clip) resampled is the same sine sampled at the new rate."""
    seconds, freq = 0.5, 440.0  # 220 whole cycles
    for orig, target in ((22050, 16000), (8000, 16000), (16000, 16000)):
        x = np.sin(2 * np.pi * freq * np.arange(int(orig * seconds)) / orig)
        y = resample(x, orig, target)
        want = np.sin(2 * np.pi * freq * np.arange(int(target * seconds)) / target)
        assert y.shape == want.shape
        np.testing.assert_allclose(y, want, atol=1e-4)
    # content above the new Nyquist frequency (8 kHz) is removed, not folded back
    tone = np.sin(2 * np.pi * 10000.0 * np.arange(22050) / 44100)
    assert np.abs(resample(tone, 44100, 16000)).max() < 1e-4


def test_resample_equals_scipy():
    signal = pytest.importorskip("scipy.signal")
    x = np.random.default_rng(0).standard_normal(1001)
    for orig, target in ((22050, 16000), (16000, 22050), (44100, 16000), (8000, 16000)):
        np.testing.assert_allclose(resample(x, orig, target), signal.resample(x, round(1001 * target / orig)),
                                   atol=1e-5)  # fmt: skip


def test_decode_reads_paths_and_audio_features_at_the_extractors_rate(tmp_path):
    samples = np.sin(2 * np.pi * 440 * np.arange(4000) / 8000) * 0.5  # 0.5 s at 8 kHz
    write_wav(tmp_path / "a.wav", samples, 8000)
    by_path = Dataset.from_dict({"audio": ["a.wav"]})  # relative to the data file's folder
    (decoded,) = decode_audio_column(by_path, "audio", 16000, tmp_path, "train")
    assert decoded.shape == (8000,)
    feature = Dataset.from_dict({"audio": [str(tmp_path / "a.wav")]}).cast_column("audio", Audio())
    (from_feature,) = decode_audio_column(feature, "audio", 16000, None, "train")  # no torchcodec needed for WAV
    assert np.array_equal(decoded, from_feature)
    buffer = io.BytesIO()
    write_wav(buffer, samples, 8000)
    in_bytes = Dataset.from_dict({"audio": [{"bytes": buffer.getvalue(), "path": None}]}).cast_column("audio", Audio())
    assert np.array_equal(decode_audio_column(in_bytes, "audio", 16000, None, "train")[0], decoded)


def test_collator_pads_to_the_longest_clip_with_a_mask():
    extractor = speech_extractor()
    rows = [{"input_values": [0.5] * 5, "labels": 1}, {"input_values": [0.25] * 3, "labels": 0}]
    batch = AudioCollator(extractor)(rows)
    assert batch["input_values"].shape == (2, 5) and batch["labels"].tolist() == [1, 0]
    assert batch["attention_mask"].tolist() == [[1] * 5, [1, 1, 1, 0, 0]]
    assert batch["input_values"][1, 3:].tolist() == [0.0, 0.0]
    assert "attention_mask" not in AudioCollator(extractor, return_attention_mask=False)(rows)


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: tiny models on one thread
