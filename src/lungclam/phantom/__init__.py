"""Seeded synthetic chest CTs, written as real DICOM, and the demo cohort made of them.

Three modules, one job each: :mod:`~lungclam.phantom.anatomy` draws one subject's body,
lungs and disease (:func:`make_chest_phantom`); :mod:`~lungclam.phantom.dicom_writer` writes
a phantom as a CT series and a localizer; :mod:`~lungclam.phantom.cohort` writes the demo
cohort with its sheets and is the command line ``python -m lungclam.phantom``. The names
below are the package's public ones.
"""

from lungclam.phantom.anatomy import ALL_PATTERNS, PADDING_HU, PATTERNS, Phantom, make_chest_phantom
from lungclam.phantom.cohort import demo_subject_ids, write_demo_cohort
from lungclam.phantom.dicom_writer import write_dicom_series, write_localizer

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
