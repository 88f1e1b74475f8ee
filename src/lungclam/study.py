"""The study bundle: everything needed to score new scans against a finished study.

A full run writes ``results/study/``: the template and its lung mask (registration
target), the model grid and its mask (where the model sees the scans), the trained
clustering model (``dec.pt``), the cluster numbering (``clusters.tsv``: the study's
subjects, their cluster and q), the resolved config that made them (``config.yaml``), and a
manifest ``study.json`` holding the lungclam version, the model-format version and the
sha256 checksum of each file. The bundle is read-only for scoring: :func:`load_bundle`
checks it and refuses a bundle that is incomplete, altered or written in a model format
this version cannot read, with one line naming the file and the cause.

Importable without torch (parse time of the workflow): torch is imported only where a
checkpoint is read.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from numbers import Real
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from lungclam import __version__
from lungclam.atomic import atomic_path
from lungclam.errors import LungclamError

# Layout of the clustering checkpoint and the meaning of its parts: lungclam.model's
# save_checkpoint payload (spec, state_dict, centroids, meta with "scale") read by
# lungclam.dec.ClusteringModel (Student t kernel, alpha 1, on embeddings divided by scale).
# Raise it whenever a change makes older checkpoints score differently or not at all, and
# list in READABLE_MODEL_FORMATS every format this version still scores correctly.
MODEL_FORMAT = 1
READABLE_MODEL_FORMATS = frozenset({1})

MANIFEST = "study.json"
# role -> file name inside the bundle
BUNDLE_FILES: dict[str, str] = {
    "template": "template.nii.gz",
    "template_mask": "template_mask.nii.gz",
    "grid_template": "grid_template.nii.gz",
    "grid_mask": "grid_mask.nii.gz",
    "model": "dec.pt",
    "clusters": "clusters.tsv",
    "config": "config.yaml",
}
# role -> file name of files a bundle holds only when the study made them: the study's
# outcome associations (stats/associations.tsv, with a clinical table), which scoring with
# a clinical table sets beside the ones refitted on the scored subjects.
OPTIONAL_BUNDLE_FILES: dict[str, str] = {
    "associations": "associations.tsv",
}


class StudyBundleError(LungclamError):
    """A study bundle that cannot be used: missing, altered or unreadable files."""

    def __init__(self, folder: str | Path, name: str, cause: str):
        self.folder, self.name, self.cause = Path(folder), name, cause
        super().__init__(f"study bundle {folder}: {name}: {cause}")


@dataclass(frozen=True)
class StudyBundle:
    """A verified study bundle.

    Attributes:
        folder: the bundle folder (holding ``study.json``).
        files: role (keys of :data:`BUNDLE_FILES`, and of :data:`OPTIONAL_BUNDLE_FILES`
            the bundle holds) -> path of that file.
        config: the resolved config of the run that made the study.
        lungclam_version: the version that wrote the bundle.
        model_format: the checkpoint format (:data:`MODEL_FORMAT` when written).
        n_clusters: K, the number of clusters of the model.
        cluster_sizes: study subjects per cluster, 1-based cluster number -> count.
    """

    folder: Path
    files: dict[str, Path]
    config: dict[str, Any]
    lungclam_version: str
    model_format: int
    n_clusters: int
    cluster_sizes: dict[int, int]

    def clusters(self) -> pd.DataFrame:
        """The study's ``clusters.tsv``: subject, cluster (1-based), [confidence,] q_1..q_K."""
        return pd.read_csv(self.files["clusters"], sep="\t", dtype={"subject": str})


def sha256(path: str | Path, block_bytes: int = 1 << 20) -> str:
    """Hex sha256 digest of a file, read in blocks of ``block_bytes``."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(block_bytes):
            digest.update(block)
    return digest.hexdigest()


def _model_clusters(model: Path, folder: Path) -> int:
    """K of a clustering checkpoint; refuses one without centroids or unreadable."""
    from lungclam.model import load_checkpoint  # torch: only when a checkpoint is read

    try:
        checkpoint = load_checkpoint(model)
    except LungclamError as exc:
        raise StudyBundleError(folder, model.name, f"unreadable clustering model ({exc})") from exc
    except (KeyError, TypeError) as exc:
        raise StudyBundleError(folder, model.name, f"not a lungclam checkpoint (missing {exc})") from exc
    if checkpoint.centroids is None:
        raise StudyBundleError(folder, model.name, "a pretrained CAE without cluster centroids, not a clustering model")
    return int(checkpoint.centroids.shape[0])


def _cluster_sizes(clusters: Path, n_clusters: int, folder: Path) -> dict[int, int]:
    """Subjects per 1-based cluster from a clusters table that must have q_1..q_K."""
    table = pd.read_csv(clusters, sep="\t")
    expected = [f"q_{k}" for k in range(1, n_clusters + 1)]
    found = [c for c in table.columns if c.startswith("q_")]
    if found != expected or not {"subject", "cluster"} <= set(table.columns):
        raise StudyBundleError(
            folder,
            clusters.name,
            f"columns {list(table.columns)} do not give subject, "
            f"cluster and q_1..q_{n_clusters} of the model's K={n_clusters}",
        )
    counts = table["cluster"].value_counts()
    return {k: int(counts.get(k, 0)) for k in range(1, n_clusters + 1)}


def write_bundle(
    folder: str | Path,
    *,
    template: str | Path,
    template_mask: str | Path,
    grid_template: str | Path,
    grid_mask: str | Path,
    model: str | Path,
    clusters: str | Path,
    config: dict[str, Any],
    associations: str | Path | None = None,
) -> Path:
    """Copy a finished study into ``folder`` with a checksummed manifest; returns its path.

    Args:
        folder: the bundle folder (created; files of the same names are replaced).
        template, template_mask: the study template (registration grid) and its lung labels.
        grid_template, grid_mask: the template on the model grid and the lung mask there.
        model: the clustering checkpoint (``results/model/dec.pt``, with centroids).
        clusters: ``clusters.tsv`` (subject, cluster, q_1..q_K).
        config: the resolved config of the run, written as ``config.yaml``.
        associations: the study's ``stats/associations.tsv`` (None: the study had no
            clinical table; an older copy in ``folder`` is then removed).

    Each file is written whole under its final name (lungclam.atomic); the manifest comes
    last, so a bundle with a manifest holds every file it lists.
    """
    folder = Path(folder)
    sources = {
        "template": template,
        "template_mask": template_mask,
        "grid_template": grid_template,
        "grid_mask": grid_mask,
        "model": model,
        "clusters": clusters,
    }
    for role, source in sources.items():
        with atomic_path(folder / BUNDLE_FILES[role]) as tmp:
            shutil.copyfile(source, tmp)
    with atomic_path(folder / BUNDLE_FILES["config"]) as tmp:
        tmp.write_text(yaml.safe_dump(config, sort_keys=False))
    optional = {"associations": associations}
    for role, source in optional.items():
        if source is None:
            (folder / OPTIONAL_BUNDLE_FILES[role]).unlink(missing_ok=True)
            continue
        with atomic_path(folder / OPTIONAL_BUNDLE_FILES[role]) as tmp:
            shutil.copyfile(source, tmp)
    names = {**BUNDLE_FILES, **{role: OPTIONAL_BUNDLE_FILES[role] for role, source in optional.items() if source}}
    n_clusters = _model_clusters(folder / BUNDLE_FILES["model"], folder)
    manifest = {
        "lungclam_version": __version__,
        "model_format": MODEL_FORMAT,
        "n_clusters": n_clusters,
        "cluster_sizes": {
            str(k): n for k, n in _cluster_sizes(folder / BUNDLE_FILES["clusters"], n_clusters, folder).items()
        },
        "files": {role: {"name": name, "sha256": sha256(folder / name)} for role, name in names.items()},
    }
    with atomic_path(folder / MANIFEST) as tmp:
        tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    return folder / MANIFEST


def find_bundle(path: str | Path) -> Path:
    """The bundle folder for ``path``: the bundle itself, a results folder (``<path>/study``)
    or a run's working directory (``<path>/results/study``)."""
    path = Path(path)
    candidates = [path, path / "study", path / "results" / "study"]
    for candidate in candidates:
        if (candidate / MANIFEST).is_file():
            return candidate
    if not path.exists():
        raise StudyBundleError(path, MANIFEST, "no such folder")
    raise StudyBundleError(
        path,
        MANIFEST,
        "not found here, nor in study/ or results/study/: not a lungclam study (a full run writes results/study/)",
    )


def _read_manifest(folder: Path) -> dict[str, Any]:
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StudyBundleError(folder, MANIFEST, f"unreadable manifest ({exc})") from exc
    missing = sorted({"lungclam_version", "model_format", "n_clusters", "files"} - set(manifest))
    if missing:
        raise StudyBundleError(folder, MANIFEST, f"manifest lacks {', '.join(missing)}")
    if not isinstance(manifest["files"], dict):
        raise StudyBundleError(folder, MANIFEST, "the manifest's files are not listed by role")
    return manifest


def _check_model_format(folder: Path, manifest: dict[str, Any]) -> int:
    fmt = manifest["model_format"]
    if fmt not in READABLE_MODEL_FORMATS:
        readable = ", ".join(str(f) for f in sorted(READABLE_MODEL_FORMATS))
        raise StudyBundleError(
            folder,
            BUNDLE_FILES["model"],
            f"model format {fmt} (written by lungclam {manifest['lungclam_version']}) cannot be "
            f"read by lungclam {__version__}, which reads format {readable}",
        )
    return int(fmt)


def _check_files(folder: Path, manifest: dict[str, Any]) -> dict[str, Path]:
    """Every bundle file listed (and every optional one the manifest lists), present and
    matching its checksum; role -> path."""
    files = {}
    optional = {role: name for role, name in OPTIONAL_BUNDLE_FILES.items() if role in manifest["files"]}
    for role, name in {**BUNDLE_FILES, **optional}.items():
        entry = manifest["files"].get(role)
        if not isinstance(entry, dict) or entry.get("name") != name or "sha256" not in entry:
            raise StudyBundleError(folder, MANIFEST, f"manifest does not list the {role} file {name}")
        path = folder / name
        if not path.is_file():
            raise StudyBundleError(folder, name, "missing")
        if sha256(path) != entry["sha256"]:
            raise StudyBundleError(
                folder,
                name,
                "checksum does not match the manifest (the file was changed or damaged after the study wrote it)",
            )
        files[role] = path
    return files


def load_bundle(path: str | Path, *, read_model: bool = True) -> StudyBundle:
    """Find and verify a study bundle (see :func:`find_bundle` for ``path``); read-only.

    Checks, in order: the manifest, the model format (:data:`READABLE_MODEL_FORMATS`),
    that every file is present and matches its sha256, and (``read_model``) that the
    checkpoint loads with ``weights_only=True`` and has the manifest's K centroids.
    Raises :class:`StudyBundleError` naming the file and the cause.
    """
    folder = find_bundle(path)
    manifest = _read_manifest(folder)
    model_format = _check_model_format(folder, manifest)
    files = _check_files(folder, manifest)
    n_clusters = int(manifest["n_clusters"])
    if read_model and _model_clusters(files["model"], folder) != n_clusters:
        raise StudyBundleError(folder, BUNDLE_FILES["model"], f"centroids do not give the manifest's K={n_clusters}")
    try:
        config = yaml.safe_load(files["config"].read_text())
    except yaml.YAMLError as exc:
        raise StudyBundleError(folder, BUNDLE_FILES["config"], f"unreadable YAML ({exc})") from exc
    return StudyBundle(
        folder=folder,
        files=files,
        config=config,
        lungclam_version=str(manifest["lungclam_version"]),
        model_format=model_format,
        n_clusters=n_clusters,
        cluster_sizes=_cluster_sizes(files["clusters"], n_clusters, folder),
    )


def _number(value: Any) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def _positive(value: Any) -> bool:
    return _number(value) and value > 0


def _window(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and all(map(_number, value)) and value[0] < value[1]


# The settings of the study's config.yaml that scoring reads (dotted key -> valid value):
# they shape a scored subject's imaging (resampling, registration to the template,
# downsampling onto the model grid) and its model input and CLAM, so they come from the
# bundle, never from the current config. The optional ones take the stage's defaults when
# absent (register.syn_spacing_mm: spacing_mm; register.threads: 1; no fill outside the
# lungs, and with it no depth limit), as in bundles from before they existed.
SCORING_KEYS: dict[str, Callable[[Any], bool]] = {
    "seed": lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
    "resample.spacing_mm": _positive,
    "register.transform": lambda v: isinstance(v, str) and bool(v),
    "register.reg_iterations": lambda v: isinstance(v, list) and bool(v) and all(isinstance(i, int) for i in v),
    "register.margin_mm": lambda v: _number(v) and v >= 0,
    "downsample.background_hu": _number,
    "model.hu_window": _window,
    "model.mixed_precision": lambda v: isinstance(v, bool),
    "clam.chunk_size": lambda v: v == "auto" or (isinstance(v, int) and not isinstance(v, bool) and v >= 1),
    "clam.mask_to_lungs": lambda v: isinstance(v, bool),
}
OPTIONAL_SCORING_KEYS: dict[str, Callable[[Any], bool]] = {
    "register.syn_spacing_mm": lambda v: v is None or _positive(v),
    "register.threads": lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1,
    "downsample.fill_outside_lungs": lambda v: isinstance(v, bool),
    "downsample.fill_depth_mm": lambda v: v is None or (_number(v) and v >= 0),
}


def check_scoring_config(study: StudyBundle) -> None:
    """Refuse a study whose config lacks a setting scoring needs, or holds one it cannot use.

    Raises :class:`StudyBundleError` naming ``config.yaml`` and the first such key (dotted,
    e.g. ``model.hu_window``), so a bundle from a version whose config differs in what
    scoring reads is refused before any job rather than scored with other settings.
    """
    config = study.config if isinstance(study.config, dict) else {}
    for key, valid in {**SCORING_KEYS, **OPTIONAL_SCORING_KEYS}.items():
        section, _, name = key.rpartition(".")
        holder = config.get(section) if section else config
        if not isinstance(holder, dict) or name not in holder:
            if key in OPTIONAL_SCORING_KEYS:
                continue
            raise StudyBundleError(
                study.folder,
                BUNDLE_FILES["config"],
                f"lacks {key}, which scoring needs to treat new scans as the study treated its own",
            )
        if not valid(holder[name]):
            raise StudyBundleError(
                study.folder, BUNDLE_FILES["config"], f"{key} is {holder[name]!r}, which scoring cannot use"
            )


def study_association_settings(study: StudyBundle) -> dict[str, Any]:
    """The study's association models, to refit on scored subjects with a clinical table.

    Returns ``covariates`` and ``outcomes`` (lists of column names), ``comparator`` (a column
    name, or "" for none), ``stats`` (the stats section; when the bundle holds the study's
    ``associations.tsv``, its ``reference_cluster`` is the cluster those used, so refitted
    contrasts are the study's, "cluster k vs ref" with the same ref) and ``columns`` (every
    clinical column they read). Raises :class:`StudyBundleError` naming ``config.yaml`` when
    the study's config lacks one of them or holds something else.
    """
    config = study.config if isinstance(study.config, dict) else {}
    checks: dict[str, Callable[[Any], bool]] = {
        "covariates": lambda v: isinstance(v, list) and all(isinstance(c, str) for c in v),
        "outcomes": lambda v: isinstance(v, list) and bool(v) and all(isinstance(c, str) for c in v),
        "comparator": lambda v: isinstance(v, str),
        "stats": lambda v: isinstance(v, dict),
    }
    for key, valid in checks.items():
        if key not in config:
            raise StudyBundleError(
                study.folder,
                BUNDLE_FILES["config"],
                f"lacks {key}, which scoring needs to refit the study's association models",
            )
        if not valid(config[key]):
            raise StudyBundleError(
                study.folder, BUNDLE_FILES["config"], f"{key} is {config[key]!r}, which scoring cannot use"
            )
    settings = {key: config[key] for key in checks}
    if "associations" in study.files:
        references = pd.read_csv(study.files["associations"], sep="\t")["reference"].dropna()
        if len(references):
            settings["stats"] = {**settings["stats"], "reference_cluster": int(references.iloc[0])}
    settings["columns"] = [
        *config["covariates"],
        *config["outcomes"],
        *([config["comparator"]] if config["comparator"] else []),
    ]
    return settings


def subjects_in_study(study: StudyBundle, subjects: Iterable[str]) -> list[str]:
    """Those of ``subjects`` (in their order) whose IDs are already in the study's clusters."""
    known = set(study.clusters()["subject"])
    return [s for s in subjects if s in known]
