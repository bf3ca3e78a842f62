"""genrank's own refusals: a message for a human, one line, naming the field and the value.

Every error genrank raises on purpose about what it was given derives from ``GenrankError``
(a ``ValueError``, so ``except ValueError`` keeps working) or is a ``MissingExtra``. Anything
else that escapes genrank is unexpected, and the CLI shows its traceback.
"""

from __future__ import annotations


class GenrankError(ValueError):
    """genrank refused what it was given; the message says what and why."""


class InputError(GenrankError):
    """A value passed to genrank (a pair, a field, a file, an option) that it cannot use."""


class ResumeError(GenrankError):
    """An output that this run will not resume: another run's settings or input, or not genrank output."""


class MissingExtra(ImportError):
    """An optional dependency is not installed; the message names the ``pip install 'genrank[extra]'`` line."""


__all__ = ["GenrankError", "InputError", "MissingExtra", "ResumeError"]
