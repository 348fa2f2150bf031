"""OperandFetch (rtl/vitcod/operand_fetch.py) against a model of one line's reads: random issues
(with gaps) in both phases, on a Denser and a Sparser line; the shared read data arrives as it
does from the core's buffers (validity and row maxima one cycle after the issue, the score
buffers two). Phase 1: the Q and K words of the query row and key column, and the score's
sideband, SDDMM_LATENCY cycles after the issue; phase 2: the exp LUT value, the shift, ``e``'s
validity, the V word and the pair's sideband, SPMM_LATENCY cycles after it."""
import random

import pytest
from amaranth.hdl import Module, Value
from amaranth.lib import wiring
from amaranth.lib.memory import Memory

from vitaccel.golden.vitcod import T_FRAC
from vitaccel.rtl.vitcod.layouts import (bank_layout, dense_op_layout, lane_layout, pair_layout,
                                         row_max_layout, sddmm_issue_layout)
from vitaccel.rtl.vitcod.operand_fetch import EXP_LUT_SHIFTED, OperandFetch
from vitaccel.sim.job import pack_fields

from vitcod_bench import config, set_run, simulate

N, G, NNZ, LD = 12, 5, 30, 2


def bench(cfg, ln, spmm, seed):
    L, FM, P = cfg.lines, cfg.chunks_max, cfg.macs_per_line
    rng = random.Random(seed)
    dut = OperandFetch(cfg, ln)
    m = Module()
    m.submodules.dut = dut
    contents = {
        "glob": [rng.randrange(N) for _ in range(cfg.g_max)],
        "ent": [rng.randrange(N) | rng.randrange(N) << 4 for _ in range(cfg.nnz_max)],
        "pos": [rng.randrange(1 << 24) for _ in range(cfg.nnz_max)],
        **{x: [rng.randrange(1 << (8 * P)) for _ in range(cfg.n_max * FM)] for x in "qkv"},
    }
    for name, init in contents.items():
        port = getattr(dut, f"{name}_rd")
        m.submodules[name] = mem = Memory(shape=len(Value.cast(port.data)), depth=len(init),
                                          init=init)
        wiring.connect(m, port, mem.read_port())
    ent = [(e & 15, e >> 4) for e in contents["ent"]]
    f, t_lo = 3, -(1 << 12)
    issues, want = [], []
    for i in range(60):
        iss = dict(d=rng.random() < 0.7, d_gbase=rng.randrange(0, G + 2, LD),
                   d_row=rng.randrange(N), d_word=0, d_chunk=rng.randrange(f), s=rng.random() < 0.7,
                   s_kbase=rng.randrange(0, NNZ + 2), s_chunk=rng.randrange(f))
        op = dict(op=rng.random() < 0.7, leave=0, row=0, word=0,
                  gbase=rng.randrange(0, G + 2, LD), chunk=rng.randrange(f))
        pair = dict(v=rng.random() < 0.7, b=rng.randrange(2), chunk=rng.randrange(f),
                    score_bank=rng.randrange(L), acc_bank=rng.randrange(2))
        dv = rng.randrange(2)
        maxima = [dict(dense=rng.randrange(0, 1 << 14), sparse=rng.randrange(0, 1 << 14))
                  for _ in "dab"]
        lane = dict(t=rng.randrange(t_lo, 0), ok=rng.randrange(2))
        banks = [dict(t=rng.randrange(t_lo, 0), col=rng.randrange(N)) for _ in range(L)]
        issues.append((iss, op, pair, dv, maxima, lane, banks))
        dense = ln < LD
        if not spmm:
            kidx = iss["s_kbase"] + ln - LD
            row, col = ent[kidx] if 0 <= kidx < cfg.nnz_max else (None, None)
            chunk = iss["d_chunk"] if dense else iss["s_chunk"]
            if dense:
                row, col = iss["d_row"], contents["glob"][(iss["d_gbase"] + ln) % cfg.g_max]
            want.append(dict(
                q=contents["q"][row * FM + chunk], k=contents["k"][col * FM + chunk],
                v=int(iss["d"] if dense else iss["s"]),
                ok=int((iss["d_gbase"] + ln < G) and dv) if dense else int(kidx < NNZ),
                first=int(chunk == 0), last=int(chunk == f - 1),
                row=iss["d_row"] if dense else row))
        else:
            if dense:
                mx = maxima[0]
                t, chunk = lane["t"], op["chunk"]
                col = contents["glob"][(op["gbase"] + ln) % cfg.g_max]
                ok = lane["ok"] and op["gbase"] + ln < G and op["op"]
            else:
                mx = maxima[2] if pair["b"] else maxima[1]
                bank = banks[pair["score_bank"]]
                t, col, chunk, ok = bank["t"], bank["col"], pair["chunk"], pair["v"]
            x = max(mx["dense"], mx["sparse"]) - t
            want.append(dict(lut=EXP_LUT_SHIFTED[x & ((1 << (T_FRAC + 2)) - 1)],
                             hi=min(x >> T_FRAC, 31) >> 2, eok=int(ok),
                             vword=contents["v"][col * FM + chunk],
                             tag=(int(pair["v"]), pair["chunk"], pair["acc_bank"]) if not dense
                             else None))
    got = []

    async def process(ctx):
        set_run(ctx, dut.params, cfg, n=N, chunks=f, g=G, nnz=NNZ, lines_d=LD, dense_groups=3)
        ctx.set(dut.spmm, spmm)
        latency = OperandFetch.SPMM_LATENCY if spmm else OperandFetch.SDDMM_LATENCY
        for cycle in range(len(issues) + latency + 1):
            if cycle < len(issues):
                iss, op, pair = issues[cycle][:3]
                ctx.set(Value.cast(dut.sddmm), pack_fields(sddmm_issue_layout(cfg), **iss))
                ctx.set(Value.cast(dut.dense_op), pack_fields(dense_op_layout(cfg), **op))
                ctx.set(Value.cast(dut.pair), pack_fields(pair_layout(cfg), **pair))
            if 1 <= cycle <= len(issues):                   # one cycle after the issue
                _, _, _, dv, maxima, _, _ = issues[cycle - 1]
                ctx.set(dut.dv, dv)
                for port, mx in zip((dut.max_d, dut.max_a, dut.max_b), maxima):
                    ctx.set(Value.cast(port), pack_fields(row_max_layout(), **mx))
            if 2 <= cycle <= len(issues) + 1:               # two cycles after the issue
                *_, lane, banks = issues[cycle - 2]
                ctx.set(Value.cast(dut.dense_lane), pack_fields(lane_layout(), **lane))
                for b, bank in enumerate(banks):
                    ctx.set(Value.cast(dut.banks[b]), pack_fields(bank_layout(cfg), **bank))
            sample = (await ctx.tick().sample(
                dut.q, dut.k, dut.score.v, dut.score.ok, dut.score.first, dut.score.last,
                dut.score.row, dut.lut, dut.hi, dut.eok, dut.v, dut.pair_tag.v,
                dut.pair_tag.chunk, dut.pair_tag.bank))[2:]
            if cycle >= latency:
                got.append(sample)

    simulate(m, process)
    return want, got


@pytest.mark.parametrize("ln", [0, 1, 2, 3])
@pytest.mark.parametrize("spmm", [0, 1])
@pytest.mark.parametrize("seed", range(2))
def test_operands_of_both_phases(ln, spmm, seed):
    cfg = config(g_max=8, nnz_max=40)
    want, got = bench(cfg, ln, spmm=spmm, seed=seed)
    for i, w in enumerate(want):
        q, k, v, ok, first, last, row, lut, hi, eok, vword, *tag = got[i]
        if not spmm:
            assert v == w["v"] and first == w["first"] and last == w["last"], i
            if w["v"] and w["row"] is not None:
                assert (q, k, ok, row) == (w["q"], w["k"], w["ok"], w["row"]), i
        else:
            assert (lut, hi, eok, vword) == (w["lut"], w["hi"], w["eok"], w["vword"]), i
            if w["tag"] is not None:
                assert tuple(tag) == w["tag"], i
