"""Clinical statistics of the CT clusters: who is in each cluster, and what the clusters add.

Inputs are the pipeline's ``clusters.tsv`` (``subject, cluster, q_1..q_K``) and a clinical
table (``subject`` plus any columns). Three analyses, each returning a tidy data frame:

- :func:`demographics` -- the descriptive table per cluster (the paper's Table 2): mean (SD)
  for numeric columns, n (%) per level for categorical ones, with a test of difference
  between the clusters (Student's t-test or one-way ANOVA; chi-square test of independence
  or Fisher's exact test; Agresti 2013, *Categorical Data Analysis*, 3rd ed., ch. 3).
- :func:`associations` -- per outcome, an ordinary least squares model
  ``outcome ~ covariates + cluster`` (treatment coding against a reference cluster) with the
  cluster contrasts, their 95 % confidence intervals and the overall F-test of the cluster
  term against the nested covariates-only model (the extra-sum-of-squares F-test; Draper &
  Smith 1998, *Applied Regression Analysis*, 3rd ed., section 6.2).
- :func:`variance_explained` -- per outcome, R^2 and adjusted R^2 (Ezekiel 1930 / Theil 1961
  form, ``1 - (1 - R^2)(n - 1)/(n - p - 1)``) of three models on the same rows: covariates
  only, covariates + cluster, covariates + a comparator classification (e.g. Scadding stage).

Missing values are handled per analysis, never silently: descriptive rows count only the
non-missing values (and a ``missing`` row says how many were missing per cluster); every
model is fitted on its complete cases, and ``n_used`` reports how many rows it used.
Column names need not be Python identifiers: models are fitted on internally renamed
columns, so names such as ``"FEV1 %"`` work.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import statsmodels.formula.api as smf
from scipy import stats as sps

KINDS = ("numeric", "categorical")
SUBJECT = "subject"
_OUTCOME, _CLUSTER, _COMPARATOR = "y__", "cluster__", "comparator__"
_SMALL_EXPECTED = 5.0

__all__ = [
    "associations",
    "column_kinds",
    "compare_associations",
    "demographics",
    "merge_clusters",
    "variance_explained",
]


# ---------------------------------------------------------------------------- kinds


def _require_columns(table: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    """Raise ValueError naming every column of ``columns`` that ``table`` lacks."""
    absent = [c for c in columns if c not in table.columns]
    if absent:
        raise ValueError(f"{what} column(s) not in the table: {', '.join(map(repr, absent))}")


def column_kinds(
    table: pd.DataFrame,
    columns: Sequence[str],
    kinds: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Kind of each column: ``"numeric"`` or ``"categorical"``.

    Inputs: ``table``; ``columns`` to classify; ``kinds``, optional overrides
    ``{column: kind}`` applied on top of the guess (keys not in ``columns`` are ignored).
    Output: ``{column: kind}`` for every column in ``columns``, in order.
    The guess is by dtype only: a numeric dtype (int, float, nullable numeric) is numeric;
    anything else (object, string, category, bool) is categorical. ValueError for a column
    absent from ``table`` or an override that is not one of :data:`KINDS`.
    """
    _require_columns(table, columns, "requested")
    overrides = dict(kinds or {})
    bad = {k: v for k, v in overrides.items() if v not in KINDS}
    if bad:
        raise ValueError(f"kinds must be one of {KINDS}; got {bad}")
    out = {}
    for col in columns:
        dtype = table[col].dtype
        guess = (
            "numeric"
            if pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_bool_dtype(dtype)
            else "categorical"
        )
        out[col] = overrides.get(col, guess)
    return out


def _as_numeric(series: pd.Series) -> pd.Series:
    """``series`` as float64 with NaN for missing; ValueError if a present value is not a number."""
    converted = pd.to_numeric(series, errors="coerce").astype("float64")
    bad = series.notna() & converted.isna()
    if bad.any():
        examples = list(series[bad].astype(str).unique()[:3])
        raise ValueError(f"column {series.name!r} is declared numeric but holds {examples}")
    return converted


def _as_labels(series: pd.Series) -> pd.Series:
    """``series`` as text labels (object dtype) with None for missing, so models treat it as
    categorical whatever its dtype."""
    return series.astype(object).map(lambda v: None if pd.isna(v) else str(v))


def _levels(series: pd.Series) -> list[Any]:
    """Levels of a categorical column: its categories if it is a pandas Categorical,
    otherwise the sorted distinct non-missing values (sorted as text if mixed types)."""
    if isinstance(series.dtype, pd.CategoricalDtype):
        return list(series.cat.categories)
    values = list(pd.unique(series.dropna()))
    try:
        return sorted(values)
    except TypeError:
        return sorted(values, key=str)


# ---------------------------------------------------------------------------- merge


def _subjects_as_text(table: pd.DataFrame, name: str) -> pd.DataFrame:
    """Copy of ``table`` with ``subject`` as stripped text; ValueError if absent or duplicated."""
    _require_columns(table, [SUBJECT], name)
    out = table.copy()
    out[SUBJECT] = out[SUBJECT].astype(str).str.strip()
    dup = out[SUBJECT][out[SUBJECT].duplicated()].unique().tolist()
    if dup:
        raise ValueError(f"{name}: duplicated subject(s) {dup}")
    return out


def merge_clusters(clusters: pd.DataFrame, clinical: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Inner join of the cluster assignments and the clinical table on ``subject``.

    Inputs: ``clusters`` (``subject, cluster, ...``) and ``clinical`` (``subject, ...``);
    subjects are compared as text (so read both tables with ``dtype={"subject": str}`` to
    keep leading zeros). Output: ``(merged, report)`` where ``merged`` has the clusters'
    columns then the clinical ones, in the clusters' row order, and ``report`` is
    ``{"n_clusters": int, "n_clinical": int, "n_merged": int,
    "clusters_without_clinical": [subject, ...], "clinical_without_cluster": [subject, ...]}``
    so the caller can log who was left out. ValueError if ``subject`` is missing or
    duplicated in either table, if the tables share a column other than ``subject``, or if
    a cluster label is missing.
    """
    left = _subjects_as_text(clusters, "clusters")
    right = _subjects_as_text(clinical, "clinical")
    _require_columns(left, ["cluster"], "clusters")
    if left["cluster"].isna().any():
        raise ValueError("clusters: missing cluster label(s)")
    shared = sorted((set(left.columns) & set(right.columns)) - {SUBJECT})
    if shared:
        raise ValueError(f"clusters and clinical tables share column(s) {shared}")
    merged = left.merge(right, on=SUBJECT, how="inner", sort=False)
    in_right, in_left = set(right[SUBJECT]), set(left[SUBJECT])
    report = {
        "n_clusters": len(left),
        "n_clinical": len(right),
        "n_merged": len(merged),
        "clusters_without_clinical": [s for s in left[SUBJECT] if s not in in_right],
        "clinical_without_cluster": [s for s in right[SUBJECT] if s not in in_left],
    }
    return merged, report


# ---------------------------------------------------------------------------- demographics


def _cluster_labels(merged: pd.DataFrame, cluster_col: str, labels: Sequence[Any] | None = None) -> list[Any]:
    """Sorted cluster labels: ``labels`` when given (every cluster of a model, those no row
    is in included), else the distinct labels of the rows. ValueError if the column is
    absent or has gaps, or holds a label that ``labels`` lacks."""
    _require_columns(merged, [cluster_col], "cluster")
    if merged[cluster_col].isna().any():
        raise ValueError(f"column {cluster_col!r} has missing cluster labels")
    present = sorted(_py(v) for v in pd.unique(merged[cluster_col]))
    if labels is None:
        return present
    every = sorted({_py(v) for v in labels})
    unknown = [k for k in present if k not in every]
    if unknown:
        raise ValueError(f"cluster label(s) {unknown} not among the labels {every}")
    return every


def _py(value: Any) -> Any:
    """A numpy scalar as the matching Python scalar (so it prints as ``2``, not
    ``np.int64(2)``, in labels and formulas); other values unchanged."""
    return value.item() if isinstance(value, np.generic) else value


def _fmt_mean_sd(values: pd.Series, digits: int) -> str:
    """``"mean (SD)"`` of the non-missing values (SD with n - 1); ``"NA"`` parts when undefined."""
    v = values.dropna()
    if v.empty:
        return "NA"
    sd = v.std(ddof=1) if len(v) > 1 else float("nan")
    sd_text = "NA" if np.isnan(sd) else f"{sd:.{digits}f}"
    return f"{v.mean():.{digits}f} ({sd_text})"


def _fmt_count_pct(count: int, total: int, digits: int) -> str:
    """``"n (p%)"`` with p = 100 n / total; ``"0 (NA)"`` when total is 0."""
    if total == 0:
        return f"{count} (NA)"
    return f"{count} ({100.0 * count / total:.{digits}f}%)"


def _numeric_test(groups: list[np.ndarray]) -> tuple[str, float]:
    """Test of equal means across clusters: Student's two-sample t-test (pooled variance,
    ``scipy.stats.ttest_ind(equal_var=True)``) for two groups, one-way ANOVA
    (``scipy.stats.f_oneway``; Fisher 1925) for more. Output ``(test name, p)``; p is NaN
    with a ``"not tested: ..."`` name when the test is undefined."""
    groups = [g for g in groups if len(g) > 0]
    if len(groups) < 2:
        return "not tested: fewer than 2 clusters with data", float("nan")
    n = sum(len(g) for g in groups)
    if n - len(groups) < 1:
        return "not tested: no within-cluster degrees of freedom", float("nan")
    within = sum(float(((g - g.mean()) ** 2).sum()) for g in groups)
    if within == 0.0:
        return "not tested: no variation within clusters", float("nan")
    if len(groups) == 2:
        return "two-sample t-test", float(sps.ttest_ind(*groups, equal_var=True).pvalue)
    return "one-way ANOVA", float(sps.f_oneway(*groups).pvalue)


def _categorical_test(table: np.ndarray) -> tuple[str, float]:
    """Test of independence of level and cluster on a level x cluster count table.

    Empty rows and columns are dropped first. Rule: Pearson's chi-square test
    (``scipy.stats.chi2_contingency`` with its default Yates continuity correction, which
    applies only to 2 x 2 tables); if any expected count is below 5 and the table is 2 x 2,
    Fisher's exact test (``scipy.stats.fisher_exact``, two-sided) instead; if any expected
    count is below 5 in a larger table, the asymptotic chi-square p-value is still reported
    but the test is named ``"chi-square (small expected counts)"`` so the reader knows the
    approximation is doubtful (no Monte Carlo p-value is computed).
    Output ``(test name, p)``.
    """
    t = table[table.sum(axis=1) > 0][:, table.sum(axis=0) > 0]
    if t.shape[1] < 2:
        return "not tested: fewer than 2 clusters with data", float("nan")
    if t.shape[0] < 2:
        return "not tested: only one level observed", float("nan")
    res = sps.chi2_contingency(t)
    small = bool((res.expected_freq < _SMALL_EXPECTED).any())
    if small and t.shape == (2, 2):
        return "Fisher's exact test", float(sps.fisher_exact(t).pvalue)
    name = "chi-square (small expected counts)" if small else "chi-square"
    return name, float(res.pvalue)


def _numeric_block(x: pd.Series, g: pd.Series, labels: list[Any], digits: int) -> list[dict[str, Any]]:
    """Rows of :func:`demographics` for one numeric column ``x`` grouped by clusters ``g``."""
    row = {"level": "", "statistic": "mean (SD)", "overall": _fmt_mean_sd(x, digits)}
    for k in labels:
        row[f"cluster_{k}"] = _fmt_mean_sd(x[g == k], digits)
    groups = [x[g == k].dropna().to_numpy() for k in labels]
    row["test"], row["p_value"] = _numeric_test(groups)
    row["n_used"] = int(x.notna().sum())
    return [row]


def _categorical_block(x: pd.Series, g: pd.Series, labels: list[Any], digits: int) -> list[dict[str, Any]]:
    """Rows of :func:`demographics` for one categorical column ``x`` grouped by ``g``:
    one ``n (%)`` row per level, percentages within each cluster's non-missing values."""
    present = x.notna()
    levels = _levels(x)
    counts = np.array([[int(((x == lev) & (g == k)).sum()) for k in labels] for lev in levels])
    counts = counts.reshape(len(levels), len(labels))
    totals = [int((present & (g == k)).sum()) for k in labels]
    rows = []
    for i, lev in enumerate(levels):
        row = {"level": str(lev), "statistic": "n (%)"}
        row["overall"] = _fmt_count_pct(int(counts[i].sum()), int(present.sum()), digits)
        for j, k in enumerate(labels):
            row[f"cluster_{k}"] = _fmt_count_pct(int(counts[i, j]), totals[j], digits)
        rows.append(row)
    test, p = _categorical_test(counts) if levels else ("not tested: no data", float("nan"))
    if rows:
        rows[0].update(test=test, p_value=p)
    else:
        rows.append({"level": "", "statistic": "n (%)", "overall": "0", "test": test, "p_value": p})
    for row in rows:
        row["n_used"] = int(present.sum())
    return rows


def _missing_row(x: pd.Series, g: pd.Series, labels: list[Any]) -> dict[str, Any]:
    """The ``missing`` row: number of missing values overall and per cluster."""
    row = {"level": "missing", "statistic": "n", "overall": str(int(x.isna().sum()))}
    for k in labels:
        row[f"cluster_{k}"] = str(int(x[g == k].isna().sum()))
    row["n_used"] = int(x.notna().sum())
    return row


def demographics(
    merged: pd.DataFrame,
    columns: Sequence[str],
    kinds: Mapping[str, str] | None = None,
    cluster_col: str = "cluster",
    digits: int = 1,
    labels: Sequence[Any] | None = None,
) -> pd.DataFrame:
    """Descriptive table of ``columns`` overall and per cluster, with a test per column.

    Inputs: ``merged`` (one row per subject, from :func:`merge_clusters`); ``columns`` to
    describe; ``kinds`` overrides for :func:`column_kinds`; ``cluster_col``; ``digits``
    after the decimal point; ``labels``, every cluster label to give a column (default:
    those in ``merged``; a cluster no row is in gets ``NA`` and zero counts).

    Output, one block of rows per column, with columns ``variable, level, statistic,
    overall, cluster_<k>... (one per cluster label, sorted), test, p_value, n_used``:

    - numeric: one row, ``level = ""``, ``statistic = "mean (SD)"`` (sample SD, n - 1),
      tested with Student's two-sample t-test (2 clusters) or one-way ANOVA (more);
    - categorical: one row per level, ``statistic = "n (%)"``, the percentage taken within
      the column's non-missing values of that cluster (or overall); tested with the
      chi-square test of independence, Fisher's exact test for a 2 x 2 table with an
      expected count below 5, and the asymptotic chi-square marked
      ``"chi-square (small expected counts)"`` for larger tables with one (see
      :func:`_categorical_test`);
    - either kind: a final ``level = "missing"`` row (``statistic = "n"``, plain counts)
      when any value is missing.

    ``test`` and ``p_value`` are filled on the block's first row only (``""`` / NaN
    elsewhere); a test that cannot be run has p NaN and ``test = "not tested: <reason>"``.
    ``n_used`` is the number of non-missing values of the column.
    """
    labels = _cluster_labels(merged, cluster_col, labels)
    kind_of = column_kinds(merged, columns, kinds)
    g = merged[cluster_col]
    rows = []
    for col in columns:
        if kind_of[col] == "numeric":
            x = _as_numeric(merged[col])
            block = _numeric_block(x, g, labels, digits)
        else:
            x = merged[col]
            block = _categorical_block(x, g, labels, digits)
        if x.isna().any():
            block.append(_missing_row(x, g, labels))
        for row in block:
            rows.append({"variable": col, **row})
    names = ["variable", "level", "statistic", "overall"]
    names += [f"cluster_{k}" for k in labels] + ["test", "p_value", "n_used"]
    out = pd.DataFrame(rows, columns=names)
    out["test"] = out["test"].fillna("").astype(object)
    out["p_value"] = out["p_value"].astype(float)
    out["n_used"] = out["n_used"].astype(int)
    return out


# ---------------------------------------------------------------------------- models


def _model_frame(
    merged: pd.DataFrame,
    outcome: str,
    covariates: Sequence[str],
    kind_of: Mapping[str, str],
    cluster_col: str,
    comparator: str | None = None,
) -> tuple[pd.DataFrame, list[str]]:
    """Complete-case frame for one outcome with safe column names.

    Output: ``(frame, covariate_terms)``: ``frame`` has ``y__`` (the outcome as float),
    ``x<i>__`` per covariate (float if numeric, text if categorical), ``cluster__`` and,
    if given, ``comparator__`` (text), keeping only rows complete in all of them;
    ``covariate_terms`` are the formula terms (``C(x<i>__)`` for categorical covariates).
    """
    data = {_OUTCOME: _as_numeric(merged[outcome]), _CLUSTER: merged[cluster_col]}
    terms = []
    for i, cov in enumerate(covariates):
        name = f"x{i}__"
        numeric = kind_of[cov] == "numeric"
        data[name] = _as_numeric(merged[cov]) if numeric else _as_labels(merged[cov])
        terms.append(name if numeric else f"C({name})")
    if comparator is not None:
        data[_COMPARATOR] = _as_labels(merged[comparator])
    frame = pd.DataFrame(data, index=merged.index).dropna()
    return frame, terms


def _formula(terms: Sequence[str]) -> str:
    """``y__ ~ term + term ...`` (``y__ ~ 1`` when there are no terms)."""
    return f"{_OUTCOME} ~ " + (" + ".join(terms) if terms else "1")


def _is_constant(values: pd.Series) -> bool:
    """True when ``values`` has no spread (all equal, or at most one value)."""
    return len(values) < 2 or float(values.max() - values.min()) == 0.0


def _default_reference(clusters: pd.Series) -> Any:
    """Label of the largest cluster; ties go to the smallest label (None without rows)."""
    sizes = clusters.value_counts()
    if sizes.empty:
        return None
    return _py(min(sizes.index[sizes == sizes.max()]))


def _check_model_inputs(
    merged: pd.DataFrame,
    outcomes: Sequence[str],
    covariates: Sequence[str],
    kinds: Mapping[str, str] | None,
    cluster_col: str,
    comparator: str | None = None,
) -> dict[str, str]:
    """Validate columns and return their kinds; ValueError for an absent column, a
    categorical outcome, or an outcome also listed as a covariate."""
    _require_columns(merged, outcomes, "outcome")
    _require_columns(merged, covariates, "covariate")
    if comparator is not None:
        _require_columns(merged, [comparator], "comparator")
    _cluster_labels(merged, cluster_col)
    kind_of = column_kinds(merged, [*outcomes, *covariates], kinds)
    categorical = [o for o in outcomes if kind_of[o] != "numeric"]
    if categorical:
        raise ValueError(f"outcome(s) must be numeric: {categorical}")
    both = sorted(set(outcomes) & set(covariates))
    if both:
        raise ValueError(f"column(s) both outcome and covariate: {both}")
    return kind_of


def _cluster_f_test(full: Any, restricted: Any) -> tuple[float, float, float, float, str]:
    """Extra-sum-of-squares F-test of the cluster term (full vs covariates-only model,
    fitted on the same rows): F = ((RSS0 - RSS1)/df1) / (RSS1/df2), df1 = difference in
    residual df, df2 = residual df of the full model. Output ``(F, df1, df2, p, note)``."""
    df1 = restricted.df_resid - full.df_resid
    df2 = full.df_resid
    nan = float("nan")
    if df1 < 1:
        return nan, float(df1), float(df2), nan, "not tested: cluster term adds no parameter"
    if df2 < 1:
        return nan, float(df1), float(df2), nan, "not tested: no residual degrees of freedom"
    if full.ssr <= 1e-12 * restricted.centered_tss:
        return nan, float(df1), float(df2), nan, "not tested: zero residual variance"
    f_stat, p, _ = full.compare_f_test(restricted)
    return float(f_stat), float(df1), float(df2), float(p), ""


def _contrast_rows(fit: Any, labels: list[Any], reference: Any, term: str) -> list[dict[str, Any]]:
    """One row per non-reference cluster: estimate, 95 % CI and t-test p of its contrast
    with the reference (NaN with a note for a cluster absent from the model's rows)."""
    ci = fit.conf_int(alpha=0.05)
    rows = []
    for k in labels:
        if k == reference:
            continue
        name = f"{term}[T.{k}]"
        row = {"term": f"cluster {k} vs {reference}", "note": ""}
        if name in fit.params.index:
            row.update(
                estimate=float(fit.params[name]),
                ci_low=float(ci.loc[name, 0]),
                ci_high=float(ci.loc[name, 1]),
                p_value=float(fit.pvalues[name]),
            )
        else:
            row["note"] = "not estimated: no complete rows in this cluster"
        rows.append(row)
    return rows


def _one_association(frame: pd.DataFrame, terms: list[str], labels: list[Any], reference: Any) -> list[dict[str, Any]]:
    """Rows of :func:`associations` for one outcome's complete-case ``frame``."""
    present = {_py(v) for v in pd.unique(frame[_CLUSTER])}
    skip = None
    if not present:
        skip = "not tested: no complete rows"
    elif reference not in present:
        skip = f"not tested: the reference cluster {reference} has no complete rows"
    elif len(present) < 2:
        skip = "not tested: fewer than 2 clusters with complete rows"
    elif _is_constant(frame[_OUTCOME]):
        skip = "not tested: constant outcome"
    if skip:
        return [{"term": "", "note": skip}]
    cluster_term = f"C({_CLUSTER}, Treatment({reference!r}))"
    full = smf.ols(_formula([*terms, cluster_term]), frame).fit()
    restricted = smf.ols(_formula(terms), frame).fit()
    f_stat, df1, df2, f_p, f_note = _cluster_f_test(full, restricted)
    rows = _contrast_rows(full, labels, reference, cluster_term)
    for row in rows:
        row.update(f_stat=f_stat, f_df_num=df1, f_df_den=df2, f_p_value=f_p)
        row["note"] = "; ".join(n for n in (row["note"], f_note) if n)
    return rows


def associations(
    merged: pd.DataFrame,
    outcomes: Sequence[str],
    covariates: Sequence[str],
    kinds: Mapping[str, str] | None = None,
    reference: int | None = None,
    cluster_col: str = "cluster",
    labels: Sequence[Any] | None = None,
) -> pd.DataFrame:
    """Adjusted differences in each outcome between clusters (OLS, treatment coding).

    For each outcome, ``statsmodels.formula.api.ols`` fits
    ``outcome ~ covariates + C(cluster, Treatment(reference))`` on the rows complete in the
    outcome, the covariates and the cluster (categorical covariates enter as ``C(name)``).
    The cluster term as a whole is tested by the extra-sum-of-squares F-test against the
    covariates-only model fitted on the same rows (:func:`_cluster_f_test`).

    Inputs: ``merged``; ``outcomes`` (numeric columns); ``covariates``; ``kinds`` overrides
    for :func:`column_kinds`; ``reference`` cluster label (default: the largest cluster in
    ``merged``, ties to the smallest label); ``cluster_col``; ``labels``, every cluster
    label (default: those in ``merged``), so that a model's clusters that no row is in
    still get their contrast rows (NaN, with a note) and may be the ``reference``.

    Output, one row per outcome and non-reference cluster, columns ``outcome, term
    ("cluster k vs ref"), estimate, ci_low, ci_high`` (95 % t-interval), ``p_value`` (t-test
    of the contrast), ``f_stat, f_df_num, f_df_den, f_p_value`` (the cluster F-test,
    repeated on each of the outcome's rows), ``n_used, reference, note``. When an outcome
    cannot be tested (e.g. a single cluster, or none of its complete rows in the reference
    cluster) it gets one row with NaNs and the reason in ``note``. ValueError for an absent
    column, a non-numeric outcome, or a ``reference`` that is not a cluster label.
    """
    kind_of = _check_model_inputs(merged, outcomes, covariates, kinds, cluster_col)
    labels = _cluster_labels(merged, cluster_col, labels)
    if reference is None:
        reference = _default_reference(merged[cluster_col])
    elif _py(reference) not in labels:
        raise ValueError(f"reference cluster {reference!r} not among the labels {labels}")
    reference = _py(reference)
    rows = []
    for outcome in outcomes:
        frame, terms = _model_frame(merged, outcome, covariates, kind_of, cluster_col)
        for row in _one_association(frame, terms, labels, reference):
            rows.append({"outcome": outcome, **row, "n_used": len(frame), "reference": reference})
    names = [
        "outcome",
        "term",
        "estimate",
        "ci_low",
        "ci_high",
        "p_value",
        "f_stat",
        "f_df_num",
        "f_df_den",
        "f_p_value",
        "n_used",
        "reference",
        "note",
    ]
    out = pd.DataFrame(rows, columns=names)
    floats = ["estimate", "ci_low", "ci_high", "p_value", "f_stat", "f_df_num", "f_df_den", "f_p_value"]
    out[floats] = out[floats].astype(float)
    return out


def _r2_pair(frame: pd.DataFrame, terms: Sequence[str]) -> tuple[float, float]:
    """``(R^2, adjusted R^2)`` of ``y__ ~ terms`` on ``frame``: exactly 0 for the
    intercept-only model, NaN when the outcome is constant or there are no rows."""
    if _is_constant(frame[_OUTCOME]):
        return float("nan"), float("nan")
    if not terms:
        return 0.0, 0.0
    fit = smf.ols(_formula(terms), frame).fit()
    return float(fit.rsquared), float(fit.rsquared_adj)


def variance_explained(
    merged: pd.DataFrame,
    outcomes: Sequence[str],
    covariates: Sequence[str],
    comparator: str | None,
    kinds: Mapping[str, str] | None = None,
    cluster_col: str = "cluster",
) -> pd.DataFrame:
    """R^2 of each outcome explained by covariates, + cluster, and + a comparator.

    Three OLS models per outcome, all on the same rows (complete in the outcome, the
    covariates, the cluster and, if given, the comparator) so their R^2 are comparable:
    covariates only (the intercept-only model, R^2 = 0, when there are none),
    covariates + ``C(cluster)``, covariates + ``C(comparator)`` (always categorical).
    Adjusted R^2 is statsmodels' ``1 - (1 - R^2)(n - 1)/df_resid``.

    Inputs: ``merged``; ``outcomes`` (numeric); ``covariates``; ``comparator`` column name
    or None; ``kinds`` overrides; ``cluster_col``.
    Output, one row per outcome: ``outcome, n_used, r2_covariates, adj_r2_covariates,
    r2_cluster, adj_r2_cluster, r2_comparator, adj_r2_comparator`` (the comparator's
    columns NaN when ``comparator`` is None; all NaN when the outcome is constant or fewer
    than 2 rows are complete).
    """
    kind_of = _check_model_inputs(merged, outcomes, covariates, kinds, cluster_col, comparator)
    rows = []
    for outcome in outcomes:
        frame, terms = _model_frame(merged, outcome, covariates, kind_of, cluster_col, comparator)
        row: dict[str, Any] = {"outcome": outcome, "n_used": len(frame)}
        row["r2_covariates"], row["adj_r2_covariates"] = _r2_pair(frame, terms)
        row["r2_cluster"], row["adj_r2_cluster"] = _r2_pair(frame, [*terms, f"C({_CLUSTER})"])
        if comparator is None:
            row["r2_comparator"] = row["adj_r2_comparator"] = float("nan")
        else:
            pair = _r2_pair(frame, [*terms, f"C({_COMPARATOR})"])
            row["r2_comparator"], row["adj_r2_comparator"] = pair
        rows.append(row)
    names = [
        "outcome",
        "n_used",
        "r2_covariates",
        "adj_r2_covariates",
        "r2_cluster",
        "adj_r2_cluster",
        "r2_comparator",
        "adj_r2_comparator",
    ]
    return pd.DataFrame(rows, columns=names)


# Columns of :func:`associations` set side by side by :func:`compare_associations`.
COMPARED_COLUMNS = ("estimate", "ci_low", "ci_high", "p_value", "f_p_value", "n_used", "note")


def compare_associations(
    first: pd.DataFrame,
    second: pd.DataFrame,
    names: tuple[str, str] = ("study", "scored"),
) -> pd.DataFrame:
    """Two :func:`associations` tables side by side, row by (outcome, term).

    Used to set a study's cluster contrasts beside those refitted on newly scored subjects
    (same clusters, same models). Output columns ``outcome, term``, then for each of
    :data:`COMPARED_COLUMNS` one column per table, suffixed ``_<name>``; rows in
    ``first``'s order, then those only ``second`` has (their ``first`` columns empty, and
    vice versa). Terms match only when both tables use the same reference cluster.
    """
    keys = ["outcome", "term"]
    left, right = (table[keys + list(COMPARED_COLUMNS)].copy() for table in (first, second))
    for table in (left, right):
        table["term"] = table["term"].fillna("")
    merged = left.merge(right, on=keys, how="outer", suffixes=tuple(f"_{name}" for name in names), sort=False)
    order = {key: i for i, key in enumerate(zip(left["outcome"], left["term"]))}
    rank = [order.get(key, len(order)) for key in zip(merged["outcome"], merged["term"])]
    merged = merged.assign(_rank=rank).sort_values("_rank", kind="stable").drop(columns="_rank")
    columns = keys + [f"{column}_{name}" for column in COMPARED_COLUMNS for name in names]
    return merged[columns].reset_index(drop=True)
