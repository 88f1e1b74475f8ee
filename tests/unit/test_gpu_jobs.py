"""GPU jobs that share a machine: a local run takes the GPU jobs one at a time where a GPU
is visible, and a machine without one (CI) runs them as before, whatever model.gpus asks.
The simulation's cases, small and faster side by side on one GPU, take no slot."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from lungclam.runtime import visible_gpus
from tests.conftest import PROJECT_ROOT
from tests.snakemake_runs import snakemake_command

GPU_RULES = ("train", "cluster", "clam")


def test_visible_gpus_counts_device_files_narrowed_by_cuda_visible_devices(tmp_path: Path) -> None:
    for name in ("nvidia0", "nvidia1", "nvidiactl", "nvidia-uvm", "nvidia-modeset"):
        (tmp_path / name).touch()
    assert visible_gpus({}, tmp_path) == 2
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "1"}, tmp_path) == 1
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "0,1,2"}, tmp_path) == 2  # no more than exist
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "0,-1,1"}, tmp_path) == 1  # CUDA stops at -1
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "-1"}, tmp_path) == 0
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": ""}, tmp_path) == 0
    assert visible_gpus({}, tmp_path / "absent") == 0


def test_workflow_profile_caps_local_gpu_jobs_at_one() -> None:
    profile = yaml.safe_load((PROJECT_ROOT / "profiles" / "default" / "config.yaml").read_text())
    assert profile["resources"] == {"local_gpu": 1}


def _dry_run_resources(workdir: Path, model: dict, *targets: str) -> dict[str, dict[str, str]]:
    """rule -> its resources, from a local dry run of ``targets`` with the tiny config and
    ``model`` over its model section."""
    overlay = workdir / "overlay.yaml"
    overlay.write_text(yaml.safe_dump({"model": model}))
    done = subprocess.run(
        snakemake_command(workdir, "-n", *targets, configfiles=(overlay,)),
        capture_output=True,
        text=True,
        cwd=workdir,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    resources, rule = {}, None
    for line in done.stdout.splitlines():
        if found := re.match(r"^(?:local)?(?:rule|checkpoint) (\w+):", line):
            rule = found.group(1)
        elif rule and (found := re.match(r"^\s+resources: (.*)$", line)):
            resources[rule] = dict(item.split("=", 1) for item in found.group(1).split(", "))
    return resources


def test_local_dry_run_asks_a_gpu_slot_only_where_a_gpu_is_visible(tmp_path: Path) -> None:
    expected = str(int(visible_gpus() > 0))  # "0" on a CPU-only machine: nothing is held back
    resources = _dry_run_resources(tmp_path, {"gpus": 1}, "all", "simulation")
    assert set(GPU_RULES) <= set(resources), sorted(resources)
    for rule in GPU_RULES:
        assert resources[rule]["gpu"] == "1" and resources[rule]["local_gpu"] == expected, (rule, resources[rule])
    assert "local_gpu" not in resources["choose_k"]
    assert resources["simulation_case"]["gpu"] == "1" and "local_gpu" not in resources["simulation_case"]
    # device: cpu never waits for the GPU
    resources = _dry_run_resources(tmp_path, {"device": "cpu"}, "all")
    assert resources["train"]["local_gpu"] == "0"


@pytest.mark.gpu
def test_local_dry_run_on_a_gpu_machine_takes_gpu_jobs_one_at_a_time(tmp_path: Path) -> None:
    if visible_gpus() == 0:
        pytest.skip("no NVIDIA GPU visible (/dev/nvidia<N>, CUDA_VISIBLE_DEVICES)")
    resources = _dry_run_resources(tmp_path, {"gpus": 0}, "all", "simulation")
    assert all(resources[rule]["local_gpu"] == "1" for rule in GPU_RULES)
