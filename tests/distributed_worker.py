"""Distillation runs under a launcher, for `tests/test_distributed.py`: one run per named setting.

    torchrun --standalone --nproc_per_node 2 tests/distributed_worker.py OUT full attention_only

Each rank trains the same tiny student (built in code, fixed seed, dropout off) with plain SGD, so that any error in
how the loss is scaled across processes shows in the weights, and writes what it saw to `OUT/<setting>-rank<r>.json`;
rank 0 also saves the trained student to `OUT/<setting>-student.pt`. The test calls `train_once` in its own process
for the 1-process reference, with the same global batch. The repository root must be on PYTHONPATH.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
from accelerate import PartialState
from conftest import pad_collator, random_rows, tiny_bert
from datasets import Dataset

import hf_distill.trainer as trainer_module
from hf_distill import DistillationArguments, DistillationTrainer

GLOBAL_BATCH = 8
NO_DROPOUT = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "distributed"


def _deepspeed(stage: int) -> dict:
    """The shipped example DeepSpeed config, allowed to wrap the plain SGD these runs use."""
    config = json.loads((EXAMPLES / f"deepspeed_zero{stage}.json").read_text())
    return {**config, "zero_allow_untested_optimizer": True}


# name -> arguments of the run. Every run sees GLOBAL_BATCH examples per optimizer step.
SETTINGS = {
    # all three terms, gradient accumulation, a checkpoint, and an evaluation set that does not split evenly.
    "full": dict(alpha=0.3, beta=0.6, gamma=2.0, temperature=2.0, gradient_accumulation_steps=2, max_steps=2,
                 save_strategy="steps", save_steps=2, eval_strategy="steps", eval_steps=2),
    # attention term only, so the logits are not in the loss (PITFALLS #7). find_unused_parameters=False makes DDP
    # raise unless every student parameter gets a gradient at every step.
    "attention_only": dict(alpha=0.0, beta=0.0, gamma=2.0, gradient_accumulation_steps=1, max_steps=2,
                           ddp_find_unused_parameters=False),
    # DeepSpeed: the teacher runs as a ZeRO-0 replica (zero2) or stays partitioned (zero3, loaded from a path
    # under zero.Init, the case that crashes when the teacher does not go through DeepSpeed).
    "zero2": dict(alpha=0.3, beta=0.6, gamma=2.0, gradient_accumulation_steps=2, max_steps=2, deepspeed=_deepspeed(2)),
    "zero3": dict(alpha=0.3, beta=0.6, gamma=2.0, gradient_accumulation_steps=2, max_steps=2, deepspeed=_deepspeed(3),
                  teacher_from_path=True),
    # a student narrower than the teacher with the MSE hidden-state term: TinyBERT's learned projection, which lives
    # outside the DDP-wrapped student, so the trainer averages its gradients itself (projection.py).
    "projection": dict(alpha=0.3, beta=0.6, gamma=0.0, hidden_weight=2.0, gradient_accumulation_steps=2, max_steps=2,
                       student_hidden=16),
    # token classification: the loss unit is the labelled token, and the two ranks' micro-batches hold different
    # numbers of them, so only a token count gathered over all processes gives the 1-process update.
    "tokens": dict(alpha=0.3, beta=0.6, gamma=2.0, temperature=2.0, gradient_accumulation_steps=2, max_steps=2,
                   token_classification=True, eval_strategy="steps", eval_steps=2),
    # FSDP2 (needs CUDA): the teacher is sharded with fully_shard like the student.
    "fsdp2": dict(alpha=0.3, beta=0.6, gamma=2.0, gradient_accumulation_steps=2, max_steps=2, fsdp=True,
                  fsdp_config=str(EXAMPLES / "fsdp2.json")),
}  # fmt: skip
ENGINE_ONLY = ("deepspeed", "fsdp", "fsdp_config", "teacher_from_path")


def train_once(name: str, out: Path, world_size: int, engine: bool = True) -> DistillationTrainer:
    """Train the setting `name` with a per-device batch that makes the global batch GLOBAL_BATCH.

    With `engine=False` the DeepSpeed / FSDP settings are dropped: the plain 1-process reference of the same run.
    """
    settings = dict(SETTINGS[name])
    if not engine:
        settings = {k: v for k, v in settings.items() if k not in ENGINE_ONLY}
    teacher_from_path = settings.pop("teacher_from_path", False)
    student_hidden = settings.pop("student_hidden", 32)
    tokens = settings.pop("token_classification", False)
    accumulation = settings["gradient_accumulation_steps"]
    args = DistillationArguments(
        output_dir=str(out / name), per_device_train_batch_size=GLOBAL_BATCH // (accumulation * world_size),
        per_device_eval_batch_size=2, optim="sgd", learning_rate=0.5, lr_scheduler_type="constant",
        max_grad_norm=0.0, logging_steps=1, report_to=[], use_cpu=not torch.cuda.is_available(), seed=0,
        disable_tqdm=True, save_strategy=settings.pop("save_strategy", "no"), **settings,
    )  # fmt: skip
    if "deepspeed" in settings and not torch.cuda.is_available():
        # On CPU, accelerate leaves DeepSpeed's communicator uninitialised until deepspeed.initialize, so zero.Init
        # in from_pretrained would see a world of 1 process. On GPU accelerate initialises it with the trainer args.
        import deepspeed

        deepspeed.init_distributed(dist_backend="gloo")
    teacher = tiny_bert(4, seed=1, **NO_DROPOUT)
    student = tiny_bert(2, hidden=student_hidden, seed=2, **NO_DROPOUT)
    train, evaluation = random_rows(16, seed=3, max_len=14), random_rows(7, seed=4, max_len=14)
    if tokens:  # the same weights under a token-classification head (no pooler), one label per token, some -100
        teacher, student = (_as_token_classifier(m) for m in (teacher, student))
        train, evaluation = _token_labels(train), _token_labels(evaluation)
    if teacher_from_path:
        state, path = PartialState(), out / f"{name}-teacher"
        if state.is_main_process:
            teacher.save_pretrained(path)
        state.wait_for_everyone()
        teacher = str(path)
    trainer = DistillationTrainer(
        model=student, teacher_model=teacher, args=args, data_collator=pad_collator,
        train_dataset=Dataset.from_dict(train), eval_dataset=Dataset.from_dict(evaluation),
    )  # fmt: skip
    trainer.train()
    trainer.save_model()
    return trainer


def _as_token_classifier(model: torch.nn.Module) -> torch.nn.Module:
    from transformers import BertForTokenClassification

    token_model = BertForTokenClassification(model.config)
    token_model.load_state_dict(model.state_dict(), strict=False)  # all but the pooler
    return token_model


def _token_labels(rows: dict[str, list]) -> dict[str, list]:
    """A label per token from its id (learnable), -100 on the first token and on every third one."""
    ids = rows["input_ids"]
    labels = [[-100 if i == 0 or i % 3 == 2 else token % 2 for i, token in enumerate(row)] for row in ids]
    return {"input_ids": ids, "labels": labels}


def _teacher_report(trainer: DistillationTrainer) -> dict:
    teacher, runner = trainer.teacher_model, trainer._teacher_runner
    params = list(teacher.parameters())
    report = {
        "teacher_class": type(teacher).__name__,
        "teacher_is_ddp": isinstance(teacher, torch.nn.parallel.DistributedDataParallel),
        "runner_class": type(runner).__name__,
        "teacher_device": str(params[0].device),
        "teacher_frozen": not any(p.requires_grad for p in params),
        "teacher_num_parameters": trainer._teacher_num_parameters,
    }
    if hasattr(runner, "zero_optimization_stage"):  # a DeepSpeed engine
        report["teacher_zero_stage"] = runner.zero_optimization_stage()
        report["teacher_managed_by_zero3"] = all(hasattr(p, "ds_id") for p in params)
        # elements this rank holds between forwards: a partitioned parameter keeps only its shard (`ds_tensor`);
        # ones below stage3_param_persistence_threshold stay whole.
        report["teacher_local_numel"] = sum(p.ds_tensor.numel() if p.numel() == 0 else p.numel() for p in params)
    from torch.distributed.tensor import DTensor

    if any(isinstance(p, DTensor) for p in params):  # sharded by FSDP2's fully_shard
        report["teacher_all_dtensor"] = all(isinstance(p, DTensor) for p in params)
        report["teacher_local_numel"] = sum(
            p.to_local().numel() if isinstance(p, DTensor) else p.numel() for p in params
        )
    return report


def fsdp2_teacher_report() -> dict:
    """FSDP2 teacher preparation on CPU (accelerate allows FSDP runs on GPUs only, so no Trainer here).

    The real accelerate plugin and `fsdp2_prepare_model` shard the teacher; a stand-in carries the few accelerator
    attributes they read. Compares logits and recorded attention maps with the unsharded teacher.
    """
    import copy
    from types import SimpleNamespace

    from accelerate.utils import FullyShardedDataParallelPlugin
    from torch.distributed.tensor import DTensor

    from hf_distill.attention import AttentionRecorder
    from hf_distill.engines import _prepare_fsdp

    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("gloo")
    plugin = FullyShardedDataParallelPlugin(fsdp_version=2, auto_wrap_policy="transformer_based_wrap")
    accelerator = SimpleNamespace(
        state=SimpleNamespace(fsdp_plugin=plugin), is_fsdp2=True, device=torch.device("cpu"), mixed_precision="no",
        torch_device_mesh=None, parallelism_config=None, is_main_process=torch.distributed.get_rank() == 0,
    )  # fmt: skip
    teacher = tiny_bert(4, seed=1).eval()
    reference = copy.deepcopy(teacher)
    sharded = _prepare_fsdp(teacher, accelerator)
    dtensors = [p for p in sharded.parameters() if isinstance(p, DTensor)]
    recorders = AttentionRecorder(sharded, [1, 3]), AttentionRecorder(reference, [1, 3])
    batch = pad_collator([{"input_ids": i, "label": y} for i, y in zip(*random_rows(6, seed=7).values())])
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    results = []
    for model, recorder in zip((sharded, reference), recorders):
        with torch.no_grad(), recorder.recording():
            logits = model(**inputs).logits
        results.append((logits, recorder.attention_maps()))
    (logits, maps), (ref_logits, ref_maps) = results
    return {
        "block_class": type(sharded.bert.encoder.layer[0]).__name__,
        "shared_plugin_untouched": plugin.transformer_cls_names_to_wrap is None,
        "sharded_params": len(dtensors),
        "sharded_numel": sum(p.numel() for p in dtensors),  # global sizes
        "sharded_local_numel": sum(p.to_local().numel() for p in dtensors),  # what this rank holds
        "num_parameters": sum(p.numel() for p in reference.parameters()),
        "logits_max_diff": (logits - ref_logits).abs().max().item(),
        "maps_max_diff": max((a - b).abs().max().item() for a, b in zip(maps, ref_maps)),
    }


def main(out: Path, names: list[str]) -> None:
    writes: list[str] = []
    original_write = trainer_module.write_artifacts

    def counting_write(folder, *args, **kwargs):
        writes.append(str(folder))
        return original_write(folder, *args, **kwargs)

    trainer_module.write_artifacts = counting_write
    for name in names:
        if name == "fsdp2_teacher":
            rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else int(os.environ["RANK"])
            (out / f"{name}-rank{rank}.json").write_text(json.dumps(fsdp2_teacher_report()))
            continue
        writes.clear()
        trainer = train_once(name, out, world_size=int(os.environ.get("WORLD_SIZE", 1)))
        report = {
            "world_size": trainer.args.world_size,
            "backend": torch.distributed.get_backend() if torch.distributed.is_initialized() else None,
            "distributed_type": str(trainer.accelerator.distributed_type),
            "student_wrapped_class": type(trainer.model_wrapped).__name__,
            "artifact_writes": list(writes),
            "log_history": trainer.state.log_history,
            **_teacher_report(trainer),
        }
        (out / f"{name}-rank{trainer.args.process_index}.json").write_text(json.dumps(report))
        if trainer.is_world_process_zero():  # the weights as saved by save_model (gathered under ZeRO-3 / FSDP)
            from safetensors.torch import load_file

            torch.save(load_file(out / name / "model.safetensors"), out / f"{name}-student.pt")
        if trainer.hidden_projection is not None:  # every rank: they must agree
            state = {k: v.detach().cpu() for k, v in trainer.hidden_projection.state_dict().items()}
            torch.save(state, out / f"{name}-projection-rank{trainer.args.process_index}.pt")
        trainer.accelerator.wait_for_everyone()


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:])
