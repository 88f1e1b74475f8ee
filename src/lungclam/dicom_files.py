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


def _link_cause(path: Path, exc: OSError) -> str:
    """Why a symbolic link cannot be followed, with its target."""
    try:
        target = os.readlink(path)
    except OSError:
        target = "?"
    if exc.errno == errno.ELOOP:
        return f"symbolic link loop ({path.name} -> {target})"
    if exc.errno == errno.ENOENT:
        return f"broken symbolic link ({path.name} -> {target}: no such file)"
    return f"symbolic link {path.name} -> {target} cannot be followed: {exc.strerror or exc}"


def _folder_cause(path: Path, exc: OSError) -> str:
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
    folder = Path(folder)
    listing = FolderListing(folder)
    try:
        top = os.stat(folder)
    except OSError as exc:
        listing.problems.append((folder, _folder_cause(folder, exc)))
        return listing
    if not stat.S_ISDIR(top.st_mode):
        listing.problems.append((folder, "not a folder"))
        return listing
    _walk(folder, {(top.st_dev, top.st_ino)}, listing)
    listing.files.sort(key=str)
    listing.problems.sort(key=lambda p: str(p[0]))
    return listing


def _walk(folder: Path, visited: set[tuple[int, int]], listing: FolderListing) -> None:
    """Recurse into ``folder``; ``visited`` holds the (device, inode) of folders on the way."""
    try:
        with os.scandir(folder) as entries:
            names = sorted(entries, key=lambda e: e.name)
    except OSError as exc:
        listing.problems.append((folder, _folder_cause(folder, exc)))
        return
    for entry in names:
        path = Path(entry.path)
        try:
            info = os.stat(path)  # follows links: a broken one raises here
        except OSError as exc:
            cause = _link_cause(path, exc) if entry.is_symlink() else f"cannot stat: {exc.strerror or exc}"
            listing.problems.append((path, cause))
            continue
        if stat.S_ISREG(info.st_mode):
            listing.files.append(path)
        elif stat.S_ISDIR(info.st_mode):
            key = (info.st_dev, info.st_ino)
            if key in visited:
                listing.problems.append((path, f"symbolic link loop ({path.name} leads back to a folder above it)"))
                continue
            _walk(path, visited | {key}, listing)
        else:
            listing.problems.append((path, "not a regular file (device, FIFO or socket)"))


def snakemake_inputs(folder: str | Path) -> list[str]:
    """The input files Snakemake should track for a subject's DICOM folder.

    Only entries Snakemake can stat (a broken link would stop the whole DAG build); the
    folder itself when it holds no files (so an empty folder still ties the job to it);
    nothing when the folder cannot be listed at all, so the convert job runs and fails
    that subject alone with the cause.
    """
    listing = list_dicom_folder(folder)
    if listing.files:
        return [str(p) for p in listing.files]
    if any(p == Path(folder) for p, _ in listing.problems):
        return []
    return [str(folder)]
