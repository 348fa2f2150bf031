"""A memory split in depth into block-RAM-sized banks, each bank's output in its own register.

Yosys maps a memory to ECP5 block RAMs (DP16KD) without their output register (it does not
infer it), so a read returns 5.8 ns after the clock edge; a memory deeper than one block RAM also
gets a depth multiplexer, and its blocks sit wherever the placer finds room. Block RAM -> routing
-> depth mux -> consumer register was the FACT unit's ULX3S critical path (13.7 ns, 5.2 ns of it
routing from a distant block). Here every bank's data goes first into a register that has that
bank as its only source, and the depth multiplexer works on those registers in the next cycle.

That register can still be placed far from its block (FACT's 83.9 MHz ULX3S path: 5.8 ns
clock-to-out, then 5.7 ns of routing to it), so with ``ecp5_output_register=True``, when the
design is elaborated for an ECP5 platform, the register is the block RAM's own: each bank is made of DP16KD instances in 18-bit
(or, for deeper banks, narrower) true-dual-port mode, port A writing and port B reading through
its output register (``REGMODE_B = "OUTREG"``, 0.96 ns clock-to-out in nextpnr's timing model),
with ``CEB`` and ``OCEB`` both driven by ``read.en``: the same two-stage pipeline, cycle for
cycle. Elsewhere (simulation, Verilog, iCE40) the register is a flip-flop as before. It is an
option, not the rule: the blocks then no longer pull a fabric register beside them, so the logic
that feeds their write pins can end up far from them (HeatViT with every buffer so built: 63.7
MHz against 75.0, its critical path the sequencer -> a scratchpad block's write pins). A user
whose writes come straight from registers gains (FACT: 83.9 -> 95.0 MHz).
:class:`DP16KDModel` simulates the primitive from the instance's own pin map, so the tests check
that wiring (address bits, byte enables, data slices, enables) in the Amaranth simulator.

Ports (one write, one read, both in the ``sync`` domain)::

    write.addr, write.data, write.en   as amaranth.lib.memory write ports (``en`` per granule)
    read.addr, read.en -> read.data    a two-stage read pipeline that moves only in cycles with
                                       ``read.en`` high (default 1): the address presented in
                                       an enabled cycle is answered after LATENCY = 2 enabled
                                       cycles, and ``read.data`` holds while ``en`` is low (a
                                       reader stalled by back-pressure keeps its data); no bypass

A read and a write of the same address in one cycle return the old data (as a non-transparent
Memory read port).
"""
from __future__ import annotations

from amaranth.hdl import (Array, Cat, ClockSignal, Const, Elaboratable, Instance, Module, Mux,
                          Signal, unsigned)
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from vitaccel.rtl.common.delay import delay

__all__ = ["BankedMemory", "DP16KDModel"]

#: DP16KD true-dual-port modes: data width -> (words, lowest address bit on ADx13..ADx0)
DP16KD_MODES = {18: (1024, 4), 9: (2048, 3), 4: (4096, 2), 2: (8192, 1), 1: (16384, 0)}


def is_ecp5(platform) -> bool:
    return getattr(platform, "family", None) == "ecp5"


def dp16kd_mode(bank_depth: int) -> int:
    """The DP16KD data width whose depth covers ``bank_depth`` words (at least 18 bits wide)."""
    for width, (words, _) in DP16KD_MODES.items():
        if words >= bank_depth:
            return width
    raise ValueError(f"a DP16KD holds at most 16384 words, not {bank_depth}")


class BankedMemory(wiring.Component):
    """``depth`` words of ``width`` bits in banks of ``bank_depth`` words (a power of two).

    ``granularity`` is the write-enable granule in bits (``width`` by default).
    ``bank_depth`` defaults to 512, one DP16KD deep in its widest (36-bit) mode.
    """

    LATENCY = 2

    def __init__(self, width: int, depth: int, granularity: int | None = None,
                 bank_depth: int = 512, ecp5_output_register: bool = False):
        granularity = width if granularity is None else granularity
        self._MustUse__used = True     # a rejected construction is not an unused design
        for name, value in (("width", width), ("depth", depth), ("granularity", granularity),
                            ("bank_depth", bank_depth)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"BankedMemory.{name} must be a positive integer, got {value!r}")
        if width % granularity:
            raise ValueError(f"BankedMemory.granularity {granularity} does not divide "
                             f"width {width}")
        if bank_depth & (bank_depth - 1):
            raise ValueError(f"BankedMemory.bank_depth must be a power of two, got {bank_depth}")
        self._MustUse__used = False    # accepted: warn again if it is never elaborated
        self.width, self.depth, self.granularity = width, depth, granularity
        self.ecp5_output_register = ecp5_output_register
        self.bank_depth = min(bank_depth, 1 << ceil_log2(depth))
        self.banks = -(-depth // self.bank_depth)
        super().__init__({
            "write": In(wiring.Signature({
                "addr": Out(range(depth)), "data": Out(unsigned(width)),
                "en": Out(unsigned(width // granularity))})),
            "read": In(wiring.Signature({
                "addr": Out(range(depth)), "en": Out(1, init=1),
                "data": In(unsigned(width))})),
        })

    @classmethod
    def aligned(cls, m, values, name, en=None):
        """``values`` (a dict name -> value: the valid bit and sideband of a read issued with
        them) delayed by :attr:`LATENCY` cycles that have ``en`` high (every cycle without
        ``en``), so they meet that read's ``read.data``. Returns the dict of the last stage's
        registers and a signal that is high while any stage holds a value whose name is
        ``"valid"`` (when there is one)."""
        chains = {key: delay(m, value, cls.LATENCY, en=en, name=f"{name}_{key}", stages=True)
                  for key, value in values.items()}
        in_flight = Signal(name=f"{name}_in_flight")
        m.d.comb += in_flight.eq(Cat(*chains["valid"]).any() if "valid" in chains else 0)
        values = {key: chain[-1] for key, chain in chains.items()}
        return values, in_flight

    def elaborate(self, platform):
        m = Module()
        if self.ecp5_output_register and is_ecp5(platform):
            return self._elaborate_ecp5(m, platform)
        lo = ceil_log2(self.bank_depth)
        bank_data = []
        for b in range(self.banks):
            words = min(self.bank_depth, self.depth - b * self.bank_depth)
            m.submodules[f"bank{b}"] = mem = Memory(shape=unsigned(self.width), depth=words,
                                                    init=[])
            wr = mem.write_port(granularity=self.granularity)
            rd = mem.read_port()
            m.d.comb += rd.en.eq(self.read.en)
            hit = (self.write.addr >> lo) == b
            m.d.comb += [wr.addr.eq(self.write.addr[:lo]), wr.data.eq(self.write.data),
                         wr.en.eq(Mux(hit, self.write.en, 0)),
                         rd.addr.eq(self.read.addr[:lo])]
            data = Signal(unsigned(self.width), name=f"bank{b}_data")
            with m.If(self.read.en):
                m.d.sync += data.eq(rd.data)
            bank_data.append(data)
        self._depth_mux(m, bank_data, lo)
        return m

    def _depth_mux(self, m, bank_data, lo):
        if len(bank_data) == 1:
            m.d.comb += self.read.data.eq(bank_data[0])
            return
        # the bank of the address in flight, aligned with the block RAM read and the register
        sel1 = Signal(range(len(bank_data)))
        sel2 = Signal(range(len(bank_data)))
        with m.If(self.read.en):
            m.d.sync += [sel1.eq(self.read.addr >> lo), sel2.eq(sel1)]
        m.d.comb += self.read.data.eq(Array(bank_data)[sel2])

    def ecp5_layout(self):
        """How an ECP5 elaboration lays a bank out: ``(mode, words, blocks)`` with ``blocks`` a
        list of ``[(granule, low bit in the granule, bits, block lane)]`` (one list per DP16KD;
        lane = 9-bit byte of an 18-bit word whose enable is ``ADA0``/``ADA1``, else 0).
        Granules of up to 9 bits take a byte lane each (two per block in 18-bit mode, with their
        own byte enables); a wider granule takes whole blocks of its own."""
        mode = dp16kd_mode(self.bank_depth)
        words = DP16KD_MODES[mode][0]
        g, granules = self.granularity, self.width // self.granularity
        blocks = []
        if mode == 18 and g <= 9:
            for first in range(0, granules, 2):
                pair = range(first, min(first + 2, granules))
                blocks.append([(j, 0, g, j - first) for j in pair])
        else:
            for j in range(granules):
                for lo in range(0, g, mode):
                    blocks.append([(j, lo, min(mode, g - lo), 0)])
        return mode, words, blocks

    def _elaborate_ecp5(self, m, platform):
        mode, words, blocks = self.ecp5_layout()
        model = getattr(platform, "dp16kd_model", False)    # tests: simulate the pin map
        lo = ceil_log2(words)
        a_lsb = DP16KD_MODES[mode][1]
        g = self.granularity
        banks = -(-self.depth // words)
        bank_data = []
        for b in range(banks):
            hit = (self.write.addr >> lo) == b
            data = Signal(unsigned(self.width), name=f"bank{b}_data")
            for k, block in enumerate(blocks):
                di, do, be = Signal(18), Signal(18), [Const(1), Const(1)]
                lane_we = []
                for j, glo, bits, lane in block:
                    en = hit & self.write.en[j]
                    lane_we.append(en)
                    if mode == 18:
                        be[lane] = en
                    bit = j * g + glo
                    m.d.comb += [di[9 * lane:][:bits].eq(self.write.data[bit:][:bits]),
                                 data[bit:][:bits].eq(do[9 * lane:][:bits])]
                pins = dict(
                    p_DATA_WIDTH_A=mode, p_DATA_WIDTH_B=mode,
                    p_REGMODE_A="NOREG", p_REGMODE_B="OUTREG",
                    p_WRITEMODE_A="NORMAL", p_WRITEMODE_B="NORMAL",
                    p_RESETMODE="SYNC", p_CSDECODE_A="0b000", p_CSDECODE_B="0b000",
                    p_GSR="DISABLED",
                    i_CLKA=ClockSignal(), i_CEA=Const(1), i_OCEA=Const(1), i_RSTA=Const(0),
                    i_WEA=Cat(*lane_we).any(),
                    i_CLKB=ClockSignal(), i_CEB=self.read.en, i_OCEB=self.read.en,
                    i_RSTB=Const(0), i_WEB=Const(0),
                )
                for c in "AB":
                    for i in range(3):
                        pins[f"i_CS{c}{i}"] = Const(0)
                    for i in range(18):
                        pins[f"i_DI{c}{i}"] = di[i] if c == "A" else Const(0)
                        pins[f"o_DO{c}{i}"] = do[i] if c == "B" else Signal(name=f"b{b}_{k}_doa{i}")
                for c, addr in (("A", self.write.addr), ("B", self.read.addr)):
                    for i in range(14):
                        if i >= a_lsb:
                            pins[f"i_AD{c}{i}"] = (addr[i - a_lsb] if i - a_lsb < min(lo, len(addr))
                                                  else Const(0))
                        elif c == "A" and mode == 18 and i < 2:
                            pins[f"i_AD{c}{i}"] = be[i]      # byte enables of an 18-bit write
                        else:
                            pins[f"i_AD{c}{i}"] = Const(0)
                name = f"bank{b}_ebr{k}"
                m.submodules[name] = DP16KDModel(pins) if model else Instance("DP16KD", **pins)
            bank_data.append(data)
        self._depth_mux(m, bank_data, lo)
        return m


class DP16KDModel(Elaboratable):
    """A simulation model of the DP16KD configurations :class:`BankedMemory` instantiates (true
    dual port, port A writing, port B reading, ``REGMODE_B`` ``"OUTREG"`` or ``"NOREG"``), driven by
    the same ``Instance`` keyword map, so a test of the ECP5 elaboration checks its pin wiring.
    Semantics (Lattice TN1264 / yosys's DP16KD map): an ``N``-bit mode addresses ``16384 / N``
    words (18 bits: 1024) on ``ADx13..ADx(lsb)``; in 18-bit mode ``ADA1``/``ADA0`` enable the
    upper/lower 9-bit byte of a write (with ``WEA``); port B latches a read when ``CEB`` is high
    and, with ``OUTREG``, its output register loads that when ``OCEB`` is high."""

    def __init__(self, pins):
        self.pins = pins

    def elaborate(self, platform):
        m = Module()
        p = self.pins
        mode = p["p_DATA_WIDTH_A"]
        assert p["p_DATA_WIDTH_B"] == mode and p["i_WEB"].value == 0, "configuration not modelled"
        words, lsb = DP16KD_MODES[mode]
        m.submodules.array = array = Memory(shape=unsigned(18), depth=words, init=[])
        wr = array.write_port(granularity=9)
        rd = array.read_port()
        addr = {c: Cat(*(p[f"i_AD{c}{i}"] for i in range(lsb, 14))) for c in "AB"}
        be = Cat(p["i_ADA0"], p["i_ADA1"]) if mode == 18 else Const(0b11, 2)
        m.d.comb += [wr.addr.eq(addr["A"]), wr.data.eq(Cat(*(p[f"i_DIA{i}"] for i in range(18)))),
                     wr.en.eq(Mux(p["i_WEA"] & p["i_CEA"], be, 0)),
                     rd.addr.eq(addr["B"]), rd.en.eq(p["i_CEB"])]
        dob = Cat(*(p[f"o_DOB{i}"] for i in range(18)))
        if p["p_REGMODE_B"] == "OUTREG":
            out = Signal(18)
            with m.If(p["i_OCEB"]):
                m.d.sync += out.eq(rd.data)
            m.d.comb += dob.eq(out)
        else:
            m.d.comb += dob.eq(rd.data)
        return m
