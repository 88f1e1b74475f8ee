#!/usr/bin/env bash
# Snakemake runs this inside the new conda environment after creating it: install the
# lungclam library itself (the workflow's scripts import it) from the workflow folder.
set -euo pipefail
pip install --no-deps "$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
