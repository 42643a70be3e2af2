"""The model card (`README.md`) written beside every save, and the teacher lineage it reports.

`DistillationTrainer` writes `README.md` next to the weights on every save (final output and checkpoints) and
rewrites it in `create_model_card`, which `push_to_hub` calls before uploading the output folder. Every value in
the card comes from the run: the `DistillationRecord` (`distillation_config.json`), the trainer state (evaluation
metrics, history), the training arguments and, when the folder holds them, the measured results
(`distillation_results.json`, a layout the library defines in `hf_distill.results`).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

from .artifacts import CONFIG_NAME, DistillationRecord, atomic_write_text, load_distillation_config, training_history
from .engines import mixed_precision_of
from .recipes import RECIPES
from .results import LEGACY_REPORT_NAME, DistillationResults, load_results
from .tasks import TASKS, task_of_class
from .terms import registered_terms

__all__ = [
    "CARD_NAME",
    "REPORT_NAME",
    "CardDataset",
    "build_model_card",
    "load_report",
    "teacher_lineage",
    "trainer_model_card",
    "write_model_card",
]

logger = logging.getLogger(__name__)

CARD_NAME = "README.md"
REPORT_NAME = LEGACY_REPORT_NAME  # older folders' results; new ones hold `hf_distill.results.RESULTS_NAME`
CARD_TAGS = ("hf-distill", "knowledge-distillation", "distillation")
_REPORT_ROWS = (
    ("teacher", "Teacher"),
    ("student_before", "Student before distillation"),
    ("student_after", "Student after distillation (this model)"),
)
_NOT_METRICS = ("runtime", "samples_per_second", "steps_per_second", "model_preparation_time", "epoch", "step")
_PACKAGED_BUILDERS = {"csv", "json", "pandas", "parquet", "arrow", "text", "generator", "webdataset", "xml"}
# What a lineage step keeps of the teacher's own record (plus `model`, the teacher's path), before its loss settings.
_LINEAGE_KEYS = (
    "teacher_model student_architecture task student_num_parameters student_num_layers teacher_num_parameters recipe "
    "compression_ratio student_layers_from_teacher"
).split()
_CITATION = """```bibtex
@article{hinton2015distilling,
  title   = {Distilling the Knowledge in a Neural Network},
  author  = {Hinton, Geoffrey and Vinyals, Oriol and Dean, Jeff},
  journal = {arXiv preprint arXiv:1503.02531},
  year    = {2015}
}

@inproceedings{wang2020minilm,
  title     = {MiniLM: Deep Self-Attention Distillation for Task-Agnostic Compression of Pre-Trained Transformers},
  author    = {Wang, Wenhui and Wei, Furu and Dong, Li and Bao, Hangbo and Yang, Nan and Zhou, Ming},
  booktitle = {Advances in Neural Information Processing Systems},
  volume    = {33},
  pages     = {5776--5788},
  year      = {2020}
}
```"""


@dataclass
class CardDataset:
    """A dataset as the card names it: `id` is a Hub dataset id (`None` for local or in-memory data)."""

    id: str | None
    name: str
    config: str | None = None
    split: str | None = None


# ---- lineage and report ---------------------------------------------------------------------------------------


def is_hub_id(name_or_path: str | None) -> bool:
    """Whether `name_or_path` names a Hub repository rather than a local folder."""
    if not name_or_path or os.path.exists(name_or_path):
        return False
    try:
        validate_repo_id(name_or_path)
    except HFValidationError:
        return False
    return True


def teacher_lineage(teacher_name_or_path: str | None) -> list[dict[str, Any]]:
    """The distillation chain above a teacher, nearest first; `[]` when the teacher was not distilled by hf-distill.

    Only a local teacher folder holding `distillation_config.json` is read (nothing is fetched from the Hub). Each
    entry is the teacher's own record (`model` = the teacher, `teacher_model` = what it was distilled from, its
    parameter counts and loss settings), followed by that teacher's own lineage.
    """
    if not teacher_name_or_path or not (Path(teacher_name_or_path) / CONFIG_NAME).is_file():
        return []
    try:
        record = load_distillation_config(teacher_name_or_path)
    except (OSError, ValueError, TypeError) as error:
        logger.warning(
            "Cannot read the teacher's %s in %s (%s); lineage not recorded.", CONFIG_NAME, teacher_name_or_path, error
        )
        return []
    return [_lineage_step(str(teacher_name_or_path), record), *record.teacher_lineage]


def _lineage_step(model: str, record: DistillationRecord) -> dict[str, Any]:
    """A teacher's record as a lineage step: who it is, its sizes and every loss setting (`hf_distill.terms`)."""
    fields = set(record.to_dict())
    terms = [name for term in registered_terms() for name in (*term.settings, *term.recorded) if name in fields]
    step = {"model": model} | {key: getattr(record, key) for key in [*_LINEAGE_KEYS, *terms, "layer_map"]}
    return step | ({"term_settings": record.term_settings} if record.term_settings else {})


def load_report(directory: str | os.PathLike) -> dict[str, Any]:
    """The results saved in `directory` as a dict of `DistillationResults` keys; `{}` if absent or unreadable.

    Kept for callers of earlier versions; `hf_distill.results.load_results` returns the typed results.
    """
    results = load_results(directory)
    return {} if results is None else results.to_dict()


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _metrics(entry: Any, prefix: str = "eval_") -> dict[str, float]:
    """Task metrics (accuracy, f1, ...) of an eval log entry or a report row: numbers, no losses or timings.

    Keys lose `prefix`; in an eval log entry (`prefix="eval_"`) keys without it (`epoch`, `step`) are not metrics.
    """
    if not isinstance(entry, dict):
        return {}
    out = {}
    for key, value in entry.items():
        name = key.removeprefix(prefix)
        if "loss" not in name and name not in _NOT_METRICS and _number(value) is not None:
            out[name] = _number(value)
    return out


# ---- the card ---------------------------------------------------------------------------------------------------


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return "n/a" if value is None else str(value)


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows])


def _task_and_auto_class(architecture: str | None, task_name: str | None = None) -> tuple[str | None, str, str]:
    """The Hub's pipeline tag, the Auto class and the preprocessor's Auto class of a model class name (or of the
    task the record names); `None`, `AutoModel`, `AutoTokenizer` for another head."""
    task = TASKS.get(task_name) if task_name else None
    task = task or task_of_class(architecture)
    if task is None:
        return None, "AutoModel", "AutoTokenizer"
    return task.pipeline_tag, task.auto_class, task.processor_auto_class


def _model_link(name: str | None) -> str:
    if not name:
        return "an unnamed in-memory model"
    return f"[`{name}`](https://huggingface.co/{name})" if is_hub_id(name) else f"`{name}` (local)"


def _summary(r: DistillationRecord, model_name: str) -> str:
    ratio = f", {r.compression_ratio:.2f}x fewer than the teacher's {_fmt(r.teacher_num_parameters)}"
    return (
        f"# {model_name}\n\n`{model_name}` is a {r.student_num_layers}-layer `{r.student_architecture}` distilled "
        f"with hf-distill from the teacher {_model_link(r.teacher_model)}, a {r.teacher_num_layers}-layer "
        f"`{r.teacher_architecture}`. It has "
        f"{_fmt(r.student_num_parameters)} parameters{ratio if r.compression_ratio else ''}."
    )


def _results(report: dict[str, Any], eval_metrics: dict[str, float]) -> str:
    rows = [(label, _metrics(report.get(key))) for key, label in _REPORT_ROWS if _metrics(report.get(key))]
    parts = ["## Results"]
    if rows:
        primary = report.get("metric") if isinstance(report.get("metric"), str) else "accuracy"  # higher is better
        names = sorted({name for _, m in rows for name in m}, key=lambda n: (n != primary, n))
        parts.append(_table(["Model", *names], [[label, *(m.get(n) for n in names)] for label, m in rows]))
        teacher, before, after = (_metrics(report.get(k)).get(primary) for k, _ in _REPORT_ROWS)
        if teacher and after is not None:
            parts.append(f"The student keeps {100 * after / teacher:.1f} % of the teacher's {primary}.")
        if teacher is not None and before is not None and after is not None and teacher != before:
            gap = 100 * (after - before) / (teacher - before)
            parts.append(
                f"Distillation closed {gap:.1f} % of the {primary} gap between the initial student and teacher."
            )
    elif eval_metrics:
        lines = "\n".join(f"- {name}: {_fmt(value)}" for name, value in eval_metrics.items())
        parts.append(f"Latest evaluation logged during training:\n\n{lines}")
    speedup = _number(report.get("speedup"))
    if speedup is not None:
        latency = report.get("latency") if isinstance(report.get("latency"), dict) else {}
        details = ", ".join(f"{k}: {_fmt(v)}" for k, v in latency.items() if not isinstance(v, (dict, list)))
        parts.append(
            f"Measured speed-up over the teacher (teacher latency / student latency): **{speedup:.2f}x**"
            + (f" ({details})." if details else ".")
        )
    return "\n\n".join(parts) if len(parts) > 1 else ""


def _lineage(r: DistillationRecord, model_name: str) -> str:
    lines = [
        "## Lineage\n",
        f"- `{model_name}` (this model, {_fmt(r.student_num_parameters)} parameters) was distilled "
        f"from {_model_link(r.teacher_model)} ({_fmt(r.teacher_num_parameters)} parameters).",
    ]
    for step in r.teacher_lineage:
        lines.append(
            f"- {_model_link(step.get('model'))} ({_fmt(step.get('student_num_parameters'))} parameters) was itself "
            f"distilled with hf-distill from {_model_link(step.get('teacher_model'))} "
            f"({_fmt(step.get('teacher_num_parameters'))} parameters; T={_fmt(step.get('temperature'))}, "
            f"alpha={_fmt(step.get('alpha'))}, beta={_fmt(step.get('beta'))}, gamma={_fmt(step.get('gamma'))})."
        )
    chain = [model_name, r.teacher_model or "unnamed teacher"] + [
        str(s.get("teacher_model")) for s in r.teacher_lineage
    ]
    lines.append(f"\nChain: {' <- '.join(f'`{name}`' for name in chain)}")
    return "\n".join(lines)


def _architecture(r: DistillationRecord) -> str:
    copied = r.student_layers_from_teacher
    origin = (
        f"Its layers were initialised from teacher layers {copied} (0-indexed); embeddings and task head were copied."
        if copied
        else "Which teacher layers initialised it is not recorded (it was not built with `build_student`)."
    )
    layer_map = r.layer_map or []
    rows = [[i, copied[i] if copied and i < len(copied) else "n/a", t] for i, t in enumerate(layer_map)]
    sections = [
        "## Student architecture",
        f"| | Teacher | Student |\n|---|---|---|\n| Architecture | `{r.teacher_architecture}` | "
        f"`{r.student_architecture}` |\n| Layers | {r.teacher_num_layers} | {r.student_num_layers} |\n"
        f"| Parameters | {_fmt(r.teacher_num_parameters)} | {_fmt(r.student_num_parameters)} |\n"
        f"| Compression ratio | | {_fmt(r.compression_ratio)}x |",
        origin,
        _table(["Student layer", "Initialised from teacher layer", "Attention distilled from teacher layer"], rows)
        if rows
        else "",
    ]
    return "\n\n".join(section for section in sections if section)


class _Formatted(dict):
    """Setting values formatted for the card; a setting the record lacks (an older run) reads "n/a"."""

    def __missing__(self, key: str) -> str:
        return "n/a"


def _loss(r: DistillationRecord) -> str:
    """The loss formula with the run's values, and a sentence per term, for every term the registry declares."""
    values = r.settings()
    shown = [term for term in registered_terms() if term.on_card_at_zero or values.get(term.weight)]
    formatted = _Formatted({name: _fmt(value) for name, value in values.items()})
    return (
        f"## Distillation loss\n\n```\nL = {r.loss_formula}\n"
        f"  = {' + '.join(term.card_formula().format_map(formatted) for term in shown)}\n```\n\n"
        + " ".join(term.card_sentence(values) for term in shown)
        + (f"\n\nSettings from the `{r.recipe}` recipe ({RECIPES[r.recipe].paper})." if r.recipe in RECIPES else "")
    )


def _hyperparameters(r: DistillationRecord, extra: dict[str, Any]) -> str:
    values = {
        "learning_rate": r.learning_rate,
        "per_device_train_batch_size": r.per_device_train_batch_size,
        "gradient_accumulation_steps": r.gradient_accumulation_steps,
        "total_train_batch_size": r.total_train_batch_size,
        "num_train_epochs": r.num_train_epochs,
        "max_steps": r.max_steps if r.max_steps and r.max_steps > 0 else None,
        "epochs_trained": r.epochs_trained,
        **extra,
        "seed": r.seed,
        "global_step": r.global_step,
        "training_time_seconds": r.training_time_seconds,
        "metric_for_best_model": r.metric_for_best_model,
        "best_metric": r.best_metric,
    }
    lines = [f"- {name}: {_fmt(value)}" for name, value in values.items() if value is not None]
    return "## Training hyperparameters\n\n" + "\n".join(lines)


def _history(history: dict[str, list[dict[str, Any]]], max_rows: int = 25) -> str:
    evals = [e for e in history.get("eval", []) if any(k.startswith("eval_") for k in e)]
    if not evals:
        return ""
    keys = [k for k in dict.fromkeys(k for e in evals for k in e) if k.startswith("eval_")]
    keys = [k for k in keys if k.removeprefix("eval_") not in _NOT_METRICS]
    rows = [[e.get("step"), e.get("epoch"), *(e.get(k) for k in keys)] for e in evals[-max_rows:]]
    note = ""
    if len(evals) > max_rows:
        note = f"\n\nLast {max_rows} of {len(evals)} evaluations; all are in `training_history.json`."
    return "## Training results\n\n" + _table(["Step", "Epoch", *(k.removeprefix("eval_") for k in keys)], rows) + note


def _usage(
    load_path: str, on_hub: bool, auto_class: str, has_tokenizer: bool, processor: str = "AutoTokenizer"
) -> str:
    variables = {"AutoTokenizer": "tokenizer", "AutoImageProcessor": "image_processor"}
    variable = variables.get(processor, "feature_extractor")
    tokenizer = f'{variable} = {processor}.from_pretrained("{load_path}")\n' if has_tokenizer else ""
    config = (
        f'record = load_distillation_config(hf_hub_download("{load_path}", "{CONFIG_NAME}"))'
        if on_hub
        else f'record = load_distillation_config("{load_path}")'
    )
    hub_import = "from huggingface_hub import hf_hub_download\n" if on_hub else ""
    return (
        "## How to use\n\n```python\n"
        f"from transformers import {auto_class}{', ' + processor if has_tokenizer else ''}\n\n"
        f'model = {auto_class}.from_pretrained("{load_path}")\n{tokenizer}```\n\n'
        f"The distillation settings and lineage load as a typed record:\n\n```python\n{hub_import}"
        f"from hf_distill import load_distillation_config\n\n{config}\nprint(record.teacher_model, "
        "record.compression_ratio, record.layer_map)\n```"
    )


def build_model_card(
    record: DistillationRecord,
    *,
    model_name: str,
    load_path: str,
    on_hub: bool = False,
    eval_metrics: dict[str, float] | None = None,
    history: dict[str, list[dict[str, Any]]] | None = None,
    report: dict[str, Any] | None = None,
    results: DistillationResults | None = None,
    hyperparameters: dict[str, Any] | None = None,
    datasets: list[CardDataset] | None = None,
    task: str | None = None,
    base_model: str | None = None,
    has_tokenizer: bool = True,
    language: str | list[str] | None = None,
    license: str | None = None,
    tags: list[str] | None = None,
) -> ModelCard:
    """Render the card of a distilled student from its record and what the run measured (a pure function).

    `base_model` defaults to the teacher when it is a Hub id (a local teacher folder is no Hub reference; the
    lineage section names it instead). `eval_metrics` (e.g. `{"accuracy": 0.9}`; `results.student_after` wins
    when present) become `model-index` results when the task and a Hub dataset are known (the Hub rejects results
    without both); they always appear in the body. `results` (`hf_distill.results.DistillationResults`) are the
    measured teacher / student results; `report`, the same as a dict of its keys, is read when `results` is not given.
    """
    report = results.to_dict() if results is not None else (report or {})
    if base_model is None and is_hub_id(record.teacher_model):
        base_model = record.teacher_model
    inferred_task, auto_class, processor = _task_and_auto_class(record.student_architecture, record.task)
    task = task or inferred_task
    metrics = _metrics(report.get("student_after")) or dict(eval_metrics or {})
    hub_datasets = [d for d in datasets or [] if d.id]
    eval_results = (
        [
            EvalResult(
                task_type=task,
                dataset_type=d.id,
                dataset_name=d.name,
                dataset_config=d.config,
                dataset_split=d.split,
                metric_type=name,
                metric_name=name,
                metric_value=value,
            )
            for d in hub_datasets[:1]
            for name, value in metrics.items()
        ]
        if task
        else []
    )
    data = ModelCardData(
        base_model=base_model,
        library_name="transformers",
        pipeline_tag=task,
        tags=list(dict.fromkeys([*CARD_TAGS, *(tags or [])])),
        datasets=[d.id for d in hub_datasets] or None,
        metrics=list(metrics) or None,
        eval_results=eval_results or None,
        model_name=model_name,
        language=language,
        license=license,
    )
    data_line = (
        "Trained and evaluated on "
        + ", ".join(
            f"{d.name}" + (f" ({d.config})" if d.config else "") + (f", split `{d.split}`" if d.split else "")
            for d in datasets
        )
        + "."
        if datasets
        else "The training data is not recorded (local files or an in-memory dataset)."
    )
    sections = [
        _summary(record, model_name) + " " + data_line,
        _results(report, metrics),
        _lineage(record, model_name),
        _architecture(record),
        _loss(record),
        _hyperparameters(record, hyperparameters or {}),
        _history(history or {}),
        _usage(load_path, on_hub, auto_class, has_tokenizer, processor),
        "## Framework versions\n\n" + "\n".join(f"- {k}: {v}" for k, v in record.versions.items()),
        "## Citation\n\nKnowledge distillation (soft labels at temperature T) follows Hinton et al. (2015); the "
        "self-attention distillation term follows MiniLM (Wang et al., 2020).\n\n" + _CITATION,
    ]
    body = "\n\n".join(section for section in sections if section)
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}\n")


# ---- from a trainer ---------------------------------------------------------------------------------------------


def _listify(value: str | list[str] | None) -> list[str]:
    return [] if value is None else [value] if isinstance(value, str) else list(value)


def _datasets(trainer: Any, dataset_tags: Any, dataset: Any, dataset_args: Any) -> list[CardDataset]:
    """Datasets named by the caller (Trainer's `dataset_tags` / `dataset` / `dataset_args`), else the eval set's."""
    ids, names, configs = _listify(dataset_tags), _listify(dataset), _listify(dataset_args)
    if ids or names:
        count = max(len(ids), len(names))
        ids, names, configs = (xs + [None] * (count - len(xs)) for xs in (ids, names, configs))
        return [CardDataset(i, n or i, c) for i, n, c in zip(ids, names, configs)]
    one = trainer.eval_dataset if trainer.eval_dataset is not None else trainer.train_dataset
    info = getattr(one, "info", None)
    dataset_id = getattr(info, "dataset_name", None) or getattr(one, "builder_name", None)
    if not dataset_id or dataset_id in _PACKAGED_BUILDERS:
        return []
    config = getattr(one, "config_name", None)
    split = getattr(one, "split", None)
    return [
        CardDataset(dataset_id, dataset_id, None if config == "default" else config, str(split) if split else None)
    ]


def _training_hyperparameters(args: Any) -> dict[str, Any]:
    values = {
        "lr_scheduler_type": getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type),
        "warmup_steps": args.warmup_steps,
        "weight_decay": args.weight_decay,
        "max_grad_norm": args.max_grad_norm,
        "optimizer": getattr(args.optim, "value", args.optim),
        "mixed_precision": None if (precision := mixed_precision_of(args)) == "no" else precision,
    }
    return {k: v for k, v in values.items() if v is not None}


def trainer_model_card(
    trainer: Any,
    output_dir: str | os.PathLike,
    *,
    language: str | list[str] | None = None,
    license: str | None = None,
    tags: str | list[str] | None = None,
    model_name: str | None = None,
    finetuned_from: str | None = None,
    tasks: str | list[str] | None = None,
    dataset_tags: str | list[str] | None = None,
    dataset: str | list[str] | None = None,
    dataset_args: str | list[str] | None = None,
    record: DistillationRecord | None = None,
) -> ModelCard:
    """The card for what a `DistillationTrainer` saved in `output_dir` (arguments as in `Trainer.create_model_card`).

    `record` defaults to `trainer.distillation_record()`; `finetuned_from`, when given, overrides `base_model`.
    """
    args, record = trainer.args, record or trainer.distillation_record()
    hub_id = getattr(trainer, "hub_model_id", None) or args.hub_model_id
    model_name = model_name or (hub_id.split("/")[-1] if hub_id else Path(args.output_dir).name)
    last_eval = next((e for e in reversed(trainer.state.log_history) if any(k.startswith("eval_") for k in e)), {})
    return build_model_card(
        record,
        model_name=model_name,
        load_path=hub_id or str(output_dir),
        on_hub=hub_id is not None,
        eval_metrics={k: v for k, v in _metrics(last_eval).items() if f"eval_{k}" in last_eval},
        history=training_history(trainer.state.log_history),
        results=load_results(output_dir),
        hyperparameters=_training_hyperparameters(args),
        datasets=_datasets(trainer, dataset_tags, dataset, dataset_args),
        task=(_listify(tasks) or [None])[0],
        base_model=finetuned_from,
        has_tokenizer=trainer.processing_class is not None,
        language=language,
        license=license,
        tags=_listify(tags),
    )


def write_model_card(card: ModelCard, output_dir: str | os.PathLike) -> Path:
    """Write `card` to `output_dir/README.md` atomically."""
    path = Path(output_dir) / CARD_NAME
    atomic_write_text(path, str(card))
    return path
