"""Snakemake glue: one (scenario, true K) case of the simulation study."""

import logging

import numpy as np

from lungclam.runtime import run_job

smk = snakemake  # noqa: F821


def main() -> None:
    from lungclam.model import resolve_device
    from lungclam.simstudy import StudySettings, run_case
    from lungclam.simulation import base_from_template, builtin_base

    log = logging.getLogger("lungclam.simulation")
    section = dict(smk.params.settings)
    settings = StudySettings.from_config({k: v for k, v in section.items() if k not in ("scenarios", "true_ks", "threads")},
                                         smk.params.seed)
    base_setting = section.get("base", "builtin")
    base = builtin_base(seed=smk.params.seed) if base_setting == "builtin" else base_from_template(base_setting)
    result = run_case(smk.wildcards.scenario, int(smk.wildcards.true_k), base, settings,
                      resolve_device("auto"), progress=log.info)
    result.accuracy.to_csv(smk.output.accuracy, sep="\t", index=False, float_format="%.6g")
    result.k_choice.to_csv(smk.output.k_choice, sep="\t", index=False)
    result.localization.to_csv(smk.output.localization, sep="\t", index=False, float_format="%.6g")
    result.clam_tests.to_csv(smk.output.clam_tests, sep="\t", index=False, float_format="%.6g")
    result.pretrain_loss.to_csv(smk.output.loss, sep="\t", index=False)
    np.savez_compressed(smk.output.arrays, base_hu=base.hu, base_lungs=base.lungs, **result.arrays)


run_job("simulation_case", main, smk.log[0], smk.threads)
