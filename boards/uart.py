"""8N1 UART with byte streams: the host link's physical layer.

:class:`UARTRx` turns the RX pin into a stream of bytes, :class:`UARTTx` a stream of bytes into the
TX pin. Both count ``divisor`` clock cycles per bit (``clk_freq // baud``), so the byte-level
parts of the link (:mod:`.hostlink_parser`) never see bits and are tested on bytes alone.
"""
from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["UARTRx", "UARTTx"]


def _check(component, ok, message):
    if not ok:
        component._MustUse__silence = True       # no "created but never used" on top of this
        raise ValueError(message)


def _check_divisor(component, divisor):
    _check(component, isinstance(divisor, int) and divisor >= 2,
           f"UART divisor must be an integer >= 2 cycles per bit, got {divisor!r}")


class UARTRx(wiring.Component):
    """8N1 receiver with a byte stream output.

    Parameters
    ----------
    divisor : int
        Clock cycles per bit, at least 2. The line is sampled in the middle of each bit.
    idle_bits : int
        ``idle`` rises once the line has been high this many bit times.

    Ports
    -----
    rx : In(1)
        The line (idles high); synchronised by two flip-flops inside.
    o : Out(stream.Signature(8))
        One beat per received byte. A UART cannot wait, so ``o.valid`` is high for exactly one
        cycle and ``o.ready`` is not looked at: a byte offered while ``o.ready`` is low is lost,
        and the consumer sees that as ``o.valid & ~o.ready`` (the host link counts it as an RX
        overflow).
    framing_error : Out(1)
        One-cycle pulse when a byte's stop bit was low (the byte is dropped).
    idle : Out(1)
        The line has been high for ``idle_bits`` bit times.

    Every output comes from a flip-flop, one cycle after the receiver's own decision: the
    receiver sits by the RX pin at the edge of the chip, and its idle compare driving the link's
    state machine and flags directly was a 6 ns route inside a 13 ns path (FACT on the ULX3S).
    """

    def __init__(self, divisor: int, idle_bits: int = 12):
        _check_divisor(self, divisor)
        _check(self, isinstance(idle_bits, int) and idle_bits >= 1,
               f"UARTRx idle_bits must be a positive integer, got {idle_bits!r}")
        self.divisor = divisor
        self.idle_bits = idle_bits
        super().__init__({"rx": In(1, init=1), "o": Out(stream.Signature(8)),
                          "framing_error": Out(1), "idle": Out(1)})

    def elaborate(self, platform):
        m = Module()
        d = self.divisor
        sync = Signal(2, init=0b11)
        m.d.sync += sync.eq(Cat(self.rx, sync[0]))
        line = sync[1]

        quiet_max = self.idle_bits * d
        quiet = Signal(range(quiet_max + 1))
        with m.If(~line):
            m.d.sync += quiet.eq(0)
        with m.Elif(quiet != quiet_max):
            m.d.sync += quiet.eq(quiet + 1)

        timer = Signal(range(d))
        bit = Signal(range(8))
        shreg = Signal(8)
        strobe, framing_error = Signal(), Signal()
        with m.FSM():
            with m.State("IDLE"):
                with m.If(~line):
                    m.d.sync += timer.eq(d // 2 - 1)
                    m.next = "START"
            with m.State("START"):
                with m.If(timer != 0):
                    m.d.sync += timer.eq(timer - 1)
                with m.Elif(~line):
                    m.d.sync += [timer.eq(d - 1), bit.eq(0)]
                    m.next = "DATA"
                with m.Else():
                    m.next = "IDLE"          # glitch, not a start bit
            with m.State("DATA"):
                with m.If(timer != 0):
                    m.d.sync += timer.eq(timer - 1)
                with m.Else():
                    m.d.sync += [shreg.eq(Cat(shreg[1:], line)), timer.eq(d - 1),
                                 bit.eq(bit + 1)]
                    with m.If(bit == 7):
                        m.next = "STOP"
            with m.State("STOP"):
                with m.If(timer != 0):
                    m.d.sync += timer.eq(timer - 1)
                with m.Else():
                    with m.If(line):
                        m.d.comb += strobe.eq(1)
                    with m.Else():
                        m.d.comb += framing_error.eq(1)
                    m.next = "IDLE"

        # registered outputs (see the class docstring)
        m.d.sync += [self.o.payload.eq(shreg), self.o.valid.eq(strobe),
                     self.framing_error.eq(framing_error), self.idle.eq(quiet == quiet_max)]
        return m


class UARTTx(wiring.Component):
    """8N1 transmitter with a byte stream input.

    Parameters
    ----------
    divisor : int
        Clock cycles per bit, at least 2.

    Ports
    -----
    i : In(stream.Signature(8))
        Bytes to send. ``i.ready`` is high while the transmitter is idle; a byte taken starts its
        start bit in the next cycle, and the next byte can be taken right after its stop bit.
    tx : Out(1)
        The line, idling high; driven from a flip-flop.
    """

    def __init__(self, divisor: int):
        _check_divisor(self, divisor)
        self.divisor = divisor
        super().__init__({"i": In(stream.Signature(8)), "tx": Out(1, init=1)})

    def elaborate(self, platform):
        m = Module()
        d = self.divisor
        bits = Signal(range(11))         # bit times left in the frame: start, 8 data, stop
        timer = Signal(range(d))
        shreg = Signal(9)                # data bits, then the stop bit
        with m.If(bits == 0):
            m.d.comb += self.i.ready.eq(1)
            with m.If(self.i.valid):
                m.d.sync += [self.tx.eq(0), shreg.eq(Cat(self.i.payload, Const(1, 1))),
                             bits.eq(10), timer.eq(d - 1)]
        with m.Elif(timer != 0):
            m.d.sync += timer.eq(timer - 1)
        with m.Else():
            m.d.sync += [timer.eq(d - 1), bits.eq(bits - 1)]
            with m.If(bits != 1):
                m.d.sync += [self.tx.eq(shreg[0]), shreg.eq(shreg >> 1)]
        return m
