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

__all__ = [
    "TASKS",
    "Task",
    "batch_size",
    "detect_task",
    "get_task",
    "problem_type_of",
    "register_task",
    "task_of_class",
]

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
        problem_type (`str` or `None`): for a head class several tasks share (`*ForSequenceClassification`), the
            `config.problem_type` this task distils, read as transformers reads it (`problem_type_of`); `None`: any.
        main_input_names (`tuple[str, ...]` or `None`): the model inputs (`model.main_input_name`) of its heads;
            `None`: any. A task that names them wins detection over one that does not (so a wav2vec2
            `*ForSequenceClassification`, which reads `input_values`, is audio classification, not text).
        processor_auto_class (`str`): the transformers Auto class of the preprocessor the command loads
            (`AutoTokenizer`, `AutoFeatureExtractor`, `AutoImageProcessor`).
        reads_text (`bool`): its inputs are token ids from a tokenizer (the command's vocabulary and length checks).
        generates (`bool`): its models generate sequences, scored on generated text (the command then runs
            `DistillationSeq2SeqTrainer` with `predict_with_generate`).
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
    problem_type: ClassVar[str | None] = None
    main_input_names: ClassVar[tuple[str, ...] | None] = None
    processor_auto_class: ClassVar[str] = "AutoTokenizer"
    generates: ClassVar[bool] = False
    reads_text: ClassVar[bool] = True

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

    def claims(self, class_name: str, main_input_name: str | None) -> bool:
        """Whether a model class (and its `main_input_name`, when known) has this task's head."""
        if not class_name.endswith(self.class_suffixes):
            return False
        return self.main_input_names is None or main_input_name is None or main_input_name in self.main_input_names

    def check_models(self, student: Any, teacher: Any) -> None:
        """Refuse, before any work, a teacher/student pair whose heads this task cannot distil (both have its head)."""

    def check_arguments(self, args: Any) -> None:
        """Refuse (or warn about) distillation settings this task cannot honour; called with the trainer's args."""

    def check_processor(self, processor: Any, model: Any, option: str) -> None:
        """Refuse, before any work, a preprocessor (given by the command's `--option`) that does not fit `model`."""

    def layer_mask(self, model: Any, inputs: dict[str, Any]) -> torch.Tensor | None:
        """`(N, T)`: the positions `model`'s layers see that hold data, one row per sequence the layers run on
        (`N = B`, or `B * choices` for multiple choice), for the hidden-state, attention and relation terms; `None`:
        all of them. The batch's attention mask by default."""
        return inputs.get("attention_mask")

    def check_terms(self, student: Any, teacher: Any, args: Any) -> None:
        """Refuse, before any work, loss terms (`args`: `DistillationArguments`) the two models cannot provide (e.g.
        attention maps of a convolutional network). By default every term is left to the trainer's own checks."""

    def logits(self, outputs: Any) -> tuple[torch.Tensor, ...]:
        """The logits the task distils from a model's outputs."""
        return (outputs.logits,)

    def model_inputs(self, model: Any, inputs: dict[str, Any]) -> dict[str, Any]:
        """The batch as both models read it (unchanged by default; seq2seq adds the decoder inputs of teacher
        forcing when the collator did not). `model` is the unwrapped student."""
        return inputs

    def per_example(self, values: torch.Tensor, inputs: dict[str, Any]) -> torch.Tensor:
        """`(B,)`: a layer term's per-sequence values `(N,)` (see `layer_mask`) folded per example."""
        return values

    # ---- loss --------------------------------------------------------------------------------------------------

    def label_bound(self, model: Any) -> tuple[str, int] | None:
        """`(name, n)`: the targets of `model` are ids in `0..n-1` (or ignored), `name` saying where `n` comes from
        (`num_labels`, `vocab_size`), checked on the data before training; `None`: no such bound."""
        return None

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

    def evaluation_predictions(self, model: Any, batch: dict[str, Any], outputs: Any, labels: Any,
                               metrics: TaskMetrics) -> Any:  # fmt: skip
        """What the `hf-distill` command's evaluation keeps of one batch: `metrics.preprocess` of the logits (seq2seq
        adds the generated text's token ids)."""
        logits = self.logits(outputs)
        return metrics.preprocess(logits[0] if len(logits) == 1 else logits, labels)


def class_bound(model: Any) -> tuple[str, int] | None:
    """`Task.label_bound` of heads whose labels are class ids: `("num_labels", n)` for two classes or more."""
    num_labels = getattr(getattr(model, "config", None), "num_labels", None)
    return ("num_labels", num_labels) if num_labels and num_labels > 1 else None


def vocabulary_bound(model: Any) -> tuple[str, int] | None:
    """`Task.label_bound` of heads whose labels are token ids: `("vocab_size", rows of the input embedding)`."""
    from ..modeling import embedding_rows

    rows = embedding_rows(model)
    return ("vocab_size", rows) if rows else None


def class_terms(
    logits: torch.Tensor, labels: torch.Tensor | None, teacher: Any, temperature: float, weights: dict[str, float]
) -> tuple[Terms, torch.Tensor]:
    """One softmax over classes per example (sequence, image, audio classification; multiple choice's choices):
    CE to `labels` (a `-100` label counts no unit) when given, and Hinton's KD (`T^2 KL`) to the teacher's
    `(logits,)` when given; `(terms, objective)` as `Task.output_terms` returns them."""
    from .. import losses

    terms: Terms = {}
    if labels is not None:
        ce = losses.hard_label_loss(logits, labels, reduction="none")
        terms["loss_ce"] = (ce, labels.ne(losses.IGNORE_INDEX))
    if teacher is not None:
        kd = losses.soft_label_loss(logits, teacher[0], temperature, reduction="none")
        terms["loss_kd"] = (kd, torch.ones_like(kd))
    return terms, summed_objective(terms, weights, logits.device)


def summed_objective(terms: Terms, weights: dict[str, float], device: torch.device) -> torch.Tensor:
    """`sum_n weights[n] * sum(terms[n])` over the terms with a weight > 0."""
    return sum((weights[n] * values.sum() for n, (values, _) in terms.items() if weights[n] > 0),
               torch.zeros((), device=device))  # fmt: skip


# ---- the registry --------------------------------------------------------------------------------------------------

TASKS: dict[str, Task] = {}


def register_task(task: Task) -> Task:
    """Add `task` to `TASKS` (detection, `--task`, every dispatch); refuses a name or a class suffix already taken
    (a suffix may be shared by tasks that declare different `problem_type`s)."""
    if task.name in TASKS:
        raise ValueError(f"a task named {task.name!r} is already registered ({TASKS[task.name]!r}).")
    for other in TASKS.values():
        clash = set(task.class_suffixes) & set(other.class_suffixes)
        shared = task.problem_type is not None and other.problem_type is not None  # one head, several problems
        if clash and not (shared and task.problem_type != other.problem_type):
            raise ValueError(f"{task.name!r} claims the class suffix(es) {sorted(clash)} of {other.name!r}.")
    TASKS[task.name] = task
    return task


def get_task(name: str) -> Task:
    """The task called `name` (one of `TASKS`), or a `ValueError` listing them."""
    if name not in TASKS:
        raise ValueError(f"task={name!r} is not supported; choose one of {', '.join(TASKS)}.")
    return TASKS[name]


def problem_type_of(config: Any) -> str:
    """`config.problem_type` as transformers' sequence-classification heads read it: when unset, `"regression"` for
    `num_labels == 1`, else `"single_label_classification"`."""
    problem = getattr(config, "problem_type", None)
    if problem is None:
        return "regression" if getattr(config, "num_labels", None) == 1 else "single_label_classification"
    return problem


def _heads_of(class_name: str | None) -> list[Task]:
    return [t for t in TASKS.values() if class_name and class_name.endswith(t.class_suffixes)]


def task_of_class(class_name: str | None, config: Any = None, main_input_name: str | None = None) -> Task | None:
    """The task whose head a model class has (`BertForTokenClassification` -> token-classification).

    `main_input_name` (the model's, e.g. `input_values`) defaults to the transformers class's of that name, when there
    is one. A task that names its inputs wins over one that takes any: `Wav2Vec2ForSequenceClassification` is audio.
    Where several tasks share the head (`*ForSequenceClassification`: single-label, regression, multi-label), the
    one for `config`'s problem type (`problem_type_of`); without a `config`, the first registered of them."""
    if not class_name:
        return None
    if main_input_name is None:
        import transformers

        try:
            main_input_name = getattr(getattr(transformers, class_name, None), "main_input_name", None)
        except (ImportError, RuntimeError):  # a lazily imported class whose backend is missing
            main_input_name = None
    found = [t for t in TASKS.values() if t.claims(class_name, main_input_name)]
    heads = [t for t in found if t.main_input_names is not None] or found
    if config is None or len(heads) < 2:
        return heads[0] if heads else None
    problem = problem_type_of(config)
    return next((t for t in heads if t.problem_type in (None, problem)), None)


def detect_task(model: Any) -> Task:
    """The task of a model, from its class name, its inputs (`Wav2Vec2ForSequenceClassification` ->
    audio-classification) and, for shared heads, its `config.problem_type`."""
    config = getattr(model, "config", None)
    main_input_name = getattr(model, "main_input_name", None)
    task = task_of_class(type(model).__name__, config, main_input_name if isinstance(main_input_name, str) else None)
    if task is not None:
        return task
    shared = _heads_of(type(model).__name__)
    if shared:
        known = ", ".join(f"{t.problem_type!r} ({t.name})" for t in shared)
        raise ValueError(
            f"cannot distil a {type(model).__name__} with problem_type={getattr(config, 'problem_type', None)!r}: "
            f"hf-distill distils the problem types {known}. Set config.problem_type to one of them."
        )
    heads = ", ".join(dict.fromkeys(suffix for task in TASKS.values() for suffix in task.class_suffixes))
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
