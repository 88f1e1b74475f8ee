"""Atomic writes: a writer that dies mid-file leaves neither a partial file nor litter."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from lungclam.atomic import atomic_path, save_png, write_table


class Boom(RuntimeError):
    pass


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "table.tsv"
    write_table(pd.DataFrame({"a": [1, 2]}), target)
    before = target.read_bytes()
    with pytest.raises(Boom):
        with atomic_path(target) as tmp:
            tmp.write_text("a\n1\n")  # half a table ...
            raise Boom  # ... and the job dies
    assert target.read_bytes() == before
    assert sorted(p.name for p in target.parent.iterdir()) == ["table.tsv"]


def test_a_failed_first_write_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "figure.png"
    with pytest.raises(Boom):
        with atomic_path(target):
            raise Boom
    assert list(tmp_path.iterdir()) == []


def test_temporary_keeps_the_suffixes_writers_dispatch_on(tmp_path: Path) -> None:
    with atomic_path(tmp_path / "arrays.npz") as tmp:
        assert tmp.name.startswith(".arrays.npz.") and tmp.name.endswith(".npz") and tmp.parent == tmp_path
        np.savez_compressed(tmp, x=np.arange(3))  # numpy would append .npz to any other name
    assert np.array_equal(np.load(tmp_path / "arrays.npz")["x"], np.arange(3))


def test_table_and_png_round_trip(tmp_path: Path) -> None:
    frame = pd.DataFrame({"subject": ["s1", "s2"], "value": [0.123456789, 2.0]})
    write_table(frame, tmp_path / "t.tsv", float_format="%.3g")
    back = pd.read_csv(tmp_path / "t.tsv", sep="\t")
    assert list(back.columns) == ["subject", "value"] and back["value"].tolist() == [0.123, 2.0]
    fig = Figure(figsize=(1, 1))
    fig.add_subplot().plot([0, 1])
    save_png(fig, tmp_path / "f.png", dpi=50)
    assert (tmp_path / "f.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
