"""Process set-up shared by the workflow scripts: threads, logging, clear failures."""

from __future__ import annotations

import logging
import multiprocessing
import os
import re
import sys
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from lungclam.errors import LungclamError


def set_threads(n: int) -> None:
    """Cap ITK/ANTs, BLAS and torch at ``n`` threads (the job's ``threads:``).

    Must run before ``ants`` or ``SimpleITK`` start their thread pools; we set both the
    environment (for libraries not yet imported) and SimpleITK's global default.
    """
    n = max(1, int(n))
    for var in ("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(n)
    import SimpleITK as sitk

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(n)
    if "torch" in sys.modules:  # only where a script already uses torch: importing it is slow
        sys.modules["torch"].set_num_threads(n)


def forked_pool(workers: int, n_tasks: int, **options: Any) -> ProcessPoolExecutor | None:
    """A pool of ``min(workers, n_tasks)`` forked worker processes, or None where the caller
    should work in its own process: one worker or task, or not Linux. ``options`` go to
    :class:`ProcessPoolExecutor` (``initializer``, ``initargs``).

    Fork, because spawn and forkserver import the caller's ``__main__`` again in each
    worker, which a Snakemake script cannot survive; Linux only, because macOS's system
    libraries are not safe to use in a forked child. Callers fork before starting any
    thread pool of their own (k-means at one OpenMP thread, no ITK filter).
    """
    if workers <= 1 or n_tasks <= 1 or not sys.platform.startswith("linux"):
        return None
    return ProcessPoolExecutor(min(workers, n_tasks), multiprocessing.get_context("fork"), **options)


def visible_gpus(environ: Mapping[str, str] | None = None, dev: str | Path = "/dev") -> int:
    """NVIDIA GPUs this process could use, found without importing torch or CUDA (cheap
    enough for every DAG build).

    The ``/dev/nvidia<N>`` device files count the GPUs (Linux); ``CUDA_VISIBLE_DEVICES``,
    when set, narrows them to its entries up to the first that CUDA would reject (an
    empty entry or one starting with ``-``: ``-1`` or ``""`` hide every GPU).
    """
    environ = os.environ if environ is None else environ
    dev = Path(dev)
    present = sum(1 for p in dev.glob("nvidia*") if re.fullmatch(r"nvidia[0-9]+", p.name)) if dev.is_dir() else 0
    listed = environ.get("CUDA_VISIBLE_DEVICES")
    if listed is None:
        return present
    entries = 0
    for entry in listed.split(","):
        if not entry.strip() or entry.strip().startswith("-"):
            break
        entries += 1
    return min(entries, present)


def setup_logging(log_file: str | Path | None, level: int = logging.INFO) -> None:
    """Log to the rule's ``log:`` file and to stderr, with timestamps."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file, mode="w"))
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        handlers=handlers,
        force=True,
    )
    # Third-party chatter (dicom2nifti, matplotlib) only when it matters.
    for noisy in ("dicom2nifti", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def run_job(name: str, job: Callable[[], None], log_file: str | Path | None, threads: int = 1) -> None:
    """Run one workflow step: set threads and logging, time it, turn errors into one line.

    A :class:`LungclamError` (bad input) ends the job with its message alone, which names
    the subject and cause; anything else keeps its traceback in the log for debugging.
    """
    set_threads(threads)
    setup_logging(log_file)
    log = logging.getLogger(f"lungclam.{name}")
    started = time.time()
    try:
        job()
    except LungclamError as exc:
        log.error("%s failed: %s", name, exc)
        sys.exit(1)
    except Exception:
        log.exception("%s failed with an unexpected error", name)
        raise
    log.info("%s done in %.1f s", name, time.time() - started)
