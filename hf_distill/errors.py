"""`DistillationSettingError`: a setting these models or this run cannot honour, with the setting's name attached.

It is a `ValueError` (so `except ValueError` and `pytest.raises(ValueError, match=...)` keep working); callers that
need to know *which* argument to change (the `hf-distill` command names its flag) read `.settings` instead of
parsing the message.
"""

from __future__ import annotations

__all__ = ["DistillationSettingError"]


class DistillationSettingError(ValueError):
    """A distillation setting that cannot be honoured; the message says why and how to fix it.

    Args:
        message (`str`): the error message (naming the argument, the bad value and the fix).
        settings (`str` or `tuple[str, ...]`): the `DistillationArguments` field(s) the message is about, e.g.
            `("gamma", "relation_weight")` when a model's attention cannot be recorded; the first is `.setting`.

    >>> error = DistillationSettingError("set hidden_weight=0", "hidden_weight")
    >>> error.setting, isinstance(error, ValueError)
    ('hidden_weight', True)
    """

    def __init__(self, message: str, settings: str | tuple[str, ...]) -> None:
        super().__init__(message)
        self.settings: tuple[str, ...] = (settings,) if isinstance(settings, str) else tuple(settings)
        if not self.settings:
            raise TypeError("DistillationSettingError needs the name of at least one setting.")

    @property
    def setting(self) -> str:
        """The (first) setting the error is about."""
        return self.settings[0]

    def __reduce__(self):  # picklable across processes (DDP workers, multiprocessing) with its settings
        return type(self), (str(self), self.settings)
