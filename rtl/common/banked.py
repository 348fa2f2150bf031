"""A memory split in depth into block-RAM-sized banks, each bank's output in its own register.

ECP5 block RAMs (DP16KD) are used without their output register (yosys does not infer it), so a
read returns 5.8 ns after the clock edge; a memory deeper than one block RAM also gets a depth
multiplexer, and its blocks sit wherever the placer finds room. Block RAM -> routing -> depth mux
-> consumer register was the FACT unit's ULX3S critical path (13.7 ns, 5.2 ns of it routing from
a distant block). Here every bank's data goes first into a register that has that bank as its
only source (so it can sit beside it), and the depth multiplexer works on those registers in the
next cycle.

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

from amaranth.hdl import Array, Cat, Module, Mux, Signal, Value, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

__all__ = ["BankedMemory"]


class BankedMemory(wiring.Component):
    """``depth`` words of ``width`` bits in banks of ``bank_depth`` words (a power of two).

    ``granularity`` is the write-enable granule in bits (``width`` by default).
    ``bank_depth`` defaults to 512, one DP16KD deep in its widest (36-bit) mode.
    """

    LATENCY = 2

    def __init__(self, width: int, depth: int, granularity: int | None = None,
                 bank_depth: int = 512):
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
        in_flight = Signal(name=f"{name}_in_flight")
        stages_valid = []
        for stage in range(cls.LATENCY):
            regs = {key: (Signal.like(value, name=f"{name}_{key}{stage}")
                          if isinstance(value, (Signal, data.View)) else
                          Signal(Value.cast(value).shape(), name=f"{name}_{key}{stage}"))
                    for key, value in values.items()}
            with m.If(1 if en is None else en):
                m.d.sync += [regs[key].eq(value) for key, value in values.items()]
            values = regs
            if "valid" in regs:
                stages_valid.append(regs["valid"])
        m.d.comb += in_flight.eq(Cat(*stages_valid).any() if stages_valid else 0)
        return values, in_flight

    def elaborate(self, platform):
        m = Module()
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
        if self.banks == 1:
            m.d.comb += self.read.data.eq(bank_data[0])
        else:
            # the bank of the address in flight, aligned with the block RAM read and the register
            sel1 = Signal(range(self.banks))
            sel2 = Signal(range(self.banks))
            with m.If(self.read.en):
                m.d.sync += [sel1.eq(self.read.addr >> lo), sel2.eq(sel1)]
            m.d.comb += self.read.data.eq(Array(bank_data)[sel2])
        return m
