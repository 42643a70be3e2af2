"""The official transformers example scripts take `DistillationArguments` in place of `TrainingArguments`.

Each script parses `HfArgumentParser((ModelArguments, DataTrainingArguments, TrainingArguments))`; the documented
swap puts `DistillationArguments` last. argparse refuses two fields of the same name, so none of ours may share a
name with the scripts' own dataclasses. The field names below were written down from
`examples/pytorch/*/run_*.py` of huggingface/transformers at the 5.8.0 examples (commit 049d2bf1); the dataclasses
here are rebuilt from those names only. docs/official_scripts.md records the runs of the real scripts.
"""

from __future__ import annotations

import dataclasses

import pytest
from transformers import HfArgumentParser

from hf_distill import DistillationArguments

_HUB = ("cache_dir", "model_revision", "token", "trust_remote_code")
_SAMPLES = ("max_train_samples", "max_eval_samples")

# script -> (ModelArguments fields, DataTrainingArguments fields)
OFFICIAL_SCRIPT_FIELDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "text-classification/run_glue.py": (
        ("model_name_or_path", "config_name", "tokenizer_name", "use_fast_tokenizer", *_HUB,
         "ignore_mismatched_sizes"),
        ("task_name", "dataset_name", "dataset_config_name", "max_seq_length", "overwrite_cache", "pad_to_max_length",
         *_SAMPLES, "max_predict_samples", "train_file", "validation_file", "test_file"),
    ),
    "token-classification/run_ner.py": (
        ("model_name_or_path", "config_name", "tokenizer_name", *_HUB, "ignore_mismatched_sizes"),
        ("task_name", "dataset_name", "dataset_config_name", "train_file", "validation_file", "test_file",
         "text_column_name", "label_column_name", "overwrite_cache", "preprocessing_num_workers", "max_seq_length",
         "pad_to_max_length", *_SAMPLES, "max_predict_samples", "label_all_tokens", "return_entity_level_metrics"),
    ),
    "question-answering/run_qa.py": (
        ("model_name_or_path", "config_name", "tokenizer_name", *_HUB),
        ("dataset_name", "dataset_config_name", "train_file", "validation_file", "test_file", "overwrite_cache",
         "preprocessing_num_workers", "max_seq_length", "pad_to_max_length", *_SAMPLES, "max_predict_samples",
         "version_2_with_negative", "null_score_diff_threshold", "doc_stride", "n_best_size", "max_answer_length"),
    ),
    "language-modeling/run_clm.py": (
        ("model_name_or_path", "model_type", "config_overrides", "config_name", "tokenizer_name", "use_fast_tokenizer",
         *_HUB, "dtype"),
        ("dataset_name", "dataset_config_name", "train_file", "validation_file", *_SAMPLES, "streaming", "block_size",
         "overwrite_cache", "validation_split_percentage", "preprocessing_num_workers", "keep_linebreaks"),
    ),
    "language-modeling/run_mlm.py": (
        ("model_name_or_path", "model_type", "config_overrides", "config_name", "tokenizer_name", "use_fast_tokenizer",
         *_HUB, "dtype"),
        ("dataset_name", "dataset_config_name", "train_file", "validation_file", "overwrite_cache",
         "validation_split_percentage", "max_seq_length", "preprocessing_num_workers", "mlm_probability",
         "line_by_line", "pad_to_max_length", *_SAMPLES, "streaming"),
    ),
    "summarization/run_summarization.py": (
        ("model_name_or_path", "config_name", "tokenizer_name", "use_fast_tokenizer", *_HUB,
         "resize_position_embeddings"),
        ("lang", "dataset_name", "dataset_config_name", "text_column", "summary_column", "train_file",
         "validation_file", "test_file", "overwrite_cache", "preprocessing_num_workers", "max_source_length",
         "max_target_length", "val_max_target_length", "pad_to_max_length", *_SAMPLES, "max_predict_samples",
         "num_beams", "ignore_pad_token_for_loss", "source_prefix", "forced_bos_token"),
    ),
    "translation/run_translation.py": (
        ("model_name_or_path", "config_name", "tokenizer_name", "use_fast_tokenizer", *_HUB),
        ("source_lang", "target_lang", "dataset_name", "dataset_config_name", "train_file", "validation_file",
         "test_file", "overwrite_cache", "preprocessing_num_workers", "max_source_length", "max_target_length",
         "val_max_target_length", "pad_to_max_length", *_SAMPLES, "max_predict_samples", "num_beams",
         "ignore_pad_token_for_loss", "source_prefix", "forced_bos_token"),
    ),
    "multiple-choice/run_swag.py": (
        ("model_name_or_path", "config_name", "tokenizer_name", "use_fast_tokenizer", *_HUB),
        ("train_file", "validation_file", "overwrite_cache", "preprocessing_num_workers", "max_seq_length",
         "pad_to_max_length", *_SAMPLES),
    ),
    "image-classification/run_image_classification.py": (
        ("model_name_or_path", "model_type", "config_name", "cache_dir", "model_revision", "image_processor_name",
         "token", "trust_remote_code", "ignore_mismatched_sizes"),
        ("dataset_name", "dataset_config_name", "train_dir", "validation_dir", "train_val_split", *_SAMPLES,
         "image_column_name", "label_column_name"),
    ),
    "audio-classification/run_audio_classification.py": (
        ("model_name_or_path", "config_name", "cache_dir", "model_revision", "feature_extractor_name",
         "freeze_feature_encoder", "attention_mask", "token", "trust_remote_code", "ignore_mismatched_sizes"),
        ("dataset_name", "dataset_config_name", "train_file", "eval_file", "train_split_name", "eval_split_name",
         "audio_column_name", "label_column_name", *_SAMPLES, "max_length_seconds"),
    ),
}  # fmt: skip


def _script_dataclass(name: str, fields: tuple[str, ...]) -> type:
    """A dataclass with the script's field names (types and defaults do not matter for a name clash)."""
    return dataclasses.make_dataclass(name, [(f, str | None, dataclasses.field(default=None)) for f in fields])


def _our_fields() -> set[str]:
    return {f.name for f in dataclasses.fields(DistillationArguments) if f.init}


@pytest.mark.parametrize("script", sorted(OFFICIAL_SCRIPT_FIELDS))
def test_no_distillation_field_shares_a_name_with_the_script(script):
    model_fields, data_fields = OFFICIAL_SCRIPT_FIELDS[script]
    assert not (_our_fields() & (set(model_fields) | set(data_fields)))


@pytest.mark.parametrize("script", sorted(OFFICIAL_SCRIPT_FIELDS))
def test_script_parser_builds_and_parses_with_distillation_arguments(script, tmp_path):
    model_fields, data_fields = OFFICIAL_SCRIPT_FIELDS[script]
    model_cls, data_cls = _script_dataclass("ModelArguments", model_fields), _script_dataclass("Data", data_fields)
    parser = HfArgumentParser((model_cls, data_cls, DistillationArguments))  # raised ArgumentError on a clash
    argv = ["--model_name_or_path", "teacher", "--trust_remote_code", "yes", "--output_dir", str(tmp_path),
            "--teacher_trust_remote_code", "--student_num_layers", "2", "--temperature", "2",
            "--report_to", "none"]  # fmt: skip
    model_args, _, args = parser.parse_args_into_dataclasses(args=argv)
    assert model_args.model_name_or_path == "teacher" and model_args.trust_remote_code == "yes"  # the script's own
    assert args.teacher_trust_remote_code is True and args.student_num_layers == 2 and args.temperature == 2.0


def test_the_old_name_still_works_in_python_with_a_warning(tmp_path):
    with pytest.warns(FutureWarning, match="teacher_trust_remote_code"):
        args = DistillationArguments(output_dir=str(tmp_path), report_to="none", trust_remote_code=True)
    assert args.teacher_trust_remote_code is True and args.trust_remote_code is True
    assert "trust_remote_code" not in _our_fields()  # a property, not a field: no --trust_remote_code flag
    with pytest.raises(ValueError, match="pass only teacher_trust_remote_code"):
        DistillationArguments(output_dir=str(tmp_path), trust_remote_code=True, teacher_trust_remote_code=False)
