"""The errors jaxedit raises for bad input (as opposed to bugs).

`InputError` (a `ValueError`) means: something the caller passed is wrong — a file, a record, a
config value, a model — and the message names it and says how to fix it. Programs built on
jaxedit (the experiment binaries) catch it and print one line instead of a traceback; anything
else is a bug.
"""

from __future__ import annotations


class InputError(ValueError):
    """Bad input; the message names the input and the fix."""


class MissingFileError(InputError, FileNotFoundError):
    """A file or folder the caller named does not exist (also a `FileNotFoundError`)."""


class CorruptFileError(InputError):
    """A file exists but cannot be read as what it should be (not JSON, not an .npz, a bad
    header...); the message names the file and what to do with it."""


class TruncatedFileError(CorruptFileError):
    """A file ends before its own header says it should (an interrupted download or copy)."""
