"""benchmarks/simulation_study.py: the simulation's cases through the library, side by side,
on a saved base slice without SimpleITK (as on a bare CUDA image)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from lungclam.simulation.data import builtin_base, load_base, save_base
from tests.conftest import PROJECT_ROOT

SCRIPT = str(PROJECT_ROOT / "benchmarks" / "simulation_study.py")


def test_a_saved_base_slice_reads_back_unchanged(tmp_path: Path) -> None:
    base = builtin_base(seed=0)
    save_base(base, tmp_path / "base.npz")
    back = load_base(tmp_path / "base.npz")
    assert back.pixel_mm == base.pixel_mm
    for name in ("hu", "lungs", "noise", "labels"):
        np.testing.assert_array_equal(getattr(back, name), getattr(base, name))
        assert getattr(back, name).dtype == getattr(base, name).dtype


def test_quick_study_runs_its_cases_side_by_side_without_simpleitk(tmp_path: Path) -> None:
    base = tmp_path / "base.npz"
    done = subprocess.run([sys.executable, SCRIPT, "--save-base", str(base)], capture_output=True, text=True)
    assert done.returncode == 0 and base.exists(), done.stderr[-3000:]
    blocked = tmp_path / "blocked"
    for name in ("SimpleITK", "ants", "pydicom", "snakemake"):
        (blocked / name).mkdir(parents=True)
        (blocked / name / "__init__.py").write_text(f"raise ImportError('{name} is blocked in this test')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(blocked), str(PROJECT_ROOT / "src")])}
    out = tmp_path / "results"
    args = ["--quick", "--workers", "2", "--device", "cpu", "--base", str(base), "--out", str(out)]
    done = subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    accuracy = pd.read_csv(out / "simulation" / "accuracy.tsv", sep="\t")
    assert sorted(set(zip(accuracy["scenario"], accuracy["true_k"]))) == [("intensity", 3), ("size", 3)]
    assert sorted(accuracy["fitted_k"].unique()) == [2, 3, 4]
    assert accuracy["accuracy"].between(1 / 3, 1).all()
    k_choice = pd.read_csv(out / "simulation" / "k_choice.tsv", sep="\t")
    assert len(k_choice) == 2 and k_choice["k_most_stable_before"].isin([2, 3, 4]).all()
    for case in ("intensity_k3", "size_k3"):
        assert pd.read_csv(out / "benchmarks" / "simulation" / f"{case}.tsv", sep="\t")["s"].iloc[0] > 0
