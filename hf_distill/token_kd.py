"""Token-level output terms (per-token KD and cross-entropy) at the cost of one pass over the logits.

Causal and masked language models distil `N` rows of `V` logits per step (GPT-2: `V = 50,257`). Written with
autograd, `T^2 * KL(softmax(t / T) || softmax(s / T))` plus a cross-entropy keeps two float32 log-softmaxes per
term for the backward pass and walks the `(N, V)` logits a dozen times. Here each chunk of a few rows is read
once into the cache and everything is computed from it while it is there:

* one `log_softmax` of the student (at `T`; at `T = 1` the cross-entropy shares it), one of the teacher;
* the per-row KL and cross-entropy, and, when gradients are wanted, the gradient of the *weighted* objective
  `sum_rows kd_weight * T^2 * KL + ce_weight * CE` with respect to the logits, which is
  `kd_weight * T * (softmax(s / T) - softmax(t / T)) + ce_weight * (softmax(s) - onehot(y))`.

The forward therefore stores only that gradient (in the logits' dtype) and the backward scales it by the
incoming scalar: no log-softmax is kept, nothing is recomputed, and the teacher's logits may be freed as soon
as the forward is done. A term whose weight is 0 adds nothing to the gradient; the cross-entropy is computed
only when asked for (`labels` given).

`fused_token_output_loss` goes one step further (the idea of Liger-Kernel's fused linear cross-entropy): it
takes the hidden states and the output projection (`lm_head`) instead of the logits and computes each chunk's
logits, terms and gradients (for the hidden states, the weight and the bias) chunk by chunk, so the student's
`(N, V)` logits never exist at once; the teacher's may be given the same way (`ProjectedLogits`), as logits, or
as a top-k cache (`TopKTeacher`).

With a top-k teacher (k kept classes per row plus the mass of the others, see `hf_distill.teacher_cache`) the
KD term is the KL divergence between the two distributions over `k + 1` buckets, the k kept classes and one tail
bucket holding everything else:

    KL_k = sum_{j in K} q_j log(q_j / p_j) + q_tail log(q_tail / p_tail),   p_tail = 1 - sum_{j in K} p_j

By the chain rule of the KL divergence, `KL = KL_k + q_tail * KL(q | tail || p | tail)`, so `0 <= KL - KL_k`
and the two are equal when `k = V` (or when the student's tail is shaped like the teacher's). Its gradient with
respect to `s / T` is `p - q~`, where `q~` is the teacher's probability on the kept classes and, on the tail, the
teacher's tail mass spread in proportion to the student's own tail probabilities.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F

__all__ = [
    "ProjectedLogits",
    "TokenTerms",
    "TopKTeacher",
    "fused_token_output_loss",
    "token_output_loss",
    "top_k_teacher",
]

# float32 elements per chunk and intra-op thread: small enough that a chunk's few temporaries stay in the CPU's
# caches (measured: 2x faster than whole-tensor passes), large enough that the per-chunk Python overhead stays
# small. The fused path multiplies matrices per chunk: bigger chunks, and at least `_FUSED_MIN_ROWS` rows, because
# every chunk adds its `(V, D)` contribution to the weight's gradient: with 32 rows a 256k vocabulary spent more time
# streaming that gradient through memory than computing (measured: 7.8 s against 5.5 s with 131 rows, 1,024 tokens).
_CHUNK_ELEMENTS = 1 << 17
_FUSED_CHUNK_ELEMENTS = 1 << 23
_FUSED_MIN_ROWS = 128


@dataclass(frozen=True)
class TopKTeacher:
    """A teacher distribution kept as its k most probable classes plus the mass of the rest (all at temperature T).

    Args:
        indices (`torch.Tensor` of shape `(..., k)`): the kept classes.
        log_probs (`torch.Tensor` of shape `(..., k)`): `log softmax(t / T)` at those classes.
        tail_log_prob (`torch.Tensor` of shape `(...)`): log of the probability of all other classes (`-inf` if none).
    """

    indices: torch.Tensor
    log_probs: torch.Tensor
    tail_log_prob: torch.Tensor

    def rows(self, index: torch.Tensor | slice) -> TopKTeacher:
        flat = (self.indices.flatten(0, -2), self.log_probs.flatten(0, -2), self.tail_log_prob.reshape(-1))
        return TopKTeacher(*(x[index] for x in flat))


@dataclass(frozen=True)
class ProjectedLogits:
    """Logits given by hidden states and their output projection, `hidden @ weight.T + bias`, never computed whole."""

    hidden: torch.Tensor  # (..., D_t)
    weight: torch.Tensor  # (V, D_t)
    bias: torch.Tensor | None = None


Teacher = torch.Tensor | TopKTeacher | ProjectedLogits | None


class TokenTerms(NamedTuple):
    """`objective`: `sum kd_weight * KD + ce_weight * CE` over the distilled tokens (carries the gradient);
    `kd`, `ce`: per-token values `(B, T)` (0 where not distilled), detached, or `None` where not computed."""

    objective: torch.Tensor
    kd: torch.Tensor | None
    ce: torch.Tensor | None


def top_k_teacher(teacher_logits: torch.Tensor, k: int, temperature: float) -> TopKTeacher:
    """The top-k summary of teacher logits `(..., V)` at temperature `T` (what the teacher-output cache stores)."""
    if not 1 <= k <= teacher_logits.shape[-1]:
        raise ValueError(f"`k` must be between 1 and the vocabulary size {teacher_logits.shape[-1]}, got {k}.")
    log_q = torch.log_softmax(teacher_logits.float() / temperature, dim=-1)
    log_probs, indices = log_q.topk(k, dim=-1)
    tail = log_q.scatter(-1, indices, float("-inf")).logsumexp(dim=-1)  # exact, -inf when k = V
    return TopKTeacher(indices, log_probs, tail)


# ---- one chunk of rows --------------------------------------------------------------------------------------------


def _chunk_terms(student, teacher, targets, temperature, kd_weight, ce_weight, want_grad):
    """Terms of a chunk of rows and, if `want_grad`, the gradient of the weighted objective w.r.t. the logits.

    `student`: `(c, V)` float32 logits; `teacher`: `(c, V)` logits, a `TopKTeacher` chunk or None; `targets`: `(c,)`.
    """
    log_p = torch.log_softmax(student if temperature == 1 else student / temperature, dim=-1)  # (c, V)
    kl = ce = grad = None
    if targets is not None:
        log_p1 = log_p if temperature == 1 else torch.log_softmax(student, dim=-1)
        ce = -log_p1.gather(1, targets[:, None]).squeeze(1)
    kd_grad = want_grad and teacher is not None and kd_weight != 0
    if isinstance(teacher, TopKTeacher):
        kl, tail_ratio = _top_k_kl(log_p, teacher)
    elif teacher is not None:
        log_q = torch.log_softmax(teacher if temperature == 1 else teacher / temperature, dim=-1)
        kl = F.kl_div(log_p, log_q, reduction="none", log_target=True).sum(dim=-1)
    if kl is not None:
        kl = kl * temperature**2
    if not want_grad:
        return kl, ce, None
    # d(kd_weight T^2 KL)/ds = kd_weight T (p - q); d(ce_weight CE)/ds = ce_weight (p_1 - onehot)
    kd_scale = kd_weight * temperature if kd_grad else 0.0
    ce_grad = targets is not None and ce_weight != 0
    shared = ce_grad and temperature == 1  # p_1 is p: one exp for both terms
    grad = log_p.exp_()  # p, in place of log_p (no longer needed)
    ce_shared = ce_weight if shared else 0.0
    if isinstance(teacher, TopKTeacher):  # p - q~: the tail takes the teacher's tail mass in proportion to p
        p_kept = grad.gather(1, teacher.indices)  # (c, k)
        grad.mul_((1 - tail_ratio)[:, None] * kd_scale + ce_shared)
        kept = (p_kept - teacher.log_probs.exp()) * kd_scale + p_kept * ce_shared
        grad.scatter_(1, teacher.indices, kept)
    else:
        grad.mul_(kd_scale + ce_shared)
        if kd_grad:
            grad.sub_(log_q.exp_().mul_(kd_scale))
    if ce_grad:
        if not shared:
            grad.add_(torch.softmax(student, dim=-1), alpha=ce_weight)
        grad.scatter_add_(1, targets[:, None], grad.new_full((grad.shape[0], 1), -ce_weight))
    return kl, ce, grad


def _top_k_kl(log_p: torch.Tensor, teacher: TopKTeacher) -> tuple[torch.Tensor, torch.Tensor]:
    """`KL_k` over the k kept classes and one tail bucket (module docstring), and `q_tail / p_tail` per row."""
    log_q, log_q_tail = teacher.log_probs.float(), teacher.tail_log_prob.float()  # (c, k), (c,)
    log_p_kept = log_p.gather(1, teacher.indices)  # (c, k)
    log_p_tail = log_p.scatter(1, teacher.indices, float("-inf")).logsumexp(dim=-1)  # (c,)
    has_tail = log_q_tail > float("-inf")
    tail = torch.where(has_tail, log_q_tail.exp() * (log_q_tail - log_p_tail), 0.0)
    kl = (log_q.exp() * (log_q - log_p_kept)).sum(dim=-1) + tail
    return kl, torch.where(has_tail, (log_q_tail - log_p_tail).exp(), 0.0)


def _teacher_rows(teacher: Teacher, index: torch.Tensor | slice):
    if teacher is None:
        return None
    if isinstance(teacher, TopKTeacher):
        chunk = teacher.rows(index)
        return TopKTeacher(chunk.indices.long(), chunk.log_probs.float(), chunk.tail_log_prob.float())
    if isinstance(teacher, ProjectedLogits):
        hidden = teacher.hidden.reshape(-1, teacher.hidden.shape[-1])[index]
        return F.linear(hidden, teacher.weight, teacher.bias).float()
    return teacher.reshape(-1, teacher.shape[-1])[index].float()


def _row_chunks(valid: torch.Tensor, width: int, elements: int):
    """Chunks of the distilled rows of a flat `(N, width)` tensor: `(index, keep)` pairs.

    Where most rows are distilled (causal LM) the chunks are slices of all rows (no copies) and `keep` (float, 0 or
    1 per row) drops the others; where few are (masked LM) they are index tensors of distilled rows, `keep` None.
    """
    step = max(1, elements // max(1, width))
    rows = valid.nonzero().squeeze(1)
    if 2 * rows.numel() >= valid.numel():
        keep = valid.float()
        for start in range(0, valid.numel(), step):
            part = slice(start, min(start + step, valid.numel()))
            yield part, keep[part]
    else:
        for start in range(0, rows.numel(), step):
            yield rows[start : start + step], None


# ---- the two autograd Functions -------------------------------------------------------------------------------------


class _TokenOutputLoss(torch.autograd.Function):
    """`(objective, kl, ce)` of the `valid` rows of `(N, V)` logits; the gradient is computed in forward."""

    @staticmethod
    def forward(ctx, student, teacher, targets, valid, temperature, kd_weight, ce_weight):
        want_grad = ctx.needs_input_grad[0]
        values = [torch.zeros(valid.shape[0], device=student.device) for _ in range(2)]  # kl, ce per row
        # (N, V), float32 so that the backward's scaling rounds once to the logits' dtype; rows not distilled get
        # no gradient
        grad = torch.zeros_like(student, dtype=torch.float32) if want_grad else None
        ctx.dtype = student.dtype
        objective = torch.zeros((), device=student.device)
        chunk_elements = _CHUNK_ELEMENTS * torch.get_num_threads()
        for index, keep in _row_chunks(valid, student.shape[-1], chunk_elements):
            kl, ce, chunk_grad = _chunk_terms(
                student[index].float(), _teacher_rows(teacher, index),
                None if targets is None else targets[index], temperature, kd_weight, ce_weight, want_grad,
            )  # fmt: skip
            objective += _weighted(kl, ce, kd_weight, ce_weight, values, index, keep)
            if want_grad:
                grad[index] = chunk_grad if keep is None else chunk_grad.mul_(keep[:, None])
        ctx.grad = grad
        kl, ce = values
        # A per-row output is differentiable when it alone carries the gradient (its row's gradient is then the
        # stored one divided by its weight); otherwise only the objective is.
        kd_alone = teacher is not None and kd_weight != 0 and (targets is None or ce_weight == 0)
        ce_alone = targets is not None and ce_weight != 0 and (teacher is None or kd_weight == 0)
        ctx.row_scales = (1 / kd_weight if kd_alone else None, 1 / ce_weight if ce_alone else None)
        ctx.mark_non_differentiable(*(v for v, scale in zip(values, ctx.row_scales) if scale is None))
        return objective, kl, ce

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_objective, grad_kl, grad_ce):
        grad, ctx.grad = ctx.grad, None
        if grad is None:
            raise RuntimeError("the token loss's backward ran twice: its gradient is computed once, in forward.")
        factor = grad_objective
        for grad_rows, scale in zip((grad_kl, grad_ce), ctx.row_scales):
            if scale is not None and grad_rows is not None:
                factor = factor + grad_rows[:, None] * scale  # (N, 1)
        return grad.mul_(factor).to(ctx.dtype), None, None, None, None, None, None


class _FusedLinearTokenLoss(torch.autograd.Function):
    """`_TokenOutputLoss` over `hidden @ weight.T + bias`, a chunk of rows at a time: the logits never exist whole."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, teacher, targets, valid, temperature, kd_weight, ce_weight):
        want_grad = any(ctx.needs_input_grad[:3])
        values = [torch.zeros(valid.shape[0], device=hidden.device) for _ in range(2)]
        grad_hidden = torch.zeros_like(hidden) if want_grad else None
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if want_grad else None
        grad_bias = torch.zeros(weight.shape[0], device=hidden.device) if want_grad and bias is not None else None
        objective = torch.zeros((), device=hidden.device)
        step = max(1, _CHUNK_ELEMENTS * torch.get_num_threads() // weight.shape[0])
        block_elements = max(_FUSED_CHUNK_ELEMENTS, _FUSED_MIN_ROWS * weight.shape[0])
        for index, keep in _row_chunks(valid, weight.shape[0], block_elements):
            inputs = hidden[index]  # (c, D)
            block = F.linear(inputs, weight, bias).float()  # (c, V): the only logits in memory
            teacher_block = _teacher_rows(teacher, index)
            targets_block = None if targets is None else targets[index]
            for start in range(0, block.shape[0], step):  # cache-sized rows, as in _TokenOutputLoss
                sub = slice(start, start + step)
                kl, ce, chunk_grad = _chunk_terms(
                    block[sub], _sub_rows(teacher_block, sub), None if targets_block is None else targets_block[sub],
                    temperature, kd_weight, ce_weight, want_grad,
                )  # fmt: skip
                part_keep = None if keep is None else keep[sub]
                objective += _weighted(kl, ce, kd_weight, ce_weight, values, _sub_index(index, sub), part_keep)
                if want_grad:  # the block's logits become its gradient, in place
                    block[sub] = chunk_grad if part_keep is None else chunk_grad.mul_(part_keep[:, None])
            if want_grad:
                grad_hidden[index] = (block.to(weight.dtype) @ weight).to(hidden.dtype)
                grad_weight.addmm_(block.T, inputs.float())  # (V, D)
                if grad_bias is not None:
                    grad_bias += block.sum(dim=0)
            del block
        ctx.grads, ctx.weight_dtype = (grad_hidden, grad_weight, grad_bias), weight.dtype
        kl, ce = values
        ctx.mark_non_differentiable(kl, ce)
        return objective, kl, ce

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_objective, _grad_kl, _grad_ce):
        grads, ctx.grads = ctx.grads, None
        if grads is None:
            raise RuntimeError("the fused token loss's backward ran twice: its gradient is computed once, in forward.")
        grad_hidden, grad_weight, grad_bias = (None if g is None else g.mul_(grad_objective) for g in grads)
        if grad_weight is not None:
            grad_weight = grad_weight.to(ctx.weight_dtype)
        return grad_hidden, grad_weight, grad_bias, None, None, None, None, None, None


def _sub_rows(teacher, sub: slice):
    if teacher is None or isinstance(teacher, torch.Tensor):
        return None if teacher is None else teacher[sub]
    return TopKTeacher(teacher.indices[sub], teacher.log_probs[sub], teacher.tail_log_prob[sub])


def _sub_index(index: torch.Tensor | slice, sub: slice) -> torch.Tensor | slice:
    """Rows `sub` of the rows `index` of the flat tensor."""
    if isinstance(index, slice):
        return slice(index.start + sub.start, min(index.start + sub.stop, index.stop))
    return index[sub]


def _weighted(kl, ce, kd_weight, ce_weight, values, index, keep) -> torch.Tensor:
    """Store a chunk's per-row values (0 on rows not distilled) and return its contribution to the objective."""
    total = torch.zeros((), device=values[0].device)
    for slot, term, weight in ((0, kl, kd_weight), (1, ce, ce_weight)):
        if term is not None:
            term = term if keep is None else term * keep
            values[slot][index] = term
            total = total + weight * term.sum()
    return total


# ---- public functions ---------------------------------------------------------------------------------------------


def _prepare(mask: torch.Tensor, labels: torch.Tensor | None, device: torch.device):
    """The flat `(N,)` distilled-row mask and targets (0 where not distilled, so that any row can be gathered)."""
    mask = mask.to(device).bool()
    valid = mask.reshape(-1)
    targets = None
    if labels is not None:
        targets = labels.to(device).reshape(-1).long().masked_fill(~valid, 0)
    return mask, valid, targets


def _per_token(values: torch.Tensor, mask: torch.Tensor, computed: bool) -> torch.Tensor | None:
    return values.view(mask.shape) if computed else None


def token_output_loss(
    student_logits: torch.Tensor,
    teacher: Teacher,
    labels: torch.Tensor | None,
    mask: torch.Tensor,
    temperature: float,
    kd_weight: float = 1.0,
    ce_weight: float = 1.0,
) -> TokenTerms:
    """Per-token KD (`T^2 KL(softmax(t/T) || softmax(s/T))`) and cross-entropy at the `mask` positions, in one pass.

    Args:
        student_logits (`torch.Tensor` of shape `(B, T, V)`): student logits (any float dtype).
        teacher (`torch.Tensor` of shape `(B, T, V)`, `TopKTeacher`, `ProjectedLogits` or `None`): the teacher's
            logits or their top-k summary; `None` computes no KD term.
        labels (`torch.Tensor` of shape `(B, T)`, *optional*): target ids, read at the `mask` positions only; `None`
            computes no cross-entropy.
        mask (`torch.Tensor` of shape `(B, T)`): true at the distilled positions.
        temperature (`float`): the softmax temperature `T > 0` of the KD term (the cross-entropy is at 1).
        kd_weight, ce_weight (`float`, *optional*, default to 1): the weights of the two terms in `objective`.

    Returns:
        [`TokenTerms`]: `objective = sum over the masked tokens of kd_weight * KD + ce_weight * CE`, with its
        gradient, and the per-token `kd` and `ce` (detached; `None` where not computed).
    """
    if teacher is not None and isinstance(teacher, torch.Tensor) and teacher.shape != student_logits.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher logits {tuple(teacher.shape)} differ in shape: "
            "teacher and student must share the label set (token classification) or the vocabulary (language models)."
        )
    mask, valid, targets = _prepare(mask, labels, student_logits.device)
    if isinstance(teacher, torch.Tensor):
        teacher = teacher.detach()
    flat = student_logits.reshape(-1, student_logits.shape[-1])
    objective, kl, ce = _TokenOutputLoss.apply(
        flat, teacher, targets, valid, float(temperature), float(kd_weight), float(ce_weight)
    )
    return TokenTerms(objective, _per_token(kl, mask, teacher is not None), _per_token(ce, mask, labels is not None))


def fused_token_output_loss(
    hidden_states: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    teacher: Teacher,
    labels: torch.Tensor | None,
    mask: torch.Tensor,
    temperature: float,
    kd_weight: float = 1.0,
    ce_weight: float = 1.0,
) -> TokenTerms:
    """`token_output_loss` of the logits `hidden_states @ weight.T + bias`, without ever holding them whole.

    Args:
        hidden_states (`torch.Tensor` of shape `(B, T, D)`): the student's input to its output projection.
        weight (`torch.Tensor` of shape `(V, D)`), bias (`torch.Tensor` of shape `(V,)` or `None`): the projection.
        teacher, labels, mask, temperature, kd_weight, ce_weight: as in [`token_output_loss`].

    Returns:
        [`TokenTerms`], with gradients for `hidden_states`, `weight` and `bias` equal to the unfused path's.
    """
    mask, valid, targets = _prepare(mask, labels, hidden_states.device)
    flat = hidden_states.reshape(-1, hidden_states.shape[-1])
    if isinstance(teacher, torch.Tensor):
        teacher = teacher.detach()
    objective, kl, ce = _FusedLinearTokenLoss.apply(
        flat, weight, bias, teacher, targets, valid, float(temperature), float(kd_weight), float(ce_weight)
    )
    return TokenTerms(objective, _per_token(kl, mask, teacher is not None), _per_token(ce, mask, labels is not None))
