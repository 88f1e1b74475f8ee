"""Figures: every figure function writing a real PNG, forest plots of empty/NaN tables,
the K-selection figure's marks, and the example draw (the panels they are drawn with are
tested in test_figure_panels.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from matplotlib.image import imread

from lungclam import figures as F
from lungclam.kselect import THRESHOLDS, choices_table, skipped_ks

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SHAPE = (20, 24, 28)  # (z, y, x)


def _assert_png(path, min_bytes: int = 5000) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert len(data) > min_bytes, f"{path.name}: only {len(data)} bytes"


@pytest.fixture(scope="module")
def phantom() -> dict[str, np.ndarray]:
    """Tiny chest: body ellipse at 40 HU, two box lungs (label 1 at small x = right,
    label 2 at large x = left) at -850 HU with noise, air outside; a CLAM blob in the
    right lung."""
    rng = np.random.default_rng(0)
    z, y, x = np.indices(SHAPE)
    ct = np.full(SHAPE, -1000.0)
    body = ((y - 12) / 11.0) ** 2 + ((x - 13.5) / 13.0) ** 2 <= 1.0
    ct[body] = 40.0
    mask = np.zeros(SHAPE, dtype=np.uint8)
    mask[3:17, 5:19, 4:12] = 1
    mask[4:17, 5:19, 16:24] = 2
    ct[mask > 0] = -850.0
    ct += rng.normal(0.0, 30.0, SHAPE)
    clam = np.exp(-(((z - 10) / 4.0) ** 2 + ((y - 12) / 4.0) ** 2 + ((x - 8) / 3.0) ** 2))
    clam = np.where(mask > 0, clam / clam.max(), 0.0)
    return {"ct": ct, "mask": mask, "clam": clam}


# ---------------------------------------------------------------- image figures


def test_mean_maps_figure(tmp_path, phantom):
    ct, clam, mask = phantom["ct"], phantom["clam"], phantom["mask"]
    out = tmp_path / "a" / "b" / "mean_maps.png"
    F.mean_maps_figure(
        {"population": ct, "cluster 1": ct + 50},
        {"population": clam, "cluster 1": clam[::-1]},
        mask,
        out,
        n_slices=3,
        title="test",
    )
    _assert_png(out)
    with pytest.raises(ValueError):
        F.mean_maps_figure({"population": ct}, {"cluster 1": clam}, mask, tmp_path / "x.png", n_slices=3)
    with pytest.raises(ValueError):
        F.mean_maps_figure({"population": ct[:-1]}, {"population": clam}, mask, tmp_path / "x.png", n_slices=3)


def test_subject_examples_figure(tmp_path, phantom):
    ct, clam, mask = phantom["ct"], phantom["clam"], phantom["mask"]
    out = tmp_path / "examples.png"
    F.subject_examples_figure(
        {"S01": ct, "S02": ct - 30}, {"S01": clam, "S02": clam}, {"S01": 1, "S02": 2}, mask, out, n_slices=3
    )
    _assert_png(out)
    with pytest.raises(ValueError):
        F.subject_examples_figure({"S01": ct}, {}, {"S01": 1}, mask, tmp_path / "x.png", n_slices=3)


def test_qc_figure_with_and_without_registration(tmp_path, phantom):
    ct, mask = phantom["ct"], phantom["mask"]
    out = tmp_path / "qc" / "S01.png"
    F.qc_figure(ct, mask, ct[:, ::-1].copy(), mask > 0, out, "S01", spacing=(0.8, 0.8, 2.0))
    _assert_png(out)
    single = tmp_path / "qc" / "S02.png"
    F.qc_figure(ct, mask, None, None, single, "S02")
    _assert_png(single)
    empty = tmp_path / "qc" / "S03.png"  # a failed segmentation must still give a QC image
    F.qc_figure(ct, np.zeros_like(mask), None, None, empty, "S03")
    _assert_png(empty)


# ---------------------------------------------------------------- tables


def _clusters(n_per: int = 10, k: int = 3) -> pd.DataFrame:
    subjects = [f"S{i:03d}" for i in range(n_per * k)]
    return pd.DataFrame({"subject": subjects, "cluster": [i % k + 1 for i in range(n_per * k)]})


def test_choose_examples_deterministic_and_bounded():
    table = _clusters()
    picks = F.choose_examples(table, per_cluster=3, seed=0)
    assert picks == F.choose_examples(table, per_cluster=3, seed=0)
    assert picks == F.choose_examples(table.sample(frac=1.0, random_state=5), per_cluster=3, seed=0)
    cluster_of = dict(zip(table["subject"], table["cluster"]))
    counts = pd.Series([cluster_of[s] for s in picks]).value_counts()
    assert counts.to_dict() == {1: 3, 2: 3, 3: 3}
    assert picks == sorted(picks, key=lambda s: (cluster_of[s], s))
    assert any(F.choose_examples(table, per_cluster=3, seed=s) != picks for s in range(1, 6))
    small = pd.DataFrame({"subject": ["a", "b", "c"], "cluster": [1, 1, 2]})
    assert F.choose_examples(small, per_cluster=5) == ["a", "b", "c"]


def test_pca_figure(tmp_path):
    rng = np.random.default_rng(1)
    clusters = _clusters(8)
    centres = np.array([[0, 0, 0, 0], [4, 0, 0, 0], [0, 4, 0, 0]])
    feats = rng.normal(size=(24, 4)) + centres[clusters["cluster"] - 1]
    before = pd.concat([clusters[["subject"]], pd.DataFrame(feats, columns=["f1", "f2", "f3", "f4"])], axis=1)
    after = before.assign(f1=before["f1"] * 2)
    out = tmp_path / "pca.png"
    F.pca_figure(before, after, clusters.iloc[:20], out)  # 4 unassigned subjects
    _assert_png(out)
    one = tmp_path / "pca_one.png"
    F.pca_figure(before, None, clusters, one)
    _assert_png(one)


def test_loss_figure(tmp_path):
    epochs = np.arange(1, 11)
    pretrain = pd.DataFrame({"epoch": epochs, "loss": 0.5 * np.exp(-epochs / 3) + 0.01})
    cluster = pd.DataFrame(
        {"epoch": epochs[:5], "reconstruction": [0.02] * 5, "kl": [0.01, 0.005, 0.003, 0.002, 0.001]}
    )
    cluster["loss"] = cluster["reconstruction"] + 0.1 * cluster["kl"]
    out = tmp_path / "loss.png"
    F.loss_figure(pretrain, cluster, out)
    _assert_png(out)
    F.loss_figure(pretrain, None, tmp_path / "loss1.png")
    _assert_png(tmp_path / "loss1.png")
    assert F._use_log([pretrain["loss"].to_numpy()])
    assert not F._use_log([np.array([0.0, 1.0, 2.0])])


def _k_selection_table() -> pd.DataFrame:
    """A ``select_k`` table in which every criterion is defined."""
    return pd.DataFrame(
        {
            "k": [2, 3, 4, 5],
            "silhouette_kmeans": [0.30, 0.50, 0.40, 0.35],
            "silhouette_sparse_kmeans": [0.32, 0.55, 0.41, 0.30],
            "l1_bound": 2.0,
            "n_features_used": 4,
            "gap": [0.10, 0.40, 0.42, 0.43],
            "gap_sd": 0.02,
            "stability": [0.97, 0.93, 0.60, 0.50],
            "stability_sd": 0.03,
            "prediction_strength": [0.90, 0.85, 0.50, 0.40],
            "prediction_strength_sd": 0.05,
            "pac": [0.0, 0.01, 0.20, 0.30],
            "smallest_cluster": [0.5, 0.33, 0.2, 0.05],
        }
    )


def test_k_selection_figure_draws_the_choices_and_thresholds(tmp_path):
    table = _k_selection_table()
    choices = choices_table(table, "stability")
    out = tmp_path / "figures" / "nested" / "k_selection.png"
    F.k_selection_figure(table, out, choices=choices, thresholds=THRESHOLDS, skipped=skipped_ks(table))
    _assert_png(out)
    bare = tmp_path / "bare.png"  # no choices, no thresholds: no dashed or dotted lines
    F.k_selection_figure(table, bare)
    _assert_png(bare)
    no_thresholds = tmp_path / "no_thresholds.png"
    F.k_selection_figure(table, no_thresholds, choices=choices)
    drawn, plain, unmarked = imread(out), imread(no_thresholds), imread(bare)
    assert drawn.shape == plain.shape == unmarked.shape
    assert not np.array_equal(drawn, plain)  # the thresholds' lines
    assert not np.array_equal(plain, unmarked)  # the choices' lines and title
    assert skipped_ks(table) == [5]  # its smallest cluster holds 5 % of the subjects
    unshaded = tmp_path / "unshaded.png"
    F.k_selection_figure(table, unshaded, choices=choices, thresholds=THRESHOLDS)
    assert not np.array_equal(drawn, imread(unshaded))


def test_k_selection_title_says_when_no_k_passes_the_split_test():
    table = _k_selection_table()
    choices = choices_table(table, "most_stable")
    plain = F.k_selection_title(table, choices, THRESHOLDS)
    assert plain.startswith("Choosing the number of clusters: K = ") and "\n" not in plain
    weak = table.assign(split_p=0.4)  # no K's weakest split beats one Gaussian group
    assert "no K splits the subjects" in F.k_selection_title(weak, choices, THRESHOLDS)
    one_real = weak.assign(split_p=[0.01, 0.4, 0.4, 0.4])
    assert "\n" not in F.k_selection_title(one_real, choices, THRESHOLDS)
    assert "\n" not in F.k_selection_title(weak, choices, THRESHOLDS | {"max_split_p": 1.0})


def _associations() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "outcome": ["FEV1", "FEV1", "FVC", "FVC", "DLCO"],
            "term": ["cluster 2 vs 1", "cluster 3 vs 1", "cluster 2 vs 1", "cluster 3 vs 1", ""],
            "estimate": [-8.0, 2.0, -4.0, np.nan, np.nan],
            "ci_low": [-12.0, -3.0, -9.0, np.nan, np.nan],
            "ci_high": [-4.0, 7.0, 1.0, np.nan, np.nan],
            "p_value": [0.001, 0.4, 0.1, np.nan, np.nan],
            "f_p_value": [0.004, 0.004, 0.2, 0.2, np.nan],
            "note": ["", "", "", "not estimated", "not tested: constant outcome"],
        }
    )


def test_forest_figure_skips_nan_rows(tmp_path):
    table = _associations()
    shown, skipped = F._forest_rows(table)
    assert len(shown) == 3 and not shown[["estimate", "ci_low", "ci_high"]].isna().any().any()
    assert skipped == ["DLCO"]
    out = tmp_path / "forest.png"
    F.forest_figure(table, out)
    _assert_png(out)


def test_forest_figure_empty_and_all_nan(tmp_path):
    empty = tmp_path / "forest_empty.png"
    F.forest_figure(pd.DataFrame(columns=_associations().columns), empty)
    _assert_png(empty, min_bytes=1000)
    F.forest_figure(pd.DataFrame(), tmp_path / "forest_none.png")
    _assert_png(tmp_path / "forest_none.png", min_bytes=1000)
    all_nan = tmp_path / "forest_nan.png"
    F.forest_figure(_associations().iloc[4:], all_nan)
    _assert_png(all_nan, min_bytes=1000)


def test_contact_sheet(tmp_path):
    from matplotlib.image import imsave

    rng = np.random.default_rng(2)
    paths = []
    for i in range(5):
        p = tmp_path / f"tile{i}.png"
        imsave(p, rng.random((40, 50)), cmap="gray")
        paths.append(p)
    out = tmp_path / "sheet" / "sheet.png"
    F.contact_sheet(paths, out, columns=2, labels=[f"S{i}" for i in range(5)])
    _assert_png(out)
    sheet = imread(out)
    assert sheet.shape[0] > sheet.shape[1]  # 2 columns by 3 rows of near-square tiles
    with pytest.raises(ValueError):
        F.contact_sheet(paths, tmp_path / "x.png", labels=["only one"])
    with pytest.raises(ValueError):
        F.contact_sheet([], tmp_path / "x.png")


def test_sagittal_cuts_go_through_each_lung(phantom):
    mask = phantom["mask"]
    (right, _), (left, _) = F._sagittal_cuts(mask, by_label=True)
    assert mask[:, :, right].max() == 1 and mask[:, :, left].max() == 2
    (right, _), (left, _) = F._sagittal_cuts((mask > 0).astype(np.uint8) * 3, by_label=False)
    assert right < 14 < left and mask[:, :, right].any() and mask[:, :, left].any()
    only_right = np.where(mask == 1, 1, 0)
    assert F._sagittal_cuts(only_right, by_label=True)[1][0] is None


def test_stability_verdict_needs_stability_and_confidence_and_flags_unfinished_pretraining() -> None:
    stability = pd.DataFrame({"k": [2, 3], "stability": [0.80, 0.95], "stability_sd": 0.02})
    clusters = pd.DataFrame(
        {
            "subject": list("abcdefghij"),
            "cluster": [1, 2, 3] * 3 + [1],
            "confidence": [1.0] * 10,
            "q_1": 0.4,
            "q_2": 0.3,
            "q_3": 0.3,
        }
    )
    assert F.stability_verdict(stability, clusters, 0.9)[0]
    assert F.stability_verdict(stability, clusters, 0.9, pretraining_plateaued=True)[0]
    solid, line = F.stability_verdict(stability, clusters, 0.9, pretraining_plateaued=False)
    assert solid and line.startswith("SOLID") and "caveat: pretraining ended at its epoch maximum" in line
    assert "caveat" not in F.stability_verdict(stability, clusters, 0.9, pretraining_plateaued=None)[1]
    assert not F.stability_verdict(stability, clusters, 0.97)[0]  # stability at K = 3 below the threshold
    shaky = clusters.assign(confidence=[1.0] * 8 + [0.5, 0.5])  # 80 % confident, below nine in ten
    assert not F.stability_verdict(stability, shaky, 0.9)[0]


def test_stability_figure_shades_the_skipped_ks(tmp_path) -> None:
    stability = pd.DataFrame(
        {"k": [2, 3, 4], "stability": [0.80, 0.95, 0.99], "stability_sd": 0.02, "skipped": [False, False, True]}
    )
    clusters = pd.DataFrame(
        {"subject": list("abcdef"), "cluster": [1, 2, 3] * 2, "confidence": 1.0, "q_1": 0.4, "q_2": 0.3, "q_3": 0.3}
    )
    shaded, plain = tmp_path / "shaded.png", tmp_path / "plain.png"
    F.stability_figure(stability, clusters, 0.9, shaded, min_cluster_share=0.1)
    F.stability_figure(stability.assign(skipped=False), clusters, 0.9, plain, min_cluster_share=0.1)
    _assert_png(shaded)
    assert imread(shaded).shape == imread(plain).shape
    assert not np.array_equal(imread(shaded), imread(plain))


def test_stability_verdict_flags_a_fitted_k_whose_weakest_split_is_not_significant() -> None:
    stability = pd.DataFrame({"k": [2, 3], "stability": [0.80, 0.99], "stability_sd": 0.02, "split_p": [0.01, 0.09]})
    clusters = pd.DataFrame(
        {"subject": list("abcdef"), "cluster": [1, 2, 3] * 2, "confidence": 1.0, "q_1": 0.4, "q_2": 0.3, "q_3": 0.3}
    )
    solid, line = F.stability_verdict(stability, clusters, 0.9, max_split_p=0.05)
    assert solid and "caveat: at K = 3 the weakest split of neighbouring clusters has p = 0.09" in line
    assert "caveat" not in F.stability_verdict(stability, clusters, 0.9, max_split_p=0.1)[1]  # 0.09 passes
    assert "caveat" not in F.stability_verdict(stability, clusters, 0.9, max_split_p=1.0)[1]  # the test is off
    assert "caveat" not in F.stability_verdict(stability, clusters, 0.9)[1]  # no threshold given
    two = clusters.assign(cluster=[1, 2] * 3).drop(columns="q_3")
    assert "caveat" not in F.stability_verdict(stability, two, 0.9, max_split_p=0.05)[1]  # K = 2: p = 0.01
    old = stability.drop(columns="split_p")  # a table written before the split test
    assert "caveat" not in F.stability_verdict(old, clusters, 0.9, max_split_p=0.05)[1]
