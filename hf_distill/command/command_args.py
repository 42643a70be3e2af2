"""The `hf-distill` command's own arguments (the model choice and what the run does around training), and parsing
the command line or a JSON/YAML file of options into them and the library's `DistillationArguments`."""

from __future__ import annotations

import difflib
import json
import logging
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path

from transformers import HfArgumentParser

from ..args import DistillationArguments
from ..data import DataArguments
from ..task_data import TASK_CHOICES

__all__ = ["COMMAND_RECIPE", "ModelArguments", "RunArguments", "parse_args"]

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
        metadata={"help": "Tokenizer (audio: feature extractor; images: image processor) path or Hub id; defaults to "
                  "the teacher's."},
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
