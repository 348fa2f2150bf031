"""Normaliser (rtl/vitcod/normaliser.py) against the golden normalisation: rows handed off at
random times whenever a slot is free, ``out`` under random back-pressure; the rows leave in
order, one chunk per beat, each lane ``requantize(acc * reciprocal(l), out_requant)``."""
import random

import numpy as np
import pytest

from vitaccel.golden.fixedpoint import reciprocal, requantize
from vitaccel.golden.vitcod import ACC_BITS, E_BITS, RECIP_FRAC, out_requant
from vitaccel.rtl.vitcod.normaliser import Normaliser
from vitaccel.sim.job import unpack

from vitcod_bench import config, set_run, simulate


@pytest.mark.parametrize("normalisers", [1, 2, 3])
@pytest.mark.parametrize("seed", range(2))
def test_rows_out_in_order(normalisers, seed):
    cfg = config(lines=2, macs_per_line=2, d_max=6, normalisers=normalisers)    # chunks 3
    P, f, n = cfg.macs_per_line, 3, 9
    dut = Normaliser(cfg)
    rng = random.Random(seed)
    nrng = np.random.default_rng(seed)
    rq = out_requant(1 / 64, 1 / 64)
    lo = 1 << (E_BITS - 2)
    rows = []
    for i in range(n):
        if i == 3:                                           # a row with no kept key
            rows.append((0, [0] * (f * P)))
            continue
        l = int(nrng.integers(lo, 40 * lo))
        acc = [int(x) for x in nrng.integers(-(1 << (ACC_BITS - 3)), 1 << (ACC_BITS - 3), f * P)]
        rows.append((l, acc))
    want = []
    for l, acc in rows:
        r, _ = reciprocal(l, RECIP_FRAC, out_bits=E_BITS + 3)
        out = [int(requantize(a * int(r), rq, 8)) for a in acc]
        want += [out[c * P:(c + 1) * P] for c in range(f)]
    got = []

    async def source(ctx):
        set_run(ctx, dut.params, cfg, n=n, chunks=f, g=1, nnz=0, lines_d=1, dense_groups=1)
        ctx.set(dut.out_multiplier, rq.multiplier)
        ctx.set(dut.out_shift, rq.shift)
        ctx.set(dut.start, 1)
        await ctx.tick()
        ctx.set(dut.start, 0)
        for l, acc in rows:
            ctx.set(dut.row.l, l)
            for x, a in enumerate(acc):
                ctx.set(dut.row.acc[x], a)
            while True:
                take = rng.random() < 0.5
                ctx.set(dut.handoff, 0)
                if take and ctx.get(dut.slot_free):
                    ctx.set(dut.handoff, 1)
                    await ctx.tick()
                    break
                await ctx.tick()
        ctx.set(dut.handoff, 0)

    async def sink(ctx):
        for _ in range(100 * len(want)):
            if len(got) == len(want):
                return
            ready = rng.random() < 0.6
            ctx.set(dut.out.ready, ready)
            *_, valid, payload = await ctx.tick().sample(dut.out.valid,
                                                         dut.out.payload.as_value())
            if valid and ready:
                got.append([int(x) for x in unpack(payload, 8, P)])
        raise AssertionError(f"{len(got)} of {len(want)} beats")

    simulate(dut, sink, background=[source])
    assert got == want
