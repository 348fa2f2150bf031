"""Divider / Reciprocal RTL == fixedpoint.div_round / reciprocal, bit for bit, with random stalls."""
import random

import pytest
from amaranth.back import verilog

from vitaccel.golden import fixedpoint as fp
from vitaccel.rtl.common.divider import Divider, Reciprocal
from vitaccel.sim import amaranth_sim
from vitaccel.sim.job import Job, StallProfile


def _pack_div(n, d, nw):
    return (n & ((1 << nw) - 1)) | (d << nw)        # struct: first field in the low bits


def _unpack_div(word, ow, out_signed=True):
    q = word & ((1 << ow) - 1)
    if out_signed and q >> (ow - 1):
        q -= 1 << ow
    return q, bool(word >> ow)


def _run_divider(pairs, nw, dw, ow, seed, out_signed=True):
    dut = Divider(num_width=nw, den_width=dw, out_width=ow, out_signed=out_signed)
    job = Job(inputs={"i": [_pack_div(n, d, nw) for n, d in pairs]}, expect={"o": len(pairs)},
              stalls=StallProfile(seed=seed))
    res = amaranth_sim.run(dut, job)
    got = [_unpack_div(w, ow, out_signed) for w in res.outputs["o"]]
    want = [fp.div_round(n, d, out_bits=ow, signed=out_signed) for n, d in pairs]
    return got, want, res


def _pairs(rng, count, nw, dw):
    nlo, nhi = fp.int_range(nw)
    dhi = (1 << dw) - 1
    n_extreme = [nlo, nhi, 0, -1, 1, nlo + 1]
    d_extreme = [0, 1, 2, 3, dhi, dhi - 1]
    out = []
    for _ in range(count):
        n = rng.choice(n_extreme) if rng.random() < 0.3 else rng.randint(nlo, nhi)
        r = rng.random()
        if r < 0.3:
            d = rng.choice(d_extreme)
        elif r < 0.6:
            d = rng.randint(1, 1 << rng.randint(1, dw)) & dhi     # small and medium divisors
        else:
            d = rng.randint(0, dhi)
        out.append((n, d))
    return out


@pytest.mark.parametrize("seed", [1, 2])
def test_divider_int32(seed):
    rng = random.Random(seed)
    pairs = _pairs(rng, 80, 32, 32)
    # exact ties of the RHU rule: n / d = k + 1/2 in both signs
    pairs += [(5, 2), (-5, 2), (-1, 2), (1, 2), (7, 14), (-7, 14), ((1 << 31) - 1, 2)]
    got, want, _ = _run_divider(pairs, 32, 32, 32, seed)
    assert got == want


def test_divider_saturates_narrow_output():
    """32-bit numerators, 16-bit output: small divisors overflow and must clip, both signs."""
    rng = random.Random(7)
    pairs = _pairs(rng, 60, 32, 12)
    pairs += [(-(1 << 31), 1), ((1 << 31) - 1, 1), (-(1 << 31), 0), (40000, 1), (-40000, 1)]
    got, want, _ = _run_divider(pairs, 32, 12, 16, seed=7)
    assert got == want
    assert any(q == 32767 and not z for q, z in got) and any(q == -32768 and not z for q, z in got)


def test_divider_exhaustive_small():
    """Every int5 numerator against every 3-bit divisor (incl. 0), 4-bit signed output."""
    pairs = [(n, d) for n in range(-16, 16) for d in range(8)]
    got, want, _ = _run_divider(pairs, 5, 3, 4, seed=3)
    assert got == want


def test_divider_unsigned_output():
    rng = random.Random(11)
    pairs = _pairs(rng, 30, 10, 6) + [(-5, 0), (-5, 3), (511, 1)]
    got, want, _ = _run_divider(pairs, 10, 6, 8, seed=11, out_signed=False)
    assert got == want


def test_divider_latency():
    dut = Divider()
    assert dut.latency == 35
    job = Job(inputs={"i": [_pack_div(-7, 2, 32)]}, expect={"o": 1}, stalls=StallProfile.none())
    res = amaranth_sim.run(dut, job)
    assert _unpack_div(res.outputs["o"][0], 32) == fp.div_round(-7, 2) == (-3, False)
    # the input handshake happens on the first edge; the output is taken latency edges later
    assert res.cycles == 1 + dut.latency


@pytest.mark.parametrize("frac_bits,dw,ow", [(16, 16, 32), (30, 12, 16), (8, 20, 12)])
def test_reciprocal(frac_bits, dw, ow):
    rng = random.Random(frac_bits)
    ds = [0, 1, 2, 3, (1 << dw) - 1, 1 << (dw - 1)] + [rng.randint(0, (1 << dw) - 1) for _ in range(15)]
    ds += [rng.randint(1, 1 << rng.randint(1, dw)) & ((1 << dw) - 1) for _ in range(10)]
    dut = Reciprocal(frac_bits, den_width=dw, out_width=ow)
    res = amaranth_sim.run(dut, Job(inputs={"i": ds}, expect={"o": len(ds)},
                                    stalls=StallProfile(seed=frac_bits)))
    got = [_unpack_div(w, ow, out_signed=False) for w in res.outputs["o"]]
    assert got == [fp.reciprocal(d, frac_bits, out_bits=ow) for d in ds]


def test_divider_rejects_bad_params():
    with pytest.raises(ValueError, match="num_width"):
        Divider(num_width=0)


@pytest.mark.parametrize("make", [lambda: Divider(), lambda: Reciprocal(16)])
def test_divider_converts_to_verilog(make):
    text = verilog.convert(make(), name="div", emit_src=False)
    assert "module div" in text
