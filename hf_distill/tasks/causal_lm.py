"""Causal language modelling (GPT-2, Llama, Qwen2): the next token, distilled per token.

Position `i` predicts token `i + 1`: the logits `(B, T, V)` are read where they are and the last position is simply
not distilled (no shifted copy is made); a position counts where the next label is not `-100` and both tokens are
real. The loss unit is the token. The teacher's outputs are cached as a top-k summary per token
(`hf_distill.teacher_cache`). The output projection may run inside the loss (`hf_distill.lm_head`). Metrics:
next-token `accuracy` and `perplexity`.
"""

from __future__ import annotations

from typing import Any

import torch

from .. import losses
from ..losses import token_hard_label_loss
from ..task_metrics import language_model_scores
from ..teacher_cache import TOP_K_PER_TOKEN
from .base import register_task, vocabulary_bound
from .token_level import TokenLevelTask

__all__ = ["CAUSAL_LM", "CausalLM"]


class CausalLM(TokenLevelTask):
    name = "causal-lm"
    auto_class = "AutoModelForCausalLM"
    class_suffixes = ("ForCausalLM", "LMHeadModel")
    label_bound = staticmethod(vocabulary_bound)  # the targets' ids are checked against it before training
    description = "causal language modelling: the next token (GPT-2, Llama, Qwen2)"
    pipeline_tag = "text-generation"
    teacher_cache = TOP_K_PER_TOKEN
    fuses_lm_head = True

    def next_token_targets(self, inputs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """The token each position predicts, and where that prediction is distilled, both `(B, T-1)`."""
        labels, attention_mask = inputs.get("labels"), inputs.get("attention_mask")
        targets = (labels if labels is not None else inputs["input_ids"])[:, 1:]
        valid = targets.ne(losses.IGNORE_INDEX)
        if attention_mask is not None:  # both the predicting and the predicted token are real
            valid = valid & attention_mask[:, 1:].bool() & attention_mask[:, :-1].bool()
        return targets, valid

    def distilled_positions(self, inputs: dict[str, Any]) -> torch.Tensor:
        """`(B, T-1)`: the positions whose next-token prediction is distilled."""
        return self.next_token_targets(inputs)[1]

    def token_targets(self, inputs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        targets, valid = self.next_token_targets(inputs)  # (B, T-1)
        targets = torch.nn.functional.pad(targets, (0, 1), value=losses.IGNORE_INDEX)  # (B, T)
        return targets, torch.nn.functional.pad(valid, (0, 1), value=False)

    def preprocess_predictions(self, logits, labels):
        """Argmax ids and the next-token cross-entropy (the last column has no target: 0)."""
        logits = logits[0] if isinstance(logits, (tuple, list)) else logits
        nll = token_hard_label_loss(logits[:, :-1], labels[:, 1:], reduction="none")
        return logits.argmax(dim=-1), torch.nn.functional.pad(nll, (0, 1))

    def compute_metrics(self, metrics, predictions, label_ids) -> dict[str, float]:
        return language_model_scores(*predictions, label_ids, shift=True)

    def prepare_data(self, splits, args, tokenizer, config, pair: bool = False, augment=None):
        """`sentence`/`text`, batched by `DataCollatorForLanguageModeling(mlm=False)`."""
        return _causal_lm(splits, args, tokenizer)


CAUSAL_LM = register_task(CausalLM())


# ---- data for the hf-distill command -----------------------------------------------------------------------------


def _causal_lm(splits, args, tokenizer):
    from transformers import DataCollatorForLanguageModeling

    from ..task_data import TaskData, _texts

    encoded, text = _texts(splits, args, tokenizer, CAUSAL_LM.name)
    if all(len(ids) < 2 for ids in encoded["validation"]["input_ids"]):
        raise ValueError("every evaluation text is shorter than 2 tokens: there is no next token to score.")
    columns = {"text_column": text, "text_pair_column": None, "label_column": None}
    return TaskData(encoded["train"], encoded["validation"], DataCollatorForLanguageModeling(tokenizer, mlm=False),
                    columns)  # fmt: skip
