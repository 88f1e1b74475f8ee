"""Check the workflow config against config/schema.yaml, with messages a person can act on.

Snakemake's own ``validate`` prints the whole JSON-schema error (the instance and the
schema it failed); a misspelt key is lost in it. Here each problem is one line: its dotted
path, and for a key the schema does not know, the nearest key it does (difflib).
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from jsonschema import ValidationError
from jsonschema.validators import validator_for


def load_schema(path: str | Path) -> dict[str, Any]:
    """The schema at ``path`` (YAML)."""
    return yaml.safe_load(Path(path).read_text())


def _dotted(path: list[Any]) -> str:
    return ".".join(str(part) for part in path)


def _unknown_key_messages(error: ValidationError) -> list[str]:
    """One line per key of ``error.instance`` that its schema does not list."""
    known = list(error.schema.get("properties", {}))
    where = _dotted(list(error.absolute_path))
    messages = []
    for key in sorted(k for k in error.instance if k not in known):
        path = f"{where}.{key}" if where else str(key)
        nearest = difflib.get_close_matches(str(key), known, n=1, cutoff=0.6)
        if nearest:
            hint = f"did you mean {where + '.' if where else ''}{nearest[0]}?"
        else:
            hint = f"{where or 'the top level'} takes: {', '.join(known)}"
        messages.append(f"unknown key {path}: {hint}")
    return messages


def config_problems(config: Mapping[str, Any], schema: Mapping[str, Any]) -> list[str]:
    """Every way ``config`` breaks ``schema``, one line each, in path order; [] when valid.

    Args:
        config: the merged workflow config (as Snakemake holds it).
        schema: the JSON schema (draft named by its ``$schema``), as loaded from YAML.
    """
    validator = validator_for(schema)(schema)
    problems = []
    for error in sorted(validator.iter_errors(config), key=lambda e: [str(p) for p in e.absolute_path]):
        if error.validator == "additionalProperties" and isinstance(error.instance, Mapping):
            problems.extend(_unknown_key_messages(error))
        else:
            where = _dotted(list(error.absolute_path)) or "config"
            problems.append(f"{where}: {error.message}")
    return problems
