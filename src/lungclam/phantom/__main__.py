"""``python -m lungclam.phantom OUT_DIR --n-subjects N --seed S``: write the demo cohort."""

from lungclam.phantom.cohort import main

main()
