"""Every task head: the distilled positions, the per-token normalisation, padding and accumulation invariance.

The references are written from the definitions: loops over examples and positions, one distribution at a time,
with `F.kl_div` / `F.cross_entropy` on single rows, and the models' own `loss` for the cross-entropy.
"""

import copy
import random

import pytest
import torch
import torch.nn.functional as F
from conftest import VOCAB_SIZE, pad_collator
from datasets import Dataset
from transformers import (
    BertConfig,
    BertForMaskedLM,
    BertForQuestionAnswering,
    BertForSequenceClassification,
    BertForTokenClassification,
    GPT2Config,
    GPT2LMHeadModel,
)

from hf_distill import DistillationArguments, DistillationTrainer
from hf_distill.tasks import detect_task

NUM_TAGS = 5
T = 2.0


def bert(cls, num_layers, seed, **overrides):
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=VOCAB_SIZE, hidden_size=32, num_hidden_layers=num_layers, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        initializer_range=0.3, **overrides,
    )  # fmt: skip
    return cls(config)


def gpt2(num_layers, seed):
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=VOCAB_SIZE, n_embd=32, n_head=4, n_layer=num_layers, n_positions=64,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, initializer_range=0.3)  # fmt: skip
    return GPT2LMHeadModel(config)


PAIRS = {
    "token-classification": lambda: (bert(BertForTokenClassification, 4, 1, num_labels=NUM_TAGS),
                                     bert(BertForTokenClassification, 2, 2, num_labels=NUM_TAGS)),
    "question-answering": lambda: (bert(BertForQuestionAnswering, 4, 1), bert(BertForQuestionAnswering, 2, 2)),
    "masked-lm": lambda: (bert(BertForMaskedLM, 4, 1), bert(BertForMaskedLM, 2, 2)),
    "causal-lm": lambda: (gpt2(4, 1), gpt2(2, 2)),
}  # fmt: skip


def rows(task: str, n: int, seed: int) -> list[dict]:
    """Examples of very different lengths and numbers of distilled positions."""
    rng = random.Random(seed)
    examples = []
    for _ in range(n):
        length = rng.randint(3, 16)
        ids = [2] + [rng.randint(5, VOCAB_SIZE - 1) for _ in range(length - 2)] + [3]
        example = {"input_ids": ids}
        if task == "token-classification":  # -100 on special tokens and on some "sub-word" pieces
            example["labels"] = [-100] + [rng.randrange(NUM_TAGS) if rng.random() < 0.7 else -100
                                          for _ in ids[1:-1]] + [-100]  # fmt: skip
        elif task == "masked-lm":
            positions = [i for i in range(1, length - 1) if rng.random() < 0.4] or [1]
            example["labels"] = [ids[i] if i in positions else -100 for i in range(length)]
            example["input_ids"] = [4 if i in positions else t for i, t in enumerate(ids)]  # 4: the [MASK] id
        elif task == "causal-lm":
            example["labels"] = list(ids)
        elif task == "question-answering":
            start = rng.randrange(1, length - 1)
            example["start_positions"], example["end_positions"] = start, rng.randrange(start, length - 1)
        examples.append(example)
    return examples


def make_trainer(tmp_path, teacher, student, data=None, **overrides):
    settings = dict(output_dir=str(tmp_path / "out"), per_device_train_batch_size=8, max_steps=1, report_to=[],
                    use_cpu=True, save_strategy="no", seed=0, disable_tqdm=True, temperature=T, alpha=0.3, beta=0.7,
                    gamma=0.0, logging_steps=1)  # fmt: skip
    settings.update(overrides)
    return DistillationTrainer(model=student, teacher_model=teacher, args=DistillationArguments(**settings),
                               train_dataset=data, eval_dataset=data, data_collator=pad_collator)  # fmt: skip


def kd_row(student_row: torch.Tensor, teacher_row: torch.Tensor) -> torch.Tensor:
    """T^2 KL(softmax(t/T) || softmax(s/T)) of one distribution."""
    return F.kl_div(F.log_softmax(student_row / T, -1), F.softmax(teacher_row / T, -1), reduction="sum") * T * T


def reference_terms(task: str, teacher, student, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(CE, KD) of a batch from the definitions: per token over the distilled tokens, per example for QA."""
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    with torch.no_grad():
        t_out, s_out = copy.deepcopy(teacher).eval()(**inputs), copy.deepcopy(student).eval()(**inputs)
        labels = {k: v for k, v in batch.items() if k not in inputs}
        ce = copy.deepcopy(student).eval()(**inputs, **labels).loss  # the model's own task loss
    lengths = batch["attention_mask"].sum(1).tolist()
    if task == "question-answering":  # softmax over the real tokens only (BERT's own loss includes the padding)
        per_example, ce_per_example = [], []
        for b, n in enumerate(lengths):
            per_example.append((kd_row(s_out.start_logits[b, :n], t_out.start_logits[b, :n])
                                + kd_row(s_out.end_logits[b, :n], t_out.end_logits[b, :n])) / 2)  # fmt: skip
            start = F.cross_entropy(s_out.start_logits[b, :n], batch["start_positions"][b])
            ce_per_example.append((start + F.cross_entropy(s_out.end_logits[b, :n], batch["end_positions"][b])) / 2)
        return torch.stack(ce_per_example).mean(), torch.stack(per_example).mean()
    per_token = []
    for b, n in enumerate(lengths):
        for i in range(n):
            if task == "causal-lm":  # position i predicts token i + 1
                if i + 1 < n and batch["labels"][b, i + 1] != -100:
                    per_token.append(kd_row(s_out.logits[b, i], t_out.logits[b, i]))
            elif batch["labels"][b, i] != -100:
                per_token.append(kd_row(s_out.logits[b, i], t_out.logits[b, i]))
    return ce, torch.stack(per_token).mean()  # mean over tokens, not over sequences


@pytest.mark.parametrize("task", list(PAIRS))
def test_terms_match_the_definitions_per_token(tmp_path, task):
    teacher, student = PAIRS[task]()
    trainer = make_trainer(tmp_path, teacher, student)
    assert trainer.task.name == task == detect_task(student).name
    batch = pad_collator(rows(task, 6, seed=5))
    trainer.model.eval()
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, batch)
    means = trainer._pop_term_means("eval")
    ce, kd = reference_terms(task, teacher, student, batch)
    assert kd.item() > 1e-3
    assert means["loss_ce"] == pytest.approx(ce.item(), rel=1e-4)
    assert means["loss_kd"] == pytest.approx(kd.item(), rel=1e-4)
    assert loss.item() == pytest.approx(ce.item(), rel=1e-4)  # eval_loss is the task loss


@pytest.mark.parametrize("task", list(PAIRS))
def test_training_loss_is_the_weighted_sum_normalised_per_unit(tmp_path, task):
    teacher, student = PAIRS[task]()
    trainer = make_trainer(tmp_path, teacher, student)
    batch = pad_collator(rows(task, 6, seed=6))
    trainer.model.train()
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, batch)
    ce, kd = reference_terms(task, teacher, student, batch)
    assert loss.item() == pytest.approx(0.3 * ce.item() + 0.7 * kd.item(), rel=1e-4)


@pytest.mark.parametrize("task", list(PAIRS))
def test_appending_padding_changes_no_term(tmp_path, task):
    teacher, student = PAIRS[task]()
    trainer = make_trainer(tmp_path, teacher, student, gamma=0.5 if task != "causal-lm" else 0.0)
    examples = rows(task, 5, seed=8)
    batch = pad_collator(examples)
    extra = 7
    padded = {k: F.pad(v, (0, extra), value=-100 if k == "labels" else 0) if v.dim() == 2 else v
              for k, v in batch.items()}  # fmt: skip
    trainer.model.eval()
    results = []
    for b in (batch, padded):
        with torch.no_grad():
            trainer.compute_loss(trainer.model, b)
        results.append(trainer._pop_term_means("eval"))
    assert results[0].keys() == results[1].keys()
    for name, value in results[0].items():
        assert results[1][name] == pytest.approx(value, rel=1e-4, abs=1e-6), name


@pytest.mark.parametrize("task", list(PAIRS))
def test_gradient_accumulation_matches_one_big_batch(tmp_path, task):
    """8 x 1 and 4 x 2 accumulation steps give the same SGD update although the micro-batches hold different
    numbers of distilled tokens (a per-micro-batch mean would weigh them wrongly)."""
    data = Dataset.from_list(rows(task, 8, seed=11))
    teacher, _ = PAIRS[task]()
    results = []
    for batch_size, accumulation in ((8, 1), (4, 2)):
        _, student = PAIRS[task]()
        trainer = make_trainer(tmp_path, teacher, student, data, per_device_train_batch_size=batch_size,
                               gradient_accumulation_steps=accumulation, optim="sgd", learning_rate=1.0,
                               lr_scheduler_type="constant", max_grad_norm=0.0)  # fmt: skip
        trainer.train()
        results.append(({k: v.clone() for k, v in student.state_dict().items()}, trainer.state.log_history[0]))
    (big, big_log), (small, small_log) = results
    ce, kd = reference_terms(task, teacher, PAIRS[task]()[1], pad_collator(list(data)))  # the step's loss, per unit
    assert big_log["loss"] == pytest.approx(0.3 * ce.item() + 0.7 * kd.item(), rel=1e-4)
    assert big_log["loss"] == pytest.approx(small_log["loss"], rel=1e-5)
    for name in ("loss_ce", "loss_kd"):
        assert big_log[name] == pytest.approx(small_log[name], rel=1e-5)
    initial = PAIRS[task]()[1].state_dict()
    assert any(not torch.equal(big[k], initial[k]) for k in big), "the update moved no weight"
    for name in big:
        torch.testing.assert_close(big[name], small[name], rtol=1e-4, atol=1e-6, msg=name)


def test_causal_lm_distils_only_where_the_next_label_counts(tmp_path):
    """A prompt masked with -100 in the labels is not distilled: only the answer tokens' predictions are."""
    teacher, student = PAIRS["causal-lm"]()
    trainer = make_trainer(tmp_path, teacher, student)
    examples = rows("causal-lm", 4, seed=9)
    for example in examples:
        example["labels"][: len(example["labels"]) // 2] = [-100] * (len(example["labels"]) // 2)
    batch = pad_collator(examples)
    trainer.model.eval()
    with torch.no_grad():
        trainer.compute_loss(trainer.model, batch)
    means = trainer._pop_term_means("eval")
    _, kd = reference_terms("causal-lm", teacher, student, batch)
    assert means["loss_kd"] == pytest.approx(kd.item(), rel=1e-4)


def test_token_classification_without_labels_distils_every_real_token(tmp_path):
    teacher, student = PAIRS["token-classification"]()
    trainer = make_trainer(tmp_path, teacher, student, alpha=0.0)
    batch = pad_collator([{"input_ids": r["input_ids"]} for r in rows("token-classification", 4, seed=10)])
    trainer.model.eval()
    with torch.no_grad():
        trainer.compute_loss(trainer.model, batch)
    means = trainer._pop_term_means("eval")
    with torch.no_grad():
        t_logits = teacher.eval()(**batch).logits
        s_logits = copy.deepcopy(student).eval()(**batch).logits
    mask = batch["attention_mask"].bool()
    expected = torch.stack([kd_row(s, t) for s, t in zip(s_logits[mask], t_logits[mask])]).mean()
    assert "loss_ce" not in means
    assert means["loss_kd"] == pytest.approx(expected.item(), rel=1e-4)


def test_masked_lm_without_labels_is_refused_before_training(tmp_path):
    teacher, student = PAIRS["masked-lm"]()
    data = Dataset.from_list([{"input_ids": r["input_ids"]} for r in rows("masked-lm", 8, seed=1)])
    trainer = make_trainer(tmp_path, teacher, student, data, alpha=0.0)
    with pytest.raises(ValueError, match="`labels`.*DataCollatorForLanguageModeling"):
        trainer.train()
    assert trainer.state.global_step == 0


def test_teacher_with_another_head_is_refused(tmp_path):
    with pytest.raises(ValueError, match="same task head.*AutoModelForTokenClassification"):
        make_trainer(tmp_path, bert(BertForSequenceClassification, 4, 1),
                     bert(BertForTokenClassification, 2, 2, num_labels=2))  # fmt: skip


def test_teacher_cache_is_refused_for_token_level_tasks(tmp_path):
    teacher, student = PAIRS["masked-lm"]()
    data = Dataset.from_list(rows("masked-lm", 8, seed=1))
    with pytest.raises(ValueError, match="teacher_cache_dir.*masked-lm.*Leave teacher_cache_dir unset"):
        make_trainer(tmp_path, teacher, student, data, teacher_cache_dir=str(tmp_path / "cache"))


def test_question_answering_with_positions_past_the_end_ignores_them(tmp_path):
    """As BERT's own loss does: a start/end outside the sequence (a truncated answer) is not a target."""
    teacher, student = PAIRS["question-answering"]()
    trainer = make_trainer(tmp_path, teacher, student)
    batch = pad_collator(rows("question-answering", 4, seed=12))
    batch["start_positions"][0] = 500
    trainer.model.eval()
    with torch.no_grad():
        trainer.compute_loss(trainer.model, batch)
    means = trainer._pop_term_means("eval")
    # example 0's start is dropped and its end still counts
    with torch.no_grad():
        out = copy.deepcopy(student).eval()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    per_example, lengths = [], batch["attention_mask"].sum(1).tolist()
    for b, n in enumerate(lengths):
        start = 0.0 if b == 0 else F.cross_entropy(out.start_logits[b, :n], batch["start_positions"][b])
        per_example.append((start + F.cross_entropy(out.end_logits[b, :n], batch["end_positions"][b])) / 2)
    assert means["loss_ce"] == pytest.approx(torch.stack([torch.as_tensor(x) for x in per_example]).mean().item(),
                                             rel=1e-4)  # fmt: skip


def test_sentence_pairs_reach_the_teacher_with_their_token_type_ids(tmp_path):
    teacher = bert(BertForSequenceClassification, 4, 1, type_vocab_size=2)
    student = bert(BertForSequenceClassification, 2, 2, type_vocab_size=2)
    trainer = make_trainer(tmp_path, teacher, student)
    examples = rows("causal-lm", 6, seed=13)  # token ids only; labels below
    batch = pad_collator([{"input_ids": e["input_ids"]} for e in examples])
    segment = torch.zeros_like(batch["input_ids"])
    segment[:, 3:] = 1  # the second text of each pair
    batch["token_type_ids"], batch["labels"] = segment * batch["attention_mask"], torch.tensor([0, 1, 1, 0, 1, 0])
    trainer.model.eval()
    with torch.no_grad():
        trainer.compute_loss(trainer.model, batch)
    means = trainer._pop_term_means("eval")
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    with torch.no_grad():
        t_logits, s_logits = teacher.eval()(**inputs).logits, copy.deepcopy(student).eval()(**inputs).logits
        without_segments = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert not torch.allclose(t_logits, without_segments)  # the segments matter to this teacher
    expected = torch.stack([kd_row(s, t) for s, t in zip(s_logits, t_logits)]).mean()
    assert means["loss_kd"] == pytest.approx(expected.item(), rel=1e-4)


def test_the_task_is_recorded_in_distillation_config(tmp_path):
    teacher, student = PAIRS["token-classification"]()
    assert make_trainer(tmp_path, teacher, student).distillation_record().task == "token-classification"
