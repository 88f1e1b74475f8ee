"""The study bundle (lungclam.study): written from real files, reloaded, and refused when
incomplete, altered, or in a model format this version cannot read."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
import yaml

from lungclam import __version__
from lungclam.atomic import write_table
from lungclam.dec import clusters_table
from lungclam.model import ConvAutoencoder, ModelSpec, save_checkpoint
from lungclam.study import (
    BUNDLE_FILES,
    MANIFEST,
    MODEL_FORMAT,
    SCORING_KEYS,
    StudyBundleError,
    check_scoring_config,
    load_bundle,
    sha256,
    study_association_settings,
    subjects_in_study,
    write_bundle,
)

K = 3
PROJECT_ROOT = Path(__file__).resolve().parents[2]
CONFIG = {"seed": 7, "model": {"hu_window": [-1024, 200]}, "downsample": {"size": [8, 8, 8], "spacing_mm": 6.0}}


def _image(path: Path, array: np.ndarray, spacing: float) -> Path:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((spacing,) * 3)
    sitk.WriteImage(image, str(path))
    return path


@pytest.fixture
def study_inputs(tmp_path: Path) -> dict[str, Path]:
    """A tiny finished study: template + mask (3 mm), model grid + mask (6 mm), a DEC
    checkpoint with K centroids and its clusters table."""
    rng = np.random.default_rng(0)
    src = tmp_path / "results"
    src.mkdir()
    lungs = np.zeros((16, 16, 16), np.uint8)
    lungs[4:12, 3:8, 4:12], lungs[4:12, 9:14, 4:12] = 1, 2
    torch.manual_seed(0)
    model = ConvAutoencoder(ModelSpec(input_shape=(8, 8, 8), channels=(2, 4), strides=(2, 2), latent_dim=3))
    save_checkpoint(src / "dec.pt", model, torch.randn(K, 3), meta={"scale": 1.5, "n_clusters": K})
    q = rng.dirichlet(np.ones(K), size=5)
    write_table(clusters_table([f"s{i}" for i in range(5)], q), src / "clusters.tsv")
    return {
        "template": _image(src / "template.nii.gz", rng.normal(-700, 100, (16, 16, 16)).astype(np.int16), 3.0),
        "template_mask": _image(src / "template_mask.nii.gz", lungs, 3.0),
        "grid_template": _image(src / "grid_template.nii.gz", rng.normal(-700, 100, (8, 8, 8)).astype(np.float32), 6.0),
        "grid_mask": _image(src / "grid_mask.nii.gz", (lungs[::2, ::2, ::2] > 0).astype(np.uint8), 6.0),
        "model": src / "dec.pt",
        "clusters": src / "clusters.tsv",
    }


@pytest.fixture
def bundle(tmp_path: Path, study_inputs: dict[str, Path]) -> Path:
    write_bundle(tmp_path / "results" / "study", config=CONFIG, **study_inputs)
    return tmp_path / "results" / "study"


def test_bundle_copies_every_file_and_reloads(bundle: Path, study_inputs: dict[str, Path]) -> None:
    manifest = json.loads((bundle / MANIFEST).read_text())
    assert manifest["lungclam_version"] == __version__ and manifest["model_format"] == MODEL_FORMAT
    for role, source in study_inputs.items():
        copy = bundle / BUNDLE_FILES[role]
        assert copy.read_bytes() == source.read_bytes(), role
        assert manifest["files"][role]["sha256"] == sha256(source)
    assert yaml.safe_load((bundle / "config.yaml").read_text()) == CONFIG
    study = load_bundle(bundle)
    assert study.folder == bundle and study.config == CONFIG and study.n_clusters == K
    assert study.lungclam_version == __version__ and study.model_format == MODEL_FORMAT
    assert set(study.files) == set(BUNDLE_FILES) and all(p.parent == bundle for p in study.files.values())
    sizes = study.clusters()["cluster"].value_counts()
    assert study.cluster_sizes == {k: int(sizes.get(k, 0)) for k in range(1, K + 1)}
    assert sum(study.cluster_sizes.values()) == 5


def test_bundle_is_found_from_a_results_folder_or_its_run(bundle: Path) -> None:
    assert load_bundle(bundle.parent).folder == bundle  # results/
    assert load_bundle(bundle.parent.parent).folder == bundle  # the run's working directory


def test_a_folder_without_a_study_is_refused(tmp_path: Path) -> None:
    with pytest.raises(StudyBundleError, match=r"study\.json: not found here.*not a lungclam study"):
        load_bundle(tmp_path)
    with pytest.raises(StudyBundleError, match="no such folder"):
        load_bundle(tmp_path / "nowhere")


@pytest.mark.parametrize("role", sorted(BUNDLE_FILES))
def test_a_missing_file_is_refused(bundle: Path, role: str) -> None:
    (bundle / BUNDLE_FILES[role]).unlink()
    with pytest.raises(StudyBundleError) as raised:
        load_bundle(bundle)
    assert str(raised.value) == f"study bundle {bundle}: {BUNDLE_FILES[role]}: missing"


@pytest.mark.parametrize("role", ["template_mask", "model", "clusters"])
def test_a_changed_byte_is_refused(bundle: Path, role: str) -> None:
    path = bundle / BUNDLE_FILES[role]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(StudyBundleError, match=rf": {BUNDLE_FILES[role]}: checksum does not match") as raised:
        load_bundle(bundle)
    assert "\n" not in str(raised.value)


def _edit_manifest(bundle: Path, **changes: object) -> None:
    manifest = json.loads((bundle / MANIFEST).read_text())
    manifest.update(changes)
    (bundle / MANIFEST).write_text(json.dumps(manifest))


def test_an_unreadable_model_format_is_refused(bundle: Path) -> None:
    _edit_manifest(bundle, model_format=MODEL_FORMAT + 1, lungclam_version="9.9.9")
    with pytest.raises(
        StudyBundleError,
        match=rf"dec\.pt: model format {MODEL_FORMAT + 1} \(written by lungclam "
        rf"9\.9\.9\) cannot be read by lungclam {__version__}",
    ):
        load_bundle(bundle)


def test_a_damaged_manifest_is_refused(bundle: Path) -> None:
    (bundle / MANIFEST).write_text("{not json")
    with pytest.raises(StudyBundleError, match=r"study\.json: unreadable manifest"):
        load_bundle(bundle)
    (bundle / MANIFEST).write_text(json.dumps({"model_format": MODEL_FORMAT, "lungclam_version": __version__}))
    with pytest.raises(StudyBundleError, match=r"manifest lacks files, n_clusters"):
        load_bundle(bundle)


def test_a_model_without_centroids_is_not_bundled(tmp_path: Path, study_inputs: dict[str, Path]) -> None:
    model = ConvAutoencoder(ModelSpec(input_shape=(8, 8, 8), channels=(2, 4), strides=(2, 2), latent_dim=3))
    save_checkpoint(study_inputs["model"], model)  # a pretrained CAE (cae.pt), not the clustering model
    with pytest.raises(StudyBundleError, match=r"dec\.pt: a pretrained CAE without cluster centroids"):
        write_bundle(tmp_path / "study", config=CONFIG, **study_inputs)


def test_a_clusters_table_of_another_k_is_not_bundled(tmp_path: Path, study_inputs: dict[str, Path]) -> None:
    write_table(clusters_table(["a", "b"], np.full((2, K + 1), 1.0 / (K + 1))), study_inputs["clusters"])
    with pytest.raises(StudyBundleError, match=rf"clusters\.tsv: columns .* of the model's K={K}"):
        write_bundle(tmp_path / "study", config=CONFIG, **study_inputs)


def _scoring_bundle(tmp_path: Path, study_inputs: dict[str, Path], edit=None) -> Path:
    """A bundle whose config is the shipped default (config/config.yaml), edited by ``edit``."""
    config = yaml.safe_load((PROJECT_ROOT / "config" / "config.yaml").read_text())
    if edit:
        edit(config)
    write_bundle(tmp_path / "study", config=config, **study_inputs)
    return tmp_path / "study"


def test_the_default_config_has_what_scoring_needs(tmp_path: Path, study_inputs: dict[str, Path]) -> None:
    study = load_bundle(_scoring_bundle(tmp_path, study_inputs))
    check_scoring_config(study)
    assert subjects_in_study(study, ["new", "s3", "s0", "s10"]) == ["s3", "s0"]


@pytest.mark.parametrize("key", sorted(SCORING_KEYS))
def test_a_study_config_lacking_a_scoring_setting_is_refused(
    tmp_path: Path, study_inputs: dict[str, Path], key: str
) -> None:
    section, _, name = key.rpartition(".")
    study = load_bundle(_scoring_bundle(tmp_path, study_inputs, lambda c: (c[section] if section else c).pop(name)))
    with pytest.raises(StudyBundleError) as raised:
        check_scoring_config(study)
    assert str(raised.value) == (
        f"study bundle {study.folder}: config.yaml: lacks {key}, which scoring needs to "
        "treat new scans as the study treated its own"
    )


@pytest.mark.parametrize(
    ("section", "name", "value"),
    [
        ("model", "hu_window", [200, -1024]),
        ("model", "hu_window", [-1024]),
        ("resample", "spacing_mm", 0),
        ("clam", "chunk_size", "big"),
        ("register", "syn_spacing_mm", -1.0),
        ("register", "threads", 0),
        ("downsample", "fill_outside_lungs", "yes"),
        ("downsample", "fill_depth_mm", -3.0),
    ],
)
def test_a_study_setting_scoring_cannot_use_is_refused(
    tmp_path: Path, study_inputs: dict[str, Path], section: str, name: str, value: object
) -> None:
    study = load_bundle(_scoring_bundle(tmp_path, study_inputs, lambda c: c[section].update({name: value})))
    with pytest.raises(StudyBundleError, match=rf"config\.yaml: {section}\.{name} is .*, which scoring cannot use"):
        check_scoring_config(study)


def test_the_study_association_models_come_from_its_config(tmp_path: Path, study_inputs: dict[str, Path]) -> None:
    study = load_bundle(
        _scoring_bundle(tmp_path, study_inputs, lambda c: c.update(covariates=["age"], outcomes=["crp"]))
    )
    settings = study_association_settings(study)
    assert settings["columns"] == ["age", "crp", "scadding"] and settings["stats"] == study.config["stats"]
    study = load_bundle(_scoring_bundle(tmp_path / "b", study_inputs, lambda c: c.update(comparator="")))
    assert "" not in study_association_settings(study)["columns"]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda c: c.pop("outcomes"), "lacks outcomes, which scoring needs to refit the study's association models"),
        (lambda c: c.update(outcomes=[]), "outcomes is [], which scoring cannot use"),
        (lambda c: c.update(comparator=None), "comparator is None, which scoring cannot use"),
    ],
)
def test_a_study_without_usable_association_models_is_refused(
    tmp_path: Path, study_inputs: dict[str, Path], edit, message: str
) -> None:
    study = load_bundle(_scoring_bundle(tmp_path, study_inputs, edit))
    with pytest.raises(StudyBundleError) as raised:
        study_association_settings(study)
    assert str(raised.value) == f"study bundle {study.folder}: config.yaml: {message}"


def test_a_study_with_associations_bundles_them_and_refits_against_its_reference(
    tmp_path: Path, study_inputs: dict[str, Path]
) -> None:
    associations = tmp_path / "associations.tsv"
    associations.write_text("outcome\tterm\testimate\treference\nfvc_pct\tcluster 1 vs 2\t-3.5\t2\n")
    config = yaml.safe_load((PROJECT_ROOT / "config" / "config.yaml").read_text())
    folder = tmp_path / "study"
    write_bundle(folder, config=config, associations=associations, **study_inputs)
    study = load_bundle(folder)
    assert study.files["associations"].read_bytes() == associations.read_bytes()
    assert study_association_settings(study)["stats"] == {**config["stats"], "reference_cluster": 2}
    path = folder / "associations.tsv"
    path.write_text(path.read_text().replace("-3.5", "-3.6"))
    with pytest.raises(StudyBundleError, match=r"associations\.tsv: checksum does not match"):
        load_bundle(folder)
    write_bundle(folder, config=config, **study_inputs)  # the study lost its clinical table
    assert "associations" not in load_bundle(folder).files and not path.exists()
