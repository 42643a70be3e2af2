"""Augmentation for a transfer set: the operations against hand-worked cases, and unlabelled rows in training."""

import math
import random

import pytest
import torch
import torch.nn.functional as F
from conftest import VOCAB_SIZE, pad_collator, tiny_bert, wordpiece_tokenizer
from datasets import ClassLabel, Dataset, Features, Value
from transformers import BertConfig, BertForMaskedLM

from hf_distill import (
    DistillationArguments,
    DistillationTrainer,
    augment_dataset,
    augment_texts,
    embedding_neighbours,
)
from hf_distill.teacher_cache import TEACHER_LOGITS

NO_DROPOUT = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
WORDS = ["the", "a", "film", "movie", "plot", "was", "is", "very", "not", "good", "great", "fine", "bad", "dull"]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    tok = wordpiece_tokenizer(tmp_path_factory.mktemp("vocab"), [*WORDS, "##s", "[unused0]", ","], size=VOCAB_SIZE)
    assert len(tok) == VOCAB_SIZE
    return tok


def sentences(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))) for _ in range(n)]


NEIGHBOURS = {"good": ("great", "fine"), "bad": ("dull",), "film": ("movie",)}


# ---- the text operations ---------------------------------------------------------------------------------------


def test_same_seed_same_variants_other_seed_others(tokenizer):
    texts = sentences(30, seed=0)
    kwargs = dict(multiplier=3, tokenizer=tokenizer, word_neighbours=NEIGHBOURS, p_mask=0.2, p_replace=0.3)
    first = augment_texts(texts, seed=7, **kwargs)
    assert first == augment_texts(texts, seed=7, **kwargs)
    assert first != augment_texts(texts, seed=8, **kwargs)
    # input i's draws come from (seed, i): its variants do not depend on the other inputs (without deduplication)
    alone = augment_texts(texts[5:6], seed=7, deduplicate=False, **kwargs)
    together = augment_texts(texts, seed=7, deduplicate=False, **kwargs)
    assert together[5] != alone[0]  # index 5 vs index 0: other streams
    assert augment_texts(texts[:6], seed=7, deduplicate=False, **kwargs)[5] == together[5]


def test_multiplier_gives_that_many_distinct_new_variants(tokenizer):
    texts = [t for t in sentences(60, seed=1) if len(t.split()) >= 6]
    for multiplier in (0, 1, 4):
        out = augment_texts(texts, multiplier=multiplier, tokenizer=tokenizer, word_neighbours=NEIGHBOURS, seed=0)
        assert len(out) == len(texts) and all(len(v) == multiplier for v in out)
        made = [v for row in out for v in row]
        assert len(set(made)) == len(made) and not set(made) & set(texts)
    # a text that cannot change enough gets fewer: one word without candidates has a single variant, '[MASK]'
    assert augment_texts(["plot"], multiplier=3, tokenizer=tokenizer, word_neighbours=NEIGHBOURS) == [["[MASK]"]]
    raw = augment_texts(texts, multiplier=3, tokenizer=tokenizer, p_replace=0, deduplicate=False)
    assert all(len(v) == 3 for v in raw)


def test_all_probabilities_zero_changes_nothing(tokenizer):
    texts = ["the film was good", "a  bad   plot "]  # words are split on any whitespace and joined by one space
    same = augment_texts(texts, multiplier=2, tokenizer=tokenizer, p_mask=0, p_replace=0, p_ngram=0,
                         deduplicate=False)  # fmt: skip
    assert same == [["the film was good"] * 2, ["a bad plot"] * 2]
    # with deduplication a variant equal to an input is no variant
    assert augment_texts(texts[:1], multiplier=2, tokenizer=tokenizer, p_mask=0, p_replace=0, p_ngram=0) == [[]]


def test_p_mask_one_masks_every_word_and_p_replace_one_replaces_every_word_that_has_candidates(tokenizer):
    masked = augment_texts(["the film was good"], multiplier=2, tokenizer=tokenizer, p_mask=1, p_replace=0,
                           p_ngram=0, deduplicate=False)  # fmt: skip
    assert masked == [["[MASK] [MASK] [MASK] [MASK]"] * 2]
    replaced = augment_texts(["the film was bad", "good good"], multiplier=1, tokenizer=tokenizer, p_mask=0,
                             p_replace=1, p_ngram=0, word_neighbours=NEIGHBOURS, deduplicate=False)  # fmt: skip
    assert replaced[0] == ["the movie was dull"]  # one candidate each; 'the' and 'was' have none and stay
    assert set(replaced[1][0].split()) <= {"great", "fine"} and len(replaced[1][0].split()) == 2
    many = augment_texts(["good"] * 400, multiplier=1, tokenizer=tokenizer, p_mask=0, p_replace=1, p_ngram=0,
                         word_neighbours=NEIGHBOURS, deduplicate=False)  # fmt: skip
    picks = [v[0] for v in many]
    assert set(picks) == {"great", "fine"} and 150 < picks.count("great") < 250  # a uniform pick of 2
    # the neighbours are looked up as written, then lower-cased
    assert augment_texts(["Bad"], multiplier=1, tokenizer=tokenizer, p_mask=0, p_replace=1, p_ngram=0,
                         word_neighbours=NEIGHBOURS) == [["dull"]]  # fmt: skip


def test_mask_and_replace_rates_match_their_probabilities(tokenizer):
    """Every word has a candidate here, so the rates are exactly p_mask and p_replace (5 binomial sigmas)."""
    texts = [" ".join(["good"] * 20)] * 200
    p_mask, p_replace = 0.15, 0.3
    out = augment_texts(texts, multiplier=1, tokenizer=tokenizer, word_neighbours=NEIGHBOURS, p_mask=p_mask,
                        p_replace=p_replace, p_ngram=0, deduplicate=False, seed=3)  # fmt: skip
    words = [w for row in out for v in row for w in v.split()]
    n = len(words)
    assert n == 4000
    for expected, count in (
        (p_mask, words.count("[MASK]")),
        (p_replace, n - words.count("[MASK]") - words.count("good")),
    ):
        assert abs(count / n - expected) < 5 * math.sqrt(expected * (1 - expected) / n)


def test_ngram_sampling_keeps_contiguous_subsequences_of_every_length(tokenizer):
    text = "w0 w1 w2 w3 w4 w5 w6 w7"  # distinct words: a variant's position in the text is unambiguous
    words = text.split()
    out = augment_texts([text] * 300, multiplier=1, tokenizer=tokenizer, p_mask=0, p_replace=0, p_ngram=1,
                        max_ngram=5, deduplicate=False)  # fmt: skip
    lengths = set()
    for (variant,) in out:
        got = variant.split()
        start = words.index(got[0])
        assert got == words[start : start + len(got)]
        lengths.add(len(got))
    assert lengths == {1, 2, 3, 4, 5}
    # p_ngram = 0.5: about half of the variants are whole
    half = augment_texts([text] * 400, multiplier=1, tokenizer=tokenizer, p_mask=0, p_replace=0, p_ngram=0.5,
                         deduplicate=False)  # fmt: skip
    assert 150 < sum(v[0] == text for v in half) < 250
    # a 2-word text with n >= 2 drawn stays whole; max_ngram=1 keeps one word
    ones = augment_texts(["a b c"] * 20, multiplier=1, tokenizer=tokenizer, p_mask=0, p_replace=0, p_ngram=1,
                         max_ngram=1, deduplicate=False)  # fmt: skip
    assert {v[0] for v in ones} <= {"a", "b", "c"}


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(p_mask=0.7, p_replace=0.5), "p_mask=0.7 \\+ p_replace=0.5 > 1"),
        (dict(p_mask=-0.1), "p_mask=-0.1 must be a probability"),
        (dict(p_ngram=2), "p_ngram=2 must be a probability"),
        (dict(p_replace=0.2, word_neighbours=None), "no source was given"),
        (dict(max_ngram=0), "max_ngram=0"),
        (dict(multiplier=-1), "multiplier=-1"),
    ],
)
def test_bad_settings_are_refused_by_name(tokenizer, kwargs, message):
    settings = {**dict(multiplier=1, tokenizer=tokenizer, word_neighbours=NEIGHBOURS), **kwargs}
    with pytest.raises(ValueError, match=message):
        augment_texts(["the film"], **settings)


def test_a_tokenizer_without_mask_token_is_refused_for_masking(tokenizer):
    class NoMask:
        mask_token = None

    with pytest.raises(ValueError, match="has no mask_token"):
        augment_texts(["the film"], multiplier=1, tokenizer=NoMask(), p_replace=0)
    # masking off: no mask token needed
    out = augment_texts(["the film"], multiplier=1, tokenizer=NoMask(), p_mask=0, p_replace=0, p_ngram=1, max_ngram=1)
    assert out in ([["the"]], [["film"]])


# ---- replacement sources ---------------------------------------------------------------------------------------


def test_embedding_neighbours_are_the_cosine_top_k_among_whole_words(tokenizer):
    vocab = tokenizer.get_vocab()
    embeddings = torch.zeros(VOCAB_SIZE, 2)
    angles = {"good": 0.0, "great": 0.1, "fine": 0.25, "bad": 3.0, "dull": 2.8, "film": 1.5, "movie": 1.45}
    for word, angle in angles.items():
        embeddings[vocab[word]] = torch.tensor([math.cos(angle), math.sin(angle)]) * (1 + vocab[word])  # norm varies
    embeddings[vocab["[MASK]"]] = torch.tensor([1.0, 0.0])  # special: never a neighbour even though it is closest
    embeddings[vocab["##s"]] = torch.tensor([1.0, 0.01])  # a continuation piece: never a neighbour
    embeddings[vocab["[unused0]"]] = torch.tensor([1.0, 0.02])  # a placeholder: never a neighbour
    # words left at zero have cosine 0 with everything (normalize maps 0 to 0): below the close pairs above
    neighbours = embedding_neighbours(embeddings, tokenizer, top_k=2, chunk_size=3)  # several chunks
    # hand-computed: cosine = cos(angle difference), negative beyond pi/2, so then a zero vector (cosine 0) is closer
    assert neighbours["good"] == ("great", "fine")  # differences 0.1, 0.25
    assert neighbours["great"] == ("good", "fine")  # 0.1, 0.15
    assert neighbours["fine"] == ("great", "good")  # 0.15, 0.25
    assert neighbours["bad"] == ("dull", "film")  # 0.2, 1.5 (cos 0.071 > movie's cos 1.55 = 0.021)
    assert neighbours["dull"] == ("bad", "film")  # 0.2, 1.3 (film) < 1.35 (movie)
    assert neighbours["film"] == ("movie", "fine")  # 0.05, 1.25 (fine) < 1.3 (dull)
    assert neighbours["movie"] == ("film", "fine")  # 0.05, 1.2
    assert (
        "[MASK]" not in neighbours
        and "##s" not in neighbours
        and "[unused0]" not in neighbours
        and "," not in neighbours
    )
    assert all(len(v) == 2 for v in neighbours.values())
    assert set(neighbours) == set(WORDS)


def test_masked_lm_candidates_are_its_top_whole_word_predictions(tokenizer):
    """An MLM whose output bias dominates: its ranking is known, so TinyBERT's rule can be checked by hand."""
    torch.manual_seed(0)
    config = BertConfig(vocab_size=VOCAB_SIZE, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=64)  # fmt: skip
    mlm = BertForMaskedLM(config).eval()
    vocab = tokenizer.get_vocab()
    with torch.no_grad():
        bias = (
            mlm.cls.predictions.decoder.bias
            if mlm.cls.predictions.decoder.bias is not None
            else mlm.cls.predictions.bias
        )
        bias.zero_()
        for token, value in (("##s", 300.0), ("[SEP]", 250.0), ("great", 200.0), ("good", 150.0), ("dull", 100.0)):
            bias[vocab[token]] = value  # '##s' and '[SEP]' rank first but are not whole words
    kwargs = dict(multiplier=1, tokenizer=tokenizer, masked_lm=mlm, p_mask=0, p_replace=1, p_ngram=0, top_k=1,
                  deduplicate=False)  # fmt: skip
    modes = []
    mlm.register_forward_hook(lambda module, args, output: modes.append(module.training))
    mlm.train()  # predicted in eval mode (no dropout), then left in training mode
    assert augment_texts(["the film"], **kwargs) == [["great great"]]
    assert modes == [False] and mlm.training
    assert augment_texts(["great film"], **kwargs) == [["good great"]]  # never the word itself
    two = augment_texts(["the"] * 200, **{**kwargs, "top_k": 2})
    assert {v[0] for v in two} == {"great", "good"}
    # a word of several pieces goes to the neighbours (TinyBERT), or stays as it is without them
    assert augment_texts(["films"], **kwargs) == [["films"]]
    assert augment_texts(["films good"], **{**kwargs, "word_neighbours": {"films": ("plot",)}}) == [["plot great"]]


# ---- datasets ----------------------------------------------------------------------------------------------------


def test_augment_dataset_appends_unlabelled_variants_and_carries_the_other_columns(tokenizer):
    data = Dataset.from_dict({"premise": sentences(10, seed=2), "hypothesis": sentences(10, seed=3),
                              "label": [i % 2 for i in range(10)], "idx": list(range(10))})  # fmt: skip
    out = augment_dataset(data, ["premise", "hypothesis"], 2, tokenizer=tokenizer, word_neighbours=NEIGHBOURS,
                          p_mask=0.3, seed=1)  # fmt: skip
    assert out.column_names == data.column_names and len(out) == 30
    assert out[:10] == data[:10]  # the originals first, unchanged
    new = out.select(range(10, 30))
    assert new["label"] == [-100] * 20 and new["idx"] == [i for i in range(10) for _ in range(2)]
    pairs = list(zip(new["premise"], new["hypothesis"]))
    assert len(set(pairs)) == 20 and not set(pairs) & set(zip(data["premise"], data["hypothesis"]))
    both = [n for n, (p, h) in enumerate(pairs) if p != data["premise"][new["idx"][n]]
            and h != data["hypothesis"][new["idx"][n]]]  # fmt: skip
    assert both, "each text column is augmented, not only the first"
    assert augment_dataset(data, "premise", 0, tokenizer=tokenizer, p_replace=0) is data


def test_augment_dataset_keeps_class_labels_and_refuses_label_names(tokenizer):
    features = Features({"sentence": Value("string"), "label": ClassLabel(names=["neg", "pos"])})
    data = Dataset.from_dict({"sentence": sentences(4, seed=4), "label": [0, 1, 1, 0]}, features=features)
    out = augment_dataset(data, "sentence", 1, tokenizer=tokenizer, p_replace=0)
    assert out["label"] == [0, 1, 1, 0, -100, -100, -100, -100]
    named = Dataset.from_dict({"sentence": ["a film"], "label": ["pos"]})
    with pytest.raises(ValueError, match="label_column='label' has type .*integer class ids"):
        augment_dataset(named, "sentence", 1, tokenizer=tokenizer, p_replace=0)
    with pytest.raises(ValueError, match=r"text_columns=\['text'\] not in the dataset's columns"):
        augment_dataset(named, "text", 1, tokenizer=tokenizer, p_replace=0)
    unlabelled = augment_dataset(named.remove_columns("label"), "sentence", 1, tokenizer=tokenizer, p_replace=0,
                                 label_column=None, p_mask=1)  # fmt: skip
    assert unlabelled["sentence"] == ["a film", "[MASK] [MASK]"]


# ---- unlabelled rows in training ---------------------------------------------------------------------------------


def mixed_rows(tokenizer, n: int = 8) -> Dataset:
    texts = sentences(n, seed=9)
    encoded = tokenizer(texts, truncation=True, max_length=32)
    labels = [i % 2 if i % 3 else -100 for i in range(n)]  # rows 0, 3, 6 unlabelled
    return Dataset.from_dict({"input_ids": encoded["input_ids"], "label": labels})


def make_trainer(tmp_path, teacher, student, data, **overrides):
    settings = dict(
        output_dir=str(tmp_path / "out"), per_device_train_batch_size=8, max_steps=1, logging_steps=1, report_to=[],
        use_cpu=True, save_strategy="no", seed=0, disable_tqdm=True, learning_rate=1.0, optim="sgd",
        lr_scheduler_type="constant", max_grad_norm=0.0, alpha=0.3, beta=0.7, gamma=0.0, temperature=2.0,
    )  # fmt: skip
    settings.update(overrides)
    return DistillationTrainer(model=student, teacher_model=teacher, args=DistillationArguments(**settings),
                               train_dataset=data, data_collator=pad_collator)  # fmt: skip


def reference_step(teacher, student, data, alpha, beta, temperature, lr):
    """Written here from the definitions: per example, alpha * CE (labelled rows only) + beta * T^2 * KL; the
    mean over all examples of the batch; one plain SGD step."""
    batch = pad_collator([data[i] for i in range(len(data))])
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    with torch.no_grad():
        t = teacher(**inputs).logits
    s = student(**inputs).logits
    ce_rows, kd_rows = [], []
    for i in range(len(data)):
        kl = sum(
            F.softmax(t[i] / temperature, -1)[c]
            * (F.log_softmax(t[i] / temperature, -1)[c] - F.log_softmax(s[i] / temperature, -1)[c])
            for c in range(t.shape[1])
        )
        kd_rows.append(temperature**2 * kl)
        label = int(batch["labels"][i])
        if label != -100:
            ce_rows.append(-F.log_softmax(s[i], -1)[label])
    loss = (alpha * sum(ce_rows) + beta * sum(kd_rows)) / len(data)
    loss.backward()
    with torch.no_grad():
        updated = {name: p - lr * p.grad for name, p in student.named_parameters()}
    return loss.item(), (sum(ce_rows) / len(ce_rows)).item(), (sum(kd_rows) / len(kd_rows)).item(), updated


@pytest.mark.parametrize("batch_size, accumulation", [(8, 1), (4, 2)])
def test_a_step_on_labelled_and_unlabelled_rows_uses_ce_on_the_labelled_only(tokenizer, tmp_path, batch_size,
                                                                           accumulation):  # fmt: skip
    teacher = tiny_bert(4, seed=1, **NO_DROPOUT)
    data = mixed_rows(tokenizer)
    loss, ce, kd, updated = reference_step(teacher, tiny_bert(2, seed=2, **NO_DROPOUT), data, 0.3, 0.7, 2.0, 1.0)
    student = tiny_bert(2, seed=2, **NO_DROPOUT)
    trainer = make_trainer(tmp_path, teacher, student, data, per_device_train_batch_size=batch_size,
                           gradient_accumulation_steps=accumulation)  # fmt: skip
    trainer.train()
    log = trainer.state.log_history[0]
    assert log["loss"] == pytest.approx(loss, rel=1e-5)
    assert log["loss_ce"] == pytest.approx(ce, rel=1e-5)  # logged: the mean CE over the labelled rows
    assert log["loss_kd"] == pytest.approx(kd, rel=1e-5)  # over all rows
    for name, value in student.named_parameters():
        torch.testing.assert_close(value.detach(), updated[name], rtol=1e-4, atol=1e-6, msg=name)


def test_a_logging_window_without_labelled_rows_logs_no_ce(tokenizer, tmp_path):
    data = mixed_rows(tokenizer, n=4).map(lambda _: {"label": -100})
    trainer = make_trainer(tmp_path, tiny_bert(4, seed=1), tiny_bert(2, seed=2), data, per_device_train_batch_size=4)
    trainer.train()
    log = trainer.state.log_history[0]
    assert "loss_kd" in log and "loss_ce" not in log  # not a CE of 0: there was nothing to measure


def test_teacher_cache_covers_the_augmented_rows(tokenizer, tmp_path):
    texts = Dataset.from_dict({"sentence": sentences(12, seed=4), "label": [i % 2 for i in range(12)]})
    augmented = augment_dataset(texts, "sentence", 2, tokenizer=tokenizer, word_neighbours=NEIGHBOURS, seed=0)
    assert len(augmented) == 36
    data = augmented.map(lambda r: tokenizer(r["sentence"], truncation=True, max_length=32), batched=True,
                         remove_columns=["sentence"])  # fmt: skip
    teacher = tiny_bert(4, seed=1, **NO_DROPOUT).eval()
    runs = []
    for cache in ("cache", "cache", None):
        student = tiny_bert(2, seed=2, **NO_DROPOUT)
        trainer = make_trainer(tmp_path, teacher, student, data, max_steps=3, per_device_train_batch_size=12,
                               teacher_cache_dir=str(tmp_path / cache) if cache else None)  # fmt: skip
        if cache:  # the cached logits are the teacher's, row by row, augmented rows included
            batch = next(iter(trainer.get_train_dataloader()))
            with torch.no_grad():
                expected = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            torch.testing.assert_close(batch[TEACHER_LOGITS], expected, rtol=1e-5, atol=1e-5)
            assert (batch["labels"] == -100).any() and (batch["labels"] != -100).any()
        trainer.train()
        runs.append({k: v.clone() for k, v in student.state_dict().items()})
    assert len(list((tmp_path / "cache").iterdir())) == 1  # the second run read the first one's cache
    for name, value in runs[2].items():  # and the cache trains the same student as running the teacher
        torch.testing.assert_close(runs[0][name], value, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(runs[1][name], value, rtol=1e-4, atol=1e-5)
