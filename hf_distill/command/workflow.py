"""The end-to-end run behind `hf-distill`: `prepare_run` checks and builds everything, `execute_run` does the work.

`prepare_run` loads nothing heavier than the models and the data, and raises `ValueError`/`FileNotFoundError` on
bad input before any evaluation or training starts. `execute_run` evaluates the teacher and the student as
built, distils, evaluates the student again, saves it, and writes the report and the plot.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from ..args import DistillationArguments
from ..artifacts import CONFIG_NAME, HISTORY_NAME, training_history
from ..augment import augment_dataset, embedding_neighbours
from ..checks import check_same_labels, check_tokenizer_fits
from ..data import DataArguments
from ..errors import DistillationSettingError
from ..modeling import count_layers, count_parameters
from ..results import RESULTS_NAME, DistillationResults, write_results
from ..task_data import TaskData, prepare_task_data, resolve_task
from ..task_metrics import TaskMetrics, task_metrics
from ..tasks import Task
from ..terms import TEACHER_INTERNALS, registered_terms
from ..trainer import DistillationTrainer
from .command_args import ModelArguments, RunArguments
from .evaluation import evaluate_model
from .output_dir import check_output_dir, check_resumable, remove_checkpoints
from .plots import PLOT_NAME, plot_training_curves
from .report import REPORT_JSON, REPORT_MD, compare, speedup, write_report

__all__ = ["PreparedRun", "execute_run", "prepare_run"]

logger = logging.getLogger(__name__)


@dataclass
class PreparedRun:
    """Everything `execute_run` needs, all inputs already checked."""

    trainer: DistillationTrainer
    teacher: nn.Module
    student: nn.Module
    tokenizer: Any
    eval_dataset: Any
    collator: Any
    resume_from: str | None
    metrics: TaskMetrics
    run_args: RunArguments
    model_args: ModelArguments
    description: dict[str, Any]


def _local_or_hub(option: str, name: str) -> None:
    """Fail fast on a path that does not exist, instead of asking the Hub for it."""
    if not Path(name).exists() and (name.startswith((".", "/", "~")) or name.count("/") > 1):
        raise FileNotFoundError(f"--{option}={name!r}: no such folder (and not a Hub id of the form 'org/name').")


def _load(option: str, name: str, loader, **kwargs):
    _local_or_hub(option, name)
    try:
        return loader.from_pretrained(name, **kwargs)
    except OSError as error:
        raise ValueError(
            f"--{option}={name!r} could not be loaded ({str(error).splitlines()[0][:300]}). Give a folder written by "
            "save_pretrained, or a Hub id when the Hub is reachable."
        ) from error


def _check_vocabulary(tokenizer, model: nn.Module, role: str) -> None:
    """`checks.check_tokenizer_fits`, worded for the command, before anything is built from the tokenizer."""
    fix = (
        f"It is not the {role}'s tokenizer. Use the teacher's tokenizer (drop --tokenizer_name or point it at the "
        "teacher) and a student with the teacher's vocabulary."
    )
    source = getattr(tokenizer, "name_or_path", None) or type(tokenizer).__name__
    check_tokenizer_fits(tokenizer, model, role, option=f"tokenizer {source!r}", fix=fix)


def _ensure_padding_token(tokenizer) -> None:
    """Batches are padded: a tokenizer without a padding token (GPT-2, Llama) pads with its end-of-text token."""
    if tokenizer.pad_token is not None:
        return
    if tokenizer.eos_token is None:
        raise ValueError(
            f"the tokenizer ({type(tokenizer).__name__}) has neither a padding nor an end-of-text token, so batches "
            "cannot be padded. Save the tokenizer with a pad_token and pass it with --tokenizer_name."
        )
    logger.warning("The tokenizer has no padding token: padding with its end-of-text token %r.", tokenizer.eos_token)
    tokenizer.pad_token = tokenizer.eos_token


def _check_sequence_length(max_seq_length: int, tokenizer, config) -> None:
    limits = {"the teacher's max_position_embeddings": getattr(config, "max_position_embeddings", None)}
    if getattr(tokenizer, "model_max_length", None) and tokenizer.model_max_length < 1_000_000:
        limits["the tokenizer's model_max_length"] = tokenizer.model_max_length
    for what, limit in limits.items():
        if limit is not None and max_seq_length > limit:
            raise ValueError(f"--max_seq_length={max_seq_length} is more than {what} ({limit}); use at most {limit}.")


def _check_unfinished(trainer: DistillationTrainer, checkpoint: str) -> None:
    """Refuse to "resume" a run whose training is already complete.

    (transformers 5.x `Trainer.train(resume_from_checkpoint=...)` from a checkpoint at `max_steps` runs one more
    optimizer step instead of stopping.)
    """
    state_file = Path(checkpoint) / "trainer_state.json"
    if not state_file.is_file():
        raise FileNotFoundError(f"{checkpoint} has no trainer_state.json: it cannot be resumed.")
    done = json.loads(state_file.read_text(encoding="utf-8")).get("global_step", 0)
    planned = trainer.set_initial_training_values(trainer.args, trainer.get_train_dataloader())[-1]
    if done >= planned:
        raise ValueError(
            f"{checkpoint} is a finished run ({done} of {planned} training steps done): nothing is left to resume. "
            "Pass --overwrite_output_dir to train again from scratch, raise --max_steps or --num_train_epochs to "
            "train further, or choose another --output_dir."
        )


def _loaded_student(model_args: ModelArguments, teacher: nn.Module, auto_class, remote: dict) -> nn.Module | None:
    """The student from --student_model_name_or_path, checked to have the teacher's labels; `None` when
    --student_num_layers has `DistillationTrainer` build it from the teacher's layers."""
    if model_args.student_model_name_or_path is None:
        return None
    student = _load("student_model_name_or_path", model_args.student_model_name_or_path, auto_class, **remote)
    check_same_labels(student, teacher, strict=True)  # a saved student naming other classes is another task's
    return student


def _check_model_choice(model_args: ModelArguments, training_args: DistillationArguments) -> None:
    """One teacher and exactly one student source, named on the command line."""
    if training_args.teacher_model_name_or_path is None:
        raise ValueError(
            "--teacher_model_name_or_path is required: the fine-tuned teacher, a save_pretrained folder or Hub id."
        )
    if (model_args.student_model_name_or_path is None) == (training_args.student_num_layers is None):
        raise ValueError(
            "give exactly one student: --student_model_name_or_path PATH, or --student_num_layers N to build it "
            f"from the teacher (got student_model_name_or_path={model_args.student_model_name_or_path!r}, "
            f"student_num_layers={training_args.student_num_layers!r})."
        )


def prepare_run(
    model_args: ModelArguments,
    data_args: DataArguments,
    run_args: RunArguments,
    training_args: DistillationArguments,
    data_description: str | None = None,
) -> PreparedRun:
    """Check every input and build teacher, student, data and trainer. Raises on bad input; trains nothing."""
    import transformers
    from transformers import AutoConfig

    if run_args.latency_samples < 0:
        raise ValueError(f"--latency_samples must be >= 0, got {run_args.latency_samples}.")
    resume_from = check_output_dir(
        training_args.output_dir, run_args.overwrite_output_dir, training_args.resume_from_checkpoint
    )
    _check_model_choice(model_args, training_args)
    remote = {"trust_remote_code": model_args.trust_remote_code}
    teacher_path = training_args.teacher_model_name_or_path
    revision = {"revision": training_args.teacher_revision} if training_args.teacher_revision else {}
    teacher_remote = {"trust_remote_code": model_args.trust_remote_code or training_args.teacher_trust_remote_code}
    teacher_config = _load("teacher_model_name_or_path", teacher_path, AutoConfig, **teacher_remote, **revision)
    task, pair = resolve_task(model_args.task, teacher_config)
    auto_class = getattr(transformers, task.auto_class)
    tokenizer_name = model_args.tokenizer_name or teacher_path
    processor_option = "tokenizer_name" if model_args.tokenizer_name else "teacher_model_name_or_path"
    processor_class = getattr(transformers, task.processor_auto_class)  # AutoTokenizer for text
    tokenizer = _load(processor_option, tokenizer_name, processor_class, **remote)  # or a feature extractor
    if task.reads_text:
        _check_sequence_length(data_args.max_seq_length, tokenizer, teacher_config)
        _ensure_padding_token(tokenizer)

    def load_teacher_model():
        return _load("teacher_model_name_or_path", teacher_path, auto_class, **teacher_remote, **revision)

    teacher = None
    if not task.reads_text:  # the feature extractor is checked against the teacher before any audio is read
        teacher = load_teacher_model()
        task.check_processor(tokenizer, teacher, processor_option)

    transfer_set = None
    if run_args.augment:
        transfer_set = _TransferSet(run_args, load_teacher_model, tokenizer, training_args, remote)
    data = prepare_task_data(task, pair, data_args, tokenizer, teacher_config, augment=transfer_set)
    if data.uncacheable and training_args.teacher_cache_dir is not None:
        raise ValueError(f"--teacher_cache_dir={training_args.teacher_cache_dir!r} stores the teacher's outputs on "
                         f"fixed training rows, but {data.uncacheable}. Drop one of them.")  # fmt: skip
    metrics = task_metrics(task, teacher_config, data.references)
    metrics.tokenizer, metrics.max_target_length = tokenizer, data_args.max_target_length  # seq2seq generates

    if teacher is None:
        teacher = transfer_set.teacher if transfer_set else load_teacher_model()
    student = _loaded_student(model_args, teacher, auto_class, remote)
    if not task.reads_text:
        if student is not None:
            task.check_processor(tokenizer, student, processor_option)
    else:
        _check_vocabulary(tokenizer, teacher, "teacher")
        if student is not None:
            _check_vocabulary(tokenizer, student, "student")
    for model in (teacher, student):  # decoder-only classifiers find the last real token through pad_token_id
        if task.reads_text and model is not None and getattr(model.config, "pad_token_id", None) is None:
            model.config.pad_token_id = tokenizer.pad_token_id

    train, evaluation = data.train, data.evaluation
    # Without a loaded student, --student_num_layers/--student_layers have the trainer build it from the teacher.
    trainer_class, training_args = _command_trainer(task, training_args, data_args)  # seq2seq: generation
    trainer = _trainer(trainer_class, task, student or teacher, teacher, training_args, data, tokenizer, metrics)
    trainer.augmentation = transfer_set.record if transfer_set else data.augmentation  # distillation_config.json
    if student is None:
        student = trainer.model
        source = f"built from teacher layers {student.config.distillation_teacher_layers}"
    else:
        source = f"`{model_args.student_model_name_or_path}`"
    if resume_from is not None:  # the settings DistillationTrainer.train() compares too, refused here before any work
        if not training_args.allow_resume_with_different_settings:
            check_resumable(resume_from, trainer.distillation_record())
        _check_unfinished(trainer, resume_from)
        logger.info("Resuming from %s (its distillation settings match this run's).", resume_from)
    elif run_args.overwrite_output_dir:
        remove_checkpoints(training_args.output_dir)

    if data_args.dataset_name:
        default_description = f"Hub dataset `{data_args.dataset_name}` ({data_args.dataset_config_name or 'default'})."
    else:
        default_description = f"`{data_args.train_file}` (train) and `{data_args.validation_file}` (evaluation)."
    description = {
        "description": data_description or default_description,
        "task": task.command_name(pair),
        "num_train": len(train),
        "num_eval": len(evaluation) if data.references is None else data.references.num_examples,
        **({} if data.references is None else {"num_eval_features": len(evaluation)}),  # QA: windows of long contexts
        **data.columns,
        **({"max_seq_length": data_args.max_seq_length} if task.reads_text else {}),
        **({"augmentation": trainer.augmentation} if trainer.augmentation else {}),
        "student_source": source,
    }
    return PreparedRun(trainer, teacher, student, tokenizer, evaluation, data.collator, resume_from, metrics,
                       run_args, model_args, description)  # fmt: skip


class _TransferSet:
    """`--augment`: the training split plus its augmented variants (label -100), made once every input is checked.

    Replacement words are the teacher's input-embedding neighbours, and `--augment_masked_lm`'s predictions for
    single-piece words when given. The teacher loaded here is the run's teacher (loaded once).
    """

    def __init__(self, run_args: RunArguments, load_teacher, tokenizer, training_args, remote: dict) -> None:
        if run_args.augment_masked_lm is not None:
            _local_or_hub("augment_masked_lm", run_args.augment_masked_lm)
        self.run_args, self.load_teacher, self.tokenizer = run_args, load_teacher, tokenizer
        self.seed, self.device, self.remote = training_args.seed, training_args.device, remote
        self.teacher, self.record = None, None

    def __call__(self, train, text_columns: list[str]):
        from transformers import AutoModelForMaskedLM

        args = self.run_args
        self.teacher = self.load_teacher()
        masked_lm = None
        if args.augment_masked_lm is not None:
            masked_lm = _load("augment_masked_lm", args.augment_masked_lm, AutoModelForMaskedLM, **self.remote)
            _check_vocabulary(self.tokenizer, masked_lm, "masked LM (--augment_masked_lm)")
            masked_lm = masked_lm.to(self.device).eval()
        logger.info("--augment %d: making up to %d variants of %d training examples", args.augment,
                    args.augment * len(train), len(train))  # fmt: skip
        augmented = augment_dataset(
            train, text_columns, args.augment, tokenizer=self.tokenizer, label_column="label",
            word_neighbours=embedding_neighbours(self.teacher, self.tokenizer, top_k=args.augment_top_k),
            masked_lm=masked_lm, p_mask=args.augment_p_mask, p_replace=args.augment_p_replace,
            p_ngram=args.augment_p_ngram, max_ngram=args.augment_max_ngram, top_k=args.augment_top_k, seed=self.seed,
        )  # fmt: skip
        self.record = {**args.augmentation_settings(), "seed": self.seed, "labelled_rows": len(train),
                       "augmented_rows": len(augmented) - len(train)}  # fmt: skip
        return augmented


def _command_trainer(task: Task, training_args, data_args) -> tuple[type[DistillationTrainer], Any]:
    """The trainer class the command runs and its arguments: `DistillationSeq2SeqTrainer` for the tasks that
    generate, evaluating on generated text up to `--max_target_length` tokens; else `DistillationTrainer`."""
    if not task.generates:
        return DistillationTrainer, training_args
    from ..seq2seq_trainer import DistillationSeq2SeqTrainer, seq2seq_arguments

    generation = {"predict_with_generate": True, "generation_max_length": data_args.max_target_length + 1}
    return DistillationSeq2SeqTrainer, seq2seq_arguments(training_args, **generation)


def _layer_term_weights() -> tuple[str, ...]:
    """The weights of the terms that need more than the logits (model internals): setting one to 0 turns it off."""
    return tuple(term.weight for term in registered_terms() if not term.needs.isdisjoint(TEACHER_INTERNALS))


def _trainer(trainer_class: type[DistillationTrainer], task: Task, student, teacher, training_args, data: TaskData,
             tokenizer, metrics: TaskMetrics):  # fmt: skip
    """The task's `DistillationTrainer`; when it refuses a term the models cannot provide, the error names the flag."""
    try:
        return trainer_class(
            model=student, teacher_model=teacher, args=training_args, train_dataset=data.train,
            eval_dataset=data.evaluation, processing_class=tokenizer, data_collator=data.collator,
            compute_metrics=lambda prediction: metrics.compute(prediction.predictions, prediction.label_ids),
            preprocess_logits_for_metrics=metrics.preprocess,
        )  # fmt: skip
    except DistillationSettingError as error:  # the weights that turn the refused term off, where they are on
        names = [n for n in error.settings if n in _layer_term_weights() and getattr(training_args, n) > 0]
        if not names:
            raise
        flags = " ".join(f"--{n} 0" for n in names)
        settings = ", ".join(f"{n}={getattr(training_args, n)}" for n in names)
        recipe = f"--recipe {training_args.recipe}" if training_args.recipe else "the default recipe"
        raise DistillationSettingError(
            f"{error} On the command line add {flags} ({recipe} sets {settings}), or use --recipe logits (the "
            "quality study's best setting from the logits alone).",
            error.settings,
        ) from error


def execute_run(run: PreparedRun, notes: list[str] | None = None) -> dict[str, Any]:
    """Evaluate teacher and student, distil, evaluate the student, save everything. Returns the report."""
    trainer, args = run.trainer, run.trainer.args
    primary = run.metrics.primary
    batch = args.per_device_eval_batch_size

    def timed_evaluation(model: nn.Module, what: str):
        logger.info("Evaluating %s on %d examples (batch size %d)", what, run.description["num_eval"], batch)
        result = evaluate_model(model, run.eval_dataset, run.collator, run.metrics, batch, args.device,
                                latency_samples=run.run_args.latency_samples)  # fmt: skip
        logger.info("%s: %s", what, {k: round(v, 4) for k, v in result.metrics.items()})
        return result

    teacher_eval = timed_evaluation(run.teacher, "the teacher")
    before_eval = timed_evaluation(run.student, "the student before distillation")
    trainer.train(resume_from_checkpoint=run.resume_from)
    last_eval = next((e for e in reversed(trainer.state.log_history) if "eval_loss" in e), None)
    if last_eval is not None and last_eval.get("step") == trainer.state.global_step:
        final_eval = {k: v for k, v in last_eval.items() if k.startswith("eval_")}  # evaluated at the last step
    else:
        final_eval = trainer.evaluate()
    trainer.save_model()  # model, tokenizer, distillation_config.json, training_history.json
    trainer.save_state()
    after_eval = timed_evaluation(trainer.model, "the student after distillation")

    record = trainer.distillation_record()
    report = _build_report(run, record, teacher_eval, before_eval, after_eval, final_eval, notes or [])
    if trainer.is_world_process_zero():
        output_dir = Path(args.output_dir)
        history = training_history(trainer.state.log_history)
        plot, reason = plot_training_curves(history, output_dir / PLOT_NAME, metric=primary,
                                            teacher_metric=teacher_eval.metrics[primary],
                                            student_before_metric=before_eval.metrics[primary])  # fmt: skip
        if plot is None:
            logger.warning("No %s: %s", PLOT_NAME, reason)
            report["files"][PLOT_NAME] = f"not written: {reason}"
        write_report(output_dir, report)
        write_results(output_dir, _card_results(report))
        trainer.create_model_card()  # again, now with the measured results and speed-up
        logger.info("Wrote the student, %s and %s to %s", REPORT_JSON, REPORT_MD, os.path.abspath(output_dir))
    return report


def _card_results(report: dict[str, Any]) -> DistillationResults:
    """What the model card shows of the report, in the library's layout (`distillation_results.json`)."""
    evaluation, speed = report["evaluation"], report["speed"]
    return DistillationResults(
        metric=report["metric"],
        teacher=evaluation["teacher"]["metrics"],
        student_before=evaluation["student_before"]["metrics"],
        student_after=evaluation["student_after"]["metrics"],
        speedup=speed["latency_speedup"],
        latency={key: speed[key] for key in ("device", "batch_size", "latency_samples")},
    )


def _build_report(run, record, teacher_eval, before_eval, after_eval, final_eval, notes) -> dict[str, Any]:
    args = run.trainer.args
    teacher_params, student_params = count_parameters(run.teacher), count_parameters(run.trainer.model)
    t_latency, s_latency = teacher_eval.latency_ms_batch1, after_eval.latency_ms_batch1
    primary = run.metrics.primary  # higher is better, for every task
    texts = run.trainer.task.reads_text
    processor_files = "tokenizer files" if texts else "preprocessor_config.json"
    return {
        "title": "Distillation report",
        "notes": notes,
        "task": run.description["task"],
        "metric": primary,
        "teacher": {
            "name_or_path": record.teacher_model,
            "architecture": record.teacher_architecture,
            "num_parameters": teacher_params,
            "num_layers": count_layers(run.teacher),
        },
        "student": {
            "source": run.description["student_source"],
            "architecture": record.student_architecture,
            "num_parameters": student_params,
            "num_layers": count_layers(run.trainer.model),
            "layers_from_teacher": record.student_layers_from_teacher,
        },
        "data": {k: v for k, v in run.description.items() if k != "student_source"},
        "evaluation": {
            "teacher": teacher_eval.to_dict(),
            "student_before": before_eval.to_dict(),
            "student_after": after_eval.to_dict(),
        },
        "comparison": compare(
            teacher_eval.metrics[primary],
            before_eval.metrics[primary],
            after_eval.metrics[primary],
            teacher_params,
            student_params,
        ),  # fmt: skip
        "speed": {
            "device": str(args.device),
            "batch_size": args.per_device_eval_batch_size,
            "latency_samples": after_eval.latency_samples,
            "throughput_speedup": speedup(teacher_eval.examples_per_second, after_eval.examples_per_second),
            "latency_speedup": t_latency / s_latency if t_latency and s_latency else None,
        },
        "training": {
            "global_step": record.global_step,
            "training_time_seconds": record.training_time_seconds,
            "resumed_from": run.resume_from,
            "final_eval": final_eval,
            "settings": {
                **args.distillation_settings(),
                "layer_map": record.layer_map,
                "learning_rate": args.learning_rate,
                "per_device_train_batch_size": args.per_device_train_batch_size,
                "gradient_accumulation_steps": args.gradient_accumulation_steps,
                "num_train_epochs": record.num_train_epochs,
                "max_steps": args.max_steps,
                "epochs_trained": record.epochs_trained,
                "global_step": record.global_step,
                "training_time_seconds": record.training_time_seconds,
                "seed": args.seed,
            },
        },
        "files": {
            "config.json, model.safetensors": "the distilled student (reload with from_pretrained)",
            processor_files: "the teacher's processor (tokenizer, feature extractor or image processor), unchanged",
            CONFIG_NAME: "teacher, student, settings, layer map, compression, versions",
            HISTORY_NAME: "per-term training losses, eval metrics, learning rate by step",
            f"{REPORT_JSON}, {REPORT_MD}": "this comparison",
            RESULTS_NAME: "the measured results the model card shows",
            PLOT_NAME: f"total loss, loss terms, eval {primary}, learning rate",
        },
    }
