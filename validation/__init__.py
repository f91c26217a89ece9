"""Great Expectations suites and the gate that runs them (DESIGN.md 4.9).

Importing this package is cheap: Great Expectations (about 3-5 s to import) is loaded only when a
suite is built or run.
"""

from validation.gate import GateResult, format_failures, run_suite, validate_dataset
from validation.suites import (
    Suite,
    coverage_drift_suite,
    label_suite,
    reasoning_feature_suite,
    sparse_profile_suite,
)

__all__ = [
    "GateResult",
    "Suite",
    "coverage_drift_suite",
    "format_failures",
    "label_suite",
    "reasoning_feature_suite",
    "run_suite",
    "sparse_profile_suite",
    "validate_dataset",
]
