"""benchmarks/memory.py: the per-rule table from Snakemake benchmark files, and one stage
measured in its own process."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "memory.py"
HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"


def _load_script():
    spec = importlib.util.spec_from_file_location("memory_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_demo_table_takes_the_largest_peak_per_rule(tmp_path: Path) -> None:
    bench = tmp_path / "benchmarks"
    (bench / "register").mkdir(parents=True)
    (bench / "register" / "a.tsv").write_text(HEADER + "11.5\t0:00:11\t484.2\t1\t1\t1\t0\t0\t80\t10\n")
    (bench / "register" / "b.tsv").write_text(HEADER + "9.0\t0:00:09\t510.6\t1\t1\t1\t0\t0\t80\t8\n")
    (bench / "train.tsv").write_text(HEADER + "120.0\t0:02:00\t573.0\t1\t1\t1\t0\t0\t90\t110\n")
    table = _load_script().demo_table(tmp_path).set_index("rule")
    assert table.loc["register"].tolist() == [2, 511, 12]
    assert table.loc["train"].tolist() == [1, 573, 120]


def test_a_stage_reports_its_own_peak(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--stage", "import", "--work", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    row = json.loads(done.stdout.strip().splitlines()[-1])
    assert row["stage"] == "import" and 100 < row["peak_mb"] < 8000 and row["seconds"] > 0
