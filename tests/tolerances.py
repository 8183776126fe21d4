"""Float comparisons that hold on every CPU: tolerances scale with the values and float32 epsilon.

Kernels differ between CPUs (AVX2, AVX-512, AMX) and summation orders with them, so a float32 result
can move by a few units in the last place *of its magnitude*: 1.5e-5 on logits of about 100 is
0.13 ulp-of-scale there, and a bare ``<= 1e-5`` failed on one machine and passed on another. Every
tolerance here is ``ulps * eps32 * scale``, scale being the largest magnitude of the expected values
(at least ``floor``, so values near zero are compared at the scale of their neighbours).
"""
from __future__ import annotations

import numpy as np
import torch

EPS32 = float(torch.finfo(torch.float32).eps)  # 1.19e-7
DEFAULT_ULPS = 64                              # ~7.6e-6 relative to the scale


def scale_of(values, floor: float = 1.0) -> float:
    if torch.is_tensor(values):
        values = values.detach().double().numpy()
    arr = np.abs(np.asarray(values, dtype=np.float64))
    return max(float(arr.max()) if arr.size else 0.0, floor)


def tolerance(expected, ulps: int = DEFAULT_ULPS, floor: float = 1.0) -> float:
    """Absolute tolerance for float32 results of the scale of ``expected``."""
    return ulps * EPS32 * scale_of(expected, floor)


def max_abs_diff(actual, expected) -> float:
    a = actual.detach().double() if torch.is_tensor(actual) else torch.as_tensor(np.asarray(actual, dtype=np.float64))
    b = expected.detach().double() if torch.is_tensor(expected) else torch.as_tensor(np.asarray(expected, dtype=np.float64))
    return float((a - b).abs().max())


def assert_close_f32(actual, expected, ulps: int = DEFAULT_ULPS, floor: float = 1.0, what: str = '') -> None:
    """|actual - expected| <= ulps * eps32 * max(|expected|.max(), floor), element-wise."""
    diff, tol = max_abs_diff(actual, expected), tolerance(expected, ulps, floor)
    assert diff <= tol, f'{what}: max abs difference {diff:.3g} > {tol:.3g} ({ulps} float32 ulps of scale {tol / ulps / EPS32:.3g})'
