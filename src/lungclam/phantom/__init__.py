"""Seeded synthetic chest CTs, written as real DICOM, and the demo cohort made of them.

Three modules, one job each: :mod:`~lungclam.phantom.anatomy` draws one subject's body,
lungs and disease (:func:`make_chest_phantom`); :mod:`~lungclam.phantom.dicom_writer` writes
a phantom as a CT series and a localizer; :mod:`~lungclam.phantom.cohort` writes the demo
cohort with its sheets and is the command line ``python -m lungclam.phantom``. The names
below are the package's public ones.

The package loads a module only when one of its names is first asked for (PEP 562), so
``lungclam.phantom.anatomy`` (numpy, SciPy, SimpleITK) imports no pydicom: the simulation
study draws its base slice from the anatomy alone.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lungclam.phantom.anatomy import ALL_PATTERNS, PADDING_HU, PATTERNS, Phantom, make_chest_phantom
    from lungclam.phantom.cohort import demo_subject_ids, write_demo_cohort
    from lungclam.phantom.dicom_writer import write_dicom_series, write_localizer

#: Each public name and the module of this package that defines it.
_HOME = {
    "ALL_PATTERNS": "anatomy",
    "PADDING_HU": "anatomy",
    "PATTERNS": "anatomy",
    "Phantom": "anatomy",
    "make_chest_phantom": "anatomy",
    "demo_subject_ids": "cohort",
    "write_demo_cohort": "cohort",
    "write_dicom_series": "dicom_writer",
    "write_localizer": "dicom_writer",
}

__all__ = [
    "ALL_PATTERNS",
    "PADDING_HU",
    "PATTERNS",
    "Phantom",
    "demo_subject_ids",
    "make_chest_phantom",
    "write_demo_cohort",
    "write_dicom_series",
    "write_localizer",
]


def __getattr__(name: str) -> Any:
    """Import the module that defines public ``name`` on first use and return the name."""
    home = _HOME.get(name)
    if home == "anatomy":
        from lungclam.phantom import anatomy as module
    elif home == "cohort":
        from lungclam.phantom import cohort as module
    elif home == "dicom_writer":
        from lungclam.phantom import dicom_writer as module
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(module, name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
