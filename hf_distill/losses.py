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

Every function returns one value per example when `reduction="none"` (per token, `(B, T)`, for the token-level
ones), so that the trainer can sum over examples (or tokens) and divide by their number in the whole accumulated
(and distributed) batch; this makes gradient accumulation exact. Padded positions never contribute: attention
terms are averaged over the valid
(query, key) entries of each example, so appending padding changes no term.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .labels import IGNORE_INDEX
from .token_kd import token_output_loss

__all__ = [
    "attention_kl_loss",
    "attention_mse_loss",
    "attention_score_mse_loss",
    "hard_label_loss",
    "multi_label_hard_loss",
    "regression_loss",
    "sigmoid_soft_label_loss",
    "hidden_cosine_loss",
    "hidden_mse_loss",
    "relation_kl_loss",
    "position_soft_label_loss",
    "soft_label_loss",
    "token_hard_label_loss",
    "token_soft_label_loss",
]

_REDUCTIONS = ("none", "sum", "mean")


def _reduce(per_example: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "none":
        return per_example
    if reduction == "sum":
        return per_example.sum()
    if reduction == "mean":
        return per_example.mean() if per_example.numel() else per_example.sum()
    raise ValueError(f"`reduction` must be one of {_REDUCTIONS}, got {reduction!r}.")


def _check_same_shape(what: str, student: torch.Tensor, teacher: torch.Tensor, fix: str) -> None:
    if student.shape != teacher.shape:
        raise ValueError(
            f"student {what} {tuple(student.shape)} and teacher {what} {tuple(teacher.shape)} differ in shape: {fix}"
        )


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
    _check_same_shape("logits", student_logits, teacher_logits,
                      "teacher and student must predict the same label set (check `num_labels`).")  # fmt: skip
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
    batch, heads, length, _ = student_attentions.shape
    if attention_mask is None:
        valid = torch.ones(batch, length, dtype=torch.bool, device=student_attentions.device)
    else:
        valid = attention_mask.to(device=student_attentions.device).bool()  # (B, T)
    teacher = teacher_attentions.float().masked_fill(~valid[:, None, None, :], 0.0)  # (B, H, T, T): no padded keys
    # KL = sum_k t log t - sum_k t log s. Clamping only keeps the logs finite: where t = 0 the entry contributes
    # exactly 0 (and no gradient). The entropy term needs no gradient pass through the student.
    entropy = (teacher * teacher.clamp_min(1e-30).log()).sum(dim=-1)  # (B, H, T)
    cross = (teacher * student_attentions.float().clamp_min(1e-30).log()).sum(dim=-1)  # (B, H, T)
    valid_rows = valid[:, None, :].float()  # (B, 1, T): real query positions
    per_example = ((entropy - cross) * valid_rows).sum(dim=(1, 2)) / (valid_rows.sum(dim=(1, 2)) * heads).clamp_min(1)
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
            f"this attention loss compares heads one to one, but the student has {student.shape[1]} heads and the "
            f"teacher {teacher.shape[1]}. Use attention_loss='mse' (head-averaged maps) for different head counts."
        )


# ---- beyond the seed: the published attention and hidden-state terms ---------------------------------------------


def attention_score_mse_loss(
    student_scores: torch.Tensor,
    teacher_scores: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """TinyBERT's attention loss: MSE between per-head *pre-softmax* scores `Q K^T * scaling`, valid entries only.

    TinyBERT (Jiao et al., 2020, https://arxiv.org/abs/1909.10351) compares unnormalised scores, which keeps the
    gradient from vanishing where softmax saturates. Needs equal head counts.

    Args:
        student_scores (`torch.Tensor` of shape `(B, H, T, T)`): student attention scores before softmax.
        teacher_scores (`torch.Tensor` of shape `(B, H, T, T)`): teacher attention scores before softmax.
        attention_mask (`torch.Tensor` of shape `(B, T)`, *optional*): 1 for real tokens, 0 for padding.
        reduction (`str`, *optional*, defaults to `"mean"`): `"none"`, `"sum"` or `"mean"` over examples.
    """
    _check_maps(student_scores, teacher_scores, same_heads=True)
    valid = _valid_entries(attention_mask, student_scores)[:, None]  # (B, 1, T, T)
    squared = (student_scores.float() - teacher_scores.float()).square()
    squared = torch.where(valid, squared, torch.zeros_like(squared))  # masked scores may be -inf: drop, not scale
    per_example = squared.sum(dim=(1, 2, 3)) / (valid.sum(dim=(1, 2, 3)) * student_scores.shape[1]).clamp_min(1)
    return _reduce(per_example, reduction)


def _relation_log_probs(
    states: torch.Tensor, num_heads: int, attention_mask: torch.Tensor | None, causal: bool = False
) -> torch.Tensor:
    """log softmax(X_r X_r^T / sqrt(d_r)) for `num_heads` relation heads of `states` (B, T, D): (B, R, T, T)."""
    batch, length, width = states.shape
    if width % num_heads:
        raise ValueError(
            f"relation heads must divide the hidden width: {width} is not a multiple of num_relation_heads="
            f"{num_heads}. Choose a number of relation heads that divides both teacher and student widths."
        )
    head_dim = width // num_heads
    x = states.float().view(batch, length, num_heads, head_dim).transpose(1, 2)  # (B, R, T, d)
    scores = torch.matmul(x, x.transpose(-1, -2)) / head_dim**0.5  # (B, R, T, T)
    if attention_mask is not None:
        padded_keys = ~attention_mask.to(scores.device).bool()[:, None, None, :]
        scores = scores.masked_fill(padded_keys, torch.finfo(scores.dtype).min)
    if causal:  # a decoder's token relates only to itself and the tokens before it, as its attention does
        future = torch.ones(length, length, dtype=torch.bool, device=scores.device).triu(1)  # (T, T)
        scores = scores.masked_fill(future, torch.finfo(scores.dtype).min)
    return scores.log_softmax(dim=-1)


def relation_kl_loss(
    student_states: torch.Tensor,
    teacher_states: torch.Tensor,
    num_relation_heads: int,
    attention_mask: torch.Tensor | None = None,
    reduction: str = "mean",
    causal: bool = False,
) -> torch.Tensor:
    """Self-relation transfer: `KL(R_t || R_s)` with `R = softmax(X_r X_r^T / sqrt(d_r))` over relation heads.

    With `X` the queries, keys or values of a layer this is one of MiniLMv2's Q-Q, K-K, V-V relations
    (Wang et al., 2021, https://arxiv.org/abs/2012.15828); with the values and the attention head count it is
    MiniLM's value relation (https://arxiv.org/abs/2002.10957). The states are split into `num_relation_heads`
    relation heads of their own width, so teacher and student may differ in width and attention head count.

    Args:
        student_states (`torch.Tensor` of shape `(B, T, D_s)`): e.g. the student's query projections.
        teacher_states (`torch.Tensor` of shape `(B, T, D_t)`): the teacher's matching projections.
        num_relation_heads (`int`): relation heads `R`; must divide `D_s` and `D_t`.
        attention_mask (`torch.Tensor` of shape `(B, T)`, *optional*): 1 for real tokens, 0 for padding.
        reduction (`str`, *optional*, defaults to `"mean"`): `"none"`, `"sum"` or `"mean"` over examples.
        causal (`bool`, *optional*, defaults to `False`): for decoders, relate token `i` to tokens `j <= i` only,
            the tokens its attention sees.
    """
    if student_states.shape[:2] != teacher_states.shape[:2]:
        raise ValueError(
            f"student states {tuple(student_states.shape)} and teacher states {tuple(teacher_states.shape)} differ "
            "in batch or sequence length: both models must see the same tokenised batch."
        )
    student_log = _relation_log_probs(student_states, num_relation_heads, attention_mask, causal)  # (B, R, T, T)
    teacher_log = _relation_log_probs(teacher_states, num_relation_heads, attention_mask, causal)
    valid = _valid_entries(attention_mask, student_log)[:, None]  # (B, 1, T, T)
    if causal:
        valid = valid & ~torch.ones(valid.shape[-2:], dtype=torch.bool, device=valid.device).triu(1)
    pointwise = teacher_log.exp() * (teacher_log - student_log)
    row_kl = torch.where(valid, pointwise, torch.zeros_like(pointwise)).sum(dim=-1)  # (B, R, T)
    valid_rows = valid.any(dim=-1).expand_as(row_kl)
    per_example = (row_kl * valid_rows).sum(dim=(1, 2)) / valid_rows.sum(dim=(1, 2)).clamp_min(1)
    return _reduce(per_example, reduction)


def _valid_tokens(attention_mask: torch.Tensor | None, states: torch.Tensor) -> torch.Tensor:
    if attention_mask is None:
        return torch.ones(states.shape[:2], dtype=torch.bool, device=states.device)
    return attention_mask.to(states.device).bool()  # (B, T)


def hidden_mse_loss(
    student_hidden: torch.Tensor,
    teacher_hidden: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """TinyBERT's hidden-state (and embedding) loss: MSE over the valid tokens, averaged over the width.

    When the widths differ, project the student first (TinyBERT learns a linear map `W_h` trained with the
    student) and pass the projected states here.

    Args:
        student_hidden (`torch.Tensor` of shape `(B, T, D)`): (projected) student hidden states.
        teacher_hidden (`torch.Tensor` of shape `(B, T, D)`): teacher hidden states.
        attention_mask (`torch.Tensor` of shape `(B, T)`, *optional*): 1 for real tokens, 0 for padding.
        reduction (`str`, *optional*, defaults to `"mean"`): `"none"`, `"sum"` or `"mean"` over examples.
    """
    _check_same_shape("hidden states", student_hidden, teacher_hidden,
                      "project the student to the teacher's width first.")  # fmt: skip
    valid = _valid_tokens(attention_mask, student_hidden)  # (B, T)
    squared = (student_hidden.float() - teacher_hidden.float()).square().mean(dim=-1)  # (B, T)
    per_example = (squared * valid).sum(dim=1) / valid.sum(dim=1).clamp_min(1)
    return _reduce(per_example, reduction)


def hidden_cosine_loss(
    student_hidden: torch.Tensor,
    teacher_hidden: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """DistilBERT's cosine loss: `1 - cos(h_s, h_t)` per valid token, averaged over the example's tokens.

    Sanh et al., 2019, https://arxiv.org/abs/1910.01108 (applied to the last hidden layer; widths must match).
    """
    _check_same_shape("hidden states", student_hidden, teacher_hidden, "the cosine loss needs equal widths.")
    valid = _valid_tokens(attention_mask, student_hidden)
    cosine = F.cosine_similarity(student_hidden.float(), teacher_hidden.float(), dim=-1)  # (B, T)
    per_example = ((1 - cosine) * valid).sum(dim=1) / valid.sum(dim=1).clamp_min(1)
    return _reduce(per_example, reduction)


# ---- token- and position-level outputs: token classification, language models, extractive QA ---------------------


def token_hard_label_loss(logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy per token, for token classification and language modelling; `-100` labels are ignored.

    Args:
        logits (`torch.Tensor` of shape `(B, T, C)`): student logits, one distribution per position.
        labels (`torch.Tensor` of shape `(B, T)`): class (or token) ids; `-100` marks a position without a label.
        reduction (`str`, *optional*, defaults to `"mean"`): `"none"` gives `(B, T)` (0 at ignored positions),
            `"sum"` the sum, `"mean"` the mean over the labelled *tokens* of the whole batch (not per sequence).

    >>> token_hard_label_loss(torch.zeros(1, 2, 2), torch.tensor([[1, -100]]))
    tensor(0.6931)
    """
    flat_logits, flat_labels = logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1)  # no strided softmax
    per_token = F.cross_entropy(flat_logits, flat_labels, reduction="none", ignore_index=IGNORE_INDEX)
    per_token = per_token.view(labels.shape)
    if reduction == "mean":
        return per_token.sum() / labels.ne(IGNORE_INDEX).sum().clamp_min(1)
    return per_token if reduction == "none" else _reduce(per_token, reduction)


def token_soft_label_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    mask: torch.Tensor,
    temperature: float,
    reduction: str = "mean",
) -> torch.Tensor:
    """Hinton's soft-label loss at every distilled position: `T^2 * KL(softmax(t / T) || softmax(s / T))`.

    Only the positions where `mask` is true are computed (the softmax over a large vocabulary runs on those rows
    alone, a chunk of rows at a time in forward and backward, so the extra memory stays bounded whatever the
    number of tokens), and `"mean"` divides by their number: the loss is per token, so it does not grow with
    sequence length or shrink with padding (`kl_div(reduction="batchmean")` on `(B, T, V)` divides by `B` only).
    The teacher's logits get no gradient.

    Args:
        student_logits (`torch.Tensor` of shape `(B, T, V)`): student logits.
        teacher_logits (`torch.Tensor` of shape `(B, T, V)`): teacher logits.
        mask (`torch.Tensor` of shape `(B, T)`): true at the positions to distil (e.g. `labels != -100` and real
            tokens).
        temperature (`float`): the softmax temperature `T > 0`.
        reduction (`str`, *optional*, defaults to `"mean"`): `"none"` gives `(B, T)` (0 where `mask` is false),
            `"sum"` the sum, `"mean"` the mean over the distilled tokens of the whole batch.
    """
    _check_same_shape("logits", student_logits, teacher_logits, "teacher and student must share the label set "
                      "(token classification) or the vocabulary (language models).")  # fmt: skip
    mask = mask.to(student_logits.device).bool()
    terms = token_output_loss(student_logits, teacher_logits, None, mask, temperature, kd_weight=1.0, ce_weight=0.0)
    if reduction == "mean":
        return terms.objective / mask.sum().clamp_min(1)
    if reduction == "sum":
        return terms.objective
    if reduction != "none":
        raise ValueError(f"`reduction` must be one of {_REDUCTIONS}, got {reduction!r}.")
    return terms.kd  # (B, T), with the gradient of each token's own term


def position_soft_label_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    attention_mask: torch.Tensor | None,
    temperature: float,
    reduction: str = "mean",
) -> torch.Tensor:
    """Soft-label loss over *positions*: extractive QA's start (or end) distribution over the tokens of each example.

    Padded positions are removed from both softmaxes, so padding changes nothing.

    Args:
        student_logits (`torch.Tensor` of shape `(B, T)`): student start (or end) logits.
        teacher_logits (`torch.Tensor` of shape `(B, T)`): teacher start (or end) logits.
        attention_mask (`torch.Tensor` of shape `(B, T)`, *optional*): 1 for real tokens, 0 for padding.
        temperature (`float`): the softmax temperature `T > 0`.
        reduction (`str`, *optional*, defaults to `"mean"`): `"none"`, `"sum"` or `"mean"` over examples.
    """
    _check_same_shape("logits", student_logits, teacher_logits, "both models must see the same tokenised batch.")
    valid = _valid_tokens(attention_mask, student_logits)  # (B, T)
    student_log = (student_logits.float() / temperature).masked_fill(~valid, float("-inf")).log_softmax(dim=-1)
    teacher_log = (teacher_logits.float() / temperature).masked_fill(~valid, float("-inf")).log_softmax(dim=-1)
    pointwise = teacher_log.exp() * (teacher_log - student_log)
    kl = torch.where(valid, pointwise, torch.zeros_like(pointwise)).sum(dim=-1)  # (B,): padded positions dropped
    return _reduce(kl * temperature**2, reduction)


# ---- regression and multi-label heads (problem_type "regression" / "multi_label_classification") ---------------


def regression_loss(predictions: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Squared error of a regression head, `mean_j (s_j - y_j)^2` per example, in float32 (no temperature).

    The hard-label term (`y` the labels) and the soft-label term (`y` the teacher's predictions, as in DistilBERT's
    STS-B runs) of `problem_type="regression"`.

    Args:
        predictions (`torch.Tensor` of shape `(B, K)`): the student's outputs (`K = num_labels`, usually 1).
        targets (`torch.Tensor` of shape `(B, K)`, or `(B,)` when `K = 1`): labels or the teacher's outputs.
        reduction (`str`, *optional*, defaults to `"mean"`): `"none"`, `"sum"` or `"mean"` over examples.
    """
    if targets.numel() != predictions.numel() or targets.shape[0] != predictions.shape[0]:
        raise ValueError(
            f"regression targets of shape {tuple(targets.shape)} do not match the predictions' "
            f"{tuple(predictions.shape)}: give one float per example and output (num_labels={predictions.shape[-1]})."
        )
    diff = predictions.float().reshape(predictions.shape[0], -1) - targets.float().reshape(targets.shape[0], -1)
    return _reduce(diff.square().mean(dim=-1), reduction)  # (B,)


def sigmoid_soft_label_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float, reduction: str = "mean"
) -> torch.Tensor:
    """Per-label sigmoid KD for multi-label heads: Hinton's `T^2`-scaled KL, one Bernoulli distribution per label.

    With `p = sigmoid(t_j / T)` and `q = sigmoid(s_j / T)` for each of the `L` labels:

        loss = T^2 * (1 / L) * sum_j [ p log(p / q) + (1 - p) log((1 - p) / (1 - q)) ]

    per example: the binary KL from the teacher's tempered label probability to the student's, averaged over the
    labels. It differs from the BCE against soft targets only by the teacher's entropy (a constant), so it has the
    same gradients and is 0 when the student matches the teacher. Computed in float32 from `logsigmoid`.

    Args:
        student_logits (`torch.Tensor` of shape `(B, L)`): student logits.
        teacher_logits (`torch.Tensor` of shape `(B, L)`): teacher logits (no gradient needed).
        temperature (`float`): the temperature `T > 0`.
        reduction (`str`, *optional*, defaults to `"mean"`): `"none"`, `"sum"` or `"mean"` over examples.
    """
    _check_same_shape("logits", student_logits, teacher_logits,
                      "teacher and student must predict the same labels (check `num_labels`).")  # fmt: skip
    s, t = student_logits.float() / temperature, teacher_logits.float() / temperature  # (B, L)
    p = torch.sigmoid(t)
    kl = p * (F.logsigmoid(t) - F.logsigmoid(s)) + (1 - p) * (F.logsigmoid(-t) - F.logsigmoid(-s))  # (B, L)
    return _reduce(kl.mean(dim=-1) * temperature**2, reduction)


def multi_label_hard_loss(logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Binary cross-entropy of each label's sigmoid against multi-hot targets, averaged over the labels per example.

    Args:
        logits (`torch.Tensor` of shape `(B, L)`): student logits.
        labels (`torch.Tensor` of shape `(B, L)`): 0/1 (or soft, in `[0, 1]`) targets, any numeric dtype.
        reduction (`str`, *optional*, defaults to `"mean"`): `"none"`, `"sum"` or `"mean"` over examples.
    """
    if labels.shape != logits.shape:
        raise ValueError(
            f"multi-label targets of shape {tuple(labels.shape)} do not match the logits' {tuple(logits.shape)}: give "
            f"each example a multi-hot vector of num_labels={logits.shape[-1]} floats."
        )
    bce = F.binary_cross_entropy_with_logits(logits.float(), labels.float(), reduction="none")  # (B, L)
    return _reduce(bce.mean(dim=-1), reduction)
