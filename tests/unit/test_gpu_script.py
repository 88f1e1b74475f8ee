"""benchmarks/gpu.py --device cpu --quick (one thread: steady on a shared machine) runs
without SimpleITK, ANTs, pydicom, matplotlib or Snakemake (as on a bare CUDA image), and
its table holds numbers that agree with each other."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import PROJECT_ROOT

# Importing any of these inside the run fails it: the script must not need them.
ABSENT = ("SimpleITK", "ants", "pydicom", "matplotlib", "snakemake")
RUN = (
    f"import runpy, sys\nfor name in {ABSENT!r}:\n    sys.modules[name] = None\n"
    "sys.argv = ['gpu.py', '--device', 'cpu', '--quick', '--threads', '1', '--profile-clam', sys.argv[1]]\n"
    "runpy.run_path('benchmarks/gpu.py', run_name='__main__')\n"
)


def _number(cell: str) -> float | None:
    return None if cell in ("", "n/a") else float(cell)


@pytest.fixture(scope="module")
def profile(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("gpu") / "clam_profile.txt"


@pytest.fixture(scope="module")
def rows(profile: Path) -> list[dict]:
    done = subprocess.run(
        [sys.executable, "-c", RUN, str(profile)], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lines = [line for line in done.stdout.splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    assert header == ["section", "setting", "value", "unit", "x floor", "peak MiB", "note"]
    table = []
    for line in lines[2:]:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        assert len(cells) == len(header), line
        row = dict(zip(header, cells))
        for column in ("value", "x floor", "peak MiB"):
            row[column] = _number(row[column])  # a cell that is not a number fails here
        table.append(row)
    return table


def _find(rows: list[dict], section: str, *words: str) -> list[dict]:
    return [r for r in rows if r["section"] == section and all(w in r["setting"] for w in words)]


def test_every_section_is_there_with_positive_timings(rows) -> None:
    assert {r["section"] for r in rows} == {"pretrain", "cluster", "clam", "simulation", "reproducibility"}
    timed = [r for r in rows if r["section"] != "reproducibility" and r["value"] is not None]
    assert len(timed) >= 14 and all(r["value"] > 0 for r in timed)
    assert all(r["peak MiB"] is None for r in rows)  # GPU memory only on CUDA


def test_bf16_rows_are_marked_not_applicable_on_the_cpu(rows) -> None:
    bf16 = [r for r in rows if "bf16" in r["setting"]]
    assert len(bf16) == 5 and all(r["value"] is None for r in bf16)
    fp32 = [r for r in rows if "fp32" in r["setting"] and r["section"] in ("pretrain", "cluster")]
    assert len(fp32) == 3 and all(r["value"] > 0 for r in fp32)


def test_clam_rows_are_ratios_to_their_floor(rows) -> None:
    for grid, unit in (("2D", "images/s"), ("3D", "volumes/s")):
        (floor,) = _find(rows, "clam", grid, "floor")
        assert floor["x floor"] == 1.0 and floor["unit"] == unit
        clams = _find(rows, "clam", grid, "fp32", "chunk")
        assert len(clams) == 1 + 2 * 2  # auto, then two chunk sizes in either memory format
        assert len(_find(rows, "clam", grid, "fp32", "auto")) == 1
        for r in clams:
            assert r["x floor"] == pytest.approx(r["value"] / floor["value"], abs=0.006, rel=0.002)


def test_simulation_estimate_adds_up_its_measured_parts(rows) -> None:
    for config in ("CPU config", "paper epochs"):
        parts = {
            key: _find(rows, "simulation", config, key)[0]["value"]
            for key in ("pretraining", "clustering", "CLAM", "whole case")
        }
        assert parts["whole case"] == pytest.approx(
            parts["pretraining"] + 7 * parts["clustering"] + parts["CLAM"], rel=2e-3
        )


def test_deterministic_cpu_pretraining_is_bit_identical(rows) -> None:
    (row,) = _find(rows, "reproducibility")
    assert row["value"] == 0.0


def test_clam_profile_names_the_operators(rows, profile: Path) -> None:
    text = profile.read_text()
    assert text.startswith("# iter_clam, 3D") and "fp32" in text and "bf16" not in text  # bf16: CUDA only
    assert "Self CPU" in text and "aten::" in text and "convolution" in text


def test_clam_parts_runs_on_the_cpu_with_both_mask_builders() -> None:
    """benchmarks/clam_parts.py (CLAM's phases on a GPU) also runs on a bare image's CPU:
    both builders' rows, the same maps (the CPU runs the operators either way)."""
    run = RUN.replace("gpu.py", "clam_parts.py").replace(
        "'--threads', '1', '--profile-clam', sys.argv[1]", "'--only', '2d'"
    )
    done = subprocess.run([sys.executable, "-c", run], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = [
        [c.strip() for c in line.strip("|").split("|")] for line in done.stdout.splitlines() if line.startswith("| 2D")
    ]
    ends = {r[1]: (float(r[2]), float(r[3]), float(r[4])) for r in rows if r[1].startswith("iter_clam")}
    assert set(ends) == {"iter_clam, fused kernel", "iter_clam, PyTorch operators"}
    assert all(rate > 0 and ratio > 0 and diff == 0.0 for rate, ratio, diff in ends.values())
    phases = [float(r[2]) for r in rows if "ms per item" in r[1]]
    assert len(phases) == 10 and all(ms > 0 for ms in phases)
