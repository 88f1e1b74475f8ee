"""The end-of-run summary of failed jobs: who failed, in which stage, and why.

Snakemake's ``onerror`` handler calls :func:`summarise_failures` with the run's own log.
Only the jobs that failed *in that run* are listed: they are read from the run log's
``Error in rule ...`` blocks, not guessed from whatever job logs lie under
``results/logs/`` (those may be left from an earlier run). The cause of each is the
one-line message the job's script wrote (``<step> failed: subject 'x': cause [file]``,
see :func:`lungclam.runtime.run_job`), or the last line of a traceback, or a note that the
log ends without a message (a job killed, e.g. for memory).
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from lungclam.atomic import atomic_path

#: Where the summary is written, under the working directory.
SUMMARY_PATH = Path("results") / "failed_subjects.tsv"
COLUMNS = ("subject", "rule", "cause", "log")

_ERROR_BLOCK = re.compile(r"^Error in rule (?P<rule>\w+):\s*$")
_FIELD = re.compile(r"^\s+(?P<key>jobid|log|output|input|message):\s*(?P<value>.*)$")
_LOG_HINT = " (check log file(s) for error details)"
_RUN_JOB_FAILED = re.compile(r"\s\w+ failed: (?P<cause>.+)$")
_LOG_RECORD = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}")  # lungclam.runtime's log format
_EXCEPTION_LINE = re.compile(r"^(?:[A-Za-z_][\w.]*)?(?:Error|Exception|Interrupt|Exit)\b.*?:\s.+")


@dataclass
class FailedJob:
    rule: str
    jobid: str = ""
    output: tuple[str, ...] = ()
    log: tuple[str, ...] = ()


def failed_jobs(run_log: str) -> list[FailedJob]:
    """Every ``Error in rule X:`` block of a Snakemake run log, in order, one per job."""
    jobs: list[FailedJob] = []
    seen: set[tuple[str, str]] = set()
    current: FailedJob | None = None
    for line in run_log.splitlines():
        start = _ERROR_BLOCK.match(line)
        if start:
            current = FailedJob(start.group("rule"))
            jobs.append(current)
            continue
        if current is None:
            continue
        field = _FIELD.match(line)
        if not field:
            if line.strip() and not line.startswith((" ", "\t")):
                current = None  # the block ended
            continue
        key, value = field.group("key"), field.group("value").strip()
        if key == "jobid":
            current.jobid = value
        elif key == "output":
            current.output = tuple(v.strip() for v in value.split(",") if v.strip())
        elif key == "log":
            value = value.removesuffix(_LOG_HINT)
            current.log = tuple(v.strip() for v in value.split(",") if v.strip())
    unique = []
    for job in jobs:  # a job can be reported twice (e.g. again in a final summary)
        key = (job.rule, job.jobid or ",".join(job.output))
        if key not in seen:
            seen.add(key)
            unique.append(job)
    return unique


def cause_from_log(log_path: str | Path) -> str:
    """The reason a job failed, from its own log: the message lungclam wrote, else the last
    line of a traceback, else the log's last line."""
    path = Path(log_path)
    if not path.is_file():
        return f"no log file {path}"
    lines = [line.rstrip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    for i in range(len(lines) - 1, -1, -1):
        match = _RUN_JOB_FAILED.search(lines[i])
        if match and "unexpected error" not in lines[i]:
            # A message that spans lines (a library's multi-line error) is kept whole:
            # the lines up to the next log record belong to it.
            rest = []
            for line in lines[i + 1 :]:
                if _LOG_RECORD.match(line) or line.startswith("Traceback"):
                    break
                rest.append(line.strip())
            return " ".join([match.group("cause"), *rest])
    for line in reversed(lines):
        if _EXCEPTION_LINE.match(line.strip()):
            return f"unexpected error: {line.strip()} (traceback in {path})"
    if not lines:
        return f"the log {path} is empty: the job died before it started (killed? out of memory?)"
    return f"the log ends without an error message (killed? out of memory?): {lines[-1][-200:]}"


def summarise_failures(
    run_logs: str | Path | Iterable[str | Path] | None,
    subject_of: Callable[[str, str], str | None],
    out: str | Path = SUMMARY_PATH,
) -> list[dict[str, str]]:
    """Write ``out`` (subject, rule, cause, log) for the jobs that failed in this run.

    ``run_logs`` is what Snakemake passes to ``onerror`` (one path or a list); ``subject_of``
    maps (rule, output file) to the subject, or None for a cohort-level job. Returns the
    rows, which the caller prints.
    """
    if run_logs is None:
        run_logs = []
    elif isinstance(run_logs, (str, Path)):
        run_logs = [run_logs]
    text = "\n".join(Path(p).read_text(errors="replace") for p in run_logs if p and Path(p).is_file())
    rows = []
    for job in failed_jobs(text):
        subject = subject_of(job.rule, job.output[0]) if job.output else None
        log = job.log[0] if job.log else ""
        cause = cause_from_log(log) if log else "no log (see the Snakemake output above)"
        rows.append({"subject": subject or "", "rule": job.rule, "cause": cause, "log": log})
    with atomic_path(out) as tmp, tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS, delimiter="\t", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return rows


#: What waits for every subject: a study's cohort-level stages.
STUDY_STAGES = "Stages that need every subject (template, train, clustering, CLAM, stats) wait for these."
#: ... and in `snakemake score`, only the table of all scored subjects and its statistics.
SCORE_STAGES = (
    "The table of all scored subjects (results/score/clusters.tsv) and its statistics wait for these; "
    "each other subject's assignment and CLAM do not (results/score/assigned/, clam/)."
)


def format_summary(rows: list[dict[str, str]], out: str | Path = SUMMARY_PATH, waiting: str = STUDY_STAGES) -> str:
    """The text printed at the end of a failed run; ``waiting`` says what the failed
    subjects hold back."""
    if not rows:
        return "lungclam: the run failed, but no failed job was found in the Snakemake log (see above)."
    subjects = sorted({r["subject"] for r in rows if r["subject"]})
    lines = [
        f"lungclam: {len(rows)} job(s) failed"
        + (f", {len(subjects)} subject(s)" if subjects else "")
        + f" (also in {out}):"
    ]
    for r in rows:
        who = f"subject {r['subject']}" if r["subject"] else "cohort"
        lines.append(f"  {who} [{r['rule']}]: {r['cause']}")
    if subjects:
        lines.append(f"{waiting} Fix their input, or leave them out: --config exclude=" + ",".join(subjects))
    return "\n".join(lines)
