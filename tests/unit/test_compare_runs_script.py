"""benchmarks/compare_runs.py tells a changed number from what a rerun always changes.

Two small 'runs' are written here: files equal in bytes, files that differ only in clock
readings, timing columns or the checkpoint archive's folder name, and files whose numbers
differ. The script must call the first ones identical or same content and the last ones
DIFFERENT, naming how much.
"""

from __future__ import annotations

import functools
import importlib.util
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "compare_runs.py"


@functools.cache
def _load_script():
    spec = importlib.util.spec_from_file_location("compare_runs", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["compare_runs"] = module
    spec.loader.exec_module(module)
    return module


def _write_run(root: Path, *, voxel: float, loss: float, clock: str, seconds: float, weight: float) -> None:
    (root / "logs").mkdir(parents=True)
    (root / "model").mkdir()
    (root / "benchmarks").mkdir()
    (root / "same.tsv").write_text("subject\tcluster\ns1\t1\n")
    (root / "logs" / "train.log").write_text(f"2026-11-27 {clock},001 INFO done in {seconds} s, run {root}/x\n")
    (root / "model" / "loss.tsv").write_text(f"epoch\tloss\tseconds\n1\t{loss}\t{seconds}\n")
    (root / "benchmarks" / "train.tsv").write_text(f"s\n{seconds}\n")
    image = sitk.GetImageFromArray(np.full((3, 4, 5), 1.0, dtype=np.float32))
    sitk.WriteImage(image, str(root / "same.nii.gz"))
    changed = np.zeros((3, 4, 5), dtype=np.float32)
    changed[1, 2, 3] = voxel
    sitk.WriteImage(sitk.GetImageFromArray(changed), str(root / "map.nii.gz"))
    # torch names the archive's folder after the file name: same tensors, other bytes
    temporary = root / "model" / f".cae.pt.{clock.replace(':', '')}.pt"
    torch.save({"w": torch.tensor([1.0, weight])}, temporary)
    temporary.rename(root / "model" / "cae.pt")


def test_rerun_noise_is_same_content_and_changed_numbers_are_different(tmp_path, capsys) -> None:
    compare = _load_script()
    a, b = tmp_path / "a" / "results", tmp_path / "b" / "results"
    _write_run(a, voxel=0.5, loss=0.25, clock="11:00:00", seconds=1.5, weight=2.0)
    _write_run(b, voxel=0.75, loss=0.25, clock="11:05:09", seconds=2.25, weight=2.0)
    (b / "extra.tsv").write_text("x\n1\n")
    rows = {path: (status, detail) for path, status, detail in compare.compare_runs(a, b, False)}

    assert rows["same.tsv"][0] == rows["same.nii.gz"][0] == "identical"
    assert rows["logs/train.log"][0] == "same content"
    assert rows["model/loss.tsv"] == ("same content", "same cells but the timing column seconds")
    assert rows["model/cae.pt"][0] == "same content" and "folder name" in rows["model/cae.pt"][1]
    assert rows["benchmarks/train.tsv"][0] == "run measurement"
    assert rows["map.nii.gz"] == ("DIFFERENT", "voxels max |diff| 0.25")
    assert rows["extra.tsv"][0] == "only in B"

    assert compare.main([str(a), str(b), "--quiet"]) == 1
    assert "| map.nii.gz" in capsys.readouterr().out


def test_changed_numbers_in_tables_and_checkpoints_are_named(tmp_path) -> None:
    compare = _load_script()
    a, b = tmp_path / "a", tmp_path / "b"
    _write_run(a, voxel=0.5, loss=0.25, clock="11:00:00", seconds=1.5, weight=2.0)
    _write_run(b, voxel=0.5, loss=0.5, clock="11:00:00", seconds=1.5, weight=2.125)
    rows = {path: (status, detail) for path, status, detail in compare.compare_runs(a, b, True)}
    assert rows["model/loss.tsv"] == ("DIFFERENT", "max |diff| 0.25 in loss")
    assert rows["model/cae.pt"][0] == "DIFFERENT" and "max |diff| 0.125" in rows["model/cae.pt"][1]
    assert rows["map.nii.gz"][0] == "identical"
    assert compare.main([str(a), str(a)]) == 0
