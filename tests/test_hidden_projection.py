"""TinyBERT's learned projection for a student narrower than the teacher: the loss it gives, how it trains (with the
student, accumulation, clipping, two processes), what is saved (checkpoints only, never the student) and resuming."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_bert
from datasets import Dataset
from safetensors.torch import load_file
from test_trainer import NO_DROPOUT, a_batch, make_args, make_trainer
from transformers import BertForSequenceClassification

from hf_distill import DistillationTrainer, load_distillation_config, load_training_history
from hf_distill.projection import PROJECTION_NAME

REPO = Path(__file__).resolve().parents[1]
S_WIDTH, T_WIDTH = 32, 48
DESCRIPTION = "learned 32->48: W_e (embeddings), W_h shared by layers"


def pair(dropout=False):
    """A 4-layer teacher of width 48 and a 2-layer student of width 32."""
    extra = {} if dropout else NO_DROPOUT
    return tiny_bert(4, hidden=T_WIDTH, seed=1, **extra), tiny_bert(2, hidden=S_WIDTH, seed=2, **extra)


def projection_state(trainer):
    return {k: v.detach().clone() for k, v in trainer.hidden_projection.state_dict().items()}


def reference_projected_mse(teacher, student, weights, batch, layer_map):
    """TinyBERT eq. 7-9 from the recorded hidden states: MSE(E_s W_e, E_t) and MSE(H_s W_h, H_t) per mapped layer,
    over each example's real tokens, averaged over examples and then over the 1 + len(layer_map) pairs."""
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    with torch.no_grad():
        t = teacher.eval()(**inputs, output_hidden_states=True).hidden_states
        s = student.train()(**inputs, output_hidden_states=True).hidden_states
    lengths = batch["attention_mask"].sum(1).tolist()
    pairs = [(0, 0)] + [(i + 1, j + 1) for i, j in enumerate(layer_map)]
    per_layer = []
    for si, ti in pairs:
        kind = "embedding" if si == 0 else "hidden"
        w, b = weights[f"{kind}.weight"], weights[f"{kind}.bias"]  # (T_WIDTH, S_WIDTH), (T_WIDTH,)
        per_example = [F.mse_loss(s[si][e, :n] @ w.T + b, t[ti][e, :n]) for e, n in enumerate(lengths)]
        per_layer.append(torch.stack(per_example).mean())
    return torch.stack(per_layer).mean()


def test_projected_term_matches_reference_and_is_recorded(tmp_path):
    teacher, student = pair()
    trainer = make_trainer(tmp_path, teacher, student, layer_map=[1, 3], alpha=0.3, beta=0.6, gamma=0.0,
                           hidden_weight=2.5)  # fmt: skip
    projection = trainer.hidden_projection
    assert (projection.embedding.weight.shape, projection.hidden.weight.shape) == (((T_WIDTH, S_WIDTH),) * 2)
    assert not torch.equal(projection.embedding.weight, projection.hidden.weight)  # W_e and W_h are separate
    batch = a_batch()
    trainer.model.train()
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, batch)
    means = trainer._pop_term_means("train")
    expected_hidden = reference_projected_mse(teacher, student, projection_state(trainer), batch, [1, 3])
    assert expected_hidden.item() > 1e-3
    assert means["loss_hidden"] == pytest.approx(expected_hidden.item(), rel=1e-4)
    expected = 0.3 * means["loss_ce"] + 0.6 * means["loss_kd"] + 2.5 * expected_hidden.item()
    assert loss.item() == pytest.approx(expected, rel=1e-4)
    assert trainer.distillation_record().hidden_projection == DESCRIPTION


def test_equal_widths_use_no_projection(tmp_path, teacher, student):
    trainer = make_trainer(tmp_path, teacher, student, hidden_weight=1.0)
    assert trainer.hidden_projection is None and trainer.distillation_record().hidden_projection is None


def test_projection_trains_with_the_student_in_its_own_param_groups(tmp_path):
    teacher, student = pair()
    rows = {"input_ids": [[2, 7, 9, 11, 3]] * 4 + [[2, 5, 6, 3]] * 4, "label": [0] * 4 + [1] * 4}
    trainer = make_trainer(tmp_path, teacher, student, Dataset.from_dict(rows), alpha=0.0, beta=0.0, gamma=0.0,
                           hidden_weight=1.0, max_steps=15, logging_steps=1, learning_rate=1e-2,
                           weight_decay=0.01)  # fmt: skip
    before, teacher_before = projection_state(trainer), {k: v.clone() for k, v in teacher.state_dict().items()}
    trainer.train()
    after = projection_state(trainer)
    assert all(not torch.equal(before[k], after[k]) for k in before), "the projection did not train"
    assert all(p.grad is None for p in trainer.hidden_projection.parameters())  # cleared after each step
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in teacher_before.items())
    losses = [entry["loss_hidden"] for entry in trainer.state.log_history if "loss_hidden" in entry]
    assert len(losses) == 15 and losses[-1] < 0.7 * losses[0]  # the same batch at every step: the loss falls

    groups = trainer.optimizer.param_groups
    projection = trainer.hidden_projection
    by_id = {id(p): g for g in groups for p in g["params"]}
    assert by_id[id(projection.hidden.weight)]["weight_decay"] == 0.01  # the student's decay rules
    assert by_id[id(projection.hidden.bias)]["weight_decay"] == 0.0
    assert by_id[id(projection.embedding.weight)] is not by_id[id(student.classifier.weight)]  # own groups
    assert {g["initial_lr"] for g in groups} == {1e-2}  # same learning rate, and scheduled like the student's


def test_saved_student_holds_no_projection_and_checkpoints_do(tmp_path):
    teacher, student = pair()
    trainer = make_trainer(tmp_path, teacher, student, hidden_weight=1.0, max_steps=2, save_strategy="steps",
                           save_steps=2)  # fmt: skip
    trainer.train()
    trainer.save_model()
    out = Path(trainer.args.output_dir)
    plain = tiny_bert(2, hidden=S_WIDTH, seed=2)
    plain.save_pretrained(tmp_path / "plain")
    expected_keys = load_file(tmp_path / "plain" / "model.safetensors").keys()
    for folder in (out, out / "checkpoint-2"):
        assert load_file(folder / "model.safetensors").keys() == expected_keys, folder
    assert not (out / PROJECTION_NAME).exists()  # the final student folder: the student alone
    saved = load_file(out / "checkpoint-2" / PROJECTION_NAME)
    for name, value in projection_state(trainer).items():
        assert torch.equal(saved[name], value), name
    reloaded = BertForSequenceClassification.from_pretrained(out)
    for name, value in trainer.model.state_dict().items():
        assert torch.equal(reloaded.state_dict()[name], value), name
    for folder in (out, out / "checkpoint-2"):
        assert load_distillation_config(folder).hidden_projection == DESCRIPTION
    assert "learned projection (learned 32->48" in (out / "README.md").read_text()


def test_gradient_accumulation_updates_student_and_projection_like_one_big_batch(tmp_path):
    from conftest import random_rows

    data = Dataset.from_dict(random_rows(8, seed=11, min_len=3, max_len=14))
    results = []
    for batch_size, accumulation in ((8, 1), (4, 2)):
        teacher, student = pair()
        trainer = make_trainer(
            tmp_path, teacher, student, data, per_device_train_batch_size=batch_size, hidden_weight=3.0,
            gradient_accumulation_steps=accumulation, max_steps=1, optim="sgd", learning_rate=1.0,
            lr_scheduler_type="constant", max_grad_norm=0.0, logging_steps=1,
        )  # fmt: skip
        initial = projection_state(trainer)
        trainer.train()
        weights = {k: v.clone() for k, v in student.state_dict().items()}
        results.append((weights, projection_state(trainer), initial, trainer.state.log_history[0]))
    (big, big_proj, initial, big_log), (small, small_proj, _, small_log) = results
    assert big_log["loss_hidden"] == pytest.approx(small_log["loss_hidden"], rel=1e-5)
    assert all(not torch.equal(big_proj[k], initial[k]) for k in initial)
    for name in big_proj:
        torch.testing.assert_close(big_proj[name], small_proj[name], rtol=1e-4, atol=1e-6, msg=name)
    for name in big:
        torch.testing.assert_close(big[name], small[name], rtol=1e-4, atol=1e-6, msg=name)


def test_gradient_clipping_covers_the_projection(tmp_path):
    """SGD at lr 1 with a tiny max_grad_norm: the whole update (student and projection) has exactly that norm."""
    teacher, student = pair()
    trainer = make_trainer(tmp_path, teacher, student, hidden_weight=1.0, max_steps=1, optim="sgd",
                           learning_rate=1.0, lr_scheduler_type="constant", max_grad_norm=1e-3)  # fmt: skip
    student_before = [p.detach().clone() for p in student.parameters()]
    projection_before = [p.detach().clone() for p in trainer.hidden_projection.parameters()]
    trainer.train()
    student_step = torch.cat([(p.detach() - b).reshape(-1) for p, b in zip(student.parameters(), student_before)])
    projection_step = torch.cat(
        [(p.detach() - b).reshape(-1) for p, b in zip(trainer.hidden_projection.parameters(), projection_before)]
    )
    assert projection_step.norm() > 0
    assert torch.cat([student_step, projection_step]).norm().item() == pytest.approx(1e-3, rel=1e-3)


def test_resume_continues_student_and_projection_exactly(tmp_path):
    def run(output_dir, resume=None):
        teacher, student = pair(dropout=True)  # dropout on: the checkpoint's RNG state matters too
        trainer = make_trainer(output_dir, teacher, student, hidden_weight=1.0, gamma=0.4, max_steps=4,
                               save_strategy="steps", save_steps=2, logging_steps=2, learning_rate=1e-2)  # fmt: skip
        trainer.train(resume_from_checkpoint=resume)
        return trainer

    full = run(tmp_path / "full")
    checkpoint = tmp_path / "full" / "out" / "checkpoint-2"
    resumed = run(tmp_path / "resumed", resume=str(checkpoint))
    assert resumed.state.global_step == 4
    for name, value in full.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[name], value), name
    for name, value in projection_state(full).items():
        assert torch.equal(projection_state(resumed)[name], value), name
    history = load_training_history(tmp_path / "resumed" / "out" / "checkpoint-4")
    assert history["train"] == load_training_history(tmp_path / "full" / "out" / "checkpoint-4")["train"]

    os.remove(checkpoint / PROJECTION_NAME)  # a checkpoint without it cannot continue the same run
    teacher, student = pair()
    trainer = make_trainer(tmp_path / "again", teacher, student, hidden_weight=1.0, max_steps=4)
    with pytest.raises(FileNotFoundError, match=f"has no {PROJECTION_NAME}"):
        trainer.train(resume_from_checkpoint=str(checkpoint))
    assert trainer.state.global_step == 0


def test_cosine_with_unequal_widths_is_refused_before_training(tmp_path):
    teacher, student = pair()
    args = make_args(tmp_path, hidden_weight=1.0, hidden_loss="cosine")
    with pytest.raises(ValueError, match=r"hidden_loss='cosine' .*hidden_size is 32 and the teacher's 48.*'mse'"):
        DistillationTrainer(model=student, teacher_model=teacher, args=args)


def test_ready_made_optimizer_is_refused(tmp_path):
    teacher, student = pair()
    optimizer = torch.optim.SGD(student.parameters(), lr=0.1)
    with pytest.raises(ValueError, match=r"hidden sizes 32 \(student\) and 48 \(teacher\).*Leave `optimizers` unset"):
        DistillationTrainer(model=student, teacher_model=teacher, args=make_args(tmp_path, hidden_weight=1.0),
                            optimizers=(optimizer, None))  # fmt: skip


def test_optimizer_cls_and_kwargs_still_gets_the_projection(tmp_path):
    teacher, student = pair()
    trainer = make_trainer(tmp_path, teacher, student, hidden_weight=1.0, max_steps=1)
    trainer.optimizer_cls_and_kwargs = (torch.optim.Adam, {"lr": 3e-3})
    optimizer = trainer.create_optimizer()
    held = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert isinstance(optimizer, torch.optim.Adam)
    assert all(id(p) in held for p in trainer.hidden_projection.parameters())
    assert {g["lr"] for g in optimizer.param_groups} == {3e-3}
    trainer.create_optimizer()  # a second call (a second train()) adds nothing
    assert len(trainer.optimizer.param_groups) == len(optimizer.param_groups) == 4


@pytest.mark.slow
def test_two_processes_average_the_projection_gradients(tmp_path):
    """torchrun, 2 CPU processes (gloo): the projection, outside DDP, ends as in a 1-process run of the same batch."""
    from distributed_worker import train_once

    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(REPO / "tests" / "distributed_worker.py"), str(tmp_path / "ddp"), "projection"]  # fmt: skip
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-6000:]
    reference = train_once("projection", tmp_path / "one", world_size=1)
    expected_projection = projection_state(reference)
    for rank in (0, 1):
        got = torch.load(tmp_path / "ddp" / f"projection-projection-rank{rank}.pt")
        for name, value in expected_projection.items():
            torch.testing.assert_close(got[name], value, rtol=1e-5, atol=1e-6, msg=f"rank {rank}: {name}")
    trained = torch.load(tmp_path / "ddp" / "projection-student.pt")
    for name, value in reference.model.state_dict().items():
        torch.testing.assert_close(trained[name], value, rtol=1e-5, atol=1e-6, msg=name)
