"""`hf-distill --augment N`: a transfer set added to the training split only, unlabelled, recorded, and refused where
it does not apply."""

import json

import pytest
from test_cli import assets, cli_args, run_cli, write_rows  # noqa: F401  (fixtures)
from transformers import BertTokenizerFast

from hf_distill import load_distillation_config
from hf_distill.command.cli import parse_args
from hf_distill.command.workflow import prepare_run

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: tiny models on one thread


def prepared(assets, tmp_path, **overrides):  # noqa: F811
    return prepare_run(*parse_args(cli_args(assets, tmp_path / "out", **overrides)))


def test_augment_adds_unlabelled_variants_to_the_training_split_only(assets, tmp_path):  # noqa: F811
    plain = prepared(assets, tmp_path)
    run = prepared(assets, tmp_path, augment=2, augment_p_mask=0.2, augment_p_replace=0.2)
    train, evaluation = run.trainer.train_dataset, run.trainer.eval_dataset
    original = plain.trainer.train_dataset
    assert len(original) == 48 and 48 < len(train) <= 48 * 3
    assert train["labels"][:48] == original["labels"] and train["input_ids"][:48] == original["input_ids"]
    assert set(train["labels"][48:]) == {-100}  # the variants carry no hard label
    assert evaluation["input_ids"] == plain.trainer.eval_dataset["input_ids"]  # validation untouched
    assert -100 not in evaluation["labels"]
    tokenizer = BertTokenizerFast.from_pretrained(assets["teacher"])
    texts = {tokenizer.decode(ids, skip_special_tokens=False) for ids in train["input_ids"][48:]}
    assert any("[MASK]" in t for t in texts)  # masked words, decoded back
    assert not texts & {tokenizer.decode(ids) for ids in original["input_ids"]}  # no copy of an input
    record = run.description["augmentation"]
    assert record == {"multiplier": 2, "p_mask": 0.2, "p_replace": 0.2, "p_ngram": 0.25, "max_ngram": 5,
                      "top_k": 15, "masked_lm": None, "seed": 0, "labelled_rows": 48,
                      "augmented_rows": len(train) - 48}  # fmt: skip
    assert run.description["num_train"] == len(train)
    again = prepared(assets, tmp_path, augment=2, augment_p_mask=0.2, augment_p_replace=0.2)
    assert again.trainer.train_dataset["input_ids"] == train["input_ids"]  # seeded by --seed
    other_seed = prepared(assets, tmp_path, augment=2, augment_p_mask=0.2, augment_p_replace=0.2, seed=1)
    assert other_seed.trainer.train_dataset["input_ids"][48:] != train["input_ids"][48:]


def test_augmented_run_end_to_end_records_the_transfer_set(assets, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "out"
    argv = cli_args(assets, out, augment=1, max_steps=3, eval_steps=3, save_steps=3, gamma=0.0,
                    teacher_cache_dir=str(tmp_path / "cache"))  # fmt: skip
    code, err = run_cli(argv, capsys)
    assert code == 0, err
    record = load_distillation_config(out)
    report = json.loads((out / "report.json").read_text())
    assert record.augmentation == report["data"]["augmentation"]
    assert record.augmentation["multiplier"] == 1 and record.augmentation["labelled_rows"] == 48
    assert report["data"]["num_train"] == 48 + record.augmentation["augmented_rows"]
    assert len(list((tmp_path / "cache").iterdir())) == 1  # the teacher's logits, augmented rows included
    history = json.loads((out / "training_history.json").read_text())
    assert all("loss_kd" in e for e in history["train"])


def test_augment_on_sentence_pairs_augments_both_columns(assets, tmp_path):  # noqa: F811
    rows = [(f"the film was {w}", f"the plot is {v}", i % 2)
            for i, (w, v) in enumerate(zip(["good", "bad", "fine", "dull"] * 4, ["great", "awful"] * 8))]  # fmt: skip
    header = ("premise", "hypothesis", "label")
    train = write_rows(tmp_path / "pairs.tsv", rows, header)
    dev = write_rows(tmp_path / "pairs_dev.tsv", rows[:4], header)
    run = prepared(assets, tmp_path, train_file=str(train), validation_file=str(dev), task="sentence-pair",
                   augment=3, augment_p_mask=0.5, augment_p_ngram=0.0)  # fmt: skip
    data = run.trainer.train_dataset
    assert len(data) > 16 and set(data["labels"][16:]) == {-100}
    tokenizer = BertTokenizerFast.from_pretrained(assets["teacher"])
    halves = [tokenizer.decode(ids).split("[SEP]")[:2] for ids in data["input_ids"][16:]]
    assert any("[MASK]" in a for a, _ in halves) and any("[MASK]" in b for _, b in halves)


@pytest.mark.parametrize(
    "overrides, expected",
    [
        ({"augment": -1}, "--augment=-1 must be >= 0"),
        (
            {"augment": 1, "augment_p_mask": 0.8, "augment_p_replace": 0.5},
            "--augment_p_mask=0.8 + --augment_p_replace",
        ),
        ({"augment": 1, "augment_p_ngram": 1.5}, "--augment_p_ngram=1.5 must be a probability"),
        ({"augment": 1, "augment_masked_lm": "/no/such/mlm"}, "--augment_masked_lm='/no/such/mlm': no such folder"),
    ],
)
def test_bad_augment_options_are_refused_by_name(assets, tmp_path, capsys, overrides, expected):  # noqa: F811
    code, err = run_cli(cli_args(assets, tmp_path / "o", **overrides), capsys)
    assert code == 2 and expected in err, err


def test_augment_is_refused_for_tasks_without_sentences(assets, tmp_path):  # noqa: F811
    from hf_distill.data import DataArguments
    from hf_distill.task_data import prepare_task_data
    from hf_distill.tasks import TASKS

    rows = [{"tokens": ["the", "film"], "ner_tags": [0, 0]}] * 4
    path = tmp_path / "ner.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tokenizer = BertTokenizerFast.from_pretrained(assets["teacher"])
    args = DataArguments(train_file=str(path), validation_file=str(path))
    with pytest.raises(ValueError, match="--task token-classification is not supported: drop --augment"):
        prepare_task_data(TASKS["token-classification"], False, args, tokenizer, None, augment=lambda d, c: d)


def test_augment_masked_lm_replaces_words_by_its_predictions(assets, tmp_path):  # noqa: F811
    """A masked LM whose output bias ranks 'great', 'good', 'fine' first: every word becomes one of them."""
    import torch
    from transformers import BertConfig, BertForMaskedLM

    tokenizer = BertTokenizerFast.from_pretrained(assets["teacher"])
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=64)  # fmt: skip
    mlm = BertForMaskedLM(config)
    vocab = tokenizer.get_vocab()
    with torch.no_grad():
        bias = mlm.cls.predictions.bias
        bias.zero_()
        bias[vocab["great"]], bias[vocab["good"]], bias[vocab["fine"]] = 200.0, 150.0, 100.0
    mlm.save_pretrained(tmp_path / "mlm")
    run = prepared(assets, tmp_path, augment=1, augment_masked_lm=str(tmp_path / "mlm"), augment_p_mask=0.0,
                   augment_p_replace=1.0, augment_p_ngram=0.0, augment_top_k=2)  # fmt: skip
    variants = [
        tokenizer.decode(ids, skip_special_tokens=True).split() for ids in run.trainer.train_dataset["input_ids"][48:]
    ]
    # top 2 without the word itself: 'great' and 'good', or 'great' and 'fine' for 'good'
    assert variants and all(set(words) <= {"great", "good", "fine"} for words in variants)
    assert run.description["augmentation"]["masked_lm"] == str(tmp_path / "mlm")
