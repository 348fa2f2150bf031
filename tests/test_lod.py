"""Leading-one detectors == fixedpoint.leading_one / leading_one_signed, in the Amaranth simulator."""
import random

import pytest
from amaranth.back import verilog
from amaranth.hdl import Module, Signal
from amaranth.sim import Simulator

from vitaccel.golden import fixedpoint as fp
from vitaccel.rtl.common.lod import LeadingOneDetector, SignedLOD, exponent_width, leading_one


def _sweep(dut, values, ports):
    """Drive ``values`` into ``dut.value`` and return the ``ports`` read back for each."""
    got = []

    async def bench(ctx):
        for v in values:
            ctx.set(dut.value, v)
            got.append(tuple(ctx.get(getattr(dut, p)) for p in ports))

    sim = Simulator(dut)
    sim.add_testbench(bench)
    sim.run()
    return got


def _check_unsigned(width, values):
    dut = LeadingOneDetector(width)
    assert len(dut.exponent) == exponent_width(width)
    got = _sweep(dut, values, ("exponent", "zero"))
    for v, (exp, zero) in zip(values, got):
        want_exp, want_zero = fp.leading_one(v)
        assert (exp, bool(zero)) == (want_exp, want_zero), f"width {width}, value {v:#x}"


def _check_signed(width, values):
    dut = SignedLOD(width)
    got = _sweep(dut, values, ("sign", "exponent", "zero"))
    for v, (sign, exp, zero) in zip(values, got):
        want = fp.leading_one_signed(v)
        assert (bool(sign), exp, bool(zero)) == want, f"width {width}, value {v}"


@pytest.mark.parametrize("width", range(1, 13))
def test_lod_exhaustive(width):
    _check_unsigned(width, list(range(1 << width)))


@pytest.mark.parametrize("width", [25, 32, 48])
def test_lod_random_wide(width):
    rng = random.Random(width)
    # every single leading-one position with random bits below it, plus the extremes
    values = [0, 1, (1 << width) - 1, 1 << (width - 1)]
    for pos in range(width):
        for _ in range(3):
            values.append((1 << pos) | rng.getrandbits(pos) if pos else 1)
    values += [rng.getrandbits(width) for _ in range(100)]
    _check_unsigned(width, values)


@pytest.mark.parametrize("width", range(1, 11))
def test_signed_lod_exhaustive(width):
    _check_signed(width, list(range(-(1 << (width - 1)), 1 << (width - 1))))


@pytest.mark.parametrize("width", [25, 32])
def test_signed_lod_random_wide(width):
    rng = random.Random(1000 + width)
    lo, hi = fp.int_range(width)
    values = [lo, lo + 1, hi, 0, -1, 1] + [rng.randint(lo, hi) for _ in range(150)]
    values += [-(1 << p) for p in range(width)] + [(1 << p) for p in range(width - 1)]
    _check_signed(width, values)


def test_lod_function_inside_a_module():
    """The ``leading_one`` helper builds the same tree inside another module."""
    m = Module()
    value = Signal(20)
    exp, zero = leading_one(m, value)
    got = []

    async def bench(ctx):
        for v in (0, 1, 0x80000 | 5, 0x3FF, 0xFFFFF):
            ctx.set(value, v)
            got.append((ctx.get(exp), ctx.get(zero)))

    sim = Simulator(m)
    sim.add_testbench(bench)
    sim.run()
    assert got == [(0, 1), (0, 0), (19, 0), (9, 0), (19, 0)]


def test_lod_rejects_bad_width():
    with pytest.raises(ValueError, match="width"):
        LeadingOneDetector(0)


@pytest.mark.parametrize("cls", [LeadingOneDetector, SignedLOD])
def test_lod_converts_to_verilog(cls):
    text = verilog.convert(cls(25), name="lod", emit_src=False)
    assert "module lod" in text
