"""The stats stage of a real tiny run, recomputed independently from its input tables."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import statsmodels.formula.api as smf
from scipy import stats as sps

pytestmark = pytest.mark.workflow


def _merged(results: Path) -> pd.DataFrame:
    clusters = pd.read_csv(results / "clusters.tsv", sep="\t", dtype={"subject": str})
    clinical = pd.read_csv(results / "demo" / "clinical.tsv", sep="\t", dtype={"subject": str})
    return clusters[["subject", "cluster"]].merge(clinical, on="subject")


def test_association_matches_statsmodels(demo_run: Path) -> None:
    merged = _merged(demo_run)
    table = pd.read_csv(demo_run / "stats" / "associations.tsv", sep="\t")
    assert set(table["outcome"]) == {"fvc_pct", "crp"}
    sizes = merged["cluster"].value_counts()
    reference = int(sizes[sizes == sizes.max()].index.min())
    assert (table["reference"] == reference).all()
    fit = smf.ols(f"fvc_pct ~ C(cluster, Treatment({reference}))", data=merged).fit()
    rows = table[table["outcome"] == "fvc_pct"]
    for row in rows.itertuples():
        k = int(row.term.split()[1])
        name = f"C(cluster, Treatment({reference}))[T.{k}]"
        assert row.estimate == pytest.approx(fit.params[name], rel=1e-5, abs=1e-8)
        assert row.ci_low == pytest.approx(fit.conf_int().loc[name, 0], rel=1e-5, abs=1e-8)
    # With no covariates the cluster F-test is the regression's overall F-test.
    assert rows["f_p_value"].iloc[0] == pytest.approx(fit.f_pvalue, rel=1e-5)
    assert (rows["n_used"] == len(merged)).all()


def test_demographics_p_value_matches_scipy(demo_run: Path) -> None:
    merged = _merged(demo_run)
    table = pd.read_csv(demo_run / "stats" / "demographics.tsv", sep="\t")
    groups = [g["fvc_pct"].to_numpy() for _, g in merged.groupby("cluster")]
    expected = sps.ttest_ind(*groups).pvalue if len(groups) == 2 else sps.f_oneway(*groups).pvalue
    got = table.loc[table["variable"] == "fvc_pct", "p_value"].dropna()
    assert len(got) == 1 and got.iloc[0] == pytest.approx(expected, rel=1e-6)
    variance = pd.read_csv(demo_run / "stats" / "variance_explained.tsv", sep="\t")
    assert np.all(variance["r2_cluster"] >= variance["r2_covariates"] - 1e-12)
