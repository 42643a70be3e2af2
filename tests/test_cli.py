"""The `hf-distill` command end to end on tiny models and tiny local files, its bad-input checks, and resuming."""

import csv
import json
import random
import runpy
import sys
from pathlib import Path

import pytest
import torch
from conftest import VOCAB_SIZE, tiny_bert, wordpiece_tokenizer
from transformers import (
    AutoModelForSequenceClassification,
    BertConfig,
    BertForSequenceClassification,
    BertTokenizerFast,
)

from hf_distill import load_distillation_config, load_training_history
from hf_distill.command.cli import main, parse_args
from hf_distill.data import _read_file

SST2 = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "sst2"
POSITIVE, NEGATIVE = ["good", "great", "fine", "fun"], ["bad", "awful", "dull", "boring"]
WORDS = ["the", "a", "film", "movie", "plot", "acting", "was", "is", "very", "not", *POSITIVE, *NEGATIVE]


def write_rows(path: Path, rows: list[tuple[str, object]], header=("sentence", "label")) -> Path:
    if path.suffix == ".json":  # a JSON array of records
        path.write_text(json.dumps([dict(zip(header, row)) for row in rows]))
    elif path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(dict(zip(header, row))) + "\n" for row in rows))
    else:
        with path.open("w", newline="") as handle:
            writer = csv.writer(handle, delimiter="\t" if path.suffix == ".tsv" else ",", lineterminator="\n")
            writer.writerows([header, *rows])
    return path


def review_rows(n: int, seed: int) -> list[tuple[str, int]]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        label = rng.randint(0, 1)
        adjective = rng.choice(POSITIVE if label else NEGATIVE)
        rows.append((f"the {rng.choice(['film', 'movie', 'plot', 'acting'])} was {adjective} ", label))
    return rows


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: tiny models on one thread


def fine_tuned(model, tokenizer, rows, steps=60):
    """A teacher that knows the toy task, so that predictions (and accuracies) are not constant."""
    batch = tokenizer([text for text, _ in rows], padding=True, return_tensors="pt")
    labels = torch.tensor([label for _, label in rows])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for _ in range(steps):
        optimizer.zero_grad()
        model(**batch, labels=labels).loss.backward()
        optimizer.step()
    return model.eval()


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    tokenizer = wordpiece_tokenizer(root, WORDS, size=VOCAB_SIZE)
    assert len(tokenizer) == VOCAB_SIZE and tokenizer.tokenize("the film was good") == ["the", "film", "was", "good"]
    teacher = fine_tuned(tiny_bert(num_layers=4, seed=1), tokenizer, review_rows(48, seed=0))
    teacher.save_pretrained(root / "teacher")
    tokenizer.save_pretrained(root / "teacher")
    return {
        "root": root,
        "teacher": str(root / "teacher"),
        "train": str(write_rows(root / "train.tsv", review_rows(48, seed=0))),
        "dev": str(write_rows(root / "dev.tsv", review_rows(12, seed=1))),
    }


def cli_options(assets, output_dir, **overrides) -> dict:
    options = {
        "teacher_model_name_or_path": assets["teacher"], "student_num_layers": 2, "train_file": assets["train"],
        "validation_file": assets["dev"], "output_dir": str(output_dir), "max_steps": 4,
        "per_device_train_batch_size": 8, "per_device_eval_batch_size": 8, "logging_steps": 1,
        "eval_strategy": "steps", "eval_steps": 2, "save_steps": 2, "max_seq_length": 32, "latency_samples": 2,
        "use_cpu": True, "report_to": "none", "disable_tqdm": True, "seed": 0,
        "recipe": "seed",  # the three-term loss; the default (recommended) is tested in test_recipes
    }  # fmt: skip
    options.update(overrides)
    return {key: value for key, value in options.items() if value is not None}


def cli_args(assets, output_dir, **overrides) -> list[str]:
    return to_argv(cli_options(assets, output_dir, **overrides))


def to_argv(options: dict) -> list[str]:
    argv = []
    for key, value in options.items():
        argv.append(f"--{key}")
        argv += [str(v) for v in value] if isinstance(value, list) else [str(value)]
    return argv


def run_cli(argv, capsys) -> tuple[int, str]:
    code = main(argv)
    captured = capsys.readouterr()
    run_cli.out = captured.out
    return code, captured.err


def reference_accuracy(model_dir, tokenizer_dir, tsv) -> float:
    """Accuracy computed here, independently of the command: read the TSV, tokenize one row at a time."""
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    tokenizer = BertTokenizerFast.from_pretrained(tokenizer_dir)
    with open(tsv, newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))
    correct = 0
    with torch.no_grad():
        for row in rows:
            logits = model(**tokenizer(row["sentence"], return_tensors="pt")).logits
            correct += int(logits.argmax(-1).item() == int(row["label"]))
    return correct / len(rows)


# ---- end to end ----------------------------------------------------------------------------------------------------


def test_end_to_end_outputs_exist_and_agree(assets, tmp_path, capsys):
    out = tmp_path / "out"
    code, err = run_cli(cli_args(assets, out), capsys)
    assert code == 0, err
    for name in ("config.json", "model.safetensors", "tokenizer.json", "distillation_config.json",
                 "training_history.json", "report.json", "report.md", "training_curves.png"):  # fmt: skip
        assert (out / name).is_file(), name
    assert (out / "training_curves.png").read_bytes()[:4] == b"\x89PNG"

    report = json.loads((out / "report.json").read_text())
    record = load_distillation_config(out)
    history = load_training_history(out)
    evaluation, comparison = report["evaluation"], report["comparison"]
    # the numbers in report.json agree with each other ...
    teacher_acc, before_acc = evaluation["teacher"]["metrics"]["accuracy"], evaluation["student_before"]["metrics"]
    after_acc = evaluation["student_after"]["metrics"]["accuracy"]
    assert teacher_acc > 0.8  # the teacher knows the task, so predictions (and the checks below) are not constant
    assert comparison["teacher"] == teacher_acc and comparison["student_after"] == after_acc
    assert comparison["student_before"] == before_acc["accuracy"]
    assert comparison["retention"] == pytest.approx(after_acc / teacher_acc)
    assert set(evaluation["teacher"]["metrics"]) == {"accuracy", "f1"}  # binary task: F1 too
    assert evaluation["teacher"]["num_examples"] == 12 and report["data"]["num_train"] == 48
    assert report["speed"]["batch_size"] == 8 and evaluation["teacher"]["throughput"]["examples_per_second"] > 0
    # ... with distillation_config.json and training_history.json ...
    assert record.student_layers_from_teacher == [1, 3] == report["student"]["layers_from_teacher"]
    assert record.layer_map == [1, 3] and record.global_step == 4
    assert record.teacher_num_parameters == report["teacher"]["num_parameters"]
    assert record.student_num_parameters == report["student"]["num_parameters"]
    assert record.compression_ratio == pytest.approx(comparison["compression_ratio"], abs=1e-4)
    assert [e["step"] for e in history["train"]] == [1, 2, 3, 4]
    assert all({"loss_ce", "loss_kd", "loss_attn"} <= set(e) for e in history["train"])
    assert history["eval"][-1]["step"] == 4
    assert history["eval"][-1]["eval_accuracy"] == pytest.approx(after_acc)  # Trainer's eval and ours agree
    # ... with report.md and the printed summary ...
    markdown = (out / "report.md").read_text()
    assert f"| accuracy | {teacher_acc:.4f} | {before_acc['accuracy']:.4f} | {after_acc:.4f} |" in markdown
    assert run_cli.out.endswith(markdown)  # the command prints the report last
    card = (out / "README.md").read_text()  # the model card, rewritten once the report exists
    assert f"keeps {100 * after_acc / teacher_acc:.1f} % of the teacher's accuracy" in card
    assert f"**{report['speed']['latency_speedup']:.2f}x**" in card
    results = json.loads((out / "distillation_results.json").read_text())  # what the card read, not report.json
    assert results["student_after"] == report["evaluation"]["student_after"]["metrics"]
    assert results["speedup"] == report["speed"]["latency_speedup"] and results["metric"] == report["metric"]
    # ... and with models reloaded from disk and evaluated independently
    assert teacher_acc == pytest.approx(reference_accuracy(assets["teacher"], assets["teacher"], assets["dev"]))
    assert after_acc == pytest.approx(reference_accuracy(out, out, assets["dev"]))
    student = AutoModelForSequenceClassification.from_pretrained(out)
    assert student.config.num_hidden_layers == 2 and student.config.distillation_teacher_layers == [1, 3]


def test_python_m_hf_distill_and_a_yaml_config(assets, tmp_path, monkeypatch):
    out = tmp_path / "out"
    config = tmp_path / "run.yaml"
    config.write_text(
        f"teacher_model_name_or_path: {assets['teacher']}\nstudent_num_layers: 1\ntrain_file: {assets['train']}\n"
        f"validation_file: {assets['dev']}\noutput_dir: {out}\nmax_steps: 2\nlearning_rate: 2e-5\n"
        "per_device_train_batch_size: 8\nmax_seq_length: 32\nuse_cpu: true\nreport_to: none\ndisable_tqdm: true\n"
        "save_strategy: 'no'\nlatency_samples: 0\ngamma: 0.0\n"
    )
    monkeypatch.setattr(sys, "argv", ["hf_distill", str(config)])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_module("hf_distill", run_name="__main__")
    assert exit_info.value.code == 0
    record = load_distillation_config(out)
    assert record.learning_rate == 2e-5 and record.gamma == 0.0 and record.student_layers_from_teacher == [3]
    report = json.loads((out / "report.json").read_text())
    assert report["evaluation"]["teacher"]["latency_batch_size_1"]["median_ms"] is None  # latency_samples 0
    assert not list(out.glob("checkpoint-*"))


def test_config_files_parse_like_the_command_line(assets, tmp_path):
    options = cli_options(assets, tmp_path / "o", student_layers=[0, 3], temperature=2.5, layer_map=[0, 3],
                          learning_rate=2e-5)  # fmt: skip
    from_cli = parse_args(to_argv(options))
    written = {k: str(v) if isinstance(v, float) else v for k, v in options.items()}  # "2e-05", as YAML reads it
    (tmp_path / "run.json").write_text(json.dumps(written))
    from_json = parse_args([str(tmp_path / "run.json")])
    assert from_cli[:3] == from_json[:3]  # model, data and run arguments
    for name in ("temperature", "layer_map", "learning_rate", "max_steps", "use_cpu", "report_to", "eval_strategy"):
        assert getattr(from_json[3], name) == getattr(from_cli[3], name), name
    assert from_json[3].learning_rate == 2e-5 and from_json[3].student_layers == [0, 3]
    overridden = parse_args([str(tmp_path / "run.json"), "--max_steps", "7", "--temperature", "3"])
    assert overridden[3].max_steps == 7 and overridden[3].temperature == 3.0 and overridden[3].alpha == 0.1


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_config_file_with_unknown_keys_fails(tmp_path, capsys, suffix):
    config = tmp_path / f"run{suffix}"
    data = {"teacher_model_name_or_path": "t", "temperatur": 2.0, "learning_rat": 1e-5}
    config.write_text(json.dumps(data))  # JSON is YAML too
    code, err = run_cli([str(config)], capsys)
    assert code == 2
    assert "'temperatur' (did you mean 'temperature'?)" in err and "'learning_rat'" in err


def test_local_formats_csv_json_jsonl(assets, tmp_path, capsys):
    rows = review_rows(24, seed=5)
    named = [(text, ["neg", "pos"][label]) for text, label in rows]
    teacher_dir = tmp_path / "named_teacher"
    teacher = tiny_bert(num_layers=2, seed=4, id2label={0: "neg", 1: "pos"}, label2id={"neg": 0, "pos": 1})
    teacher.save_pretrained(teacher_dir)
    BertTokenizerFast.from_pretrained(assets["teacher"]).save_pretrained(teacher_dir)
    for suffix in (".csv", ".json", ".jsonl"):
        train = write_rows(tmp_path / f"train{suffix}", named, header=("text", "sentiment"))
        dev = write_rows(tmp_path / f"dev{suffix}", named[:8], header=("text", "sentiment"))
        argv = cli_args(assets, tmp_path / f"out{suffix}", teacher_model_name_or_path=teacher_dir, train_file=train,
                        validation_file=dev, label_column="sentiment", student_num_layers=1, max_steps=1,
                        eval_strategy="no", save_strategy="no", gamma=0.0)  # fmt: skip
        code, err = run_cli(argv, capsys)
        assert code == 0, (suffix, err)
        report = json.loads((tmp_path / f"out{suffix}" / "report.json").read_text())
        assert report["data"]["num_train"] == 24 and report["data"]["text_column"] == "text"


def test_tsv_reading_keeps_glue_text_verbatim(tmp_path):
    path = tmp_path / "odd.tsv"
    path.write_text('sentence\tlabel\nnull \t0\n" a quoted start\t1\nnan\t0\n')
    dataset = _read_file(str(path))
    assert dataset["sentence"] == ["null ", '" a quoted start', "nan"] and dataset["label"] == [0, 1, 0]


# ---- bad input: refused before any work, with the fix in the message -----------------------------------------------


def _bad(assets, tmp_path, capsys, **overrides) -> str:
    out = tmp_path / "out"
    code, err = run_cli(cli_args(assets, out, **overrides), capsys)
    assert code == 2, err
    assert not (out / "report.json").exists() and not list(out.glob("checkpoint-*"))
    return err


def test_missing_file(assets, tmp_path, capsys):
    err = _bad(assets, tmp_path, capsys, train_file=str(tmp_path / "nope.tsv"))
    assert "--train_file=" in err and "nope.tsv" in err and "no such file" in err


def test_unsupported_extension(assets, tmp_path, capsys):
    (tmp_path / "data.parquet").write_text("x")
    err = _bad(assets, tmp_path, capsys, validation_file=str(tmp_path / "data.parquet"))
    assert "extension 'parquet'" in err and "csv, tsv, json, jsonl" in err


def test_missing_teacher(assets, tmp_path, capsys):
    err = _bad(assets, tmp_path, capsys, teacher_model_name_or_path=str(tmp_path / "no_teacher"))
    assert "--teacher_model_name_or_path=" in err and "no such folder" in err


@pytest.mark.parametrize(("option", "value", "expected"), [
    ("text_column", "review", "--text_column='review' is not a column"),
    ("label_column", "stars", "--label_column='stars' is not a column"),
    ("text_pair_column", "sentence2", "--text_pair_column='sentence2' is not a column"),
])  # fmt: skip
def test_column_not_found(assets, tmp_path, capsys, option, value, expected):
    err = _bad(assets, tmp_path, capsys, **{option: value})
    assert expected in err and "['sentence', 'label']" in err


def test_labels_outside_the_teachers_label_set(assets, tmp_path, capsys):
    rows = [(text, label + 1) for text, label in review_rows(16, seed=2)]  # labels 1, 2 for a 2-label teacher
    err = _bad(assets, tmp_path, capsys, train_file=str(write_rows(tmp_path / "t.tsv", rows)))
    assert "labels include [2]" in err and "num_labels=2" in err


def test_teacher_with_more_labels_than_the_data(assets, tmp_path, capsys):
    teacher = tiny_bert(num_layers=2, num_labels=3)
    teacher.save_pretrained(tmp_path / "t3")
    BertTokenizerFast.from_pretrained(assets["teacher"]).save_pretrained(tmp_path / "t3")
    err = _bad(assets, tmp_path, capsys, teacher_model_name_or_path=str(tmp_path / "t3"), student_num_layers=1)
    assert "predicts 3 labels" in err and "never has label(s) ['LABEL_2']" in err


def test_label_names_the_teacher_does_not_know(assets, tmp_path, capsys):
    rows = [(text, ["negative", "positive"][label]) for text, label in review_rows(16, seed=2)]
    err = _bad(assets, tmp_path, capsys, train_file=str(write_rows(tmp_path / "t.tsv", rows)))
    assert "['negative', 'positive'] are not label names of the teacher" in err


def test_tokenizer_vocabulary_larger_than_the_student(assets, tmp_path, capsys):
    wordpiece_tokenizer(tmp_path, WORDS, size=VOCAB_SIZE + 16).save_pretrained(tmp_path / "big_tokenizer")
    err = _bad(assets, tmp_path, capsys, tokenizer_name=str(tmp_path / "big_tokenizer"))
    assert f"the tokenizer has {VOCAB_SIZE + 16} tokens" in err and f"only {VOCAB_SIZE} rows" in err


def test_sequence_longer_than_position_embeddings(assets, tmp_path, capsys):
    err = _bad(assets, tmp_path, capsys, max_seq_length=65)
    assert "--max_seq_length=65 is more than the teacher's max_position_embeddings (64)" in err


@pytest.mark.parametrize(("overrides", "expected"), [
    ({"student_num_layers": 5}, "more than the teacher's 4 layers"),
    ({"student_layers": [1, 9]}, "valid indices 0..3"),
    ({"student_num_layers": None}, "give exactly one student"),
    ({"student_model_name_or_path": "x"}, "give exactly one student"),
])  # fmt: skip
def test_impossible_students(assets, tmp_path, capsys, overrides, expected):
    assert expected in _bad(assets, tmp_path, capsys, **overrides)


def test_student_with_other_labels(assets, tmp_path, capsys):
    tiny_bert(num_layers=2, id2label={0: "neg", 1: "pos"}).save_pretrained(tmp_path / "student")
    err = _bad(assets, tmp_path, capsys, student_num_layers=None, student_model_name_or_path=str(tmp_path / "student"))
    assert "the student's labels" in err and "differ from the teacher's" in err


# ---- an output_dir that already holds a run ------------------------------------------------------------------------


def test_resumes_when_settings_match_and_refuses_when_they_differ(assets, tmp_path, capsys, caplog):
    out = tmp_path / "out"
    assert run_cli(cli_args(assets, out, max_steps=2), capsys)[0] == 0  # checkpoint-2, training finished
    code, err = run_cli(cli_args(assets, out, max_steps=2), capsys)
    assert code == 2 and "is a finished run (2 of 2 training steps done)" in err
    code, err = run_cli(cli_args(assets, out, max_steps=4, temperature=2.0), capsys)
    assert code == 2 and "temperature: checkpoint 4.0, now 2.0" in err and "--overwrite_output_dir" in err
    code, err = run_cli(cli_args(assets, out, max_steps=4, student_layers=[0, 3]), capsys)
    assert code == 2 and "student_layers_from_teacher: checkpoint [1, 3], now [0, 3]" in err

    with caplog.at_level("INFO", logger="hf_distill"):
        code, err = run_cli(cli_args(assets, out, max_steps=4), capsys)  # same settings, more steps: resumes
    assert code == 0, err
    assert "Resuming from" in caplog.text and "checkpoint-2" in caplog.text
    history = load_training_history(out)
    assert [e["step"] for e in history["train"]] == [1, 2, 3, 4]  # continuous, steps 1-2 not redone
    assert json.loads((out / "report.json").read_text())["training"]["resumed_from"].endswith("checkpoint-2")


def test_resumes_from_the_checkpoint_before_a_save_cut_half_way(assets, tmp_path, capsys, caplog, monkeypatch):
    """The command skips a checkpoint whose save was interrupted after the weights (no trainer state), as
    `DistillationTrainer.train(resume_from_checkpoint=True)` does (tests/test_resume_paths.py)."""
    from test_resume_paths import SaveCut, cut_save_at

    out = tmp_path / "out"
    argv = cli_args(assets, out, max_steps=2, save_steps=1, eval_strategy="no")
    with monkeypatch.context() as patch:
        cut_save_at(patch, 2)
        with pytest.raises(SaveCut):
            main(argv)
    capsys.readouterr()
    cut = out / "checkpoint-2"
    assert (cut / "model.safetensors").is_file() and not (cut / "trainer_state.json").exists()

    with caplog.at_level("INFO", logger="hf_distill"):
        code, err = run_cli(argv, capsys)
    assert code == 0, err
    assert "Skipping incomplete checkpoint(s)" in caplog.text
    assert "checkpoint-2 (missing trainer_state.json)" in caplog.text
    report = json.loads((out / "report.json").read_text())
    assert report["training"]["resumed_from"].endswith("checkpoint-1") and report["training"]["global_step"] == 2
    assert [e["step"] for e in load_training_history(out)["train"]] == [1, 2]  # step 1 kept, step 2 redone once


def test_overwrite_output_dir_starts_afresh(assets, tmp_path, capsys):
    out = tmp_path / "out"
    assert run_cli(cli_args(assets, out, max_steps=4, save_steps=1), capsys)[0] == 0
    assert (out / "checkpoint-3").is_dir()
    code, err = run_cli(cli_args(assets, out, max_steps=2, temperature=2.0, overwrite_output_dir=True), capsys)
    assert code == 0, err
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2"]  # the old run's are gone
    record = load_distillation_config(out)
    assert record.temperature == 2.0 and record.global_step == 2


def test_non_empty_output_dir_without_checkpoint_is_refused(assets, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    err = _bad(assets, tmp_path, capsys)
    assert "is not empty, and holds no hf-distill checkpoint" in err and "--overwrite_output_dir" in err
    assert (out / "notes.txt").read_text() == "mine"


# ---- real data -----------------------------------------------------------------------------------------------------


@pytest.mark.skipif(not SST2.is_dir(), reason=f"GLUE SST-2 TSVs not found at {SST2} (shared data absent)")
def test_sst2_slice_end_to_end(tmp_path, capsys):
    """The real GLUE files: full files read and label-checked, a slice tokenised and distilled."""
    train, dev = SST2 / "train.tsv", SST2 / "validation.tsv"
    with open(dev, newline="") as handle:
        reference = list(csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))
    assert _read_file(str(dev))["sentence"] == [row["sentence"] for row in reference]

    # a word-level WordPiece vocabulary of the slice, and a tiny teacher over it
    words = sorted({w for row in reference[:64] for w in row["sentence"].split()})
    tokenizer = wordpiece_tokenizer(tmp_path, words)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=128)  # fmt: skip
    BertForSequenceClassification(config).save_pretrained(tmp_path / "t")
    tokenizer.save_pretrained(tmp_path / "t")
    argv = cli_args({"teacher": str(tmp_path / "t"), "train": str(train), "dev": str(dev)}, tmp_path / "out",
                    max_train_samples=64, max_eval_samples=64, max_seq_length=128, eval_steps=4)  # fmt: skip
    code, err = run_cli(argv, capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["data"]["num_train"] == 64 and report["data"]["num_eval"] == 64
    labels = [int(row["label"]) for row in reference[:64]]
    teacher_acc = report["evaluation"]["teacher"]["metrics"]["accuracy"]
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "t").eval()
    with torch.no_grad():
        predictions = [model(**tokenizer(r["sentence"], return_tensors="pt")).logits.argmax().item()
                       for r in reference[:64]]  # fmt: skip
    assert teacher_acc == pytest.approx(sum(p == y for p, y in zip(predictions, labels)) / 64)


def test_a_decoder_only_teacher_without_padding_token(tmp_path, capsys):
    """GPT-2 style: no pad token in the tokenizer or the config; the student is built from its `h` blocks."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2ForSequenceClassification, PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(["<|endoftext|>", "<unk>", *WORDS])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>", unk_token="<unk>")
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(vocab), n_embd=32, n_layer=4, n_head=4, n_positions=64, num_labels=2)
    GPT2ForSequenceClassification(config).save_pretrained(tmp_path / "gpt2")
    tokenizer.save_pretrained(tmp_path / "gpt2")
    data = {"teacher": str(tmp_path / "gpt2"), "train": str(write_rows(tmp_path / "t.tsv", review_rows(24, seed=3))),
            "dev": str(write_rows(tmp_path / "d.tsv", review_rows(8, seed=4)))}  # fmt: skip
    argv = cli_args(data, tmp_path / "out", gamma=0.0, max_steps=2, eval_strategy="no", save_strategy="no")
    code, err = run_cli(argv, capsys)
    assert code == 0, err
    record = load_distillation_config(tmp_path / "out")
    assert record.student_architecture == "GPT2ForSequenceClassification"
    assert record.student_layers_from_teacher == [1, 3]
    assert AutoModelForSequenceClassification.from_pretrained(tmp_path / "out").config.pad_token_id == 0


def test_sentence_pairs_are_encoded_as_pairs(assets):
    from datasets import Dataset

    from hf_distill.data import tokenize

    tokenizer = BertTokenizerFast.from_pretrained(assets["teacher"])
    dataset = Dataset.from_dict({"premise": ["the film was good"], "hypothesis": ["the plot was dull"]})
    encoded = tokenize(dataset, tokenizer, "premise", "hypothesis", labels=[1], max_length=32)
    expected = tokenizer("the film was good", "the plot was dull")
    assert encoded[0]["input_ids"] == expected["input_ids"] and encoded[0]["labels"] == 1
    assert encoded[0]["token_type_ids"].count(1) == 5  # "the plot was dull [SEP]"


def test_empty_data_file(assets, tmp_path, capsys):
    err = _bad(assets, tmp_path, capsys, validation_file=str(write_rows(tmp_path / "empty.tsv", [])))
    assert "the validation data" in err and "has no examples" in err
