"""The end-of-run summary of failed jobs (lungclam.failures), on Snakemake's log format."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from lungclam.failures import cause_from_log, failed_jobs, format_summary, summarise_failures

RUN_LOG = """\
Execute 1 jobs...
localrule convert:
    input: dicom/a/CT1.dcm
    output: results/nifti/a.nii.gz, results/nifti/a.json
Error in rule convert:
    message: None
    jobid: 31
    input: dicom/a/CT1.dcm
    output: results/nifti/a.nii.gz, results/nifti/a.json
    log: {log_a} (check log file(s) for error details)
Execute 1 jobs...
Error in rule train:
    message: None
    jobid: 2
    output: results/model/cae.pt
    log: {log_train} (check log file(s) for error details)
Error in rule segment:
    jobid: 40
    output: results/lungmask/b.nii.gz
    log: {log_b} (check log file(s) for error details)
Exiting because a job execution failed. Look above for error messages
Error in rule convert:
    message: None
    jobid: 31
    output: results/nifti/a.nii.gz, results/nifti/a.json
    log: {log_a} (check log file(s) for error details)
"""


def test_failed_jobs_reads_each_error_block_once() -> None:
    jobs = failed_jobs(RUN_LOG.format(log_a="la.log", log_train="lt.log", log_b="lb.log"))
    assert [(j.rule, j.jobid) for j in jobs] == [("convert", "31"), ("train", "2"), ("segment", "40")]
    assert jobs[0].output == ("results/nifti/a.nii.gz", "results/nifti/a.json")
    assert jobs[0].log == ("la.log",)
    assert failed_jobs("Finished jobid: 3\nall done\n") == []


def test_cause_from_log_prefers_the_lungclam_message(tmp_path: Path) -> None:
    log = tmp_path / "a.log"
    log.write_text(
        "2026-01-01 INFO lungclam.dicom: reading\n"
        "2026-01-01 ERROR lungclam.convert: convert failed: subject 'a': CT1.dcm: pixel data "
        "truncated (10 of 20 bytes) [dicom/a/CT1.dcm]\n"
    )
    assert cause_from_log(log) == "subject 'a': CT1.dcm: pixel data truncated (10 of 20 bytes) [dicom/a/CT1.dcm]"
    log.write_text(
        "ERROR lungclam.train: train failed with an unexpected error\nTraceback (most recent call last):\n"
        '  File "x.py", line 1, in <module>\nRuntimeError: CUDA out of memory\n'
    )
    assert cause_from_log(log).startswith("unexpected error: RuntimeError: CUDA out of memory (traceback in ")
    log.write_text("INFO step 1\nINFO step 2\n")
    assert "killed? out of memory?" in cause_from_log(log) and "step 2" in cause_from_log(log)
    log.write_text("")
    assert "empty" in cause_from_log(log)
    assert cause_from_log(tmp_path / "none.log").startswith("no log file")


def test_summarise_failures_writes_the_table(tmp_path: Path) -> None:
    la, lt, lb = (tmp_path / f"{n}.log" for n in ("a", "train", "b"))
    la.write_text("ERROR lungclam.convert: convert failed: subject 'a': no files in the DICOM folder [d/a]\n")
    lt.write_text("INFO epoch 1\n")
    lb.write_text("ERROR lungclam.segment: segment failed: subject 'b': no lungs found: x [r/b.nii.gz]\n")
    run_log = tmp_path / "run.log"
    run_log.write_text(RUN_LOG.format(log_a=la, log_train=lt, log_b=lb))
    subjects = {"results/nifti/a.nii.gz": "a", "results/lungmask/b.nii.gz": "b"}
    out = tmp_path / "results" / "failed_subjects.tsv"
    rows = summarise_failures([str(run_log)], lambda rule, output: subjects.get(output), out)
    table = pd.read_csv(out, sep="\t", dtype=str, keep_default_na=False)
    assert table["subject"].tolist() == ["a", "", "b"]
    assert table["rule"].tolist() == ["convert", "train", "segment"]
    assert table.loc[0, "cause"] == "subject 'a': no files in the DICOM folder [d/a]"
    assert "no lungs found" in table.loc[2, "cause"]
    text = format_summary(rows, out)
    assert "3 job(s) failed, 2 subject(s)" in text
    assert "subject a [convert]: subject 'a': no files" in text and "cohort [train]: " in text
    assert "--config exclude=a,b" in text
    assert "no failed job" in format_summary([], out)
