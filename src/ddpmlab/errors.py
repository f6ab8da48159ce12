"""The one line a user sees for an error of their input or their disk, shared by the command line
and the page (`ddpmlab serve`), so both say the same thing."""
from __future__ import annotations

from .config import ConfigError


def error_line(e: BaseException) -> str | None:
    """The one line a user sees for an error of their input or their disk (`ddpmlab: error: ...`,
    exit 2), or None for one that is a bug and keeps its traceback. `serve` shows the same line."""
    from .checkpoint import CheckpointError
    from .data import DataError
    from .run import RunError
    if isinstance(e, (ConfigError, DataError, RunError, CheckpointError)):
        return f"ddpmlab: error: {e}"
    if isinstance(e, OSError):     # a full disk, a read-only folder, ...: one line naming the file
        import errno
        why = "the disk is full" if e.errno in (errno.ENOSPC, errno.EDQUOT) else (e.strerror or str(e))
        return f"ddpmlab: error: {e.filename or '?'}: {why}"
    return None
