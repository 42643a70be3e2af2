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

import logging
import sys

# The arguments and the output folder's rules live in their own modules (which `workflow` imports, never this
# entry point); they stay importable from here as before.
from .command_args import COMMAND_RECIPE, ModelArguments, RunArguments, parse_args  # noqa: F401
from .output_dir import check_output_dir, check_resumable, remove_checkpoints  # noqa: F401

__all__ = ["ModelArguments", "RunArguments", "main", "parse_args", "run_distillation"]

logger = logging.getLogger(__name__)

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
