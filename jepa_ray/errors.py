"""The errors a user can cause, and how any error is shown in one line.

A `UsageError` is bad input (a flag, a config value, a data directory, a tracking URI, a Ray
address): the command lines print its message as one line and exit 2 before any work starts.
`ConfigError` is the usage error of a trial config field; its message names the field and what
is allowed.

`StorageFull` is a full disk (or an exhausted quota) under a path the sweep writes: no fault of a
trial or of the input, so a sweep stops on it as on Ctrl-C and `--resume` goes on once space is
freed; its message is one line naming the path."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import sqlite3
from collections.abc import Iterator

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


FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
"""What a write says when the device holding it is full or the user's quota is spent."""
SQLITE_FULL = 13
"""sqlite's own "database or disk is full" (`sqlite3.SQLITE_FULL` from Python 3.11)."""


class StorageFull(RuntimeError):
    """A write found no space left on the device holding `path`; the message is one line that
    names the path and what to do: rerun with --resume (`resume`; False: before anything was
    recorded, so rerun as before). `find` reads it back from a trial's reported failure."""

    PATTERN = re.compile(r"no space left on device writing (.+?): free space and rerun( with --resume)?")

    def __init__(self, path: str, resume: bool = True):
        self.path, self.resume = str(path), resume
        then = " with --resume" if resume else ""
        super().__init__(f"no space left on device writing {self.path}: free space and rerun{then}")

    def __reduce__(self):
        return (StorageFull, (self.path, self.resume))

    @classmethod
    def find(cls, text: str | None) -> StorageFull | None:
        """The StorageFull whose message `text` holds (a failure a trial reported, a Ray error
        wrapping one), or None."""
        match = cls.PATTERN.search(text or "")
        return cls(match.group(1), resume=bool(match.group(2))) if match else None


def storage_full(err: BaseException, where: str) -> StorageFull | None:
    """A StorageFull when `err` or what caused it is a full device: an OSError with ENOSPC or
    EDQUOT (naming the file it names, else `where`) or sqlite's SQLITE_FULL (naming `where`, the
    database); None for any other error."""
    for cause in causes(err):
        if isinstance(cause, StorageFull):
            return cause
        if isinstance(cause, OSError) and cause.errno in FULL_ERRNOS:
            return StorageFull(cause.filename or where)
        if isinstance(cause, sqlite3.Error) and _sqlite_full(cause):
            return StorageFull(where)
    return None


@contextlib.contextmanager
def writing(path: str | os.PathLike) -> Iterator[None]:
    """Inside it, a write that finds its device full raises StorageFull naming `path` (what is
    being written: a checkpoint rather than the hidden temporary file it is written through)."""
    try:
        yield
    except StorageFull:
        raise
    except Exception as err:
        if storage_full(err, str(path)) is None:
            raise
        raise StorageFull(str(path)) from err


def _sqlite_full(err: sqlite3.Error) -> bool:
    """Whether sqlite said SQLITE_FULL (its code from Python 3.11, its message before)."""
    code = getattr(err, "sqlite_errorcode", None)
    return code == SQLITE_FULL if code is not None else "database or disk is full" in str(err)


def causes(err: BaseException) -> Iterator[BaseException]:
    """`err` and the exceptions it was raised from or while handling, each once."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = err.__cause__ or err.__context__
