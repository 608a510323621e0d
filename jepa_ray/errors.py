"""The errors a user can cause, and how any error is shown in one line.

A `UsageError` is bad input (a flag, a config value, a data directory, a tracking URI, a Ray
address): the command lines print its message as one line and exit 2 before any work starts.
`ConfigError` is the usage error of a trial config field; its message names the field and what
is allowed."""

from __future__ import annotations

MAX_LINE = 5000
"""The longest one-line message kept (an MLflow tag holds 5000 characters)."""


class UsageError(ValueError):
    """Bad input; the message is one line naming the input and what is allowed."""


class ConfigError(UsageError):
    """A trial config value is not allowed; the message names the field and what is allowed."""


def one_line(what: str | BaseException, limit: int = MAX_LINE) -> str:
    """One line for a log, a tag or a summary: the last non-empty line of a message (a traceback
    or a Ray error ends with its cause), or the exception's type when it has no message."""
    text = str(what).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if lines:
        return lines[-1][:limit]
    return type(what).__name__ if isinstance(what, BaseException) else "unknown failure"
