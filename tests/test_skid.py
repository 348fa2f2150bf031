"""SkidBuffer: every beat through, in order, unchanged, under random valid gaps and back-pressure;
the output holds a waiting beat; full throughput when nothing stalls."""
import random

import pytest
from amaranth.hdl import signed
from amaranth.sim import Simulator

from vitaccel.rtl.common.skid import SkidBuffer


def run(beats, p_valid, p_ready, seed):
    dut = SkidBuffer(signed(8))
    rng = random.Random(seed)
    got, cycles = [], [0]

    async def source(ctx):
        for b in beats:
            ctx.set(dut.i.payload, b)
            ctx.set(dut.i.valid, 1)
            while True:
                *_, ready = await ctx.tick().sample(dut.i.ready)
                if ready:                        # ready at the edge: the beat was taken
                    break
            ctx.set(dut.i.valid, 0)
            while rng.random() > p_valid:
                await ctx.tick()

    async def sink(ctx):
        waiting = None
        while len(got) < len(beats):
            ready = int(rng.random() < p_ready)
            ctx.set(dut.o.ready, ready)
            valid, payload = ctx.get(dut.o.valid), ctx.get(dut.o.payload)
            if waiting is not None:              # a stalled beat must stay valid and unchanged
                assert valid and payload == waiting
            await ctx.tick()
            cycles[0] += 1
            if valid and ready:
                got.append(payload)
                waiting = None
            elif valid:
                waiting = payload
            assert cycles[0] < 20 * len(beats) + 100, "hang"

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(source)
    sim.add_testbench(sink)
    sim.run()
    return got, cycles[0]


@pytest.mark.parametrize("seed", range(4))
def test_random_stalls(seed):
    beats = [random.Random(seed).randint(-128, 127) for _ in range(300)]
    got, _ = run(beats, p_valid=0.6, p_ready=0.5, seed=seed)
    assert got == beats


def test_full_throughput():
    beats = list(range(-50, 50))
    got, cycles = run(beats, p_valid=1.0, p_ready=1.0, seed=0)
    assert got == beats and cycles <= len(beats) + 2
