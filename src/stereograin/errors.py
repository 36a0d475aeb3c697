"""The one exception type users see for bad input.

Every check on user input raises :class:`StereograinError` with a one-line
message that says what is wrong and how to fix it. The CLI prints the message
alone (no traceback). It subclasses ``ValueError`` so that Python callers can
catch it as the usual "bad value" error.
"""

from __future__ import annotations

__all__ = ["StereograinError"]


class StereograinError(ValueError):
    """Bad input: the message is one line naming the problem and the fix."""
