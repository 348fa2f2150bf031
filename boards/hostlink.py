"""UART host link: lets a host PC drive any unit component on a real board.

:class:`HostLink` wraps a unit (any :class:`amaranth.lib.wiring.Component` whose data ports are
``lib.stream`` streams, plus optional plain ports) behind an 8N1 UART. ``divisor`` is the number of
clock cycles per bit (``clk_freq // baud``); tests use tiny divisors (4-8) so the UART costs few
simulated cycles. The host side is :class:`vitaccel.boards.host.HostClient`.

Ports are addressed by index, in signature order, within four groups: input streams, output
streams, plain inputs ("statics") and plain outputs ("status"). A beat of a ``w``-bit port travels
as ``ceil(w / 8)`` bytes, little-endian (bit 0 of the flat payload is bit 0 of the first byte).

Protocol (all multi-byte numbers little-endian)
-----------------------------------------------
Host -> board, one frame per command::

    SYNC=0xA5, opcode, port, n_lo, n_hi, payload...

Every frame gets exactly one response, which starts with ``OK=0x4B`` or is ``ERR=0x45, code``.
The board hunts for SYNC between frames, so stray bytes are skipped.

========  ===============  ======================  ============================================
opcode    name             payload (host->board)    response after OK
========  ===============  ======================  ============================================
0x01      PING / identify  -                       ``b"VTAX"``, version, unit_id(2), rx_depth(2),
                                                   n_in, n_out, n_pin, n_pout (1 byte each), then
                                                   the width (2 bytes) of every port, groups in
                                                   the order above
0x02      WRITE            ``n`` beats to input     accepted(2): beats taken. Each input stream
                           stream ``port``          has a one-beat holding register that offers
                                                   its beat to the unit (so a unit that joins
                                                   several inputs sees all of them); a beat
                                                   that finds the register still full after
                                                   ``timeout`` cycles ends the write: the rest
                                                   of the payload is consumed and dropped, and
                                                   the host resends it later
0x03      READ             - (``n`` = max beats)    per beat: 0x01 + beat bytes; then 0x00. The
                                                   unit is held via ``ready`` while the UART
                                                   sends; the read ends early (0x00) when no beat
                                                   arrives for ``timeout`` cycles
0x04      CYCLES           -                        counter(4), see below
0x05      CYCLES_RESET     -                        -
0x06      STATUS           -                        flags(1), then all plain outputs packed in
                                                   signature order, lowest bit first,
                                                   ``ceil(total / 8)`` bytes. Reading clears flags
0x07      SET              one value for plain      -  (``n`` is ignored; the value is held until
                           input ``port``              the next SET)
0x08      RESET            -                        -  (one-cycle reset of the unit and counter)
========  ===============  ======================  ============================================

Flags: bit 0 = RX FIFO overflow, bit 1 = UART framing error, bit 2 = a WRITE or READ timed out.
Error codes: 1 = unknown opcode, 2 = port index out of range. On an error the board drops every
received byte until the line has been idle for 12 bit times, *then* answers ``ERR, code``, so a
bad frame's payload never turns into a command and the host's next frame is never lost.

A WRITE's payload goes through an RX FIFO of ``rx_depth`` bytes (reported by PING): a host must not
send more payload than that before the response arrives (``HostClient`` splits writes into chunks).

The cycle counter (32 bit, saturating) counts the cycles in which the unit's plain output ``busy``
is high when the unit has one; otherwise it is the number of cycles from the first input handshake
to the most recent output handshake (inclusive). Both include time the unit waits for the UART,
so they bound the unit's own cycle count from above; the simulators measure it exactly.

Structure: :class:`~.uart.UARTRx` -> :class:`~.hostlink_parser.HostLinkParser` (bytes in,
bytes out, the unit's ports on the side) -> :class:`~.uart.UARTTx`, plus the unit and the
:class:`CycleCounter` that watches it; the protocol's numbers are in :mod:`.hostlink_protocol`.
"""
from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, ResetInserter, Signal, Value, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from vitaccel.rtl.common.ports import plain_ports, stream_ports
from vitaccel.rtl.common.skid import SkidBuffer

from .hostlink_parser import HostLinkParser, check_link_params, unit_signature
# the protocol's names stay importable from here, the module that documents the protocol
from .hostlink_protocol import (ERR, FLAG_FRAMING, FLAG_OVERFLOW, FLAG_TIMEOUT,  # noqa: F401
                                IDLE_BITS, MAGIC, OK, SYNC, TAG_BEAT, TAG_END, VERSION, ErrCode,
                                Op, beat_bytes, identity_bytes, unit_id_of)
from .uart import UARTRx, UARTTx

__all__ = ["HostLink", "CycleCounter", "Op", "ErrCode", "SYNC", "OK", "ERR", "MAGIC", "VERSION",
           "TAG_BEAT", "TAG_END", "FLAG_OVERFLOW", "FLAG_FRAMING", "FLAG_TIMEOUT", "unit_id_of",
           "beat_bytes"]


class CycleCounter(wiring.Component):
    """The link's 32-bit saturating cycle counter (CYCLES); see the module docstring.

    ``mode="busy"``: ``value`` counts the cycles in which ``busy`` is high. ``mode="span"``:
    ``value`` is the number of cycles from the first ``started`` (an input handshake) to the most
    recent ``finished`` (an output handshake), both inclusive. ``clear`` restarts either.
    ``value`` comes from a flip-flop.
    """

    def __init__(self, mode: str):
        if mode not in ("busy", "span"):
            raise ValueError(f"CycleCounter mode must be 'busy' or 'span', got {mode!r}")
        self.mode = mode
        super().__init__({"clear": In(1), "busy": In(1), "started": In(1), "finished": In(1),
                          "value": Out(32)})

    def elaborate(self, platform):
        m = Module()
        counter = Signal(32)
        sat = counter == 0xFFFF_FFFF
        if self.mode == "busy":
            with m.If(self.clear):
                m.d.sync += counter.eq(0)
            with m.Elif(self.busy & ~sat):
                m.d.sync += counter.eq(counter + 1)
            m.d.comb += self.value.eq(counter)
        else:
            # `counter` runs from the first input handshake on; `value` keeps its count at the
            # latest output handshake, so idle time after the last result is not counted
            running = Signal()
            with m.If(self.clear):
                m.d.sync += [counter.eq(0), running.eq(0), self.value.eq(0)]
            with m.Else():
                with m.If(self.started):
                    m.d.sync += running.eq(1)
                with m.If((running | self.started) & ~sat):
                    m.d.sync += counter.eq(counter + 1)
                with m.If(self.finished):
                    m.d.sync += self.value.eq(Mux(sat, counter, counter + 1))
        return m


class HostLink(wiring.Component):
    """UART host link around a unit; see the module docstring for the protocol.

    Parameters
    ----------
    unit : wiring.Component or None
        The unit; it becomes a submodule (behind a ``ResetInserter`` driven by the RESET opcode).
    ports : (ins, outs, plain_ins, plain_outs) or None
        Instead of ``unit``: the ``{name: width}`` dicts from
        :func:`~vitaccel.rtl.common.ports.stream_ports` /
        :func:`~vitaccel.rtl.common.ports.plain_ports`. The link then exposes a ``unit``
        interface (connect it to the unit with ``wiring.connect``-style assignments) and a
        ``unit_rst`` output.
    divisor : int
        Clock cycles per UART bit (``clk_freq // baud``), at least 2.
    unit_id : int or str
        Reported by PING (strings through :func:`unit_id_of`).
    rx_depth : int or None
        RX FIFO bytes; default: enough for two of the widest input beats, at least 64.
    timeout : int
        Cycles a WRITE beat may wait for ``ready`` (or a READ for ``valid``) before the command
        ends early.
    register_outputs : bool
        Put a :class:`~vitaccel.rtl.common.skid.SkidBuffer` on each output stream of a ``unit``,
        so the link's READ state machine (UART ready, byte index, port decode) drives only the
        skid's registers, not the enables of the unit's output registers: on the ULX3S that
        ready path through a unit was a 13 ns route. Costs two registers of each output's
        width; the cycle counter still sees the unit's own handshakes.

    Ports: ``rx`` (In), ``tx`` (Out), ``busy`` (Out: unit ``busy`` if it has one, else link
    active), ``error`` (Out: unit ``error`` if any, or a sticky link flag).

    The link is a UART receiver, a :class:`~.hostlink_parser.HostLinkParser` and a UART
    transmitter in a row, with the unit (and its cycle counter) beside the parser.
    """

    def __init__(self, unit=None, *, ports=None, divisor, unit_id=0, rx_depth=None,
                 timeout=1 << 18, register_outputs=False):
        if (unit is None) == (ports is None):
            raise ValueError("HostLink needs exactly one of `unit` or `ports`")
        if unit is not None:
            ins, outs = stream_ports(unit)
            pins, pouts = plain_ports(unit)
        else:
            ins, outs, pins, pouts = (dict(p) for p in ports)
        if divisor < 2:
            raise ValueError(f"HostLink divisor must be >= 2 cycles per bit, got {divisor}")
        self.rx_depth = check_link_params(ins, outs, pins, pouts, rx_depth=rx_depth,
                                          timeout=timeout, who="HostLink")
        self._unit = unit
        self.ins, self.outs, self.pins, self.pouts = ins, outs, pins, pouts
        self.divisor = int(divisor)
        self.unit_id = unit_id_of(unit_id)
        self.timeout = int(timeout)
        self.register_outputs = bool(register_outputs) and unit is not None

        members = {"rx": In(1, init=1), "tx": Out(1, init=1), "busy": Out(1), "error": Out(1)}
        if unit is None:
            members["unit"] = Out(unit_signature(ins, outs, pins, pouts))
            members["unit_rst"] = Out(1)
        super().__init__(members)

    def identity_bytes(self) -> bytes:
        """The PING response after the OK byte (what :class:`HostClient` expects to parse)."""
        return identity_bytes(self.unit_id, self.rx_depth,
                              (self.ins, self.outs, self.pins, self.pouts))

    def _pin_inits(self):
        """The unit's plain inputs' initial values, which the link's static registers start at."""
        inits = {}
        for name in self.pins:
            port = Value.cast(getattr(self._unit, name))
            inits[name] = port.init if isinstance(port, Signal) else 0
        return inits

    def elaborate(self, platform):
        m = Module()
        m.submodules.uart_rx = urx = UARTRx(self.divisor, idle_bits=IDLE_BITS)
        m.submodules.uart_tx = utx = UARTTx(self.divisor)
        m.submodules.parser = parser = HostLinkParser(
            self.ins, self.outs, self.pins, self.pouts, unit_id=self.unit_id,
            rx_depth=self.rx_depth, timeout=self.timeout,
            pin_inits=self._pin_inits() if self._unit is not None else None)
        m.d.comb += [urx.rx.eq(self.rx), self.tx.eq(utx.tx),
                     parser.line_idle.eq(urx.idle), parser.framing_error.eq(urx.framing_error)]
        wiring.connect(m, urx.o, parser.i)
        wiring.connect(m, parser.o, utx.i)

        if self._unit is not None:
            side = self._unit
            self._attach_unit(m, parser)
        else:
            side = self.unit
            wiring.connect(m, wiring.flipped(self.unit), parser.unit)
            m.d.comb += self.unit_rst.eq(parser.unit_rst)

        # The counter watches the unit's own ports (before any skid buffer).
        if "busy" in self.pouts:
            m.submodules.cycles = counter = CycleCounter("busy")
            m.d.comb += counter.busy.eq(Value.cast(side.busy)[0])
        else:
            m.submodules.cycles = counter = CycleCounter("span")

            def any_handshake(names):
                hs = [getattr(side, n).valid & getattr(side, n).ready for n in names]
                return Cat(*hs).any() if hs else Const(0)
            m.d.comb += [counter.started.eq(any_handshake(self.ins)),
                         counter.finished.eq(any_handshake(self.outs))]
        m.d.comb += [counter.clear.eq(parser.clear_cycles), parser.cycles.eq(counter.value)]

        busy = Value.cast(side.busy)[0] if "busy" in self.pouts else parser.active
        unit_err = Value.cast(side.error).any() if "error" in self.pouts else Const(0)
        m.d.comb += [self.busy.eq(busy), self.error.eq(unit_err | parser.link_error)]
        return m

    def _attach_unit(self, m, parser):
        """The unit as a submodule, reset by the parser, its ports joined to ``parser.unit``."""
        unit = self._unit
        m.submodules.unit = ResetInserter(parser.unit_rst)(unit)

        def join(src, dst):
            m.d.comb += [Value.cast(dst.payload).eq(Value.cast(src.payload)),
                         dst.valid.eq(src.valid), src.ready.eq(dst.ready)]
        for name in self.ins:
            join(getattr(parser.unit, name), getattr(unit, name))
        for name in self.outs:
            src = getattr(unit, name)
            if self.register_outputs:
                skid = SkidBuffer(unsigned(self.outs[name]))
                # reset with the unit, so RESET also drops a beat waiting in the skid
                m.submodules[f"out_skid_{name}"] = ResetInserter(parser.unit_rst)(skid)
                join(src, skid.i)
                src = skid.o
            join(src, getattr(parser.unit, name))
        for name in self.pins:
            m.d.comb += Value.cast(getattr(unit, name)).eq(getattr(parser.unit, name))
        for name in self.pouts:
            m.d.comb += getattr(parser.unit, name).eq(Value.cast(getattr(unit, name)))
