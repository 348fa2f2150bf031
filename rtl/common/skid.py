"""A stream register slice: every output of both handshakes comes from a flip-flop.

Between a source whose payload is a long combinational path (a block-RAM read behind a bank
multiplexer) and a consumer that samples it (the host link's UART shift register), the path
would otherwise run straight through. Full throughput: a spare register takes the beat that
arrives in the cycle the output stalls, so ``i.ready`` is registered too (the classic skid
buffer). One cycle of latency, no change in beat order or content.
"""
from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["SkidBuffer"]


class SkidBuffer(wiring.Component):
    """``i`` -> ``o`` (same payload shape), registered ``o.valid``, ``o.payload`` and ``i.ready``."""

    def __init__(self, shape):
        self.shape = shape
        super().__init__({"i": In(stream.Signature(shape)), "o": Out(stream.Signature(shape))})

    def elaborate(self, platform):
        m = Module()
        spare = Signal(self.shape)
        spare_valid = Signal()
        m.d.comb += self.i.ready.eq(~spare_valid)
        with m.If(self.o.ready | ~self.o.valid):           # the output register is free
            m.d.sync += [self.o.valid.eq(spare_valid | self.i.valid),
                         self.o.payload.eq(Mux(spare_valid, spare, self.i.payload)),
                         spare_valid.eq(0)]
        with m.Elif(self.i.valid & ~spare_valid):          # output waits: park the new beat
            m.d.sync += [spare.eq(self.i.payload), spare_valid.eq(1)]
        return m
