"""Quality on real data: does distillation close the gap between a 3-layer student and its 6-layer teacher?

1. Fine-tune the pretrained MiniLM-L6 (6 layers, 22.7M parameters) on SST-2 train: the teacher. Cached on disk
   under `benchmarks/.cache/` (gitignored), keyed on its settings, so later runs reuse it.
2. Build a 3-layer student from the fine-tuned teacher's embeddings, layers [1, 3, 5], pooler and classifier.
3. Train it (a) with cross-entropy only (plain `Trainer`), (b) with `DistillationTrainer` under each chosen
   setting; same initial weights, same steps, same batches in the same order, same learning rate.
4. Report validation accuracy (2,000 held-out SST-2 rows) of the teacher, (a) and (b), the retention
   (b) / teacher and the gap closed ((b) - (a)) / (teacher - (a)).

Commands (from the repository root):

    nice python benchmarks/quality.py                 # full run, about 30 min on 2 CPU cores (teacher cached after)
    python benchmarks/quality.py --quick              # smoke run, a few minutes
    nice python benchmarks/quality.py --configs seed kd_t2 --seeds 0 1 --steps 1200   # any subset / more seeds

Results: a table on stdout and `benchmarks/results/quality.json` (`quality_quick.json` for `--quick`).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

from hf_distill.recipes import RECIPES  # noqa: E402

# The settings compared. "seed" is the lab notebook's (and the library's default) weighting.
CONFIGS: dict[str, dict] = {
    "seed": dict(temperature=4.0, alpha=0.1, beta=0.5, gamma=0.4, attention_loss="mse"),
    "kd_t2": dict(temperature=2.0, alpha=0.5, beta=1.0, gamma=0.0, attention_loss="mse"),
    "kd_t2_attn_kl": dict(temperature=2.0, alpha=0.5, beta=1.0, gamma=1.0, attention_loss="kl"),
    "kd_t1_pure": dict(temperature=1.0, alpha=0.0, beta=1.0, gamma=0.0, attention_loss="mse"),
    "kd_t4_pure": dict(temperature=4.0, alpha=0.0, beta=1.0, gamma=0.0, attention_loss="mse"),
    "kd_t2_hidden": dict(temperature=2.0, alpha=0.5, beta=1.0, gamma=0.0, hidden_weight=1.0),
    "kd_t1_hidden_pure": dict(temperature=1.0, alpha=0.0, beta=1.0, gamma=0.0, hidden_weight=1.0),
    "kd_t2_hidden_attn_kl": dict(
        temperature=2.0, alpha=0.5, beta=1.0, gamma=1.0, attention_loss="kl", hidden_weight=1.0
    ),
}
CONFIGS.update({f"recipe_{name}": dict(recipe=name) for name in RECIPES})  # the published recipes, as they stand
DEFAULT_CONFIGS = ["seed", "kd_t2"]
STUDENT_LAYERS = [1, 3, 5]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny step counts, 500 validation rows")
    parser.add_argument("--steps", type=int, default=800, help="optimizer steps for each student (default 800)")
    parser.add_argument("--teacher-steps", type=int, default=1000, help="teacher fine-tuning steps (default 1000)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=5e-5, help="learning rate of the students (default 5e-5)")
    parser.add_argument("--teacher-lr", type=float, default=1e-4, help="teacher learning rate (default 1e-4)")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds (data order, dropout)")
    parser.add_argument("--configs", nargs="+", default=None, help=f"from {list(CONFIGS)}; default {DEFAULT_CONFIGS}")
    parser.add_argument("--temperature", type=float, help="add a 'custom' config with these settings")
    parser.add_argument("--alpha", type=float)
    parser.add_argument("--beta", type=float)
    parser.add_argument("--gamma", type=float)
    parser.add_argument("--attention-loss", choices=["mse", "kl"])
    parser.add_argument("--no-teacher-cache", action="store_true", help="run the teacher every step even at gamma=0")
    parser.add_argument("--output", default=None, help="results file name (default quality / quality_quick)")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.teacher_steps = min(args.steps, 30), min(args.teacher_steps, 40)
    names = args.configs or DEFAULT_CONFIGS
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        parser.error(f"unknown --configs {unknown}; choose from {list(CONFIGS)}")
    args.settings = {n: CONFIGS[n] for n in names}
    custom = {k: getattr(args, k) for k in ("temperature", "alpha", "beta", "gamma", "attention_loss")}
    if any(v is not None for v in custom.values()):
        base = dict(CONFIGS["seed"])
        base.update({k: v for k, v in custom.items() if v is not None})
        args.settings["custom"] = base
    return args


def accuracy(model, dataset, collator, batch_size: int = 128) -> float:
    """Validation accuracy, in evaluation mode, sequential batches."""
    model.eval()
    device = next(model.parameters()).device
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, collate_fn=collator)
    correct = 0
    with torch.inference_mode():
        for batch in loader:
            labels = batch.pop("labels").to(device)
            logits = model(**{k: v.to(device) for k, v in batch.items()}).logits
            correct += (logits.argmax(dim=-1) == labels).sum().item()
    return correct / len(dataset)


def common_training_args(out: Path, steps: int, opts: argparse.Namespace, seed: int, lr: float) -> dict:
    return dict(
        output_dir=str(out), max_steps=steps, per_device_train_batch_size=opts.batch_size,
        learning_rate=lr, warmup_steps=max(1, steps // 16), weight_decay=0.01, logging_steps=max(1, steps // 8),
        save_strategy="no", report_to=[], disable_tqdm=True, seed=seed, data_seed=seed,
        use_cpu=not torch.cuda.is_available(),
    )  # fmt: skip


def fine_tuned_teacher(opts: argparse.Namespace, train, val, collator):
    """The MiniLM-L6 teacher fine-tuned on SST-2, trained once and then loaded from `benchmarks/.cache/`."""
    import json

    from transformers import AutoModelForSequenceClassification, Trainer, TrainingArguments

    tag = f"teacher_sst2_steps{opts.teacher_steps}_bs{opts.batch_size}_lr{opts.teacher_lr:g}"
    tag += f"_len{opts.max_length}_seed0"
    folder = _common.CACHE_DIR / tag
    record = folder / "teacher_eval.json"
    if record.is_file():
        print(f"teacher: reusing {folder.relative_to(_common.ROOT)}", flush=True)
        teacher = AutoModelForSequenceClassification.from_pretrained(folder)
        return teacher, json.loads(record.read_text())
    teacher, _ = _common.load_teacher_and_tokenizer(seed=0)
    print(f"teacher: fine-tuning MiniLM-L6 for {opts.teacher_steps} steps (cached afterwards) ...", flush=True)
    args = TrainingArguments(
        **common_training_args(_common.CACHE_DIR / "tmp_teacher", opts.teacher_steps, opts, 0, opts.teacher_lr)
    )
    started = time.perf_counter()
    Trainer(model=teacher, args=args, train_dataset=train, data_collator=collator).train()
    seconds = time.perf_counter() - started
    info = {"val_accuracy": accuracy(teacher, val, collator), "train_seconds": seconds, "steps": opts.teacher_steps}
    teacher.save_pretrained(folder)
    record.write_text(json.dumps(info, indent=2))
    return teacher, info


def train_student(teacher, settings: dict | None, train, collator, opts, seed: int, use_cache: bool):
    """(a) plain Trainer when `settings` is None, else (b) DistillationTrainer; returns the student and seconds."""
    from transformers import Trainer, TrainingArguments

    from hf_distill import DistillationArguments, DistillationTrainer

    student = _common.student_from_layers(teacher, STUDENT_LAYERS)
    common = common_training_args(_common.CACHE_DIR / "tmp_student", opts.steps, opts, seed, opts.lr)
    if settings is None:
        trainer = Trainer(model=student, args=TrainingArguments(**common), train_dataset=train, data_collator=collator)
    else:
        args = DistillationArguments(**common, **settings, layer_map=STUDENT_LAYERS)
        if use_cache and args.gamma == 0 and args.hidden_weight == 0 and args.relation_weight == 0:
            cache = str(_common.CACHE_DIR / "teacher_logits")  # only the logits are needed: reuse them
            args = DistillationArguments(**common, **settings, layer_map=STUDENT_LAYERS, teacher_cache_dir=cache)
        trainer = DistillationTrainer(
            model=student, teacher_model=teacher, args=args, train_dataset=train, data_collator=collator
        )
    started = time.perf_counter()
    trainer.train()
    return student, time.perf_counter() - started, trainer.state.log_history


def main(argv: list[str] | None = None) -> None:
    opts = parse_args(argv)
    info = _common.machine_info()
    _common.print_machine(info)
    _common.require_sst2()
    from transformers import DataCollatorWithPadding

    _, tokenizer = _common.load_teacher_and_tokenizer()
    train = _common.tokenized_sst2(tokenizer, "train", opts.max_length)
    val = _common.tokenized_sst2(tokenizer, "validation", opts.max_length, limit=500 if opts.quick else None)
    collator = DataCollatorWithPadding(tokenizer)
    if torch.cuda.is_available():
        torch.set_default_device("cpu")

    teacher, teacher_info = fine_tuned_teacher(opts, train, val, collator)
    teacher_acc = accuracy(teacher, val, collator)
    print(f"teacher: validation accuracy {teacher_acc:.4f}", flush=True)

    runs = []
    for seed in opts.seeds:
        student, seconds, _ = train_student(teacher, None, train, collator, opts, seed, use_cache=False)
        accuracy_a = accuracy(student, val, collator)
        runs.append({"config": "ce_only", "seed": seed, "accuracy": accuracy_a, "seconds": seconds})
        print(f"seed {seed} ce_only: {runs[-1]['accuracy']:.4f} ({seconds:.0f} s)", flush=True)
        for name, settings in opts.settings.items():
            student, seconds, history = train_student(
                teacher, settings, train, collator, opts, seed, use_cache=not opts.no_teacher_cache
            )
            last = next((h for h in reversed(history) if "loss_ce" in h), {})
            terms = {k: last.get(k) for k in ("loss_ce", "loss_kd", "loss_attn", "loss_hidden")}
            runs.append(
                {"config": name, "seed": seed, "accuracy": accuracy(student, val, collator), "seconds": seconds,
                 "settings": settings, "last_logged_terms": terms}
            )  # fmt: skip
            print(f"seed {seed} {name}: {runs[-1]['accuracy']:.4f} ({seconds:.0f} s) {terms}", flush=True)

    rows = summarise(runs, teacher_acc)
    print()
    print(f"SST-2 validation ({len(val)} rows), teacher {teacher_acc:.4f}; students: {opts.steps} steps x batch "
          f"{opts.batch_size}, lr {opts.lr:g}, seeds {opts.seeds}")  # fmt: skip
    _common.print_table(rows, ["config", "accuracy", "retention", "gap_closed", "seconds", "settings"])
    _common.write_results(
        opts.output or ("quality_quick" if opts.quick else "quality"),
        {"machine": info, "options": {k: v for k, v in vars(opts).items() if k != "settings"},
         "student_source": _common.student_from_layers.source, "student_layers": STUDENT_LAYERS,
         "teacher": {"val_accuracy": teacher_acc, **teacher_info}, "validation_rows": len(val),
         "runs": runs, "summary": rows},
    )  # fmt: skip


def summarise(runs: list[dict], teacher_acc: float) -> list[dict]:
    """Mean accuracy per config over seeds, with retention and gap closed against the CE-only mean."""
    by_config: dict[str, list[dict]] = {}
    for run in runs:
        by_config.setdefault(run["config"], []).append(run)
    ce = statistics.mean(r["accuracy"] for r in by_config["ce_only"])
    rows = []
    for name, group in by_config.items():
        acc = statistics.mean(r["accuracy"] for r in group)
        gap = teacher_acc - ce
        rows.append({
            "config": name, "accuracy": acc, "retention": acc / teacher_acc,
            "gap_closed": (acc - ce) / gap if name != "ce_only" and gap > 0 else None,
            "seconds": statistics.mean(r["seconds"] for r in group),
            "settings": " ".join(f"{k}={v}" for k, v in group[0].get("settings", {}).items()) or "alpha=1 (CE only)",
        })  # fmt: skip
    return rows


if __name__ == "__main__":
    main()
