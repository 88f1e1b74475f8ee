"""Criteria for K against each other, on embeddings whose true clusters are known.

Each input is either an ``.npz`` with arrays ``features`` (n, p) and ``truth`` (n,) (as
``benchmarks/pretraining.py --out`` writes them), or a pipeline results folder holding
``model/features_pretrain.tsv`` plus a truth sheet (``demo/truth.tsv`` under it, or
``--truth`` for a cohort given by ``samples=``). For every criterion of
``lungclam.kselect`` it prints the K chosen, the runner-up and margin, and the ARI of
k-means at that K against the truth; then how often each criterion found the true K.

    .venv/bin/python benchmarks/k_selection.py /tmp/feat_sim/*.npz results
    .venv/bin/python benchmarks/k_selection.py runs/p4/results --truth cohorts/p4/truth.tsv
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
from lungclam.kselect import choices_table, select_k


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("inputs", nargs="+", type=Path)
    parser.add_argument(
        "--truth",
        type=Path,
        action="append",
        default=None,
        help="truth.tsv for each results folder given by samples= (in order)",
    )
    parser.add_argument("--k-max", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    truths = list(args.truth or [])
    rows = []
    for path in args.inputs:
        sheet = truths.pop(0) if path.suffix != ".npz" and truths else None
        name, x, truth = load(path, sheet)
        true_k = len(np.unique(truth))
        started = time.perf_counter()
        table = select_k(x, range(2, args.k_max + 1), seed=args.seed)
        seconds = time.perf_counter() - started
        choices = choices_table(table, "stability")
        for choice in choices.itertuples():
            labels, _ = kmeans(x, int(choice.k), args.seed, 20)
            rows.append(
                {
                    "input": name,
                    "n": len(x),
                    "true_k": true_k,
                    "method": choice.method,
                    "k": choice.k,
                    "runner_up": choice.runner_up,
                    "margin": choice.margin,
                    "ari": adjusted_rand_score(truth, labels),
                    "seconds": seconds,
                }
            )
        print(f"{name}: n={len(x)}, true K={true_k}, select_k {seconds:.1f} s", file=sys.stderr)
        print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"), file=sys.stderr)
    result = pd.DataFrame(rows)
    pd.set_option("display.width", 200)
    print(result.drop(columns="seconds").to_string(index=False, float_format=lambda v: f"{v:.3f}"))
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
