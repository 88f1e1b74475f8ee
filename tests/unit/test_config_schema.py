"""config/schema.yaml: strict, in step with the shipped configs, and clear when broken."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

import pytest
import yaml

from lungclam.config_schema import config_problems, load_schema
from lungclam.simulation.cases import StudySettings

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SCHEMA = load_schema(PROJECT_ROOT / "config" / "schema.yaml")
# The Snakefile loads these two always; every other shipped config is an overlay on them.
BASE_FILES = [PROJECT_ROOT / "config" / "config.yaml", PROJECT_ROOT / "config" / "simulation.yaml"]
OVERLAYS = sorted(
    {*(PROJECT_ROOT / "config").glob("*.yaml"), *(PROJECT_ROOT / "tests" / "configs").glob("*.yaml")}
    - set(BASE_FILES)
    - {p for p in (PROJECT_ROOT / "config").glob("*schema.yaml")}
)


def merged(*overlays: dict[str, Any]) -> dict[str, Any]:
    """config.yaml, simulation.yaml, then each overlay, merged as Snakemake's --configfile does."""
    from snakemake.utils import update_config

    config: dict[str, Any] = {}
    for part in [yaml.safe_load(p.read_text()) for p in BASE_FILES] + list(overlays):
        update_config(config, copy.deepcopy(part))
    return config


def test_every_shipped_config_is_found():
    names = {p.relative_to(PROJECT_ROOT).as_posix() for p in OVERLAYS}
    assert {"config/paper.yaml", "tests/configs/tiny.yaml", "tests/configs/simulation_tiny.yaml"} <= names


def test_the_default_config_validates():
    assert config_problems(merged(), SCHEMA) == []


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.relative_to(PROJECT_ROOT).as_posix())
def test_each_shipped_overlay_validates(overlay: Path):
    assert config_problems(merged(yaml.safe_load(overlay.read_text())), SCHEMA) == []


def _sections(schema: dict[str, Any], path: str = ""):
    """(dotted path, subschema) of every object in the schema that lists its properties."""
    if "properties" in schema:
        yield path, schema
        for key, sub in schema["properties"].items():
            yield from _sections(sub, f"{path}.{key}" if path else key)


def test_every_section_is_closed():
    """A key the schema does not list is an error everywhere it lists keys."""
    open_sections = [
        path or "top level" for path, sub in _sections(SCHEMA) if sub.get("additionalProperties") is not False
    ]
    assert open_sections == []


def _defaults(schema: dict[str, Any], path: tuple[str, ...] = ()):
    for key, sub in schema.get("properties", {}).items():
        if "default" in sub:
            yield path + (key,), sub["default"]
        yield from _defaults(sub, path + (key,))


def test_schema_defaults_equal_the_shipped_defaults():
    """Where config.yaml or simulation.yaml sets a key, the schema's default says the same."""
    config = merged()
    differing = []
    for path, default in _defaults(SCHEMA):
        value: Any = config
        for key in path:
            if not isinstance(value, dict) or key not in value:
                break
            value = value[key]
        else:
            if value != default and not (isinstance(default, dict) and not default):
                differing.append(f"{'.'.join(path)}: schema {default!r}, config {value!r}")
    assert differing == []


def test_every_simulation_setting_is_in_the_schema():
    """Each field of StudySettings (which the simulation section fills) can be configured."""
    fields = {f.name for f in dataclasses.fields(StudySettings)} - {"seed"}
    assert fields - set(SCHEMA["properties"]["simulation"]["properties"]) == set()


@pytest.mark.parametrize(
    ("overlay", "expected"),
    [
        ({"trian": {"epochs": 3}}, "unknown key trian: did you mean train?"),
        ({"train": {"epocs": 3}}, "unknown key train.epocs: did you mean train.epochs?"),
        (
            {"demo": {"phantom": {"pixel_m": 2.0}}},
            "unknown key demo.phantom.pixel_m: did you mean demo.phantom.pixel_mm?",
        ),
        (
            {"simulation": {"model": {"latent": 8}}},
            "unknown key simulation.model.latent: did you mean simulation.model.latent_dim?",
        ),
    ],
)
def test_a_misspelt_key_is_named_with_the_nearest_valid_one(overlay, expected):
    assert config_problems(merged(overlay), SCHEMA) == [expected]


def test_an_unknown_key_without_a_near_one_lists_what_the_section_takes():
    (problem,) = config_problems(merged({"clam": {"colour": "red"}}), SCHEMA)
    assert problem.startswith("unknown key clam.colour: clam takes: ")
    assert set(problem.split(": ")[-1].split(", ")) == set(SCHEMA["properties"]["clam"]["properties"])


def test_a_wrong_type_is_named_by_its_path():
    assert config_problems(merged({"train": {"epochs": "many"}}), SCHEMA) == [
        "train.epochs: 'many' is not of type 'integer'"
    ]
