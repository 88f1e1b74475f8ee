"""Each conda env file lists every third-party package its rules' scripts can import.

For every rule with both ``conda:`` and ``script:``, the script's imports are read with
``ast`` (no code runs), followed transitively through the ``lungclam`` modules it imports,
and each third-party top-level module is mapped to its distribution with the installed
packages' own metadata (``sklearn`` -> scikit-learn, ``ants`` -> antspyx). A rule run with
``snakemake --sdm conda`` would otherwise stop on an ImportError on the cluster.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from functools import cache
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
import yaml

PROJECT_ROOT = Path(__file__).resolve().parents[2]
RULES_DIR = PROJECT_ROOT / "workflow" / "rules"
LIBRARY = PROJECT_ROOT / "src" / "lungclam"

RULE_HEADER = re.compile(r"^(?:rule|checkpoint)\s+(\w+)\s*:", re.MULTILINE)
# A directive followed by its value on the next line, as every rule file writes it.
DIRECTIVE = r"^\s+{name}:\s*\n\s+[\"']([^\"']+)[\"']"


def rule_blocks() -> list[tuple[str, Path, str]]:
    """(rule name, rule file, the rule's text) for every rule and checkpoint."""
    blocks = []
    for smk in sorted(RULES_DIR.glob("*.smk")):
        text = smk.read_text()
        headers = list(RULE_HEADER.finditer(text))
        for header, following in zip(headers, headers[1:] + [None]):
            end = following.start() if following else len(text)
            blocks.append((header.group(1), smk, text[header.start() : end]))
    return blocks


def directive(block: str, name: str) -> str | None:
    """The quoted value of directive ``name`` in a rule's text, or None without one."""
    found = re.search(DIRECTIVE.format(name=name), block, re.MULTILINE)
    return found.group(1) if found else None


def rules_with_env_and_script() -> list[tuple[str, Path, Path]]:
    """(rule name, env file, script) for every rule with both directives."""
    rules = []
    for name, smk, block in rule_blocks():
        env, script = directive(block, "conda"), directive(block, "script")
        if env and script:
            rules.append((name, (smk.parent / env).resolve(), (smk.parent / script).resolve()))
    return rules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _catches_import_error(node: ast.Try) -> bool:
    names = []
    for handler in node.handlers:
        caught = handler.type
        for item in caught.elts if isinstance(caught, ast.Tuple) else [caught]:
            if isinstance(item, ast.Name):
                names.append(item.id)
    return bool({"ImportError", "ModuleNotFoundError"}.intersection(names))


def imported_names(path: Path) -> set[str]:
    """Absolute dotted names that the module at ``path`` imports anywhere (functions
    included), except under ``if TYPE_CHECKING:``, which never runs, and in a ``try:`` that
    catches ImportError, which the module survives without."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = "lungclam" if path.is_relative_to(LIBRARY) else ""
    names: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Try) and _catches_import_error(node):
            # An optional import (Triton in lungclam.clam_cuda): the code runs without it.
            for child in [*node.handlers, *node.orelse, *node.finalbody]:
                visit(child)
            return
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = f"{package}.{base}".rstrip(".") if package else base
            names.add(base)
            # `from lungclam import figures` imports the module lungclam.figures.
            names.update(f"{base}.{alias.name}" for alias in node.names if base.split(".")[0] == "lungclam")
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return {name for name in names if name}


def library_module_path(name: str) -> Path | None:
    """The source file of lungclam module ``name`` (dotted), or None for a non-module name."""
    parts = name.split(".")[1:]
    if not parts:
        return LIBRARY / "__init__.py"
    relative = Path(*parts)
    for candidate in (LIBRARY / relative.with_suffix(".py"), LIBRARY / relative / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def third_party_imports(script: Path) -> dict[str, str]:
    """Third-party top-level module -> the file that first imports it, following lungclam."""
    found: dict[str, str] = {}
    pending, seen = [script], set()
    while pending:
        path = pending.pop()
        if path in seen:
            continue
        seen.add(path)
        for name in sorted(imported_names(path)):
            top = name.split(".")[0]
            if top == "lungclam":
                # Importing lungclam.a.b runs the package lungclam.a's __init__ first.
                parts = name.split(".")
                for end in range(1, len(parts) + 1):
                    module = library_module_path(".".join(parts[:end]))
                    if module is not None:
                        pending.append(module)
            elif top not in sys.stdlib_module_names and top != "__future__":
                found.setdefault(top, str(path.relative_to(PROJECT_ROOT)))
    return found


def _normalise(distribution: str) -> str:
    return re.sub(r"[-_.]+", "-", distribution).lower()


@cache
def env_packages(env_file: Path) -> frozenset[str]:
    """Normalised names of the conda and pip packages an env file lists."""
    spec = yaml.safe_load(env_file.read_text())
    names = set()
    for entry in spec["dependencies"]:
        for requirement in entry["pip"] if isinstance(entry, dict) else [entry]:
            names.add(_normalise(re.split(r"[=<>!~\[ ;]", requirement.strip(), maxsplit=1)[0]))
    return frozenset(names)


@cache
def _installed_distributions() -> dict[str, list[str]]:
    return packages_distributions()


def distributions_of(module: str) -> list[str]:
    """Distributions that provide top-level ``module`` in this environment."""
    return sorted({_normalise(d) for d in _installed_distributions().get(module, [])})


RULES = rules_with_env_and_script()


def test_rule_files_are_read():
    """The parser finds the rules (a format change must not make the test pass vacuously)."""
    assert len(RULES) >= 20, RULES
    scripted = [name for name, _, block in rule_blocks() if directive(block, "script")]
    assert sorted(scripted) == sorted(name for name, _, _ in RULES), "a rule with script: lacks conda:"


def test_import_walk_follows_lungclam():
    """Rule stats reaches statsmodels only through lungclam.stats: the walk must see it."""
    (stats_script,) = [script for name, _, script in RULES if name == "stats"]
    assert "statsmodels" not in {n.split(".")[0] for n in imported_names(stats_script)}
    assert "statsmodels" in third_party_imports(stats_script)


@pytest.mark.parametrize(("rule", "env_file", "script"), RULES, ids=[name for name, _, _ in RULES])
def test_env_lists_every_package_the_script_can_import(rule, env_file, script):
    listed = env_packages(env_file)
    missing = []
    for module, importer in sorted(third_party_imports(script).items()):
        distributions = distributions_of(module)
        assert distributions, f"{module} (imported by {importer}) is not installed here, so it cannot be mapped"
        if not listed.intersection(distributions):
            missing.append(f"{'/'.join(distributions)} (import {module}, in {importer})")
    env = env_file.relative_to(PROJECT_ROOT)
    assert not missing, f"rule {rule}: {env} lacks " + "; ".join(missing)


# Modules that promise, in their docstrings, to run without some heavy packages: a module
# that starts importing one (directly, or through a package's __init__) fails here with the
# import chain. Each runs in a fresh interpreter where importing those packages raises.
IMPORT_BOUNDARIES = {
    "phantom.anatomy": (("lungclam.phantom.anatomy",), ("pydicom",)),
    "phantom names of the anatomy": (("lungclam.phantom:make_chest_phantom",), ("pydicom",)),
    "simulation": (("lungclam.simulation",), ("torch", "matplotlib", "SimpleITK", "pydicom")),
    "simulation.cases": (("lungclam.simulation.cases",), ("matplotlib", "SimpleITK", "pydicom")),
    "torch modules": (
        ("lungclam.model", "lungclam.device", "lungclam.train", "lungclam.dec", "lungclam.clam"),
        ("SimpleITK", "ants", "pydicom", "matplotlib"),
    ),
}


def _import_without(modules: tuple[str, ...], absent: tuple[str, ...]) -> subprocess.CompletedProcess:
    """Import ``modules`` ('module' or 'module:name') in a new interpreter where importing any
    of ``absent`` raises ImportError."""
    code = (
        "import importlib, sys\n"
        f"for name in {absent!r}:\n    sys.modules[name] = None\n"
        f"for spec in {modules!r}:\n"
        "    module, _, name = spec.partition(':')\n"
        "    loaded = importlib.import_module(module)\n"
        "    if name:\n        getattr(loaded, name)\n"
    )
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(("modules", "absent"), IMPORT_BOUNDARIES.values(), ids=IMPORT_BOUNDARIES.keys())
def test_module_imports_without_heavy_packages(modules, absent):
    done = _import_without(modules, absent)
    assert done.returncode == 0, f"importing {', '.join(modules)} needs one of {', '.join(absent)}:\n{done.stderr}"


def test_import_boundary_check_can_fail():
    """The cohort writes DICOM: with pydicom blocked, its name must not import."""
    done = _import_without(("lungclam.phantom:write_demo_cohort",), ("pydicom",))
    assert done.returncode != 0 and "pydicom" in done.stderr
