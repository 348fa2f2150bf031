"""The numeric contract: exhaustive on small widths, Hypothesis properties on wide ones.

Every reference here is written independently of fixedpoint.py, with exact rationals
(``fractions.Fraction``) and the RHU rule spelt out as ``floor(x + 1/2)``.
"""
import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vitaccel.golden import fixedpoint as fp

I32 = st.integers(-(1 << 31), (1 << 31) - 1)
I64 = st.integers(-(1 << 63), (1 << 63) - 1)


def rhu(x: Fraction) -> int:
    """Round half up (ties toward +inf) of an exact rational."""
    return math.floor(x + Fraction(1, 2))


def clip(v, bits, signed=True):
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    return min(max(v, lo), hi)


def ref_requantize(acc, mult, shift, bits=8, signed=True):
    return clip(rhu(Fraction(acc * mult, 1 << shift)), bits, signed)


def ref_div(n, d, bits=32, signed=True):
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    if d == 0:
        return (hi if n >= 0 else lo), True
    return clip(rhu(Fraction(n, d)), bits, signed), False


# ---------------------------------------------------------------- ranges, fits, checks
def test_int_range_and_fits():
    assert fp.int_range(8) == (-128, 127)
    assert fp.int_range(8, signed=False) == (0, 255)
    assert fp.int_range(1) == (-1, 0)
    assert fp.fits([-128, 127], 8) and not fp.fits([128], 8) and not fp.fits([-1], 8, signed=False)
    assert fp.fits([], 3)
    with pytest.raises(ValueError):
        fp.int_range(0)


def test_check_int_array_messages():
    a = fp.check_int_array("x", np.array([[1, -2]], dtype=np.int8), 8, ndim=2, shape=(1, None))
    assert a.dtype == np.int64 and a.tolist() == [[1, -2]]
    with pytest.raises(TypeError, match="x: expected an integer array"):
        fp.check_int_array("x", np.array([1.0]), 8)
    with pytest.raises(ValueError, match="q: values must fit signed 4-bit"):
        fp.check_int_array("q", [8], 4)
    with pytest.raises(ValueError, match="k: expected 2 dimensions"):
        fp.check_int_array("k", [1, 2], 8, ndim=2)
    with pytest.raises(ValueError, match=r"v: expected shape \(3,\)"):
        fp.check_int_array("v", [1, 2], 8, shape=(3,))


def test_no_dead_helpers():
    assert not hasattr(fp, "_scalar_or_array")
    assert set(fp.__all__) <= set(dir(fp))


# ---------------------------------------------------------------- saturate
@pytest.mark.parametrize("signed", [True, False])
def test_saturate_exhaustive(signed):
    xs = list(range(-600, 600))
    for bits in range(1, 11):
        want = [clip(x, bits, signed) for x in xs]
        assert [fp.saturate(x, bits, signed) for x in xs] == want
        assert fp.saturate(np.array(xs), bits, signed).tolist() == want


def test_saturate_64_bit_extremes():
    big = np.array([2**64 - 1, 0], dtype=np.uint64)       # beyond int64: must not wrap
    assert fp.saturate(big, 64, signed=False).tolist() == [2**64 - 1, 0]
    assert fp.saturate(big, 64).tolist() == [2**63 - 1, 0]
    assert fp.saturate(np.array([-(1 << 63), 5]), 64, signed=False).tolist() == [0, 5]
    assert fp.saturate(2**70, 64) == 2**63 - 1


# ---------------------------------------------------------------- rshift_round
def test_rshift_round_exhaustive_int8():
    xs = np.arange(-128, 128)
    for shift in range(0, 12):
        want = [rhu(Fraction(int(x), 1 << shift)) for x in xs]
        assert [fp.rshift_round(int(x), shift) for x in xs] == want, shift
        assert fp.rshift_round(xs, shift).tolist() == want, shift
        assert fp.rshift_round(xs.astype(np.int8), shift).tolist() == want, shift


def test_rshift_round_ties_go_up():
    assert fp.rshift_round(np.array([1, 3, -1, -3, 5, -5]), 1).tolist() == [1, 2, 0, -1, 3, -2]
    assert fp.rshift_round(-2, 2) == 0 and fp.rshift_round(-6, 2) == -1 and fp.rshift_round(6, 2) == 2


def test_rshift_round_rejects_bad_shift():
    with pytest.raises(ValueError):
        fp.rshift_round(5, -1)
    with pytest.raises(TypeError):
        fp.rshift_round(5, 1.5)


@settings(max_examples=300, deadline=None)
@given(st.lists(I64, min_size=1, max_size=8), st.integers(0, 80))
def test_rshift_round_int64_matches_fraction(xs, shift):
    want = [rhu(Fraction(x, 1 << shift)) for x in xs]
    assert fp.rshift_round(np.array(xs, dtype=np.int64), shift).tolist() == want
    assert [fp.rshift_round(x, shift) for x in xs] == want


def test_rshift_round_int64_limits():
    xs = np.array([(1 << 63) - 1, -(1 << 63), (1 << 62), -1])
    for shift in (1, 2, 61, 62, 63, 64, 65, 100):
        assert fp.rshift_round(xs, shift).tolist() == [rhu(Fraction(int(x), 1 << shift)) for x in xs]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(-(1 << 100), 1 << 100), min_size=1, max_size=5), st.integers(0, 120))
def test_rshift_round_python_ints_beyond_64_bits(xs, shift):
    got = fp.rshift_round(np.array(xs, dtype=object), shift)
    assert [int(v) for v in got] == [rhu(Fraction(x, 1 << shift)) for x in xs]


# ---------------------------------------------------------------- quantize_multiplier / requantize
def _check_normalised(real, rq, bits=fp.MULTIPLIER_BITS):
    assert 1 << (bits - 1) <= rq.multiplier < 1 << bits, rq
    assert 0 <= rq.shift <= fp.MAX_SHIFT
    rel = abs(Fraction(rq.multiplier, 1 << rq.shift) - Fraction(real)) / Fraction(real)
    assert rel < Fraction(1, 1 << bits), (real, rq, float(rel))
    # RHU from the exact value: the mantissa is floor(real * 2^shift + 1/2)
    assert rq.multiplier == rhu(Fraction(real) * (1 << rq.shift)) or \
        rq.multiplier == rhu(Fraction(real) * (1 << rq.shift)) >> 1     # carried into a new bit


def test_quantize_multiplier_sweep():
    for e in np.linspace(-45.0, 15.9, 2000):
        real = float(2.0 ** e)
        _check_normalised(real, fp.quantize_multiplier(real))


@settings(max_examples=500, deadline=None)
@given(st.floats(min_value=2.0 ** -47, max_value=65535.49, allow_nan=False, allow_infinity=False),
       st.sampled_from([8, 12, 16, 24]))
def test_quantize_multiplier_property(real, bits):
    if real >= (1 << bits) - 0.5:
        with pytest.raises(ValueError, match="too large"):
            fp.quantize_multiplier(real, bits)
        return
    rq = fp.quantize_multiplier(real, bits)
    if rq.shift < fp.MAX_SHIFT:
        _check_normalised(real, rq, bits)


def test_quantize_multiplier_exact_and_tie_cases():
    assert fp.quantize_multiplier(1.0) == fp.Requant(1 << 15, 15)
    assert fp.quantize_multiplier(0.5) == fp.Requant(1 << 15, 16)
    assert fp.quantize_multiplier(0.75, bits=2) == fp.Requant(3, 2)
    # (2^16 + 1) / 2^17 sits exactly halfway between two 16-bit mantissas: RHU rounds up
    assert fp.quantize_multiplier((2**16 + 1) / 2**17) == fp.Requant(2**15 + 1, 16)
    # rounding carries into a new bit: 1 - 2^-20 -> 2^16 -> renormalised to 2^15
    assert fp.quantize_multiplier(1 - 2**-20) == fp.Requant(1 << 15, 15)
    assert fp.quantize_multiplier(np.float32(0.25)).real == 0.25


def test_quantize_multiplier_limits():
    for bad in (0.0, -1.0, float("nan"), float("inf"), "0.5", True):
        with pytest.raises(ValueError):
            fp.quantize_multiplier(bad)
    with pytest.raises(ValueError, match="too large"):
        fp.quantize_multiplier(65536.0)
    with pytest.raises(ValueError, match="too small"):
        fp.quantize_multiplier(2.0 ** -70)
    tiny = fp.quantize_multiplier(3 * 2.0 ** -62)   # below the normalised range: denormalised
    assert tiny.shift == fp.MAX_SHIFT and tiny.multiplier == 6


def test_requant_validates():
    with pytest.raises(ValueError):
        fp.Requant(multiplier=5, shift=64)
    with pytest.raises(ValueError):
        fp.Requant(multiplier=-1, shift=3)
    assert fp.Requant(3, 2).real == 0.75


@settings(max_examples=300, deadline=None)
@given(st.lists(I32, min_size=1, max_size=16), st.integers(0, (1 << 16) - 1), st.integers(0, 63),
       st.sampled_from([(8, True), (16, True), (4, True), (8, False), (32, True)]))
def test_requantize_int32_matches_fraction(accs, mult, shift, out):
    bits, signed = out
    rq = fp.Requant(mult, shift)
    want = [ref_requantize(a, mult, shift, bits, signed) for a in accs]
    assert fp.requantize(np.array(accs, dtype=np.int32), rq, bits, signed).tolist() == want
    assert [fp.requantize(a, rq, bits, signed) for a in accs] == want


@settings(max_examples=200, deadline=None)
@given(st.lists(I64, min_size=1, max_size=8), st.integers(0, (1 << 16) - 1), st.integers(0, 63))
def test_requantize_int64_accumulators_stay_exact(accs, mult, shift):
    """64-bit accumulators times a 16-bit multiplier overflow int64: must still be exact."""
    rq = fp.Requant(mult, shift)
    want = [ref_requantize(a, mult, shift, 32) for a in accs]
    assert fp.requantize(np.array(accs, dtype=np.int64), rq, 32).tolist() == want


def test_requantize_exhaustive_int8():
    accs = np.arange(-128, 128)
    for mult in (1, 3, 255, 32768, 65535):
        for shift in range(0, 25):
            rq = fp.Requant(mult, shift)
            want = [ref_requantize(int(a), mult, shift, 6) for a in accs]
            assert fp.requantize(accs, rq, 6).tolist() == want


# ---------------------------------------------------------------- div_round / reciprocal
@pytest.mark.parametrize("bits,signed", [(32, True), (8, True), (4, True), (8, False)])
def test_div_round_exhaustive_int8(bits, signed):
    n, d = np.meshgrid(np.arange(-128, 128), np.arange(0, 256), indexing="ij")
    q, z = fp.div_round(n, d, out_bits=bits, signed=signed)
    want = [[ref_div(int(a), int(b), bits, signed) for b in range(256)] for a in range(-128, 128)]
    assert q.tolist() == [[w[0] for w in row] for row in want]
    assert z.tolist() == [[w[1] for w in row] for row in want]
    for a in range(-128, 128, 7):                  # the scalar path agrees
        for b in range(0, 256, 5):
            assert fp.div_round(a, b, bits, signed) == ref_div(a, b, bits, signed)


def test_div_round_zero_and_ties():
    assert fp.div_round(0, 0) == (2**31 - 1, True)
    assert fp.div_round(-1, 0) == (-2**31, True)
    assert fp.div_round(5, 0, out_bits=8) == (127, True)
    assert fp.div_round(-5, 0, out_bits=8, signed=False) == (0, True)
    assert fp.div_round(5, 2) == (3, False) and fp.div_round(-5, 2) == (-2, False)
    with pytest.raises(ValueError):
        fp.div_round(1, -1)
    with pytest.raises(ValueError):
        fp.div_round(np.array([1]), np.array([-1]))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(I64, st.integers(0, (1 << 64) - 1)), min_size=1, max_size=8),
       st.sampled_from([(32, True), (64, True), (64, False), (16, False)]))
def test_div_round_wide_matches_fraction(pairs, out):
    bits, signed = out
    want = [ref_div(n, d, bits, signed) for n, d in pairs]
    assert [fp.div_round(n, d, bits, signed) for n, d in pairs] == want
    ns = np.array([n for n, _ in pairs], dtype=np.int64)
    ds = np.array([d for _, d in pairs], dtype=np.uint64)
    q, z = fp.div_round(ns, ds, bits, signed)
    assert [int(v) for v in q] == [w[0] for w in want]
    assert z.tolist() == [w[1] for w in want]


def test_reciprocal():
    d = np.arange(0, 300)
    v, z = fp.reciprocal(d, 16)
    assert v.tolist() == [2**32 - 1] + [rhu(Fraction(1 << 16, int(x))) for x in d[1:]]
    assert z.tolist() == [True] + [False] * 299
    assert fp.reciprocal(3, 16) == (21845, False)
    assert fp.reciprocal(1, 20, out_bits=16) == (65535, False)   # saturates
    with pytest.raises(ValueError):
        fp.reciprocal(3, -1)


# ---------------------------------------------------------------- leading_one
def test_leading_one_exhaustive():
    xs = np.arange(0, 1 << 14)
    want_e = [max(int(x).bit_length() - 1, 0) for x in xs]
    e, z = fp.leading_one(xs)
    assert e.tolist() == want_e and z.tolist() == [x == 0 for x in xs]
    assert [fp.leading_one(int(x)) for x in xs[:1000]] == [(w, x == 0) for w, x in
                                                            zip(want_e[:1000], range(1000))]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, (1 << 64) - 1), min_size=1, max_size=10))
def test_leading_one_64_bit(xs):
    e, z = fp.leading_one(np.array(xs, dtype=np.uint64))
    assert e.tolist() == [max(x.bit_length() - 1, 0) for x in xs]
    assert z.tolist() == [x == 0 for x in xs]


def test_leading_one_rejects_negative():
    with pytest.raises(ValueError):
        fp.leading_one(-1)
    with pytest.raises(ValueError):
        fp.leading_one(np.array([3, -1]))


def test_leading_one_signed():
    for w in range(1, 10):
        lo, hi = fp.int_range(w)
        xs = np.arange(lo, hi + 1)
        s, e, z = fp.leading_one_signed(xs)
        assert s.tolist() == [x < 0 for x in xs]
        assert e.tolist() == [max(abs(int(x)).bit_length() - 1, 0) for x in xs]
        assert z.tolist() == [x == 0 for x in xs]
        assert fp.leading_one_signed(int(lo)) == (True, w - 1, False)
    s, e, z = fp.leading_one_signed(np.array([-(1 << 63), (1 << 63) - 1]))
    assert s.tolist() == [True, False] and e.tolist() == [63, 62] and z.tolist() == [False, False]
