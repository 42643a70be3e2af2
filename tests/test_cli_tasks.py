"""`hf-distill --task`: every task end to end on tiny models and tiny local files, its metrics, and its bad input."""

import json
import math
import random
import re
import string
from collections import Counter
from pathlib import Path

import pytest
import torch
from conftest import wordpiece_tokenizer
from test_cli import run_cli, to_argv
from transformers import (
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForQuestionAnswering,
    AutoModelForTokenClassification,
    BertConfig,
    BertForMaskedLM,
    BertForQuestionAnswering,
    BertForSequenceClassification,
    BertForTokenClassification,
    DataCollatorForLanguageModeling,
    GPT2Config,
    GPT2LMHeadModel,
)

from hf_distill import load_distillation_config, load_training_history
from hf_distill.task_metrics import entity_scores, get_entities, squad_exact_match, squad_f1

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: tiny models on one thread

PEOPLE, PLACES = ["anna", "bob", "carl", "dora"], ["paris", "rome", "oslo", "berlin"]  # "berlin" is "ber ##lin"
FILLER = ["visited", "met", "in", "and", "the", "city", "today", "lives", "where", "does", "who", "live", "saw"]
TAGS = {0: "O", 1: "B-PER", 2: "I-PER", 3: "B-LOC", 4: "I-LOC"}
VOCAB_SIZE = 64


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def bert_config(**overrides) -> BertConfig:
    return BertConfig(vocab_size=VOCAB_SIZE, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                      intermediate_size=64, max_position_embeddings=64, **overrides)  # fmt: skip


def save(model, tokenizer, directory: Path) -> str:
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return str(directory)


# ---- data --------------------------------------------------------------------------------------------------------


def ner_rows(n: int, seed: int, names: bool) -> list[dict]:
    """Sentences of people and places, IOB2 tags per word ("anna carl" is one two-word person)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        person = [rng.choice(PEOPLE)] + ([rng.choice(PEOPLE)] if rng.random() < 0.3 else [])
        place = rng.choice(PLACES)
        words = [*person, rng.choice(["visited", "saw"]), "the", "city", "of", place, "today"][: rng.randint(5, 8)]
        tags = ["B-PER"] + ["I-PER"] * (len(person) - 1) + ["O"] * (len(words) - len(person))
        if place in words:
            tags[words.index(place)] = "B-LOC"
        ids = {v: k for k, v in TAGS.items()}
        rows.append({"tokens": words, "ner_tags": tags if names else [ids[t] for t in tags]})
    return rows


def qa_rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        people = rng.sample(PEOPLE, 2)
        places = rng.sample(PLACES, 2)
        context = f"{people[0]} lives in {places[0]} and {people[1]} lives in {places[1]} today"
        asked = rng.randint(0, 1)
        start = context.index(f"in {places[asked]}") + 3
        rows.append({"question": f"where does {people[asked]} live", "context": context,
                     "answers": {"text": [places[asked]], "answer_start": [start]}})  # fmt: skip
    return rows


def text_rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    return [{"text": f"{rng.choice(PEOPLE)} met {rng.choice(PEOPLE)} in {rng.choice(PLACES)} today"} for _ in range(n)]


# ---- models ------------------------------------------------------------------------------------------------------


def trained(model, batches, steps=40):
    """A few Adam steps so the teacher's predictions (and hence the metrics) are not constant."""
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for step in range(steps):
        optimizer.zero_grad()
        model(**batches[step % len(batches)]).loss.backward()
        optimizer.step()
    return model.eval()


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("tasks")
    tokens = [*PEOPLE[:3], *PLACES[:3], "ber", "##lin", *FILLER, "of"]
    tokenizer = wordpiece_tokenizer(root, tokens, size=VOCAB_SIZE, filler="##y")
    assert len(tokenizer) == VOCAB_SIZE and tokenizer.tokenize("dora in berlin") == ["[UNK]", "in", "ber", "##lin"]
    assets = {"root": root, "tokenizer": tokenizer}

    torch.manual_seed(0)
    ner = BertForTokenClassification(bert_config(id2label=TAGS, label2id={v: k for k, v in TAGS.items()}))
    rows = ner_rows(32, seed=0, names=False)
    batch = tokenizer([r["tokens"] for r in rows], is_split_into_words=True, padding=True, return_tensors="pt")
    labels = [[-100 if w is None else r["ner_tags"][w] for w in batch.word_ids(i)] for i, r in enumerate(rows)]
    assets["ner"] = save(trained(ner, [{**batch, "labels": torch.tensor(labels)}]), tokenizer, root / "ner")
    assets["ner_train"] = write_jsonl(root / "ner_train.jsonl", ner_rows(32, seed=0, names=True))
    assets["ner_dev"] = write_jsonl(root / "ner_dev.jsonl", ner_rows(12, seed=1, names=False))

    torch.manual_seed(0)
    rows = qa_rows(32, seed=0)
    batch = tokenizer([r["question"] for r in rows], [r["context"] for r in rows], padding=True, return_tensors="pt",
                      return_offsets_mapping=True)  # fmt: skip
    offsets = batch.pop("offset_mapping").tolist()
    spans = [reference_span(offsets[i], batch.sequence_ids(i), r) for i, r in enumerate(rows)]
    targets = {
        "start_positions": torch.tensor([s for s, _ in spans]),
        "end_positions": torch.tensor([e for _, e in spans]),
    }
    assets["qa"] = save(
        trained(BertForQuestionAnswering(bert_config()), [{**batch, **targets}]), tokenizer, root / "qa"
    )
    assets["qa_train"] = write_jsonl(root / "qa_train.jsonl", rows)
    assets["qa_dev"] = write_jsonl(root / "qa_dev.jsonl", qa_rows(12, seed=1))

    torch.manual_seed(0)
    assets["nli"] = save(BertForSequenceClassification(bert_config()), tokenizer, root / "nli")
    assets["mlm"] = save(BertForMaskedLM(bert_config()), tokenizer, root / "mlm")
    gpt2 = GPT2Config(n_layer=4, n_embd=32, n_head=2, vocab_size=VOCAB_SIZE, n_positions=64)
    assets["gpt2"] = save(GPT2LMHeadModel(gpt2), tokenizer, root / "gpt2")
    assets["text_train"] = write_jsonl(root / "text_train.jsonl", text_rows(24, seed=0))
    assets["text_dev"] = write_jsonl(root / "text_dev.jsonl", text_rows(10, seed=1))
    return assets


def reference_span(offsets, sequence_ids, row) -> tuple[int, int]:
    """The answer's first and last token, found the slow way: tokens whose characters overlap the answer."""
    first = row["answers"]["answer_start"][0]
    last = first + len(row["answers"]["text"][0])
    inside = [t for t, (a, b) in enumerate(offsets) if sequence_ids[t] == 1 and a < last and b > first]
    return inside[0], inside[-1]


def options(assets, model: str, train: str, dev: str, out: Path, **overrides) -> list[str]:
    settings = {
        "teacher_model_name_or_path": assets[model], "student_num_layers": 2, "train_file": assets[train],
        "validation_file": assets[dev], "output_dir": str(out), "max_steps": 4, "per_device_train_batch_size": 8,
        "per_device_eval_batch_size": 8, "logging_steps": 2, "eval_strategy": "steps", "eval_steps": 4,
        "save_strategy": "no", "max_seq_length": 32, "latency_samples": 1, "use_cpu": True, "report_to": "none",
        "disable_tqdm": True, "seed": 0, "learning_rate": 1e-3,
    } | overrides  # fmt: skip
    return to_argv({k: v for k, v in settings.items() if v is not None})


def run_ok(argv, capsys, primary: str, names: set[str]) -> dict:
    code, err = run_cli(argv, capsys)
    assert code == 0, err
    out = Path(argv[argv.index("--output_dir") + 1])
    report = json.loads((out / "report.json").read_text())
    assert report["metric"] == primary
    for row in ("teacher", "student_before", "student_after"):
        assert set(report["evaluation"][row]["metrics"]) == names, row
    # Trainer.evaluate (compute_metrics + preprocess_logits_for_metrics) and the command's own pass agree
    assert load_training_history(out)["eval"][-1][f"eval_{primary}"] == pytest.approx(
        report["evaluation"]["student_after"]["metrics"][primary]
    )
    assert report["comparison"]["student_after"] == report["evaluation"]["student_after"]["metrics"][primary]
    assert (out / "training_curves.png").is_file()
    return report


# ---- independent references ----------------------------------------------------------------------------------------


def reference_entities(tags: list[str]) -> set[tuple[str, int, int]]:
    """conlleval's reading of IOB tags: an entity continues only with I- of its own type."""
    found, current = set(), None  # current: [type, first, last]
    for i, tag in enumerate(tags):
        kind = tag[2:]
        if current is not None and tag == f"I-{current[0]}":
            current[2] = i
            continue
        if current is not None:
            found.add(tuple(current))
        current = [kind, i, i] if tag != "O" else None
    if current is not None:
        found.add(tuple(current))
    return found


def official_normalize(s: str) -> str:  # SQuAD v1.1 evaluate script, verbatim logic
    s = s.lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def official_f1(prediction: str, truth: str) -> float:
    pred, gold = official_normalize(prediction).split(), official_normalize(truth).split()
    same = sum((Counter(pred) & Counter(gold)).values())
    return 0.0 if same == 0 else 2 * (same / len(pred)) * (same / len(gold)) / (same / len(pred) + same / len(gold))


# ---- hand-computed metric cases ------------------------------------------------------------------------------------


def test_entities_and_their_scores_by_hand():
    assert get_entities(["B-PER", "I-PER", "O", "B-LOC"]) == [("PER", 0, 1), ("LOC", 3, 3)]
    assert get_entities(["I-PER", "I-LOC", "B-LOC", "I-LOC"]) == [("PER", 0, 0), ("LOC", 1, 1), ("LOC", 2, 3)]
    assert get_entities(["O", "O"]) == []
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-LOC", "O"]]  # 3 entities
    pred = [["B-PER", "O", "O", "B-LOC"], ["B-LOC", "B-PER"]]  # 4 entities, 2 right (PER 0-0 is not PER 0-1)
    scores = entity_scores(pred, gold)
    assert scores["precision"] == pytest.approx(2 / 4) and scores["recall"] == pytest.approx(2 / 3)
    assert scores["f1"] == pytest.approx(2 * (1 / 2) * (2 / 3) / (1 / 2 + 2 / 3))
    assert entity_scores([["O"]], [["O"]]) == {"precision": 0.0, "recall": 0.0, "f1": 0.0}


def test_squad_exact_match_and_f1_by_hand():
    assert squad_exact_match("The Denver Broncos!", ["denver broncos"]) == 1.0  # article, case, punctuation
    assert squad_exact_match("Broncos", ["denver broncos", "the broncos"]) == 1.0  # best of the answers
    assert squad_f1("denver broncos won", ["the denver broncos"]) == pytest.approx(2 * (2 / 3) * 1 / (2 / 3 + 1))
    assert squad_f1("carolina", ["denver broncos"]) == 0.0
    assert squad_f1("", [""]) == 1.0 and squad_f1("paris", [""]) == 0.0  # v2.0: unanswerable questions


# ---- every task end to end -----------------------------------------------------------------------------------------


def test_token_classification_end_to_end(assets, tmp_path, capsys):
    out = tmp_path / "out"  # no --task: read from the teacher's BertForTokenClassification
    report = run_ok(options(assets, "ner", "ner_train", "ner_dev", out), capsys, "f1",
                    {"accuracy", "precision", "recall", "f1"})  # fmt: skip
    assert report["task"] == "token-classification" and report["data"]["label_column"] == "ner_tags"
    assert report["evaluation"]["teacher"]["metrics"]["f1"] > 0.3  # the teacher knows the toy task
    rows = [json.loads(line) for line in Path(assets["ner_dev"]).read_text().splitlines()]
    for model_dir, row in ((assets["ner"], "teacher"), (out, "student_after")):
        model = AutoModelForTokenClassification.from_pretrained(model_dir).eval()
        correct = total = true_pos = n_pred = n_gold = 0
        for r in rows:  # one sentence at a time; a word's prediction is its first sub-token's
            encoding = assets["tokenizer"](r["tokens"], is_split_into_words=True, return_tensors="pt")
            with torch.no_grad():
                ids = model(**encoding).logits[0].argmax(-1).tolist()
            firsts = [encoding.word_ids().index(w) for w in range(len(r["tokens"]))]
            pred, gold = [TAGS[ids[t]] for t in firsts], [TAGS[t] for t in r["ner_tags"]]
            correct, total = correct + sum(p == g for p, g in zip(pred, gold)), total + len(gold)
            p, g = reference_entities(pred), reference_entities(gold)
            true_pos, n_pred, n_gold = true_pos + len(p & g), n_pred + len(p), n_gold + len(g)
        precision, recall = true_pos / max(n_pred, 1), true_pos / n_gold
        metrics = report["evaluation"][row]["metrics"]
        assert metrics["accuracy"] == pytest.approx(correct / total)
        assert metrics["precision"] == pytest.approx(precision) and metrics["recall"] == pytest.approx(recall)
        assert metrics["f1"] == pytest.approx(2 * precision * recall / (precision + recall) if true_pos else 0.0)


def test_question_answering_end_to_end(assets, tmp_path, capsys):
    out = tmp_path / "out"
    report = run_ok(options(assets, "qa", "qa_train", "qa_dev", out, task="question-answering"), capsys, "f1",
                    {"f1", "exact_match"})  # fmt: skip
    assert report["evaluation"]["teacher"]["metrics"]["f1"] > 0.2  # some answers right, some partly (not constant)
    rows = [json.loads(line) for line in Path(assets["qa_dev"]).read_text().splitlines()]
    for model_dir, row in ((assets["qa"], "teacher"), (out, "student_after")):
        model = AutoModelForQuestionAnswering.from_pretrained(model_dir).eval()
        exact = f1 = 0.0
        for r in rows:
            encoding = assets["tokenizer"](r["question"], r["context"], return_offsets_mapping=True,
                                           return_tensors="pt")  # fmt: skip
            offsets = encoding.pop("offset_mapping")[0].tolist()
            with torch.no_grad():
                outputs = model(**encoding)
            context = [t for t, s in enumerate(encoding.sequence_ids()) if s == 1]
            start, end = max(((s, e) for s in context for e in context if s <= e < s + 30),
                             key=lambda p: outputs.start_logits[0, p[0]] + outputs.end_logits[0, p[1]])  # fmt: skip
            text = r["context"][offsets[start][0] : offsets[end][1]]
            exact += max(official_normalize(text) == official_normalize(a) for a in r["answers"]["text"])
            f1 += max(official_f1(text, a) for a in r["answers"]["text"])
        metrics = report["evaluation"][row]["metrics"]
        assert metrics["exact_match"] == pytest.approx(exact / len(rows))
        assert metrics["f1"] == pytest.approx(f1 / len(rows))
    # the model card, rewritten after the report, shows the results in the task's metric
    card = (out / "README.md").read_text()
    teacher_f1, after_f1 = (report["evaluation"][k]["metrics"]["f1"] for k in ("teacher", "student_after"))
    assert "## Results" in card and f"keeps {100 * after_f1 / teacher_f1:.1f} % of the teacher's f1" in card


def test_masked_lm_end_to_end(assets, tmp_path, capsys):
    out = tmp_path / "out"
    report = run_ok(options(assets, "mlm", "text_train", "text_dev", out), capsys, "accuracy",
                    {"accuracy", "perplexity"})  # fmt: skip
    assert report["task"] == "masked-lm"
    # the documented evaluation masking (seed 0, one draw per row in file order), scored one row at a time
    tokenizer, masking = assets["tokenizer"], DataCollatorForLanguageModeling(assets["tokenizer"], seed=0)
    rows = [json.loads(line)["text"] for line in Path(assets["text_dev"]).read_text().splitlines()]
    batches = [masking([tokenizer(text)]) for text in rows]
    for model_dir, row in ((assets["mlm"], "teacher"), (out, "student_after")):
        model = AutoModelForMaskedLM.from_pretrained(model_dir).eval()
        correct = total = 0
        nll = 0.0
        for batch in batches:
            labels = batch["labels"][0]
            with torch.no_grad():
                logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits[0]
            masked = labels != -100
            correct += int((logits.argmax(-1)[masked] == labels[masked]).sum())
            nll += float(torch.nn.functional.cross_entropy(logits[masked], labels[masked], reduction="sum"))
            total += int(masked.sum())
        metrics = report["evaluation"][row]["metrics"]
        assert metrics["accuracy"] == pytest.approx(correct / total)
        assert metrics["perplexity"] == pytest.approx(math.exp(nll / total), rel=1e-4)


def test_causal_lm_end_to_end(assets, tmp_path, capsys):
    out = tmp_path / "out"
    report = run_ok(options(assets, "gpt2", "text_train", "text_dev", out, gamma=0), capsys, "accuracy",
                    {"accuracy", "perplexity"})  # fmt: skip
    assert report["task"] == "causal-lm" and report["student"]["architecture"] == "GPT2LMHeadModel"
    rows = [json.loads(line)["text"] for line in Path(assets["text_dev"]).read_text().splitlines()]
    for model_dir, row in ((assets["gpt2"], "teacher"), (out, "student_after")):
        model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
        correct = total = 0
        nll = 0.0
        for text in rows:
            encoding = assets["tokenizer"](text, return_tensors="pt")  # token_type_ids too: GPT-2 embeds them
            ids = encoding["input_ids"]
            with torch.no_grad():
                logits = model(**encoding).logits[0]
            correct += int((logits[:-1].argmax(-1) == ids[0, 1:]).sum())
            nll += float(torch.nn.functional.cross_entropy(logits[:-1], ids[0, 1:], reduction="sum"))
            total += ids.shape[1] - 1
        metrics = report["evaluation"][row]["metrics"]
        assert metrics["accuracy"] == pytest.approx(correct / total)
        assert metrics["perplexity"] == pytest.approx(math.exp(nll / total), rel=1e-4)


def test_sentence_pairs_guess_their_columns(assets, tmp_path, capsys):
    rng = random.Random(0)
    rows = [{"premise": f"{rng.choice(PEOPLE)} lives in {rng.choice(PLACES)}", "hypothesis": "anna lives in rome",
             "label": i % 2} for i in range(16)]  # fmt: skip
    data = assets | {
        "train": write_jsonl(tmp_path / "t.jsonl", rows),
        "dev": write_jsonl(tmp_path / "d.jsonl", rows[:6]),
    }
    argv = options(data, "nli", "train", "dev", tmp_path / "out", task="sentence-pair", max_steps=2, eval_steps=2)
    report = run_ok(argv, capsys, "accuracy", {"accuracy", "f1"})
    assert report["task"] == "sentence-pair"
    assert (report["data"]["text_column"], report["data"]["text_pair_column"]) == ("premise", "hypothesis")


# ---- bad input: refused before any work ----------------------------------------------------------------------------


def refused(argv, capsys) -> str:
    code, err = run_cli(argv, capsys)
    assert code == 2, err
    assert not (Path(argv[argv.index("--output_dir") + 1]) / "report.json").exists()
    return err


def test_unknown_task(assets, tmp_path, capsys):
    err = refused(options(assets, "ner", "ner_train", "ner_dev", tmp_path / "o", task="ner"), capsys)
    assert "--task='ner'" in err and "token-classification" in err and "sentence-pair" in err


def test_task_that_contradicts_the_teachers_head(assets, tmp_path, capsys):
    err = refused(options(assets, "ner", "qa_train", "qa_dev", tmp_path / "o", task="question-answering"), capsys)
    assert "--task='question-answering', but the teacher is a BertForTokenClassification" in err


@pytest.mark.parametrize(("rows", "overrides", "expected"), [
    ([{"words": ["anna"], "ner_tags": [1]}], {}, "no word-list ('tokens') column"),
    ([{"tokens": ["anna"], "tags": [1]}], {}, "no per-word label ('ner_tags', 'labels' or 'label') column"),
    ([{"tokens": ["anna", "met"], "ner_tags": [1]}], {}, "row 0 has 2 words in 'tokens' but 1 labels"),
    ([{"tokens": ["anna"], "ner_tags": ["B-ORG"]}], {}, "labels ['B-ORG'] in 'ner_tags' that the teacher"),
    ([{"tokens": ["anna"], "ner_tags": [7]}], {}, "labels [7] in 'ner_tags'"),
    ([{"tokens": ["anna"], "ner_tags": [1]}], {"text_pair_column": "x"}, "--text_pair_column='x' has no use"),
])  # fmt: skip
def test_token_classification_bad_data(assets, tmp_path, capsys, rows, overrides, expected):
    train = write_jsonl(tmp_path / "bad.jsonl", rows)
    argv = options(assets | {"bad": train}, "ner", "bad", "ner_dev", tmp_path / "o", **overrides)
    assert expected in refused(argv, capsys)


@pytest.mark.parametrize(("change", "expected"), [
    (lambda rows: [r.pop("context") for r in rows], "no context column"),
    (lambda rows: rows[2]["answers"].update(answer_start=[0]), "row 2: answer"),
    (lambda rows: [r.update(answers="paris") for r in rows], "write SQuAD answers"),
    (lambda rows: rows[2].update(answers="paris"), "a column holds values of different kinds"),
])  # fmt: skip
def test_question_answering_bad_data(assets, tmp_path, capsys, change, expected):
    rows = qa_rows(4, seed=3)
    change(rows)
    train = write_jsonl(tmp_path / "bad.jsonl", rows)
    argv = options(assets | {"bad": train}, "qa", "bad", "qa_dev", tmp_path / "o")
    assert expected in refused(argv, capsys)


def test_question_answering_reads_answers_from_csv(assets, tmp_path, capsys):
    import csv

    with (tmp_path / "train.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["question", "context", "answers"])
        for r in qa_rows(8, seed=4):
            writer.writerow([r["question"], r["context"], json.dumps(r["answers"])])
    argv = options(assets | {"csv": str(tmp_path / "train.csv")}, "qa", "csv", "qa_dev", tmp_path / "out",
                   max_steps=1, eval_strategy="no")  # fmt: skip
    code, err = run_cli(argv, capsys)
    assert code == 0, err


def test_causal_lm_with_the_attention_term_trains_on_gpt2(assets, tmp_path, capsys):
    # GPT-2 fuses q/k/v in c_attn: its maps come through transformers' attention interface (hf_distill/attention.py)
    out = tmp_path / "o"
    run_ok(options(assets, "gpt2", "text_train", "text_dev", out, recipe="seed", max_steps=2, eval_steps=2), capsys,
           "accuracy", {"accuracy", "perplexity"})  # fmt: skip
    assert all(entry["loss_attn"] > 0 for entry in load_training_history(out)["train"])


def test_causal_lm_with_the_default_recipe_trains_every_term_on_gpt2(assets, tmp_path, capsys):
    # docs/cli.md's causal-lm command: no loss flags, so `recommended` adds attention KL and the value relation
    out = tmp_path / "o"
    run_ok(options(assets, "gpt2", "text_train", "text_dev", out, max_steps=2, eval_steps=2), capsys, "accuracy",
           {"accuracy", "perplexity"})  # fmt: skip
    record = load_distillation_config(out)
    assert record.recipe == "recommended" and record.attention_loss == "kl" and record.relation_loss == "value"
    for entry in load_training_history(out)["train"]:
        assert entry["loss_attn"] > 0 and entry["loss_relation"] > 0 and "loss_ce" in entry


def test_language_models_take_no_label_column(assets, tmp_path, capsys):
    argv = options(assets, "mlm", "text_train", "text_dev", tmp_path / "o", label_column="label")
    assert "--label_column='label' has no use with --task masked-lm" in refused(argv, capsys)


def test_sentence_pair_without_pair_columns(assets, tmp_path, capsys):
    argv = options(assets, "nli", "text_train", "text_dev", tmp_path / "o", task="sentence-pair")
    err = refused(argv, capsys)
    assert "--task sentence-pair needs two text columns" in err and "['text']" in err


def test_token_classification_reads_word_lists_from_tsv(assets, tmp_path, capsys):
    rows = ner_rows(8, seed=5, names=True)
    lines = ["words\ttags"] + [f"{' '.join(r['tokens'])}\t{json.dumps(r['ner_tags'])}" for r in rows]
    (tmp_path / "train.tsv").write_text("\n".join(lines) + "\n")  # space-separated words, JSON-list tags
    argv = options(assets | {"tsv": str(tmp_path / "train.tsv")}, "ner", "tsv", "tsv", tmp_path / "out",
                   text_column="words", label_column="tags", max_steps=1, eval_strategy="no")  # fmt: skip
    code, err = run_cli(argv, capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert (report["data"]["text_column"], report["data"]["label_column"]) == ("words", "tags")


def test_task_falls_back_to_sequence_classification_with_a_log_line(caplog):
    from hf_distill.task_data import resolve_task

    with caplog.at_level("INFO", logger="hf_distill"):
        task, pair = resolve_task(None, BertConfig(architectures=["BertModel"]))
    assert (task.name, pair) == ("sequence-classification", False) and "pass --task" in caplog.text
    assert resolve_task(None, BertConfig(architectures=["BertForMaskedLM"]))[0].name == "masked-lm"
    assert resolve_task("sentence-pair", BertConfig(architectures=["BertForSequenceClassification"]))[1] is True


# ---- question answering: long contexts in overlapping windows (--doc_stride) ---------------------------------------


def long_qa_row(rng: random.Random, filler_words: int) -> dict:
    """A `qa_rows` row whose context starts with `filler_words` words that hold no answer."""
    row = qa_rows(1, seed=rng.randrange(1000))[0]
    prefix = " ".join(rng.choice(["the", "city", "met", "saw", "today"]) for _ in range(filler_words)) + " "
    start = row["answers"]["answer_start"][0] + len(prefix)
    return {**row, "context": prefix + row["context"], "answers": {**row["answers"], "answer_start": [start]}}


def windows(tokenizer, question: str, context: str, max_length: int, stride: int) -> list[dict]:
    """The features of one example, built by hand: `[CLS] question [SEP] context[s:s + room] [SEP]` for window starts
    s = 0, room - stride, ... until a window reaches the context's end; `offsets` of the context tokens."""
    question_ids = tokenizer(question, add_special_tokens=False)["input_ids"]
    context_encoding = tokenizer(context, add_special_tokens=False, return_offsets_mapping=True)
    context_ids, context_offsets = context_encoding["input_ids"], context_encoding["offset_mapping"]
    room, first = max_length - len(question_ids) - 3, len(question_ids) + 2  # first: position of context token 0
    features, start = [], 0
    while True:
        stop = min(start + room, len(context_ids))
        ids = [tokenizer.cls_token_id, *question_ids, tokenizer.sep_token_id, *context_ids[start:stop]]
        features.append({
            "input_ids": ids + [tokenizer.sep_token_id],
            "token_type_ids": [0] * first + [1] * (stop - start + 1),
            "offsets": {first + k: context_offsets[start + k] for k in range(stop - start)},  # position -> chars
            "context_tokens": (start, stop),
        })  # fmt: skip
        if stop == len(context_ids):
            return features
        start += room - stride


def test_long_context_becomes_overlapping_windows_labelled_only_where_the_answer_is_whole(assets, tmp_path):
    from hf_distill.data import DataArguments
    from hf_distill.task_data import prepare_task_data
    from hf_distill.tasks import TASKS

    tokenizer = assets["tokenizer"]
    context = "anna lives in paris and bob lives in rome and carl lives in oslo and dora lives in berlin today"
    assert len(tokenizer(context, add_special_tokens=False)["input_ids"]) == 21  # "berlin" is two tokens
    rows = [  # question: 4 tokens; max_seq_length 16 leaves 16 - 4 - 3 = 9 context tokens a window, stride 3
        {"question": "where does carl live", "context": context,  # "rome and carl": tokens 8..10
         "answers": {"text": ["rome and carl"], "answer_start": [context.index("rome")]}},
        {"question": "where does carl live", "context": context,  # "oslo": token 13
         "answers": {"text": ["oslo"], "answer_start": [context.index("oslo")]}},
        {"question": "where does carl live", "context": "carl lives in oslo",  # no answer, one feature
         "answers": {"text": [], "answer_start": []}},
    ]  # fmt: skip
    path = write_jsonl(tmp_path / "long.jsonl", rows)
    args = DataArguments(train_file=path, validation_file=path, max_seq_length=16, doc_stride=3)
    data = prepare_task_data(TASKS["question-answering"], False, args, tokenizer, None)
    assert data.references.example == [0, 0, 0, 1, 1, 1, 2] and data.references.num_examples == 3
    train = data.train
    assert "overflow_to_sample_mapping" not in train.column_names and len(train) == 7
    context_ids = tokenizer(context, add_special_tokens=False)["input_ids"]
    for window, start in enumerate((0, 6, 12)):  # windows of 9 context tokens, each sharing 3 with the next
        ids = train[window]["input_ids"]
        assert ids[6:-1] == context_ids[start : start + 9] and ids == train[3 + window]["input_ids"]
        assert ids[:6] == tokenizer("where does carl live")["input_ids"][:-1] + [tokenizer.sep_token_id]
    assert train[0]["input_ids"][-4:-1] == train[1]["input_ids"][6:9]  # the stride overlap
    # "rome and carl" (context tokens 8..10) is whole only in window 1 (tokens 6..14): positions 6 + 2 .. 6 + 4
    assert [(f["start_positions"], f["end_positions"]) for f in train.select(range(3))] == [(0, 0), (8, 10), (0, 0)]
    # "oslo" (token 13) is whole in windows 1 and 2, at different positions; not in window 0
    assert [(f["start_positions"], f["end_positions"]) for f in train.select(range(3, 6))] == [
        (0, 0),
        (13, 13),
        (7, 7),
    ]
    assert (train[6]["start_positions"], train[6]["end_positions"]) == (0, 0)  # no answer: CLS, one feature
    assert data.evaluation["start_positions"] == train["start_positions"]  # evaluation features labelled alike


def test_question_answering_with_long_contexts_end_to_end(assets, tmp_path, capsys):
    rng = random.Random(5)
    train = qa_rows(16, seed=0) + [long_qa_row(rng, 30) for _ in range(8)]
    dev = qa_rows(4, seed=1) + [long_qa_row(rng, 30) for _ in range(4)]
    paths = {"long_train": write_jsonl(tmp_path / "train.jsonl", train),
             "long_dev": write_jsonl(tmp_path / "dev.jsonl", dev)}  # fmt: skip
    out = tmp_path / "out"
    argv = options(assets | paths, "qa", "long_train", "long_dev", out, task="question-answering", doc_stride=8)
    report = run_ok(argv, capsys, "f1", {"f1", "exact_match"})
    tokenizer = assets["tokenizer"]
    features = [windows(tokenizer, r["question"], r["context"], 32, 8) for r in dev]
    assert [len(f) for f in features][:4] == [1] * 4 and min(len(f) for f in features[4:]) >= 2
    for r, example in zip(dev[4:], features[4:]):  # the answer lies beyond the first window
        assert r["answers"]["answer_start"][0] >= max(example[0]["offsets"].values())[1]
    assert report["data"]["num_eval"] == len(dev) and report["data"]["num_eval_features"] == sum(map(len, features))
    chosen = []
    for model_dir, row in ((assets["qa"], "teacher"), (out, "student_after")):
        model = AutoModelForQuestionAnswering.from_pretrained(model_dir).eval()
        exact = f1 = 0.0
        for r, example in zip(dev, features):
            best = None  # (score, text, window)
            for w, feature in enumerate(example):
                with torch.no_grad():
                    outputs = model(input_ids=torch.tensor([feature["input_ids"]]),
                                    token_type_ids=torch.tensor([feature["token_type_ids"]]))  # fmt: skip
                start_logits, end_logits = outputs.start_logits[0], outputs.end_logits[0]
                inside = sorted(feature["offsets"])
                for s in inside:
                    for e in inside:
                        score = float(start_logits[s] + end_logits[e])
                        if s <= e < s + 30 and (best is None or score > best[0]):
                            text = r["context"][feature["offsets"][s][0] : feature["offsets"][e][1]]
                            best = (score, text, w)
            chosen.append(best[2])
            exact += max(official_normalize(best[1]) == official_normalize(a) for a in r["answers"]["text"])
            f1 += max(official_f1(best[1], a) for a in r["answers"]["text"])
        evaluation = report["evaluation"][row]
        assert evaluation["num_examples"] == len(dev)
        assert evaluation["metrics"]["exact_match"] == pytest.approx(exact / len(dev))
        assert evaluation["metrics"]["f1"] == pytest.approx(f1 / len(dev))
    assert any(w > 0 for w in chosen)  # some answers were found beyond the first window


@pytest.mark.parametrize(("stride", "expected"), [
    (-1, "--doc_stride must be >= 0"),
    (25, "--doc_stride=25 is too large: the train data's row 4 has a context longer than --max_seq_length=32"),
])  # fmt: skip
def test_question_answering_refuses_a_doc_stride_that_cannot_move(assets, tmp_path, capsys, stride, expected):
    rows = qa_rows(4, seed=3) + [long_qa_row(random.Random(0), 30)]  # "where does X live": 4 tokens, room 32 - 7
    train = write_jsonl(tmp_path / "long.jsonl", rows)
    argv = options(assets | {"long": train}, "qa", "long", "qa_dev", tmp_path / "o", doc_stride=stride)
    err = refused(argv, capsys)
    assert expected in err
    if stride > 0:
        assert "leaves 25 context tokens per window" in err and "Pass --doc_stride below 25" in err


def test_default_doc_stride_fits_the_window(assets, tmp_path, caplog):
    """Unset, the stride is min(128, max_seq_length // 3), halved (with a warning) for a row it would not fit."""
    from hf_distill.data import DataArguments
    from hf_distill.tasks.question_answering import _stride

    tokenizer = assets["tokenizer"]
    path = str(assets["qa_dev"])
    question, context = "what", " ".join(["film"] * 40)
    assert _stride([question], [context], tokenizer, DataArguments(train_file=path, validation_file=path,
                   max_seq_length=32), "train") == 32 // 3  # fmt: skip
    long_question = " ".join(["what"] * 20)  # 20 + 3 special tokens leave 9 context tokens in a 32-token window
    with caplog.at_level("WARNING", logger="hf_distill.tasks.question_answering"):
        stride = _stride([long_question], [context], tokenizer, DataArguments(train_file=path, validation_file=path,
                         max_seq_length=32), "train")  # fmt: skip
    assert stride == 9 // 2 and "instead of the default 10" in caplog.text
