"""Compare two runs' outputs file by file; prints a table of what is identical and what is not.

    .venv/bin/python benchmarks/compare_runs.py RESULTS_A RESULTS_B [--all]

Every file under either folder is compared by its bytes (sha256). Where the bytes differ,
the file is read by type and the table says how far apart the contents are:

- ``.tsv``/``.csv``: the largest absolute difference of the numeric columns and the count
  of differing text cells (a changed shape or header is named);
- ``.nii``/``.nii.gz``: the largest absolute voxel difference and whether the affines agree
  (a gzip stream can differ in its header while the volume is the same);
- ``.pt``: every tensor of the checkpoint, largest absolute difference; other values equal;
- ``.npy``/``.npz``: the arrays, largest absolute difference;
- ``.png``: the decoded pixels (count of differing pixels), so metadata alone is "same content";
- DICOM (``.dcm`` or no suffix under a ``dicom`` folder): the decoded pixels and the header
  elements (changed element keywords are named);
- ``.json``, ``.yaml``, ``.log``, ``.html``, ``.txt`` and other text: the lines, after
  masking what a rerun always changes: dates and clock times, durations (``12.3 s``,
  ``0:00:04``), process ids, and the two runs' own folder paths.

Files that only measure the run (``benchmarks/`` tables: seconds and memory; the run-owner
file) are listed as "run measurement" and not compared unless ``--all`` is given.

Status column: ``identical`` (same bytes), ``same content`` (same after decoding or masking,
the detail says what was ignored), ``DIFFERENT`` (with how much), ``only in A/B``. Exits 1
when any file is DIFFERENT or only in one run, else 0. Used to check that a restructuring
changes no number: run the pipeline at the commit before and after it and compare.
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from lungclam.study import sha256

#: Paths (relative, posix) holding measurements of the run itself rather than its results.
MEASUREMENTS = (re.compile(r"(^|/)benchmarks/"), re.compile(r"(^|/)\.?run_?owner"))

#: What a rerun of the same computation changes in a text file, masked before comparing.
VOLATILE_TEXT = (
    (re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(?:[.,]\d+)?(?:[+-]\d{2}:?\d{2}|Z)?"), "<datetime>"),
    (re.compile(r"\b\d{1,2}:\d{2}:\d{2}(?:\.\d+)?\b"), "<time>"),
    (re.compile(r"\b(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun) \w{3} +\d{1,2} [\d:]{8} \d{4}\b"), "<date>"),
    (re.compile(r"\b\d+(?:\.\d+)?(?:e-?\d+)? ?(?:s|ms|sec|seconds|min)\b"), "<duration>"),
    (re.compile(r"\b(?:pid|PID|process)[ =:]+\d+"), "<pid>"),
)
#: Table columns and JSON keys that hold how long something took (a rerun's own clock).
TIMING_NAME = re.compile(r"^(?:seconds|wall_s|time_s|elapsed(?:_s)?|runtime_s|duration_s)$")
TEXT_SUFFIXES = {".json", ".yaml", ".yml", ".log", ".html", ".txt", ".md", ".rst", ".js", ".css", ".svg", ""}


def _max_abs(a: np.ndarray, b: np.ndarray) -> float:
    """Largest |a - b| over the elements (NaN where both are NaN counts as equal)."""
    if a.size == 0:
        return 0.0
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    both_nan = np.isnan(a) & np.isnan(b)
    diff = np.abs(a - b)
    diff[both_nan] = 0.0
    return float(np.nanmax(np.where(np.isnan(diff), np.inf, diff)))


def _arrays(a: np.ndarray, b: np.ndarray, what: str) -> tuple[bool, str]:
    if a.shape != b.shape:
        return False, f"{what} shape {a.shape} vs {b.shape}"
    if a.dtype != b.dtype:
        return False, f"{what} dtype {a.dtype} vs {b.dtype}"
    if np.array_equal(a, b, equal_nan=a.dtype.kind in "fc"):
        return True, f"same {what}"
    if a.dtype.kind in "biufc":
        return False, f"{what} max |diff| {_max_abs(a, b):.3g}"
    return False, f"{what} differ"


def compare_table(a: Path, b: Path) -> tuple[bool, str]:
    """Numeric columns: largest absolute difference; other columns: differing cells."""
    sep = "\t" if a.suffix == ".tsv" else ","
    ta, tb = (pd.read_csv(p, sep=sep, keep_default_na=False, na_values=[""]) for p in (a, b))
    if list(ta.columns) != list(tb.columns):
        return False, f"columns differ: {sorted(set(ta.columns) ^ set(tb.columns))}"
    if ta.shape != tb.shape:
        return False, f"shape {ta.shape} vs {tb.shape}"
    numeric, text_cells, worst = [], 0, 0.0
    timing = [c for c in ta.columns if TIMING_NAME.match(str(c))]
    for column in (c for c in ta.columns if c not in timing):
        ca, cb = ta[column], tb[column]
        if pd.api.types.is_numeric_dtype(ca) and pd.api.types.is_numeric_dtype(cb):
            diff = _max_abs(ca.to_numpy(), cb.to_numpy())
            if diff > 0:
                numeric.append(column)
                worst = max(worst, diff)
        else:
            text_cells += int((ca.astype(str) != cb.astype(str)).sum())
    if not numeric and not text_cells:
        return True, f"same cells but the timing column {', '.join(timing)}" if timing else "same cells (formatting)"
    parts = []
    if numeric:
        parts.append(f"max |diff| {worst:.3g} in {', '.join(map(str, numeric[:4]))}")
    if text_cells:
        parts.append(f"{text_cells} text cells differ")
    return False, "; ".join(parts)


def compare_nifti(a: Path, b: Path) -> tuple[bool, str]:
    import nibabel as nib

    ia, ib = nib.load(a), nib.load(b)
    if not np.allclose(ia.affine, ib.affine, rtol=0, atol=0):
        return False, f"affine max |diff| {_max_abs(ia.affine, ib.affine):.3g} mm"
    same, detail = _arrays(np.asanyarray(ia.dataobj), np.asanyarray(ib.dataobj), "voxels")
    if same and gzip.decompress(a.read_bytes()) == gzip.decompress(b.read_bytes()):
        return True, "same image (gzip header differs)" if a.name.endswith(".gz") else "same image"
    return same, detail if not same else f"{detail}, header differs"


def compare_torch(a: Path, b: Path) -> tuple[bool, str]:
    import torch

    la, lb = (torch.load(p, map_location="cpu", weights_only=False) for p in (a, b))
    worst, differing = 0.0, []

    def walk(x: object, y: object, key: str) -> None:
        nonlocal worst
        if isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor):
            same, _ = _arrays(x.detach().numpy(), y.detach().numpy(), key)
            if not same:
                differing.append(key)
                if x.shape == y.shape:
                    worst = max(worst, _max_abs(x.detach().numpy(), y.detach().numpy()))
        elif isinstance(x, dict) and isinstance(y, dict):
            if set(x) != set(y):
                differing.append(f"{key}: keys")
            for k in sorted(set(x) & set(y), key=str):
                walk(x[k], y[k], f"{key}.{k}" if key else str(k))
        elif isinstance(x, (list, tuple)) and isinstance(y, (list, tuple)) and len(x) == len(y):
            for i, (xi, yi) in enumerate(zip(x, y)):
                walk(xi, yi, f"{key}[{i}]")
        elif isinstance(x, np.ndarray) or isinstance(y, np.ndarray):
            if not np.array_equal(np.asarray(x), np.asarray(y)):
                differing.append(key)
        elif x != y:
            differing.append(key)

    walk(la, lb, "")
    if not differing and _zip_records(a) == _zip_records(b):
        return True, "same records; only the archive's folder name differs (torch.save takes the written file's name)"
    if not differing:
        return True, "same tensors and values (pickle bytes differ)"
    return False, f"{len(differing)} entries differ ({', '.join(differing[:3])}), tensor max |diff| {worst:.3g}"


def _zip_records(path: Path) -> dict[str, bytes] | None:
    """A torch zip checkpoint's records by name below its top folder, or None if not a zip."""
    import zipfile

    if not zipfile.is_zipfile(path):
        return None
    with zipfile.ZipFile(path) as archive:
        return {name.partition("/")[2]: archive.read(name) for name in archive.namelist()}


def compare_numpy(a: Path, b: Path) -> tuple[bool, str]:
    if a.suffix == ".npy":
        return _arrays(np.load(a), np.load(b), "array")
    with np.load(a) as za, np.load(b) as zb:
        if sorted(za.files) != sorted(zb.files):
            return False, f"arrays {sorted(za.files)} vs {sorted(zb.files)}"
        results = [_arrays(za[k], zb[k], k) for k in sorted(za.files)]
    bad = [detail for same, detail in results if not same]
    return (not bad), "; ".join(bad[:3]) if bad else "same arrays (zip bytes differ)"


def compare_png(a: Path, b: Path) -> tuple[bool, str]:
    from PIL import Image

    pa, pb = (np.asarray(Image.open(p).convert("RGBA")) for p in (a, b))
    if pa.shape != pb.shape:
        return False, f"size {pa.shape[1]}x{pa.shape[0]} vs {pb.shape[1]}x{pb.shape[0]}"
    changed = int(np.any(pa != pb, axis=-1).sum())
    if changed == 0:
        return True, "same pixels (metadata differs)"
    return False, f"{changed} of {pa.shape[0] * pa.shape[1]} pixels differ"


def compare_dicom(a: Path, b: Path) -> tuple[bool, str]:
    import pydicom

    da, db = (pydicom.dcmread(p) for p in (a, b))
    changed = [ea.keyword or str(ea.tag) for ea in da if ea.tag not in db or db[ea.tag].value != ea.value]
    changed += [eb.keyword or str(eb.tag) for eb in db if eb.tag not in da]
    if not changed:
        return True, "same elements (file bytes differ)"
    return False, f"elements differ: {', '.join(changed[:5])}"


def masked_lines(path: Path, root: Path, times: bool = True) -> list[str]:
    """The file's lines with the run's folder (and its parent) as ``<run>`` and, with
    ``times``, clock readings, durations and pids masked."""
    text = path.read_text(errors="replace")
    for folder in sorted({str(root), str(root.resolve()), str(root.parent), str(root.resolve().parent)}, key=len)[::-1]:
        text = text.replace(folder, "<run>")
    for pattern, replacement in VOLATILE_TEXT if times else ():
        text = pattern.sub(replacement, text)
    return text.splitlines()


def json_differences(x: object, y: object, key: str = "") -> list[str]:
    """Dotted keys where two parsed JSON values differ, skipping timing keys."""
    if isinstance(x, dict) and isinstance(y, dict):
        found = []
        for k in sorted(set(x) | set(y), key=str):
            if TIMING_NAME.match(str(k)):
                continue
            where = f"{key}.{k}" if key else str(k)
            found += json_differences(x[k], y[k], where) if k in x and k in y else [f"{where} (only in one)"]
        return found
    if isinstance(x, list) and isinstance(y, list) and len(x) == len(y):
        return [d for i, (xi, yi) in enumerate(zip(x, y)) for d in json_differences(xi, yi, f"{key}[{i}]")]
    return [] if x == y else [key or "<value>"]


def compare_json(a: Path, b: Path, root_a: Path, root_b: Path) -> tuple[bool, str]:
    """Parsed JSON, run paths masked, timing keys (``seconds``) skipped."""
    ja, jb = (json.loads("\n".join(masked_lines(p, r, times=False))) for p, r in ((a, root_a), (b, root_b)))
    differing = json_differences(ja, jb)
    if not differing:
        return True, "same values but timing keys (seconds) and run paths"
    return False, f"values differ at {', '.join(differing[:4])}" + (" ..." if len(differing) > 4 else "")


def compare_text(a: Path, b: Path, root_a: Path, root_b: Path) -> tuple[bool, str]:
    if a.suffix == ".json":
        return compare_json(a, b, root_a, root_b)
    la, lb = masked_lines(a, root_a), masked_lines(b, root_b)
    if la == lb:
        return True, "same text after masking times, durations, pids and run paths"
    first = next((i for i, (x, y) in enumerate(zip(la, lb)) if x != y), min(len(la), len(lb)))
    shown_a, shown_b = ((lines[first] if first < len(lines) else "<end>")[-70:] for lines in (la, lb))
    return False, f"{len(la)} vs {len(lb)} lines; line {first + 1}: A {shown_a!r}, B {shown_b!r}"


def _is_dicom(relative: str, path: Path) -> bool:
    if path.suffix.lower() == ".dcm":
        return True
    return "/dicom/" in f"/{relative}" and path.suffix == "" and path.read_bytes()[128:132] == b"DICM"


def compare_file(relative: str, a: Path, b: Path, root_a: Path, root_b: Path) -> tuple[bool, str]:
    """(same content, detail) for two files whose bytes differ."""
    name = a.name.lower()
    comparers: list[tuple[Callable[[], bool], Callable[[], tuple[bool, str]]]] = [
        (lambda: name.endswith((".tsv", ".csv")), lambda: compare_table(a, b)),
        (lambda: name.endswith((".nii", ".nii.gz")), lambda: compare_nifti(a, b)),
        (lambda: name.endswith((".pt", ".pth")), lambda: compare_torch(a, b)),
        (lambda: name.endswith((".npy", ".npz")), lambda: compare_numpy(a, b)),
        (lambda: name.endswith(".png"), lambda: compare_png(a, b)),
        (lambda: _is_dicom(relative, a), lambda: compare_dicom(a, b)),
        (lambda: a.suffix.lower() in TEXT_SUFFIXES, lambda: compare_text(a, b, root_a, root_b)),
    ]
    for applies, compare in comparers:
        if applies():
            try:
                return compare()
            except Exception as error:  # an unreadable file is a difference, named
                return False, f"could not compare: {type(error).__name__}: {error}"[:120]
    return False, "bytes differ"


def files_under(root: Path) -> dict[str, Path]:
    return {p.relative_to(root).as_posix(): p for p in sorted(root.rglob("*")) if p.is_file()}


def compare_runs(root_a: Path, root_b: Path, include_measurements: bool) -> list[tuple[str, str, str]]:
    """(relative path, status, detail) for every file under either root."""
    files_a, files_b = files_under(root_a), files_under(root_b)
    rows = []
    for relative in sorted(set(files_a) | set(files_b)):
        if not include_measurements and any(p.search(relative) for p in MEASUREMENTS):
            rows.append((relative, "run measurement", "not compared (timings, memory or run owner)"))
        elif relative not in files_b:
            rows.append((relative, "only in A", ""))
        elif relative not in files_a:
            rows.append((relative, "only in B", ""))
        elif sha256(files_a[relative]) == sha256(files_b[relative]):
            rows.append((relative, "identical", ""))
        else:
            same, detail = compare_file(relative, files_a[relative], files_b[relative], root_a, root_b)
            rows.append((relative, "same content" if same else "DIFFERENT", detail))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results_a", type=Path)
    parser.add_argument("results_b", type=Path)
    parser.add_argument("--all", action="store_true", help="also compare benchmarks/ tables and the run owner file")
    parser.add_argument("--quiet", action="store_true", help="list only files that are not byte-identical")
    args = parser.parse_args(argv)
    for root in (args.results_a, args.results_b):
        if not root.is_dir():
            parser.error(f"{root} is not a folder")
    rows = compare_runs(args.results_a, args.results_b, args.all)
    shown = [r for r in rows if r[1] != "identical"] if args.quiet else rows
    width = max([len(r[0]) for r in shown] + [4])
    print(f"A: {args.results_a}\nB: {args.results_b}\n")
    print(f"| {'file':<{width}} | {'status':<15} | detail")
    print(f"|{'-' * (width + 2)}|{'-' * 17}|-------")
    for relative, status, detail in shown:
        print(f"| {relative:<{width}} | {status:<15} | {detail}")
    counts: dict[str, int] = {}
    for _, status, _ in rows:
        counts[status] = counts.get(status, 0) + 1
    print("\n" + ", ".join(f"{status}: {n}" for status, n in sorted(counts.items())))
    return 1 if counts.get("DIFFERENT") or counts.get("only in A") or counts.get("only in B") else 0


if __name__ == "__main__":
    sys.exit(main())
