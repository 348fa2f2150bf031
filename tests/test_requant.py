"""Requantizer RTL == fixedpoint.requantize, bit for bit, under random valid gaps and back-pressure."""
import random

import numpy as np
import pytest
from amaranth.back import verilog

from vitaccel.golden import fixedpoint as fp
from vitaccel.rtl.common.requant import Requantizer
from vitaccel.sim import amaranth_sim
from vitaccel.sim.job import Job, StallProfile, pack, unpack


def _vectors(rng, count, lanes, in_width):
    lo, hi = fp.int_range(in_width)
    extremes = [lo, hi, 0, -1, 1, lo + 1, hi - 1]
    beats = []
    for _ in range(count):
        beats.append([rng.choice(extremes) if rng.random() < 0.25 else rng.randint(lo, hi)
                      for _ in range(lanes)])
    return beats


def _run(rq, beats, lanes, in_width, out_width, mb, seed):
    dut = Requantizer(lanes, in_width=in_width, out_width=out_width, multiplier_bits=mb)
    job = Job(inputs={"i": [pack(b, in_width) for b in beats]}, expect={"o": len(beats)},
              statics={"multiplier": rq.multiplier, "shift": rq.shift},
              stalls=StallProfile(seed=seed))
    res = amaranth_sim.run(dut, job)
    got = np.array([unpack(w, out_width, lanes) for w in res.outputs["o"]])
    want = fp.requantize(np.array(beats, dtype=np.int64), rq, out_bits=out_width)
    return got, want


@pytest.mark.parametrize("seed,rq", [
    (1, fp.Requant(multiplier=1 << 15, shift=0)),    # saturates almost everything
    (2, fp.Requant(multiplier=0xFFFF, shift=63)),    # largest shift: everything rounds to 0
    (3, fp.Requant(multiplier=0xFFFF, shift=47)),    # p / 2^47 ~ +-0.5: the RHU tie region
    (4, fp.Requant(multiplier=1, shift=1)),          # ties at every odd accumulator
    (5, fp.quantize_multiplier(0.0123)),
    (6, fp.quantize_multiplier(3.7e-6)),
    (7, fp.Requant(multiplier=0, shift=5)),
])
def test_requantizer_int32_to_int8(seed, rq):
    rng = random.Random(seed)
    beats = _vectors(rng, 40, lanes=4, in_width=32)
    got, want = _run(rq, beats, 4, 32, 8, 16, seed)
    np.testing.assert_array_equal(got, want)


def test_requantizer_random_params_and_widths():
    """Sweeps small odd widths so every saturation/rounding boundary is hit often."""
    rng = random.Random(99)
    for trial in range(6):
        in_width, out_width, mb = rng.choice([(12, 5, 7), (9, 3, 4), (20, 12, 10), (16, 16, 16)])
        shift = rng.choice([0, 1, 2, rng.randint(0, 63), in_width + mb - 1, in_width + mb])
        rq = fp.Requant(multiplier=rng.randint(0, (1 << mb) - 1), shift=shift)
        beats = _vectors(rng, 30, lanes=2, in_width=in_width)
        got, want = _run(rq, beats, 2, in_width, out_width, mb, seed=trial)
        np.testing.assert_array_equal(got, want, err_msg=f"{in_width=} {out_width=} {rq=}")


def test_requantizer_exhaustive_small():
    """Every 6-bit accumulator for every shift 0..11 and a few multipliers, 3-bit output."""
    accs = list(range(-32, 32))
    for mult in (1, 5, 7):
        for shift in range(12):
            rq = fp.Requant(multiplier=mult, shift=shift)
            beats = [[a] for a in accs]
            got, want = _run(rq, beats, 1, 6, 3, 3, seed=None)
            np.testing.assert_array_equal(got, want, err_msg=f"{rq=}")


def test_requantizer_full_throughput_and_latency():
    dut = Requantizer(2)
    beats = [pack([i, -i], 32) for i in range(20)]
    res = amaranth_sim.run(dut, Job(inputs={"i": beats}, expect={"o": 20},
                                    statics={"multiplier": 1 << 15, "shift": 15},
                                    stalls=StallProfile.none()))
    assert [unpack(w, 8, 2).tolist() for w in res.outputs["o"]] == [[i, -i] for i in range(20)]
    # one beat per cycle after the pipeline fills
    assert res.cycles <= 20 + Requantizer.LATENCY + 1


def test_requantizer_rejects_bad_params():
    with pytest.raises(ValueError, match="lanes"):
        Requantizer(0)


def test_requantizer_converts_to_verilog():
    text = verilog.convert(Requantizer(2), name="requant", emit_src=False)
    assert "module requant" in text
