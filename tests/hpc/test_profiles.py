"""The profiles without a cluster: every rule has its resources, and the Slurm profile's
dry run, rule graph and DAG work on a machine with no Slurm commands at all."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.snakemake_runs import PROJECT_ROOT, snakemake_command

pytestmark = pytest.mark.hpc

WORKFLOW_PROFILE = yaml.safe_load((PROJECT_ROOT / "profiles" / "default" / "config.yaml").read_text())
SLURM_PROFILE = yaml.safe_load((PROJECT_ROOT / "profiles" / "slurm" / "config.yaml").read_text())


def _no_slurm_env(tmp_path: Path) -> dict:
    """The environment minus any Slurm: PATH holds only the virtualenv's and a folder of
    the few system tools snakemake calls, so sinfo, sbatch, squeue and sacct are absent."""
    tools = tmp_path / "bin"
    tools.mkdir(exist_ok=True)
    for name in ("bash", "sh", "env", "git", "which", "uname"):
        for folder in ("/usr/bin", "/bin"):
            if Path(folder, name).exists() and not (tools / name).exists():
                (tools / name).symlink_to(Path(folder, name))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env["PATH"] = f"{Path(sys.executable).parent}:{tools}"
    env["XDG_CONFIG_HOME"] = str(tmp_path / "config")
    return env


def _snakemake(workdir: Path, env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        snakemake_command(workdir, *args), capture_output=True, text=True, env=env, cwd=workdir, timeout=300
    )


def _rules() -> list[str]:
    done = subprocess.run(
        [sys.executable, "-m", "snakemake", "--snakefile", str(PROJECT_ROOT / "Snakefile"), "--list-rules"],
        capture_output=True,
        text=True,
        cwd=PROJECT_ROOT,
        timeout=120,
        check=True,
    )
    return [line.strip() for line in done.stdout.splitlines() if line.strip()]


def test_every_rule_has_memory_and_runtime_in_the_workflow_profile() -> None:
    resources = WORKFLOW_PROFILE["set-resources"]
    target_rules = {"all", "simulation", "score"}  # collect inputs only; they run no job
    rules = [rule for rule in _rules() if rule not in target_rules]
    assert len(rules) > 15, rules
    missing = [rule for rule in rules if not {"mem_mb", "runtime"} <= set(resources.get(rule, {}))]
    assert not missing, f"rules without mem_mb and runtime in profiles/default/config.yaml: {missing}"
    assert not set(resources) - set(rules), f"profile entries for unknown rules: {set(resources) - set(rules)}"
    for rule, values in resources.items():
        # within a modest cluster node (a bigger request pends forever where no node has it)
        assert 500 <= values["mem_mb"] <= 16000 and 5 <= values["runtime"] <= 1440, (rule, values)


def test_slurm_profile_has_what_a_cluster_needs() -> None:
    assert SLURM_PROFILE["executor"] == "slurm"
    assert SLURM_PROFILE["jobs"] >= 10 and SLURM_PROFILE["latency-wait"] >= 5
    assert {"slurm_partition", "mem_mb", "runtime"} <= set(SLURM_PROFILE["default-resources"])
    chain = {
        "convert": "preprocess",
        "resample": "preprocess",
        "segment": "preprocess",
        "register": "to_template",
        "downsample": "to_template",
    }
    # snakemake score's copies of the imaging rules (workflow/rules/score.smk) group alike
    assert SLURM_PROFILE["groups"] == {**chain, **{f"score_{rule}": group for rule, group in chain.items()}}
    # per-rule settings live in the workflow profile, whose set-resources would replace these
    assert "set-resources" not in SLURM_PROFILE and "set-threads" not in SLURM_PROFILE


@pytest.mark.parametrize("profile", ["slurm", "profiles/slurm"])
def test_slurm_dry_run_works_without_slurm(tmp_path: Path, profile: str) -> None:
    env = _no_slurm_env(tmp_path)
    done = subprocess.run(
        ["make", "-s", "slurm-profile"],
        cwd=PROJECT_ROOT,
        env={**env, "PATH": os.environ["PATH"]},
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    workdir = tmp_path / "work"
    workdir.mkdir()
    profile_arg = profile if profile == "slurm" else str(PROJECT_ROOT / profile)
    done = _snakemake(workdir, env, "--profile", profile_arg, "-n")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "workflow specific profile" in done.stderr
    out = done.stdout + done.stderr
    assert "slurm_partition=" + SLURM_PROFILE["default-resources"]["slurm_partition"] in out
    assert "group job preprocess" in out.lower() or "group: preprocess" in out.lower() or "preprocess" in out
    # the per-rule memory of the workflow profile reached the jobs
    assert f"mem_mb={WORKFLOW_PROFILE['set-resources']['train']['mem_mb']}" in out
    for graph in ("--rulegraph", "--dag"):
        done = _snakemake(workdir, env, "--profile", profile_arg, graph)
        assert done.returncode == 0 and done.stdout.lstrip().startswith("digraph"), done.stderr[-3000:]
        assert "train" in done.stdout


def test_parse_time_helpers_do_not_import_ants() -> None:
    """The workflow samples the template subjects at parse time; that must not pull in
    ANTs (seconds of import for every `snakemake -n`, on every cohort size)."""
    code = "import sys, lungclam.sampling, lungclam.sheets; assert 'ants' not in sys.modules, 'ants imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
