"""Clinical statistics of the clusters (lungclam.stats). Every expected value is computed
here independently -- by hand, with numpy least squares, or with scipy called directly --
never copied from the module's output. Small tables only, so the file runs in seconds."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from lungclam.stats import (
    associations,
    column_kinds,
    compare_associations,
    demographics,
    merge_clusters,
    variance_explained,
)

# ---------------------------------------------------------------------------- fixtures


def hand_table() -> pd.DataFrame:
    """12 subjects in 3 clusters of 4; one missing sex (cluster 2), two missing bmi
    (clusters 1 and 3)."""
    return pd.DataFrame(
        {
            "subject": [f"s{i:02d}" for i in range(12)],
            "cluster": [1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3],
            "age": [50, 52, 61, 47, 38, 41, 44, 35, 66, 70, 58, 63],
            "sex": ["F", "F", "M", "F", "M", "M", None, "F", "M", "M", "M", "F"],
            "race": [
                "black",
                "white",
                "white",
                "black",
                "other",
                "white",
                "black",
                "white",
                "white",
                "white",
                "black",
                "white",
            ],
            "bmi": [22.5, np.nan, 30.1, 27.3, 24.0, 26.6, 21.9, 28.8, 31.2, 29.0, np.nan, 25.5],
        }
    )


def row(table: pd.DataFrame, variable: str, level: str = "") -> pd.Series:
    """The single row of a demographics table for ``variable`` / ``level``."""
    hit = table[(table["variable"] == variable) & (table["level"] == level)]
    assert len(hit) == 1, f"expected one row for {variable}/{level}, got {len(hit)}"
    return hit.iloc[0]


def simulated(seed: int = 7, sizes: tuple[int, int, int] = (25, 30, 35)) -> pd.DataFrame:
    """n = 90 subjects in clusters 1, 2, 3 (sizes as given, so cluster 3 is the largest by
    default); outcome = 2 * age / 10 + 5 * [cluster == 2] + N(0, 1) noise; a sex covariate
    with no effect; a 3-level comparator ``stage`` loosely related to the cluster."""
    rng = np.random.default_rng(seed)
    cluster = np.repeat([1, 2, 3], sizes)
    n = cluster.size
    age = rng.integers(30, 75, n).astype(float)
    sex = rng.choice(["F", "M"], n)
    y = 2 * age / 10 + 5.0 * (cluster == 2) + rng.normal(0.0, 1.0, n)
    y2 = 0.1 * age + rng.normal(0.0, 2.0, n)
    stage = np.where(rng.random(n) < 0.6, cluster, rng.integers(1, 4, n))
    return pd.DataFrame(
        {
            "subject": [f"p{i:03d}" for i in range(n)],
            "cluster": cluster,
            "age": age,
            "sex": sex,
            "y": y,
            "y2": y2,
            "stage": np.array(["I", "II", "III"])[stage - 1],
        }
    )


def design(frame: pd.DataFrame, numeric: list[str], categorical: list[str]) -> np.ndarray:
    """Intercept + numeric columns + treatment dummies (first sorted level dropped) of
    each categorical column, built by hand."""
    cols = [np.ones(len(frame))] + [frame[c].to_numpy(float) for c in numeric]
    for c in categorical:
        levels = sorted(frame[c].unique())
        cols += [(frame[c] == lev).to_numpy(float) for lev in levels[1:]]
    return np.column_stack(cols)


def rss(x: np.ndarray, y: np.ndarray) -> float:
    """Residual sum of squares of the least-squares fit of y on x."""
    beta, *_ = np.linalg.lstsq(x, y, rcond=None)
    return float(((y - x @ beta) ** 2).sum())


# ---------------------------------------------------------------------------- kinds, merge


def test_column_kinds_by_dtype_with_override() -> None:
    t = hand_table().assign(flag=[True, False] * 6, stage=pd.Categorical(["I", "II"] * 6))
    got = column_kinds(t, ["age", "bmi", "sex", "race", "flag", "stage"])
    assert got == {
        "age": "numeric",
        "bmi": "numeric",
        "sex": "categorical",
        "race": "categorical",
        "flag": "categorical",
        "stage": "categorical",
    }
    assert column_kinds(t, ["age", "sex"], {"age": "categorical"})["age"] == "categorical"
    with pytest.raises(ValueError, match="nope"):
        column_kinds(t, ["age", "nope"])
    with pytest.raises(ValueError, match="kinds"):
        column_kinds(t, ["age"], {"age": "ordinal"})


def test_merge_clusters_reports_who_was_left_out() -> None:
    clusters = pd.DataFrame(
        {
            "subject": ["a", "b", "c", "d"],
            "cluster": [1, 2, 1, 2],
            "q_1": [0.9, 0.1, 0.8, 0.3],
            "q_2": [0.1, 0.9, 0.2, 0.7],
        }
    )
    clinical = pd.DataFrame({"subject": ["b", "c", "e", "a"], "age": [40, 50, 60, 70]})
    merged, report = merge_clusters(clusters, clinical)
    assert merged["subject"].tolist() == ["a", "b", "c"]
    assert merged["age"].tolist() == [70, 40, 50]
    assert merged["cluster"].tolist() == [1, 2, 1]
    assert report["clusters_without_clinical"] == ["d"]
    assert report["clinical_without_cluster"] == ["e"]
    assert report["n_merged"] == 3


def test_merge_clusters_compares_subjects_as_text_and_rejects_duplicates() -> None:
    clusters = pd.DataFrame({"subject": ["1", "2"], "cluster": [1, 2]})
    clinical = pd.DataFrame({"subject": [1, 2], "age": [40, 50]})
    merged, report = merge_clusters(clusters, clinical)
    assert len(merged) == 2 and report["clinical_without_cluster"] == []
    with pytest.raises(ValueError, match="duplicated"):
        merge_clusters(clusters, pd.DataFrame({"subject": ["1", "1"], "age": [1, 2]}))


# ---------------------------------------------------------------------------- demographics


def test_demographics_numeric_mean_sd_and_anova() -> None:
    t = hand_table()
    table = demographics(t, ["age", "bmi"])
    age = row(table, "age")
    ages = {k: np.array(t.loc[t.cluster == k, "age"], float) for k in (1, 2, 3)}
    g2 = ages[2]
    assert age["cluster_2"] == f"{g2.mean():.1f} ({g2.std(ddof=1):.1f})"
    assert age["cluster_2"] == "39.5 (3.9)"  # by hand: mean 158/4; SD sqrt(45/3)
    allx = t["age"].to_numpy(float)
    assert age["overall"] == f"{allx.mean():.1f} ({allx.std(ddof=1):.1f})"
    assert age["statistic"] == "mean (SD)"
    assert age["test"] == "one-way ANOVA"
    assert age["p_value"] == pytest.approx(sps.f_oneway(*ages.values()).pvalue, rel=1e-10)
    assert age["n_used"] == 12
    # bmi: the ANOVA drops the missing values
    bmi = row(table, "bmi")
    groups = [t.loc[t.cluster == k, "bmi"].dropna().to_numpy() for k in (1, 2, 3)]
    assert bmi["p_value"] == pytest.approx(sps.f_oneway(*groups).pvalue, rel=1e-10)
    assert bmi["n_used"] == 10


def test_demographics_two_clusters_use_students_t() -> None:
    t = hand_table().query("cluster != 3")
    age = row(demographics(t, ["age"]), "age")
    a, b = (t.loc[t.cluster == k, "age"].to_numpy(float) for k in (1, 2))
    assert age["test"] == "two-sample t-test"
    assert age["p_value"] == pytest.approx(sps.ttest_ind(a, b, equal_var=True).pvalue)


def test_demographics_categorical_counts_missing_row_and_chi_square() -> None:
    t = hand_table()
    table = demographics(t, ["sex", "race"])
    # by hand: cluster 1 sex = F F M F -> F 3 of 4; cluster 2 = M M (missing) F -> F 1 of 3
    f = row(table, "sex", "F")
    assert f["statistic"] == "n (%)"
    assert f["cluster_1"] == "3 (75.0%)"
    assert f["cluster_2"] == "1 (33.3%)"
    assert f["cluster_3"] == "1 (25.0%)"
    assert f["overall"] == "5 (45.5%)"  # 5 F of 11 non-missing
    assert row(table, "sex", "M")["cluster_2"] == "2 (66.7%)"
    missing = row(table, "sex", "missing")
    assert (missing["overall"], missing["cluster_1"], missing["cluster_2"], missing["cluster_3"]) == (
        "1",
        "0",
        "1",
        "0",
    )
    assert f["n_used"] == 11
    # race has no missing value, so no missing row
    assert not ((table.variable == "race") & (table.level == "missing")).any()
    # chi-square on the level x cluster table built here; 12 subjects -> small expected counts
    race = table[table.variable == "race"]
    crosstab = pd.crosstab(t["race"], t["cluster"])
    expected_p = sps.chi2_contingency(crosstab.to_numpy()).pvalue
    assert race.iloc[0]["p_value"] == pytest.approx(expected_p, rel=1e-10)
    assert race.iloc[0]["test"] == "chi-square (small expected counts)"
    # p and test only on each variable's first row
    assert race["p_value"].iloc[1:].isna().all()
    assert (race["test"].iloc[1:] == "").all()
    assert race["level"].tolist() == ["black", "other", "white"]


def test_demographics_chi_square_with_large_counts() -> None:
    # 3 levels x 2 clusters, 120 subjects; all expected counts >= 5
    counts = {1: {"a": 25, "b": 20, "c": 15}, 2: {"a": 10, "b": 20, "c": 30}}
    cluster, level = [], []
    for k, by_level in counts.items():
        for lev, n in by_level.items():
            cluster += [k] * n
            level += [lev] * n
    t = pd.DataFrame({"cluster": cluster, "grade": level})
    first = demographics(t, ["grade"]).iloc[0]
    observed = np.array([[25, 10], [20, 20], [15, 30]])
    assert first["test"] == "chi-square"
    assert first["p_value"] == pytest.approx(sps.chi2_contingency(observed).pvalue, rel=1e-10)
    # a 2 x 2 table with large counts stays chi-square (scipy's default Yates correction)
    two = demographics(t[t.grade != "c"], ["grade"]).iloc[0]
    assert two["test"] == "chi-square"
    yates = sps.chi2_contingency(observed[:2], correction=True).pvalue
    assert two["p_value"] == pytest.approx(yates, rel=1e-10)


def test_demographics_fisher_for_small_2x2() -> None:
    t = pd.DataFrame({"cluster": [1] * 6 + [2] * 5, "smoker": ["yes"] * 5 + ["no"] + ["yes"] + ["no"] * 4})
    first = demographics(t, ["smoker"]).iloc[0]
    # by hand: level order no, yes; rows no: (1, 4), yes: (5, 1)
    assert first["test"] == "Fisher's exact test"
    assert first["p_value"] == pytest.approx(sps.fisher_exact([[1, 4], [5, 1]]).pvalue)


def test_demographics_edge_cases_do_not_crash() -> None:
    t = hand_table()
    one = demographics(t.assign(cluster=1), ["age", "sex"])
    assert one["p_value"].isna().all()
    assert row(one, "age")["test"].startswith("not tested")
    const = row(demographics(t.assign(flat=3.0), ["flat"]), "flat")
    assert np.isnan(const["p_value"]) and const["test"].startswith("not tested")
    single = t.copy()
    single.loc[0, "cluster"] = 4  # a one-member cluster
    table = demographics(single, ["age"])
    assert row(table, "age")["cluster_4"] == "50.0 (NA)"
    groups = [single.loc[single.cluster == k, "age"].to_numpy(float) for k in (1, 2, 3, 4)]
    assert row(table, "age")["p_value"] == pytest.approx(sps.f_oneway(*groups).pvalue)


# ---------------------------------------------------------------------------- associations


def test_associations_recovers_the_cluster_effect_and_its_f_test() -> None:
    d = simulated()
    res = associations(d, ["y"], ["age", "sex"])
    assert set(res["reference"]) == {3}  # cluster 3 is the largest (35)
    assert res["term"].tolist() == ["cluster 1 vs 3", "cluster 2 vs 3"]
    two = res.set_index("term").loc["cluster 2 vs 3"]
    assert two["ci_low"] < two["estimate"] < two["ci_high"]
    assert two["ci_low"] < 5.0 < two["ci_high"]
    assert two["p_value"] < 1e-6
    # extra-sum-of-squares F-test computed here with numpy least squares
    y = d["y"].to_numpy()
    x0 = design(d, ["age"], ["sex"])
    x1 = np.column_stack([x0, d["cluster"] == 1, d["cluster"] == 2]).astype(float)
    rss0, rss1 = rss(x0, y), rss(x1, y)
    df1, df2 = 2, len(d) - x1.shape[1]
    f = ((rss0 - rss1) / df1) / (rss1 / df2)
    assert two["f_stat"] == pytest.approx(f, rel=1e-8)
    assert (two["f_df_num"], two["f_df_den"]) == (df1, df2)
    assert two["f_p_value"] == pytest.approx(sps.f.sf(f, df1, df2), rel=1e-6, abs=1e-300)
    # and the contrast equals the least-squares coefficient of the cluster-2 dummy
    beta, *_ = np.linalg.lstsq(x1, y, rcond=None)
    assert two["estimate"] == pytest.approx(beta[-1], rel=1e-8)
    # 95 % t-interval: beta +- t(0.975, df2) * sqrt(s^2 [(X'X)^-1]_jj)
    se = np.sqrt(rss1 / df2 * np.linalg.inv(x1.T @ x1)[-1, -1])
    half = sps.t.ppf(0.975, df2) * se
    assert two["ci_low"] == pytest.approx(beta[-1] - half, rel=1e-8)
    assert two["ci_high"] == pytest.approx(beta[-1] + half, rel=1e-8)
    assert two["p_value"] == pytest.approx(2 * sps.t.sf(abs(beta[-1]) / se, df2), rel=1e-6)
    assert (res["n_used"] == 90).all()


def test_associations_f_test_on_a_null_outcome() -> None:
    d = simulated()
    res = associations(d, ["y2"], ["age"], reference=1)
    assert res["term"].tolist() == ["cluster 2 vs 1", "cluster 3 vs 1"]
    y = d["y2"].to_numpy()
    x0 = design(d, ["age"], [])
    x1 = np.column_stack([x0, d["cluster"] == 2, d["cluster"] == 3]).astype(float)
    f = ((rss(x0, y) - rss(x1, y)) / 2) / (rss(x1, y) / (len(d) - 4))
    assert res["f_p_value"].iloc[0] == pytest.approx(sps.f.sf(f, 2, len(d) - 4), rel=1e-8)


def test_associations_default_reference_ties_go_to_smallest_label() -> None:
    d = simulated(sizes=(20, 35, 35))
    assert set(associations(d, ["y"], ["age"])["reference"]) == {2}


def test_associations_missing_values_reduce_n_used() -> None:
    d = simulated()
    d.loc[[0, 1, 2], "y"] = np.nan
    d.loc[[2, 3], "age"] = np.nan  # row 2 is missing both: 4 distinct incomplete rows
    res = associations(d, ["y", "y2"], ["age", "sex"])
    n_used = res.groupby("outcome")["n_used"].unique()
    assert n_used["y"].tolist() == [86]
    assert n_used["y2"].tolist() == [88]
    kept = d.dropna(subset=["y", "age"])
    x0 = design(kept, ["age"], ["sex"])
    x1 = np.column_stack([x0, kept["cluster"] == 1, kept["cluster"] == 2]).astype(float)
    beta, *_ = np.linalg.lstsq(x1, kept["y"].to_numpy(), rcond=None)
    got = res[(res.outcome == "y") & (res.term == "cluster 2 vs 3")]["estimate"].item()
    assert got == pytest.approx(beta[-1], rel=1e-8)


def test_associations_odd_column_names_match_plain_names() -> None:
    d = simulated()
    plain = associations(d, ["y"], ["age", "sex"])
    odd = associations(
        d.rename(columns={"y": "FEV1 %", "age": "age (y)", "sex": "1sex"}), ["FEV1 %"], ["age (y)", "1sex"]
    )
    np.testing.assert_allclose(odd["estimate"], plain["estimate"], rtol=1e-10)
    np.testing.assert_allclose(odd["f_p_value"], plain["f_p_value"], rtol=1e-10)


def test_associations_edge_cases() -> None:
    d = simulated()
    with pytest.raises(ValueError, match="fev1_missing"):
        associations(d, ["y", "fev1_missing"], ["age"])
    one = associations(d.assign(cluster=1), ["y"], ["age"])
    assert len(one) == 1 and np.isnan(one["f_p_value"].item())
    assert one["note"].item().startswith("not tested")
    flat = associations(d.assign(flat=1.0), ["flat"], ["age"])
    assert flat["f_p_value"].isna().all() and flat["note"].str.startswith("not tested").all()
    single = d.copy()
    single.loc[0, "cluster"] = 4  # one-member cluster: estimable, no crash
    res = associations(single, ["y"], ["age"])
    assert "cluster 4 vs 3" in res["term"].tolist()
    assert np.isfinite(res["f_p_value"]).all()


def test_a_model_s_clusters_that_no_row_is_in_keep_their_columns_and_contrasts() -> None:
    """Subjects scored against a K = 4 study, none in its cluster 4 or (second case) in its
    reference cluster 3: the tables still hold every cluster, with NaN and the reason."""
    d = simulated()
    labels = [1, 2, 3, 4]
    table = demographics(d, ["age", "sex"], labels=labels)
    assert [c for c in table.columns if c.startswith("cluster_")] == [f"cluster_{k}" for k in labels]
    assert row(table, "age")["cluster_4"] == "NA" and row(table, "sex", "F")["cluster_4"] == "0 (NA)"
    # the empty cluster changes no statistic of the others
    assert row(table, "age")["p_value"] == row(demographics(d, ["age", "sex"]), "age")["p_value"]
    res = associations(d, ["y"], ["age"], reference=3, labels=labels).set_index("term")
    plain = associations(d, ["y"], ["age"], reference=3).set_index("term")
    assert res.index.tolist() == ["cluster 1 vs 3", "cluster 2 vs 3", "cluster 4 vs 3"]
    pd.testing.assert_frame_equal(res.loc[plain.index, plain.columns.drop("note")], plain.drop(columns="note"))
    assert np.isnan(res.loc["cluster 4 vs 3", "estimate"])
    assert res.loc["cluster 4 vs 3", "note"] == "not estimated: no complete rows in this cluster"
    # no row in the reference cluster: nothing can be set against it, and no error
    without = d[d["cluster"] != 3]
    with pytest.raises(ValueError, match="reference cluster 3 not among the labels"):
        associations(without, ["y"], ["age"], reference=3)
    none = associations(without, ["y", "y2"], ["age"], reference=3, labels=labels)
    assert none["outcome"].tolist() == ["y", "y2"] and (none["reference"] == 3).all()
    assert none[["estimate", "p_value", "f_p_value"]].isna().all().all()
    assert (none["note"] == "not tested: the reference cluster 3 has no complete rows").all()
    with pytest.raises(ValueError, match=r"cluster label\(s\) \[3\] not among the labels \[1, 2\]"):
        demographics(d, ["age"], labels=[1, 2])


# ---------------------------------------------------------------------------- variance explained


def r2_by_hand(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(R^2, adjusted R^2) by least squares; x includes the intercept column."""
    n, p = x.shape
    r2 = 1.0 - rss(x, y) / float(((y - y.mean()) ** 2).sum())
    return r2, 1.0 - (1.0 - r2) * (n - 1) / (n - p)


def test_variance_explained_matches_least_squares_on_common_rows() -> None:
    d = simulated()
    d.loc[[5, 6], "stage"] = None  # comparator missing: these rows leave all three models
    d.loc[[6, 7], "y"] = np.nan
    res = variance_explained(d, ["y"], ["age", "sex"], "stage").iloc[0]
    kept = d.dropna(subset=["y", "stage"])
    assert res["n_used"] == len(kept) == 87
    y = kept["y"].to_numpy()
    for name, categorical in [
        ("covariates", ["sex"]),
        ("cluster", ["sex", "cluster"]),
        ("comparator", ["sex", "stage"]),
    ]:
        r2, adj = r2_by_hand(design(kept, ["age"], categorical), y)
        assert res[f"r2_{name}"] == pytest.approx(r2, rel=1e-8), name
        assert res[f"adj_r2_{name}"] == pytest.approx(adj, rel=1e-8), name
    assert res["r2_cluster"] >= res["r2_covariates"]
    assert res["r2_comparator"] >= res["r2_covariates"]


def test_variance_explained_without_comparator_or_covariates() -> None:
    d = simulated()
    res = variance_explained(d, ["y", "y2"], [], None)
    assert (res["r2_covariates"] == 0).all() and (res["adj_r2_covariates"] == 0).all()
    assert res["r2_comparator"].isna().all() and res["adj_r2_comparator"].isna().all()
    r2, adj = r2_by_hand(design(d, [], ["cluster"]), d["y"].to_numpy())
    assert res.iloc[0]["r2_cluster"] == pytest.approx(r2, rel=1e-8)
    assert res.iloc[0]["adj_r2_cluster"] == pytest.approx(adj, rel=1e-8)
    with pytest.raises(ValueError, match="nope"):
        variance_explained(d, ["y"], ["age"], "nope")


def test_compare_associations_sets_two_fits_side_by_side_by_contrast() -> None:
    """A study's fit beside a refit on another cohort with the same reference: matched by
    (outcome, term), in the study's order; a contrast only one table has keeps its row."""
    study = associations(simulated(seed=7), ["y", "y2"], ["age"], reference=3)
    later = associations(simulated(seed=8, sizes=(10, 12, 14)), ["y2", "y"], ["age"], reference=3)
    later = later[~((later["outcome"] == "y2") & (later["term"] == "cluster 1 vs 3"))]
    table = compare_associations(study, later)
    assert table[["outcome", "term"]].values.tolist() == study[["outcome", "term"]].values.tolist()
    assert table.columns[:4].tolist() == ["outcome", "term", "estimate_study", "estimate_scored"]
    by_term = table.set_index(["outcome", "term"])
    for (outcome, term), fit in study.set_index(["outcome", "term"]).iterrows():
        assert by_term.loc[(outcome, term), "estimate_study"] == fit["estimate"]
        assert by_term.loc[(outcome, term), "n_used_study"] == 90
    refit = later.set_index(["outcome", "term"]).loc[("y", "cluster 2 vs 3")]
    assert by_term.loc[("y", "cluster 2 vs 3"), "estimate_scored"] == refit["estimate"]
    assert np.isnan(by_term.loc[("y2", "cluster 1 vs 3"), "estimate_scored"])
    # a different reference makes other contrasts: nothing is matched across references
    other = associations(simulated(seed=8), ["y"], ["age"], reference=1)
    mixed = compare_associations(study[study["outcome"] == "y"], other)
    assert mixed[["estimate_study", "estimate_scored"]].notna().sum(axis=1).max() == 1
