"""The whole simulation study (9 cases) through the library, without Snakemake: for a bare
GPU machine, and to time the cases side by side.

Run::

    python benchmarks/simulation_study.py                         # config/simulation.yaml
    python benchmarks/simulation_study.py --overlay paper.yaml     # the paper's epochs as maxima
    python benchmarks/simulation_study.py --workers 9 --device cuda --base base.npz --out DIR
    python benchmarks/simulation_study.py --save-base base.npz     # the built-in base, for --base

Each case is :func:`lungclam.simulation.cases.run_case`, the function the workflow's
``simulation_case`` rule calls, with the config's ``simulation`` section (and seed). Cases
run in ``--workers`` processes (spawned, each with its share of the CPU threads), all on
one device. As each case ends it prints one line (scenario, true K, pretraining epochs run
and kept, accuracy and ARI at fitted K = true K, the K each criterion picks on the
pretrained embedding, seconds); at the end, one table and the counts against the paper's
targets. ``--out DIR`` also writes ``DIR/simulation/{accuracy,k_choice}.tsv`` and
``DIR/benchmarks/simulation/<case>.tsv``, so ``benchmarks/simulation.py DIR`` can read them.

The base slice is the built-in phantom's (needs SimpleITK) unless ``--base`` names one
written by ``--save-base``.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import pandas as pd  # noqa: E402
import yaml  # noqa: E402

# Tiny images, model and epochs: a smoke test of the scripts (also gpu.py --quick's case).
QUICK_SIMULATION = {
    "n_images": 24,
    "pretrain_epochs": 2,
    "cluster_max_epochs": 2,
    "clam_images": 3,
    "batch_size": 8,
    "update_interval": 3,
    "n_init": 2,
    "model": {"channels": [4, 8, 16], "strides": [2, 1, 2], "kernel": 4, "latent_dim": 6},
}
QUICK = {**QUICK_SIMULATION, "fitted_ks": [2, 3, 4]}


def study_config(overlay: str | None, quick: bool) -> tuple[dict, int]:
    """The ``simulation`` section (config.yaml, then simulation.yaml, then the overlay)
    and the seed."""
    section: dict = {}
    seed = 0
    for name in ("config.yaml", "simulation.yaml", overlay):
        if name:
            config = yaml.safe_load((ROOT / "config" / name).read_text()) or {}
            section.update(config.get("simulation", {}))
            seed = config.get("seed", seed)
    if quick:
        section.update(QUICK)
        section["scenarios"], section["true_ks"] = ["intensity", "size"], [3]
    return section, seed


def _run_one(job: tuple) -> dict:
    scenario, true_k, section, seed, base_path, device_name, threads, features_dir = job
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    from lungclam.model import resolve_device
    from lungclam.simulation.cases import StudySettings, run_case
    from lungclam.simulation.data import builtin_base, load_base
    from lungclam.train import kept_epoch

    settings = StudySettings.from_config(
        {k: v for k, v in section.items() if k not in ("scenarios", "true_ks", "threads", "base")}, seed
    )
    base = load_base(base_path) if base_path else builtin_base(seed=seed)
    started = time.perf_counter()
    result = run_case(scenario, true_k, base, settings, resolve_device(device_name))
    seconds = time.perf_counter() - started
    if features_dir:  # the pretrained embedding and the truth, to score other K rules on later
        keep = {name: result.arrays[name] for name in ("features_before", "truth")}
        np.savez_compressed(Path(features_dir) / f"{scenario}_k{true_k}_seed{seed}.npz", **keep)
    loss = result.pretrain_loss
    at_true = result.accuracy[result.accuracy["fitted_k"] == true_k].iloc[0]
    row = {
        "scenario": scenario,
        "true_k": true_k,
        "epochs": len(loss),
        "kept": kept_epoch(loss),
        "accuracy": float(at_true["accuracy"]),
        "ari": float(at_true["ari"]),
        "sizes": at_true["cluster_sizes"],
        "moved": float(at_true["moved"]),
        "stop": str(at_true["stop_reason"]).split(":")[0],
        **{c: int(result.k_choice[c].iloc[0]) for c in result.k_choice.columns if c.startswith("k_")},
        "s": seconds,
    }
    return {"row": row, "accuracy": result.accuracy, "k_choice": result.k_choice}


def _summary(table: pd.DataFrame) -> list[str]:
    n = len(table)
    lines = [
        f"accuracy 1.0 at fitted K = true K: {int((table['accuracy'] >= 1 - 1e-9).sum())} of {n} (paper: 9 of 9); "
        f"lowest {table['accuracy'].min():.3f}"
    ]
    for column in [c for c in table.columns if c.startswith("k_")]:
        found = int((table[column] == table["true_k"]).sum())
        lines.append(f"{column[2:].replace('_', ' ')} finds the true K: {found} of {n}")
    return lines


def main(argv: list[str] | None = None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--overlay", help="a config overlay in config/, e.g. paper.yaml")
    parser.add_argument("--device", default="auto", help="auto (CUDA when visible), cpu or cuda[:N]")
    parser.add_argument("--workers", type=int, default=1, help="cases run side by side (processes)")
    parser.add_argument("--base", help="a base slice written by --save-base (default: the built-in phantom's)")
    parser.add_argument("--save-base", help="write the built-in base slice to this .npz and stop")
    parser.add_argument("--cases", help="comma-separated scenario:K, e.g. intensity:4,size:4 (default: all)")
    parser.add_argument("--seed", type=int, help="the study's seed (default: the config's)")
    parser.add_argument("--quick", action="store_true", help="tiny images and models: a smoke test")
    parser.add_argument("--out", type=Path, help="results directory for the tables")
    parser.add_argument(
        "--save-features",
        type=Path,
        help="write each case's pretrained embedding and true labels to DIR/<scenario>_k<K>_seed<S>.npz",
    )
    args = parser.parse_args(argv)
    section, seed = study_config(args.overlay, args.quick)
    seed = seed if args.seed is None else args.seed
    if args.save_base:
        from lungclam.simulation.data import builtin_base, save_base

        save_base(builtin_base(seed=seed), args.save_base)
        print(f"wrote the built-in base slice (seed {seed}) to {args.save_base}")
        return pd.DataFrame()
    cases = [(s, int(k)) for s in section["scenarios"] for k in section["true_ks"]]
    if args.cases:
        cases = [(c.split(":")[0], int(c.split(":")[1])) for c in args.cases.split(",")]
    workers = max(1, min(args.workers, len(cases)))
    threads = max(1, (os.cpu_count() or 1) // workers)
    os.environ["OMP_NUM_THREADS"] = str(threads)  # the workers' k-means, before they start
    if args.save_features:
        args.save_features.mkdir(parents=True, exist_ok=True)
    jobs = [(s, k, section, seed, args.base, args.device, threads, args.save_features) for s, k in cases]
    print(
        f"simulation study: {len(cases)} cases, {workers} side by side ({threads} CPU threads each), "
        f"seed {seed}, device {args.device}, overlay {args.overlay or 'none'}, "
        f"pretraining max {section['pretrain_epochs']} epochs, clustering max {section['cluster_max_epochs']}",
        flush=True,
    )
    started = time.perf_counter()
    results = []
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        for done in pool.imap_unordered(_run_one, jobs):
            results.append(done)
            row = done["row"]
            print(
                f"[{time.perf_counter() - started:6.0f} s] {row['scenario']} K={row['true_k']}: "
                f"{row['epochs']} epochs (kept {row['kept']}), accuracy {row['accuracy']:.3f}, "
                f"sizes {row['sizes']}, moved {row['moved']:.3f} ({row['stop']}), {row['s']:.0f} s",
                flush=True,
            )
    wall = time.perf_counter() - started
    table = pd.DataFrame([r["row"] for r in results]).sort_values(["scenario", "true_k"]).reset_index(drop=True)
    pd.set_option("display.width", 200)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    for line in _summary(table):
        print(line)
    print(
        f"wall {wall:.0f} s for {len(cases)} cases, {workers} side by side; sum of case times {table['s'].sum():.0f} s"
    )
    if args.out:
        sim = args.out / "simulation"
        times = args.out / "benchmarks" / "simulation"
        sim.mkdir(parents=True, exist_ok=True)
        times.mkdir(parents=True, exist_ok=True)
        pd.concat([r["accuracy"] for r in results]).to_csv(sim / "accuracy.tsv", sep="\t", index=False)
        pd.concat([r["k_choice"] for r in results]).to_csv(sim / "k_choice.tsv", sep="\t", index=False)
        for row in table.itertuples():
            pd.DataFrame({"s": [row.s]}).to_csv(times / f"{row.scenario}_k{row.true_k}.tsv", sep="\t", index=False)
    return table


if __name__ == "__main__":
    main()
