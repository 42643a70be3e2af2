"""The published terms beyond the seed (TinyBERT, MiniLM/MiniLMv2 relations, DistilBERT cosine) vs references."""

import math

import pytest
import torch

from hf_distill.losses import (
    attention_score_mse_loss,
    hidden_cosine_loss,
    hidden_mse_loss,
    position_soft_label_loss,
    relation_kl_loss,
    token_hard_label_loss,
    token_soft_label_loss,
)


def _mask(lengths, length):
    mask = torch.zeros(len(lengths), length, dtype=torch.long)
    for b, n in enumerate(lengths):
        mask[b, :n] = 1
    return mask


def _softmax(row):
    top = max(row)
    exps = [math.exp(x - top) for x in row]
    return [e / sum(exps) for e in exps]


def _kl(p, q):
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q) if pi > 0)


def test_score_mse_hand_computed_and_ignores_masked_minus_infinity():
    student = torch.tensor([[[[1.0, 2.0], [0.0, 0.0]]]])
    teacher = torch.tensor([[[[0.0, 0.0], [1.0, 1.0]]]])
    assert attention_score_mse_loss(student, teacher).item() == pytest.approx((1 + 4 + 1 + 1) / 4)
    padded_s = torch.full((1, 1, 3, 3), float("-inf"))
    padded_t = torch.full((1, 1, 3, 3), float("-inf"))
    padded_s[..., :2, :2], padded_t[..., :2, :2] = student, teacher
    mask = torch.tensor([[1, 1, 0]])
    assert attention_score_mse_loss(padded_s, padded_t, mask).item() == pytest.approx(7 / 4)


def _relation(states, b, n, r, heads):
    """Row-softmax of scaled dot products of relation head r of example b (first n tokens), as nested lists."""
    d = states.shape[-1] // heads
    x = states[b, :n, r * d : (r + 1) * d].tolist()
    return [_softmax([sum(a * c for a, c in zip(x[q], x[k])) / math.sqrt(d) for k in range(n)]) for q in range(n)]


def _reference_relation(student, teacher, heads, lengths):
    out = []
    for b, n in enumerate(lengths):
        rows = []
        for r in range(heads):
            rs, rt = _relation(student, b, n, r, heads), _relation(teacher, b, n, r, heads)
            rows += [_kl(rt[q], rs[q]) for q in range(n)]
        out.append(sum(rows) / len(rows))
    return out


def test_relation_kl_matches_reference_with_different_widths_and_padding():
    g = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(2, 5, 8, generator=g), torch.randn(2, 5, 12, generator=g)
    lengths = [5, 3]
    got = relation_kl_loss(student, teacher, num_relation_heads=2, attention_mask=_mask(lengths, 5), reduction="none")
    assert got.tolist() == pytest.approx(_reference_relation(student, teacher, 2, lengths), rel=1e-4, abs=1e-6)


def test_relation_kl_is_zero_for_identical_states_and_rejects_bad_head_count():
    states = torch.randn(2, 4, 6)
    assert relation_kl_loss(states, states.clone(), num_relation_heads=3).item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="num_relation_heads=4"):
        relation_kl_loss(states, states, num_relation_heads=4)


def test_hidden_mse_hand_computed_and_padding_invariant():
    student = torch.tensor([[[1.0, 3.0], [0.0, 0.0]]])
    teacher = torch.tensor([[[0.0, 1.0], [0.0, 2.0]]])
    # token 0: ((1)^2 + (2)^2)/2 = 2.5 ; token 1: (0 + 4)/2 = 2 ; mean = 2.25
    assert hidden_mse_loss(student, teacher).item() == pytest.approx(2.25)
    mask = torch.tensor([[1, 0]])
    assert hidden_mse_loss(student, teacher, mask).item() == pytest.approx(2.5)


def test_hidden_cosine_hand_computed():
    student = torch.tensor([[[1.0, 0.0], [1.0, 1.0]]])
    teacher = torch.tensor([[[0.0, 1.0], [2.0, 2.0]]])
    # cos = 0 for token 0 (loss 1) and 1 for token 1 (loss 0): mean 0.5
    assert hidden_cosine_loss(student, teacher).item() == pytest.approx(0.5, abs=1e-6)
    with pytest.raises(ValueError, match="equal widths"):
        hidden_cosine_loss(torch.zeros(1, 2, 3), torch.zeros(1, 2, 4))


# ---- token- and position-level outputs -----------------------------------------------------------------------


def test_token_hard_label_loss_hand_computed_is_per_token():
    # example 0: two labelled tokens with uniform logits over 2 classes (ln 2 each); example 1: one labelled token
    # whose logits [ln 3, 0] give p(class 0) = 3/4
    logits = torch.tensor([[[0.0, 0.0], [0.0, 0.0], [5.0, 5.0]], [[math.log(3), 0.0], [1.0, 2.0], [0.0, 0.0]]])
    labels = torch.tensor([[0, 1, -100], [0, -100, -100]])
    expected = (2 * math.log(2) + -math.log(3 / 4)) / 3  # per token; per sequence would be (ln 2 + ln 4/3) / 2
    assert token_hard_label_loss(logits, labels).item() == pytest.approx(expected, rel=1e-6)
    per_token = token_hard_label_loss(logits, labels, reduction="none")
    assert per_token.shape == (2, 3) and per_token[0, 2] == 0 and per_token[1, 1] == 0


def test_token_soft_label_loss_hand_computed_at_masked_positions_only():
    T = 2.0
    # one distilled token: student logits [0, 0] (uniform), teacher [2 ln 3, 0] -> softmax(t / T) = [3/4, 1/4]
    student = torch.tensor([[[0.0, 0.0], [9.0, -9.0]]])
    teacher = torch.tensor([[[2 * math.log(3), 0.0], [-9.0, 9.0]]])
    mask = torch.tensor([[True, False]])  # the second position disagrees wildly but is not distilled
    expected = T * T * _kl([0.75, 0.25], [0.5, 0.5])
    assert token_soft_label_loss(student, teacher, mask, T).item() == pytest.approx(expected, rel=1e-6)
    both = token_soft_label_loss(student, teacher, torch.tensor([[True, True]]), T)
    second = T * T * _kl(_softmax([-4.5, 4.5]), _softmax([4.5, -4.5]))
    assert both.item() == pytest.approx((expected + second) / 2, rel=1e-5)  # divided by tokens


def test_position_soft_label_loss_hand_computed_drops_padded_positions():
    T = 1.0
    student = torch.tensor([[0.0, 0.0, 100.0]])  # the padded third position would dominate an unmasked softmax
    teacher = torch.tensor([[math.log(3), 0.0, -100.0]])
    mask = torch.tensor([[1, 1, 0]])
    expected = _kl([0.75, 0.25], [0.5, 0.5])
    assert position_soft_label_loss(student, teacher, mask, T).item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_token_soft_label_loss_chunks_give_autograd_values_and_gradients(monkeypatch, dtype):
    """The hand-written backward, chunk by chunk, equals autograd through the plain row-wise loss."""
    from hf_distill import losses, token_kd

    torch.manual_seed(0)
    student = (3 * torch.randn(3, 7, 11)).to(dtype).requires_grad_()
    teacher = (3 * torch.randn(3, 7, 11)).to(dtype)
    mask = torch.rand(3, 7) > 0.3
    weights = torch.rand(3, 7)  # a non-uniform upstream gradient per token
    plain_student = student.detach().clone().requires_grad_()
    rows = losses.soft_label_loss(plain_student[mask], teacher[mask], 2.0, reduction="none")
    (rows * weights[mask]).sum().backward()
    for chunk_elements in (1 << 24, 11):  # one chunk; one row per chunk and thread
        monkeypatch.setattr(token_kd, "_CHUNK_ELEMENTS", chunk_elements)
        student.grad = None
        per_token = token_soft_label_loss(student, teacher, mask, 2.0, reduction="none")
        (per_token * weights).sum().backward()
        torch.testing.assert_close(per_token[mask], rows.detach(), rtol=1e-6, atol=1e-6)
        assert student.grad.dtype == dtype and not student.grad[~mask].any()
        torch.testing.assert_close(student.grad.float(), plain_student.grad.float(), rtol=1e-5, atol=1e-6)
