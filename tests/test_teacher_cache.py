"""The teacher-output cache: same student as without it, the teacher never runs on a hit, stale keys never match."""

import pytest
import torch
from conftest import pad_collator, random_rows, tiny_bert
from datasets import Dataset
from transformers import BertTokenizer, DataCollatorWithPadding

from hf_distill import DistillationArguments, DistillationTrainer
from hf_distill.teacher_cache import TEACHER_LOGITS, teacher_cache_key, with_teacher_logits

NO_DROPOUT = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


class CountingTeacher:
    """Counts the teacher's forward passes (a forward hook, so the model itself is untouched)."""

    def __init__(self, model):
        self.calls = 0
        model.register_forward_hook(self._hook)

    def _hook(self, module, args, output):
        self.calls += 1


def make_trainer(tmp_path, teacher, student, dataset, cache_dir=None, **overrides):
    settings = dict(
        output_dir=str(tmp_path / "out"), per_device_train_batch_size=8, num_train_epochs=2, logging_steps=2,
        report_to=[], use_cpu=True, save_strategy="no", seed=0, disable_tqdm=True, learning_rate=0.5, optim="sgd",
        alpha=0.0, beta=1.0, gamma=0.0, temperature=1.0, teacher_cache_dir=cache_dir,
    )  # fmt: skip
    settings.update(overrides)
    return DistillationTrainer(
        model=student, teacher_model=teacher, args=DistillationArguments(**settings),
        train_dataset=dataset, data_collator=pad_collator,
    )  # fmt: skip


def with_text(rows):
    """Rows plus a string column the student's forward does not accept (remove_unused_columns must drop it)."""
    return Dataset.from_dict({**rows, "text": [f"row {i}" for i in range(len(rows["label"]))]})


def test_cached_run_trains_the_same_student_and_never_runs_the_teacher_again(tmp_path):
    teacher = tiny_bert(4, seed=1, **NO_DROPOUT)
    counter = CountingTeacher(teacher)
    data = with_text(random_rows(32, seed=3))  # 4 steps per epoch, 2 epochs, shuffled by the Trainer's sampler

    plain = tiny_bert(2, seed=2)  # dropout on: the cache must not disturb the RNG either
    make_trainer(tmp_path, teacher, plain, data).train()
    assert counter.calls == 8  # one teacher forward per training step

    counter.calls = 0
    first = tiny_bert(2, seed=2)
    trainer = make_trainer(tmp_path, teacher, first, data, cache_dir=str(tmp_path / "cache"))
    assert trainer.args.remove_unused_columns
    trainer.train()
    assert counter.calls == 1  # built once (32 rows, one batch of 32), then never run in training
    assert trainer.train_dataset.column_names == ["input_ids", "label", "text"]  # the user's dataset is untouched

    counter.calls = 0
    second = tiny_bert(2, seed=2)
    make_trainer(tmp_path, teacher, second, data, cache_dir=str(tmp_path / "cache")).train()
    assert counter.calls == 0  # a later run reads the cache
    assert len(list((tmp_path / "cache").iterdir())) == 1

    reference = plain.state_dict()
    assert any(not torch.equal(v, tiny_bert(2, seed=2).state_dict()[k]) for k, v in reference.items())
    for student in (first, second):
        for name, value in student.state_dict().items():
            torch.testing.assert_close(value, reference[name], rtol=1e-5, atol=1e-6)


def test_cached_logits_match_the_teacher_row_by_row_on_a_shuffled_dataset(tmp_path):
    teacher = tiny_bert(4, seed=1, **NO_DROPOUT).eval()
    data = Dataset.from_dict(random_rows(40, seed=5)).shuffle(seed=1)  # an indices mapping over the table
    trainer = make_trainer(tmp_path, teacher, tiny_bert(2, seed=2), data, cache_dir=str(tmp_path / "cache"))
    batch = next(iter(trainer.get_train_dataloader()))
    assert batch[TEACHER_LOGITS].shape == (8, 2) and batch[TEACHER_LOGITS].dtype == torch.float32

    cached = with_teacher_logits(data.with_format("torch"), trainer._cached_teacher_logits(data))
    assert cached.format["type"] == "torch"
    for row in cached:
        with torch.no_grad():
            expected = teacher(input_ids=row["input_ids"][None]).logits[0]  # one row alone: no padding at all
        torch.testing.assert_close(row[TEACHER_LOGITS], expected, rtol=1e-5, atol=1e-6)


def test_a_changed_teacher_gets_its_own_cache(tmp_path):
    data = Dataset.from_dict(random_rows(16, seed=3))
    cache = str(tmp_path / "cache")
    make_trainer(tmp_path, tiny_bert(4, seed=1), tiny_bert(2, seed=2), data, cache_dir=cache, max_steps=1).train()
    other = tiny_bert(4, seed=7)
    counter = CountingTeacher(other)
    make_trainer(tmp_path, other, tiny_bert(2, seed=2), data, cache_dir=cache, max_steps=1).train()
    assert counter.calls == 1  # recomputed, not read from the first teacher's cache
    assert len(list((tmp_path / "cache").iterdir())) == 2


def tiny_tokenizer(extra: str = "") -> BertTokenizer:
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "good", "bad", "movie", "very", "not", *extra.split()]
    return BertTokenizer(vocab={word: i for i, word in enumerate(words)})


def test_keys_change_with_teacher_data_tokenizer_and_max_length_and_nothing_else(tmp_path):
    tokenizer = tiny_tokenizer()
    sentences = ["very good movie", "not a good movie at all , very very bad", "bad"]

    def data(max_length=16, labels=(1, 0, 0), tok=tokenizer):
        encoded = tok(sentences, truncation=True, max_length=max_length)
        return Dataset.from_dict({**encoded, "label": list(labels)})

    def key(teacher=None, dataset=None, tok=tokenizer, collator=None, precision="fp32"):
        teacher = teacher if teacher is not None else tiny_bert(2, seed=1)
        collator = collator if collator is not None else DataCollatorWithPadding(tokenizer)
        return teacher_cache_key(teacher, dataset if dataset is not None else data(), tok, collator, precision)[0]

    base = key()
    assert key() == base  # stable: a rebuilt identical teacher, re-tokenised data, a tokenizer used in between
    assert key(dataset=data(labels=(0, 1, 1))) == base  # labels do not change the teacher's logits

    changed_teacher = tiny_bert(2, seed=1)
    with torch.no_grad():
        changed_teacher.bert.encoder.layer[1].attention.self.query.bias[0] += 1e-3
    assert key(teacher=changed_teacher) != base
    assert key(dataset=data(max_length=6)) != base  # truncated at another max length
    assert key(dataset=data().select([0, 2, 1])) != base  # another row order
    assert key(collator=DataCollatorWithPadding(tokenizer, padding="max_length", max_length=32)) != base
    assert key(tok=tiny_tokenizer(extra="great")) != base
    assert key(precision="bf16") != base


def test_cache_refuses_what_it_cannot_do(tmp_path):
    with pytest.raises(ValueError, match="teacher_cache_dir.*gamma=0.4"):
        DistillationArguments(output_dir=str(tmp_path), teacher_cache_dir=str(tmp_path / "c"), gamma=0.4)
    rows = random_rows(8)
    as_list = [{"input_ids": i, "label": y} for i, y in zip(rows["input_ids"], rows["label"])]
    with pytest.raises(ValueError, match="datasets.Dataset`, got list"):
        make_trainer(tmp_path, tiny_bert(4, seed=1), tiny_bert(2, seed=2), as_list, cache_dir=str(tmp_path / "c"))
    taken = Dataset.from_dict({**rows, TEACHER_LOGITS: [[0.0, 0.0]] * 8})
    with pytest.raises(ValueError, match="already has a 'teacher_logits' column"):
        make_trainer(tmp_path, tiny_bert(4, seed=1), tiny_bert(2, seed=2), taken, cache_dir=str(tmp_path / "c"))
