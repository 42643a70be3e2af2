"""Throughput and memory of a distillation step against its floor: one student step plus one teacher forward.

Configurations, all on the same SST-2 batches in the same order (same seed, same sampler), interleaved within
each round so that load from other processes hits them alike:

    student        (a) plain `Trainer` fine-tuning of the 3-layer student (MiniLM-L6 layers [1, 3, 5])
    teacher_fwd    (b) the 6-layer MiniLM-L6 teacher's forward pass alone, `no_grad`, eval mode
    distill_g0     (c) `DistillationTrainer`, gamma = 0 (CE + KD)
    distill_mse    (d) gamma = 0.4, attention_loss = "mse"
    distill_kl     (d) gamma = 0.4, attention_loss = "kl"
    distill_cached (e) gamma = 0 with `teacher_cache_dir` (the logits were cached before the timed rounds)

Reported: median seconds per optimizer step (wall clock between consecutive `on_step_end`, so data loading,
forward, backward and optimizer step are all in), samples/s, and the ratios (c)/((a)+(b)), (d)/((a)+(b)) and
(e)/(a). Memory, in a fresh process per configuration over 5 steps: the peak tensor memory of training above the
models already in place (on CPU from the profiler's allocation events, on a GPU `torch.cuda.max_memory_allocated`),
and the process's peak RSS (which on CPU is set by loading the data and weights, the same for every configuration).

Commands (from the repository root):

    nice python benchmarks/throughput.py                      # CPU, about 10 min on 2 shared cores
    python benchmarks/throughput.py --quick                   # smoke run
    python benchmarks/throughput.py --device cuda --bf16      # GPU, bf16 mixed precision

Results: a table on stdout and `benchmarks/results/throughput_<device>.json`.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

CONFIGS = ["student", "teacher_fwd", "distill_g0", "distill_mse", "distill_kl", "distill_cached"]
DISTILL = {
    "distill_g0": dict(gamma=0.0),
    "distill_mse": dict(gamma=0.4, attention_loss="mse"),
    "distill_kl": dict(gamma=0.4, attention_loss="kl"),
    "distill_cached": dict(gamma=0.0),
}
STUDENT_LAYERS = [1, 3, 5]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=16, help="timed optimizer steps per configuration and round")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps at the start of each run")
    parser.add_argument("--rounds", type=int, default=6, help="interleaved rounds over all configurations")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rows", type=int, default=4096, help="SST-2 training rows used (and cached)")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--bf16", action="store_true", help="bf16 mixed precision (GPU)")
    parser.add_argument("--configs", nargs="+", default=CONFIGS, choices=CONFIGS)
    parser.add_argument("--no-memory", action="store_true", help="skip the per-configuration memory runs")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 round of 4 steps, 512 rows")
    parser.add_argument("--memory-child", choices=CONFIGS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.warmup, args.rounds, args.rows = 4, 1, 1, 512
    if args.warmup < 1:
        parser.error("--warmup must be >= 1: a step's start is the previous step's end")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda, but torch sees no CUDA device")
    return args


def step_timer():
    """A `TrainerCallback` recording the wall clock at the end of every optimizer step (in `.ends`)."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.ends: list[float] = []

        def on_step_end(self, args, state, control, **kwargs) -> None:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.ends.append(time.perf_counter())

    return StepTimer()


class Bench:
    """Models, data and trainers shared by all configurations."""

    def __init__(self, opts: argparse.Namespace, cache_dir: str) -> None:
        from transformers import DataCollatorWithPadding

        self.opts, self.cache_dir = opts, cache_dir
        self.teacher, tokenizer = _common.load_teacher_and_tokenizer(seed=0)
        self.teacher.eval()
        self.student0 = _common.student_from_layers(self.teacher, STUDENT_LAYERS)
        self.train = _common.tokenized_sst2(tokenizer, "train", opts.max_length, limit=opts.rows)
        self.collator = DataCollatorWithPadding(tokenizer)
        self.device = torch.device(opts.device)
        self.teacher.to(self.device)

    def args(self, config: str, out: str, steps: int):
        from transformers import TrainingArguments

        from hf_distill import DistillationArguments

        common = dict(
            output_dir=out, max_steps=steps, per_device_train_batch_size=self.opts.batch_size, learning_rate=5e-5,
            logging_steps=10_000, save_strategy="no", report_to=[], disable_tqdm=True, seed=0,
            use_cpu=self.opts.device == "cpu", bf16=self.opts.bf16, dataloader_pin_memory=self.opts.device == "cuda",
        )  # fmt: skip
        if config in ("student", "teacher_fwd"):
            return TrainingArguments(**common)
        extra = {"teacher_cache_dir": self.cache_dir} if config == "distill_cached" else {}
        return DistillationArguments(**common, layer_map=STUDENT_LAYERS, **DISTILL[config], **extra)

    def trainer(self, config: str, out: str, steps: int, callbacks=()):
        from transformers import Trainer

        from hf_distill import DistillationTrainer

        student = copy.deepcopy(self.student0)
        kwargs = dict(args=self.args(config, out, steps), train_dataset=self.train, data_collator=self.collator,
                      callbacks=list(callbacks))  # fmt: skip
        if config in ("student", "teacher_fwd"):
            return Trainer(model=student, **kwargs)
        return DistillationTrainer(model=student, teacher_model=self.teacher, **kwargs)

    def run(self, config: str, out: str) -> list[float]:
        """Seconds of each timed step (after warm-up) of one run of `config`."""
        steps = self.opts.warmup + self.opts.steps
        if config == "teacher_fwd":
            return self.teacher_forward(out, steps)
        timer = step_timer()
        self.trainer(config, out, steps, callbacks=[timer]).train()
        ends = timer.ends[self.opts.warmup - 1 :]  # step i lasts from the end of step i-1 to its own end
        return [b - a for a, b in zip(ends, ends[1:])]

    def teacher_forward(self, out: str, steps: int) -> list[float]:
        """The teacher's forward alone, on the batches the trainers see (same sampler, same seed)."""
        trainer = self.trainer("teacher_fwd", out, steps)
        loader = iter(trainer.get_train_dataloader())
        times = []
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.opts.bf16)
        with torch.no_grad(), autocast:
            for step in range(steps):
                batch = trainer._prepare_inputs(next(loader))
                batch.pop("labels", None)
                if self.device.type == "cuda":
                    torch.cuda.synchronize()
                started = time.perf_counter()
                self.teacher(**batch)
                if self.device.type == "cuda":
                    torch.cuda.synchronize()
                if step >= self.opts.warmup:
                    times.append(time.perf_counter() - started)
        return times

    def first_batch_checksum(self, config: str, out: str) -> int:
        trainer = self.trainer(config, out, 1)
        batch = next(iter(trainer.get_train_dataloader()))
        return int(batch["input_ids"].long().sum()) * 1_000_003 + int(batch["input_ids"].shape[1])


def measure_memory(opts: argparse.Namespace, config: str) -> dict:
    """Run `config` for a few steps in a fresh process and return its peak memory."""
    command = [sys.executable, __file__, "--memory-child", config, "--rows", str(opts.rows), "--device", opts.device,
               "--batch-size", str(opts.batch_size), "--max-length", str(opts.max_length), "--steps", "4",
               "--warmup", "1"] + (["--bf16"] if opts.bf16 else [])  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    lines = [line for line in result.stdout.splitlines() if line.startswith("MEMORY ")]
    if result.returncode != 0 or not lines:
        raise RuntimeError(f"memory run of {config} failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}")
    return json.loads(lines[-1][len("MEMORY ") :])


def memory_child(opts: argparse.Namespace) -> None:
    config = opts.memory_child
    with tempfile.TemporaryDirectory() as tmp:
        bench, out = Bench(opts, str(Path(tmp) / "cache")), str(Path(tmp) / "out")
        if config == "distill_cached":
            bench.trainer(config, out, 1).get_train_dataloader()  # build the cache first: it is not a training cost
        steps = opts.warmup + opts.steps
        if config == "teacher_fwd":
            peak, _ = _common.tensor_peak_mb(lambda: bench.teacher_forward(out, steps), opts.device)
        else:
            trainer = bench.trainer(config, out, steps)  # models already built and placed: only training counts
            peak, _ = _common.tensor_peak_mb(trainer.train, opts.device)
        report = {"tensor_peak_mb": peak, "process_peak_rss_mb": _common.peak_rss_mb()}
        print("MEMORY " + json.dumps(report))


def main(argv: list[str] | None = None) -> None:
    opts = parse_args(argv)
    _common.require_sst2()
    if opts.memory_child:
        return memory_child(opts)
    info = _common.machine_info()
    _common.print_machine(info)
    configs = opts.configs
    with tempfile.TemporaryDirectory() as tmp:
        bench = Bench(opts, str(Path(tmp) / "cache"))
        out = str(Path(tmp) / "out")
        print(f"student built by {_common.student_from_layers.source}", flush=True)
        cache_seconds = None
        if "distill_cached" in configs:
            started = time.perf_counter()
            bench.trainer("distill_cached", out, 1).get_train_dataloader()
            cache_seconds = time.perf_counter() - started
            print(f"teacher-logit cache for {len(bench.train)} rows built in {cache_seconds:.1f} s", flush=True)
        checksums = {c: bench.first_batch_checksum(c, out) for c in configs}
        assert len(set(checksums.values())) == 1, f"configurations see different first batches: {checksums}"

        times: dict[str, list[float]] = {c: [] for c in configs}
        per_round: list[dict[str, float]] = []
        shuffler = random.Random(0)
        for r in range(opts.rounds):
            order = shuffler.sample(configs, len(configs))  # a new order each round: no config always follows another
            this_round = {}
            for config in order:
                gc.collect()  # the previous run's trainer and optimizer state
                this_round[config] = bench.run(config, out)
                times[config] += this_round[config]
            per_round.append({c: statistics.median(t) for c, t in this_round.items()})
            medians = {c: statistics.median(t) for c, t in times.items() if t}
            progress = ", ".join(f"{c} {m:.3f}s" for c, m in medians.items())
            print(f"round {r + 1}/{opts.rounds}: {progress}", flush=True)

    memory = {}
    if not opts.no_memory:
        for config in configs:
            memory[config] = measure_memory(opts, config)
            print(f"memory {config}: {memory[config]}", flush=True)

    rows, summary = summarise(opts, times, memory, per_round)
    title = f"{opts.device}{' bf16' if opts.bf16 else ''}: batch {opts.batch_size}, SST-2 rows of up to "
    print(f"\n{title}{opts.max_length} tokens, {opts.rounds} rounds x {opts.steps} timed steps per configuration")
    _common.print_table(rows, ["config", "s_per_step", "samples_per_s", "vs_floor", "peak_mb", "process_rss_mb"])
    kind = "CUDA max_memory_allocated" if opts.device == "cuda" else "tensor memory from profiler events"
    print(f"peak_mb: peak {kind} above the models already in place, one fresh process per configuration (5 steps)")
    for name, value in summary.items():
        print(f"{name}: {value:.3f}" if isinstance(value, float) else f"{name}: {value}")
    _common.write_results(
        f"throughput_{opts.device}{'_bf16' if opts.bf16 else ''}{'_quick' if opts.quick else ''}",
        {"machine": info, "options": vars(opts), "student_source": _common.student_from_layers.source,
         "step_seconds": times, "per_round_medians": per_round, "memory": memory, "rows": rows, "summary": summary,
         "cache_build_seconds": cache_seconds, "cache_build_rows": opts.rows},
    )  # fmt: skip


def summarise(opts, times: dict[str, list[float]], memory: dict, per_round: list[dict]) -> tuple[list[dict], dict]:
    """Pooled medians per configuration, ratios of those, and each ratio's range over the rounds (the noise)."""
    med = {c: statistics.median(t) for c, t in times.items() if t}
    floor = med["student"] + med["teacher_fwd"] if {"student", "teacher_fwd"} <= med.keys() else None
    rows = []
    for config, seconds in med.items():
        mem = memory.get(config, {})
        rows.append({
            "config": config, "s_per_step": seconds, "samples_per_s": opts.batch_size / seconds,
            "vs_floor": seconds / floor if floor and config.startswith("distill") else None,
            "peak_mb": mem.get("tensor_peak_mb"), "process_rss_mb": mem.get("process_peak_rss_mb"),
        })  # fmt: skip
    summary: dict[str, object] = {}

    def ratio(name: str, top: str, bottom: list[str]) -> None:
        if top in med and all(b in med for b in bottom):
            summary[name] = med[top] / sum(med[b] for b in bottom)
            rounds = [r[top] / sum(r[b] for b in bottom) for r in per_round]
            summary[f"{name}, range over rounds"] = f"{min(rounds):.3f} .. {max(rounds):.3f}"

    if floor:
        summary["floor (a)+(b) s/step"] = floor
    ratio("(c) / ((a)+(b))", "distill_g0", ["student", "teacher_fwd"])
    ratio("(d) mse / ((a)+(b))", "distill_mse", ["student", "teacher_fwd"])
    ratio("(d) kl / ((a)+(b))", "distill_kl", ["student", "teacher_fwd"])
    ratio("(e) cached / (a) student", "distill_cached", ["student"])
    return rows, summary


if __name__ == "__main__":
    main()
