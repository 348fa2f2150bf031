"""Golden model of the GEMM engine: C = A @ B, int8 operands, exact int32 accumulation.

The accumulator never overflows because the engine's ``k_max`` is bounded so that
``k_max * 128 * 128 <= 2**31 - 1`` (see :data:`MAX_K`).
"""
import numpy as np

from .fixedpoint import check_int_array

MAX_K = (2**31 - 1) // (128 * 128)   # 131071: the largest K whose int8 dot product fits int32


def gemm(a, b) -> np.ndarray:
    """``a`` (M x K int8) @ ``b`` (K x N int8) -> M x N int32, exact."""
    a = check_int_array("a", a, 8, ndim=2)
    b = check_int_array("b", b, 8, ndim=2)
    if a.shape[1] != b.shape[0]:
        raise ValueError(f"a is {a.shape[0]}x{a.shape[1]} but b is {b.shape[0]}x{b.shape[1]}: "
                         f"inner dimensions (K) differ")
    if a.shape[1] > MAX_K:
        raise ValueError(f"K = {a.shape[1]} would overflow the int32 accumulator (max {MAX_K})")
    # float64 BLAS is exact here (|every partial sum| <= MAX_K * 2**14 < 2**53) and ~50x faster
    # than NumPy's integer matmul on the model's whole-test-set runs.
    return np.rint(a.astype(np.float64) @ b.astype(np.float64)).astype(np.int32)
