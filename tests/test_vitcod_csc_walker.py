"""CSCWalker (rtl/vitcod/csc_walker.py) against the compiler's CSC: the index stream of a
compiled mask, with random valid gaps, fills the index buffers with exactly what
``golden.vitcod.compile_mask`` says (each entry with its column and row-order position), stalls
the stream once per column step, and flags malformed streams."""
import random

import numpy as np
import pytest
from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.lib.memory import Memory

from vitaccel.golden import vitcod as gv
from vitaccel.rtl.vitcod.csc_walker import CSCWalker
from vitaccel.rtl.vitcod.buffers import read_port

from vitcod_bench import SMALL, command, config, set_run, simulate, stream_source, u

BUFFERS = ("glob", "scol", "cptr", "ent", "pos", "cnt")


def walk(cfg, cmd, words, seed, gap=0.3):
    """Run the walker on ``words``; return the buffers, the flags and the stall count."""
    dut = CSCWalker(cfg)
    m = Module()
    m.submodules.dut = dut
    mems = {}
    for name in BUFFERS:
        port = getattr(dut, f"{name}_wr")
        mems[name] = mem = Memory(shape=port.data.shape(), depth=1 << len(port.addr), init=[])
        m.submodules[name] = mem
        wiring.connect(m, port, mem.write_port())
    read_port(m, dut.scol_rd, mems["scol"].read_port(domain="comb"))
    read_port(m, dut.cptr_rd, mems["cptr"].read_port(domain="comb"))
    rng = random.Random(seed)
    got = {"clear": [], "stalls": 0}

    async def bench(ctx):
        set_run(ctx, dut.run, cfg, **cmd)
        ctx.set(dut.start, 1)
        await ctx.tick()
        ctx.set(dut.start, 0)
        ctx.set(dut.load, 1)
        for _ in range(20 * len(words) + 100):
            *_, done, clear_v, clear_row, valid, ready = await ctx.tick().sample(
                dut.done, dut.clear.v, dut.clear.row, dut.index.valid, dut.index.ready)
            if clear_v:
                got["clear"].append(clear_row)
            if done:
                break
            got["stalls"] += valid and not ready
        else:
            raise AssertionError("the walker did not finish")
        for name in BUFFERS:
            got[name] = [ctx.get(mems[name].data[i]) for i in range(mems[name].depth)]
        for flag in ("csc_error", "range_error", "count_mismatch"):
            got[flag] = ctx.get(getattr(dut, flag))
        got["first"] = [ctx.get(dut.first_counts[i]) for i in range(3)]

    simulate(m, bench, background=[stream_source(dut.index, words, rng, gap)])
    return got


def masks():
    rng = np.random.default_rng(3)
    yield "toy", gv.toy_mask(), 4
    for n in (5, 11, 16):
        mask = rng.random((n, n)) > 0.3
        mask[:, 0] = False                      # a global column
        yield f"random N={n}", mask, 4
    empty_cols = np.ones((12, 12), bool)
    empty_cols[:, 0] = False
    empty_cols[[0, 4, 9], 3] = empty_cols[7, 8] = empty_cols[2, 11] = False
    yield "empty columns", empty_cols, 4
    yield "no sparse entries", np.zeros((6, 6), bool), 2
    g0 = rng.random((9, 9)) > 0.5
    yield "G = 0", g0, 10


@pytest.mark.parametrize("name,mask,theta_d", list(masks()))
@pytest.mark.parametrize("gap", [0.0, 0.4])
def test_buffers_hold_the_compilers_csc(name, mask, theta_d, gap):
    cfg = config(theta_d=theta_d)
    cm = gv.compile_mask(mask, theta_d)
    L, n, ncols = cfg.lines, cm.n, cm.n - cm.g
    got = walk(cfg, command(cm, L, 2), u.index_words(cm, L), seed=len(name), gap=gap)
    assert got["glob"][:cm.g] == list(cm.glob_idx)
    assert got["scol"][:ncols] == list(cm.sparse_cols)
    assert got["cptr"][:ncols + 1] == list(cm.col_ptr)
    pos = np.empty(cm.nnz, np.int64)
    pos[cm.row_order] = np.arange(cm.nnz)
    for i in range(cm.nnz):                      # each entry with its row and its column
        assert got["ent"][i] == {"row": int(cm.row_idx[i]), "col": int(cm.entry_col[i])}, i
        assert got["pos"][i] == {"word": int(pos[i]) // L, "bank": int(pos[i]) % L}, i
    counts = list(np.diff(cm.row_ptr))
    assert got["cnt"][:n] == counts
    assert got["first"] == (counts + [0, 0, 0])[:3]
    assert sorted(got["clear"]) == list(range(n))
    assert (got["csc_error"], got["range_error"], got["count_mismatch"]) == (0, 0, 0)
    # one stall per column the walker steps over before the last entry, one per empty section
    if gap == 0.0:
        steps = int(np.nonzero(np.diff(cm.col_ptr))[0][-1]) if cm.nnz else 0
        assert got["stalls"] == steps + (cm.g == 0) + (ncols == 0) + (cm.nnz == 0)


def corrupt(edit):
    cfg = SMALL
    cm = gv.compile_mask(gv.toy_mask(), 4)
    words = u.index_words(cm, cfg.lines)
    g, ncols = cm.g, cm.n - cm.g
    edit(words, g, ncols)
    return walk(cfg, command(cm, cfg.lines, 2), words, seed=1)


@pytest.mark.parametrize("what,edit,flag", [
    ("col_ptr not monotone", lambda w, g, nc: w.__setitem__(g + nc + 3, 1), "csc_error"),
    ("col_ptr[0] != 0", lambda w, g, nc: w.__setitem__(g + nc, 1), "csc_error"),
    ("row_idx >= N",
     lambda w, g, nc: w.__setitem__(g + 2 * nc + 4, (w[g + 2 * nc + 4] & ~0xFF) | 9),
     "range_error"),
    ("global column >= N", lambda w, g, nc: w.__setitem__(0, 200), "range_error"),
    ("bank out of range",
     lambda w, g, nc: w.__setitem__(g + 2 * nc + 3, w[g + 2 * nc + 3] | 7 << 24),
     "range_error"),
    ("row counts do not sum to nnz", lambda w, g, nc: w.__setitem__(len(w) - 1, 5),
     "count_mismatch"),
])
def test_malformed_streams_raise_their_flag(what, edit, flag):
    got = corrupt(edit)
    assert got[flag], what
    others = {"csc_error", "range_error", "count_mismatch"} - {flag}
    assert not any(got[f] for f in others), what
