"""The distillation loss terms, as pure tensor functions (torch only, no Trainer).

The total loss minimised by [`DistillationTrainer`] is, written once here:

    L = alpha * CE(s, y)
      + beta  * T^2 * KL( softmax(t / T) || softmax(s / T) )
      + gamma * L_attn(A_s, A_t)

* `CE` is the hard-label cross-entropy of the student logits `s` against the labels `y`.
* The soft-label term is Hinton et al. (2015), https://arxiv.org/abs/1503.02531: the KL divergence from the
  teacher's tempered distribution to the student's, multiplied by `T^2` so that its gradients keep the same scale
  whatever the temperature (TextBrewer and TinyBERT omit the `T^2`; their weights do not transfer).
* `L_attn` compares self-attention maps of mapped teacher/student layers, averaged over the mapped layers:
  `"mse"` is the mean squared error between head-averaged maps (the lab notebook's loss), `"kl"` is the KL
  divergence between per-head attention distributions of MiniLM, https://arxiv.org/abs/2002.10957.

Every function returns one value per example when `reduction="none"`, so that the trainer can sum over examples
and divide by the number of examples in the whole accumulated (and distributed) batch; this makes gradient
accumulation exact. Padded positions never contribute: attention terms are averaged over the valid
(query, key) entries of each example, so appending padding changes no term.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "attention_kl_loss",
    "attention_mse_loss",
    "hard_label_loss",
    "soft_label_loss",
]

IGNORE_INDEX = -100
_REDUCTIONS = ("none", "sum", "mean")


def _reduce(per_example: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "none":
        return per_example
    if reduction == "sum":
        return per_example.sum()
    if reduction == "mean":
        return per_example.mean() if per_example.numel() else per_example.sum()
    raise ValueError(f"`reduction` must be one of {_REDUCTIONS}, got {reduction!r}.")


def hard_label_loss(logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of the student against the hard labels.

    Args:
        logits (`torch.Tensor` of shape `(B, C)`): student logits.
        labels (`torch.Tensor` of shape `(B,)`): class indices; `-100` marks an example without a label.
        reduction (`str`, *optional*, defaults to `"mean"`): `"none"` (one value per example, 0 where unlabelled),
            `"sum"`, or `"mean"` over the labelled examples.

    >>> hard_label_loss(torch.tensor([[0.0, 0.0]]), torch.tensor([1]))
    tensor(0.6931)
    """
    per_example = F.cross_entropy(logits.float(), labels, reduction="none", ignore_index=IGNORE_INDEX)  # (B,)
    if reduction == "mean":
        return per_example.sum() / labels.ne(IGNORE_INDEX).sum().clamp_min(1)
    return _reduce(per_example, reduction)


def soft_label_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float, reduction: str = "mean"
) -> torch.Tensor:
    """Hinton's soft-label loss: `T^2 * KL(softmax(t / T) || softmax(s / T))`, computed in float32.

    Args:
        student_logits (`torch.Tensor` of shape `(B, C)`): student logits.
        teacher_logits (`torch.Tensor` of shape `(B, C)`): teacher logits (no gradient needed).
        temperature (`float`): the softmax temperature `T > 0`.
        reduction (`str`, *optional*, defaults to `"mean"`): `"none"`, `"sum"` or `"mean"` over examples.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher logits {tuple(teacher_logits.shape)} differ in "
            "shape: teacher and student must predict the same label set (check `num_labels`)."
        )
    student_log_probs = F.log_softmax(student_logits.float() / temperature, dim=-1)  # (B, C)
    teacher_log_probs = F.log_softmax(teacher_logits.float() / temperature, dim=-1)  # (B, C)
    kl = (teacher_log_probs.exp() * (teacher_log_probs - student_log_probs)).sum(dim=-1)  # (B,)
    return _reduce(kl * temperature**2, reduction)


def _valid_entries(attention_mask: torch.Tensor | None, probs: torch.Tensor) -> torch.Tensor:
    """Boolean (B, T, T) mask of the (query, key) pairs where both positions are real tokens."""
    batch, _, length, _ = probs.shape
    if attention_mask is None:
        return torch.ones(batch, length, length, dtype=torch.bool, device=probs.device)
    valid = attention_mask.to(device=probs.device).bool()  # (B, T)
    return valid[:, :, None] & valid[:, None, :]  # (B, T, T)


def attention_mse_loss(
    student_attentions: torch.Tensor,
    teacher_attentions: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """Mean squared error between head-averaged attention maps, over the valid (query, key) entries.

    Teacher and student may have different numbers of heads (the maps are averaged over heads first).

    Args:
        student_attentions (`torch.Tensor` of shape `(B, H_s, T, T)`): student attention probabilities.
        teacher_attentions (`torch.Tensor` of shape `(B, H_t, T, T)`): teacher attention probabilities.
        attention_mask (`torch.Tensor` of shape `(B, T)`, *optional*): 1 for real tokens, 0 for padding.
        reduction (`str`, *optional*, defaults to `"mean"`): `"none"`, `"sum"` or `"mean"` over examples.
    """
    _check_maps(student_attentions, teacher_attentions, same_heads=False)
    valid = _valid_entries(attention_mask, student_attentions)  # (B, T, T)
    diff = student_attentions.float().mean(dim=1) - teacher_attentions.float().mean(dim=1)  # (B, T, T)
    squared = diff.square().masked_fill(~valid, 0.0)
    per_example = squared.sum(dim=(1, 2)) / valid.sum(dim=(1, 2)).clamp_min(1)  # (B,)
    return _reduce(per_example, reduction)


def attention_kl_loss(
    student_attentions: torch.Tensor,
    teacher_attentions: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """MiniLM's attention transfer: `KL(A_t || A_s)` for every head and valid query row, averaged over both.

    Args:
        student_attentions (`torch.Tensor` of shape `(B, H, T, T)`): student attention probabilities.
        teacher_attentions (`torch.Tensor` of shape `(B, H, T, T)`): teacher attention probabilities, same `H`.
        attention_mask (`torch.Tensor` of shape `(B, T)`, *optional*): 1 for real tokens, 0 for padding.
        reduction (`str`, *optional*, defaults to `"mean"`): `"none"`, `"sum"` or `"mean"` over examples.
    """
    _check_maps(student_attentions, teacher_attentions, same_heads=True)
    valid = _valid_entries(attention_mask, student_attentions)[:, None]  # (B, 1, T, T)
    teacher = teacher_attentions.float()
    # Clamping only keeps the log finite; entries where the teacher has no mass contribute exactly 0.
    log_ratio = torch.log(teacher.clamp_min(1e-30)) - torch.log(student_attentions.float().clamp_min(1e-30))
    pointwise = torch.where(valid & (teacher > 0), teacher * log_ratio, torch.zeros_like(teacher))  # (B, H, T, T)
    row_kl = pointwise.sum(dim=-1)  # (B, H, T)
    valid_rows = valid.any(dim=-1).expand_as(row_kl)  # (B, H, T): real query positions
    per_example = (row_kl * valid_rows).sum(dim=(1, 2)) / valid_rows.sum(dim=(1, 2)).clamp_min(1)  # (B,)
    return _reduce(per_example, reduction)


def _check_maps(student: torch.Tensor, teacher: torch.Tensor, same_heads: bool) -> None:
    if student.dim() != 4 or teacher.dim() != 4:
        raise ValueError(
            f"attention maps must have shape (batch, heads, seq, seq); got {tuple(student.shape)} (student) and "
            f"{tuple(teacher.shape)} (teacher)."
        )
    if student.shape[0] != teacher.shape[0] or student.shape[2:] != teacher.shape[2:]:
        raise ValueError(
            f"student {tuple(student.shape)} and teacher {tuple(teacher.shape)} attention maps differ in batch or "
            "sequence length: both models must see the same tokenised batch."
        )
    if same_heads and student.shape[1] != teacher.shape[1]:
        raise ValueError(
            f"attention_loss='kl' compares heads one to one, but the student has {student.shape[1]} heads and the "
            f"teacher {teacher.shape[1]}. Use attention_loss='mse' (head-averaged maps) for different head counts."
        )
