"""RowMax (rtl/vitcod/row_max.py) against a dict of maxima: rows cleared as in LOAD, then an
update in most cycles (random gaps), many of them for the same row back to back (which only the
read-modify-write's forwarding gets right); once ``busy`` falls the memory holds every row's
maximum, and phase 2's read port follows ``spmm_row``."""
import random

import pytest
from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.lib.memory import Memory

from vitaccel.golden.vitcod import T_BITS
from vitaccel.rtl.vitcod.layouts import T_MIN
from vitaccel.rtl.vitcod.row_max import RowMax

from vitcod_bench import config, simulate


@pytest.mark.parametrize("lanes", [1, 3, 4])
@pytest.mark.parametrize("seed", range(3))
def test_maxima_after_back_to_back_updates(lanes, seed):
    cfg = config()
    n = 9
    dut = RowMax(cfg, lanes)
    m = Module()
    m.submodules.dut = dut
    m.submodules.mem = mem = Memory(shape=dut.wr.data.shape(), depth=cfg.n_max, init=[])
    wr = mem.write_port()
    wiring.connect(m, dut.wr, wr)
    wiring.connect(m, dut.rd, mem.read_port(transparent_for=(wr,)))
    rng = random.Random(seed)
    lo, hi = -(1 << (T_BITS - 1)), (1 << (T_BITS - 1)) - 1
    want = {row: T_MIN for row in range(n)}

    async def bench(ctx):
        for row in range(n):                                 # LOAD: clear every row
            ctx.set(dut.clear.v, 1)
            ctx.set(dut.clear.row, row)
            await ctx.tick()
        ctx.set(dut.clear.v, 0)
        row = 0
        for _ in range(300):
            v = rng.random() < 0.8
            if rng.random() < 0.4:                           # often the same row again
                row = rng.randrange(n)
            ts = [rng.randint(lo, hi) if rng.random() < 0.9 else T_MIN for _ in range(lanes)]
            ctx.set(dut.update.v, v)
            ctx.set(dut.update.row, row)
            for i, t in enumerate(ts):
                ctx.set(dut.update.t[i], t)
            if v:
                want[row] = max(want[row], *ts)
            await ctx.tick()
        ctx.set(dut.update.v, 0)
        for _ in range(10):
            await ctx.tick()
        assert not ctx.get(dut.busy)
        assert [ctx.get(mem.data[r]) for r in range(n)] == [want[r] for r in range(n)]
        ctx.set(dut.spmm, 1)                                 # phase 2 reads
        for r in range(n):
            ctx.set(dut.spmm_row, r)
            await ctx.tick()
            assert ctx.get(wr.en) == 0
            *_, data = await ctx.tick().sample(dut.rd.data)
            assert data == want[r]

    simulate(m, bench)
