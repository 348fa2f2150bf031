"""MacLine (rtl/vitcod/line.py) against a plain model: phase 1, dot products of Q and K chunks
with random gaps, requantised as the golden model does, with their sideband, SCORE_LATENCY
cycles after the last chunk; phase 2, ``e`` from the LUT value and shift and ``e * v`` on every
lane, PRODUCT_LATENCY cycles after the operands."""
import random

import numpy as np
import pytest
from amaranth.hdl import Value

from vitaccel.golden.fixedpoint import requantize
from vitaccel.golden.vitcod import E_BITS, T_BITS, score_requant
from vitaccel.rtl.vitcod.layouts import line_tag_layout, score_tag_layout
from vitaccel.rtl.vitcod.line import MacLine
from vitaccel.sim.job import pack, pack_fields

from vitcod_bench import config, simulate


def run_line(cfg, beats, spmm, rq=None):
    """``beats``: per cycle a dict of stage-2 inputs or None (idle); returns per cycle the
    outputs."""
    dut = MacLine(cfg)
    out = []

    async def bench(ctx):
        ctx.set(dut.spmm, spmm)
        if rq is not None:
            ctx.set(dut.score_multiplier, rq.multiplier)
            ctx.set(dut.score_shift, rq.shift)
        for beat in beats + [None] * (MacLine.SCORE_LATENCY + 2):
            beat = beat or {}
            for name in ("q", "k", "v", "lut", "hi", "eok"):
                ctx.set(getattr(dut, name), beat.get(name, 0))
            ctx.set(Value.cast(dut.score_in), beat.get("score_in", 0))
            ctx.set(Value.cast(dut.pair_in), beat.get("pair_in", 0))
            P = cfg.macs_per_line
            sampled = await ctx.tick().sample(
                dut.score.v, dut.score.t, dut.score.ok, dut.score.pos.as_value(), dut.score.col,
                dut.score.row, dut.e, Value.cast(dut.pair_out), dut.busy,
                *(dut.prod[j] for j in range(P)))
            sv, st, sok, spos, scol, srow, e, pair, busy, *prods = sampled[2:]
            out.append(dict(score=(sv, st, sok, spos, scol, srow), e=e, pair=pair, busy=busy,
                            prod=prods))

    simulate(dut, bench)
    return out


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("chunks", [1, 3])
def test_dot_products_to_scores(seed, chunks):
    cfg = config(macs_per_line=3, d_max=9)
    P = cfg.macs_per_line
    rng = random.Random(seed)
    nrng = np.random.default_rng(seed)
    rq = score_requant(0.05, 0.04, chunks * P)
    beats, want = [], {}
    for dot in range(8):
        q = nrng.integers(-128, 128, (chunks, P))
        k = nrng.integers(-128, 128, (chunks, P))
        side = dict(ok=rng.randrange(2), pos=rng.randrange(1 << 24), col=rng.randrange(16),
                    row=rng.randrange(16))
        for c in range(chunks):
            while rng.random() < 0.3:
                beats.append(None)
            tag = pack_fields(score_tag_layout(cfg), v=1, first=c == 0, last=c == chunks - 1,
                              **side)
            beats.append(dict(q=pack(q[c], 8), k=pack(k[c], 8), score_in=tag))
        t = int(requantize(int((q * k).sum()), rq, T_BITS))
        want[len(beats) - 1 + MacLine.SCORE_LATENCY] = (1, t, side["ok"], side["pos"],
                                                         side["col"], side["row"])
    out = run_line(cfg, beats, spmm=0, rq=rq)
    for cycle, o in enumerate(out):
        sv, st, *side = o["score"]
        if cycle in want:
            assert (sv, st, *side) == want[cycle], cycle
        else:
            assert not sv, cycle
    last = max(want)
    assert out[last - 1]["busy"] and not out[last + 1]["busy"]


@pytest.mark.parametrize("seed", range(3))
def test_exp_and_products(seed):
    cfg = config(macs_per_line=4, d_max=8)
    P = cfg.macs_per_line
    rng = random.Random(seed)
    nrng = np.random.default_rng(seed)
    beats = []
    for _ in range(40):
        if rng.random() < 0.3:
            beats.append(None)
            continue
        v = nrng.integers(-128, 128, P)
        beats.append(dict(lut=rng.randrange(1 << (E_BITS + 2)), hi=rng.randrange(8),
                          eok=int(rng.random() < 0.8), v=pack(v, 8), lanes=v,
                          pair_in=pack_fields(line_tag_layout(cfg), v=1, chunk=rng.randrange(2),
                                              bank=rng.randrange(2))))
    out = run_line(cfg, beats, spmm=1)
    for cycle, beat in enumerate(beats):
        if beat is None:
            continue
        o = out[cycle + MacLine.PRODUCT_LATENCY]
        e = ((beat["lut"] >> (4 * beat["hi"])) + 1) >> 1 if beat["eok"] else 0
        assert o["e"] == e and o["pair"] == beat["pair_in"]
        assert o["prod"] == [e * int(x) for x in beat["lanes"]]
        assert not o["score"][0]
