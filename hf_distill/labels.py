"""How datasets and batches spell their targets: the ignored label and the label columns, defined once.

The losses, the input checks, the teacher-output cache, the data preparation of the command and the metrics all
read these two names from here.
"""

from __future__ import annotations

__all__ = ["IGNORE_INDEX", "LABEL_COLUMNS"]

# A position (or an example) without a label: PyTorch's `cross_entropy` ignore_index, and what transformers'
# collators, `DataCollatorForLanguageModeling` and `Trainer`'s gathering of predictions pad with.
IGNORE_INDEX = -100
# The columns a dataset may hold its targets in, in the order they are looked for: `labels` as batches carry it,
# `label` (renamed `labels` by transformers' collators) and `label_ids`.
LABEL_COLUMNS = ("labels", "label", "label_ids")
