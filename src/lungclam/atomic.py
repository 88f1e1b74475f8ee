"""Atomic file writes: every output is written under a temporary name, then renamed.

Snakemake marks a killed job's outputs incomplete and remakes them, but only while its
``.snakemake/`` metadata survives; writing whole files only makes a truncated table,
image or figure impossible under its final name, whatever happens to that metadata.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary name beside ``path``; on success rename it to ``path``.

    The temporary name keeps the suffixes (writers that pick a format by suffix still
    work) and starts with a dot. A job killed or failing mid-write therefore never leaves a
    truncated file under the final name, and an older complete file stays until the new
    one is whole.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix="".join(path.suffixes), dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_table(table: pd.DataFrame, path: str | Path, **to_csv: object) -> None:
    """Write ``table`` as tab-separated text, atomically; ``to_csv`` goes to pandas
    (``index=False`` unless given)."""
    to_csv.setdefault("index", False)
    with atomic_path(path) as tmp:
        table.to_csv(tmp, sep="\t", **to_csv)


def save_png(fig: Figure, path: str | Path, dpi: int) -> None:
    """Save a matplotlib figure as PNG at ``dpi``, atomically."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
