"""Accumulator (rtl/vitcod/accumulator.py) against per-row sums: random stage-4 traffic of both
engines (Denser ops summed across the Denser lines, Sparser pairs with distinct chunks on rows
A and A + 1, each engine at most one row ahead of the hand-off), random ``slot_free`` stalls;
every row is handed off in order, once both engines have left it, holding exactly its sums."""
import random

import pytest
from amaranth.hdl import Value

from vitaccel.golden.vitcod import E_BITS
from vitaccel.rtl.vitcod.accumulator import Accumulator
from vitaccel.rtl.vitcod.layouts import PRODUCT_BITS, line_tag_layout, spmm_tag_layout
from vitaccel.sim.job import pack_fields

from vitcod_bench import config, set_run, simulate


@pytest.mark.parametrize("ld", [0, 1, 2])
@pytest.mark.parametrize("seed", range(3))
def test_rows_hold_their_sums(ld, seed):
    cfg = config(lines=4, macs_per_line=2, d_max=6)        # chunks 3
    L, P, f, n = cfg.lines, cfg.macs_per_line, 3, 10
    dut = Accumulator(cfg)
    rng = random.Random(seed)
    lo, hi = -(1 << (PRODUCT_BITS - 2)), (1 << (PRODUCT_BITS - 2)) - 1
    want_acc = [[0] * (cfg.chunks_max * P) for _ in range(n)]
    want_l = [0] * n
    d_ops = [rng.randrange(0, 5) if ld else 0 for _ in range(n)]     # ops per row
    s_ops = [rng.randrange(0, 4) if ld < L else 0 for _ in range(n)]
    got = []

    async def bench(ctx):
        set_run(ctx, dut.params, cfg, n=n, chunks=f, g=ld, nnz=0 if ld == L else 1, lines_d=ld,
                dense_groups=1 if ld else 0)
        ctx.set(dut.start, 1)
        await ctx.tick()
        ctx.set(dut.start, 0)
        hand, drow, srow, dleft, sleft = 0, 0, 0, d_ops[0], s_ops[0]
        for _ in range(40 * n):
            if hand == n:
                break
            tag = dict(d=0, dlast=0, dbank=drow % 2, dfirst=0, dchunk=0, send=0, sbank=srow % 2)
            pairs = [0] * L
            prods = [[rng.randint(lo, hi) for _ in range(P)] for _ in range(L)]
            es = [rng.randrange(1 << (E_BITS + 1)) for _ in range(L)]
            if drow < n and drow <= hand + 1 and rng.random() < 0.7:
                if dleft:
                    c, first = rng.randrange(f), rng.random() < 0.5
                    tag.update(d=1, dchunk=c, dfirst=first)
                    for j in range(P):
                        want_acc[drow][c * P + j] += sum(prods[ln][j] for ln in range(ld))
                    if first:
                        want_l[drow] += sum(es[:ld])
                    dleft -= 1
                if not dleft:
                    tag["dlast"] = 1
                    drow += 1
                    dleft = d_ops[drow] if drow < n else 0
            if srow < n and srow <= hand + 1 and rng.random() < 0.7:
                chunks = rng.sample(range(f), k=min(f, L - ld))
                split = rng.randrange(ld, L + 1)           # row A's last cycle: row B after it
                for ln, c in zip(range(ld, L), chunks):
                    row = srow if sleft > 1 or (sleft and ln < split) else srow + 1
                    if row >= n or row > hand + 1 or (row > srow and not s_ops[row]) \
                            or rng.random() < 0.3:
                        continue
                    pairs[ln] = pack_fields(line_tag_layout(cfg), v=1, chunk=c, bank=row % 2)
                    for j in range(P):
                        want_acc[row][c * P + j] += prods[ln][j]
                    if c == 0:
                        want_l[row] += es[ln]
                if sleft:
                    sleft -= 1
                if not sleft:
                    tag["send"] = 1
                    srow += 1
                    sleft = s_ops[srow] if srow < n else 0
            for ln in range(L):
                for j in range(P):
                    ctx.set(dut.prod[ln][j], prods[ln][j])
                ctx.set(dut.e[ln], es[ln])
                ctx.set(Value.cast(dut.pair[ln]), pairs[ln])
            ctx.set(Value.cast(dut.tag), pack_fields(spmm_tag_layout(cfg), **tag))
            ctx.set(dut.slot_free, rng.random() < 0.6)
            sample = await ctx.tick().sample(dut.handoff, dut.row.l,
                                             *(dut.row.acc[x] for x in range(f * P)))
            handoff, l, *acc = sample[2:]
            if handoff:
                got.append((l, acc))
                hand += 1
        assert hand == n, "rows not handed off"

    simulate(dut, bench)
    assert [g[0] for g in got] == want_l
    assert [g[1] for g in got] == [row[:f * P] for row in want_acc]
