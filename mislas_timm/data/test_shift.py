"""Deprecated alias of :mod:`mislas_timm.data.label_shift` (the shifted test distributions); import from there.

The code moved because this module was named like a test file (``test_*.py``), which test runners and
readers took for one. Importing ``mislas_timm.data.test_shift`` still works: it re-exports every name of
:mod:`mislas_timm.data.label_shift` (the same objects) and emits a DeprecationWarning.
"""
import warnings

from .label_shift import (_EPS, DEFAULT_SHIFT_RATIOS, TEST_PROFILES, __all__, _per_class_n, check_test_shift,  # noqa: F401
                          max_test_imbalance, shift_name, shifted_test_counts, shifted_test_indices, training_order)

warnings.warn('mislas_timm.data.test_shift is deprecated: import from mislas_timm.data.label_shift (the same '
              'functions)', DeprecationWarning, stacklevel=2)
