"""Criteria for K against each other, on embeddings whose true clusters are known.

Each input is either an ``.npz`` with arrays ``features`` (n, p) and ``truth`` (n,) (as
``benchmarks/pretraining.py --out`` writes them), or a pipeline results folder holding
``model/features_pretrain.tsv`` plus a truth sheet (``demo/truth.tsv`` under it, or
``--truth`` for a cohort given by ``samples=``). For every criterion of
``lungclam.kselect`` it prints the K chosen, the runner-up and margin, and the ARI of
k-means at that K against the truth; then how often each criterion found the true K.
With several ``--seeds`` every input is scored once per resampling seed (the subsamples,
halvings and k-means restarts all follow the seed), so the summary shows how often a
criterion's choice survives a reseeding, not one lucky draw.

    .venv/bin/python benchmarks/k_selection.py /tmp/feat_sim/*.npz results
    .venv/bin/python benchmarks/k_selection.py runs/p4/results --truth cohorts/p4/truth.tsv
    .venv/bin/python benchmarks/k_selection.py runs/*/results --seeds 0 1 2
    .venv/bin/python benchmarks/k_selection.py /tmp/feat_sim/*.npz --resampling-only --split-statistic axis

``--split-null`` and ``--split-statistic`` set the split test as ``choose_k``'s keys of
the same names do; ``--resampling-only`` leaves out the silhouettes and the gap statistic
(sparse k-means' permutations take most of the time on 300 subjects).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import adjusted_rand_score

from lungclam.kmeans import kmeans
from lungclam.kselect import Resampling, choices_table, resampling_table, select_k
from lungclam.splittest import NULLS, STATISTICS


def load(path: Path, truth_sheet: Path | None) -> tuple[str, np.ndarray, np.ndarray]:
    """(name, features (n, p), true labels (n,)) from an npz or a results folder."""
    if path.suffix == ".npz":
        data = np.load(path)
        return path.stem, np.asarray(data["features"], dtype=float), np.asarray(data["truth"])
    features = pd.read_csv(path / "model" / "features_pretrain.tsv", sep="\t")
    sheet = truth_sheet or path / "demo" / "truth.tsv"
    truth = pd.read_csv(sheet, sep="\t").set_index("subject").loc[features["subject"], "pattern"]
    labels = pd.factorize(truth)[0]
    return (
        path.parent.name if path.name == "results" else path.name,
        features.drop(columns="subject").to_numpy(),
        labels,
    )


def score_criteria(
    name: str,
    x: np.ndarray,
    truth: np.ndarray,
    k_max: int,
    seed: int,
    resampling: Resampling,
    resampling_only: bool = False,
) -> list[dict]:
    """One row per criterion: the K it chose on ``x`` (n, p) with resampling ``seed``, and
    the ARI of k-means at that K against ``truth`` (n,); the criteria table goes to stderr."""
    true_k = len(np.unique(truth))
    started = time.perf_counter()
    ks = range(2, k_max + 1)
    if resampling_only:
        table = resampling_table(x, ks, seed=seed, resampling=resampling)
    else:
        table = select_k(x, ks, seed=seed, resampling=resampling)
    seconds = time.perf_counter() - started
    rows = []
    for choice in choices_table(table, "stability").itertuples():
        labels, _ = kmeans(x, int(choice.k), seed, 20)
        rows.append(
            {
                "input": name,
                "seed": seed,
                "n": len(x),
                "true_k": true_k,
                "method": choice.method,
                "k": choice.k,
                "runner_up": choice.runner_up,
                "margin": choice.margin,
                "ari": adjusted_rand_score(truth, labels),
            }
        )
    print(f"{name}: n={len(x)}, true K={true_k}, seed {seed}, select_k {seconds:.1f} s", file=sys.stderr)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"), file=sys.stderr)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("inputs", nargs="+", type=Path)
    parser.add_argument(
        "--truth",
        type=Path,
        action="append",
        default=None,
        help="truth.tsv for each results folder without demo/truth.tsv (one per such folder, in order)",
    )
    parser.add_argument("--k-max", type=int, default=8)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="resampling seeds (one table each)")
    parser.add_argument("--split-null", choices=NULLS, default=Resampling().split_null)
    parser.add_argument("--split-statistic", choices=STATISTICS, default=Resampling().split_statistic)
    parser.add_argument("--resampling-only", action="store_true", help="no silhouettes or gap statistic")
    args = parser.parse_args(argv)
    resampling = Resampling(split_null=args.split_null, split_statistic=args.split_statistic)
    truths = list(args.truth or [])
    rows = []
    for path in args.inputs:
        own = path.suffix == ".npz" or (path / "demo" / "truth.tsv").is_file()
        sheet = truths.pop(0) if not own and truths else None
        name, x, truth = load(path, sheet)
        for seed in args.seeds:
            rows.extend(score_criteria(name, x, truth, args.k_max, seed, resampling, args.resampling_only))
    result = pd.DataFrame(rows)
    pd.set_option("display.width", 200)
    print(result.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    summary = (
        result.assign(hit=result["k"] == result["true_k"])
        .groupby("method")
        .agg(true_k_found=("hit", "sum"), inputs=("hit", "size"), min_ari=("ari", "min"), mean_ari=("ari", "mean"))
    )
    print("\nper criterion:")
    print(
        summary.sort_values(["true_k_found", "min_ari"], ascending=False).to_string(float_format=lambda v: f"{v:.3f}")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
