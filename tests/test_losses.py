"""Each loss term against hand-computed values and against references written independently (plain Python loops)."""

import math

import pytest
import torch
import torch.nn.functional as F

from hf_distill import attention_kl_loss, attention_mse_loss, hard_label_loss, soft_label_loss


def _softmax(row):
    top = max(row)
    exps = [math.exp(x - top) for x in row]
    return [e / sum(exps) for e in exps]


def _kl(p, q):
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q) if pi > 0)


# ---- hand-computed cases -------------------------------------------------------------------------------------------


def test_hard_label_loss_hand_computed():
    assert hard_label_loss(torch.tensor([[0.0, 0.0]]), torch.tensor([1])).item() == pytest.approx(math.log(2))
    # logits (0, ln 3): p = (1/4, 3/4); CE for label 0 is ln 4.
    logits = torch.tensor([[0.0, math.log(3)]])
    assert hard_label_loss(logits, torch.tensor([0])).item() == pytest.approx(math.log(4))


def test_hard_label_loss_skips_unlabelled_examples():
    logits = torch.tensor([[0.0, math.log(3)], [5.0, -5.0]])
    labels = torch.tensor([0, -100])
    assert hard_label_loss(logits, labels).item() == pytest.approx(math.log(4))
    assert hard_label_loss(logits, labels, reduction="none")[1].item() == 0.0


def test_soft_label_loss_hand_computed():
    # T = 1: teacher (1/4, 3/4), student (1/2, 1/2): KL = 1/4 ln(1/2) + 3/4 ln(3/2).
    teacher = torch.tensor([[0.0, math.log(3)]])
    student = torch.tensor([[0.0, 0.0]])
    expected = 0.25 * math.log(0.5) + 0.75 * math.log(1.5)
    assert soft_label_loss(student, teacher, temperature=1.0).item() == pytest.approx(expected, rel=1e-6)
    # T = 2 halves the teacher logits: p_t = softmax(0, ln(3)/2) = (1, sqrt 3)/(1 + sqrt 3); times T^2 = 4.
    root3 = math.sqrt(3)
    p_t = [1 / (1 + root3), root3 / (1 + root3)]
    expected_t2 = 4 * _kl(p_t, [0.5, 0.5])
    assert soft_label_loss(student, teacher, temperature=2.0).item() == pytest.approx(expected_t2, rel=1e-6)


def test_soft_label_loss_is_zero_when_student_matches_teacher():
    logits = torch.randn(5, 3)
    assert soft_label_loss(logits, logits.clone(), temperature=3.0).item() == pytest.approx(0.0, abs=1e-7)


def test_attention_mse_hand_computed():
    # One example, one head, two tokens. Maps differ by 0.1 in every entry: MSE 0.01.
    student = torch.tensor([[[[0.6, 0.4], [0.3, 0.7]]]])
    teacher = torch.tensor([[[[0.5, 0.5], [0.4, 0.6]]]])
    assert attention_mse_loss(student, teacher).item() == pytest.approx(0.01, rel=1e-5)


def test_attention_kl_hand_computed():
    student = torch.tensor([[[[0.5, 0.5], [0.5, 0.5]]]])
    teacher = torch.tensor([[[[0.25, 0.75], [1.0, 0.0]]]])
    expected = (_kl([0.25, 0.75], [0.5, 0.5]) + _kl([1.0, 0.0], [0.5, 0.5])) / 2
    assert attention_kl_loss(student, teacher).item() == pytest.approx(expected, rel=1e-6)


# ---- against independent references ----------------------------------------------------------------------------


def _random_maps(batch, heads, length, lengths, seed):
    """Softmax maps whose padded keys have zero mass, as the model's masked attention produces."""
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(batch, heads, length, length, generator=g)
    mask = torch.zeros(batch, length, dtype=torch.long)
    for b, n in enumerate(lengths):
        mask[b, :n] = 1
    scores = scores.masked_fill(~mask.bool()[:, None, None, :], float("-inf"))
    return scores.softmax(-1), mask


def _reference_mse(student, teacher, lengths):
    per_example = []
    for b, n in enumerate(lengths):
        total = 0.0
        for q in range(n):
            for k in range(n):
                s = sum(student[b, h, q, k].item() for h in range(student.shape[1])) / student.shape[1]
                t = sum(teacher[b, h, q, k].item() for h in range(teacher.shape[1])) / teacher.shape[1]
                total += (s - t) ** 2
        per_example.append(total / (n * n))
    return per_example


def _reference_kl(student, teacher, lengths):
    per_example = []
    for b, n in enumerate(lengths):
        rows = [
            _kl([teacher[b, h, q, k].item() for k in range(n)], [student[b, h, q, k].item() for k in range(n)])
            for h in range(student.shape[1])
            for q in range(n)
        ]
        per_example.append(sum(rows) / len(rows))
    return per_example


def test_attention_mse_matches_reference_with_padding_and_different_head_counts():
    lengths = [5, 3, 4]
    student, mask = _random_maps(3, 2, 5, lengths, seed=0)
    teacher, _ = _random_maps(3, 4, 5, lengths, seed=1)
    got = attention_mse_loss(student, teacher, mask, reduction="none")
    assert got.tolist() == pytest.approx(_reference_mse(student, teacher, lengths), rel=1e-5)


def test_attention_kl_matches_reference_with_padding():
    lengths = [5, 2, 4]
    student, mask = _random_maps(3, 3, 5, lengths, seed=2)
    teacher, _ = _random_maps(3, 3, 5, lengths, seed=3)
    got = attention_kl_loss(student, teacher, mask, reduction="none")
    assert got.tolist() == pytest.approx(_reference_kl(student, teacher, lengths), rel=1e-5)


def test_soft_label_loss_matches_hinton_formula():
    g = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    reference = [9.0 * _kl(_softmax((teacher[i] / 3).tolist()), _softmax((student[i] / 3).tolist())) for i in range(6)]
    got = soft_label_loss(student, teacher, temperature=3.0, reduction="none")
    assert got.tolist() == pytest.approx(reference, rel=1e-4, abs=1e-6)
    batchmean = F.kl_div(F.log_softmax(student / 3, -1), F.softmax(teacher / 3, -1), reduction="batchmean") * 9
    assert soft_label_loss(student, teacher, temperature=3.0).item() == pytest.approx(batchmean.item(), rel=1e-5)


# ---- padding invariance ------------------------------------------------------------------------------------------


def _pad_maps(maps, extra):
    """Append `extra` padded positions: zero mass on the new keys, arbitrary rows for the new queries."""
    batch, heads, length, _ = maps.shape
    padded = torch.rand(batch, heads, length + extra, length + extra)
    padded[:, :, :, length:] = 0.0
    padded[:, :, :length, :length] = maps
    return padded


@pytest.mark.parametrize("loss_fn", [attention_mse_loss, attention_kl_loss])
def test_attention_losses_ignore_appended_padding(loss_fn):
    lengths = [4, 2]
    student, mask = _random_maps(2, 2, 4, lengths, seed=4)
    teacher, _ = _random_maps(2, 2, 4, lengths, seed=5)
    padded_mask = torch.cat([mask, torch.zeros(2, 3, dtype=torch.long)], dim=1)
    before = loss_fn(student, teacher, mask, reduction="none")
    after = loss_fn(_pad_maps(student, 3), _pad_maps(teacher, 3), padded_mask, reduction="none")
    torch.testing.assert_close(before, after)


# ---- errors ----------------------------------------------------------------------------------------------------


def test_kl_attention_rejects_different_head_counts():
    student, _ = _random_maps(1, 2, 3, [3], seed=0)
    teacher, _ = _random_maps(1, 4, 3, [3], seed=1)
    with pytest.raises(ValueError, match="attention_loss='mse'"):
        attention_kl_loss(student, teacher)


def test_soft_label_loss_rejects_different_label_counts():
    with pytest.raises(ValueError, match="num_labels"):
        soft_label_loss(torch.zeros(2, 3), torch.zeros(2, 2), temperature=1.0)


def test_unknown_reduction_is_rejected():
    with pytest.raises(ValueError, match="reduction"):
        soft_label_loss(torch.zeros(2, 2), torch.zeros(2, 2), temperature=1.0, reduction="batchmean")
