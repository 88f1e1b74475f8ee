"""`snakemake simulation` for real, on one tiny case."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.conftest import PROJECT_ROOT

pytestmark = pytest.mark.workflow


def test_simulation_target_runs_and_summarises(tmp_path: Path) -> None:
    command = [
        sys.executable,
        "-m",
        "snakemake",
        "simulation",
        "--cores",
        "2",
        "--snakefile",
        str(PROJECT_ROOT / "Snakefile"),
        "-d",
        str(tmp_path),
        "--configfile",
        str(PROJECT_ROOT / "tests" / "configs" / "simulation_tiny.yaml"),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    results = tmp_path / "results" / "simulation"
    assert not (tmp_path / "results" / "demo").exists()  # the study needs no other stage
    accuracy = pd.read_csv(results / "accuracy.tsv", sep="\t")
    assert accuracy[["scenario", "true_k", "fitted_k"]].values.tolist() == [["location", 3, 2], ["location", 3, 3]]
    assert accuracy["accuracy"].between(1 / 3 - 1e-4, 1).all()  # written with 6 digits
    for sizes, k in zip(accuracy["cluster_sizes"], accuracy["fitted_k"]):
        counts = [int(c) for c in sizes.split(",")]
        assert len(counts) == k and sum(counts) == 30
    k_choice = pd.read_csv(results / "k_choice.tsv", sep="\t")
    assert k_choice["k_silhouette_before"].isin([2, 3]).all()
    localization = pd.read_csv(results / "localization.tsv", sep="\t")
    assert localization["n_images"].iloc[0] == 9
    assert localization["mass_inside"].between(0, 1).all()
    arrays = np.load(results / "cases" / "location_k3" / "arrays.npz")
    assert arrays["clam_maps"].shape == (9, 64, 64)
    assert arrays["clam_maps"].min() >= 0 and arrays["clam_maps"].max() <= 1
    figures = results / "figures"
    for name in ("examples", "pca_location", "population_clam", "cluster_clams", "single_clams"):
        assert (figures / f"{name}.png").read_bytes()[:4] == b"\x89PNG", name
