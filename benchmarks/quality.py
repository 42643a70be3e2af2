"""The quality study: does a student distilled with hf-distill beat the same student fine-tuned alone?

One student, several *arms* (ways to train it), several seeds each, an equal budget of optimizer steps, scored on a
validation split that cannot leak (SST-2 split by whole sentence, see ../shared/data/README.md):

1. The teacher is the pretrained checkpoint fine-tuned until validation accuracy stops improving (evaluated every
   `--teacher-eval-steps`, best checkpoint kept, early stop after `--teacher-patience` evaluations without gain).
   It is cached under `benchmarks/.cache/`, keyed on its settings and on the data files' content.
2. The student copies the fine-tuned teacher's embeddings, chosen layers, pooler and classifier.
3. Each arm trains the student for the same number of steps (`--epochs` of the original training set), seeds
   0..n-1 (data order, dropout); the CE-only arms use the plain `Trainer` over a learning-rate grid and the best
   one *for CE* is the baseline. Validation accuracy is taken every `steps // 8` steps for the curves.
4. The summary reports, per arm: mean +- std of accuracy, retention (arm / teacher), gap closed
   ((arm - CE) / (teacher - CE)) and the paired per-seed difference to CE-only with its standard error.

Every finished run is appended to `benchmarks/results/<results>.jsonl` as it ends, and skipped when the same run is
asked for again: an interrupted study resumes where it stopped. Commands (repository root):

    nice -n 19 python benchmarks/quality.py                    # the study at the small scale, arms x 3 seeds
    nice -n 19 python benchmarks/quality.py --seeds 0 --arms ce_lr1e-4 recommended   # a subset
    python benchmarks/quality.py --summary                     # table + plot from the results file, no training
    python benchmarks/quality.py --quick                       # smoke run: tiny budgets, a separate results file
    nice -n 19 python benchmarks/quality.py --scale mpnet --seeds 0 --arms ce_lr5e-5 seed_logits recommended
    nice -n 19 python benchmarks/quality.py --split-teacher sentences --results quality_study_small_split_sentences
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import math
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

# ---- the scales --------------------------------------------------------------------------------------------------

SCALES: dict[str, dict[str, Any]] = {
    # MiniLM-L6 (6 x 384, 22.7M) -> 3 layers.
    "small": dict(model="minilm", student_layers=[1, 3, 5], teacher_lr=1e-4, teacher_eval_steps=300),
    # all-mpnet-base-v2 (12 x 768, 110M) -> 6 layers; assembled from PyPI as ../shared/data/README.md says.
    "mpnet": dict(model="mpnet", student_layers=[1, 3, 5, 7, 9, 11], teacher_lr=3e-5, teacher_eval_steps=250),
}
MPNET_DIR = Path.home() / ".cache" / "all-mpnet-base-v2" / "all-mpnet-base-v2"

# ---- the arms ----------------------------------------------------------------------------------------------------
# kind "ce": the plain Trainer. kind "kd": DistillationTrainer with `settings`; `augment` = transfer-set multiplier.

KD_LR = 1e-4
ARMS: dict[str, dict[str, Any]] = {
    **{f"ce_lr{name}": dict(kind="ce", lr=float(name)) for name in ("3e-5", "5e-5", "1e-4", "2e-4", "4e-4")},
    # A control, not a baseline: cross-entropy against labels smoothed by 0.1. On two classes the teacher's softened
    # targets differ from the labels mostly by a per-row confidence, so this asks whether KD's gain is only that.
    "ls0.1_lr2e-4": dict(kind="ce", lr=2e-4, label_smoothing=0.1),
    "seed": dict(kind="kd", lr=KD_LR, settings=dict(recipe="seed")),
    # Whatever `recommended` is now (since 2a93aa1 MiniLM's settings, measured as recipe_minilm; before, kd_alone's).
    "recommended": dict(kind="kd", lr=KD_LR, settings=dict(recipe="recommended")),
    # The seed's weights without its attention term (MPNet's attention was refused until it was recorded by hooks).
    "seed_logits": dict(kind="kd", lr=KD_LR, settings=dict(recipe="seed", gamma=0.0)),
    "kd_alone": dict(kind="kd", lr=KD_LR, settings=dict(temperature=2.0, alpha=0.0, beta=1.0, gamma=0.0)),
    **{
        f"recipe_{name}": dict(kind="kd", lr=KD_LR, settings=dict(recipe=name))
        for name in ("hinton", "distilbert", "tinybert", "minilm", "minilmv2")
    },
    # Levers, one at a time against kd_alone.
    "kd_alone_t1": dict(kind="kd", lr=KD_LR, settings=dict(temperature=1.0, alpha=0.0, beta=1.0, gamma=0.0)),
    "kd_alone_t4": dict(kind="kd", lr=KD_LR, settings=dict(temperature=4.0, alpha=0.0, beta=1.0, gamma=0.0)),
    "kd_alpha0.5": dict(kind="kd", lr=KD_LR, settings=dict(temperature=2.0, alpha=0.5, beta=0.5, gamma=0.0)),
    "kd_alone_lr2e-4": dict(kind="kd", lr=2e-4, settings=dict(temperature=2.0, alpha=0.0, beta=1.0, gamma=0.0)),
    "kd_augment1": dict(
        kind="kd", lr=KD_LR, augment=1, settings=dict(temperature=2.0, alpha=0.0, beta=1.0, gamma=0.0)
    ),
    "kd_augment2": dict(
        kind="kd", lr=KD_LR, augment=2, settings=dict(temperature=2.0, alpha=0.0, beta=1.0, gamma=0.0)
    ),
    # TinyBERT's two stages: intermediate layers (attention scores + hidden states) first, then predictions.
    "two_stage": dict(
        kind="kd",
        lr=KD_LR,
        stages=[
            (0.3, dict(alpha=0.0, beta=0.0, gamma=1.0, attention_loss="score_mse", hidden_weight=1.0)),
            (0.7, dict(temperature=2.0, alpha=0.0, beta=1.0, gamma=0.0)),
        ],
    ),  # fmt: skip
    "kd_augment4": dict(
        kind="kd", lr=KD_LR, augment=4, settings=dict(temperature=2.0, alpha=0.0, beta=1.0, gamma=0.0)
    ),
    # Levers, one at a time against MiniLM's recipe (the small scale's best): temperature, learning rate, transfer set.
    "minilm_t2": dict(kind="kd", lr=KD_LR, settings=dict(recipe="minilm", temperature=2.0)),
    "minilm_lr2e-4": dict(kind="kd", lr=2e-4, settings=dict(recipe="minilm")),
    "minilm_augment1": dict(kind="kd", lr=KD_LR, augment=1, settings=dict(recipe="minilm")),
    # The schedule lever: cosine decay instead of linear (same 6% warmup), for the baseline and the recipe alike.
    "ce_lr2e-4_cosine": dict(kind="ce", lr=2e-4, schedule="cosine"),
    "minilm_cosine": dict(kind="kd", lr=KD_LR, schedule="cosine", settings=dict(recipe="minilm")),
}
DEFAULT_ARMS = ["ce_lr3e-5", "ce_lr1e-4", "ce_lr2e-4", "seed", "kd_alone", "recipe_hinton", "kd_augment2",
                "recipe_distilbert", "recipe_tinybert", "recipe_minilm", "recipe_minilmv2"]  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", choices=list(SCALES), default="small")
    parser.add_argument("--arms", nargs="+", default=None, help=f"from {list(ARMS)}; default {DEFAULT_ARMS}")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=float, default=0.4, help="student budget, in epochs of the original set")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=64, help="SST-2 phrases average 9 words")
    parser.add_argument("--student-rows", type=float, default=1.0,
                        help="fraction of the training set the students draw from: a fixed sample, the same for every "
                             "arm and seed (with --epochs at most this fraction, each row is seen at most once, as "
                             "with the full set; a smaller set makes the teacher-output cache cheaper)")  # fmt: skip
    parser.add_argument("--split-teacher", nargs="?", const="rows", choices=["rows", "sentences"], default=None,
                        help="fine-tune the teacher on a fixed half of the training set and let the students draw "
                             "from the other half only, so that it has not fitted their rows: 'rows' (the flag alone) "
                             "halves the rows, so phrases of one sentence fall in both halves; 'sentences' halves "
                             "whole sentences, each phrase going with a sentence that contains it")  # fmt: skip
    parser.add_argument("--teacher-max-epochs", type=float, default=2.0)
    parser.add_argument("--teacher-patience", type=int, default=2, help="evaluations without gain before stopping")
    parser.add_argument("--results", default=None, help="results file stem (default quality_study_<scale>)")
    parser.add_argument("--summary", action="store_true", help="only summarise the results file")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny budgets, quality_quick results")
    parser.add_argument("--plan", default=None, help="file of 'arm seed' lines, re-read before every run")
    parser.add_argument("--arms-file", default=None, help="JSON of extra arms, re-read before every run")
    parser.add_argument("--follow", action="store_true", help="with --plan: wait for new lines instead of exiting")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    opts = parser.parse_args(argv)
    opts.arms = opts.arms or DEFAULT_ARMS
    unknown = [a for a in opts.arms if a not in ARMS]
    if unknown:
        parser.error(f"unknown --arms {unknown}; choose from {list(ARMS)}")
    opts.results = opts.results or ("quality_quick" if opts.quick else f"quality_study_{opts.scale}")
    return opts


# ---- data and models ---------------------------------------------------------------------------------------------


def file_digest(*paths: Path) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def pretrained_path(scale: str) -> str:
    if SCALES[scale]["model"] == "minilm":
        return _common.minilm_path()
    if not (MPNET_DIR / "config.json").is_file():
        sys.exit(f"all-mpnet-base-v2 not found at {MPNET_DIR}: assemble it as ../shared/data/README.md says.")
    return str(MPNET_DIR)


def accuracy(model, dataset, collator, batch_size: int = 256) -> float:
    """Validation accuracy, in evaluation mode, sequential batches; the model's mode is restored afterwards."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, collate_fn=collator)
    correct = 0
    with torch.inference_mode():
        for batch in loader:
            labels = batch.pop("labels").to(device)
            logits = model(**{k: v.to(device) for k, v in batch.items()}).logits
            correct += (logits.argmax(dim=-1) == labels).sum().item()
    model.train(was_training)
    return correct / len(dataset)


def curve_callback(val, collator, every: int, curve: list):
    """Appends (step, validation accuracy) every `every` steps and at the end."""
    from transformers import TrainerCallback

    class Curve(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.global_step % every == 0 or state.global_step == state.max_steps:
                curve.append((state.global_step, accuracy(model, val, collator)))

    return Curve()


def training_args(out: Path, steps: int, opts, seed: int, arm: dict) -> dict:
    return dict(
        output_dir=str(out), max_steps=steps, per_device_train_batch_size=opts.batch_size, learning_rate=arm["lr"],
        label_smoothing_factor=arm.get("label_smoothing", 0.0), lr_scheduler_type=arm.get("schedule", "linear"),
        warmup_steps=0.06, weight_decay=0.01, logging_steps=max(1, steps // 16),
        save_strategy="no", report_to=[], disable_tqdm=True, seed=seed, data_seed=seed,
        use_cpu=not torch.cuda.is_available(), dataloader_num_workers=0,
    )  # fmt: skip


def teacher_cache(opts, data_key: str) -> tuple[dict, str, Path]:
    """The teacher's settings, their key, and the folder its fine-tuned weights are cached in."""
    scale = SCALES[opts.scale]
    settings = dict(
        scale=opts.scale, lr=scale["teacher_lr"], batch=opts.batch_size, max_length=opts.max_length,
        eval_steps=scale["teacher_eval_steps"], patience=opts.teacher_patience, max_epochs=opts.teacher_max_epochs,
        data=data_key, quick=opts.quick, seed=0,
    )  # fmt: skip
    if opts.split_teacher:  # only then: the caches of teachers fine-tuned on every row keep their keys
        settings["rows"] = SPLIT_ROWS[opts.split_teacher]
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    return settings, key, _common.CACHE_DIR / f"teacher_{opts.scale}_{key}"


def converged_teacher(opts, train, val, collator, tokenizer, data_key: str):
    """The pretrained checkpoint fine-tuned to convergence on validation (best checkpoint), cached on disk."""
    from transformers import EarlyStoppingCallback, Trainer, TrainingArguments

    settings, key, folder = teacher_cache(opts, data_key)
    record = folder / "teacher_eval.json"
    if record.is_file():
        from transformers import AutoModelForSequenceClassification

        print(f"teacher: reusing {folder.relative_to(_common.ROOT)}", flush=True)
        return AutoModelForSequenceClassification.from_pretrained(folder), json.loads(record.read_text())
    teacher, _ = _common.load_teacher_and_tokenizer(pretrained_path(opts.scale), seed=0)
    work = _common.CACHE_DIR / f"tmp_teacher_{key}"
    eval_steps = 10 if opts.quick else settings["eval_steps"]
    args = TrainingArguments(
        output_dir=str(work), num_train_epochs=opts.teacher_max_epochs, max_steps=40 if opts.quick else -1,
        per_device_train_batch_size=opts.batch_size, per_device_eval_batch_size=256, learning_rate=settings["lr"],
        warmup_steps=0.06, weight_decay=0.01, eval_strategy="steps", eval_steps=eval_steps, save_strategy="steps",
        save_steps=eval_steps, save_total_limit=2, load_best_model_at_end=True, metric_for_best_model="accuracy",
        logging_steps=eval_steps, report_to=[], disable_tqdm=True, seed=0, use_cpu=not torch.cuda.is_available(),
    )  # fmt: skip

    def compute_metrics(prediction) -> dict[str, float]:
        return {"accuracy": float((prediction.predictions.argmax(-1) == prediction.label_ids).mean())}

    print(f"teacher: fine-tuning {opts.scale} until validation accuracy stops improving ...", flush=True)
    started = time.perf_counter()
    trainer = Trainer(
        model=teacher, args=args, train_dataset=train, eval_dataset=val, data_collator=collator,
        compute_metrics=compute_metrics,
        callbacks=[EarlyStoppingCallback(early_stopping_patience=opts.teacher_patience)],
    )  # fmt: skip
    # An interrupted fine-tuning resumes from its newest checkpoint (the folder is keyed on the settings).
    resume = any(path.name.startswith("checkpoint-") for path in work.glob("checkpoint-*")) and not opts.quick
    if resume:
        print(f"teacher: resuming from the newest checkpoint in {work.relative_to(_common.ROOT)}", flush=True)
    trainer.train(resume_from_checkpoint=True if resume else None)
    curve = [(h["step"], h["eval_accuracy"]) for h in trainer.state.log_history if "eval_accuracy" in h]
    info = {
        "val_accuracy": accuracy(teacher, val, collator), "best_checkpoint": trainer.state.best_model_checkpoint,
        "steps_run": trainer.state.global_step, "curve": curve, "train_seconds": time.perf_counter() - started,
        "settings": settings,
    }  # fmt: skip
    teacher.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / "teacher_eval.json").write_text(json.dumps(info, indent=2))  # written last: marks a complete cache
    shutil.rmtree(work, ignore_errors=True)
    print(f"teacher: {info['val_accuracy']:.4f} after {info['steps_run']} steps, best {info['best_checkpoint']}")
    return teacher, info


SPLIT_ROWS = {
    "rows": "first half of a seed-0 permutation",  # the key of the first split teacher, kept
    "sentences": "whole sentences, first half of a seed-0 permutation",
}


def disjoint_halves(train, sentences: list[str] | None = None):
    """(teacher's rows, students' rows) of `train`, each in file order: see `half_indices`."""
    mine, theirs = half_indices(len(train), sentences)
    return train.select(mine), train.select(theirs)


def half_indices(count: int, sentences: list[str] | None = None) -> tuple[list[int], list[int]]:
    """(teacher's, students') row indices. Without `sentences`: the two halves of a fixed permutation (seed 0) of
    the rows, so a phrase and its parent sentence can land in different halves. With the rows' `sentences`: whole
    sentence groups (see `sentence_groups`) go to the teacher, in a fixed permutation (seed 0), until it holds half
    the rows; the students get the other groups."""
    import random

    if sentences is None:
        order = list(range(count))
        random.Random(0).shuffle(order)
        return sorted(order[: count // 2]), sorted(order[count // 2 :])
    group = sentence_groups(sentences)
    sizes = collections.Counter(group)
    roots = sorted(sizes)
    random.Random(0).shuffle(roots)
    teachers, held = set(), 0
    for root in roots:
        if held >= count / 2:
            break
        teachers.add(root)
        held += sizes[root]
    return [i for i, r in enumerate(group) if r in teachers], [i for i, r in enumerate(group) if r not in teachers]


def phrase_spans(text: str, wanted) -> set[str]:
    """The word spans of `text` that are in `wanted` (SST-2 phrases are word spans of their sentence)."""
    words = text.split()
    spans = (" ".join(words[a:b]) for a in range(len(words)) for b in range(a + 1, len(words) + 1))
    return {span for span in spans if span in wanted}


def sentence_groups(sentences: list[str]) -> list[int]:
    """For each row, the index of a full sentence (a row inside no longer row) that contains it; a full sentence is
    its own group. A phrase inside several sentences goes with the longest (then the first) of them."""
    texts = [s.strip() for s in sentences]
    wanted = set(texts)
    owner: dict[str, int] = {}
    group = list(range(len(texts)))
    for i in sorted(range(len(texts)), key=lambda i: (-len(texts[i].split()), i)):
        if texts[i] in owner:
            group[i] = owner[texts[i]]
        else:  # a full sentence: its phrases join it unless a longer sentence holds them already
            for span in phrase_spans(texts[i], wanted):
                owner.setdefault(span, i)
    return group


def inside_share(outer: list[str], inner: list[str]) -> float:
    """The share of `inner`'s rows whose text is a word span of some row of `outer` (how much of one half the other
    half's training has seen, as whole rows or inside longer ones)."""
    wanted = {s.strip() for s in inner}
    seen = set().union(*(phrase_spans(s.strip(), wanted) for s in outer))
    return sum(s.strip() in seen for s in inner) / max(1, len(inner))


def student_rows(train, fraction: float):
    """`train`, or a fixed random sample of `fraction` of its rows (seed 0, in the original order)."""
    if not 0 < fraction <= 1:
        sys.exit(f"--student-rows must be in (0, 1], got {fraction}")
    if fraction == 1:
        return train
    import random

    count = max(1, round(fraction * len(train)))
    return train.select(sorted(random.Random(0).sample(range(len(train)), count)))


def transfer_set(train, tokenizer, teacher, multiplier: int, opts, data_key: str):
    """The training set plus `multiplier` augmented copies of each row (label -100: the teacher labels them)."""
    from datasets import Dataset

    from hf_distill.augment import augment_dataset, embedding_neighbours

    folder = _common.CACHE_DIR / f"augmented_x{multiplier}_{data_key}_len{opts.max_length}"
    if not (folder / "dataset_info.json").is_file():
        started = time.perf_counter()
        raw = Dataset.from_dict(_common.read_sst2("train", limit=200 if opts.quick else None))
        neighbours = embedding_neighbours(teacher, tokenizer)
        augmented = augment_dataset(
            raw, text_columns=["sentence"], multiplier=multiplier, tokenizer=tokenizer, word_neighbours=neighbours,
            seed=0,
        )  # fmt: skip
        tokenized = augmented.map(
            lambda rows: tokenizer(rows["sentence"], truncation=True, max_length=opts.max_length),
            batched=True, remove_columns=["sentence"],
        )  # fmt: skip
        tokenized.save_to_disk(str(folder))
        print(f"transfer set x{multiplier}: {len(tokenized)} rows in {time.perf_counter() - started:.0f} s")
    from datasets import load_from_disk

    return load_from_disk(str(folder))


# ---- one run -----------------------------------------------------------------------------------------------------


def arm_table(opts) -> dict[str, dict[str, Any]]:
    """The built-in arms plus those of `--arms-file` (JSON, re-read before every run, so arms can be added live)."""
    extra = json.loads(Path(opts.arms_file).read_text()) if opts.arms_file else {}
    return ARMS | extra


def make_trainer(student, teacher, arm: dict, settings: dict | None, steps: int, seed: int, train, data, opts,
                 callbacks):  # fmt: skip
    """The plain `Trainer` (CE only) when `settings` is None, else `DistillationTrainer` (teacher logits cached
    when only the logits are needed)."""
    from transformers import Trainer, TrainingArguments

    from hf_distill import DistillationArguments, DistillationTrainer

    common = training_args(_common.CACHE_DIR / "tmp_student", steps, opts, seed, arm)
    if settings is None:
        args = TrainingArguments(**common)
        return Trainer(model=student, args=args, train_dataset=train, data_collator=data["collator"],
                       callbacks=callbacks)  # fmt: skip
    layers = SCALES[opts.scale]["student_layers"]
    args = DistillationArguments(**common, **settings, layer_map=layers)
    if args.gamma == 0 and args.hidden_weight == 0 and args.relation_weight == 0:  # logits only: cache them
        cache = str(_common.CACHE_DIR / "logits")  # keyed on the teacher and data: scales cannot collide
        args = DistillationArguments(**common, **settings, layer_map=layers, teacher_cache_dir=cache)
    return DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=train,
                               data_collator=data["collator"], callbacks=callbacks)  # fmt: skip


def run_arm(name: str, seed: int, teacher, data: dict, opts) -> dict:
    """One arm, one seed: the student trained for `data["steps"]` steps; stages (TinyBERT's two) split the steps."""
    arm = arm_table(opts)[name]
    student = _common.student_from_layers(teacher, SCALES[opts.scale]["student_layers"])
    steps = data["steps"]
    train = data["train"]
    if arm.get("augment"):
        if opts.student_rows < 1 or opts.split_teacher:
            sys.exit(f"arm {name}: the transfer set is built from every training row; drop --student-rows "
                     f"{opts.student_rows} and --split-teacher {opts.split_teacher}")  # fmt: skip
        train = transfer_set(data["train"], data["tokenizer"], teacher, arm["augment"], opts, data["key"])
    # (fraction of the steps, settings or None for CE only) per stage
    stages = arm.get("stages") or [(1.0, None if arm["kind"] == "ce" else arm["settings"])]
    curve: list = []
    started = time.perf_counter()
    done = 0
    for index, (fraction, settings) in enumerate(stages):
        stage_steps = steps - done if index == len(stages) - 1 else round(fraction * steps)
        stage_curve: list = []
        callbacks = [curve_callback(data["val"], data["collator"], max(1, steps // 6), stage_curve)]
        make_trainer(student, teacher, arm, settings, stage_steps, seed, train, data, opts, callbacks).train()
        curve += [(done + step, acc) for step, acc in stage_curve]
        done += stage_steps
    return {
        "arm": name, "kind": arm["kind"], "seed": seed, "steps": steps, "accuracy": curve[-1][1], "curve": curve,
        "seconds": time.perf_counter() - started, "lr": arm["lr"], "settings": arm.get("settings"),
        "stages": arm.get("stages"), "augment": arm.get("augment", 0), "train_rows": len(train),
        "label_smoothing": arm.get("label_smoothing", 0.0), "schedule": arm.get("schedule", "linear"),
        "student_rows": opts.student_rows,
    }  # fmt: skip


def planned_runs(opts) -> list[tuple[str, int]]:
    """(arm, seed) in order: from `--plan` (re-read before every run, so a running study can be extended), else every
    arm once per seed before any arm twice, so that partial results cover all arms."""
    if opts.plan is None:
        return [(arm, seed) for seed in opts.seeds for arm in opts.arms]
    pairs = [line.split() for line in Path(opts.plan).read_text().splitlines() if line.strip() and line[0] != "#"]
    arms = arm_table(opts)
    unknown = [arm for arm, _ in pairs if arm not in arms]
    if unknown:
        print(f"plan {opts.plan}: unknown arms {unknown} skipped", flush=True)
    return [(arm, int(seed)) for arm, seed in pairs if arm in arms]


def next_run(opts, results: Path, steps: int) -> tuple[str, int] | None:
    """The first planned run not yet in the results file; with `--follow`, wait for the plan to grow."""
    while True:
        done = {
            (r["arm"], r["seed"])
            for r in load_runs(results)
            if r["steps"] == steps and r.get("student_rows", 1.0) == opts.student_rows
        }  # same budget, same rows
        todo = [pair for pair in planned_runs(opts) if pair not in done]
        if todo or not opts.follow:
            return todo[0] if todo else None
        time.sleep(30)


# ---- summary -----------------------------------------------------------------------------------------------------


def load_runs(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def summarise(runs: list[dict], teacher_acc: float) -> tuple[list[dict], str | None]:
    """Per arm: mean +- std, retention, gap closed and the paired difference (+- its s.e.) to the best CE-only arm."""
    by_arm: dict[str, dict[int, float]] = {}
    seconds: dict[str, list[float]] = {}
    for run in runs:
        by_arm.setdefault(run["arm"], {})[run["seed"]] = run["accuracy"]
        seconds.setdefault(run["arm"], []).append(run["seconds"])
    ce_arms = {a: s for a, s in by_arm.items() if a.startswith("ce_")}  # the plain Trainer's arms
    baseline = max(ce_arms, key=lambda a: (len(ce_arms[a]), statistics.mean(ce_arms[a].values())), default=None)
    ce = by_arm[baseline] if baseline else {}
    ce_mean = statistics.mean(ce.values()) if ce else math.nan
    rows = []
    for arm, accs in by_arm.items():
        values = list(accs.values())
        mean = statistics.mean(values)
        paired = [accs[s] - ce[s] for s in accs if s in ce]
        diff = statistics.mean(paired) if paired else math.nan
        # Gap closed against CE on the seeds this arm ran (an arm run at one seed is compared with that seed's CE).
        ce_same = statistics.mean(ce[s] for s in accs if s in ce) if paired else ce_mean
        gain = diff if paired else mean - ce_mean
        row = {
            "arm": arm, "n": len(values), "mean": mean, "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "retention": mean / teacher_acc,
            "gap_closed": gain / (teacher_acc - ce_same) if teacher_acc > ce_same else math.nan,
            "diff": diff,
            "diff_se": statistics.stdev(paired) / math.sqrt(len(paired)) if len(paired) > 1 else math.nan,
            "minutes": statistics.mean(seconds[arm]) / 60,
        }  # fmt: skip
        rows.append(row)
    rows.sort(key=lambda r: -r["diff"] if not math.isnan(r["diff"]) else math.inf)  # paired gain: fair across seeds
    return rows, baseline


def along_curve(runs: list[dict], baseline: str | None, teacher_acc: float) -> dict[str, list[dict]]:
    """Per distillation arm, at each evaluation step of the curves: the paired difference to the baseline (mean over
    the seeds both ran) and the gap closed there. How the gain moves with the steps taken, within one schedule."""
    curves = {(r["arm"], r["seed"]): dict(r["curve"]) for r in runs}
    table: dict[str, list[dict]] = {}
    for arm in sorted({r["arm"] for r in runs if r["kind"] != "ce"}):
        seeds = [seed for a, seed in curves if a == arm and (baseline, seed) in curves]
        if not seeds:
            continue
        for step in sorted(set.intersection(*(set(curves[arm, s]) & set(curves[baseline, s]) for s in seeds))):
            diff = statistics.mean(curves[arm, s][step] - curves[baseline, s][step] for s in seeds)
            ce = statistics.mean(curves[baseline, s][step] for s in seeds)
            table.setdefault(arm, []).append({
                "step": step, "seeds": len(seeds), "diff": diff, "ce": ce,
                "gap_closed": diff / (teacher_acc - ce) if teacher_acc > ce else math.nan,
            })  # fmt: skip
    return table


def print_summary(rows: list[dict], baseline: str | None, teacher_acc: float) -> None:
    print(f"\nteacher {100 * teacher_acc:.2f}%; baseline (best CE-only learning rate): {baseline}")
    print(f"{'arm':<20} {'n':>2} {'accuracy %':>14} {'retention':>9} {'gap closed':>10} {'vs CE (paired)':>18} "
          f"{'min/run':>7}")  # fmt: skip
    for r in rows:
        diff = "" if math.isnan(r["diff"]) else f"{100 * r['diff']:+.2f} ± {100 * r['diff_se']:.2f}"
        accuracy_cell = f"{100 * r['mean']:.2f} ± {100 * r['std']:.2f}"
        print(f"{r['arm']:<20} {r['n']:>2} {accuracy_cell:>14} {100 * r['retention']:>8.1f}% "
              f"{100 * r['gap_closed']:>9.0f}% {diff:>18} {r['minutes']:>7.1f}")  # fmt: skip


def markdown_table(rows: list[dict], runs: list[dict]) -> str:
    """The summary as a Markdown table (docs/benchmarks.md), with each arm's per-seed accuracies."""
    seeds = {r["arm"]: sorted((run["seed"], run["accuracy"]) for run in runs if run["arm"] == r["arm"]) for r in rows}
    lines = ["| arm | seeds | accuracy (mean ± std) | per seed | retention | gap closed | vs CE-only (paired ± s.e.) "
             "| min/run |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for r in rows:
        per_seed = ", ".join(f"{100 * acc:.2f}" for _, acc in seeds[r["arm"]])
        diff = "" if math.isnan(r["diff"]) else f"{100 * r['diff']:+.2f}"
        diff += "" if math.isnan(r["diff_se"]) else f" ± {100 * r['diff_se']:.2f}"
        gap = "" if math.isnan(r["gap_closed"]) else f"{100 * r['gap_closed']:.0f}%"
        lines.append(f"| {r['arm']} | {r['n']} | {100 * r['mean']:.2f} ± {100 * r['std']:.2f} | {per_seed} | "
                     f"{100 * r['retention']:.1f}% | {gap} | {diff} | {r['minutes']:.1f} |")  # fmt: skip
    return "\n".join(lines)


def plot_curves(runs: list[dict], arms: list[str], teacher_acc: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for arm in arms:
        curves = [r["curve"] for r in runs if r["arm"] == arm]
        if not curves:
            continue
        steps = [s for s, _ in curves[0]]
        mean = [statistics.mean(c[i][1] for c in curves if len(c) > i) for i in range(len(steps))]
        ax.plot(steps, [100 * m for m in mean], marker="o", ms=3, label=f"{arm} (n={len(curves)})")
    ax.axhline(100 * teacher_acc, color="black", ls="--", lw=1, label="teacher")
    ax.set_xlabel("student optimizer steps")
    ax.set_ylabel("SST-2 validation accuracy (%)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path.relative_to(_common.ROOT)}")


# ---- main --------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    opts = parse_args(argv)
    if opts.threads:
        torch.set_num_threads(opts.threads)
    results = _common.RESULTS_DIR / f"{opts.results}.jsonl"
    meta_path = _common.RESULTS_DIR / f"{opts.results}_meta.json"
    if opts.summary:
        meta = json.loads(meta_path.read_text())
        runs = load_runs(results)
        rows, baseline = summarise(runs, meta["teacher"]["val_accuracy"])
        print_summary(rows, baseline, meta["teacher"]["val_accuracy"])
        print("\n" + markdown_table(rows, runs) + "\n")
        main_arms = [baseline, "seed", "kd_alone", "recipe_minilm", "two_stage", "recommended",
                     *[a for a in ARMS if "augment" in a]]  # fmt: skip
        plot_curves(runs, [a for a in main_arms if a], meta["teacher"]["val_accuracy"],
                    _common.RESULTS_DIR / f"{opts.results}_curves.png")  # fmt: skip
        curve_gains = along_curve(runs, baseline, meta["teacher"]["val_accuracy"])
        for arm, points in curve_gains.items():
            print(f"{arm} vs {baseline} along the curve (step: paired diff, gap closed): " + ", ".join(
                f"{p['step']}: {100 * p['diff']:+.2f} ({100 * p['gap_closed']:.0f}%)" for p in points))  # fmt: skip
        _common.write_results(opts.results + "_summary", {"meta": meta, "summary": rows, "baseline": baseline,
                                                          "along_curve": curve_gains})  # fmt: skip
        return

    info = _common.machine_info()
    _common.print_machine(info)
    sst2 = _common.require_sst2()
    from transformers import AutoTokenizer, DataCollatorWithPadding

    tokenizer = AutoTokenizer.from_pretrained(pretrained_path(opts.scale))
    limit = 2000 if opts.quick else None
    train = _common.tokenized_sst2(tokenizer, "train", opts.max_length, limit=limit)
    val = _common.tokenized_sst2(tokenizer, "validation", opts.max_length, limit=300 if opts.quick else None)
    collator = DataCollatorWithPadding(tokenizer)
    data_key = file_digest(sst2 / "train.tsv", sst2 / "validation.tsv")
    teacher_train, students_pool, seen = train, train, 1.0
    if opts.split_teacher:
        sentences = _common.read_sst2("train", limit)["sentence"]
        mine, theirs = half_indices(len(train), sentences if opts.split_teacher == "sentences" else None)
        teacher_train, students_pool = train.select(mine), train.select(theirs)
        seen = inside_share([sentences[i] for i in mine], [sentences[i] for i in theirs])
        print(f"split by {opts.split_teacher}: {100 * seen:.1f}% of the students' rows occur in the teacher's rows, "
              "whole or inside a longer one", flush=True)  # fmt: skip
    teacher, teacher_info = converged_teacher(opts, teacher_train, val, collator, tokenizer, data_key)
    teacher.eval()
    steps = max(1, round(opts.epochs * len(train) / opts.batch_size)) if not opts.quick else 20
    student_train = student_rows(students_pool, opts.student_rows)
    if steps * opts.batch_size > len(student_train):  # a smaller pool (--student-rows, --split-teacher) is revisited
        print(f"note: {steps} steps of {opts.batch_size} revisit the students' {len(student_train)} rows", flush=True)
    meta = {
        "machine": info, "scale": opts.scale, "student_layers": SCALES[opts.scale]["student_layers"],
        "teacher": teacher_info, "validation_rows": len(val), "train_rows": len(train), "steps": steps,
        "epochs": opts.epochs, "batch_size": opts.batch_size, "max_length": opts.max_length,
        "student_rows": len(student_train), "split_teacher": opts.split_teacher, "teacher_rows": len(teacher_train),
        "student_rows_seen_by_teacher": seen,
        "student_before": accuracy(_common.student_from_layers(teacher, SCALES[opts.scale]["student_layers"]),
                                   val, collator),
    }  # fmt: skip
    _common.RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    meta_path.write_text(json.dumps(meta, indent=2, default=str))
    print(f"teacher {teacher_info['val_accuracy']:.4f}, student before training {meta['student_before']:.4f}, "
          f"{steps} steps per run", flush=True)  # fmt: skip
    data = {"train": student_train, "val": val, "collator": collator, "tokenizer": tokenizer, "steps": steps,
            "key": data_key}  # fmt: skip
    while (todo := next_run(opts, results, steps)) is not None:
        arm, seed = todo
        run = run_arm(arm, seed, teacher, data, opts)
        with results.open("a") as handle:
            handle.write(json.dumps(run) + "\n")
        print(f"seed {seed} {arm}: {100 * run['accuracy']:.2f}% ({run['seconds'] / 60:.1f} min)", flush=True)
    rows, baseline = summarise(load_runs(results), teacher_info["val_accuracy"])
    print_summary(rows, baseline, teacher_info["val_accuracy"])


if __name__ == "__main__":
    main()
