"""ScoreWriter (rtl/vitcod/score_writer.py) against a model of the score buffers: dense words
written whole at their word, each sparse score at its (word, bank) position one per cycle,
lowest line first, at random arrival times (a Sparser group every ``lines_s`` cycles or
later, as in SDDMM); every write offers its row-max update."""
import random

import pytest
from amaranth.hdl import Module
from amaranth.lib.memory import Memory

from vitaccel.golden.vitcod import T_BITS
from vitaccel.rtl.vitcod.layouts import T_MIN, bank_depth, dense_depth
from vitaccel.rtl.vitcod.score_writer import ScoreWriter

from vitcod_bench import config, set_run, simulate


def plain_memory(m, name, wr, depth):
    m.submodules[name] = mem = Memory(shape=len(wr.data), depth=depth, init=[])
    port = mem.write_port()
    m.d.comb += [port.addr.eq(wr.addr), port.data.eq(wr.data), port.en.eq(wr.en)]
    return mem


@pytest.mark.parametrize("ld", [0, 1, 3])
@pytest.mark.parametrize("seed", range(3))
def test_scores_land_at_their_positions(ld, seed):
    cfg = config(nnz_max=40)
    L = cfg.lines
    dut = ScoreWriter(cfg)
    m = Module()
    m.submodules.dut = dut
    dense_mem = plain_memory(m, "dense", dut.dense_wr, dense_depth(cfg))
    banks = [plain_memory(m, f"bank{b}", w, bank_depth(cfg)) for b, w in enumerate(dut.bank_wr)]
    rng = random.Random(seed)
    lo, hi = -(1 << (T_BITS - 1)), (1 << (T_BITS - 1)) - 1
    want_dense, want_banks = {}, {}
    want_dmax, want_smax = [], []
    got_dmax, got_smax = [], []
    # sparse positions: a permutation, so that no two scores share one
    free = list(range(bank_depth(cfg) * L + 6))               # a few past the banks' end
    rng.shuffle(free)

    async def bench(ctx):
        set_run(ctx, dut.params, cfg, n=16, chunks=1, g=ld, nnz=0 if ld == L else 30,
                lines_d=ld, dense_groups=1 if ld else 0)
        next_group = 0
        for cycle in range(120):
            for ln in range(L):
                ctx.set(dut.scores[ln].v, 0)
            more = cycle < 100                       # then the holding registers drain
            dense_now = more and ld and rng.random() < 0.3
            sparse_now = more and ld < L and cycle >= next_group and free and rng.random() < 0.5
            row = rng.randrange(16)
            if dense_now:
                word = rng.randrange(dense_depth(cfg))
                ctx.set(dut.dword, word)
                lanes = []
                for ln in range(ld):
                    t, ok = rng.randint(lo, hi), rng.random() < 0.8
                    ctx.set(dut.scores[ln].v, 1)
                    ctx.set(dut.scores[ln].t, t)
                    ctx.set(dut.scores[ln].ok, ok)
                    ctx.set(dut.scores[ln].row, row)
                    lanes.append((t, ok))
                want_dense[word] = lanes
                want_dmax.append((row, [t if ok else T_MIN for t, ok in lanes]))
            if sparse_now:
                next_group = cycle + (L - ld) + rng.randrange(3)
                for ln in range(ld, L):
                    if not free:
                        break
                    t, ok = rng.randint(lo, hi), rng.random() < 0.85
                    col, r = rng.randrange(16), rng.randrange(16)
                    pos = free.pop()
                    ctx.set(dut.scores[ln].v, 1)
                    ctx.set(dut.scores[ln].t, t)
                    ctx.set(dut.scores[ln].ok, ok)
                    ctx.set(dut.scores[ln].pos.word, pos // L)
                    ctx.set(dut.scores[ln].pos.bank, pos % L)
                    ctx.set(dut.scores[ln].col, col)
                    ctx.set(dut.scores[ln].row, r)
                    if ok:
                        if pos // L < bank_depth(cfg):
                            want_banks[pos] = (t, col)
                        want_smax.append((r, t))
            sample = await ctx.tick().sample(
                dut.dense_max.v, dut.dense_max.row, *(dut.dense_max.t[i] for i in range(L)),
                dut.sparse_max.v, dut.sparse_max.row, dut.sparse_max.t[0])
            dv, drow, *rest = sample[2:]
            dts, (sv, srow, st) = rest[:L], rest[L:]
            if dv:
                got_dmax.append((drow, dts[:ld]))
            if sv:
                got_smax.append((srow, st))
        assert not ctx.get(dut.busy)
        for word, lanes in want_dense.items():
            value = ctx.get(dense_mem.data[word])
            for ln in range(L):
                lane = value >> (ln * (T_BITS + 1)) & ((1 << (T_BITS + 1)) - 1)
                t, ok = lane & ((1 << T_BITS) - 1), lane >> T_BITS
                t -= (t >> (T_BITS - 1)) << T_BITS
                assert (t, ok) == ((lanes[ln][0], lanes[ln][1]) if ln < ld else (t, 0))
        for pos, (t, col) in want_banks.items():
            value = ctx.get(banks[pos % L].data[pos // L])
            got_t = value & ((1 << T_BITS) - 1)
            got_t -= (got_t >> (T_BITS - 1)) << T_BITS
            assert (got_t, value >> T_BITS) == (t, col)

    simulate(m, bench)
    assert got_dmax == want_dmax
    assert got_smax == want_smax
