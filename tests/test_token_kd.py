"""Per-token KD and CE in one pass (`hf_distill.token_kd`), the fused output projection and the top-k teacher.

References are written from the definitions with autograd: `log_softmax` of the selected rows, `F.kl_div`,
`F.cross_entropy`, and for the top-k teacher the KL over the k kept classes and one tail bucket built by hand.
"""

import pytest
import torch
import torch.nn.functional as F
from conftest import pad_collator
from test_tasks import PAIRS, make_trainer, rows

from hf_distill.token_kd import ProjectedLogits, fused_token_output_loss, token_output_loss, top_k_teacher

V = 37


def reference(student, teacher, labels, mask, temperature, kd_weight, ce_weight):
    """`sum kd_weight * T^2 KL + ce_weight * CE` over the masked rows, and the per-row terms."""
    s, t = student[mask].float(), teacher[mask].float()
    log_p, log_q = F.log_softmax(s / temperature, -1), F.log_softmax(t / temperature, -1)
    kl = (log_q.exp() * (log_q - log_p)).sum(-1) * temperature**2
    ce = F.cross_entropy(s, labels[mask], reduction="none")
    return kd_weight * kl.sum() + ce_weight * ce.sum(), kl, ce


def bucket_kl(student, top, temperature):
    """KL over the k kept classes plus one tail bucket, from the definition (float64)."""
    log_p = F.log_softmax(student.double() / temperature, -1)
    p_kept, q_kept = log_p.gather(-1, top.indices).exp(), top.log_probs.double().exp()
    p_tail, q_tail = 1 - p_kept.sum(-1), 1 - q_kept.sum(-1)
    return ((q_kept * (q_kept.log() - p_kept.log())).sum(-1) + q_tail * (q_tail.log() - p_tail.log())) * temperature**2


@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize("weights", [(1.0, 0.0), (0.7, 0.3), (0.0, 1.0)])
@pytest.mark.parametrize("density", [0.9, 0.2])  # slices of all rows (causal LM) / index chunks (masked LM)
def test_one_pass_terms_and_gradient_equal_autograd(monkeypatch, temperature, weights, density):
    from hf_distill import token_kd

    monkeypatch.setattr(token_kd, "_CHUNK_ELEMENTS", 2 * V)  # several chunks
    torch.manual_seed(0)
    student = (3 * torch.randn(4, 9, V)).requires_grad_()
    teacher, labels = 3 * torch.randn(4, 9, V), torch.randint(0, V, (4, 9))
    mask = torch.rand(4, 9) < density
    labels[~mask] = -100  # never read
    terms = token_output_loss(student, teacher, labels, mask, temperature, *weights)
    (terms.objective * 0.5).backward()
    plain = student.detach().clone().requires_grad_()
    expected, kl, ce = reference(plain, teacher, labels.clamp_min(0), mask, temperature, *weights)
    (expected * 0.5).backward()
    torch.testing.assert_close(terms.objective, expected.detach())
    torch.testing.assert_close(terms.kd[mask], kl.detach())
    torch.testing.assert_close(terms.ce[mask], ce.detach())
    assert not terms.kd[~mask].any() and not student.grad[~mask].any()
    torch.testing.assert_close(student.grad, plain.grad)


def test_hand_computed_values():
    """Two classes, T = 1: KL([0.75, 0.25] || [0.5, 0.5]) and CE = log 2."""
    student, teacher = torch.zeros(1, 1, 2), torch.tensor([[[torch.log(torch.tensor(3.0)), 0.0]]])
    terms = token_output_loss(student, teacher, torch.tensor([[1]]), torch.ones(1, 1, dtype=torch.bool), 1.0)
    kl = 0.75 * torch.log(torch.tensor(1.5)) + 0.25 * torch.log(torch.tensor(0.5))
    assert terms.kd.item() == pytest.approx(kl.item(), rel=1e-6)
    assert terms.ce.item() == pytest.approx(torch.log(torch.tensor(2.0)).item(), rel=1e-6)


def test_second_backward_is_refused():
    student = torch.randn(1, 3, V, requires_grad=True)
    loss = token_output_loss(student, torch.randn(1, 3, V), None, torch.ones(1, 3, dtype=torch.bool), 1.0).objective
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="twice"):
        loss.backward()


@pytest.mark.parametrize("teacher_kind", ["projected", "logits", "top-k"])
@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_fused_projection_gradients_equal_the_unfused_path(monkeypatch, teacher_kind, temperature):
    from hf_distill import token_kd

    monkeypatch.setattr(token_kd, "_FUSED_CHUNK_ELEMENTS", 5 * V)  # several blocks of rows ...
    monkeypatch.setattr(token_kd, "_FUSED_MIN_ROWS", 5)
    monkeypatch.setattr(token_kd, "_CHUNK_ELEMENTS", V)  # ... of several sub-chunks
    torch.manual_seed(1)
    hidden, weight, bias = torch.randn(3, 8, 16), torch.randn(V, 16), torch.randn(V)
    teacher_hidden, teacher_weight = torch.randn(3, 8, 12), torch.randn(V, 12)
    teacher_logits = F.linear(teacher_hidden, teacher_weight)
    teacher = {"projected": ProjectedLogits(teacher_hidden, teacher_weight), "logits": teacher_logits,
               "top-k": top_k_teacher(teacher_logits, 5, temperature)}[teacher_kind]  # fmt: skip
    labels, mask = torch.randint(0, V, (3, 8)), torch.rand(3, 8) < 0.8
    grads = []
    for fused in (True, False):
        leaves = [x.clone().requires_grad_() for x in (hidden, weight, bias)]
        if fused:
            terms = fused_token_output_loss(*leaves, teacher, labels, mask, temperature, 0.6, 0.4)
        else:
            terms = token_output_loss(F.linear(leaves[0], leaves[1], leaves[2]), teacher, labels, mask, temperature,
                                      0.6, 0.4)  # fmt: skip
        terms.objective.backward()
        grads.append((terms.objective.detach(), terms.kd, terms.ce, *(x.grad for x in leaves)))
    for name, a, b in zip(("objective", "kd", "ce", "hidden", "weight", "bias"), *grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)


def test_top_k_with_every_class_kept_is_the_full_loss():
    torch.manual_seed(2)
    student, teacher = (2 * torch.randn(2, 5, V)).requires_grad_(), 2 * torch.randn(2, 5, V)
    mask, grads, values = torch.ones(2, 5, dtype=torch.bool), [], []
    for target in (teacher, top_k_teacher(teacher, V, 2.0)):
        student.grad = None
        terms = token_output_loss(student, target, None, mask, 2.0)
        terms.objective.backward()
        grads.append(student.grad.clone())
        values.append(terms.kd)
    torch.testing.assert_close(values[1], values[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("k", [1, 4, 20])
def test_top_k_loss_is_the_bucket_kl_and_the_full_kl_minus_the_tail_term(k):
    """KL_k from the definition; KL - KL_k = q_tail * KL(q | tail || p | tail) * T^2 >= 0 (chain rule)."""
    torch.manual_seed(3)
    T = 2.0
    student, teacher = (2 * torch.randn(2, 6, V)).requires_grad_(), 2 * torch.randn(2, 6, V)
    mask = torch.ones(2, 6, dtype=torch.bool)
    top = top_k_teacher(teacher, k, T)
    terms = token_output_loss(student, top, None, mask, T)
    terms.objective.backward()
    plain = student.detach().double().requires_grad_()
    expected = bucket_kl(plain, top, T)
    expected.sum().backward()
    torch.testing.assert_close(terms.kd.double(), expected.detach(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(student.grad.double(), plain.grad, rtol=1e-4, atol=1e-6)
    full = token_output_loss(student.detach(), teacher, None, mask, T).kd.double()
    tail = torch.ones_like(teacher, dtype=torch.bool).scatter(-1, top.indices, False)
    log_p, log_q = F.log_softmax(student.detach().double() / T, -1), F.log_softmax(teacher.double() / T, -1)
    q_tail = log_q.masked_fill(~tail, float("-inf")).logsumexp(-1)  # log mass of the tail
    p_tail = log_p.masked_fill(~tail, float("-inf")).logsumexp(-1)
    within = (log_q - q_tail[..., None]).exp() * ((log_q - q_tail[..., None]) - (log_p - p_tail[..., None]))
    chain = q_tail.exp() * within.masked_fill(~tail, 0).sum(-1) * T**2
    assert (full - terms.kd.double() >= -1e-5).all()
    torch.testing.assert_close(full - terms.kd.double(), chain, rtol=1e-3, atol=1e-5)


# ---- the trainer ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("task", ["causal-lm", "masked-lm"])
def test_fused_lm_head_trains_the_same_student_as_the_unfused_path(tmp_path, task):
    from datasets import Dataset

    data = Dataset.from_list(rows(task, 8, seed=21))
    states = []
    for fuse in (True, False):
        teacher, student = PAIRS[task]()
        trainer = make_trainer(tmp_path, teacher, student, data, fuse_lm_head=fuse, optim="sgd", learning_rate=1.0,
                               max_grad_norm=0.0, lr_scheduler_type="constant")  # fmt: skip
        assert (trainer._student_capture is not None) is fuse
        trainer.train()
        states.append(({k: v.clone() for k, v in student.state_dict().items()}, trainer.state.log_history[0]))
    (fused, fused_log), (plain, plain_log) = states
    for name in ("loss", "loss_ce", "loss_kd"):
        assert fused_log[name] == pytest.approx(plain_log[name], rel=1e-5)
    assert any(not torch.equal(fused[k], PAIRS[task]()[1].state_dict()[k]) for k in fused)
    for name in fused:
        torch.testing.assert_close(fused[name], plain[name], rtol=1e-4, atol=1e-6, msg=name)


def test_fused_lm_head_is_on_by_default_for_language_models_only(tmp_path):
    teacher, student = PAIRS["causal-lm"]()
    assert make_trainer(tmp_path, teacher, student)._student_capture is not None
    teacher, student = PAIRS["token-classification"]()
    assert make_trainer(tmp_path, teacher, student)._student_capture is None
    with pytest.raises(ValueError, match="fuse_lm_head=True.*token-classification"):
        make_trainer(tmp_path, teacher, student, fuse_lm_head=True)


@pytest.mark.parametrize(("temperature", "logged"), [(1.0, True), (2.0, False)])
def test_cross_entropy_is_logged_at_alpha_zero_only_where_it_is_free(tmp_path, temperature, logged):
    """At T = 1 the CE shares the KD term's log-softmax; at T != 1 with alpha = 0 it is not computed in training."""
    teacher, student = PAIRS["causal-lm"]()
    trainer = make_trainer(tmp_path, teacher, student, alpha=0.0, beta=1.0, temperature=temperature)
    trainer.model.train()
    trainer.compute_loss(trainer.model, pad_collator(rows("causal-lm", 4, seed=3)))
    assert ("loss_ce" in trainer._pop_term_means("train")) is logged


def test_top_k_cache_with_every_token_kept_trains_the_same_causal_lm_without_running_the_teacher(tmp_path):
    from conftest import VOCAB_SIZE
    from datasets import Dataset

    data = Dataset.from_list(rows("causal-lm", 16, seed=31))
    states, calls = [], []
    for cache in (None, str(tmp_path / "cache")):
        teacher, student = PAIRS["causal-lm"]()
        counted = [0]
        teacher.register_forward_hook(lambda *_, c=counted: c.__setitem__(0, c[0] + 1))
        trainer = make_trainer(tmp_path, teacher, student, data, teacher_cache_dir=cache, max_steps=2,
                               teacher_cache_top_k=VOCAB_SIZE, optim="sgd", learning_rate=1.0, max_grad_norm=0.0,
                               lr_scheduler_type="constant")  # fmt: skip
        trainer.train()
        states.append({k: v.clone() for k, v in student.state_dict().items()})
        calls.append(counted[0])
    assert calls == [2, 2]  # two training steps; the cache: two batches of 8 rows once, none in training
    for name in states[0]:
        torch.testing.assert_close(states[1][name], states[0][name], rtol=1e-4, atol=1e-6, msg=name)


def test_top_k_cache_keeps_k_tokens_and_its_kd_term_is_at_most_the_full_one(tmp_path):
    from datasets import Dataset

    from hf_distill.teacher_cache import TOP_K_COLUMNS

    data = Dataset.from_list(rows("causal-lm", 8, seed=32))
    logs = []
    for cache in (None, str(tmp_path / "cache")):
        teacher, student = PAIRS["causal-lm"]()
        trainer = make_trainer(tmp_path, teacher, student, data, teacher_cache_dir=cache, teacher_cache_top_k=3,
                               learning_rate=0.0)  # fmt: skip
        trainer.train()
        logs.append(trainer.state.log_history[0])
    stored = next((tmp_path / "cache").iterdir())
    from datasets import load_from_disk

    table = load_from_disk(str(stored))
    assert table.column_names == list(TOP_K_COLUMNS)
    assert [len(ids) for ids in table[TOP_K_COLUMNS[0]]] == [len(r["input_ids"]) for r in data]  # every position
    assert {len(kept) for ids in table[TOP_K_COLUMNS[0]] for kept in ids} == {3}
    full, top = logs[0]["loss_kd"], logs[1]["loss_kd"]
    assert 0 < top <= full + 1e-6
