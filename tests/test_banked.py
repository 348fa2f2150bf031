"""BankedMemory: reads answer two (enabled) cycles later with the data of every bank and hold
while the read enable is low, writes land in the right bank and granule, and bad parameters are
refused."""
import random

import pytest
from amaranth.sim import Simulator

from vitaccel.rtl.common.banked import BankedMemory


@pytest.mark.parametrize("stall", [False, True], ids=["always-enabled", "random-read-enable"])
@pytest.mark.parametrize("depth,bank_depth,granularity", [(40, 8, 4), (16, 16, 8), (5, 512, 8),
                                                          (33, 16, 16)])
def test_reads_follow_writes_across_banks(depth, bank_depth, granularity, stall):
    width = 16
    dut = BankedMemory(width, depth, granularity=granularity, bank_depth=bank_depth)
    rng = random.Random(depth * bank_depth + stall)
    model = [0] * depth
    granules = width // granularity
    ops = []
    for _ in range(300):
        ops.append((rng.randrange(depth), rng.getrandbits(width), rng.getrandbits(granules),
                    rng.randrange(depth), not stall or rng.random() < 0.6))
    mismatches = []

    async def bench(ctx):
        # the read pipeline as the port documents it: two stages that move only when en is high,
        # the first taking the memory as it was before this cycle's write
        stage1 = stage2 = None
        for cycle, (waddr, wdata, wen, raddr, ren) in enumerate(ops):
            ctx.set(dut.write.addr, waddr)
            ctx.set(dut.write.data, wdata)
            ctx.set(dut.write.en, wen)
            ctx.set(dut.read.addr, raddr)
            ctx.set(dut.read.en, ren)
            if stage2 is not None and ctx.get(dut.read.data) != stage2[1]:
                mismatches.append((cycle, stage2[0], ctx.get(dut.read.data), stage2[1]))
            if ren:
                stage1, stage2 = (raddr, model[raddr]), stage1
            for g in range(granules):
                if wen >> g & 1:
                    mask = ((1 << granularity) - 1) << (g * granularity)
                    model[waddr] = (model[waddr] & ~mask) | (wdata & mask)
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    assert dut.banks == -(-depth // min(bank_depth, 1 << (depth - 1).bit_length()))
    assert not mismatches, mismatches[:5]


@pytest.mark.parametrize("kwargs,message", [
    ({"width": 16, "depth": 8, "bank_depth": 6}, "power of two"),
    ({"width": 16, "depth": 8, "granularity": 5}, "does not divide"),
    ({"width": 0, "depth": 8}, "width"),
])
def test_bad_parameters_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        BankedMemory(**kwargs)
