"""Recover from a killed run: clear the working-directory lock a dead Snakemake left behind.

Snakemake locks the working directory while it runs (``.snakemake/locks/``) and removes
the lock when it ends; a run killed with SIGKILL (or a crashed machine) cannot, and the
next run then stops with "Directory cannot be locked" until someone runs ``--unlock``.
We record which process holds the lock (``onstart``: PID and host, written after
Snakemake has locked) and, when the workflow is next parsed, remove the lock only if that
record is at least as new as every lock file, names this host, and its process is gone.
Any doubt (no record, another host, a live process, a lock newer than the record) leaves
the lock alone, so two live runs still exclude each other.

Files that were being written when the run died are not taken as finished: Snakemake
marks a job's outputs incomplete until the job succeeds, and the workflow profile sets
``rerun-incomplete: true``, so the next run deletes and remakes them.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
from pathlib import Path

from lungclam.atomic import atomic_path

OWNER_FILE = Path(".snakemake") / "lungclam-run-owner.json"
LOCK_DIR = Path(".snakemake") / "locks"


def record_owner(root: str | Path = ".") -> None:
    """Note this process (the Snakemake that holds the lock) as the lock's owner."""
    with atomic_path(Path(root) / OWNER_FILE) as tmp:
        tmp.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))


def forget_owner(root: str | Path = ".") -> None:
    """The run ended normally (Snakemake removes its own lock)."""
    (Path(root) / OWNER_FILE).unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def clear_stale_lock(root: str | Path = ".") -> str | None:
    """Remove the lock of a dead run; returns what was done, or None when nothing was."""
    root = Path(root)
    locks = [p for p in (root / LOCK_DIR).glob("*.lock")] if (root / LOCK_DIR).is_dir() else []
    owner_file = root / OWNER_FILE
    if not locks or not owner_file.is_file():
        return None
    try:
        owner = json.loads(owner_file.read_text())
        pid, host = int(owner["pid"]), str(owner["host"])
        recorded = owner_file.stat().st_mtime
        newest_lock = max(p.stat().st_mtime for p in locks)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if host != socket.gethostname() or recorded < newest_lock or _alive(pid):
        return None
    shutil.rmtree(root / LOCK_DIR, ignore_errors=True)
    owner_file.unlink(missing_ok=True)
    return (
        f"removed the lock left by an earlier run (process {pid} on {host}) that ended without "
        "unlocking; files it was writing are remade"
    )
