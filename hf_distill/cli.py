"""The `hf-distill` command: teacher + data in, distilled student + comparison report out.

    hf-distill --teacher_model_name_or_path TEACHER --student_num_layers 6 \\
        --train_file train.tsv --validation_file dev.tsv --output_dir out --num_train_epochs 3
    hf-distill config.yaml          # the same options in a JSON or YAML file (flags after it override it)

It checks every input before any work, evaluates the teacher and the freshly built student, distils with
`DistillationTrainer`, evaluates the student again, and writes the model, tokenizer, `distillation_config.json`,
`training_history.json`, `report.json`, `report.md` and `training_curves.png` into `--output_dir`.
An `--output_dir` holding a run is resumed from its last checkpoint when the distillation settings match, and
refused otherwise (unless `--overwrite_output_dir`).
"""

from __future__ import annotations

import difflib
import json
import logging
import os
import re
import shutil
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path

from transformers import HfArgumentParser

from .args import DistillationArguments
from .artifacts import CONFIG_NAME
from .data import DataArguments
from .task_data import TASK_CHOICES

__all__ = ["ModelArguments", "RunArguments", "main", "parse_args", "run_distillation"]

logger = logging.getLogger(__name__)


@dataclass
class ModelArguments:
    """A ready student, the tokenizer and the task (the teacher and a built student are DistillationArguments')."""

    # The teacher (--teacher_model_name_or_path, --teacher_revision) and a student built from it
    # (--student_num_layers, --student_layers) are DistillationArguments fields, shared with DistillationTrainer.
    student_model_name_or_path: str | None = field(
        default=None, metadata={"help": "A ready student (path or Hub id). Or build one with --student_num_layers."}
    )
    tokenizer_name: str | None = field(
        default=None,
        metadata={"help": "Tokenizer (image classification: image processor) path or Hub id; defaults to the "
                  "teacher's."},
    )  # fmt: skip
    task: str | None = field(
        default=None,
        metadata={"help": f"The task: {', '.join(TASK_CHOICES)} (sequence classification of text pairs). Default: "
                  "from the teacher's config.architectures, else sequence-classification."},
    )  # fmt: skip

    trust_remote_code: bool = field(
        default=False,
        metadata={"help": "Allow custom modeling code from the teacher's, student's and tokenizer's folders or "
                  "repositories (only for code you trust)."},
    )  # fmt: skip

    def __post_init__(self) -> None:
        if self.task is not None and self.task not in TASK_CHOICES:
            raise ValueError(f"--task={self.task!r} is not a task hf-distill runs; choose one of "
                             f"{', '.join(TASK_CHOICES)} (or leave it out to read it from the teacher).")  # fmt: skip


@dataclass
class RunArguments:
    """What the command does around training."""

    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Start afresh in a --output_dir that holds a run (its checkpoint-* folders are deleted) "
                  "instead of resuming it."},
    )  # fmt: skip
    latency_samples: int = field(
        default=32, metadata={"help": "Single examples timed for the batch-size-1 latency in the report (0: skip)."}
    )
    augment: int = field(
        default=0,
        metadata={"help": "Transfer set: add this many augmented variants of each training example (0: off), "
                  "labelled by the teacher only (their cross-entropy term is skipped). Tang et al. 2019 / TinyBERT: "
                  "words masked or replaced by embedding neighbours (or --augment_masked_lm predictions), n-grams "
                  "sampled. Training set only; sequence classification and sentence pairs."},
    )  # fmt: skip
    augment_p_mask: float = field(default=0.1, metadata={"help": "--augment: probability a word is masked."})
    augment_p_replace: float = field(
        default=0.1, metadata={"help": "--augment: probability a word is replaced by a neighbour/MLM candidate."}
    )
    augment_p_ngram: float = field(
        default=0.25, metadata={"help": "--augment: probability a variant is cut to an n-gram of itself."}
    )
    augment_max_ngram: int = field(default=5, metadata={"help": "--augment: n-grams have 1..max_ngram words."})
    augment_top_k: int = field(
        default=15, metadata={"help": "--augment: candidates per word (embedding neighbours or MLM predictions)."}
    )
    augment_masked_lm: str | None = field(
        default=None,
        metadata={"help": "--augment: a *ForMaskedLM model (path) sharing the teacher's tokenizer, to replace "
                  "single-piece words by its predictions (TinyBERT); other words use the teacher's embedding "
                  "neighbours. Default: embedding neighbours only."},
    )  # fmt: skip

    def __post_init__(self) -> None:
        if self.augment < 0:
            raise ValueError(f"--augment={self.augment} must be >= 0: augmented variants per training example.")
        for name in ("augment_p_mask", "augment_p_replace", "augment_p_ngram"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"--{name}={getattr(self, name)} must be a probability in [0, 1].")
        if self.augment_p_mask + self.augment_p_replace > 1:
            raise ValueError(
                f"--augment_p_mask={self.augment_p_mask} + --augment_p_replace={self.augment_p_replace} > 1: a word "
                "is masked, replaced or kept, so the two must sum to at most 1."
            )
        for name in ("augment_max_ngram", "augment_top_k"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name}={getattr(self, name)} must be >= 1.")
        if self.augment == 0 and self.augment_masked_lm is not None:
            logger.warning("--augment_masked_lm is set but --augment is 0: no augmentation is done.")

    def augmentation_settings(self) -> dict:
        """The `--augment*` options, as recorded in `distillation_config.json` and the report."""
        return {
            "multiplier": self.augment, "p_mask": self.augment_p_mask, "p_replace": self.augment_p_replace,
            "p_ngram": self.augment_p_ngram, "max_ngram": self.augment_max_ngram, "top_k": self.augment_top_k,
            "masked_lm": self.augment_masked_lm,
        }  # fmt: skip


_DATACLASSES = (ModelArguments, DataArguments, RunArguments, DistillationArguments)


# ---- arguments ---------------------------------------------------------------------------------------------------


# The command recommends what the quality study found best (docs/benchmarks.md); `--recipe seed` restores the
# lab notebook's weighting, which stays the default of `DistillationArguments` in Python.
COMMAND_RECIPE = "recommended"


def _read_config_file(path: str) -> list[str]:
    """A JSON/YAML file of options as command-line arguments; unknown keys refused with the closest known names."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"config file {path!r}: no such file.")
    text = Path(path).read_text(encoding="utf-8")
    if path.endswith(".json"):
        data = json.loads(text)
    else:
        import yaml

        data = yaml.safe_load(text)  # plain data only: nothing in the file is executed
    if not isinstance(data, dict):
        raise ValueError(f"config file {path!r} must hold a mapping of option names to values.")
    known = [f.name for cls in _DATACLASSES for f in fields(cls) if f.init]
    unknown = [key for key in data if key not in known]
    if unknown:
        described = []
        for key in unknown:
            close = difflib.get_close_matches(key, known, n=1)
            described.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise ValueError(
            f"config file {path!r} has unknown option(s): {', '.join(described)}. Options are the command-line "
            "flags without the leading '--' (see hf-distill --help)."
        )
    argv = []
    for key, value in data.items():  # the command line's own parsing then converts and checks every value
        if value is None:
            continue
        argv.append(f"--{key}")
        if isinstance(value, (list, tuple)):
            argv += [str(v) for v in value]
        elif isinstance(value, bool):
            argv.append("true" if value else "false")
        elif isinstance(value, dict):
            argv.append(json.dumps(value))
        else:
            argv.append(str(value))
    return argv


def parse_args(argv: list[str] | None = None):
    """`(ModelArguments, DataArguments, RunArguments, DistillationArguments)` from the command line.

    A first argument ending in `.json`, `.yaml` or `.yml` is a file of options; flags after it override it:
    `hf-distill recipe.yaml --max_steps 100`.
    """
    parser = HfArgumentParser(
        _DATACLASSES,
        prog="hf-distill",
        description="Distil a fine-tuned teacher into a smaller student; a first argument ending in .json, .yaml or "
        ".yml is a file of options (flags after it override it).",
    )
    parser.set_defaults(recipe=COMMAND_RECIPE)
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0].endswith((".json", ".yaml", ".yml")):
        argv = _read_config_file(argv[0]) + argv[1:]
    return parser.parse_args_into_dataclasses(args=argv)


# ---- output directory ----------------------------------------------------------------------------------------------

_CHECKPOINT = re.compile(r"^checkpoint-\d+$")


def _checkpoints(output_dir: Path) -> list[Path]:
    if not output_dir.is_dir():
        return []
    return [p for p in output_dir.iterdir() if p.is_dir() and _CHECKPOINT.match(p.name)]


def check_output_dir(output_dir: str, overwrite: bool, resume_from_checkpoint: str | None) -> str | None:
    """The checkpoint to resume from (`None`: a fresh run); refuses a non-empty folder that cannot be resumed."""
    from transformers.trainer_utils import get_last_checkpoint

    if resume_from_checkpoint and overwrite:
        raise ValueError(
            f"--resume_from_checkpoint={resume_from_checkpoint!r} and --overwrite_output_dir contradict each other: "
            "drop one."
        )
    if resume_from_checkpoint:
        if not (Path(resume_from_checkpoint) / CONFIG_NAME).is_file():
            raise FileNotFoundError(
                f"--resume_from_checkpoint={resume_from_checkpoint!r} has no {CONFIG_NAME}: not a checkpoint of a "
                "hf-distill run."
            )
        return resume_from_checkpoint
    path = Path(output_dir)
    if overwrite or not path.is_dir() or not any(path.iterdir()):
        return None
    last = get_last_checkpoint(str(path))
    if last is None or not (Path(last) / CONFIG_NAME).is_file():
        raise ValueError(
            f"--output_dir={output_dir!r} already exists, is not empty, and holds no hf-distill checkpoint to resume "
            "from. Pass --overwrite_output_dir to write over it, or choose another --output_dir."
        )
    return last


def check_resumable(checkpoint: str, expected: dict) -> None:
    """Refuse to resume `checkpoint` when its recorded distillation settings differ from `expected`."""
    recorded = json.loads((Path(checkpoint) / CONFIG_NAME).read_text(encoding="utf-8"))
    differences = []
    for key, value in expected.items():
        old = recorded.get(key)
        if key == "teacher_model" and old and value and os.path.realpath(old) == os.path.realpath(value):
            continue
        if key == "recipe":  # only how the values were chosen: the values themselves are compared
            continue
        if old != value:
            differences.append(f"{key}: checkpoint {old!r}, now {value!r}")
    if differences:
        raise ValueError(
            f"cannot resume from {checkpoint}: its distillation settings differ from this run's "
            f"({'; '.join(differences)}). Rerun with the checkpoint's settings to resume, pass "
            "--overwrite_output_dir to start afresh, or choose another --output_dir."
        )


def remove_checkpoints(output_dir: str) -> None:
    for checkpoint in _checkpoints(Path(output_dir)):
        logger.warning("--overwrite_output_dir: deleting the previous run's %s", checkpoint)
        shutil.rmtree(checkpoint)


# ---- the run -------------------------------------------------------------------------------------------------------


def run_distillation(model_args, data_args, run_args, training_args, notes=None, data_description=None) -> dict:
    """Check, evaluate, distil, evaluate, save, report. Returns the report (also in `report.json`)."""
    from .workflow import execute_run, prepare_run

    run = prepare_run(model_args, data_args, run_args, training_args, data_description=data_description)
    return execute_run(run, notes=notes)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `hf-distill` console script and of `python -m hf_distill`."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    logging.getLogger("hf_distill").setLevel(logging.INFO)
    try:
        model_args, data_args, run_args, training_args = parse_args(argv)
        from .workflow import prepare_run

        run = prepare_run(model_args, data_args, run_args, training_args)
    except (ValueError, FileNotFoundError) as error:  # bad input: say what and how to fix it, no traceback
        print(f"hf-distill: error: {error}", file=sys.stderr)
        return 2
    from .report import render_markdown
    from .workflow import execute_run

    print(render_markdown(execute_run(run)), end="")
    return 0
