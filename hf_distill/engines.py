"""The frozen teacher under the engine that runs the student: one device, DDP, DeepSpeed ZeRO or FSDP.

The student is prepared by `Trainer` as usual. The teacher is never trained, so it must never be wrapped in DDP
(it would sync gradients that do not exist and waste memory), but under ZeRO-3 and FSDP it is best sharded like
the student, so that a teacher larger than one device still runs:

* one process or DDP: the teacher is frozen, put in `eval()` and moved to this rank's device, unwrapped;
* DeepSpeed: the teacher becomes a DeepSpeed inference engine built from a copy of the run's DeepSpeed config,
  with ZeRO stage 3 kept (parameters stay partitioned) and stages 0-2 turned into stage 0 (a full replica per
  rank; there are no gradients or optimizer states to partition), without optimizer or scheduler;
* FSDP2: the teacher is sharded with accelerate's `fully_shard` preparation and a copy of the run's plugin whose
  auto-wrap targets the teacher's own blocks, so teacher and student may have different layer classes. FSDP1
  (deprecated in transformers 5) fails at start with a clear message.

`teacher_dtype` casts the teacher's weights (for instance to bfloat16 while the student trains in float32 with
bf16 autocast), which halves its memory; the loss terms are computed in float32 whatever the models' precision.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import torch
from torch import nn

__all__ = [
    "TEACHER_DTYPES",
    "cast_floating_inputs",
    "deepspeed_teacher_config",
    "mixed_precision_of",
    "prepare_teacher",
    "real_examples",
    "resolve_teacher_dtype",
]

logger = logging.getLogger(__name__)

TEACHER_DTYPES = ("auto", "float32", "bfloat16", "float16")


def resolve_teacher_dtype(teacher_dtype: str | None, mixed_precision: str = "no") -> torch.dtype | None:
    """The dtype to cast the teacher to, or `None` to keep the dtype it was loaded in.

    Args:
        teacher_dtype (`str` or `None`): `None` keeps the teacher as loaded; `"auto"` follows the run's mixed
            precision (bf16 -> `torch.bfloat16`, fp16 -> `torch.float16`, otherwise keep); `"float32"`,
            `"bfloat16"`, `"float16"` name the dtype.
        mixed_precision (`str`, *optional*, defaults to `"no"`): the run's mixed precision: `"no"`, `"bf16"`, `"fp16"`.

    >>> resolve_teacher_dtype("auto", "bf16")
    torch.bfloat16
    """
    if teacher_dtype is None:
        return None
    if teacher_dtype not in TEACHER_DTYPES:
        raise ValueError(
            f"`teacher_dtype` must be one of {', '.join(TEACHER_DTYPES)} or None, got {teacher_dtype!r}. "
            "Use 'bfloat16' to halve the teacher's memory on hardware with bf16 support."
        )
    if teacher_dtype == "auto":
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(str(mixed_precision))
    return getattr(torch, teacher_dtype)


def deepspeed_teacher_config(
    ds_config: dict[str, Any],
    hidden_size: int | None = None,
    micro_batch_size: int = 1,
    gradient_accumulation_steps: int = 1,
    world_size: int = 1,
    mixed_precision: str = "no",
) -> dict[str, Any]:
    """The DeepSpeed config for the teacher's inference engine, derived from the run's config without changing it.

    ZeRO stage 3 is kept, so the teacher's parameters stay partitioned across ranks; stages 0-2 become stage 0
    (each rank holds the full teacher: stages 1-2 only partition optimizer states and gradients, which a frozen
    teacher does not have). The optimizer and scheduler are dropped. The batch settings are set from the arguments
    (consistent for this world size); `"auto"` bf16/fp16 flags and ZeRO-3 bucket sizes are resolved (the buckets
    from `hidden_size`, as transformers does); any other `"auto"` is removed so that DeepSpeed's default applies.

    Args:
        ds_config (`dict`): the run's DeepSpeed config (`accelerator.state.deepspeed_plugin.deepspeed_config`).
        hidden_size (`int`, *optional*): the teacher's hidden size, for the ZeRO-3 bucket sizes.
        micro_batch_size, gradient_accumulation_steps, world_size (`int`): the run's batch settings.
        mixed_precision (`str`, *optional*, defaults to `"no"`): fills `bf16.enabled` / `fp16.enabled` when `"auto"`.

    >>> run_config = {"zero_optimization": {"stage": 2}, "optimizer": {"type": "AdamW"}}
    >>> deepspeed_teacher_config(run_config)["zero_optimization"]
    {'stage': 0}
    """
    config = copy.deepcopy(ds_config)
    zero = dict(config.get("zero_optimization") or {})
    stage = zero.get("stage", 0)
    if stage == 3:
        zero.pop("offload_optimizer", None)  # no optimizer
        if hidden_size:
            sizes = {
                "reduce_bucket_size": hidden_size * hidden_size,
                "stage3_prefetch_bucket_size": int(0.9 * hidden_size * hidden_size),
                "stage3_param_persistence_threshold": 10 * hidden_size,
            }
            for key, value in sizes.items():
                if zero.get(key, "auto") == "auto":
                    zero[key] = value
        config["zero_optimization"] = zero
    else:
        config["zero_optimization"] = {"stage": 0}
    for key in ("optimizer", "scheduler"):
        config.pop(key, None)

    # The engine never steps, but DeepSpeed checks train_batch_size == micro * accumulation * world size; the run's
    # values may still be "auto" or filled for another world size (accelerate fills them only at prepare time).
    config["train_micro_batch_size_per_gpu"] = micro_batch_size
    config["gradient_accumulation_steps"] = gradient_accumulation_steps
    config["train_batch_size"] = micro_batch_size * gradient_accumulation_steps * world_size
    for key, enabled in (("bf16", mixed_precision == "bf16"), ("fp16", mixed_precision == "fp16")):
        if isinstance(config.get(key), dict) and config[key].get("enabled") == "auto":
            config[key]["enabled"] = enabled
    return _drop_auto(config)


def _drop_auto(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_auto(v) for k, v in value.items() if v != "auto"}
    return value


def _deepspeed_dtype(ds_config: dict[str, Any]) -> torch.dtype:
    for key, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
        if (ds_config.get(key) or {}).get("enabled") is True:
            return dtype
    return torch.float32


def prepare_teacher(teacher: nn.Module, accelerator: Any, args: Any, is_model_parallel: bool = False) -> nn.Module:
    """Freeze `teacher` and prepare it for the run's engine; return what the trainer should call.

    The returned module runs the teacher's forward: `teacher` itself (one device, DDP, FSDP2 which shards in
    place) or a DeepSpeed engine around it. `teacher` is never wrapped in DDP.

    Args:
        teacher (`nn.Module`): the teacher model.
        accelerator (`accelerate.Accelerator`): the trainer's accelerator (after `Trainer.__init__`).
        args (`DistillationArguments`): reads `teacher_dtype`, the batch settings and the mixed precision.
        is_model_parallel (`bool`, *optional*): the student is spread over devices; leave the teacher where it is.
    """
    from accelerate.utils import DistributedType

    teacher.requires_grad_(False)
    teacher.eval()
    dtype = resolve_teacher_dtype(getattr(args, "teacher_dtype", None), mixed_precision_of(args))
    distributed_type = accelerator.distributed_type

    if distributed_type == DistributedType.DEEPSPEED:
        return _prepare_deepspeed(teacher, accelerator, args, dtype)
    if dtype is not None:
        teacher.to(dtype)
    if distributed_type == DistributedType.FSDP:
        return _prepare_fsdp(teacher, accelerator)
    if not is_model_parallel:
        teacher.to(accelerator.device)
    return teacher


def mixed_precision_of(args: Any) -> str:
    """`"bf16"`, `"fp16"` or `"no"`, from `TrainingArguments.bf16` / `fp16`: the one reading of the precision flags,
    used by the engines, the teacher-cache key and the model card."""
    return "bf16" if getattr(args, "bf16", False) else "fp16" if getattr(args, "fp16", False) else "no"


def _prepare_deepspeed(teacher: nn.Module, accelerator: Any, args: Any, dtype: torch.dtype | None) -> nn.Module:
    try:
        import deepspeed
    except ImportError as error:  # accelerate would have failed first; keep the message clear anyway
        raise ImportError("the run uses DeepSpeed, but `deepspeed` is not installed: pip install deepspeed") from error

    plugin = accelerator.state.deepspeed_plugin
    config = deepspeed_teacher_config(
        plugin.deepspeed_config,
        hidden_size=_hidden_size(teacher),
        micro_batch_size=args.per_device_train_batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        world_size=torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1,
        mixed_precision=mixed_precision_of(args),
    )
    engine_dtype = _deepspeed_dtype(config)
    if dtype is not None and dtype != engine_dtype:
        raise ValueError(
            f"teacher_dtype={args.teacher_dtype!r} asks for {dtype}, but under DeepSpeed the teacher runs in the "
            f"precision of the DeepSpeed config ({engine_dtype}, from its bf16/fp16 section). Remove teacher_dtype "
            "or set it to 'auto'."
        )
    engine, *_ = deepspeed.initialize(model=teacher, config=config)
    engine.eval()
    return engine


def _hidden_size(model: nn.Module) -> int | None:
    config = getattr(model, "config", None)
    sizes = getattr(config, "hidden_sizes", None)
    return max(sizes) if sizes else getattr(config, "hidden_size", None)


def _prepare_fsdp(teacher: nn.Module, accelerator: Any) -> nn.Module:
    """Shard the teacher with a copy of the run's FSDP plugin whose transformer-based wrap targets its own blocks.

    accelerate's `set_auto_wrap_policy` pins the layer classes to wrap on the plugin it is given, so the shared
    plugin is left alone: a teacher prepared first would impose its classes on a student of another architecture.
    The teacher's blocks are the ones `find_layers` finds (e.g. `BertLayer`), not its `_no_split_modules`: for BERT
    those include `BertEmbeddings`, which accelerate 1.15's FSDP2 preparation cannot shard (it shards the word
    embeddings a second time).
    """
    if not accelerator.is_fsdp2:
        raise ValueError(
            "the teacher can be sharded with FSDP2 only, but this run uses FSDP1 (fsdp_version 1, deprecated in "
            "transformers 5). Set fsdp_version: 2 in the accelerate config, or fsdp_config={'version': 2}."
        )
    from accelerate.utils.fsdp_utils import fsdp2_prepare_model
    from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy

    from .modeling import find_layers

    state = accelerator.state
    shared = state.fsdp_plugin
    plugin = copy.copy(shared)
    policy = getattr(plugin.auto_wrap_policy, "func", plugin.auto_wrap_policy)  # undo a previous functools.partial
    plugin.auto_wrap_policy = policy
    if policy is transformer_auto_wrap_policy:
        plugin.transformer_cls_names_to_wrap = [type(find_layers(teacher)[0]).__name__]
    state.fsdp_plugin = plugin  # fsdp2_prepare_model reads the plugin from the accelerator state
    try:
        teacher = fsdp2_prepare_model(accelerator, teacher)
    finally:
        state.fsdp_plugin = shared
    teacher.eval()
    return teacher


def cast_floating_inputs(inputs: dict[str, Any], dtype: torch.dtype | None) -> dict[str, Any]:
    """Cast floating-point input tensors (e.g. `pixel_values`) to the teacher's dtype; ids and masks are untouched."""
    if dtype is None:
        return inputs
    return {k: v.to(dtype) if torch.is_tensor(v) and v.is_floating_point() else v for k, v in inputs.items()}


def real_examples(accelerator: Any, batch_size: int) -> int:
    """How many leading examples of this rank's evaluation batch are real, not padding.

    With several processes, accelerate completes the last global batch by repeating examples from the start of
    the dataset, so that every rank gets a full batch; `gather_for_metrics` drops them after gathering. Per-term
    sums are reduced rather than gathered, so they drop them here: in the last batch, rank `r` keeps
    `remainder - r * batch_size` examples (clamped to `0..batch_size`).
    """
    state = accelerator.gradient_state
    if accelerator.num_processes == 1 or not state.end_of_dataloader or state.remainder <= 0:
        return batch_size
    return max(0, min(batch_size, state.remainder - accelerator.process_index * batch_size))
