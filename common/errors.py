"""Errors that point the user at the file, the entry and the fix."""

from __future__ import annotations


class JJepaError(Exception):
    """Base class of the errors jjepa reports to users (the CLI prints them without a traceback)."""


class InputError(JJepaError):
    """A problem with an input file: unreadable, missing branches, or a bad jet.

    Args:
        path: the input file.
        problem: what is wrong, in one sentence.
        entry: the entry (jet index in the file) where it was found, if it is about one jet.
        hint: how to fix it, if there is something the user can do.
    """

    def __init__(self, path: str, problem: str, entry: int | None = None, hint: str | None = None):
        self.path = str(path)
        self.problem = problem
        self.entry = entry
        self.hint = hint
        where = self.path if entry is None else f"{self.path}, entry {entry}"
        message = f"{where}: {problem}"
        if hint:
            message += f" ({hint})"
        super().__init__(message)

    def __reduce__(self):
        # Keeps the fields when the error crosses a Dask/multiprocessing boundary.
        return (type(self), (self.path, self.problem, self.entry, self.hint))


class ShardError(JJepaError):
    """A shard or manifest that does not match the shard schema."""
