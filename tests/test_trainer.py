"""DistillationTrainer behaviour: the loss it optimises, what it logs, what it saves, and what it leaves alone."""

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from conftest import pad_collator, random_rows, tiny_bert
from datasets import Dataset

from hf_distill import DistillationArguments, DistillationTrainer, load_distillation_config, load_training_history
from hf_distill.modeling import count_parameters

NO_DROPOUT = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def make_args(tmp_path, **overrides):
    settings = dict(
        output_dir=str(tmp_path / "out"), per_device_train_batch_size=8, max_steps=4, logging_steps=2,
        report_to=[], use_cpu=True, save_strategy="no", seed=0, disable_tqdm=True,
    )  # fmt: skip
    settings.update(overrides)
    return DistillationArguments(**settings)


def make_trainer(tmp_path, teacher, student, dataset=None, **overrides):
    dataset = dataset if dataset is not None else Dataset.from_dict(random_rows(32, seed=3))
    return DistillationTrainer(
        model=student, teacher_model=teacher, args=make_args(tmp_path, **overrides),
        train_dataset=dataset, eval_dataset=dataset, data_collator=pad_collator,
    )  # fmt: skip


def a_batch(n=6, seed=7):
    return pad_collator([{"input_ids": i, "label": y} for i, y in zip(*random_rows(n, seed=seed).values())])


# ---- the loss ---------------------------------------------------------------------------------------------------


def reference_loss(teacher, student, batch, args):
    """Written from the formula, with the models' own eager attention maps (no hooks, no recorder)."""
    teacher, student = copy.deepcopy(teacher).eval(), copy.deepcopy(student).train()
    teacher.set_attn_implementation("eager")
    student.set_attn_implementation("eager")
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    with torch.no_grad():
        t_out = teacher(**inputs, output_attentions=True)
        s_out = student(**inputs, output_attentions=True)
    T = args.temperature
    ce = F.cross_entropy(s_out.logits, batch["labels"])
    kd = F.kl_div(F.log_softmax(s_out.logits / T, -1), F.softmax(t_out.logits / T, -1), reduction="batchmean") * T * T
    lengths = batch["attention_mask"].sum(1).tolist()
    layer_losses = []
    for s_layer, t_layer in enumerate(args.layer_map):
        s_map, t_map = s_out.attentions[s_layer].mean(1), t_out.attentions[t_layer].mean(1)
        per_example = [((s_map[b, :n, :n] - t_map[b, :n, :n]) ** 2).mean() for b, n in enumerate(lengths)]
        layer_losses.append(torch.stack(per_example).mean())
    attn = torch.stack(layer_losses).mean()
    return args.alpha * ce + args.beta * kd + args.gamma * attn, (ce, kd, attn)


def test_compute_loss_matches_reference_with_sdpa_models(tmp_path):
    teacher, student = tiny_bert(4, seed=1, **NO_DROPOUT), tiny_bert(2, seed=2, **NO_DROPOUT)
    assert student.config._attn_implementation == "sdpa"
    trainer = make_trainer(tmp_path, teacher, student, layer_map=[1, 3], temperature=2.0, alpha=0.3, beta=0.6,
                           gamma=5.0)  # fmt: skip
    batch = a_batch()
    trainer.model.train()
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, batch)
    expected, (ce, kd, attn) = reference_loss(teacher, student, batch, trainer.args)
    assert attn.item() > 1e-4  # a real, non-zero attention term
    torch.testing.assert_close(loss, expected, rtol=1e-4, atol=1e-6)
    means = trainer._pop_term_means("train")
    assert means["loss_ce"] == pytest.approx(ce.item(), rel=1e-4)
    assert means["loss_kd"] == pytest.approx(kd.item(), rel=1e-4)
    assert means["loss_attn"] == pytest.approx(attn.item(), rel=1e-4)


@pytest.mark.parametrize("attention_loss", ["mse", "kl"])
def test_appending_padding_changes_no_term(tmp_path, attention_loss):
    teacher, student = tiny_bert(4, seed=1, **NO_DROPOUT), tiny_bert(2, seed=2, **NO_DROPOUT)
    trainer = make_trainer(tmp_path, teacher, student, attention_loss=attention_loss)
    trainer.model.train()
    batch = a_batch()
    padded = dict(batch)
    padded["input_ids"] = F.pad(batch["input_ids"], (0, 5), value=0)
    padded["attention_mask"] = F.pad(batch["attention_mask"], (0, 5), value=0)
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, batch)
        plain_terms = trainer._pop_term_means("train")
        padded_loss = trainer.compute_loss(trainer.model, padded)
        padded_terms = trainer._pop_term_means("train")
    torch.testing.assert_close(loss, padded_loss, rtol=1e-5, atol=1e-7)
    assert padded_terms == pytest.approx(plain_terms, rel=1e-5)


def test_return_outputs_gives_student_logits(tmp_path):
    trainer = make_trainer(tmp_path, tiny_bert(4, seed=1), tiny_bert(2, seed=2))
    batch = a_batch(n=5)
    loss, outputs = trainer.compute_loss(trainer.model, batch, return_outputs=True)
    assert loss.dim() == 0 and outputs.logits.shape == (5, 2)


def test_gradient_accumulation_matches_one_big_batch(tmp_path):
    """8 x 1 step and 4 x 2 accumulation steps give the same SGD update (SGD, not Adam, so scale errors show)."""
    data = Dataset.from_dict(random_rows(8, seed=11, min_len=3, max_len=14))
    teacher = tiny_bert(4, seed=1, **NO_DROPOUT)
    results = []
    for batch_size, accumulation in ((8, 1), (4, 2)):
        student = tiny_bert(2, seed=2, **NO_DROPOUT)
        trainer = make_trainer(
            tmp_path, teacher, student, data, per_device_train_batch_size=batch_size,
            gradient_accumulation_steps=accumulation, max_steps=1, optim="sgd", learning_rate=1.0,
            lr_scheduler_type="constant", max_grad_norm=0.0, logging_steps=1,
        )  # fmt: skip
        trainer.train()
        results.append(({k: v.clone() for k, v in student.state_dict().items()}, trainer.state.log_history[0]))
    (big, big_log), (small, small_log) = results
    assert big_log["loss"] == pytest.approx(small_log["loss"], rel=1e-5)
    for name in ("loss_ce", "loss_kd", "loss_attn"):
        assert big_log[name] == pytest.approx(small_log[name], rel=1e-5)
    initial = tiny_bert(2, seed=2).state_dict()
    changed = [k for k in big if not torch.equal(big[k], initial[k])]
    assert changed, "the update moved no weight"
    for name in big:
        torch.testing.assert_close(big[name], small[name], rtol=1e-4, atol=1e-6, msg=name)


# ---- training, logging and artifacts --------------------------------------------------------------------------


def test_training_updates_student_only_and_logs_each_term(tmp_path):
    teacher, student = tiny_bert(4, seed=1), tiny_bert(2, seed=2)
    teacher_before = copy.deepcopy(teacher.state_dict())
    student_before = copy.deepcopy(student.state_dict())
    trainer = make_trainer(tmp_path, teacher, student, max_steps=6, eval_strategy="steps", eval_steps=3,
                           save_strategy="steps", save_steps=3)  # fmt: skip
    trainer.train()
    assert all(torch.equal(teacher_before[k], v) for k, v in teacher.state_dict().items())
    assert any(not torch.equal(student_before[k], v) for k, v in student.state_dict().items())
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())

    train_logs = [e for e in trainer.state.log_history if "loss" in e]
    assert len(train_logs) == 3
    for entry in train_logs:
        assert {"loss_ce", "loss_kd", "loss_attn", "learning_rate"} <= set(entry)
        assert entry["loss_attn"] > 0
    eval_logs = [e for e in trainer.state.log_history if "eval_loss" in e]
    assert eval_logs and {"eval_loss_ce", "eval_loss_kd", "eval_loss_attn", "eval_distillation_loss"} <= set(
        eval_logs[0]
    )


def test_eval_loss_is_the_task_cross_entropy(tmp_path):
    teacher, student = tiny_bert(4, seed=1), tiny_bert(2, seed=2)
    data = Dataset.from_dict(random_rows(10, seed=5))
    trainer = make_trainer(tmp_path, teacher, student, data, per_device_eval_batch_size=10)
    metrics = trainer.evaluate()
    batch = pad_collator([data[i] for i in range(10)])
    student.eval()
    with torch.no_grad():
        logits = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert metrics["eval_loss"] == pytest.approx(F.cross_entropy(logits, batch["labels"]).item(), rel=1e-5)
    assert metrics["eval_loss_ce"] == pytest.approx(metrics["eval_loss"], rel=1e-6)
    expected = 0.1 * metrics["eval_loss_ce"] + 0.5 * metrics["eval_loss_kd"] + 0.4 * metrics["eval_loss_attn"]
    assert metrics["eval_distillation_loss"] == pytest.approx(expected, rel=1e-6)


def test_artifacts_in_every_checkpoint_and_final_output(tmp_path):
    teacher, student = tiny_bert(4, seed=1), tiny_bert(2, seed=2)
    trainer = make_trainer(tmp_path, teacher, student, max_steps=4, save_strategy="steps", save_steps=2,
                           eval_strategy="steps", eval_steps=2, metric_for_best_model="loss",
                           learning_rate=3e-4)  # fmt: skip
    trainer.train()
    trainer.save_model()
    out = tmp_path / "out"
    for folder in (out / "checkpoint-2", out / "checkpoint-4", out):
        record = load_distillation_config(folder)
        assert record.teacher_num_parameters == count_parameters(teacher)
        assert record.student_num_parameters == count_parameters(student)
        assert record.compression_ratio == pytest.approx(count_parameters(teacher) / count_parameters(student), 1e-3)
        assert (record.teacher_num_layers, record.student_num_layers) == (4, 2)
        assert record.layer_map == [1, 3]
        assert (record.temperature, record.alpha, record.beta, record.gamma) == (4.0, 0.1, 0.5, 0.4)
        assert record.attention_loss == "mse" and record.seed == 0 and record.learning_rate == 3e-4
        assert record.versions["transformers"] and record.training_time_seconds > 0
        history = load_training_history(folder)
        assert all("loss_kd" in entry for entry in history["train"])
        assert not list(folder.glob(".*.tmp"))  # atomic writes leave no temporary files
    assert load_distillation_config(out / "checkpoint-2").global_step == 2
    assert len(load_training_history(out / "checkpoint-2")["train"]) == 1
    final = load_distillation_config(out)
    assert final.global_step == 4 and final.best_metric is not None
    assert len(load_training_history(out)["train"]) == 2
    assert json.loads((out / "distillation_config.json").read_text())["loss_formula"].startswith("alpha * CE")


def test_gamma_zero_computes_no_attention_maps(tmp_path, monkeypatch):
    from hf_distill import attention

    def forbidden(*args, **kwargs):
        raise AssertionError("attention maps computed with gamma=0")

    monkeypatch.setattr(attention.AttentionRecorder, "__init__", forbidden)
    trainer = make_trainer(tmp_path, tiny_bert(4, seed=1), tiny_bert(2, seed=2), gamma=0.0, max_steps=2)
    trainer.train()
    assert all("loss_attn" not in entry for entry in trainer.state.log_history)


def test_teacher_given_as_a_path_is_loaded_frozen(tmp_path):
    teacher = tiny_bert(4, seed=1)
    teacher.save_pretrained(tmp_path / "teacher")
    trainer = make_trainer(tmp_path, str(tmp_path / "teacher"), tiny_bert(2, seed=2), max_steps=1)
    assert trainer.teacher_name_or_path == str(tmp_path / "teacher")
    assert not trainer.teacher_model.training
    assert all(not p.requires_grad for p in trainer.teacher_model.parameters())
    torch.testing.assert_close(trainer.teacher_model.classifier.weight, teacher.classifier.weight)
    trainer.train()
    trainer.save_model()
    assert load_distillation_config(tmp_path / "out").teacher_model == str(tmp_path / "teacher")


def test_teacher_is_kept_in_eval_mode(tmp_path):
    teacher = tiny_bert(4, seed=1)
    trainer = make_trainer(tmp_path, teacher, tiny_bert(2, seed=2), max_steps=1)
    teacher.train()  # a user mistake: dropout would make the targets noisy
    trainer.train()
    assert not teacher.training


def test_predict_reports_the_terms_under_the_test_prefix(tmp_path):
    data = Dataset.from_dict(random_rows(12, seed=4))
    trainer = make_trainer(tmp_path, tiny_bert(4, seed=1), tiny_bert(2, seed=2), data)
    output = trainer.predict(data)
    assert output.predictions.shape == (12, 2)
    assert {"test_loss", "test_loss_ce", "test_loss_kd", "test_loss_attn"} <= set(output.metrics)
