"""Exceptions that name the subject and the cause, so a failed job explains itself."""

from __future__ import annotations

from pathlib import Path


class LungclamError(Exception):
    """Base class of every error lungclam raises on purpose."""


class SubjectError(LungclamError):
    """A problem with one subject's input: the message names the subject, file and cause.

    Raised by the per-subject stages (convert, segment, register, ...) so that with
    ``snakemake --keep-going`` one bad scan fails only its own jobs, with a one-line reason.
    """

    def __init__(self, subject: str | None, cause: str, path: str | Path | None = None):
        self.subject = subject
        self.cause = cause
        self.path = None if path is None else str(path)
        who = f"subject {subject!r}" if subject else "input"
        where = f" [{self.path}]" if self.path else ""
        super().__init__(f"{who}: {cause}{where}")


class SheetError(LungclamError):
    """A samples or clinical sheet that fails validation; the message names the row."""
