"""Masked language modelling (BERT pre-training): the masked tokens, distilled per token.

Logits `(B, T, V)` at the masked positions (`labels != -100`), which the labels mark, so batches need them even with
`alpha = 0`. The loss unit is the token. The teacher's outputs are not cached: the collator masks new positions every
epoch. The output projection may run inside the loss (`hf_distill.lm_head`). Metrics: `accuracy` on the masked
tokens and `perplexity`. In the `hf-distill` command the evaluation set is masked once, the same in every run.
"""

from __future__ import annotations

from typing import Any

import torch

from ..labels import IGNORE_INDEX
from ..losses import token_hard_label_loss
from ..task_metrics import language_model_scores
from .base import register_task, vocabulary_bound
from .token_level import TokenLevelTask

__all__ = ["MASKED_LM", "MaskedLM", "MaskedLMCollator"]

MLM_PROBABILITY = 0.15
EVAL_MASKING_SEED = 0  # the evaluation set's masked positions, the same in every run


class MaskedLM(TokenLevelTask):
    name = "masked-lm"
    auto_class = "AutoModelForMaskedLM"
    class_suffixes = ("ForMaskedLM",)
    label_bound = staticmethod(vocabulary_bound)  # the targets' ids are checked against it before training
    labels_mark_positions = True
    description = "masked language modelling: the masked tokens (BERT pre-training)"
    pipeline_tag = "fill-mask"
    no_cache_reason = "its collator masks new positions every epoch, so the teacher's inputs change"
    fuses_lm_head = True

    def distilled_positions(self, inputs: dict[str, Any]) -> torch.Tensor:
        if inputs.get("labels") is None:
            raise ValueError(
                "masked-lm distillation needs `labels` marking the masked positions (-100 elsewhere); batch them with "
                "DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15)."
            )
        return super().distilled_positions(inputs)

    def preprocess_predictions(self, logits, labels):
        """Argmax ids and per-token cross-entropy, so evaluation never keeps `(N, T, V)` logits."""
        logits = logits[0] if isinstance(logits, (tuple, list)) else logits
        return logits.argmax(dim=-1), token_hard_label_loss(logits, labels, reduction="none")

    def compute_metrics(self, metrics, predictions, label_ids) -> dict[str, float]:
        return language_model_scores(*predictions, label_ids, shift=False)

    def prepare_data(self, splits, args, tokenizer, config, pair: bool = False, augment=None):
        """`sentence`/`text`; training rows masked afresh each epoch, the evaluation set masked once."""
        return _masked_lm(splits, args, tokenizer)


MASKED_LM = register_task(MaskedLM())


# ---- data for the hf-distill command -----------------------------------------------------------------------------


class MaskedLMCollator:
    """Training rows are masked afresh by `DataCollatorForLanguageModeling`; rows that carry `labels` (the evaluation
    set, masked once) are only padded, so every model is scored on the same masked positions."""

    def __init__(self, tokenizer, mlm_probability: float = MLM_PROBABILITY) -> None:
        from transformers import DataCollatorForLanguageModeling, DataCollatorForTokenClassification

        self.masking = DataCollatorForLanguageModeling(tokenizer, mlm_probability=mlm_probability)
        self.padding = DataCollatorForTokenClassification(tokenizer)

    def __call__(self, features: list[dict]) -> dict:
        return (self.padding if "labels" in features[0] else self.masking)(features)


def _masked_lm(splits, args, tokenizer):
    from transformers import DataCollatorForLanguageModeling

    from ..task_data import TaskData, _texts

    if tokenizer.mask_token is None:
        raise ValueError(
            f"--task masked-lm replaces tokens with a mask token, but the tokenizer ({type(tokenizer).__name__}) "
            "has none. Use the teacher's masked-LM tokenizer (--tokenizer_name)."
        )
    encoded, text = _texts(splits, args, tokenizer, MASKED_LM.name)
    masking = DataCollatorForLanguageModeling(tokenizer, mlm_probability=MLM_PROBABILITY, seed=EVAL_MASKING_SEED)
    rows = [masking([row]) for row in encoded["validation"]]  # one draw per row, in order: the same in every run
    evaluation = encoded["validation"].remove_columns("input_ids").add_column(
        "input_ids", [r["input_ids"][0].tolist() for r in rows]
    ).add_column("labels", [r["labels"][0].tolist() for r in rows])  # fmt: skip
    if not any(label != IGNORE_INDEX for r in rows for label in r["labels"][0].tolist()):
        raise ValueError(
            f"masking {MLM_PROBABILITY:.0%} of the evaluation set's tokens left none masked: it is too small to "
            "score. Give more or longer evaluation texts (--validation_file, --max_eval_samples)."
        )
    columns = {"text_column": text, "text_pair_column": None, "label_column": None}
    return TaskData(encoded["train"], evaluation, MaskedLMCollator(tokenizer), columns)
