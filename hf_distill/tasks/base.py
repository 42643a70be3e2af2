"""The `Task` interface and the registry of tasks: everything that differs between task heads goes through a `Task`.

A task knows its head (model class suffixes, Auto class, Hub pipeline tag), which logits it distils and where, its
loss units (examples or tokens), its output terms (CE and KD), its evaluation metrics, its data for the `hf-distill`
command, whether its teacher outputs can be cached, and how to check a teacher against a student. The trainer, the
teacher cache, the metrics and the command ask the task; none of them names one. A new task is a module defining a
`Task` subclass and calling `register_task` on an instance (see docs/architecture.md, "Adding a task").
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import torch

from ..task_metrics import QAReferences, TaskMetrics

if TYPE_CHECKING:
    from ..teacher_cache import CacheFormat

__all__ = ["TASKS", "Task", "batch_size", "detect_task", "get_task", "register_task", "task_of_class"]

Terms = dict[str, tuple[torch.Tensor, torch.Tensor]]  # name -> (per-example sums, per-example unit counts), (B,)


class Task:
    """A task head. Subclasses set the class attributes and implement `output_terms`; one instance is registered.

    Attributes:
        name (`str`): the task's name (`--task`, `distillation_config.json`'s `task`).
        auto_class (`str`): the transformers Auto class that loads a model with this head.
        class_suffixes (`tuple[str, ...]`): model class names of this head end with one of these.
        label_names (`tuple[str, ...]`): the batch keys holding the targets.
        per_token (`bool`): one loss unit per distilled token (else per example).
        labels_mark_positions (`bool`): the labels say which positions are distilled, so batches need them even
            when the hard-label loss is off (masked LM).
        description (`str`): one line for the documentation and `--help`.
        pipeline_tag (`str`): the Hugging Face Hub's name for the task (model card metadata).
        teacher_cache (`CacheFormat` or `None`): how the teacher's outputs are cached (`hf_distill.teacher_cache`);
            `None` when they cannot be.
        no_cache_reason (`str`): why not, for the error when `teacher_cache_dir` is set anyway.
        fuses_lm_head (`bool`): its output projection may run inside the loss (`hf_distill.lm_head`).
        needs_fast_tokenizer (`bool`): its data preparation maps words or answers to tokens through offsets.
        augments_text (`bool`): `hf-distill --augment` can add sentence variants to its training set.
        command_names (`tuple[str, ...]`): the `--task` values that run it (the first is `name`).
    """

    name: ClassVar[str]
    auto_class: ClassVar[str]
    class_suffixes: ClassVar[tuple[str, ...]]
    label_names: ClassVar[tuple[str, ...]] = ("labels",)
    per_token: ClassVar[bool] = False
    labels_mark_positions: ClassVar[bool] = False
    description: ClassVar[str] = ""
    pipeline_tag: ClassVar[str | None] = None
    teacher_cache: ClassVar[CacheFormat | None] = None
    no_cache_reason: ClassVar[str] = "its teacher outputs are not cached"
    fuses_lm_head: ClassVar[bool] = False
    needs_fast_tokenizer: ClassVar[bool] = False
    augments_text: ClassVar[bool] = False

    @property
    def command_names(self) -> tuple[str, ...]:
        return (self.name,)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"

    # One object per task, compared by identity: copies and pickles resolve to the registered one.
    def __copy__(self) -> Task:
        return self

    def __deepcopy__(self, memo: dict) -> Task:
        return self

    def __reduce__(self) -> tuple:
        return get_task, (self.name,)

    # ---- models ------------------------------------------------------------------------------------------------

    def check_models(self, student: Any, teacher: Any) -> None:
        """Refuse, before any work, a teacher/student pair whose heads this task cannot distil (both have its head)."""

    def logits(self, outputs: Any) -> tuple[torch.Tensor, ...]:
        """The logits the task distils from a model's outputs."""
        return (outputs.logits,)

    # ---- loss --------------------------------------------------------------------------------------------------

    def has_labels(self, inputs: dict[str, Any]) -> bool:
        """Whether the batch holds every target."""
        return all(inputs.get(name) is not None for name in self.label_names)

    def units_per_example(self, inputs: dict[str, Any]) -> torch.Tensor:
        """`(B,)`: how many loss units each example holds (1 for example-level tasks)."""
        return torch.ones(batch_size(inputs), dtype=torch.long)

    def output_terms(
        self,
        student: Any,
        teacher: Any,
        inputs: dict[str, Any],
        temperature: float,
        weights: dict[str, float],
        training: bool,
    ) -> tuple[Terms, torch.Tensor]:
        """`(terms, objective)`: see `hf_distill.tasks.output_terms`."""
        raise NotImplementedError

    # ---- the `hf-distill` command --------------------------------------------------------------------------------

    def command_name(self, pair: bool) -> str:
        """The `--task` value of this run (`pair`: sentence pairs, for the tasks that have them)."""
        return self.name

    def prepare_data(self, splits, args, tokenizer, config, pair: bool = False, augment=None):
        """Check and tokenise the loaded `splits` (`{"train": Dataset, "validation": Dataset}`); a `TaskData`."""
        raise NotImplementedError(f"the {self.name} task has no data preparation for the hf-distill command.")

    def metrics(self, config: Any, references: QAReferences | None = None) -> TaskMetrics:
        """The evaluation metrics for a teacher with `config`; accuracy of the argmax by default."""
        return TaskMetrics(self, "accuracy", config.num_labels)

    def preprocess_predictions(self, logits: Any, labels: Any) -> Any:
        """`preprocess_logits_for_metrics`: keep what `compute_metrics` needs (argmax ids by default)."""
        logits = logits[0] if isinstance(logits, (tuple, list)) else logits
        return logits.argmax(dim=-1)

    def compute_metrics(self, metrics: TaskMetrics, predictions: Any, label_ids: Any) -> dict[str, float]:
        """The metrics of the gathered, `-100`-padded predictions and label ids."""
        raise NotImplementedError


def summed_objective(terms: Terms, weights: dict[str, float], device: torch.device) -> torch.Tensor:
    """`sum_n weights[n] * sum(terms[n])` over the terms with a weight > 0."""
    return sum((weights[n] * values.sum() for n, (values, _) in terms.items() if weights[n] > 0),
               torch.zeros((), device=device))  # fmt: skip


# ---- the registry --------------------------------------------------------------------------------------------------

TASKS: dict[str, Task] = {}


def register_task(task: Task) -> Task:
    """Add `task` to `TASKS` (detection, `--task`, every dispatch); refuses a name or a class suffix already taken."""
    if task.name in TASKS:
        raise ValueError(f"a task named {task.name!r} is already registered ({TASKS[task.name]!r}).")
    for other in TASKS.values():
        clash = set(task.class_suffixes) & set(other.class_suffixes)
        if clash:
            raise ValueError(f"{task.name!r} claims the class suffix(es) {sorted(clash)} of {other.name!r}.")
    TASKS[task.name] = task
    return task


def get_task(name: str) -> Task:
    """The task called `name` (one of `TASKS`), or a `ValueError` listing them."""
    if name not in TASKS:
        raise ValueError(f"task={name!r} is not supported; choose one of {', '.join(TASKS)}.")
    return TASKS[name]


def task_of_class(class_name: str | None) -> Task | None:
    """The task whose head a model class name ends with (`BertForTokenClassification` -> token-classification)."""
    return next((t for t in TASKS.values() if class_name and class_name.endswith(t.class_suffixes)), None)


def detect_task(model: Any) -> Task:
    """The task of a model, from its class name (`BertForTokenClassification` -> `token-classification`)."""
    task = task_of_class(type(model).__name__)
    if task is not None:
        return task
    heads = ", ".join(suffix for task in TASKS.values() for suffix in task.class_suffixes)
    raise ValueError(
        f"cannot distil a {type(model).__name__}: hf-distill supports models whose class ends with {heads}. Load the "
        "teacher and the student with the Auto class of their task, e.g. AutoModelForSequenceClassification."
    )


def batch_size(inputs: dict[str, Any]) -> int:
    """The number of examples in a batch: the first dimension of its first tensor."""
    for value in inputs.values():
        if torch.is_tensor(value) and value.dim() > 0:
            return value.shape[0]
    raise ValueError("cannot tell the batch size: the batch holds no tensors.")
