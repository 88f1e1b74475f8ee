"""Clearing the lock of a killed run (lungclam.runlock), and only then."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from lungclam.runlock import LOCK_DIR, OWNER_FILE, clear_stale_lock, forget_owner, record_owner


def _lock(root: Path) -> None:
    (root / LOCK_DIR).mkdir(parents=True, exist_ok=True)
    (root / LOCK_DIR / "0.output.lock").write_text("results/x\n")


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_lock_of_a_dead_process_is_cleared(tmp_path: Path) -> None:
    _lock(tmp_path)
    record_owner(tmp_path)
    owner = json.loads((tmp_path / OWNER_FILE).read_text())
    owner["pid"] = _dead_pid()
    (tmp_path / OWNER_FILE).write_text(json.dumps(owner))
    message = clear_stale_lock(tmp_path)
    assert message and str(owner["pid"]) in message
    assert not (tmp_path / LOCK_DIR).exists() and not (tmp_path / OWNER_FILE).exists()
    assert clear_stale_lock(tmp_path) is None


def test_lock_is_kept_when_in_doubt(tmp_path: Path) -> None:
    _lock(tmp_path)
    assert clear_stale_lock(tmp_path) is None  # no owner recorded
    record_owner(tmp_path)  # this live process
    assert clear_stale_lock(tmp_path) is None
    owner = json.loads((tmp_path / OWNER_FILE).read_text())
    (tmp_path / OWNER_FILE).write_text(json.dumps({**owner, "pid": _dead_pid(), "host": "elsewhere"}))
    assert clear_stale_lock(tmp_path) is None  # another machine's process
    (tmp_path / OWNER_FILE).write_text(json.dumps({**owner, "pid": _dead_pid()}))
    past = time.time() - 60
    os.utime(tmp_path / OWNER_FILE, (past, past))
    assert clear_stale_lock(tmp_path) is None  # the lock is newer: a run not yet recorded
    assert (tmp_path / LOCK_DIR / "0.output.lock").is_file()
    forget_owner(tmp_path)
    assert not (tmp_path / OWNER_FILE).exists()
