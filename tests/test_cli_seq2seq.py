"""`hf-distill --task seq2seq` end to end: SST-2 sentences -> "positive"/"negative" as text, a tiny BART teacher
trained a few steps, distilled into a 2-2 student through the command; and its bad input, refused before training."""

import csv
import json
from pathlib import Path

import pytest
import torch
from conftest import wordpiece_tokenizer
from test_cli import run_cli, to_argv
from transformers import BartConfig, BartForConditionalGeneration

from hf_distill import load_training_history
from hf_distill.tasks import SEQ2SEQ
from hf_distill.tasks.seq2seq import decoder_inputs_from_labels
from hf_distill.text_metrics import last_backend

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: tiny models on one thread

SST2 = Path(__file__).resolve().parents[2] / "shared" / "data" / "sst2"
if not SST2.is_dir():
    SST2 = Path("/work/shared/data/sst2")
WORDS = {0: "negative", 1: "positive"}


def sst2_rows(split: str, n: int) -> list[dict]:
    with open(SST2 / f"{split}.tsv", newline="") as handle:
        reader = csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        rows = [row for row, _ in zip(reader, range(n))]
    return [{"source": r["sentence"].strip(), "target": WORDS[int(r["label"])]} for r in rows]


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    if not SST2.is_dir():
        pytest.skip(f"the shared SST-2 data is not at {SST2}")
    root = tmp_path_factory.mktemp("seq2seq")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread is faster on a shared CPU
    train, dev = sst2_rows("train", 48), sst2_rows("validation", 12)
    words = sorted({w for r in train + dev for w in r["source"].lower().split()} | set(WORDS.values()))
    tokenizer = wordpiece_tokenizer(root, words)
    torch.manual_seed(0)
    config = BartConfig(vocab_size=len(tokenizer), d_model=32, encoder_layers=4, decoder_layers=4,
                        encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64,
                        max_position_embeddings=128, pad_token_id=0, bos_token_id=2, eos_token_id=3,
                        decoder_start_token_id=3, forced_eos_token_id=None)  # fmt: skip
    teacher = BartForConditionalGeneration(config)
    batch = tokenizer([r["source"] for r in train], text_target=[r["target"] for r in train], padding=True,
                      truncation=True, max_length=24, return_tensors="pt")  # fmt: skip
    batch["labels"] = batch["labels"].masked_fill(batch["labels"] == 0, -100)
    optimizer = torch.optim.Adam(teacher.parameters(), lr=3e-3)
    teacher.train()
    for _ in range(40):  # a few steps: the teacher's targets are no longer random
        optimizer.zero_grad()
        teacher(**batch).loss.backward()
        optimizer.step()
    torch.set_num_threads(threads)
    teacher.eval().save_pretrained(root / "teacher")
    tokenizer.save_pretrained(root / "teacher")
    return {"root": root, "teacher": str(root / "teacher"), "train": write_jsonl(root / "train.jsonl", train),
            "dev": write_jsonl(root / "dev.jsonl", dev)}  # fmt: skip


def options(assets, out: Path, **overrides) -> list[str]:
    settings = {
        "teacher_model_name_or_path": assets["teacher"], "student_num_layers": 2, "train_file": assets["train"],
        "validation_file": assets["dev"], "output_dir": str(out), "max_steps": 4, "per_device_train_batch_size": 8,
        "per_device_eval_batch_size": 12, "logging_steps": 2, "eval_strategy": "steps", "eval_steps": 4,
        "save_strategy": "no", "max_seq_length": 24, "max_target_length": 4, "latency_samples": 1, "use_cpu": True,
        "report_to": "none", "disable_tqdm": True, "seed": 0, "learning_rate": 1e-3, "alpha": 0.5, "gamma": 0.2,
    } | overrides  # fmt: skip
    return to_argv({k: v for k, v in settings.items() if v is not None})


def test_seq2seq_end_to_end(assets, tmp_path, capsys, caplog):
    out = tmp_path / "run"
    with caplog.at_level("INFO"):
        code, err = run_cli(options(assets, out), capsys)
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    assert report["task"] == "seq2seq" and report["metric"] == "rougeL"
    names = {"rougeL", "bleu", "exact_match", "accuracy", "perplexity"}
    for row in ("teacher", "student_before", "student_after"):
        assert set(report["evaluation"][row]["metrics"]) == names, row
    history = load_training_history(out)
    logged = [entry for entry in history["train"] if "loss" in entry]
    assert logged and all({"loss_ce", "loss_kd", "loss_attn"} <= set(entry) for entry in logged)  # per term
    assert history["eval"][-1]["eval_rougeL"] == pytest.approx(
        report["evaluation"]["student_after"]["metrics"]["rougeL"]
    )
    assert "eval_loss_kd" in history["eval"][-1]
    assert "Task seq2seq, from the teacher's architecture BartForConditionalGeneration" in caplog.text
    assert last_backend() in ("rougeL: hf_distill, bleu: hf_distill", "rougeL: evaluate, bleu: evaluate")  # logged
    generation = json.loads((out / "generation_config.json").read_text())
    assert generation["decoder_start_token_id"] == 3
    student_config = json.loads((out / "config.json").read_text())
    assert (student_config["encoder_layers"], student_config["decoder_layers"]) == (2, 2)

    # the teacher's exact match, recomputed here: greedy generation one row at a time, compared as words
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    teacher = AutoModelForSeq2SeqLM.from_pretrained(assets["teacher"]).eval()
    tokenizer = AutoTokenizer.from_pretrained(assets["teacher"])
    rows = [json.loads(line) for line in Path(assets["dev"]).read_text().splitlines()]
    hits = 0
    for row in rows:
        ids = tokenizer(
            row["source"], truncation=True, max_length=24, return_tensors="pt", return_token_type_ids=False
        )
        with torch.no_grad():
            generated = teacher.generate(**ids, max_length=5)
        hits += tokenizer.decode(generated[0], skip_special_tokens=True).split() == row["target"].split()
    assert hits > 0  # the teacher learnt something: the comparison below is not 0 == 0
    assert report["evaluation"]["teacher"]["metrics"]["exact_match"] == pytest.approx(hits / len(rows))


def test_the_collator_shifts_labels_like_the_model(assets):
    from transformers import AutoModelForSeq2SeqLM

    model = AutoModelForSeq2SeqLM.from_pretrained(assets["teacher"])
    labels = torch.tensor([[2, 7, 3, -100], [2, 9, 10, 3]])
    assert torch.equal(decoder_inputs_from_labels(labels, model.config),
                       model.prepare_decoder_input_ids_from_labels(labels=labels))  # fmt: skip


def refused(argv, capsys) -> str:
    code, err = run_cli(argv, capsys)
    assert code != 0
    return err


def test_missing_target_column(assets, tmp_path, capsys):
    rows = [{"source": "a fine film", "answer": "positive"}] * 4
    bad = write_jsonl(tmp_path / "bad.jsonl", rows)
    err = refused(options(assets, tmp_path / "o", train_file=bad), capsys)
    assert "the train data has no target column (looked for target, summary" in err and "--target_column" in err
    err = refused(options(assets, tmp_path / "o", target_column="label"), capsys)
    assert "--target_column='label' is not a column of the train data" in err


def test_target_column_of_class_ids(assets, tmp_path, capsys):
    rows = [{"source": "a fine film", "target": 1}] * 4
    bad = write_jsonl(tmp_path / "bad.jsonl", rows)
    err = refused(options(assets, tmp_path / "o", train_file=bad), capsys)
    assert "target column 'target' holds int values (e.g. 1), but seq2seq targets are texts" in err


def test_task_contradicting_the_teacher(assets, tmp_path, capsys):
    err = refused(options(assets, tmp_path / "o", task="causal-lm"), capsys)
    assert "--task='causal-lm', but the teacher is a BartForConditionalGeneration (seq2seq)" in err
    assert SEQ2SEQ.command_names == ("seq2seq", "text2text")
