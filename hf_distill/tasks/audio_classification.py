"""Audio classification: one label per clip (keyword spotting, speaker or emotion recognition), distilled per example.

The heads: `*ForAudioClassification` (Whisper's encoder, AST) and the `*ForSequenceClassification` of speech encoders
(wav2vec2, HuBERT, WavLM, data2vec-audio, ...), told apart from text classifiers by their input: `input_values` (raw
samples, or AST's spectrogram) or `input_features` (Whisper's log-mel frames), never `input_ids`. Logits `(B, C)`;
the loss unit is the example; the losses are those of sequence classification (CE and softmax KD), and the teacher's
class logits can be cached per example.

The hidden-state, attention and relation terms compare the encoder's frames, not the input samples: their mask is
the frame mask the model derives from the sample-level `attention_mask` (wav2vec2's
`_get_feature_vector_attention_mask`). Whisper's encoder takes no attention mask (every clip is padded to 30 s of
frames the model reads), so every frame counts there.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

from .base import register_task
from .sequence_classification import SequenceClassification

__all__ = ["AUDIO_CLASSIFICATION", "AudioClassification", "frame_mask"]

_AUDIO_INPUTS = ("input_values", "input_features")
_COLUMN_GUESSES = ("audio", "file", "path")


def frame_mask(model: Any, attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    """`(B, F)`: the encoder frames of `model` that hold audio, from the `(B, S)` mask over the input samples.

    Speech encoders with a convolutional front end (wav2vec2, HuBERT, ...) compute it themselves
    (`_get_feature_vector_attention_mask`); a model that takes no mask (Whisper) reads every frame (`None`); for any
    other model the mask is returned as it is.
    """
    if attention_mask is None or "attention_mask" not in inspect.signature(model.forward).parameters:
        return None  # Whisper's encoder reads every frame (it takes no mask)
    to_frames = getattr(model, "_get_feature_vector_attention_mask", None)
    if to_frames is None:
        return attention_mask
    frames = model._get_feat_extract_output_lengths(torch.tensor(attention_mask.shape[-1]))
    return to_frames(int(frames), attention_mask)


class AudioClassification(SequenceClassification):
    name = "audio-classification"
    auto_class = "AutoModelForAudioClassification"
    class_suffixes = ("ForAudioClassification",)
    description = "one label per audio clip (keyword spotting, speaker or emotion recognition, ...)"
    pipeline_tag = "audio-classification"
    augments_text = False
    main_input_names = _AUDIO_INPUTS
    processor_auto_class = "AutoFeatureExtractor"
    reads_text = False

    @property
    def command_names(self) -> tuple[str, ...]:
        return (self.name,)

    def command_name(self, pair: bool) -> str:
        return self.name

    def claims(self, class_name: str, main_input_name: str | None) -> bool:
        """`*ForAudioClassification`, and a `*ForSequenceClassification` known to read audio (wav2vec2, HuBERT)."""
        if class_name.endswith("ForSequenceClassification"):
            return main_input_name in _AUDIO_INPUTS
        return class_name.endswith(self.class_suffixes) and main_input_name in (None, *_AUDIO_INPUTS)

    def check_models(self, student: Any, teacher: Any) -> None:
        """Single-label heads (as sequence classification), and both models reading the same input."""
        super().check_models(student, teacher)
        s_input, t_input = student.main_input_name, teacher.main_input_name
        if s_input != t_input:
            raise ValueError(
                f"the student ({type(student).__name__}) reads {s_input!r} but the teacher ({type(teacher).__name__}) "
                f"reads {t_input!r}: both models are fed the same batch from one feature extractor. Pick a student of "
                "the teacher's family (build_student, or a smaller config of the teacher's model type)."
            )

    def layer_mask(self, model: Any, inputs: dict[str, Any]) -> torch.Tensor | None:
        """The frames the encoder layers see (see `frame_mask`)."""
        return frame_mask(model, inputs.get("attention_mask"))

    def check_processor(self, processor: Any, model: Any, option: str) -> None:
        """The feature extractor must make the model's input, of the size its config expects."""
        config, kind = model.config, type(processor).__name__
        names = list(getattr(processor, "model_input_names", None) or [])
        if not hasattr(processor, "pad") or not names:
            raise ValueError(f"--{option} loaded a {kind}, not a feature extractor: give the folder holding the "
                             "teacher's preprocessor_config.json.")  # fmt: skip
        if names[0] != model.main_input_name:
            raise ValueError(
                f"--{option}: the {kind} makes {names[0]!r} but the {type(model).__name__} reads "
                f"{model.main_input_name!r}: it is not this model's feature extractor. Use the teacher's (save it "
                "with the teacher, or point --tokenizer_name at it)."
            )
        mel_bins = getattr(config, "num_mel_bins", None)
        made = getattr(processor, "num_mel_bins", None) or getattr(processor, "feature_size", None)
        if mel_bins is not None and made != mel_bins:
            raise ValueError(
                f"--{option}: the {kind} makes {made} features per frame but the model has num_mel_bins={mel_bins}. "
                f"Use the teacher's feature extractor (or one built with feature_size={mel_bins})."
            )
        if hasattr(config, "conv_dim") and getattr(processor, "feature_size", 1) != 1:
            raise ValueError(
                f"--{option}: the {kind} has feature_size={processor.feature_size}, but the "
                f"{type(model).__name__} reads the raw waveform (one value per sample, feature_size=1). Use the "
                "teacher's feature extractor, e.g. Wav2Vec2FeatureExtractor(feature_size=1, ...)."
            )
        frames, positions = getattr(processor, "nb_max_frames", None), getattr(config, "max_source_positions", None)
        if frames is not None and positions is not None and frames != 2 * positions:
            raise ValueError(
                f"--{option}: the {kind} pads every clip to {frames} frames but the {type(model).__name__}'s encoder "
                f"reads exactly 2 * max_source_positions = {2 * positions}. Use the teacher's feature extractor (its "
                "chunk_length and hop_length set the frames)."
            )

    def prepare_data(self, splits, args, tokenizer, config, pair: bool = False, augment=None):
        """The audio column (`audio`, `file` or `path`, or `--audio_column`: a `datasets.Audio` feature or WAV paths)
        and `label`, through the teacher's feature extractor (`tokenizer` here), batched by `AudioCollator`."""
        return _audio_classification(splits, args, tokenizer, config)


AUDIO_CLASSIFICATION = register_task(AudioClassification())


# ---- data for the hf-distill command ---------------------------------------------------------------------------


def _audio_classification(splits, args, feature_extractor, config):
    from datasets import Dataset

    from ..audio import AudioCollator, decode_audio_column
    from ..data import encode_labels
    from ..task_data import TaskData, _limited, _refuse, _require

    _refuse(args, "audio-classification", ("text_column", "text_pair_column"))
    rate = feature_extractor.sampling_rate
    checked = {}
    for split, dataset in splits.items():  # every column and label checked before any audio is read
        default = args.audio_column or next((c for c in _COLUMN_GUESSES if c in dataset.column_names), None)
        audio = _require(split, dataset, "audio_column", args.audio_column, default, "audio")
        label = _require(split, dataset, "label_column", args.label_column, "label", "label")
        labels = encode_labels(dataset[label], config, split, require_all=split == "train")
        checked[split] = (*_limited(dataset, labels, args, split), audio)
    encoded = {}
    for split, (dataset, labels, audio) in checked.items():
        base_dir = _data_folder(args, split)
        waveforms = decode_audio_column(dataset, audio, rate, base_dir, split)
        if args.max_audio_seconds is not None:
            waveforms = [w[: int(args.max_audio_seconds * rate)] for w in waveforms]
        features = feature_extractor(waveforms, sampling_rate=rate, return_attention_mask=False)
        name = feature_extractor.model_input_names[0]
        encoded[split] = Dataset.from_dict({name: [_as_list(f) for f in features[name]], "labels": labels})
    columns = {"audio_column": audio, "label_column": label, "sampling_rate": rate}
    return TaskData(encoded["train"], encoded["validation"], AudioCollator(feature_extractor), columns)


def _as_list(values):
    return values.tolist() if hasattr(values, "tolist") else values


def _data_folder(args, split: str):
    from pathlib import Path

    path = args.train_file if split == "train" else args.validation_file
    return Path(path).resolve().parent if path else None
