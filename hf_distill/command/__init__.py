"""The `hf-distill` command, apart from the library: it imports `hf_distill` and nothing in `hf_distill` imports it.

`cli` (the entry point, `main`), `command_args` (its argument dataclasses and config files), `workflow` (check,
evaluate, distil, evaluate, save), `output_dir` (when a folder is resumed or refused), `evaluation` (timed teacher and
student evaluation), `report` (`report.json`, `report.md`), `plots` (`training_curves.png`) and `demo`
(`hf-distill-demo`). See docs/architecture.md for the layers.
"""

from .cli import main

__all__ = ["main"]
