"""LOAD: a stream of words into a buffer's write port, one word per accepted beat.

:class:`RowLoader` writes Q, K or V: ``n`` rows of ``f`` words, row ``r`` at ``r * chunks_max``
(a fixed stride, so the address is an adder and no run-time multiplier). :class:`WordLoader`
writes the dense validity bitmap: ``dv_last + 1`` consecutive words. Both take beats while
``load`` is high and they are not done; ``start`` (the command's accept) clears them.
"""
from __future__ import annotations

from amaranth.hdl import Module, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import WritePort
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from .layouts import dense_depth, qkv_depth, run_layout

__all__ = ["RowLoader", "WordLoader"]


class RowLoader(wiring.Component):
    """``i`` (``macs_per_line`` int8 lanes per beat) -> ``wr``; ``done`` once ``n`` rows of
    ``f`` beats are written."""

    def __init__(self, cfg):
        self.cfg = cfg
        P = cfg.macs_per_line
        super().__init__({
            "start": In(1), "load": In(1), "run": In(run_layout(cfg)),
            "i": In(stream.Signature(data.ArrayLayout(signed(8), P))),
            "wr": In(WritePort.Signature(addr_width=ceil_log2(qkv_depth(cfg)),
                                         shape=unsigned(8 * P))),
            "done": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        FM, NM = self.cfg.chunks_max, self.cfg.n_max
        base = Signal(range(qkv_depth(self.cfg) + FM + 1))
        chunk = Signal(range(FM + 1))
        row = Signal(range(NM + 1))
        m.d.comb += [self.wr.addr.eq(base + chunk), self.wr.data.eq(self.i.payload),
                     self.i.ready.eq(self.load & ~self.done)]
        with m.If(self.i.valid & self.i.ready):
            m.d.comb += self.wr.en.eq(1)
            with m.If(chunk == self.run.f_last):
                m.d.sync += [chunk.eq(0), base.eq(base + FM), row.eq(row + 1)]
                with m.If(row == self.run.n_last):
                    m.d.sync += self.done.eq(1)
            with m.Else():
                m.d.sync += chunk.eq(chunk + 1)
        with m.If(self.start):
            m.d.sync += [base.eq(0), chunk.eq(0), row.eq(0), self.done.eq(0)]
        return m


class WordLoader(wiring.Component):
    """``i`` (``lines``-bit validity words) -> ``wr`` at consecutive addresses; ``done`` after
    word ``dv_last`` (at once for a command without global columns)."""

    def __init__(self, cfg):
        self.cfg = cfg
        super().__init__({
            "start": In(1), "load": In(1), "run": In(run_layout(cfg)),
            "i": In(stream.Signature(unsigned(cfg.lines))),
            "wr": In(WritePort.Signature(addr_width=ceil_log2(dense_depth(cfg)),
                                         shape=unsigned(cfg.lines))),
            "done": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        addr = Signal(range(dense_depth(self.cfg) + 1))
        m.d.comb += [self.wr.addr.eq(addr), self.wr.data.eq(self.i.payload),
                     self.i.ready.eq(self.load & ~self.done)]
        with m.If(self.i.valid & self.i.ready):
            m.d.comb += self.wr.en.eq(1)
            m.d.sync += addr.eq(addr + 1)
            with m.If(addr == self.run.dv_last):
                m.d.sync += self.done.eq(1)
        with m.If(self.start):
            m.d.sync += [addr.eq(0), self.done.eq(self.run.dgroups == 0)]
        return m
