"""The per-task example scripts run end to end on tiny models saved in the test and a few dozen local rows.

Each script runs as a subprocess, exactly as its docstring's command does (no Hub: the teacher and tokenizer are
built here and saved to `tmp_path`), and must save a student that reloads with its task's Auto class, has fewer
layers than the teacher, and whose training log holds the per-term losses.
"""

import csv
import json
import math
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from conftest import wordpiece_tokenizer
from PIL import Image
from transformers import BertConfig, ViTConfig, ViTForImageClassification
from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil

from hf_distill import load_distillation_config, load_training_history

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
TEACHER_LAYERS, STUDENT_LAYERS = 4, 2

PEOPLE, PLACES = ["alice", "bob", "carol", "dave"], ["paris", "london", "rome", "oslo"]
WORDS = ["the", "a", "film", "was", "is", "good", "bad", "visited", "met", "in", "and", "who", "where", "did", "?",
         ".", ",", "new", "york", "city", *PEOPLE, *PLACES]  # fmt: skip
SUFFIXES = ["##s", "##er", "##ville"]  # sub-words: "parisville" is two tokens, only the first labelled


def save_bert_teacher(root: Path, head: str, **config) -> tuple[Path, int]:
    """A tiny randomly initialised BERT with `head` (e.g. `BertForTokenClassification`) and its tokenizer."""
    tokenizer = wordpiece_tokenizer(root, [*WORDS, *SUFFIXES])
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=TEACHER_LAYERS,
                        num_attention_heads=4, intermediate_size=64, max_position_embeddings=64, **config)  # fmt: skip
    teacher_dir = root / "teacher"
    getattr(transformers, head)(config).save_pretrained(teacher_dir)
    tokenizer.save_pretrained(teacher_dir)
    return teacher_dir


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def run_example(script: str, tmp_path: Path, *options: str) -> Path:
    """Run `examples/<script>` with `options` in a fresh process; return its output directory."""
    out = tmp_path / "out"
    env = os.environ | {
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        "OMP_NUM_THREADS": "1",  # tiny models: one thread is faster, and far faster on a shared CPU
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_DATASETS_CACHE": str(tmp_path / "datasets_cache"),
    }
    argv = [sys.executable, str(EXAMPLES / script), "--output_dir", str(out), "--num_layers", str(STUDENT_LAYERS),
            "--max_steps", "2", *options]  # fmt: skip
    result = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    return out


def check_student(out: Path, auto_class: str) -> dict:
    """The saved student: files, reload with the task's Auto class, fewer layers, per-term losses logged."""
    for name in ("config.json", "model.safetensors", "distillation_config.json", "training_history.json"):
        assert (out / name).is_file(), name
    student = getattr(transformers, auto_class).from_pretrained(out)
    layers = getattr(student.config, "num_hidden_layers", None) or student.config.n_layer
    assert layers == STUDENT_LAYERS < TEACHER_LAYERS
    record = load_distillation_config(out)
    assert record.global_step == 2 and record.teacher_num_layers == TEACHER_LAYERS
    assert record.student_layers_from_teacher == [1, 3] and record.student_architecture == type(student).__name__
    history = load_training_history(out)
    assert history["train"], "no training log entry"
    for entry in history["train"]:
        assert {"loss_ce", "loss_kd"} <= set(entry), entry
        assert math.isfinite(entry["loss_ce"]) and math.isfinite(entry["loss_kd"]) and entry["loss_kd"] >= 0
    return history


def ner_rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        person, place = rng.choice(PEOPLE), rng.choice(PLACES) + rng.choice(["", "ville"])
        if rng.random() < 0.5:
            rows.append({"tokens": [person, "visited", place, "."], "ner_tags": ["B-PER", "O", "B-LOC", "O"]})
        else:
            tokens = ["the", "film", "was", "in", "new", "york", "city"]
            rows.append({"tokens": tokens, "ner_tags": ["O", "O", "O", "O", "B-LOC", "I-LOC", "I-LOC"]})
    return rows


def test_token_classification_example(tmp_path):
    names = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    labels = {  # the data gives tag names; the script maps them to these ids
        "num_labels": len(names),
        "id2label": dict(enumerate(names)),
        "label2id": {n: i for i, n in enumerate(names)},
    }
    teacher = save_bert_teacher(tmp_path, "BertForTokenClassification", **labels)
    train = write_jsonl(tmp_path / "train.jsonl", ner_rows(40, seed=0))
    dev = write_jsonl(tmp_path / "dev.jsonl", ner_rows(12, seed=1))
    out = run_example("distil_token_classification.py", tmp_path, "--teacher", str(teacher),
                      "--train_file", str(train), "--validation_file", str(dev))  # fmt: skip
    history = check_student(out, "AutoModelForTokenClassification")
    metrics = history["eval"][-1]
    assert 0 <= metrics["eval_f1"] <= 1 and 0 <= metrics["eval_accuracy"] <= 1


def squad_rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        person, place, other = rng.choice(PEOPLE), rng.choice(PLACES), rng.choice(PLACES)
        context = f"{person} visited {place} and met bob in {other}."
        question, answer = ("where did alice met bob?", other) if i % 2 else (f"who visited {place}?", person)
        rows.append({"id": str(i), "question": question, "context": context,
                     "answers": {"text": [answer], "answer_start": [context.rindex(answer)]}})  # fmt: skip
    return rows


def test_question_answering_example(tmp_path):
    teacher = save_bert_teacher(tmp_path, "BertForQuestionAnswering")
    train = write_jsonl(tmp_path / "train.jsonl", squad_rows(40, seed=0))
    dev = write_jsonl(tmp_path / "dev.jsonl", squad_rows(12, seed=1))
    out = run_example("distil_question_answering.py", tmp_path, "--teacher", str(teacher), "--train_file", str(train),
                      "--validation_file", str(dev), "--max_length", "64")  # fmt: skip
    history = check_student(out, "AutoModelForQuestionAnswering")
    metrics = history["eval"][-1]
    assert 0 <= metrics["eval_exact_match"] <= metrics["eval_f1"] <= 100


def text_rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = [{"text": ""}]  # WikiText has empty lines
    for _ in range(n):
        rows.append({"text": f"{rng.choice(PEOPLE)} visited {rng.choice(PLACES)} and met {rng.choice(PEOPLE)}."})
    return rows


def check_perplexity(out: Path) -> None:
    results = json.loads((out / "eval_results.json").read_text())
    assert results["perplexity"] == pytest.approx(math.exp(results["eval_loss"])) and results["perplexity"] > 1


def test_masked_lm_example(tmp_path):
    teacher = save_bert_teacher(tmp_path, "BertForMaskedLM")
    train = write_jsonl(tmp_path / "train.jsonl", text_rows(40, seed=0))
    dev = write_jsonl(tmp_path / "dev.jsonl", text_rows(16, seed=1))
    out = run_example("distil_masked_lm.py", tmp_path, "--teacher", str(teacher), "--train_file", str(train),
                      "--validation_file", str(dev), "--block_size", "32")  # fmt: skip
    check_student(out, "AutoModelForMaskedLM")
    check_perplexity(out)


def save_gpt2_teacher(root: Path, texts: list[str]) -> Path:
    """A tiny random GPT2LMHeadModel and a byte-level BPE tokenizer trained here (no pad token, like GPT-2)."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=300, min_frequency=1, special_tokens=["<|endoftext|>"])
    eos = "<|endoftext|>"
    tokenizer = GPT2TokenizerFast(tokenizer_object=bpe._tokenizer, eos_token=eos, bos_token=eos, unk_token=eos)
    assert tokenizer.pad_token is None  # the script must supply one, as for the real GPT-2
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_layer=TEACHER_LAYERS, n_embd=32, n_head=2, n_positions=64)
    teacher_dir = root / "teacher"
    GPT2LMHeadModel(config).save_pretrained(teacher_dir)
    tokenizer.save_pretrained(teacher_dir)
    return teacher_dir


def test_causal_lm_example(tmp_path):
    train_rows, dev_rows = text_rows(40, seed=0), text_rows(16, seed=1)
    teacher = save_gpt2_teacher(tmp_path, [row["text"] for row in train_rows])
    train = write_jsonl(tmp_path / "train.jsonl", train_rows)
    dev = write_jsonl(tmp_path / "dev.jsonl", dev_rows)
    out = run_example("distil_causal_lm.py", tmp_path, "--teacher", str(teacher), "--train_file", str(train),
                      "--validation_file", str(dev), "--block_size", "32")  # fmt: skip
    check_student(out, "AutoModelForCausalLM")
    check_perplexity(out)
    assert load_distillation_config(out).gamma == 0.0


def write_pair_csv(path: Path, n: int, seed: int) -> Path:
    """MRPC-style rows: the label is a name the teacher's label2id knows, not an id."""
    rng = random.Random(seed)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["sentence1", "sentence2", "label"])
        for _ in range(n):
            person, place = rng.choice(PEOPLE), rng.choice(PLACES)
            same = rng.random() < 0.5
            other = place if same else rng.choice([p for p in PLACES if p != place])
            writer.writerow(
                [f"{person} visited {place}.", f"{person} was in {other}.", "equivalent" if same else "different"]
            )
    return path


def test_sentence_pair_example(tmp_path):
    names = {0: "different", 1: "equivalent"}
    teacher = save_bert_teacher(tmp_path, "BertForSequenceClassification", num_labels=2, id2label=names,
                                label2id={name: i for i, name in names.items()})  # fmt: skip
    train, dev = write_pair_csv(tmp_path / "train.csv", 40, seed=0), write_pair_csv(tmp_path / "dev.csv", 12, seed=1)
    out = run_example("distil_sentence_pair.py", tmp_path, "--teacher", str(teacher), "--train_file", str(train),
                      "--validation_file", str(dev))  # fmt: skip
    history = check_student(out, "AutoModelForSequenceClassification")
    metrics = history["eval"][-1]
    assert 0 <= metrics["eval_accuracy"] <= 1 and 0 <= metrics["eval_f1"] <= 1


def test_seq2seq_example(tmp_path):
    from transformers import BartConfig, BartForConditionalGeneration

    tokenizer = wordpiece_tokenizer(tmp_path, [*WORDS, *SUFFIXES])
    torch.manual_seed(0)
    config = BartConfig(vocab_size=len(tokenizer), d_model=32, encoder_layers=TEACHER_LAYERS,
                        decoder_layers=TEACHER_LAYERS, encoder_attention_heads=4, decoder_attention_heads=4,
                        encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=64, pad_token_id=0,
                        bos_token_id=2, eos_token_id=3, decoder_start_token_id=3)  # fmt: skip
    BartForConditionalGeneration(config).save_pretrained(tmp_path / "teacher")
    tokenizer.save_pretrained(tmp_path / "teacher")
    rows = [{"document": f"{p} visited {q} and met {r}.", "summary": f"{p} visited {q}"}
            for p, q, r in zip(PEOPLE * 4, PLACES * 4, reversed(PEOPLE * 4))]  # fmt: skip
    train, dev = write_jsonl(tmp_path / "train.jsonl", rows), write_jsonl(tmp_path / "dev.jsonl", rows[:6])
    out = run_example("distil_seq2seq.py", tmp_path, "--teacher", str(tmp_path / "teacher"), "--train_file",
                      str(train), "--validation_file", str(dev), "--max_target_length", "8")  # fmt: skip
    check_student(out, "AutoModelForSeq2SeqLM")
    assert json.loads((out / "config.json").read_text())["decoder_layers"] == STUDENT_LAYERS  # default: --num_layers
    assert (out / "generation_config.json").is_file()
    results = json.loads((out / "eval_results.json").read_text())
    assert {"eval_rougeL", "eval_bleu", "eval_exact_match", "eval_loss_kd"} <= set(results)


def test_audio_classification_example(tmp_path):
    from test_audio_classification import speech_extractor, wav2vec2, write_wav

    (tmp_path / "wav").mkdir()
    rows = []
    for i in range(12):  # three pitches, one per label, at 8 kHz (the script resamples to 16 kHz)
        tone = 0.5 * np.sin(2 * np.pi * (300, 900, 2700)[i % 3] * np.arange(2400) / 8000)
        write_wav(tmp_path / "wav" / f"{i}.wav", tone, 8000)
        rows.append({"audio": f"wav/{i}.wav", "label": ("yes", "no", "up")[i % 3]})
    wav2vec2(layerdrop=0.1).save_pretrained(tmp_path / "teacher")  # the script turns LayerDrop off in the student
    speech_extractor().save_pretrained(tmp_path / "teacher")
    train, dev = write_jsonl(tmp_path / "train.jsonl", rows), write_jsonl(tmp_path / "dev.jsonl", rows[:6])
    out = run_example("distil_audio_classification.py", tmp_path, "--teacher", str(tmp_path / "teacher"),
                      "--train_file", str(train), "--validation_file", str(dev))  # fmt: skip
    history = check_student(out, "AutoModelForAudioClassification")
    assert 0 <= history["eval"][-1]["eval_accuracy"] <= 1 and (out / "preprocessor_config.json").is_file()
    assert {"loss_attn", "loss_hidden"} <= set(history["train"][-1])


def test_every_task_example_is_listed_and_tested():
    scripts = sorted(path.name for path in EXAMPLES.glob("distil_*.py"))
    # these five, seq2seq, audio, image; multiple choice, regression, multi-label (test_task_examples_more.py)
    assert len(scripts) >= 11
    docs = (ROOT / "docs" / "trainer.md").read_text()
    tests = "".join(path.read_text() for path in Path(__file__).parent.glob("test_task_examples*.py"))
    for name in scripts:
        assert f"(../examples/{name})" in docs, f"{name} is missing from the Examples list of docs/trainer.md"
        assert f'run_example("{name}"' in tests, f"{name} has no end-to-end test"


# ---- image classification: an imagefolder of scikit-learn's bundled digits ------------------------------------


def write_image_folder(root, images, labels) -> None:
    for i, (pixels, label) in enumerate(zip(images, labels)):
        folder = root / str(int(label))  # one sub-folder per class, named as the teacher's labels
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray((pixels * 255 / 16).astype("uint8"), mode="L").save(folder / f"{i:04d}.png")


def test_image_classification_example(tmp_path):
    data = pytest.importorskip("sklearn.datasets").load_digits()
    write_image_folder(tmp_path / "train", data.images[:40], data.target[:40])
    write_image_folder(tmp_path / "val", data.images[40:60], data.target[40:60])
    torch.manual_seed(0)
    config = ViTConfig(image_size=8, patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=TEACHER_LAYERS,
                       num_attention_heads=4, intermediate_size=64, num_labels=10,
                       id2label={i: str(i) for i in range(10)}, label2id={str(i): i for i in range(10)})  # fmt: skip
    teacher = tmp_path / "teacher"
    ViTForImageClassification(config).save_pretrained(teacher)
    ViTImageProcessorPil(size={"height": 8, "width": 8}).save_pretrained(teacher)
    out = run_example("distil_image_classification.py", tmp_path, "--teacher", str(teacher), "--train_dir",
                      str(tmp_path / "train"), "--validation_dir", str(tmp_path / "val"))  # fmt: skip
    history = check_student(out, "AutoModelForImageClassification")
    assert all("loss_attn" in entry for entry in history["train"])  # gamma=0.4: ViT attention maps distilled
    assert 0 <= history["eval"][-1]["eval_accuracy"] <= 1 and STUDENT_LAYERS < TEACHER_LAYERS
    assert (out / "preprocessor_config.json").is_file()
