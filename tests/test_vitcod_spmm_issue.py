"""DenserWalk and SparserPacker (rtl/vitcod/spmm_issue.py) against the cycle model.

The two walks run as in the core: a row is handed off once both engines' done bits for it are
set, SPMM_DONE_LATENCY cycles after each engine's last issue for the row. Without stalls the
SpMM phase and both engines' issue cycles equal :func:`vitaccel.golden.vitcod.spmm_schedule`
cycle for cycle. With random stalls (the normaliser slot not free) the hand-offs come late; in
every case the Sparser engine's pairs are the row-ordered (entry, chunk) stream, each pair once,
in order, on consecutive lines, and neither engine works on a row whose bank is not open."""
import random

import numpy as np
import pytest
from amaranth.hdl import Module
from amaranth.lib.memory import Memory

from vitaccel.golden.vitcod import SPMM_DONE_LATENCY, spmm_schedule
from vitaccel.rtl.vitcod.buffers import read_port
from vitaccel.rtl.vitcod.spmm_issue import DenserWalk, SparserPacker

from vitcod_bench import config, set_run, simulate


def run_walks(cfg, cnt, f, ld, dgroups, free_p=1.0, seed=0):
    n = len(cnt)
    L = cfg.lines
    m = Module()
    m.submodules.dense = dense = DenserWalk(cfg)
    m.submodules.sparse = sparse = SparserPacker(cfg)
    m.submodules.cnt = mem = Memory(shape=16, depth=cfg.n_max,
                                    init=[int(c) for c in cnt] + [0] * (cfg.n_max - n))
    read_port(m, sparse.cnt_rd, mem.read_port(domain="comb"))
    rng = random.Random(seed)
    log = {"ops": [], "pairs": [], "cycles": 0, "busy_d": 0, "busy_s": 0}
    cmd = dict(n=n, chunks=f, g=dgroups * ld, nnz=int(sum(cnt)), lines_d=ld,
               dense_groups=dgroups)

    async def bench(ctx):
        for port in (dense.params, sparse.params):
            set_run(ctx, port, cfg, **cmd)
        for i in range(3):
            ctx.set(sparse.first_counts[i], int(cnt[i]) if i < n else 0)
        ctx.set(dense.start, 1)
        ctx.set(sparse.start, 1)
        await ctx.tick()
        ctx.set(dense.start, 0)
        ctx.set(sparse.start, 0)
        ctx.set(dense.run, 1)
        ctx.set(sparse.run, 1)
        done_d, done_s, hand, t = {}, {}, 0, 0
        while ctx.get(dense.more) or ctx.get(sparse.more):
            assert t < 50 * (n + int(sum(cnt))) * f + 1000, "the walks do not finish"
            handoff = (hand < n and done_d.get(hand, t + 1) <= t and done_s.get(hand, t + 1) <= t
                       and rng.random() < free_p)
            for walk in (dense, sparse):
                ctx.set(walk.handoff, handoff)
            op = dense.op
            if ctx.get(op.op):
                log["busy_d"] += 1
                log["ops"].append((ctx.get(op.row), ctx.get(op.word), ctx.get(op.gbase),
                                   ctx.get(op.chunk)))
            row = ctx.get(sparse.row)
            if ctx.get(op.op) or ctx.get(op.leave):      # at most one row ahead of the hand-off
                assert ctx.get(op.row) <= hand + 1
            if ctx.get(sparse.go):
                log["busy_s"] += 1
                assert row <= hand + 1
                pairs = []
                for ln in range(L):
                    p = sparse.pairs[ln]
                    if ctx.get(p.v):
                        bank = ctx.get(p.score_bank)
                        pairs.append((ln, ctx.get(p.chunk), ctx.get(p.b), bank,
                                      ctx.get(p.acc_bank), ctx.get(sparse.bank_addr[bank])))
                log["pairs"].append((row, pairs))
            if ctx.get(op.leave):
                done_d[ctx.get(op.row)] = t + SPMM_DONE_LATENCY
            if ctx.get(sparse.leave):
                done_s[row] = t + SPMM_DONE_LATENCY
            hand += handoff
            log["cycles"] += 1
            t += 1
            await ctx.tick()

    simulate(m, bench)
    return log


def check_streams(cfg, log, cnt, f, ld, dgroups):
    """Every (entry, chunk) pair once, in row order, on consecutive lines from line ld; the
    Denser engine's ops: every (row, group, chunk) once, in order."""
    n, L = len(cnt), cfg.lines
    row_of = np.repeat(np.arange(n), cnt)
    stream = [(k, c) for k in range(int(sum(cnt))) for c in range(f)]
    at = 0
    for row_a, pairs in log["pairs"]:
        assert pairs and [p[0] for p in pairs] == list(range(ld, ld + len(pairs)))
        assert len(pairs) <= min(L - ld, f)
        for ln, chunk, b, bank, acc_bank, word in pairs:
            k, c = stream[at]
            at += 1
            assert (chunk, bank, word) == (c, k % L, k // L)
            assert row_of[k] == row_a + b and b in (0, 1) and acc_bank == row_of[k] % 2
    assert at == len(stream)
    want = [(r, g * n + r, g * ld, c) for r in range(n) for g in range(dgroups)
            for c in range(f)]
    assert log["ops"] == want


def cases():
    rng = np.random.default_rng(5)
    yield "every row kept", rng.integers(1, 5, 14), 8, 1, 2
    yield "empty rows", np.array([3, 0, 0, 1, 4, 0, 2, 1, 0, 0, 5]), 3, 2, 1
    yield "short rows pack the lines", np.array([1, 1, 2, 1, 1, 1, 3, 1]), 5, 1, 1
    yield "no global columns", rng.integers(0, 6, 12), 2, 0, 0
    yield "one long row", np.array([1, 1, 20, 1, 1, 0, 1]), 4, 1, 3
    yield "more lines than chunks", rng.integers(0, 4, 10), 1, 1, 2
    yield "no sparse entries", np.zeros(6, int), 3, 2, 2


@pytest.mark.parametrize("name,cnt,f,ld,dgroups", list(cases()))
def test_against_the_cycle_model(name, cnt, f, ld, dgroups):
    cfg = config(d_max=24, macs_per_line=3)           # chunks <= 8
    log = run_walks(cfg, cnt, f, ld, dgroups)
    check_streams(cfg, log, cnt, f, ld, dgroups)
    spmm, busy_d, busy_s, _ = spmm_schedule(cnt, f, dgroups, cfg.lines - ld)
    assert (log["cycles"], log["busy_d"], log["busy_s"]) == (spmm, busy_d, busy_s), name


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("name,cnt,f,ld,dgroups", list(cases()))
def test_late_handoffs(name, cnt, f, ld, dgroups, seed):
    cfg = config(d_max=24, macs_per_line=3)
    log = run_walks(cfg, cnt, f, ld, dgroups, free_p=0.2, seed=seed)
    check_streams(cfg, log, cnt, f, ld, dgroups)
