"""Listing a subject's DICOM folder without ever raising: files, plus what could not be read.

Used twice: by the workflow's input function at DAG build (which must never raise, or one
subject's broken link would stop every subject), and by the convert job (which fails that
one subject, naming each entry it could not account for). Standard library only, so the
workflow's parse does not import pydicom or SimpleITK.

Every entry under the folder ends up in exactly one of two lists:

- ``files``: regular files (a symbolic link to a regular file counts as one), which
  Snakemake can stat and the convert job will read;
- ``problems``: (path, cause) for a dangling or looping symbolic link, a sub-folder that
  cannot be listed, a device, FIFO or socket (reading one could block forever), or the
  folder itself missing or unlistable.

Symbolic links to folders are followed once each (a link back up the tree is reported
as a loop, not walked forever).
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class FolderListing:
    """What :func:`list_dicom_folder` found under one folder."""

    folder: Path
    files: list[Path] = field(default_factory=list)  # sorted by path
    problems: list[tuple[Path, str]] = field(default_factory=list)  # (entry, cause)


def _link_cause(path: str, exc: OSError) -> str:
    """Why a symbolic link cannot be followed, with its target."""
    name = os.path.basename(path)
    try:
        target = os.readlink(path)
    except OSError:
        target = "?"
    if exc.errno == errno.ELOOP:
        return f"symbolic link loop ({name} -> {target})"
    if exc.errno == errno.ENOENT:
        return f"broken symbolic link ({name} -> {target}: no such file)"
    return f"symbolic link {name} -> {target} cannot be followed: {exc.strerror or exc}"


def _folder_cause(exc: OSError) -> str:
    """Why a folder cannot be listed."""
    if exc.errno == errno.ENOENT:
        return "folder does not exist (vanished since the sheet was checked?)"
    if exc.errno == errno.ENOTDIR:
        return "not a folder"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "folder cannot be listed: permission denied"
    return f"folder cannot be listed: {exc.strerror or exc}"


def list_dicom_folder(folder: str | Path) -> FolderListing:
    """Every regular file under ``folder`` (any depth, sorted) and every entry that is not.

    Never raises for anything on disk: a problem is recorded in ``problems`` instead.
    """
    files, problems = _list(str(folder))
    return FolderListing(Path(folder), [Path(f) for f in files], [(Path(p), cause) for p, cause in problems])


def _list(folder: str) -> tuple[list[str], list[tuple[str, str]]]:
    """(files, problems) under ``folder``, as strings (pathlib objects cost more than the
    listing itself, which matters at DAG build with many subjects)."""
    files: list[str] = []
    problems: list[tuple[str, str]] = []
    try:
        top = os.stat(folder)
    except OSError as exc:
        return files, [(folder, _folder_cause(exc))]
    if not stat.S_ISDIR(top.st_mode):
        return files, [(folder, "not a folder")]
    _walk(folder, {(top.st_dev, top.st_ino)}, files, problems)
    files.sort()
    problems.sort()
    return files, problems


def _walk(folder: str, visited: set[tuple[int, int]], files: list[str], problems: list[tuple[str, str]]) -> None:
    """Recurse into ``folder``; ``visited`` holds the (device, inode) of folders on the way."""
    try:
        with os.scandir(folder) as entries:
            names = sorted(entries, key=lambda e: e.name)
    except OSError as exc:
        problems.append((folder, _folder_cause(exc)))
        return
    for entry in names:
        path = entry.path
        try:
            if not entry.is_symlink():  # the type comes with the listing: no stat per file
                if entry.is_file(follow_symlinks=False):
                    files.append(path)
                elif entry.is_dir(follow_symlinks=False):
                    info = entry.stat(follow_symlinks=False)
                    _walk(path, visited | {(info.st_dev, info.st_ino)}, files, problems)
                else:
                    problems.append((path, "not a regular file (device, FIFO or socket)"))
                continue
            info = os.stat(path)  # follows the link: a broken or looping one raises here
        except OSError as exc:
            cause = _link_cause(path, exc) if entry.is_symlink() else f"cannot stat: {exc.strerror or exc}"
            problems.append((path, cause))
            continue
        if stat.S_ISREG(info.st_mode):
            files.append(path)
        elif stat.S_ISDIR(info.st_mode):
            key = (info.st_dev, info.st_ino)
            if key in visited:
                name = os.path.basename(path)
                problems.append((path, f"symbolic link loop ({name} leads back to a folder above it)"))
                continue
            _walk(path, visited | {key}, files, problems)
        else:
            problems.append((path, "not a regular file (device, FIFO or socket)"))


def snakemake_inputs(folder: str | Path) -> list[str]:
    """The input files Snakemake should track for a subject's DICOM folder.

    Only entries Snakemake can stat (a broken link would stop the whole DAG build); the
    folder itself when it holds no files (so an empty folder still ties the job to it);
    nothing when the folder cannot be listed at all, so the convert job runs and fails
    that subject alone with the cause.
    """
    files, problems = _list(str(folder))
    if files:
        return files
    if any(path == str(folder) for path, _ in problems):
        return []
    return [str(folder)]
