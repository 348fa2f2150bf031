"""ViTALiTy RTL == integer golden model, bit for bit, in the Amaranth simulator under random stalls.

Blocks on their own (SA-General, the divider array) and the whole core through the unit driver:
random data, n = 2 / n = n_max, constant and general t_D, forced t_D <= 0, several array sizes,
d = 64 and other d.
"""
import random

import numpy as np
import pytest
from amaranth.hdl import Value
from amaranth.sim import Simulator

from vitaccel import units
from vitaccel.golden import fixedpoint as fp
from vitaccel.rtl.vitality import DividerArray, SystolicArray, cmd_layout
from vitaccel.sim import amaranth_sim
from vitaccel.sim.job import Job, StallProfile, pack, pack_fields, unpack

u = units.get("vitality")


# --- SA-General on its own ----------------------------------------------------------------------

@pytest.mark.parametrize("rows,cols,seed", [(3, 2, 1), (1, 1, 2), (4, 4, 3), (2, 5, 4)])
def test_systolic_array_matches_dot_products(rows, cols, seed):
    """Passes with a new stationary tile each (no drain between them), random bubbles and random
    enable stalls: every vector gives psum + x @ W of its own pass's tile."""
    rng = random.Random(seed)
    dut = SystolicArray(rows, cols, operand_width=16, acc_width=32, side_width=16)
    passes = []
    for _ in range(5):
        tile = [[rng.randint(-2**15, 2**15 - 1) for _ in range(cols)] for _ in range(rows)]
        length = rng.randint(rows + cols - 1, rows + cols + 4)
        vecs = [([rng.randint(-2**15, 2**15 - 1) for _ in range(rows)],
                 [rng.randint(-2**20, 2**20) for _ in range(cols)]) for _ in range(length)]
        passes.append((tile, vecs))
    expected, got = [], []
    for tile, vecs in passes:
        w = np.array(tile, dtype=object)
        for x, ps in vecs:
            y = np.array(ps, dtype=object) + np.array(x, dtype=object) @ w
            expected.append([int(v) for v in y])

    async def bench(ctx):
        schedule = [(p, t) for p, (_, vecs) in enumerate(passes) for t in range(len(vecs))]
        pos = 0
        for _ in range(2000):
            en = rng.random() > 0.3
            ctx.set(dut.en, en)
            valid = en and pos < len(schedule) and rng.random() > 0.2
            ctx.set(dut.i_valid, valid)
            if valid:
                p, t = schedule[pos]
                tile, vecs = passes[p]
                x, ps = vecs[t]
                ctx.set(dut.i_tag, t == 0)
                ctx.set(dut.load, t == 0)
                ctx.set(Value.cast(dut.tile), pack([v for row in tile for v in row], 16))
                ctx.set(Value.cast(dut.i_x), pack(x, 16))
                ctx.set(Value.cast(dut.i_psum), pack(ps, 32))
                ctx.set(dut.i_side, pos)
                pos += 1
            else:
                ctx.set(dut.i_tag, 0)
                ctx.set(dut.load, 0)
            _, _, ov, oy, side = await ctx.tick().sample(dut.o_valid, Value.cast(dut.o_y),
                                                         dut.o_side)
            if en and ov:
                assert side == len(got), "results out of order"
                got.append(list(unpack(oy, 32, cols)))
            if len(got) == len(expected):
                return

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert got == expected


# --- the divider array ----------------------------------------------------------------------------

@pytest.mark.parametrize("shared", [True, False])
def test_divider_array_matches_div_round(shared):
    lanes, nw, dw, ow = 3, 12, 6, 8
    rng = random.Random(7 + shared)
    dut = DividerArray(lanes, nw, dw, ow, shared_divisor=shared)
    beats, want_q, want_z = [], [], []
    for k in range(12):
        nums = [rng.choice([-2**11, 2**11 - 1, 0, rng.randint(-2**11, 2**11 - 1)])
                for _ in range(lanes)]
        if shared:
            div = rng.choice([0, 1, 3, 63, rng.randint(1, 63)]) if k else 0
            divs = [div] * lanes
            beats.append(pack(nums, nw) | (div << (lanes * nw)))
        else:
            divs = [rng.choice([0, 1, 5, 63, rng.randint(1, 63)]) for _ in range(lanes)]
            beats.append(pack(nums, nw) | (pack(divs, dw) << (lanes * nw)))
        q, z = fp.div_round(np.array(nums), np.array(divs), out_bits=ow)
        want_q.append(list(q))
        want_z.append(list(z))
    job = Job(inputs={"i": beats}, expect={"o": len(beats)}, stalls=StallProfile(seed=3))
    res = amaranth_sim.run(dut, job)
    got_q = [list(unpack(w, ow, lanes)) for w in res.outputs["o"]]
    got_z = [[bool((w >> (lanes * ow + i)) & 1) for i in range(lanes)] for w in res.outputs["o"]]
    assert got_q == want_q
    assert got_z == want_z


# --- the whole core -------------------------------------------------------------------------

CORE_CASES = {
    # name: (Config kwargs, h, n)
    "n2_general": (dict(d=8, n_max=8, rows=2, cols=2, div_lanes=2, g_shift=5), 2, 2),
    "nmax_general": (dict(d=8, n_max=8, rows=2, cols=2, div_lanes=2, g_shift=5), 2, 8),
    "nmax_constant_td": (dict(d=8, n_max=8, rows=2, cols=2, div_lanes=3, g_shift=5,
                              constant_td=True), 2, 8),
    "n2_constant_td": (dict(d=12, n_max=10, rows=3, cols=4, div_lanes=5, g_shift=5,
                            constant_td=True), 1, 2),
    "ragged_tiles": (dict(d=10, n_max=9, rows=3, cols=4, div_lanes=4, g_shift=5), 2, 7),
    "one_by_one_array": (dict(d=5, n_max=5, rows=1, cols=1, div_lanes=1, g_shift=4), 1, 5),
    "tall_array": (dict(d=6, n_max=12, rows=4, cols=2, div_lanes=6, g_shift=5), 1, 12),
    "n1": (dict(d=8, n_max=8, rows=2, cols=4, div_lanes=8, g_shift=5), 1, 1),
    "demo": ("demo", 1, 24),
    "icebreaker_board_config": ("icebreaker", 1, 16),
}


@pytest.mark.parametrize("case", sorted(CORE_CASES))
def test_core_matches_golden_with_stalls(case):
    kwargs, h, n = CORE_CASES[case]
    if kwargs == "demo":
        cfg = u.demo_config()
    elif isinstance(kwargs, str):
        cfg = u.board_config(kwargs)
    else:
        cfg = u.Config(**kwargs)
    inp = u.random_inputs(cfg, seed=len(case), h=h, n=n)
    got, stats = u.simulate(cfg, **inp, simulator="amaranth", stalls=len(case) + 1)
    assert u.compare(u.golden(cfg, **inp), got) == []
    assert stats["error_flag"] == 0


def test_core_d64_matches_golden_with_stalls():
    """d = 64 (DeiT-Tiny's head size) on the default 8 x 8 array, a short sequence."""
    cfg = u.Config(n_max=20)
    inp = u.random_inputs(cfg, seed=11, h=1, n=20)
    got, _ = u.simulate(cfg, **inp, simulator="amaranth", stalls=2)
    assert u.compare(u.golden(cfg, **inp), got) == []


def _negative_denominator_data(h, n, d, seed=3):
    """Keys sharing a strong mean direction and large queries: without centring many rows have
    n sqrt(d) + q . k_sum <= 0."""
    rng = np.random.default_rng(seed)
    k = np.clip(rng.normal(60, 10, (h, n, d)), -128, 127).astype(np.int8)
    q = np.clip(rng.normal(0, 60, (h, n, d)), -128, 127).astype(np.int8)
    v = np.clip(rng.normal(0, 40, (h, n, d)), -128, 127).astype(np.int8)
    return {"q": q, "k": k, "v": v}


def test_core_flags_and_clamps_negative_denominators():
    cfg = u.Config(d=16, n_max=12, rows=4, cols=4, div_lanes=4, center_keys=False,
                   q_scale=1 / 16, k_scale=1 / 16, g_shift=5)
    inp = _negative_denominator_data(2, 12, 16)
    want = u.golden(cfg, **inp)
    assert 0 < want["denominator_clamped"].sum() < want["denominator_clamped"].size
    got, _ = u.simulate(cfg, **inp, simulator="amaranth", stalls=5)
    assert u.compare(want, got) == []


def test_core_rejects_bad_command_and_runs_the_next():
    """n = 0 and n > n_max raise the sticky error flag without consuming data; the next valid
    command runs normally."""
    cfg = u.Config(d=4, n_max=5, rows=2, cols=2, div_lanes=2, g_shift=4)
    inp = u.random_inputs(cfg, seed=4, h=1, n=3)
    good = u.make_job(cfg, **inp)
    layout = cmd_layout(cfg.n_max)
    bad = [pack_fields(layout, n=0), pack_fields(layout, n=7)]     # the n field is 3 bits wide
    job = Job(inputs={"cmd": bad + good.inputs["cmd"], "k": good.inputs["k"],
                      "v": good.inputs["v"], "q": good.inputs["q"]},
              expect=good.expect, status=["error"], stalls=StallProfile(seed=9))
    res = amaranth_sim.run(u.component(cfg), job)
    assert res.status["error"] == 1
    got = u.decode(cfg, 1, 3, res.outputs["z"])
    assert u.compare(u.golden(cfg, **inp), got) == []
