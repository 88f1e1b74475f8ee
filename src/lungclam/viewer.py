"""An offline viewer of the model-grid scans and CLAMs: HTML pages built on NiiVue.

A cohort of up to ``max_subjects_per_page`` subjects gets one page, ``index.html``. The
page opens from disk (``file://``) with no server and no network: the vendored NiiVue
bundle (a classic UMD script, so no module import from another file, which ``file://``
forbids) and every volume are inlined into the page, and its Content-Security-Policy allows
no request to anywhere (``default-src 'none'``).

A larger cohort is split (:func:`write_viewer`): ``index.html`` keeps the study template
with the cluster-mean and population-mean CLAMs and the subject list, each subject linking
to ``subjects/{subject}.html``, which holds that subject's scan and CLAM (and the template
lung mask, for the outline) and links back. The subject pages share one copy of NiiVue,
``subjects/niivue-*.umd.js``, loaded by a classic ``<script src>`` from the same folder
(which ``file://`` allows; their policy admits scripts from there and nowhere else), so
that a page adds only its own volumes, not another 2.3 MB of NiiVue. The index inlines
NiiVue as the single page does, so that it also works on its own inside the report.

Volumes are the files the workflow wrote, re-encoded for the page only where it changes
nothing a reader sees: CT in HU is rounded to int16 (the lung window spans 1,200 HU),
importance in ``[0, 1]`` is stored as uint8 with ``scl_slope = 1/255`` (steps of 0.004),
and the template lung mask as uint8 0/1. Each becomes a fresh NIfTI-1 header with the
source file's affine (nothing else of its header is copied, so no text from upstream
reaches the page), gzipped and base64-encoded into a JSON block that the page decodes
when a volume is first shown. Arrays here are in NIfTI voxel order ``(i, j, k)``, as
nibabel reads them; NiiVue places them in world space by the affine.

Display conventions follow :mod:`lungclam.figure_panels`: radiological view (the
patient's right on the screen's left in axial and coronal views), anterior on the left in
sagittal views, CT in grey over the lung window -1000..200 HU, importance with the ``jet``
colour map on ``[0, 1]``, and the template lung outline in gold (as in
:mod:`lungclam.figures`).
"""

from __future__ import annotations

import base64
import gzip
import html
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from lungclam.atomic import atomic_path

__all__ = [
    "HU_WINDOW",
    "start_point",
    "ViewerInputs",
    "build_page",
    "build_split_pages",
    "decode_volume",
    "encode_volume",
    "read_page_data",
    "read_assignments",
    "SUBJECTS_FOLDER",
    "is_split",
    "subject_page",
    "write_viewer",
]

#: Lung window of the CT display, HU (low, high); as :data:`lungclam.figure_panels.HU_WINDOW`.
HU_WINDOW: tuple[float, float] = (-1000.0, 200.0)
#: Default overlay opacity and the importance below which the CLAM is not drawn.
DEFAULT_OPACITY = 0.55
DEFAULT_THRESHOLD = 0.05

_KINDS = ("ct", "importance", "mask")
# The page's Content-Security-Policy: no request to anywhere; inline scripts and styles only.
_CSP = (
    "default-src 'none'; script-src 'unsafe-inline' 'unsafe-eval' 'wasm-unsafe-eval'; "
    "style-src 'unsafe-inline'; img-src data: blob:; worker-src blob:; connect-src data: blob:"
)
# A split viewer's subject page loads NiiVue from its own folder on disk: scripts from the
# page's origin ('self': Chromium's reading of a file:// page) or file: (for browsers that
# give a file:// page no origin to match), never from a network scheme.
_CSP_SHARED_SCRIPT = _CSP.replace("script-src ", "script-src 'self' file: ")

#: Folder of the subject pages of a split viewer, beside ``index.html``.
SUBJECTS_FOLDER = "subjects"
# Subject IDs become file names of a split viewer: as the workflow's wildcard constraint
_SUBJECT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")


def encode_volume(path: str | Path, kind: str) -> tuple[str, tuple[int, ...], np.ndarray]:
    """Read a 3D NIfTI and return it as a base64 string of a compact gzipped NIfTI-1.

    Args:
        path: the NIfTI file the workflow wrote.
        kind: ``"ct"`` (HU, stored as int16, rounded and clipped to the int16 range),
            ``"importance"`` (values in ``[0, 1]``, stored as uint8 with slope 1/255;
            values outside are clipped) or ``"mask"`` (stored as uint8, 1 where > 0).

    Returns:
        ``(base64 text, shape (i, j, k), affine 4x4 in RAS mm)``.

    ValueError (naming the file) for a volume that is not 3D or holds non-finite values.
    """
    if kind not in _KINDS:
        raise ValueError(f"kind must be one of {_KINDS}, got {kind!r}")
    image = nib.load(str(path))
    data = np.asarray(image.dataobj, dtype=np.float64)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise ValueError(f"{path}: expected a 3D volume, got shape {data.shape}")
    if not np.isfinite(data).all():
        raise ValueError(f"{path}: holds non-finite values (NaN or infinity)")
    affine = np.asarray(image.affine, dtype=np.float64)
    if kind == "ct":
        stored = np.clip(np.rint(data), -32768, 32767).astype(np.int16)
        slope = 1.0
    elif kind == "importance":
        stored = np.rint(np.clip(data, 0.0, 1.0) * 255.0).astype(np.uint8)
        slope = 1.0 / 255.0
    else:
        stored = (data > 0).astype(np.uint8)
        slope = 1.0
    out = nib.Nifti1Image(stored, affine)  # a fresh header: only the affine is carried over
    out.header.set_slope_inter(slope, 0.0)
    out.header.set_xyzt_units("mm")
    out.set_qform(affine, code=1)
    out.set_sform(affine, code=1)
    # mtime=0: the same inputs give the same page, byte for byte
    packed = gzip.compress(out.to_bytes(), compresslevel=9, mtime=0)
    return base64.b64encode(packed).decode("ascii"), tuple(int(s) for s in stored.shape), affine


def read_assignments(path: str | Path) -> pd.DataFrame:
    """``clusters.tsv`` as the viewer lists it: ``subject`` (str), ``cluster`` (int),
    ``q_1..q_K`` (float, in that order) and ``confidence`` when the table has one.

    ValueError when the subject or cluster column or every q column is missing.
    """
    table = pd.read_csv(path, sep="\t", dtype={"subject": str})
    missing = [c for c in ("subject", "cluster") if c not in table.columns]
    q_columns = sorted((c for c in table.columns if c.startswith("q_") and c[2:].isdigit()), key=lambda c: int(c[2:]))
    if missing or not q_columns:
        raise ValueError(
            f"{path}: needs columns subject, cluster and q_1..q_K; missing "
            f"{missing + ([] if q_columns else ['q_1..q_K'])}"
        )
    columns = ["subject", "cluster", *q_columns] + (["confidence"] if "confidence" in table.columns else [])
    out = table[columns].copy()
    out["cluster"] = out["cluster"].astype(int)
    return out


@dataclass(frozen=True)
class ViewerInputs:
    """The files one viewer page shows (all on the model grid).

    Attributes:
        template: ``template/grid_template.nii.gz`` (HU).
        mask: ``template/grid_mask.nii.gz`` (lung > 0).
        cluster_means: cluster k (1..K) -> ``clam/cluster_{k}_mean.nii.gz``.
        population_mean: ``clam/population_mean.nii.gz``.
        scans: subject -> ``downsampled/{subject}.nii.gz`` (HU).
        clams: subject -> ``clam/{subject}.nii.gz`` (importance).
        assignments: :func:`read_assignments` of ``clusters.tsv``.
    """

    template: Path
    mask: Path
    cluster_means: Mapping[int, Path]
    population_mean: Path
    scans: Mapping[str, Path]
    clams: Mapping[str, Path]
    assignments: pd.DataFrame


def _check_grid(
    name: str,
    shape: tuple[int, ...],
    affine: np.ndarray,
    ref_shape: tuple[int, ...],
    ref_affine: np.ndarray,
    path: Path,
) -> None:
    if shape != ref_shape or not np.allclose(affine, ref_affine, atol=1e-3):
        raise ValueError(
            f"{name}: {path} is not on the model grid of the template "
            f"(shape {shape} vs {ref_shape}, or a different affine)"
        )


_Grid = tuple[tuple[int, ...], np.ndarray]  # (shape, affine) of the template


def _encode_on_grid(listed: Sequence[tuple[str, str, Path, str]], grid: _Grid) -> dict[str, str]:
    """``(key, name, path, kind)`` -> {key: base64 volume}, each checked to lie on ``grid``."""
    volumes: dict[str, str] = {}
    for key, name, path, kind in listed:
        text, shape, affine = encode_volume(path, kind)
        _check_grid(name, shape, affine, grid[0], grid[1], Path(path))
        volumes[key] = text
    return volumes


def _template_volumes(inputs: ViewerInputs) -> tuple[dict[str, str], _Grid]:
    """The template, its lung mask and the mean CLAMs, base64-encoded and keyed as the page's
    script names them; with the template's grid, which every other volume must share."""
    template, ref_shape, ref_affine = encode_volume(inputs.template, "ct")
    grid = (ref_shape, ref_affine)
    listed: list[tuple[str, str, Path, str]] = [
        ("mask", "template lung mask", inputs.mask, "mask"),
        ("population", "population mean CLAM", inputs.population_mean, "importance"),
    ]
    listed += [
        (f"cluster/{k}", f"cluster {k} mean CLAM", Path(p), "importance")
        for k, p in sorted(inputs.cluster_means.items())
    ]
    return {"template": template, **_encode_on_grid(listed, grid)}, grid


def _subject_volumes(inputs: ViewerInputs, subject: str, grid: _Grid) -> dict[str, str]:
    """One subject's scan and CLAM, keyed ``subject/{id}/scan`` and ``subject/{id}/clam``."""
    listed: list[tuple[str, str, Path, str]] = []
    for part, paths, kind in (("scan", inputs.scans, "ct"), ("clam", inputs.clams, "importance")):
        if subject not in paths:
            raise ValueError(f"subject {subject!r}: no {part} volume given to the viewer")
        listed.append((f"subject/{subject}/{part}", f"subject {subject!r} {part}", Path(paths[subject]), kind))
    return _encode_on_grid(listed, grid)


def _volumes(inputs: ViewerInputs) -> dict[str, str]:
    """Every volume of the single page, base64-encoded, keyed as the page's script names them."""
    volumes, grid = _template_volumes(inputs)
    for subject in inputs.assignments["subject"]:
        volumes.update(_subject_volumes(inputs, subject, grid))
    return volumes


def _finite_or_none(value: object) -> float | None:
    number = float(value)  # type: ignore[arg-type]
    return number if math.isfinite(number) else None


def _listing(assignments: pd.DataFrame, cluster_ids: Sequence[int]) -> dict:
    """Subjects and clusters as the page's script reads them (plain JSON)."""
    q_columns = [c for c in assignments.columns if c.startswith("q_")]
    has_confidence = "confidence" in assignments.columns
    subjects = []
    for row in assignments.itertuples(index=False):
        entry = {
            "id": row.subject,
            "cluster": int(row.cluster),
            "q": [_finite_or_none(getattr(row, c)) for c in q_columns],
        }
        if has_confidence:
            entry["confidence"] = _finite_or_none(row.confidence)
        subjects.append(entry)
    sizes = assignments["cluster"].value_counts()
    clusters = [{"k": int(k), "n": int(sizes.get(k, 0))} for k in cluster_ids]
    return {"subjects": subjects, "clusters": clusters, "q_columns": q_columns, "has_confidence": has_confidence}


def start_point(mask_path: str | Path) -> list[float]:
    """Where the page puts its crosshair first: world coordinates (RAS, mm) of the median
    voxel of the right lung (label 1 where the mask has labels, else the mask's half
    towards the patient's right), at the median height and depth of the whole mask.
    The grid's centre if the mask is empty."""
    image = nib.load(str(mask_path))
    labels = np.asarray(image.dataobj)
    labels = labels[..., 0] if labels.ndim == 4 else labels
    affine = np.asarray(image.affine, dtype=np.float64)
    voxels = np.argwhere(labels > 0)
    if voxels.size == 0:
        centre = (np.asarray(labels.shape, dtype=np.float64) - 1) / 2
        return [float(v) for v in (affine @ np.append(centre, 1.0))[:3]]
    world = (affine @ np.column_stack([voxels, np.ones(len(voxels))]).T).T[:, :3]
    values = labels[tuple(voxels.T)]
    right = (
        world[values == 1]
        if ((values == 1).any() and (values == 2).any())
        else world[world[:, 0] >= (world[:, 0].min() + world[:, 0].max()) / 2]
    )  # RAS: +x is the patient's right
    return [float(np.median(right[:, 0])), float(np.median(world[:, 1])), float(np.median(world[:, 2]))]


def _script_safe(text: str) -> str:
    """Text that cannot end or comment out the <script> element it is inlined into.

    Only ``</script`` (any case) and ``<!--`` do that; in JavaScript they can occur inside
    strings, template literals or regular expressions, where ``<\\/`` and ``<\\!`` read
    the same.
    """
    return re.sub(r"</(script)", r"<\\/\1", text, flags=re.IGNORECASE).replace("<!--", "<\\!--")


def _cluster_ids(inputs: ViewerInputs) -> list[int]:
    """The clusters that have a mean map; ValueError when a subject's cluster has none."""
    cluster_ids = sorted(int(k) for k in inputs.cluster_means)
    assigned = sorted(set(inputs.assignments["cluster"].astype(int)))
    orphans = [k for k in assigned if k not in cluster_ids]
    if orphans:
        raise ValueError(f"clusters {orphans} have subjects but no cluster-mean CLAM was given")
    return cluster_ids


def _display(inputs: ViewerInputs) -> dict:
    """What every page's script needs besides volumes and listing: where the crosshair
    starts, the HU window and the overlay's default opacity and threshold."""
    return {
        "start_mm": start_point(inputs.mask),
        "hu_window": list(HU_WINDOW),
        "opacity": DEFAULT_OPACITY,
        "threshold": DEFAULT_THRESHOLD,
    }


def _render(title: str, niivue: str, data: dict, nav: str = "", csp: str = _CSP) -> str:
    """A page from :data:`_PAGE`: ``niivue`` is the whole ``<script>`` element that defines
    the global ``niivue``; ``nav`` is HTML put above the lists (links between pages);
    ``csp`` the Content-Security-Policy."""
    parts = {
        "CSP": html.escape(csp, quote=False),
        "TITLE": html.escape(title),
        "NIIVUE": niivue,
        "NAV": nav,
        # "<" as a JSON unicode escape: the data cannot close its <script> element
        "DATA": json.dumps(data, separators=(",", ":")).replace("<", "\\u003c"),
        "APP": _APP,
    }
    # one pass, so that no inserted text is searched for placeholders again
    return re.sub(r"%%(CSP|TITLE|NIIVUE|NAV|DATA|APP)%%", lambda m: parts[m.group(1)], _PAGE)


def _inline_script(niivue_js: str) -> str:
    return f"<script>{_script_safe(niivue_js)}</script>"


def build_page(inputs: ViewerInputs, niivue_js: str, title: str = "lungclam viewer") -> str:
    """The viewer page as one HTML text (UTF-8), everything inlined.

    Args:
        inputs: the volumes and assignments to show (:class:`ViewerInputs`).
        niivue_js: the vendored NiiVue UMD bundle (defines the global ``niivue``).
        title: the page title.

    ValueError when a subject lacks a volume, a volume is off the template's grid, or a
    cluster in ``clusters.tsv`` has no mean map.
    """
    cluster_ids = _cluster_ids(inputs)
    data = {"page": "all", "volumes": _volumes(inputs), **_listing(inputs.assignments, cluster_ids), **_display(inputs)}
    return _render(title, _inline_script(niivue_js), data)


def is_split(n_subjects: int, max_subjects_per_page: int | None) -> bool:
    """Whether a cohort of ``n_subjects`` gets a page per subject plus an index (more than
    ``max_subjects_per_page`` subjects; ``None``: never)."""
    if max_subjects_per_page is not None and max_subjects_per_page < 1:
        raise ValueError(f"max_subjects_per_page must be at least 1, got {max_subjects_per_page}")
    return max_subjects_per_page is not None and n_subjects > max_subjects_per_page


def subject_page(subject: str) -> str:
    """Where a split viewer keeps a subject's page, relative to its ``index.html``.

    ValueError for an ID that is not a plain file name (letters, digits, ``_``, ``-``; as
    the workflow's subject wildcard)."""
    if not _SUBJECT_ID.fullmatch(subject):
        raise ValueError(
            f"subject {subject!r}: its ID cannot name a viewer page "
            "(letters, digits, '_' and '-' only, starting with a letter or digit)"
        )
    return f"{SUBJECTS_FOLDER}/{subject}.html"


def _neighbours_nav(subject: str, cluster: int, members: Sequence[str]) -> str:
    """The subject page's links: back to the index, and to the previous and next subject of
    the same cluster (in the order of ``clusters.tsv``)."""
    links = ['<a id="index-link" href="../index.html">&larr; index: study template, cluster means, all subjects</a>']
    at = members.index(subject)
    for rel, other, text in (
        ("prev", members[at - 1] if at > 0 else None, "&larr; previous in cluster {k}: {id}"),
        ("next", members[at + 1] if at + 1 < len(members) else None, "next in cluster {k}: {id} &rarr;"),
    ):
        if other is not None:
            name = html.escape(other)
            links.append(f'<a id="{rel}-link" rel="{rel}" href="{name}.html">{text.format(k=cluster, id=name)}</a>')
    return '<nav id="pages">' + "<br>\n".join(links) + "</nav>"


def build_split_pages(
    inputs: ViewerInputs, niivue_js: str, script_name: str, title: str = "lungclam viewer"
) -> dict[str, str]:
    """The pages of a split viewer: ``{path relative to the index: HTML text}``.

    ``index.html`` inlines NiiVue and holds the template, its lung mask and the mean CLAMs;
    it lists every subject with a link to ``subjects/{subject}.html``. Each subject page
    holds that subject's scan and CLAM and the template lung mask (for the outline), and
    loads NiiVue from ``subjects/{script_name}``, which the caller writes there.

    Args:
        inputs: the volumes and assignments to show (:class:`ViewerInputs`).
        niivue_js: the vendored NiiVue UMD bundle (defines the global ``niivue``).
        script_name: the file name of the NiiVue copy beside the subject pages.
        title: the index's title; subject pages add the subject's ID.

    ValueError as :func:`build_page`, and for a subject ID that cannot name a file.
    """
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*\.js", script_name):
        raise ValueError(f"script_name must be a plain .js file name, got {script_name!r}")
    cluster_ids = _cluster_ids(inputs)
    listing = _listing(inputs.assignments, cluster_ids)
    hrefs = {s["id"]: subject_page(s["id"]) for s in listing["subjects"]}
    if len(hrefs) != len(listing["subjects"]):
        raise ValueError("clusters.tsv lists a subject more than once")
    template_volumes, grid = _template_volumes(inputs)
    display = _display(inputs)
    index = {
        "page": "index",
        "volumes": template_volumes,
        **listing,
        **display,
        "subjects": [{**s, "href": hrefs[s["id"]]} for s in listing["subjects"]],
    }
    pages = {
        "index.html": _render(
            title,
            _inline_script(niivue_js),
            index,
            '<p class="note" id="pages">One page per subject: the subject names below '
            f"open them (<code>{SUBJECTS_FOLDER}/</code> beside this page).</p>",
        )
    }
    shared_script = f'<script src="{html.escape(script_name)}"></script>'
    for entry in listing["subjects"]:
        members = [s["id"] for s in listing["subjects"] if s["cluster"] == entry["cluster"]]
        data = {
            "page": "subject",
            "volumes": {"mask": template_volumes["mask"], **_subject_volumes(inputs, entry["id"], grid)},
            **listing,
            **display,
            "subjects": [entry],
        }
        pages[hrefs[entry["id"]]] = _render(
            f"{title}: subject {entry['id']}",
            shared_script,
            data,
            _neighbours_nav(entry["id"], entry["cluster"], members),
            _CSP_SHARED_SCRIPT,
        )
    return pages


def read_page_data(path: str | Path) -> dict:
    """The data block a viewer page embeds: ``page`` (``all``, or a split viewer's ``index``
    or ``subject``), subjects, clusters and the base64 volumes (keys ``template``, ``mask``,
    ``population``, ``cluster/{k}``, ``subject/{id}/scan`` and ``subject/{id}/clam``; a
    split viewer's index holds the first four kinds, a subject page the mask and that
    subject's two). For checks and tests."""
    text = Path(path).read_text(encoding="utf-8")
    start = text.index('<script type="application/json" id="lungclam-data">')
    start = text.index(">", start) + 1
    return json.loads(text[start : text.index("</script>", start)])


def decode_volume(text: str) -> nib.Nifti1Image:
    """A volume of the page's data block as a nibabel image (scaled values via
    ``get_fdata``)."""
    return nib.Nifti1Image.from_bytes(gzip.decompress(base64.b64decode(text)))


def _remove_stale_subject_pages(folder: Path, keep: frozenset[str] = frozenset()) -> int:
    """Delete what an earlier split viewer left in ``folder`` (its subject pages, which hold
    that run's data, and its NiiVue copy), except the file names in ``keep``; anything else
    stays. Returns how many files went."""
    if not folder.is_dir():
        return 0
    removed = 0
    for path in folder.iterdir():
        ours = (
            path.is_file()
            and path.name not in keep
            and (
                re.fullmatch(r"niivue-.*\.umd\.js", path.name)
                or (
                    path.suffix == ".html"
                    and 'id="lungclam-data"' in path.read_text(encoding="utf-8", errors="replace")
                )
            )
        )
        if ours:
            path.unlink()
            removed += 1
    if not any(folder.iterdir()):
        folder.rmdir()
    return removed


def write_viewer(
    inputs: ViewerInputs, niivue_js_path: str | Path, out: str | Path, max_subjects_per_page: int | None = None
) -> int:
    """Write the viewer at ``out`` (its ``index.html``); each file atomically. Returns the
    bytes written, all pages together.

    Up to ``max_subjects_per_page`` subjects (``None``: any number), one page,
    :func:`build_page`; a split viewer's subject pages left beside it by an earlier run are
    removed, as they would show that run's data. Above it, :func:`build_split_pages`: the
    subject pages and their NiiVue copy (the vendored file, byte for byte) go into
    ``subjects/`` beside ``out``, the index last, so that it never links a page not yet
    written.
    """
    out = Path(out)
    niivue_js_path = Path(niivue_js_path)
    niivue_js = niivue_js_path.read_text(encoding="utf-8")
    if not is_split(len(inputs.assignments), max_subjects_per_page):
        page = build_page(inputs, niivue_js).encode("utf-8")
        with atomic_path(out) as tmp:
            Path(tmp).write_bytes(page)
        _remove_stale_subject_pages(out.parent / SUBJECTS_FOLDER)
        return len(page)
    pages = build_split_pages(inputs, niivue_js, niivue_js_path.name)
    script = niivue_js_path.read_bytes()
    with atomic_path(out.parent / SUBJECTS_FOLDER / niivue_js_path.name) as tmp:
        Path(tmp).write_bytes(script)
    written = len(script)
    for name in sorted(pages, key=lambda n: n == "index.html"):  # the index last
        page = pages[name].encode("utf-8")
        with atomic_path(out if name == "index.html" else out.parent / name) as tmp:
            Path(tmp).write_bytes(page)
        written += len(page)
    # pages of subjects no longer in the cohort, were the folder not emptied before
    _remove_stale_subject_pages(
        out.parent / SUBJECTS_FOLDER, frozenset({niivue_js_path.name, *(Path(n).name for n in pages)})
    )
    return written


# The page. No external resource of any kind: the policy makes any attempt fail.
_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="%%CSP%%">
<title>%%TITLE%%</title>
<style>
body { margin: 0; font: 14px/1.35 system-ui, sans-serif; color: #222; display: flex; height: 100vh; }
#side { width: 330px; overflow-y: auto; padding: 8px 10px; border-right: 1px solid #ccc; box-sizing: border-box; }
#main { flex: 1; display: flex; flex-direction: column; min-width: 0; }
#showing { font-weight: 600; padding: 6px 10px; background: #f3f3f3; border-bottom: 1px solid #ccc; }
#controls { padding: 4px 10px; display: flex; flex-wrap: wrap; gap: 4px 16px; align-items: center; }
#view { flex: 1; min-height: 0; background: #000; }
#gl { width: 100%; height: 100%; display: block; }
#legend { display: flex; gap: 24px; padding: 4px 10px 8px; align-items: flex-start; font-size: 12px; }
.bar { width: 220px; height: 12px; border: 1px solid #555; }
.ticks { display: flex; justify-content: space-between; width: 222px; }
#location { font-size: 12px; color: #444; min-height: 1.3em; }
h2 { font-size: 15px; margin: 10px 0 4px; }
table { border-collapse: collapse; width: 100%; font-size: 12px; margin-bottom: 6px; }
th, td { text-align: right; padding: 1px 4px; }
th:first-child, td:first-child { text-align: left; }
button.pick { font: inherit; border: 1px solid #bbb; background: #fff; cursor: pointer; padding: 1px 6px; }
button.pick.active { background: #ffd54a; border-color: #b08900; }
.note { font-size: 12px; color: #555; }
</style>
</head>
<body>
<div id="side">%%NAV%%
<div id="template-section"><h2>Study template</h2>
<div id="template-list"></div></div>
<h2>Subjects by cluster</h2>
<div id="subject-list"></div>
<p class="note">q_k: the subject's soft assignment to cluster k. Volumes are the model-grid
files of this run (<code>downsampled/</code>, <code>clam/</code>, <code>template/grid_*</code>).</p>
</div>
<div id="main">
<div id="showing">loading ...</div>
<div id="controls">
<span>view:
<label><input type="radio" name="slice" value="AXIAL"> axial</label>
<label><input type="radio" name="slice" value="CORONAL"> coronal</label>
<label><input type="radio" name="slice" value="SAGITTAL"> sagittal</label>
<label><input type="radio" name="slice" value="MULTIPLANAR" checked> multiplanar</label></span>
<label>CLAM opacity <input id="opacity" type="range" min="0" max="1" step="0.05"> <span id="opacity-value"></span></label>
<label>threshold <input id="threshold" type="range" min="0" max="0.95" step="0.01"> <span id="threshold-value"></span></label>
<label><input id="outline" type="checkbox" checked> template lung outline</label>
</div>
<div id="view"><canvas id="gl"></canvas></div>
<div id="legend">
<div><div>CT, HU (lung window)</div><div class="bar" id="hu-bar"></div><div class="ticks" id="hu-ticks"></div></div>
<div><div>CLAM importance (0..1)</div><div class="bar" id="imp-bar"></div><div class="ticks" id="imp-ticks"></div></div>
<div><div>Radiological view: patient's right on the left (R/L), anterior on top in axial (A/P), anterior on the left in sagittal.</div><div id="location"></div></div>
</div>
</div>
%%NIIVUE%%
<script type="application/json" id="lungclam-data">%%DATA%%</script>
<script>%%APP%%</script>
</body>
</html>
"""

# The page's own script: lists, controls, and loading volumes from the embedded data.
_APP = r"""
"use strict";
(function () {
  const data = JSON.parse(document.getElementById("lungclam-data").textContent);
  // matplotlib's jet at 0, 1/8, 3/8, 5/8, 7/8 and 1: the colours of the PNG figures
  const JET = [[0, [0, 0, 128]], [32, [0, 0, 255]], [96, [0, 255, 255]], [159, [255, 255, 0]],
               [223, [255, 0, 0]], [255, [128, 0, 0]]];
  // The overlay always maps importance 0..1 onto the whole table, so colours mean what the
  // colour bar says; the threshold makes the table transparent up to its own index instead.
  function jetAt(i) {
    for (let n = 1; n < JET.length; n++) {
      const [i0, c0] = JET[n - 1], [i1, c1] = JET[n];
      if (i <= i1) return c0.map((v, j) => Math.round(v + (c1[j] - v) * (i - i0) / (i1 - i0)));
    }
    return JET[JET.length - 1][1];
  }
  function thresholdedJet(threshold) {
    const cut = Math.min(254, Math.max(0, Math.round(threshold * 255)));  // 0 is never drawn
    const name = "lungclam_jet_" + cut;
    if (!nv.colormaps().includes(name)) {
      const points = [[0, jetAt(0), 0], [cut, jetAt(cut), 0], [cut + 1, jetAt(cut + 1), 255],
                      ...JET.filter(p => p[0] > cut + 1).map(p => [p[0], p[1], 255])].filter((p, n) => n !== 1 || cut > 0);
      nv.addColormap(name, {R: points.map(p => p[1][0]), G: points.map(p => p[1][1]), B: points.map(p => p[1][2]),
                            A: points.map(p => p[2]), I: points.map(p => p[0])});
    }
    return name;
  }
  const nv = new niivue.Niivue({
    isRadiologicalConvention: true, sagittalNoseLeft: true, showAllOrientationMarkers: true,
    multiplanarShowRender: niivue.SHOW_RENDER.NEVER, multiplanarLayout: niivue.MULTIPLANAR_TYPE.ROW,
    isColorbar: false, show3Dcrosshair: false, crosshairColor: [0.3, 1, 0.3, 0.8], crosshairWidth: 0.5,
    backColor: [0, 0, 0, 1], fontMinPx: 16,
    logLevel: "error", loadingText: "loading ...",
  });
  // the drawing layer holds the template lung mask; label 1 drawn in gold (figures.TEMPLATE_COLOUR)
  nv.setDrawColormap({R: [0, 255], G: [0, 215], B: [0, 0], A: [0, 255], I: [0, 1], labels: ["", "template lungs"]});
  const cache = new Map();
  const state = {opacity: data.opacity, threshold: data.threshold, outline: true, selection: null};
  let drawn = null;  // the volumes on screen: [background, overlay]

  function volume(key, name) {
    if (!cache.has(key)) {
      if (!(key in data.volumes)) throw new Error("no volume " + key);
      // NiiVue picks the reader by the name's extension
      cache.set(key, niivue.NVImage.loadFromBase64({base64: data.volumes[key], name: name + ".nii.gz"}));
    }
    return cache.get(key);
  }
  const subjectOf = id => data.subjects.find(s => s.id === id);
  const fmt = x => (x === null || x === undefined) ? "n/a" : x.toFixed(2);

  function describe(sel) {
    if (sel.subject) {
      const s = subjectOf(sel.subject);
      let text = "Subject " + s.id + ", cluster " + s.cluster + " (q_" + s.cluster + " = " + fmt(s.q[s.cluster - 1]) + ")";
      if (data.has_confidence) text += ", confidence " + fmt(s.confidence);
      return text + ": its model-grid scan with its CLAM for cluster " + s.cluster;
    }
    if (sel.cluster) {
      const c = data.clusters.find(c => c.k === sel.cluster);
      return "Cluster " + sel.cluster + " (n = " + c.n + "): mean CLAM on the study template";
    }
    return "Population (all clusters): mean of the cluster-mean CLAMs on the study template";
  }

  function styleOverlay(overlay) {
    overlay.colormap = thresholdedJet(state.threshold);
    overlay.cal_min = 0.0;
    overlay.cal_max = 1.0;
    overlay.opacity = state.opacity;
  }

  async function show(sel) {
    let back, over;
    if (sel.subject) {
      if (!subjectOf(sel.subject)) throw new Error("no subject " + sel.subject);
      back = await volume("subject/" + sel.subject + "/scan", sel.subject + "_scan");
      over = await volume("subject/" + sel.subject + "/clam", sel.subject + "_clam");
    } else {
      back = await volume("template", "grid_template");
      over = await volume(sel.cluster ? "cluster/" + sel.cluster : "population",
                          sel.cluster ? "cluster_" + sel.cluster + "_mean" : "population_mean");
    }
    back.colormap = "gray";
    back.cal_min = data.hu_window[0];
    back.cal_max = data.hu_window[1];
    back.opacity = 1.0;
    styleOverlay(over);
    // Both layers at once and one refresh: NiiVue's addVolume and removeVolume refresh all
    // layers each time, and every refresh recomputes the background's 3D gradients, about
    // half a second in software WebGL.
    nv.volumes = [back, over];
    nv.back = back;
    nv.overlays = [over];
    nv.updateGLVolume();
    drawn = [back, over];
    const mask = await volume("mask", "grid_mask");
    nv.loadDrawing(mask);
    applyOutline();
    nv.drawScene();
    state.selection = sel;
    nv.createOnLocationChange();
    document.getElementById("showing").textContent = describe(sel);
    document.querySelectorAll("button.pick").forEach(b =>
      b.classList.toggle("active", b.dataset.key === keyOf(sel)));
  }
  const keyOf = sel => sel.subject ? "s:" + sel.subject : (sel.cluster ? "c:" + sel.cluster : "population");

  function applyOutline() {
    // The lung mask is loaded as NiiVue's drawing layer: its inside is left clear and its
    // rim (edge pixels of each slice) drawn opaque in the drawing colour of label 1.
    nv.drawOpacity = state.outline ? 0.001 : 0.0;
    nv.drawRimOpacity = state.outline ? 1.0 : -1.0;
  }

  function button(label, sel, title) {
    const b = document.createElement("button");
    b.className = "pick";
    b.textContent = label;
    b.dataset.key = keyOf(sel);
    if (title) b.title = title;
    b.addEventListener("click", () => show(sel).catch(report));
    return b;
  }

  // a split viewer's index links each subject's own page instead of showing it here
  function subjectLink(s) {
    const a = document.createElement("a");
    a.className = "pick subject-page";
    a.href = s.href;
    a.textContent = s.id;
    a.title = "open the page of subject " + s.id;
    return a;
  }

  function buildLists() {
    const tl = document.getElementById("template-list");
    // a subject's own page shows that subject only; its link leads back to the template
    document.getElementById("template-section").hidden = data.page === "subject";
    tl.appendChild(button("population mean", {}));
    for (const c of data.clusters) {
      tl.appendChild(document.createTextNode(" "));
      tl.appendChild(button("cluster " + c.k + " mean (n = " + c.n + ")", {cluster: c.k}));
    }
    const sl = document.getElementById("subject-list");
    for (const c of data.clusters) {
      if (data.page === "subject" && !data.subjects.some(s => s.cluster === c.k)) continue;
      const h = document.createElement("div");
      h.textContent = "Cluster " + c.k + " (n = " + c.n + ")";
      h.style.fontWeight = "600";
      sl.appendChild(h);
      const table = document.createElement("table");
      const head = table.insertRow();
      for (const name of ["subject", ...data.q_columns, ...(data.has_confidence ? ["confidence"] : [])]) {
        const th = document.createElement("th");
        th.textContent = name;
        head.appendChild(th);
      }
      for (const s of data.subjects.filter(s => s.cluster === c.k)) {
        const row = table.insertRow();
        row.insertCell().appendChild(s.href ? subjectLink(s) : button(s.id, {subject: s.id}));
        s.q.forEach(q => { row.insertCell().textContent = fmt(q); });
        if (data.has_confidence) row.insertCell().textContent = fmt(s.confidence);
      }
      sl.appendChild(table);
    }
  }

  function gradient(stops) {
    return "linear-gradient(to right, " + stops.map(([i, c]) => "rgb(" + c.join(",") + ") " + (100 * i / 255).toFixed(1) + "%").join(", ") + ")";
  }
  function ticks(id, values) {
    const el = document.getElementById(id);
    for (const v of values) { const s = document.createElement("span"); s.textContent = v; el.appendChild(s); }
  }
  function buildLegend() {
    document.getElementById("hu-bar").style.background = gradient([[0, [0, 0, 0]], [255, [255, 255, 255]]]);
    const [lo, hi] = data.hu_window;
    ticks("hu-ticks", [lo, lo + (hi - lo) / 4, lo + (hi - lo) / 2, lo + 3 * (hi - lo) / 4, hi].map(v => v.toFixed(0)));
    document.getElementById("imp-bar").style.background = gradient(JET);
    ticks("imp-ticks", ["0", "0.25", "0.5", "0.75", "1"]);
  }

  function buildControls() {
    document.querySelectorAll("input[name=slice]").forEach(r => r.addEventListener("change", () => {
      nv.setSliceType(niivue.SLICE_TYPE[r.value]);
    }));
    const opacity = document.getElementById("opacity"), threshold = document.getElementById("threshold");
    opacity.value = state.opacity;
    threshold.value = state.threshold;
    const label = () => {
      document.getElementById("opacity-value").textContent = Number(state.opacity).toFixed(2);
      document.getElementById("threshold-value").textContent = Number(state.threshold).toFixed(2);
    };
    label();
    opacity.addEventListener("input", () => {
      state.opacity = Number(opacity.value);
      if (drawn) { drawn[1].opacity = state.opacity; nv.updateGLVolume(); }
      label();
    });
    threshold.addEventListener("input", () => {
      state.threshold = Number(threshold.value);
      if (drawn) { drawn[1].colormap = thresholdedJet(state.threshold); nv.updateGLVolume(); }
      label();
    });
    document.getElementById("outline").addEventListener("change", e => {
      state.outline = e.target.checked;
      applyOutline();
      nv.drawScene();
    });
    nv.onLocationChange = d => {
      if (!drawn || !d || !d.mm) return;
      const at = v => { const vox = v.mm2vox(Array.from(d.mm).slice(0, 3)); return v.getValue(vox[0], vox[1], vox[2]); };
      document.getElementById("location").textContent = "crosshair at (" +
        Array.from(d.mm).slice(0, 3).map(v => v.toFixed(0)).join(", ") + ") mm, RAS: CT " + at(drawn[0]).toFixed(0) +
        " HU, importance " + at(drawn[1]).toFixed(2);
    };
  }

  function report(err) {
    console.error(err);
    document.getElementById("showing").textContent = "Error: " + (err && err.message ? err.message : err);
  }

  // For scripted checks and the browser console: the NiiVue instance and show().
  // timings: ms since navigation start when this script began, NiiVue was ready, and the
  // first view was drawn
  const timings = {script: performance.now()};
  window.lungclamViewer = {nv, data, show, state, timings, ready: null};
  window.lungclamViewer.ready = (async () => {
    buildLists();
    buildLegend();
    buildControls();
    await nv.attachToCanvas(document.getElementById("gl"));
    timings.niivue = performance.now();
    nv.setSliceType(nv.sliceTypeMultiplanar);
    await show(data.page === "subject" ? {subject: data.subjects[0].id} :
               data.clusters.length ? {cluster: data.clusters[0].k} : {});
    // start inside the right lung, as the figures' sagittal panels do (the centre of the
    // grid lies between the lungs)
    nv.scene.crosshairPos = nv.mm2frac(data.start_mm);
    nv.drawScene();
    nv.createOnLocationChange();  // the values under the crosshair, below the image
    timings.first_view = performance.now();
    document.body.dataset.ready = "1";
  })().catch(report);
})();
"""
