"""HeatViT RTL blocks == golden.heatvit integer functions, bit for bit, in the Amaranth simulator
under seeded random valid gaps and ready back-pressure."""
import numpy as np
import pytest

from vitaccel.golden import heatvit as G
from vitaccel.golden.fixedpoint import quantize_multiplier
from vitaccel.rtl.heatvit import GELU, ISqrt, LayerNorm, Sigmoid
from vitaccel.sim import amaranth_sim
from vitaccel.sim.job import Job, StallProfile, unpack


def _signed(words, width):
    return np.array([unpack(w, width, 1)[0] for w in words])


@pytest.mark.parametrize("kind", ["plan", "hard"])
def test_sigmoid(kind):
    rng = np.random.default_rng(1)
    x = np.concatenate([[-32768, 32767, 0, -1, 1, 255, 256, 607, 608, 1279, 1280, -256, -608, -1280],
                        rng.integers(-1600, 1600, 60), rng.integers(-32768, 32767, 10)])
    job = Job(inputs={"i": [int(v) & 0xFFFF for v in x]}, expect={"o": len(x)},
              stalls=StallProfile(seed=2))
    res = amaranth_sim.run(Sigmoid(kind), job)
    assert np.array_equal(np.array(res.outputs["o"]), G.sigmoid_q(x, kind))


@pytest.mark.parametrize("delta,seed", [(1.0, 3), (0.5, 4)])
def test_gelu(delta, seed):
    rng = np.random.default_rng(seed)
    acc = np.concatenate([[0, 1, -1, 2**31 - 1, -2**31, 5000, -5000],
                          rng.integers(-60000, 60000, 60), rng.integers(-2**31, 2**31 - 1, 8)])
    rq_in, rq_out = quantize_multiplier(1e-4 * 2 ** 10), quantize_multiplier(2 ** -25 * 16)
    a, one = round(delta * G.GELU_A * 2 ** 14), round(delta * 2 ** 14)
    job = Job(inputs={"i": [int(v) & 0xFFFFFFFF for v in acc]}, expect={"o": len(acc)},
              statics={"in_multiplier": rq_in.multiplier, "in_shift": rq_in.shift,
                       "out_multiplier": rq_out.multiplier, "out_shift": rq_out.shift,
                       "a": a & 0xFFFF, "one": one}, stalls=StallProfile(seed=seed))
    res = amaranth_sim.run(GELU(), job)
    assert np.array_equal(_signed(res.outputs["o"], 8), G.gelu_q(acc, rq_in, rq_out, a, one))


def test_square_int8_every_value():
    """The LayerNorm's multiplier-free square of an int8, exhaustively (-128 included)."""
    from amaranth.hdl import Module, Signal, signed
    from amaranth.sim import Simulator
    from vitaccel.rtl.heatvit.layernorm import square_int8
    x, sq = Signal(signed(8)), Signal(16)
    m = Module()
    m.d.comb += sq.eq(square_int8(x))
    wrong = []

    async def bench(ctx):
        for v in range(-128, 128):
            ctx.set(x, v)
            if ctx.get(sq) != v * v:
                wrong.append((v, ctx.get(sq)))

    sim = Simulator(m)
    sim.add_testbench(bench)
    sim.run()
    assert not wrong, wrong[:4]


def test_isqrt():
    rng = np.random.default_rng(5)
    x = np.concatenate([[0, 1, 2, 3, 4, 15, 16, 2**20 - 1, 2**20, 2**45 - 1],
                        rng.integers(0, 2**45, 20)]).astype(object)
    job = Job(inputs={"i": [int(v) for v in x]}, expect={"o": len(x)}, stalls=StallProfile(seed=5))
    res = amaranth_sim.run(ISqrt(45), job)
    assert res.outputs["o"] == [int(v) for v in G.isqrt(x)]


@pytest.mark.parametrize("d,eps,seed", [(16, 4, 6), (64, 16, 7)])
def test_layernorm(d, eps, seed):
    rng = np.random.default_rng(seed)
    groups = [np.full(d, 5), np.full(d, -128), np.where(np.arange(d) % 2, 127, -128)]
    groups += [np.clip(rng.normal(0, s, d).round(), -128, 127) for s in (1, 10, 60)]
    x = np.concatenate(groups).astype(np.int64)
    job = Job(inputs={"i": [int(v) & 0xFF for v in x]},
              expect={"o": len(x), "sums": len(groups)}, statics={"eps": eps},
              stalls=StallProfile(seed=seed))
    dut = LayerNorm(d)
    res = amaranth_sim.run(dut, job)
    y, s, _ = G.layernorm_q(x.reshape(len(groups), d), d, eps)
    assert np.array_equal(_signed(res.outputs["o"], 8), y.ravel())
    assert np.array_equal(_signed(res.outputs["sums"], dut.sum_width), s.ravel())


def test_layernorm_overlaps_groups():
    """Without stalls the LayerNorm takes a new group while the previous ones are in the root and
    normalisation stages: per group about max(d, reciprocal + root) cycles, not their sum."""
    d, groups = 16, 10
    rng = np.random.default_rng(8)
    x = np.clip(rng.normal(0, 20, (groups, d)).round(), -128, 127).astype(np.int64)
    job = Job(inputs={"i": [int(v) & 0xFF for v in x.ravel()]},
              expect={"o": x.size, "sums": groups}, statics={"eps": 3},
              stalls=StallProfile.none())
    dut = LayerNorm(d)
    res = amaranth_sim.run(dut, job)
    y, s, _ = G.layernorm_q(x, d, 3)
    assert np.array_equal(_signed(res.outputs["o"], 8), y.ravel())
    serial = d + (2 * G.LN_R + 5) + (G.LN_R + 3) + d          # one group at a time
    assert res.cycles < groups * (serial - d) + serial, res.cycles
