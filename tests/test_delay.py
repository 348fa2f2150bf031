# amaranth: UnusedElaboratable=no
"""delay(): a value through N registers, every cycle or only in cycles with ``en``; the stage
registers for a busy flag; a layout kept; bad lengths rejected."""
import random

import pytest
from amaranth.hdl import Module, Signal, signed
from amaranth.lib import data
from amaranth.sim import Simulator

from vitaccel.rtl.common.delay import delay


def simulate(cycles, with_en, seed):
    m = Module()
    x = Signal(signed(8))
    en = Signal()
    chain = delay(m, x, cycles, en=en if with_en else None, name="x", stages=True)
    rng = random.Random(seed)
    inputs = [rng.randint(-128, 127) for _ in range(60)]
    enables = [rng.random() < 0.6 if with_en else True for _ in inputs]
    seen = []

    async def bench(ctx):
        for value, enable in zip(inputs, enables):
            ctx.set(x, value)
            ctx.set(en, enable)
            await ctx.tick()
            seen.append([ctx.get(r) for r in chain])

    sim = Simulator(m)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    return inputs, enables, seen


@pytest.mark.parametrize("cycles", [1, 3, 5])
@pytest.mark.parametrize("with_en", [False, True])
def test_value_arrives_after_that_many_enabled_cycles(cycles, with_en):
    inputs, enables, seen = simulate(cycles, with_en, seed=cycles)
    # model: a shift register that moves in enabled cycles only
    regs = [0] * cycles
    for value, enable, got in zip(inputs, enables, seen):
        if enable:
            regs = [value] + regs[:-1]
        assert got == regs


def test_zero_cycles_layouts_and_names():
    m = Module()
    x = Signal(data.StructLayout({"a": 4, "b": signed(3)}), name="tag")
    assert delay(m, x, 0) is x and delay(m, x, 0, stages=True) == []
    out = delay(m, x, 2)
    assert isinstance(out, data.View) and out.shape() == x.shape()
    regs = delay(m, x, 2, name="side", stages=True)
    assert [r.as_value().name for r in regs] == ["side_d1", "side_d2"]
    expr = delay(m, Signal(4) + 1, 1)
    assert expr.shape() == (Signal(4) + 1).shape()
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="cycles"):
            delay(m, x, bad)
