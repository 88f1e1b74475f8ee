"""A misspelt config key stops `snakemake -n` before any job, naming the key and the nearest
valid one (config/schema.yaml closes every section)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.snakemake_runs import snakemake

pytestmark = pytest.mark.workflow


def test_misspelt_keys_stop_the_dry_run_with_the_nearest_valid_key(tmp_path: Path) -> None:
    done = snakemake(tmp_path, "-n", "--config", "trian={epochs: 3}", "clam={chunk_sise: 4}", check=False)
    assert done.returncode != 0
    lines = done.stderr.splitlines()
    assert "  unknown key trian: did you mean train?" in lines
    assert "  unknown key clam.chunk_sise: did you mean clam.chunk_size?" in lines
    assert "Job stats" not in done.stdout
