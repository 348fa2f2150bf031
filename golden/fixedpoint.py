"""The numeric contract of vitaccel: every integer operation the RTL performs is defined here once.

Conventions
-----------
* ``real value = scale * integer``. Scales are positive floats held by a unit's Config.
* **Rounding rule: RHU, "round half up"** (ties go toward +infinity). A right shift by ``s`` is
  ``floor((x + 2**(s-1)) / 2**s)``; a division is ``floor((2*n + d) / (2*d))``. It costs one adder
  in hardware, and it is the only rounding rule the project uses.
* **Saturation**: results are clipped to the range of the declared width; nothing wraps silently.
* **Requantisation** (integer-only inference, Jacob et al. 2018): a real multiplier ``m`` (for
  example ``s_in / s_out``) is represented as ``multiplier * 2**-shift`` with ``multiplier`` a
  positive integer of ``MULTIPLIER_BITS`` bits whose top bit is set (so precision is maximal), and
  ``shift`` in ``[0, MAX_SHIFT]``. ``requantize(acc) = saturate(rshift_round(acc * multiplier, shift))``.
* **Division**: ``div_round(n, d)`` for ``d > 0`` is RHU rounding of ``n / d``. ``d == 0`` is not an
  exception in hardware: the result saturates toward the sign of ``n`` (``n >= 0`` -> maximum) and
  the ``div_by_zero`` flag is raised. ``reciprocal(d, frac_bits) = div_round(2**frac_bits, d)``.
* **Leading one**: ``leading_one(x)`` of a non-negative integer gives ``(exponent, is_zero)`` with
  ``exponent = floor(log2 x)`` (0 when ``x == 0``, flagged by ``is_zero``).

All functions accept Python ints or NumPy integer arrays (including uint64 and object arrays of
Python ints) and compute exactly: int64 where the values allow, Python ints where an intermediate
would overflow (e.g. a 64-bit accumulator times the multiplier), never a silent wrap. Results come
back as int64 arrays (Python ints for scalars); only a result that itself exceeds int64 (an
unsigned 64-bit saturation bound) comes back as an object array of Python ints.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = [
    "ROUNDING", "MULTIPLIER_BITS", "MAX_SHIFT",
    "int_range", "fits", "check_int_array", "saturate", "rshift_round",
    "Requant", "quantize_multiplier", "requantize",
    "div_round", "reciprocal", "leading_one", "leading_one_signed",
]

#: Name of the single rounding rule (see module docstring).
ROUNDING = "RHU (round half up: ties toward +inf)"
#: Width of the unsigned requantisation multiplier (top bit set).
MULTIPLIER_BITS = 16
#: Largest right shift a requantiser supports.
MAX_SHIFT = 63


_I64_MIN, _I64_MAX = -(1 << 63), (1 << 63) - 1


def _as_int(x):
    """Exact integers: a Python int for a scalar; for arrays int64 when every value fits, else an
    object array of Python ints (so nothing ever wraps silently, e.g. uint64 or 64x16-bit products).
    """
    if isinstance(x, (bool, np.bool_, int, np.integer)):
        return int(x)
    a = np.asarray(x)
    if a.dtype.kind == "O":
        flat = a.ravel().tolist()
        if not all(isinstance(e, (int, np.integer)) for e in flat):
            raise TypeError("expected integers, got non-integer objects")
        return _narrow(np.array([int(e) for e in flat], dtype=object).reshape(a.shape))
    if a.dtype.kind not in "iub":
        raise TypeError(f"expected integers, got dtype {a.dtype}")
    if a.dtype == np.uint64 and a.size and int(a.max()) > _I64_MAX:
        return a.astype(object)
    return a.astype(np.int64)


def _narrow(a):
    """int64 when every value of the (object or int64) array fits, the object array otherwise."""
    if a.dtype == object:
        if a.size == 0 or (_I64_MIN <= min(a.ravel().tolist()) and max(a.ravel().tolist()) <= _I64_MAX):
            return a.astype(np.int64)
    return a


def _fits_i64(v, factor: int = 1, extra: int = 0) -> bool:
    """True when ``|v| * factor + extra`` stays inside int64 for every element of the array."""
    if v.dtype == object:
        return False
    if v.size == 0:
        return True
    big = max(abs(int(v.min())), abs(int(v.max())))
    return big * abs(factor) + abs(extra) <= _I64_MAX


def int_range(bits: int, signed: bool = True) -> tuple[int, int]:
    """Inclusive (lo, hi) of a ``bits``-wide integer."""
    if not isinstance(bits, (int, np.integer)) or bits < 1:
        raise ValueError(f"bits must be a positive integer, got {bits!r}")
    if signed:
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


def fits(x, bits: int, signed: bool = True) -> bool:
    """True when every value of ``x`` lies in the range of the width."""
    lo, hi = int_range(bits, signed)
    a = np.asarray(x)
    if a.size == 0:
        return True
    return bool(a.min() >= lo and a.max() <= hi)


def check_int_array(name: str, x, bits: int, signed: bool = True, ndim: int | None = None,
                    shape: tuple | None = None) -> np.ndarray:
    """Validate a user-supplied integer array and return it as int64.

    Raises ``TypeError``/``ValueError`` whose message names ``name``: wrong dtype (floats, bools,
    objects), wrong rank or shape, or values that do not fit ``bits``.
    """
    a = np.asarray(x)
    if a.dtype.kind not in "iu":
        raise TypeError(f"{name}: expected an integer array, got dtype {a.dtype}")
    if ndim is not None and a.ndim != ndim:
        raise ValueError(f"{name}: expected {ndim} dimensions, got shape {a.shape}")
    if shape is not None:
        for axis, (got, want) in enumerate(zip(a.shape, shape)):
            if want is not None and got != want:
                raise ValueError(f"{name}: expected shape {shape} (None = any), got {a.shape} "
                                 f"(axis {axis} is {got}, not {want})")
    lo, hi = int_range(bits, signed)
    if a.size and (a.min() < lo or a.max() > hi):
        kind = "signed" if signed else "unsigned"
        raise ValueError(f"{name}: values must fit {kind} {bits}-bit [{lo}, {hi}], "
                         f"got range [{a.min()}, {a.max()}]")
    return a.astype(np.int64)


def saturate(x, bits: int, signed: bool = True):
    """Clip ``x`` to the range of a ``bits``-wide integer."""
    lo, hi = int_range(bits, signed)
    v = _as_int(x)
    if isinstance(v, int):
        return min(max(v, lo), hi)
    if hi > _I64_MAX and v.dtype != object:   # unsigned 64: the bound itself is not an int64
        hi = _I64_MAX
    return _narrow(np.clip(v, lo, hi))


def rshift_round(x, shift: int):
    """Arithmetic right shift by ``shift >= 0`` with RHU rounding: floor((x + 2^(s-1)) / 2^s)."""
    if not isinstance(shift, (int, np.integer)) or isinstance(shift, (bool, np.bool_)):
        raise TypeError(f"shift must be an integer, got {shift!r}")
    shift = int(shift)
    if shift < 0:
        raise ValueError(f"shift must be >= 0, got {shift}")
    v = _as_int(x)
    if shift == 0:
        return v
    if isinstance(v, int):
        return (v + (1 << (shift - 1))) >> shift
    if v.dtype == object:                      # Python ints: exact at any width
        return _narrow((v + (1 << (shift - 1))) >> shift)
    # int64 arrays: floor(x / 2^s) plus the bit just below the cut; equal to the formula above
    # (x = q 2^s + r, and r + 2^(s-1) carries exactly when bit s-1 of r is set) but cannot
    # overflow the way ``x + half`` does near the int64 limits.
    if shift >= 64:
        return np.zeros(v.shape, dtype=np.int64)   # |x| <= 2^63 <= 2^(s-1): rounds to 0
    return (v >> shift) + ((v >> (shift - 1)) & 1)


@dataclass(frozen=True)
class Requant:
    """A real multiplier as ``multiplier * 2**-shift`` (see :func:`quantize_multiplier`)."""
    multiplier: int
    shift: int

    def __post_init__(self):
        if not isinstance(self.multiplier, (int, np.integer)) or self.multiplier < 0:
            raise ValueError(f"Requant.multiplier must be a non-negative integer, "
                             f"got {self.multiplier!r}")
        if not isinstance(self.shift, (int, np.integer)) or not 0 <= self.shift <= MAX_SHIFT:
            raise ValueError(f"Requant.shift must be an integer in [0, {MAX_SHIFT}], "
                             f"got {self.shift!r}")

    @property
    def real(self) -> float:
        return self.multiplier * 2.0 ** -self.shift


def quantize_multiplier(real: float, bits: int = MULTIPLIER_BITS) -> Requant:
    """Represent ``real > 0`` as ``multiplier * 2**-shift`` with a ``bits``-bit multiplier.

    The multiplier is normalised (top bit set) and rounded RHU from the exact binary value of
    ``real``, so the relative error is below 2**-bits. Raises ``ValueError`` when ``real`` is not
    positive or needs a shift outside [0, MAX_SHIFT] (``real >= 2**bits`` is too large; below
    ``2**-(MAX_SHIFT - bits + 1)`` the multiplier loses its top bit and precision degrades until
    ``real < 2**-MAX_SHIFT`` is rejected).
    """
    if not isinstance(bits, (int, np.integer)) or not 1 <= bits <= 62:
        raise ValueError(f"bits must be an integer in [1, 62], got {bits!r}")
    if isinstance(real, (bool, np.bool_)) or not isinstance(real, (int, float, np.integer, np.floating)):
        raise ValueError(f"requantisation multiplier must be a positive finite number, got {real!r}")
    real = float(real)
    if not (math.isfinite(real) and real > 0):
        raise ValueError(f"requantisation multiplier must be a positive finite number, got {real!r}")
    mant, exp = math.frexp(real)          # real = mant * 2**exp, mant in [0.5, 1), exactly
    mant53 = int(math.ldexp(mant, 53))    # exact integer: real = mant53 * 2**(exp - 53)
    multiplier = rshift_round(mant53, 53 - bits)      # RHU, the project's one rounding rule
    shift = bits - exp
    if multiplier == 1 << bits:           # rounding carried into a new bit
        multiplier >>= 1
        shift -= 1
    if shift > MAX_SHIFT:                 # too small for a normalised multiplier: denormalise
        multiplier = rshift_round(multiplier, shift - MAX_SHIFT)
        shift = MAX_SHIFT
        if multiplier == 0:
            raise ValueError(f"requantisation multiplier {real} is too small (< 2**-{MAX_SHIFT})")
    if shift < 0:
        raise ValueError(f"requantisation multiplier {real} is too large (>= 2**{bits})")
    return Requant(int(multiplier), int(shift))


def requantize(acc, rq: Requant, out_bits: int = 8, signed: bool = True):
    """``saturate(rshift_round(acc * multiplier, shift), out_bits)``; exact for any integer ``acc``
    (int64 arithmetic while the product fits, Python ints beyond)."""
    v = _as_int(acc)
    if not isinstance(v, int) and not _fits_i64(v, rq.multiplier):
        v = v.astype(object)
    prod = v * rq.multiplier
    return saturate(rshift_round(prod, rq.shift), out_bits, signed)


def div_round(n, d, out_bits: int = 32, signed: bool = True):
    """RHU-rounded ``n / d`` saturated to ``out_bits``. Returns ``(quotient, div_by_zero)``.

    ``q = floor((2*n + d) / (2*d))``. ``d`` must be >= 0; ``d == 0`` yields the saturated extreme
    toward the sign of ``n`` (maximum for ``n >= 0``; for unsigned outputs a negative ``n`` gives
    0) and ``div_by_zero = True``, so hardware never produces an undefined value.
    """
    lo, hi = int_range(out_bits, signed)
    nv, dv = _as_int(n), _as_int(d)
    if isinstance(nv, int) and isinstance(dv, int):   # scalars: exact Python ints
        if dv < 0:
            raise ValueError("div_round: divisor must be >= 0")
        if dv == 0:
            return (hi if nv >= 0 else lo), True
        return min(max((2 * nv + dv) // (2 * dv), lo), hi), False
    nv, dv = np.broadcast_arrays(np.asarray(nv), np.asarray(dv))
    if (dv < 0).any():
        raise ValueError("div_round: divisor must be >= 0")
    zero = np.asarray(dv == 0, dtype=bool)
    wide = not (_fits_i64(nv, 2) and _fits_i64(dv, 2) and _fits_i64(nv, 2, extra=int(dv.max(initial=0)))
                and hi <= _I64_MAX)
    if wide:
        nv, dv = nv.astype(object), dv.astype(object)
    kind = object if wide else np.int64
    safe_d = np.where(zero, 1, dv).astype(kind)
    q = np.clip(np.floor_divide(2 * nv + safe_d, 2 * safe_d), lo, hi).astype(kind)
    extreme = np.where(nv >= 0, np.array(hi, dtype=kind), np.array(lo, dtype=kind))
    return _narrow(np.where(zero, extreme, q).astype(kind)), zero


def reciprocal(d, frac_bits: int, out_bits: int = 32):
    """``div_round(2**frac_bits, d)`` as an unsigned ``out_bits`` value: (value, div_by_zero)."""
    if not isinstance(frac_bits, (int, np.integer)) or frac_bits < 0:
        raise ValueError(f"frac_bits must be a non-negative integer, got {frac_bits!r}")
    dv = _as_int(d)
    one = 1 << int(frac_bits)
    n = one if isinstance(dv, int) else np.full(dv.shape, one, dtype=object)
    return div_round(n, dv, out_bits=out_bits, signed=False)


def leading_one(x):
    """Position of the leading one of a non-negative integer: ``(exponent, is_zero)``.

    ``exponent = floor(log2 x)`` for ``x > 0``; for ``x == 0`` it is 0 and ``is_zero`` is True.
    """
    v = _as_int(x)
    if isinstance(v, int):
        if v < 0:
            raise ValueError("leading_one: input must be non-negative")
        return (v.bit_length() - 1 if v else 0), v == 0
    if (v < 0).any():
        raise ValueError("leading_one: input must be non-negative")
    if v.dtype == object:
        exp = np.array([max(int(e).bit_length() - 1, 0) for e in v.ravel()], dtype=np.int64)
        return exp.reshape(v.shape), np.asarray(v == 0, dtype=bool)
    exp = np.zeros(v.shape, dtype=np.int64)
    rest = v.copy()
    for step in (32, 16, 8, 4, 2, 1):
        big = rest >= (1 << step)
        exp += np.where(big, step, 0)
        rest = np.where(big, rest >> step, rest)
    return exp, v == 0


def leading_one_signed(x):
    """Leading one of the magnitude of a signed integer: ``(sign, exponent, is_zero)``.

    ``sign`` is True for negative ``x``; ``exponent = floor(log2 |x|)`` (so ``-2**(w-1)`` gives
    ``w - 1``); ``x == 0`` gives ``(False, 0, True)``. FACT's ``LO(a) = sign * 2**exponent``.
    """
    v = _as_int(x)
    if isinstance(v, int):
        exp, zero = leading_one(abs(v))
        return v < 0, exp, zero
    # |-2**63| does not fit int64: take magnitudes as Python ints in that case
    mag = np.abs(v) if v.dtype != object and (v != _I64_MIN).all() else np.abs(v.astype(object))
    exp, zero = leading_one(mag)
    return np.asarray(v < 0, dtype=bool), exp, zero
