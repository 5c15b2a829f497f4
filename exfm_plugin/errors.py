"""The one error contract of every ``exfm`` command and of the Python API.

A bad input (a file, a column, a config key, a command-line value) is the user's to fix, so it
must end in one line that says what is wrong, where, and what was expected -- not in a
traceback. Every exception type the project raises for bad input derives from
:class:`ExfmInputError`; ``exfm_plugin.cli.main`` catches it (and the ``OSError`` of a user's
path: read-only, not a directory, missing) and prints::

    exfm <command>: <what is wrong>, <where>, <what was expected>

to stderr with exit status 2 (the traceback too with ``-v``). Anything else is a bug of ours and
keeps its traceback. ``ExfmInputError`` is a ``ValueError``, so code that caught ``ValueError``
keeps working.
"""
from __future__ import annotations

import errno
from typing import Any

__all__ = ["EXIT_INPUT", "ExfmInputError", "InputError", "check_choice", "format_input_error", "is_input_error"]

#: the exit status of every bad-input error
EXIT_INPUT = 2

#: errno values of an ``OSError`` that mean "the path the user gave cannot be used"
_USER_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EISDIR,
                          errno.ENOENT, errno.EEXIST, errno.ENOSPC, errno.ENAMETOOLONG, errno.ELOOP})


class ExfmInputError(ValueError):
    """Base of every bad-input error of the project (data files, configs, snapshots, options)."""


class InputError(ExfmInputError):
    """A bad input with its parts kept apart: ``what`` is wrong, ``where`` (file/row/column or
    key), ``expected``; ``str()`` joins them in the contract's order."""

    def __init__(self, what: str, *, where: Any = None, expected: str | None = None) -> None:
        self.what, self.where, self.expected = what, where, expected
        parts = [what]
        if where is not None:
            parts.append(f"in {where}")
        if expected is not None:
            parts.append(f"expected {expected}")
        super().__init__(", ".join(parts))


def is_input_error(exc: BaseException) -> bool:
    """Whether ``exc`` is the user's to fix: an :class:`ExfmInputError`, or an ``OSError`` about a
    named path (permission, read-only file system, not a directory, missing, full disk)."""
    if isinstance(exc, ExfmInputError):
        return True
    return isinstance(exc, OSError) and exc.errno in _USER_ERRNOS and exc.filename is not None


def format_input_error(command: str, exc: BaseException) -> str:
    """The one line ``exfm <command>: <message>`` for ``exc`` (newlines folded into '; ')."""
    if isinstance(exc, OSError) and not isinstance(exc, ExfmInputError) and exc.filename is not None:
        text = f"{exc.strerror or type(exc).__name__}, {exc.filename}"
        text += {errno.EACCES: ", expected a path this user may write/read",
                 errno.EPERM: ", expected a path this user may write/read",
                 errno.EROFS: ", expected a writable file system",
                 errno.ENOTDIR: ", expected every parent of the path to be a directory",
                 errno.EISDIR: ", expected a file, not a directory",
                 errno.ENOENT: ", expected an existing path",
                 errno.EEXIST: ", expected a path that does not exist yet"}.get(exc.errno or 0, "")
    else:
        text = str(exc) or type(exc).__name__
        if isinstance(exc, KeyError) and len(exc.args) == 1:
            text = str(exc.args[0])
    text = "; ".join(line.strip() for line in text.splitlines() if line.strip())
    return f"exfm {command}: {text}"


def check_choice(name: str, value: Any, choices) -> Any:
    """``value`` when it is one of ``choices``; else a ValueError naming the option, the value
    and the choices (``name='x' is not one of [...]``), the form of every option check."""
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not one of {list(choices)}")
    return value
