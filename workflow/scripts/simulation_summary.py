"""Snakemake glue: the simulation study's tables over all cases."""

import logging

import pandas as pd

from lungclam.atomic import write_table
from lungclam.runtime import run_job

smk = snakemake  # noqa: F821


def _concat(paths) -> pd.DataFrame:
    frames = [pd.read_csv(p, sep="\t") for p in paths]
    frames = [f for f in frames if not f.empty]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def main() -> None:
    from lungclam.simulation.cases import summarise_localization

    log = logging.getLogger("lungclam.simulation")
    accuracy = _concat(smk.input.accuracy)
    write_table(accuracy, smk.output.accuracy, float_format="%.6g")
    k_choice = _concat(smk.input.k_choice)
    write_table(k_choice, smk.output.k_choice)
    write_table(summarise_localization(_concat(smk.input.localization)), smk.output.localization, float_format="%.6g")
    write_table(_concat(smk.input.clam_tests), smk.output.clam_tests, float_format="%.6g")
    at_true = accuracy[accuracy["fitted_k"] == accuracy["true_k"]]
    log.info(
        "accuracy at fitted K = true K: %d of %d cases at 100%%", int((at_true["accuracy"] == 1).sum()), len(at_true)
    )
    log.info(
        "silhouette finds the true K before clustering in %d of %d cases, after in %d",
        int((k_choice["k_silhouette_before"] == k_choice["true_k"]).sum()),
        len(k_choice),
        int((k_choice["k_silhouette_after"] == k_choice["true_k"]).sum()),
    )
    for column in [
        c for c in k_choice.columns if c.startswith("k_") and c not in ("k_silhouette_before", "k_silhouette_after")
    ]:
        log.info(
            "%s finds the true K in %d of %d cases",
            column[2:].replace("_", " "),
            int((k_choice[column] == k_choice["true_k"]).sum()),
            len(k_choice),
        )


run_job("simulation_summary", main, smk.log[0], smk.threads)
