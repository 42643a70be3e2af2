"""Our trainer against torchdistill and TextBrewer on sequence classification, on the same batches.

A randomly initialised BERT (4 -> 2 layers, 128 wide, 4 heads, vocabulary 30,522, no dropout, 2 labels),
batches of 32 sequences of 64 tokens without padding, float32, CPU, AdamW (lr 1e-5). Every configuration
minimises the same objective, set up as each library's user would:

    L = alpha * CE(s, y) + beta * T^2 * KL(softmax(t/T) || softmax(s/T))    [+ gamma * L_attn]

with `L_attn` the mean squared error between the head-averaged attention maps of student layers 0, 1 and
teacher layers 1, 3, averaged over the two pairs (our `attention_loss="mse"`). Configurations, each in two
variants, logits only and `_attn` (with the attention term):

    floor          hand loop: student forward, teacher forward (no_grad), autograd loss, backward, step; `_attn`
                   runs both models with eager attention and `output_attentions=True`
    ours           `DistillationTrainer.training_step` + optimizer step (sdpa kept; the maps of the mapped
                   layers are recomputed from the recorded Q/K)
    textbrewer     `GeneralDistiller.train_on_batch` + backward + step, as its `train` loop does: `kd_loss_type="ce"`
                   (soft cross-entropy without T^2, so `kd_loss_weight = beta * T^2`), the student's own loss
                   weighted by `hard_label_weight = alpha`; `_attn` adds `attention_mse_sum` matches (maps summed
                   over heads: weight `gamma / (heads^2 * pairs)`) on `output_attentions` (eager attention)
    torchdistill   `DistillationBox.forward_process` + `post_forward_process` (backward, step), a
                   `WeightedSumLoss` of `KDLoss` (alpha, beta, T; labels passed as targets) read from forward hooks
                   on the classifiers; `_attn` adds a registered head-mean MSE loss read from hooks on the mapped
                   layers' `attention.self` (eager attention: sdpa returns no weights)

Why these settings: without dropout and padding the four objectives are equal (TextBrewer's up to the teacher's
entropy, a constant), so the first step's losses can be compared (printed) and the timings compare the same
work; with padding, TextBrewer pools its attention MSE over the batch, we average per example.

Rounds interleave the configurations (rotated order, the same batches for all); each configuration is compared
with the floor and the peers of its own variant (`vs_textbrewer` on the `ours_attn` row is against
`textbrewer_attn`), each ratio the median of the per-round ratios with their range. Memory: the peak tensor
memory of one untimed step (profiler allocation events, above the models in place), and the peak RSS above the
RSS before training, sampled over 3 steps in a fresh process per configuration (`--no-rss` skips it).

torchdistill imports torchvision; see docs/benchmarks.md for a CPU set-up (`PYTHONPATH=../peer-extras`).

Peers are benchmark extras, never library dependencies (docs/benchmarks.md has the install lines); a peer that
cannot be imported is reported as skipped, with the reason.

    nice python benchmarks/peers_seqcls.py                       # about 10 minutes on 2 busy cores
    nice python benchmarks/peers_seqcls.py --rounds 1 --steps 1 --no-rss   # smoke run
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402
import peers  # noqa: E402

CONFIGS = ["floor", "ours", "textbrewer", "torchdistill"]
LAYER_MAP = [1, 3]  # teacher layer for each student layer


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vocab", type=int, default=30_522)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--temperature", type=float, default=2.0)
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--beta", type=float, default=0.5)
    parser.add_argument("--gamma", type=float, default=0.4, help="weight of the attention term in the _attn configs")
    parser.add_argument("--init-range", type=float, default=0.02, help="std of the random weights (BERT's 0.02)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=4, help="timed steps per configuration and round")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1: see docs/benchmarks.md)")
    all_configs = CONFIGS + [f"{c}_attn" for c in CONFIGS]
    parser.add_argument("--configs", nargs="+", default=all_configs, choices=all_configs)
    parser.add_argument("--no-rss", action="store_true", help="skip the per-configuration RSS processes")
    parser.add_argument("--output", default="peers_seqcls_cpu")
    parser.add_argument("--rss-child", choices=all_configs, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def bert(layers: int, opts, seed: int):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=opts.vocab, hidden_size=opts.width, num_hidden_layers=layers,
                        num_attention_heads=opts.heads, intermediate_size=4 * opts.width,
                        max_position_embeddings=opts.seq, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                        initializer_range=opts.init_range, num_labels=2)  # fmt: skip
    return BertForSequenceClassification(config)


def batches(opts, count: int) -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    out = []
    for _ in range(count):
        ids = torch.randint(1, opts.vocab, (opts.batch, opts.seq), generator=generator)  # 0 is the padding id
        labels = torch.randint(0, 2, (opts.batch,), generator=generator)
        out.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels})
    return out


def head_mean_mse(student_maps, teacher_maps) -> torch.Tensor:
    """Mean over the mapped pairs of the MSE between head-averaged maps (no padding: a plain mean over entries)."""
    pairs = [F.mse_loss(s.mean(dim=1), t.mean(dim=1)) for s, t in zip(student_maps, teacher_maps)]
    return sum(pairs) / len(pairs)


def eager(model):
    model.set_attn_implementation("eager")  # output_attentions needs the weights, which sdpa does not return
    return model


class Floor:
    """The hand-written step: the objective of the module docstring through autograd."""

    def __init__(self, teacher, student, opts, attention: bool):
        self.opts, self.attention = opts, attention
        if attention:
            teacher, student = eager(teacher), eager(student)
        self.teacher, self.student = teacher.eval(), student.train()
        self.optimizer = torch.optim.AdamW(student.parameters(), lr=1e-5)

    def step(self, batch):
        opts = self.opts
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        out_s = self.student(**inputs, output_attentions=self.attention)
        with torch.no_grad():
            out_t = self.teacher(**inputs, output_attentions=self.attention)
        log_p = F.log_softmax(out_s.logits / opts.temperature, dim=-1)
        log_q = F.log_softmax(out_t.logits / opts.temperature, dim=-1)
        loss = opts.alpha * F.cross_entropy(out_s.logits, batch["labels"]) + opts.beta * opts.temperature**2 * (
            F.kl_div(log_p, log_q, log_target=True, reduction="batchmean")
        )
        if self.attention:
            loss = loss + opts.gamma * head_mean_mse(out_s.attentions, [out_t.attentions[t] for t in LAYER_MAP])
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad()
        return loss.item()


class TextBrewerStep:
    """TextBrewer's `GeneralDistiller`: `train_on_batch`, then what its `train` loop does with the loss."""

    def __init__(self, teacher, student, opts, attention: bool, workdir: str):
        from textbrewer import DistillationConfig, GeneralDistiller, TrainingConfig

        if attention:
            teacher, student = eager(teacher), eager(student)
        matches = [
            {"layer_T": t, "layer_S": s, "feature": "attention", "loss": "attention_mse_sum",
             "weight": opts.gamma / (opts.heads**2 * len(LAYER_MAP))}
            for s, t in enumerate(LAYER_MAP)
        ] if attention else []  # fmt: skip
        distill_config = DistillationConfig(temperature=opts.temperature, kd_loss_type="ce",
                                            kd_loss_weight=opts.beta * opts.temperature**2,
                                            hard_label_weight=opts.alpha, intermediate_matches=matches)  # fmt: skip
        train_config = TrainingConfig(device="cpu", output_dir=workdir, log_dir=None)

        def adaptor(batch, outputs):
            adapted = {"logits": (outputs.logits,), "losses": (outputs.loss,), "inputs_mask": batch["attention_mask"]}
            if attention:
                adapted["attention"] = outputs.attentions
            return adapted

        self.distiller = GeneralDistiller(train_config, distill_config, teacher, student, adaptor, adaptor)
        self.args = {"output_attentions": True} if attention else {}
        self.teacher, self.student = teacher.eval(), student.train()
        self.optimizer = torch.optim.AdamW(student.parameters(), lr=1e-5)

    def step(self, batch):
        loss, _ = self.distiller.train_on_batch(dict(batch), self.args)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad()
        return loss.item()


def _register_torchdistill_attention_loss():
    """A head-mean attention MSE as a torchdistill mid-level loss (how its users add a loss), registered once."""
    from torchdistill.losses.registry import MIDDLE_LEVEL_LOSS_DICT, register_mid_level_loss

    if "HeadMeanAttentionMSELoss" in MIDDLE_LEVEL_LOSS_DICT:
        return

    @register_mid_level_loss
    class HeadMeanAttentionMSELoss(torch.nn.Module):
        def __init__(self, student_paths, teacher_paths, **kwargs):
            super().__init__()
            self.student_paths, self.teacher_paths = student_paths, teacher_paths

        def forward(self, student_io_dict, teacher_io_dict, targets=None, *args, **kwargs):
            student_maps = [student_io_dict[p]["output"][1] for p in self.student_paths]  # (context, weights)
            teacher_maps = [teacher_io_dict[p]["output"][1] for p in self.teacher_paths]
            return head_mean_mse(student_maps, teacher_maps)


class TorchdistillStep:
    """torchdistill's `DistillationBox`: `forward_process` (both forwards and the loss), `post_forward_process`."""

    def __init__(self, teacher, student, opts, attention: bool):
        from torchdistill.core.distillation import DistillationBox

        if attention:
            teacher, student = eager(teacher), eager(student)
            _register_torchdistill_attention_loss()
        student_paths = [f"bert.encoder.layer.{s}.attention.self" for s in range(len(LAYER_MAP))]
        teacher_paths = [f"bert.encoder.layer.{t}.attention.self" for t in LAYER_MAP]
        sub_terms = {"kd": {"weight": 1.0, "criterion": {"key": "KDLoss", "kwargs": {
            "student_module_path": "classifier", "student_module_io": "output", "teacher_module_path": "classifier",
            "teacher_module_io": "output", "temperature": opts.temperature, "alpha": opts.alpha, "beta": opts.beta,
        }}}}  # fmt: skip
        if attention:
            paths = {"student_paths": student_paths, "teacher_paths": teacher_paths}
            sub_terms["attention"] = {"weight": opts.gamma,
                                      "criterion": {"key": "HeadMeanAttentionMSELoss", "kwargs": paths}}  # fmt: skip

        def model_config(paths, trained: bool):
            hooks = ["classifier"] + (paths if attention else [])
            return {"forward_proc": "forward_batch_only_as_kwargs", "forward_hook": {"output": hooks},
                    "requires_grad": trained}  # fmt: skip

        train_config = {
            "num_epochs": 1,
            "teacher": model_config(teacher_paths, False),
            "student": model_config(student_paths, True),
            "optimizer": {"key": "AdamW", "kwargs": {"lr": 1e-5}},
            "criterion": {"key": "WeightedSumLoss", "kwargs": {"sub_terms": sub_terms}},
        }
        self.box = DistillationBox(teacher, student, {}, train_config, torch.device("cpu"), None, False, 1)
        self.box.teacher_model.eval()
        self.box.student_model.train()

    def step(self, batch):
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        loss = self.box.forward_process(inputs, targets=batch["labels"])
        value = loss.item()
        self.box.post_forward_process(loss)
        return value


def build(name: str, teacher, student, opts, workdir: str):
    base, attention = name.removesuffix("_attn"), name.endswith("_attn")
    gamma = opts.gamma if attention else 0.0
    if base == "floor":
        return Floor(teacher, student, opts, attention)
    if base == "ours":
        from hf_distill import DistillationArguments, DistillationTrainer

        args = DistillationArguments(output_dir=workdir, use_cpu=True, report_to=[], learning_rate=1e-5,
                                     save_strategy="no", disable_tqdm=True, optim="adamw_torch",
                                     temperature=opts.temperature, alpha=opts.alpha, beta=opts.beta, gamma=gamma,
                                     attention_loss="mse", layer_map=LAYER_MAP)  # fmt: skip
        return peers.TrainerStep(DistillationTrainer(model=student, teacher_model=teacher, args=args))
    if base == "textbrewer":
        return TextBrewerStep(teacher, student, opts, attention, workdir)
    if base == "torchdistill":
        return TorchdistillStep(teacher, student, opts, attention)
    raise ValueError(f"unknown configuration {name!r}")


def build_all(opts, workdir: str) -> tuple[dict, dict]:
    return peers.build_all(opts, workdir, bert, build)


def textbrewer_offset(opts, batch) -> float:
    """What TextBrewer's soft cross-entropy adds to the KL: `beta * T^2 * H(softmax(t / T))`, batch mean."""
    teacher = bert(4, opts, seed=1).eval()
    with torch.no_grad():
        logits = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    log_q = F.log_softmax(logits / opts.temperature, dim=-1)
    return float(opts.beta * opts.temperature**2 * -(log_q.exp() * log_q).sum(-1).mean())


def main(argv: list[str] | None = None) -> None:
    opts = parse_args(argv)
    torch.set_num_threads(opts.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    workdir = tempfile.mkdtemp(prefix="peers-seqcls-")
    if opts.rss_child:
        opts.configs = [opts.rss_child]
        return peers.rss_child(build_all(opts, workdir)[0][opts.rss_child], batches(opts, 3))
    info = _common.machine_info()
    _common.print_machine(info)
    runners, skipped = build_all(opts, workdir)
    data = batches(opts, opts.rounds * opts.steps + 1)
    peaks, losses = peers.first_steps(runners, data[-1])
    times = peers.run_rounds(runners, data, opts.rounds, opts.steps)
    rows = []
    for variant in ("", "_attn"):  # each configuration against the floor and the peers of its own variant
        names = [name for name in times if name.endswith("_attn") == bool(variant)]
        rows += peers.summarise({n: times[n] for n in names}, peaks, bases=tuple(c + variant for c in CONFIGS))
    for row in rows:
        for key in [k for k in row if k.startswith("vs_") and "_attn" in k]:
            row[key.replace("_attn", "")] = row.pop(key)
        for key in ("vs_ours", "vs_ours_range"):  # ours against the others, not the others against ours
            row.pop(key, None)
    if not opts.no_rss:
        sizes = []
        for option in ("vocab", "width", "heads", "seq", "batch", "temperature", "alpha", "beta", "gamma",
                       "init_range", "threads"):  # fmt: skip
            sizes += [f"--{option.replace('_', '-')}", str(getattr(opts, option))]
        peers.add_rss(rows, __file__, lambda name: ["--rss-child", name, *sizes])
    print(f"\nsequence classification: BERT 4 -> 2 layers, width {opts.width}, {opts.heads} heads, V={opts.vocab}, "
          f"seq {opts.seq}, batch {opts.batch}, {opts.threads} thread(s); T={opts.temperature}, alpha={opts.alpha}, "
          f"beta={opts.beta}, gamma={opts.gamma} (_attn); {opts.rounds} rounds x {opts.steps} steps")  # fmt: skip
    _common.print_table(rows, list(dict.fromkeys(k for r in rows for k in r)))
    print("loss of the first (untimed) step: " + ", ".join(f"{n} {v:.7f}" for n, v in losses.items()))
    offset = textbrewer_offset(opts, data[-1])
    print(f"TextBrewer's soft cross-entropy adds beta * T^2 * (teacher entropy) = {offset:.5f} to its loss")
    _common.write_results(opts.output, {"machine": info, "options": vars(opts), "rows": rows, "skipped": skipped,
                                        "round_seconds": times, "first_step_loss": losses,
                                        "textbrewer_loss_offset": offset})  # fmt: skip


if __name__ == "__main__":
    main()
