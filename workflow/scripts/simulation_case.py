"""Snakemake glue: one (scenario, true K) case of the simulation study."""

import logging

import numpy as np

from lungclam.atomic import atomic_path, write_table
from lungclam.runtime import run_job

smk = snakemake  # noqa: F821


def main() -> None:
    from lungclam.model import resolve_device
    from lungclam.simulation.cases import StudySettings, run_case
    from lungclam.simulation.data import base_from_template, builtin_base

    log = logging.getLogger("lungclam.simulation")
    section = dict(smk.params.settings)
    settings = StudySettings.from_config(
        {k: v for k, v in section.items() if k not in ("scenarios", "true_ks", "threads")}, smk.params.seed
    )
    base_setting = section.get("base", "builtin")
    base = builtin_base(seed=smk.params.seed) if base_setting == "builtin" else base_from_template(base_setting)
    result = run_case(
        smk.wildcards.scenario, int(smk.wildcards.true_k), base, settings, resolve_device("auto"), progress=log.info
    )
    write_table(result.accuracy, smk.output.accuracy, float_format="%.6g")
    write_table(result.k_choice, smk.output.k_choice)
    write_table(result.localization, smk.output.localization, float_format="%.6g")
    write_table(result.clam_tests, smk.output.clam_tests, float_format="%.6g")
    write_table(result.pretrain_loss, smk.output.loss)
    with atomic_path(smk.output.arrays) as tmp:  # the name ends in .npz, so numpy keeps it
        np.savez_compressed(tmp, base_hu=base.hu, base_lungs=base.lungs, **result.arrays)


run_job("simulation_case", main, smk.log[0], smk.threads)
