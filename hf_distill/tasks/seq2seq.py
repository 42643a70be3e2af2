"""Sequence to sequence (T5, BART, Marian, Whisper): the decoder's target tokens under teacher forcing, per token.

Both models read the same decoder inputs, the `labels` shifted right behind `decoder_start_token_id`
(`decoder_inputs_from_labels`; added to the batch when the collator did not), so the teacher's and the student's
logits `(B, T_target, V)` are read at the same target positions. A position counts where `labels != -100` (and
`decoder_attention_mask`, if given, is 1); the loss unit is the target token, as for the language models
(`hf_distill.token_kd`: one log-softmax per chunk gives KD and CE). The attention, hidden-state and relation terms
compare the encoders' layers (`hf_distill.modeling.find_layers` finds the encoder stack), masked by the source's
`attention_mask`.

The output projection may run inside the loss (`hf_distill.lm_head`): the hook captures what enters `lm_head`
(T5's scaling by `d_model ** -0.5` comes before it) and folds BART's and Marian's `final_logits_bias`, added after
it, into the bias. Not here, and why: the teacher-output cache (the cache key leaves the `labels` out, but here they
are the decoder's inputs, so a changed target would reuse stale logits).

Metrics: under teacher forcing, target-token `accuracy` and `perplexity`; on generated text (`predict_with_generate`,
and the `hf-distill` command's evaluations), `rougeL`, `bleu` and `exact_match` (`hf_distill.text_metrics`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .. import losses
from ..losses import token_hard_label_loss
from ..task_metrics import TaskMetrics, language_model_scores
from .base import register_task, vocabulary_bound
from .token_level import TokenLevelTask

__all__ = ["SEQ2SEQ", "Seq2SeqCollator", "Seq2SeqLM", "decoder_inputs_from_labels"]

SOURCE_COLUMNS = ("source", "text", "sentence", "document", "article", "input")
TARGET_COLUMNS = ("target", "summary", "output", "translation")
_DECODER_KEYS = ("decoder_input_ids", "decoder_attention_mask")


def decoder_inputs_from_labels(labels: torch.Tensor, config: Any) -> torch.Tensor:
    """`labels` shifted one position right behind `config.decoder_start_token_id`, `-100` replaced by padding:
    the decoder inputs of teacher forcing (what BART's `shift_tokens_right` and T5's `_shift_right` compute)."""
    start, pad = getattr(config, "decoder_start_token_id", None), getattr(config, "pad_token_id", None)
    if start is None or pad is None:
        raise ValueError(
            f"{type(config).__name__} sets decoder_start_token_id={start} and pad_token_id={pad}; teacher forcing "
            "needs both to build the decoder inputs from the labels. Set them in the model's config."
        )
    shifted = labels.new_full(labels.shape, pad)  # (B, T)
    shifted[:, 1:] = labels[:, :-1]
    shifted[:, 0] = start
    return shifted.masked_fill(shifted == losses.IGNORE_INDEX, pad)


class Seq2SeqLM(TokenLevelTask):
    name = "seq2seq"
    auto_class = "AutoModelForSeq2SeqLM"
    class_suffixes = ("ForConditionalGeneration", "MTModel")  # MarianMTModel
    label_bound = staticmethod(vocabulary_bound)  # the targets' ids are checked against it before training
    labels_mark_positions = True  # the labels are the decoder's inputs too
    generates = True  # scored on generated text: the command runs DistillationSeq2SeqTrainer
    description = "sequence to sequence: the target tokens under teacher forcing (T5, BART, Marian, Whisper)"
    pipeline_tag = "text2text-generation"
    no_cache_reason = (
        "its labels are the decoder's inputs, which the cache key leaves out, so a changed target would reuse the "
        "teacher's stale outputs"
    )
    fuses_lm_head = True

    @property
    def command_names(self) -> tuple[str, ...]:
        return (self.name, "text2text")

    def check_models(self, student: Any, teacher: Any) -> None:
        """Both are encoder-decoders that shift the labels the same way."""
        for who, model in (("student", student), ("teacher", teacher)):
            if not getattr(getattr(model, "config", None), "is_encoder_decoder", False):
                raise ValueError(
                    f"the {who} is a {type(model).__name__}, whose config has is_encoder_decoder=False: the seq2seq "
                    "task distils the decoder of an encoder-decoder (T5, BART, Marian, Whisper). Vision-language "
                    "*ForConditionalGeneration models are not supported."
                )
        for name in ("decoder_start_token_id", "pad_token_id"):
            s_value, t_value = getattr(student.config, name, None), getattr(teacher.config, name, None)
            if s_value != t_value:
                raise ValueError(
                    f"the teacher's {name}={t_value} differs from the student's {name}={s_value}: under teacher "
                    "forcing both read the labels shifted right behind decoder_start_token_id and padded with "
                    f"pad_token_id. Build the student from the teacher (build_student), or set its config.{name}."
                )

    def model_inputs(self, model: Any, inputs: dict[str, Any]) -> dict[str, Any]:
        """The batch with `decoder_input_ids` made from the `labels` when the collator did not add them."""
        if inputs.get("decoder_input_ids") is not None:
            return inputs
        if inputs.get("labels") is None:
            raise ValueError(
                "seq2seq distillation needs `labels` (the target token ids, -100 at padding) or `decoder_input_ids` "
                "in every batch: both models are run under teacher forcing on the same decoder inputs. Batch with "
                "DataCollatorForSeq2Seq(tokenizer) on rows tokenised with tokenizer(source, text_target=target)."
            )
        return {**inputs, "decoder_input_ids": decoder_inputs_from_labels(inputs["labels"], model.config)}

    def distilled_positions(self, inputs: dict[str, Any]) -> torch.Tensor:
        """`(B, T_target)`: the target positions with a label (all decoder positions when there are no labels)."""
        labels, decoder_mask = inputs.get("labels"), inputs.get("decoder_attention_mask")
        if labels is not None:
            valid = labels.ne(losses.IGNORE_INDEX)
        elif inputs.get("decoder_input_ids") is not None:
            valid = torch.ones_like(inputs["decoder_input_ids"], dtype=torch.bool)
        else:
            raise ValueError("seq2seq batches need `labels` or `decoder_input_ids` (see DataCollatorForSeq2Seq).")
        if decoder_mask is not None and decoder_mask.shape == valid.shape:
            valid = valid & decoder_mask.bool()
        return valid

    # ---- metrics -----------------------------------------------------------------------------------------------

    def metrics(self, config: Any, references: Any = None) -> TaskMetrics:
        return TaskMetrics(self, "rougeL")

    def preprocess_predictions(self, logits: Any, labels: Any) -> Any:
        """Generated token ids pass through; logits become argmax ids and per-token cross-entropy."""
        logits = logits[0] if isinstance(logits, (tuple, list)) else logits
        if not torch.is_floating_point(logits):  # predict_with_generate: token ids already
            return logits
        return logits.argmax(dim=-1), token_hard_label_loss(logits, labels, reduction="none")

    def compute_metrics(self, metrics: TaskMetrics, predictions: Any, label_ids: Any) -> dict[str, float]:
        """Teacher-forced `accuracy`/`perplexity` from `(argmax, nll)`, text scores from generated ids, or both from
        `(argmax, nll, generated)`."""
        generated, scores = predictions, {}
        if isinstance(predictions, (tuple, list)):
            scores = language_model_scores(predictions[0], predictions[1], label_ids, shift=False)
            generated = predictions[2] if len(predictions) > 2 else None
        if generated is not None:
            from ..text_metrics import text_scores

            scores |= text_scores(_decode(metrics, generated), _decode(metrics, label_ids))
        return scores

    def evaluation_predictions(self, model: Any, batch: dict[str, Any], outputs: Any, labels: Any,
                               metrics: TaskMetrics) -> Any:  # fmt: skip
        """`(argmax, nll)` under teacher forcing, plus the generated ids when the metrics can decode them."""
        argmax, nll = self.preprocess_predictions(outputs.logits, labels)
        if metrics.tokenizer is None:
            return argmax, nll
        source = {k: v for k, v in batch.items() if k not in _DECODER_KEYS}
        length = {"max_length": metrics.max_target_length + 1} if metrics.max_target_length else {}
        return argmax, nll, model.generate(**source, **length)

    # ---- the hf-distill command --------------------------------------------------------------------------------

    def prepare_data(self, splits, args, tokenizer, config, pair: bool = False, augment=None):
        """`source`/`text` -> `target`/`summary` (`--text_column`, `--target_column`), tokenised with `text_target`."""
        return _seq2seq(splits, args, tokenizer, config)


SEQ2SEQ = register_task(Seq2SeqLM())


def _decode(metrics: TaskMetrics, ids: Any) -> list[str]:
    tokenizer = metrics.tokenizer
    if tokenizer is None:
        raise ValueError(
            "the seq2seq metrics on generated text decode token ids, but TaskMetrics.tokenizer is None. Set "
            "metrics.tokenizer = tokenizer (the teacher's)."
        )
    ids = np.asarray(ids)
    ids = np.where(ids == losses.IGNORE_INDEX, tokenizer.pad_token_id, ids)  # -100: label padding, gather padding
    return tokenizer.batch_decode(ids, skip_special_tokens=True)


# ---- data for the hf-distill command -----------------------------------------------------------------------------


class Seq2SeqCollator:
    """`DataCollatorForSeq2Seq` (labels padded with -100), plus the `decoder_input_ids` of teacher forcing made from
    the labels with the teacher's config, so every model and evaluation pass reads the same decoder inputs."""

    def __init__(self, tokenizer, config) -> None:
        from transformers import DataCollatorForSeq2Seq

        self.padding = DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=losses.IGNORE_INDEX)
        self.config = config

    def __call__(self, features: list[dict]) -> dict:
        batch = self.padding(features)
        if "labels" in batch:
            batch["decoder_input_ids"] = decoder_inputs_from_labels(batch["labels"], self.config)
        return batch


def _column(dataset, split: str, option: str, given: str | None, defaults: tuple[str, ...], what: str) -> str:
    if given is not None and given not in dataset.column_names:
        raise ValueError(f"--{option}={given!r} is not a column of the {split} data; its columns are "
                         f"{dataset.column_names}. Name the {what} column with --{option}.")  # fmt: skip
    name = given or next((c for c in defaults if c in dataset.column_names), None)
    if name is None:
        raise ValueError(
            f"the {split} data has no {what} column (looked for {', '.join(defaults)}); its columns are "
            f"{dataset.column_names}. Name it with --{option}."
        )
    values = dataset[name][:50]
    wrong = next((v for v in values if not isinstance(v, str)), None)
    if wrong is not None:
        raise ValueError(
            f"the {split} data's {what} column {name!r} holds {type(wrong).__name__} values (e.g. {wrong!r}), but "
            f"seq2seq {what}s are texts. Give a text column with --{option} (map class ids to words first, e.g. "
            "0/1 -> 'negative'/'positive')."
        )
    return name


def _seq2seq(splits, args, tokenizer, config):
    from datasets import Dataset

    from ..task_data import TaskData, _limited, _refuse

    _refuse(args, SEQ2SEQ.name, ("text_pair_column", "label_column"))
    if getattr(config, "decoder_start_token_id", None) is None:
        raise ValueError(
            f"the teacher's config ({type(config).__name__}) has no decoder_start_token_id, so its decoder cannot be "
            "run under teacher forcing. Set it in the teacher's config.json (T5: the pad id, BART: the eos id)."
        )
    encoded, columns = {}, {}
    for split, dataset in splits.items():
        source = _column(dataset, split, "text_column", args.text_column, SOURCE_COLUMNS, "source")
        target = _column(dataset, split, "target_column", args.target_column, TARGET_COLUMNS, "target")
        dataset, _ = _limited(dataset, [], args, split)
        encoding = tokenizer([str(t) for t in dataset[source]], truncation=True, max_length=args.max_seq_length)
        rows = {k: encoding[k] for k in ("input_ids", "attention_mask") if k in encoding}  # no token_type_ids
        targets = tokenizer(text_target=list(dataset[target]), truncation=True, max_length=args.max_target_length)
        rows["labels"] = targets["input_ids"]
        encoded[split] = Dataset.from_dict(rows)
        columns = {"text_column": source, "text_pair_column": None, "label_column": target}
    return TaskData(encoded["train"], encoded["validation"], Seq2SeqCollator(tokenizer, config), columns)
