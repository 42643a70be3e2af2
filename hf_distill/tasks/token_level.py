"""What the per-token tasks share: one loss unit per distilled token, CE and KD from one log-softmax per chunk.

Token-level terms are summed over the distilled tokens of the whole accumulated batch and divided by their number
(see `hf_distill.token_kd`), so a long sequence weighs as much per token as a short one and padding changes nothing.
"""

from __future__ import annotations

from typing import Any

import torch

from .. import losses, token_kd
from .base import Task, Terms

__all__ = ["TokenLevelTask"]


class TokenLevelTask(Task):
    """A task whose loss units are tokens: `labels != -100` and not padding, unless a subclass says otherwise."""

    per_token = True

    def distilled_positions(self, inputs: dict[str, Any]) -> torch.Tensor:
        """The `(B, T)` boolean mask of the positions that are distilled."""
        attention_mask, labels = inputs.get("attention_mask"), inputs.get("labels")
        if labels is None:
            valid = torch.ones_like(inputs["input_ids"], dtype=torch.bool)
        else:
            valid = labels.ne(losses.IGNORE_INDEX)
        if attention_mask is not None:
            valid = valid & attention_mask.bool()
        return valid

    def token_targets(self, inputs: dict[str, Any]) -> tuple[torch.Tensor | None, torch.Tensor]:
        """`(targets, valid)`, both aligned with the logits' `(B, T)`: each position's target and whether it counts."""
        return inputs.get("labels"), self.distilled_positions(inputs)

    def units_per_example(self, inputs: dict[str, Any]) -> torch.Tensor:
        return self.distilled_positions(inputs).sum(dim=1)

    def output_terms(self, student, teacher, inputs, temperature, weights, training) -> tuple[Terms, torch.Tensor]:
        """KD and CE from one log-softmax per chunk of distilled rows (`hf_distill.token_kd`); the student's logits
        may be a `ProjectedLogits` (the fused LM head) and the teacher's a cached `TopKTeacher`."""
        targets, valid = self.token_targets(inputs)
        labelled = self.has_labels(inputs)
        want_ce = labelled and (weights["loss_ce"] > 0 or not training or temperature == 1)
        if isinstance(teacher, tuple):
            teacher = teacher[0]
        if isinstance(student, token_kd.ProjectedLogits):
            projection = student
            result = token_kd.fused_token_output_loss(
                projection.hidden, projection.weight, projection.bias, teacher, targets if want_ce else None, valid,
                temperature, kd_weight=weights["loss_kd"], ce_weight=weights["loss_ce"],
            )  # fmt: skip
        else:
            result = token_kd.token_output_loss(
                student[0], teacher, targets if want_ce else None, valid, temperature,
                kd_weight=weights["loss_kd"], ce_weight=weights["loss_ce"],
            )  # fmt: skip
        counts = valid.sum(dim=1)
        terms: Terms = {}
        if result.ce is not None:
            terms["loss_ce"] = (result.ce.sum(dim=1), counts)
        if result.kd is not None:
            terms["loss_kd"] = (result.kd.sum(dim=1), counts)
        return terms, result.objective
