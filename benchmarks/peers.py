"""Our trainer against its peers on the same batches: TRL's GKD trainer (causal LM) and a hand-written floor.

Causal LM (the issue's set-up): a randomly initialised GPT-2 (4 layers -> 2 layers, 128 wide, vocabulary 50,257),
sequences of 128 tokens, batch 8, float32, CPU, forward KL at T = 1 per token, alpha = 0, AdamW:

    floor        hand loop: student forward, teacher forward (no_grad), autograd KL on the shifted distilled
                 rows (`F.kl_div(log_softmax(s), log_softmax(t), log_target=True)` / tokens), backward, step
    ours         `DistillationTrainer.training_step` with `fuse_lm_head=False` (logits, one-pass loss)
    ours_fused   `DistillationTrainer.training_step`, default `fuse_lm_head` (the heads run inside the loss)
    trl_gkd      TRL's `GKDTrainer.training_step` with lmbda = 0 (no generation), beta = 0 (forward KL)

Masked LM and seq2seq (`--task masked-lm`, `--task seq2seq`): the same sizes, TRL has no trainer for them, so
ours is timed against the floor only. Masked LM: BERT (4 -> 2 layers), 15% of the positions masked and distilled.
Seq2seq: BART (4 + 4 -> 2 + 2 layers), sources and targets of `--seq` tokens, every target token distilled under
teacher forcing; the floor passes `decoder_input_ids` and no `labels`, so neither model computes its own loss.

Every configuration has its own copy of the same initial student and its own AdamW (lr 1e-5) and sees the same
batches. Rounds are interleaved (every configuration runs `--steps` steps per round, in a rotated order), so
load from other processes hits them alike; the ratio to the floor is taken per round and reported as the median
with its range. Peak tensor memory is measured once per configuration on one extra step
(`_common.tensor_peak_mb`, profiler allocation events, above the models in place); the peak RSS above the RSS
before training, sampled over 2 steps in a fresh process per configuration (`_common.rss_rise_mb`; `--no-rss`
skips it), also sees what the profiler does not (buffers inside kernels, the allocator's cached memory).

Peers are benchmark extras, never library dependencies: `pip install --no-deps trl` (see docs/benchmarks.md).
A peer that cannot be imported is reported as skipped, with the reason.

    nice python benchmarks/peers.py                      # about 10 minutes on 2 busy cores
    nice python benchmarks/peers.py --rounds 1 --steps 1 --no-rss # smoke run
    nice python benchmarks/peers.py --task masked-lm     # or seq2seq: ours against the floor
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", choices=list(TASKS), default="causal-lm")
    parser.add_argument("--vocab", type=int, default=50_257)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per configuration and round")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1: see docs/benchmarks.md)")
    configs = ["floor", "ours", "ours_fused", "trl_gkd"]
    parser.add_argument("--no-rss", action="store_true", help="skip the per-configuration RSS processes")
    parser.add_argument("--configs", nargs="+", default=None, choices=configs,
                        help="default: every configuration the task has (trl_gkd: causal LM only)")  # fmt: skip
    parser.add_argument("--output", default=None, help="results file stem (default peers_<task>_cpu)")
    parser.add_argument("--rss-child", choices=configs, help=argparse.SUPPRESS)
    opts = parser.parse_args(argv)
    task_configs = configs if opts.task == "causal-lm" else configs[:3]
    opts.configs = opts.configs or task_configs
    if set(opts.configs) - set(task_configs):
        parser.error(f"--configs {opts.configs}: the {opts.task} task has {task_configs}")
    opts.output = opts.output or f"peers_{opts.task.replace('-', '_')}_cpu"
    return opts


def gpt2(layers: int, opts, seed: int):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=opts.vocab, n_embd=opts.width, n_head=4, n_layer=layers, n_positions=opts.seq,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)  # fmt: skip
    return GPT2LMHeadModel(config)


def bert_mlm(layers: int, opts, seed: int):
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=opts.vocab, hidden_size=opts.width, num_attention_heads=4, num_hidden_layers=layers,
                        intermediate_size=4 * opts.width, max_position_embeddings=opts.seq, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0)  # fmt: skip
    return BertForMaskedLM(config)


def bart(layers: int, opts, seed: int):
    from transformers import BartConfig, BartForConditionalGeneration

    torch.manual_seed(seed)
    config = BartConfig(vocab_size=opts.vocab, d_model=opts.width, encoder_layers=layers, decoder_layers=layers,
                        encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=4 * opts.width,
                        decoder_ffn_dim=4 * opts.width, max_position_embeddings=opts.seq, dropout=0.0,
                        attention_dropout=0.0, activation_dropout=0.0, pad_token_id=0, bos_token_id=1,
                        eos_token_id=2, decoder_start_token_id=2, forced_eos_token_id=None)  # fmt: skip
    return BartForConditionalGeneration(config)


TASKS = {"causal-lm": gpt2, "masked-lm": bert_mlm, "seq2seq": bart}  # the models, 4 -> 2 layers
MASK_ID = 4  # the masked-LM batches' [MASK]: any id works for random weights


def tiny_tokenizer():
    """A word-level tokenizer built in code: TRL's trainers want one (they would otherwise fetch it from the Hub)."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = {"[PAD]": 0, "[UNK]": 1}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]")


def batches(opts, count: int) -> list[dict[str, torch.Tensor]]:
    """Causal LM: labels = inputs. Masked LM: 15% of the positions masked, labels there only. Seq2seq: labels and
    the decoder inputs (the labels shifted right behind the start token), so that no model shifts them itself."""
    generator = torch.Generator().manual_seed(0)
    out = []
    for _ in range(count):
        ids = torch.randint(5, opts.vocab, (opts.batch, opts.seq), generator=generator)
        batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}
        if opts.task == "masked-lm":
            masked = torch.rand(ids.shape, generator=generator) < 0.15
            batch["input_ids"] = ids.masked_fill(masked, MASK_ID)
            batch["labels"] = ids.masked_fill(~masked, -100)
        elif opts.task == "seq2seq":
            batch["labels"] = torch.randint(5, opts.vocab, (opts.batch, opts.seq), generator=generator)
            batch["decoder_input_ids"] = torch.cat([torch.full((opts.batch, 1), 2), batch["labels"][:, :-1]], dim=1)
        out.append(batch)
    return out


class Floor:
    """Student step + teacher forward + autograd forward KL on the distilled rows: the cost to beat."""

    def __init__(self, teacher, student, shift: bool):
        self.teacher, self.student, self.shift = teacher.eval(), student.train(), shift
        self.optimizer = torch.optim.AdamW(student.parameters(), lr=1e-5)

    def step(self, batch):
        inputs = {k: v for k, v in batch.items() if k != "labels"}  # no model computes its own loss
        student_logits = self.student(**inputs).logits
        with torch.no_grad():
            teacher_logits = self.teacher(**inputs).logits
        labels = batch["labels"]
        if self.shift:  # causal LM: position i predicts token i + 1
            student_logits, teacher_logits, labels = student_logits[:, :-1], teacher_logits[:, :-1], labels[:, 1:]
        mask = labels != -100
        log_p, log_q = F.log_softmax(student_logits[mask], -1), F.log_softmax(teacher_logits[mask], -1)
        loss = F.kl_div(log_p, log_q, log_target=True, reduction="sum") / mask.sum()
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad()
        return loss.item()


class TrainerStep:
    """One `Trainer.training_step` (forward, loss, backward) plus the optimizer step, on a given batch."""

    def __init__(self, trainer):
        self.trainer = trainer
        trainer.create_optimizer()
        trainer.current_gradient_accumulation_steps = 1  # set by Trainer.train, which we do not run
        self.student = trainer.model

    def step(self, batch):
        loss = self.trainer.training_step(self.trainer.model, dict(batch))
        self.trainer.optimizer.step()
        self.trainer.optimizer.zero_grad()
        return loss.item()


def build(name: str, teacher, student, opts, workdir: str):
    common = dict(output_dir=workdir, use_cpu=True, report_to=[], learning_rate=1e-5, save_strategy="no",
                  disable_tqdm=True, optim="adamw_torch")  # fmt: skip
    if name == "floor":
        return Floor(teacher, student, shift=opts.task == "causal-lm")
    if name in ("ours", "ours_fused"):
        from hf_distill import DistillationArguments, DistillationTrainer

        args = DistillationArguments(**common, temperature=1.0, alpha=0.0, beta=1.0, gamma=0.0,
                                     fuse_lm_head=None if name == "ours_fused" else False)  # fmt: skip
        return TrainerStep(DistillationTrainer(model=student, teacher_model=teacher, args=args))
    if name == "trl_gkd":
        from datasets import Dataset
        from trl.experimental.gkd import GKDConfig, GKDTrainer

        args = GKDConfig(**common, lmbda=0.0, beta=0.0, temperature=1.0, max_length=opts.seq)
        data = Dataset.from_dict({"input_ids": [[1, 2]]})  # never read: we hand the batches to training_step
        trainer = GKDTrainer(model=student, teacher_model=teacher, args=args, train_dataset=data,
                             processing_class=tiny_tokenizer(), data_collator=lambda rows: rows)  # fmt: skip
        return TrainerStep(trainer)
    raise ValueError(f"unknown configuration {name!r}")


def first_steps(runners: dict, batch) -> tuple[dict[str, float], dict[str, float]]:
    """One untimed step of each runner (its warm-up) under the profiler: peak tensor MiB above what was live, and
    the loss of that step (the same initial student and batch for all: equal objectives give equal losses)."""
    peaks, losses = {}, {}
    for name, runner in runners.items():
        peaks[name], losses[name] = _common.tensor_peak_mb(functools.partial(runner.step, batch))
    return peaks, losses


def run_rounds(runners: dict, data: list, rounds: int, steps: int) -> dict[str, list[float]]:
    """Median seconds per step of every runner in each round; rounds interleave the runners in a rotated order.

    Round `r` gives every runner the same batches `data[r * steps : (r + 1) * steps]`.
    """
    names = list(runners)
    times = {name: [] for name in names}
    for round_index in range(rounds):
        order = names[round_index % len(names) :] + names[: round_index % len(names)]
        for name in order:
            seconds = []
            for batch in data[round_index * steps : (round_index + 1) * steps]:
                started = time.perf_counter()
                runners[name].step(batch)
                seconds.append(time.perf_counter() - started)
            times[name].append(statistics.median(seconds))
        print(f"round {round_index + 1}: " + ", ".join(f"{n} {times[n][-1]:.3f}s" for n in names), flush=True)
    return times


def summarise(times: dict[str, list[float]], peaks: dict[str, float], bases: tuple[str, ...]) -> list[dict]:
    """Per runner: median s/step, peak tensor MiB, and against each base the median per-round ratio and its range."""
    rows = []
    for name, seconds in times.items():
        row = {"config": name, "s_per_step": round(statistics.median(seconds), 3),
               "peak_tensor_MiB": round(peaks[name], 1)}  # fmt: skip
        for base in bases:
            if base in times and base != name:
                ratios = [a / b for a, b in zip(seconds, times[base])]
                row[f"vs_{base}"] = round(statistics.median(ratios), 3)
                row[f"vs_{base}_range"] = f"{min(ratios):.2f}..{max(ratios):.2f}"
        rows.append(row)
    return rows


def rss_child(runner, data: list) -> None:
    """Run `runner` on `data` in this fresh process and print its RSS rise (as JSON, for `rss_in_fresh_process`)."""
    rise, _ = _common.rss_rise_mb(lambda: [runner.step(batch) for batch in data])
    print("RSS " + json.dumps({"rss_rise_MiB": rise, "process_peak_rss_MiB": _common.peak_rss_mb()}))


def rss_in_fresh_process(script: str, argv: list[str]) -> dict:
    """Run `script --rss-child NAME ...` (see `rss_child`) and return what it printed."""
    result = subprocess.run([sys.executable, script, *argv], capture_output=True, text=True, check=False)
    lines = [line for line in result.stdout.splitlines() if line.startswith("RSS ")]
    if result.returncode != 0 or not lines:
        raise RuntimeError(f"RSS run {argv} failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}")
    return json.loads(lines[-1][len("RSS ") :])


def add_rss(rows: list[dict], script: str, child_argv) -> None:
    """Add each configuration's RSS rise, measured in a fresh process (`child_argv(name)`), to its row."""
    for row in rows:
        rss = rss_in_fresh_process(script, child_argv(row["config"]))
        row["rss_rise_MiB"] = round(rss["rss_rise_MiB"], 1)
        print(f"rss {row['config']}: {rss}", flush=True)


def build_all(opts, workdir: str, make_model=None, build_one=None) -> tuple[dict, dict]:
    """Each configuration's step runner from a 4-layer teacher and a 2-layer student (`make_model`, GPT-2 here), and
    the configurations skipped because a peer is not installed (`build_one` raised ImportError)."""
    make_model, build_one = make_model or TASKS[opts.task], build_one or build
    teacher, initial = make_model(4, opts, seed=1), make_model(2, opts, seed=2)
    runners, skipped = {}, {}
    for name in opts.configs:
        try:
            runners[name] = build_one(name, copy.deepcopy(teacher), copy.deepcopy(initial), opts, workdir)
        except ImportError as error:
            skipped[name] = f"{type(error).__name__}: {error}"
            print(f"skipped {name}: {skipped[name]}")
    return runners, skipped


def main(argv: list[str] | None = None) -> None:
    opts = parse_args(argv)
    torch.set_num_threads(opts.threads)
    workdir = tempfile.mkdtemp(prefix="peers-")
    if opts.rss_child:
        opts.configs = [opts.rss_child]
        return rss_child(build_all(opts, workdir)[0][opts.rss_child], batches(opts, 2))
    info = _common.machine_info()
    _common.print_machine(info)
    runners, skipped = build_all(opts, workdir)
    data = batches(opts, opts.rounds * opts.steps + 1)
    peaks, losses = first_steps(runners, data[-1])
    times = run_rounds(runners, data, opts.rounds, opts.steps)
    rows = summarise(times, peaks, bases=("floor", "trl_gkd"))
    if not opts.no_rss:
        sizes = ["--task", opts.task, "--vocab", str(opts.vocab), "--width", str(opts.width), "--seq", str(opts.seq),
                 "--batch", str(opts.batch), "--threads", str(opts.threads)]  # fmt: skip
        add_rss(rows, __file__, lambda name: ["--rss-child", name, *sizes])
    print(f"\n{opts.task}: {TASKS[opts.task].__name__} 4 -> 2 layers, width {opts.width}, V={opts.vocab}, "
          f"seq {opts.seq}, batch {opts.batch},"
          f" {opts.threads} thread(s); {opts.rounds} rounds x {opts.steps} steps")  # fmt: skip
    _common.print_table(rows, list(dict.fromkeys(k for r in rows for k in r)))
    print("loss of the first (untimed) step: " + ", ".join(f"{n} {v:.5f}" for n, v in losses.items()))
    _common.write_results(opts.output, {"machine": info, "options": vars(opts), "rows": rows, "skipped": skipped,
                                        "round_seconds": times, "first_step_loss": losses})  # fmt: skip


if __name__ == "__main__":
    main()
