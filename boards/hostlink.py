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
"""
from __future__ import annotations

import enum
import zlib

from amaranth.hdl import Cat, Const, Module, Mux, ResetInserter, Signal, Value, unsigned
from amaranth.lib import stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.wiring import In, Out

from vitaccel.rtl.common.skid import SkidBuffer

__all__ = ["HostLink", "Op", "ErrCode", "SYNC", "OK", "ERR", "MAGIC", "VERSION", "TAG_BEAT",
           "TAG_END", "FLAG_OVERFLOW", "FLAG_FRAMING", "FLAG_TIMEOUT", "unit_id_of",
           "beat_bytes"]

SYNC = 0xA5
OK = 0x4B
ERR = 0x45
MAGIC = b"VTAX"
VERSION = 1
TAG_BEAT = 0x01
TAG_END = 0x00
FLAG_OVERFLOW = 1 << 0
FLAG_FRAMING = 1 << 1
FLAG_TIMEOUT = 1 << 2
IDLE_BITS = 12          # line idle this many bit times ends an error's drop phase


class Op(enum.IntEnum):
    PING = 0x01
    WRITE = 0x02
    READ = 0x03
    CYCLES = 0x04
    CYCLES_RESET = 0x05
    STATUS = 0x06
    SET = 0x07
    RESET = 0x08


class ErrCode(enum.IntEnum):
    OPCODE = 1
    PORT = 2


def beat_bytes(width: int) -> int:
    """Bytes per beat of a ``width``-bit port (at least 1)."""
    return max(1, (width + 7) // 8)


def unit_id_of(name_or_id) -> int:
    """16-bit unit id: ints pass through, strings map to the low 16 bits of their CRC-32."""
    if isinstance(name_or_id, str):
        return zlib.crc32(name_or_id.encode()) & 0xFFFF
    uid = int(name_or_id)
    if not 0 <= uid < 1 << 16:
        raise ValueError(f"unit_id must fit in 16 bits, got {uid}")
    return uid


class _UARTRx(wiring.Component):
    """8N1 receiver: ``strobe`` pulses for one cycle with ``data``; ``idle`` = line high for
    :data:`IDLE_BITS` bit times."""

    def __init__(self, divisor):
        self._divisor = divisor
        super().__init__({"rx": In(1, init=1), "data": Out(8), "strobe": Out(1),
                          "framing_error": Out(1), "idle": Out(1)})

    def elaborate(self, platform):
        m = Module()
        d = self._divisor
        sync = Signal(2, init=0b11)
        m.d.sync += sync.eq(Cat(self.rx, sync[0]))
        line = sync[1]

        quiet_max = IDLE_BITS * d
        quiet = Signal(range(quiet_max + 1))
        with m.If(~line):
            m.d.sync += quiet.eq(0)
        with m.Elif(quiet != quiet_max):
            m.d.sync += quiet.eq(quiet + 1)
        m.d.comb += self.idle.eq(quiet == quiet_max)

        timer = Signal(range(d))
        bit = Signal(range(8))
        shreg = Signal(8)
        with m.FSM():
            with m.State("IDLE"):
                with m.If(~line):
                    m.d.sync += timer.eq(d // 2 - 1 if d >= 2 else 0)
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
                        m.d.comb += self.strobe.eq(1)
                    with m.Else():
                        m.d.comb += self.framing_error.eq(1)
                    m.next = "IDLE"
        m.d.comb += self.data.eq(shreg)
        return m


class _UARTTx(wiring.Component):
    """8N1 transmitter with a valid/ready byte input; ``tx`` is registered."""

    def __init__(self, divisor):
        self._divisor = divisor
        super().__init__({"data": In(8), "valid": In(1), "ready": Out(1), "tx": Out(1, init=1)})

    def elaborate(self, platform):
        m = Module()
        d = self._divisor
        bits = Signal(range(11))
        timer = Signal(range(d))
        shreg = Signal(9)
        with m.If(bits == 0):
            m.d.comb += self.ready.eq(1)
            with m.If(self.valid):
                m.d.sync += [self.tx.eq(0), shreg.eq(Cat(self.data, Const(1, 1))),
                             bits.eq(10), timer.eq(d - 1)]
        with m.Elif(timer != 0):
            m.d.sync += timer.eq(timer - 1)
        with m.Else():
            m.d.sync += [timer.eq(d - 1), bits.eq(bits - 1)]
            with m.If(bits != 1):
                m.d.sync += [self.tx.eq(shreg[0]), shreg.eq(shreg >> 1)]
        return m


def _unit_signature(ins, outs, pins, pouts):
    members = {}
    for name, w in ins.items():
        members[name] = Out(stream.Signature(w))
    for name, w in outs.items():
        members[name] = In(stream.Signature(w))
    for name, w in pins.items():
        members[name] = Out(w)
    for name, w in pouts.items():
        members[name] = In(w)
    return wiring.Signature(members)


class HostLink(wiring.Component):
    """UART host link around a unit; see the module docstring for the protocol.

    Parameters
    ----------
    unit : wiring.Component or None
        The unit; it becomes a submodule (behind a ``ResetInserter`` driven by the RESET opcode).
    ports : (ins, outs, plain_ins, plain_outs) or None
        Instead of ``unit``: the ``{name: width}`` dicts from
        :func:`vitaccel.sim.job.stream_ports` / :func:`~vitaccel.sim.job.plain_ports`. The link then
        exposes a ``unit`` interface (connect it to the unit with ``wiring.connect``-style
        assignments) and a ``unit_rst`` output.
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
    """

    def __init__(self, unit=None, *, ports=None, divisor, unit_id=0, rx_depth=None,
                 timeout=1 << 18, register_outputs=False):
        from vitaccel.sim.job import plain_ports, stream_ports
        if (unit is None) == (ports is None):
            raise ValueError("HostLink needs exactly one of `unit` or `ports`")
        if unit is not None:
            ins, outs = stream_ports(unit)
            pins, pouts = plain_ports(unit)
        else:
            ins, outs, pins, pouts = (dict(p) for p in ports)
        if divisor < 2:
            raise ValueError(f"HostLink divisor must be >= 2 cycles per bit, got {divisor}")
        if timeout < 1:
            raise ValueError(f"HostLink timeout must be >= 1 cycle, got {timeout}")
        for group in (ins, outs, pins, pouts):
            if len(group) > 255:
                raise ValueError("HostLink supports at most 255 ports per group")
            for name, w in group.items():
                if not 1 <= w < 1 << 16:
                    raise ValueError(f"port {name!r}: width {w} out of range 1..65535")
        self._unit = unit
        self.ins, self.outs, self.pins, self.pouts = ins, outs, pins, pouts
        self.divisor = int(divisor)
        self.unit_id = unit_id_of(unit_id)
        max_in = max((beat_bytes(w) for w in list(ins.values()) + list(pins.values())), default=1)
        if rx_depth is None:
            rx_depth = max(64, 1 << (2 * max_in - 1).bit_length())
        if rx_depth < max_in:
            raise ValueError(f"rx_depth {rx_depth} is smaller than one input beat ({max_in} B)")
        self.rx_depth = int(rx_depth)
        self.timeout = int(timeout)
        self.register_outputs = bool(register_outputs) and unit is not None

        members = {"rx": In(1, init=1), "tx": Out(1, init=1), "busy": Out(1), "error": Out(1)}
        if unit is None:
            members["unit"] = Out(_unit_signature(ins, outs, pins, pouts))
            members["unit_rst"] = Out(1)
        super().__init__(members)

    def identity_bytes(self) -> bytes:
        """The PING response after the OK byte (what :class:`HostClient` expects to parse)."""
        b = bytearray(MAGIC)
        b.append(VERSION)
        b += self.unit_id.to_bytes(2, "little") + self.rx_depth.to_bytes(2, "little")
        groups = (self.ins, self.outs, self.pins, self.pouts)
        b += bytes(len(g) for g in groups)
        for g in groups:
            for w in g.values():
                b += w.to_bytes(2, "little")
        return bytes(b)

    def elaborate(self, platform):
        m = Module()
        ins, outs, pins, pouts = self.ins, self.outs, self.pins, self.pouts
        in_names, out_names = list(ins), list(outs)
        pin_names, pout_names = list(pins), list(pouts)

        # The unit's reset is registered: it fans out to every flip-flop of the unit (16k on the
        # ViTCoD core), and driven straight from the command decode it was a long, deep net.
        # The one-cycle delay is invisible to the host (the OK byte takes a UART frame).
        unit_rst, reset_unit = Signal(), Signal()
        m.d.sync += unit_rst.eq(reset_unit)
        if self._unit is not None:
            m.submodules.unit = ResetInserter(unit_rst)(self._unit)
            side = self._unit
        else:
            side = self.unit
            m.d.comb += self.unit_rst.eq(unit_rst)
        # what the READ states see of each output stream: the unit's, or its skid buffer's
        out_streams = {name: getattr(side, name) for name in out_names}
        if self.register_outputs:
            for name in out_names:
                skid = SkidBuffer(unsigned(outs[name]))
                # reset with the unit, so RESET also drops a beat waiting in the skid
                m.submodules[f"out_skid_{name}"] = ResetInserter(unit_rst)(skid)
                unit_out = getattr(side, name)
                m.d.comb += [skid.i.payload.eq(Value.cast(unit_out.payload)),
                             skid.i.valid.eq(unit_out.valid), unit_out.ready.eq(skid.i.ready)]
                out_streams[name] = skid.o

        # --- UART and RX FIFO -------------------------------------------------------------
        m.submodules.uart_rx = urx = _UARTRx(self.divisor)
        m.submodules.uart_tx = utx = _UARTTx(self.divisor)
        m.submodules.rx_fifo = fifo = SyncFIFOBuffered(width=8, depth=self.rx_depth)
        # The receiver's outputs are registered before the FIFO, the flags and the state
        # machine: the receiver sits by the RX pin at the edge of the chip, and its idle compare
        # driving the link's state machine and flags directly was a 6 ns route inside a 13 ns
        # path (FACT on the ULX3S). A byte then enters the FIFO one cycle later.
        rx_data, rx_strobe = Signal(8), Signal()
        rx_framing_error, rx_idle = Signal(), Signal()
        m.d.sync += [rx_data.eq(urx.data), rx_strobe.eq(urx.strobe),
                     rx_framing_error.eq(urx.framing_error), rx_idle.eq(urx.idle)]
        m.d.comb += [urx.rx.eq(self.rx), self.tx.eq(utx.tx),
                     fifo.w_data.eq(rx_data), fifo.w_en.eq(rx_strobe)]
        # The parser reads one byte register that the FIFO fills whenever it is empty, so
        # every enable on the FIFO side is a flip-flop and the parser's read decision (`rx_take`,
        # which hangs off its state and counters) drives nothing but `have`'s own D input.
        # Driving the FIFO's read pointers (FACT's 84.5 MHz ULX3S critical path), and later a
        # skid buffer's enables (ViTCoD's 71.6 MHz one: 12 of 14 ns routing across the
        # link), from that decision were both long routes. The price is a byte per two cycles
        # at most; a UART byte takes at least 20.
        byte, have = Signal(8), Signal()
        rx_take = Signal()
        m.d.comb += fifo.r_en.eq(~have)
        with m.If(~have):
            m.d.sync += [byte.eq(fifo.r_data), have.eq(fifo.r_rdy)]
        with m.Elif(rx_take):
            m.d.sync += have.eq(0)
        rx_empty = ~have & ~fifo.r_rdy      # nothing received is waiting anywhere

        flags = Signal(8)
        set_timeout_flag = Signal()
        clear_flags = Signal()
        with m.If(clear_flags):
            m.d.sync += flags.eq(0)
        with m.Else():
            m.d.sync += flags.eq(flags
                                 | Cat(rx_strobe & ~fifo.w_rdy, rx_framing_error,
                                       set_timeout_flag))

        # --- statics (plain inputs) -----------------------------------------------------
        pin_regs = []
        for name in pin_names:
            port = Value.cast(getattr(side, name))
            init = port.init if isinstance(port, Signal) else 0
            reg = Signal(len(port), init=init, name=f"static_{name}")
            m.d.comb += port.eq(reg)
            pin_regs.append(reg)

        # --- cycle counter --------------------------------------------------------------
        counter = Signal(32)
        count_clear = Signal()
        counter_value = Signal(32)
        sat = counter == 0xFFFF_FFFF
        if "busy" in pouts:
            with m.If(count_clear):
                m.d.sync += counter.eq(0)
            with m.Elif(Value.cast(getattr(side, "busy"))[0] & ~sat):
                m.d.sync += counter.eq(counter + 1)
            m.d.comb += counter_value.eq(counter)
        else:
            running = Signal()
            last = Signal(32)
            in_hs = Cat(*(getattr(side, n).valid & getattr(side, n).ready
                          for n in in_names)).any() if in_names else Const(0)
            out_hs = Cat(*(getattr(side, n).valid & getattr(side, n).ready
                           for n in out_names)).any() if out_names else Const(0)
            with m.If(count_clear):
                m.d.sync += [counter.eq(0), running.eq(0), last.eq(0)]
            with m.Else():
                with m.If(in_hs):
                    m.d.sync += running.eq(1)
                with m.If((running | in_hs) & ~sat):
                    m.d.sync += counter.eq(counter + 1)
                with m.If(out_hs):
                    m.d.sync += last.eq(Mux(sat, counter, counter + 1))
            m.d.comb += counter_value.eq(last)

        # --- busy / error outputs --------------------------------------------------------
        link_active = Signal()
        if "busy" in pouts:
            m.d.comb += self.busy.eq(Value.cast(getattr(side, "busy"))[0])
        else:
            m.d.comb += self.busy.eq(link_active)
        unit_err = Value.cast(getattr(side, "error")).any() if "error" in pouts else Const(0)
        m.d.comb += self.error.eq(unit_err | flags[:2].any())

        # --- parser -------------------------------------------------------------------------
        op = Signal(8)
        port_idx = Signal(8)
        n = Signal(16)
        done = Signal(16)            # beats accepted (WRITE) / remaining (READ)
        max_in_bytes = max([beat_bytes(w) for w in ins.values()], default=1)
        max_pin_bytes = max([beat_bytes(w) for w in pins.values()], default=1)
        max_out_bytes = max([beat_bytes(w) for w in outs.values()], default=1)
        byte_idx = Signal(range(max(max_in_bytes, max_pin_bytes, max_out_bytes) + 1))
        last_byte = Signal.like(byte_idx)   # nbytes - 1 of the current port
        wbuf = Signal(8 * max_pin_bytes)       # a SET value being assembled
        timer = Signal(range(self.timeout + 1))
        err_code = Signal(8)
        in_read = Signal()

        status_bits = sum(pouts.values())
        status_bytes = (status_bits + 7) // 8
        ident = self.identity_bytes()
        resp_bytes = max(5, 2 + status_bytes)
        resp = Signal(8 * resp_bytes)
        resp_len = Signal(range(resp_bytes + 1))
        ident_const = Const(int.from_bytes(bytes([OK]) + ident, "little"), 8 * (len(ident) + 1))

        # The parser hands bytes to the transmitter through a one-byte register, so the
        # transmitter's enables come from flip-flops: its load decision was the parser's state
        # decode (`tx_valid`), routed to the TX pin's corner of the chip (ViTCoD's 71.1 MHz
        # ULX3S critical path, 12 of 14 ns routing). A byte starts a cycle later.
        tx_data = Signal(8)
        tx_valid = Signal()
        tx_buf, tx_full = Signal(8), Signal()
        tx_ready = ~tx_full               # the parser may hand over a byte
        m.d.comb += [utx.data.eq(tx_buf), utx.valid.eq(tx_full)]
        with m.If(tx_full):
            with m.If(utx.ready):
                m.d.sync += tx_full.eq(0)
        with m.Elif(tx_valid):
            m.d.sync += [tx_buf.eq(tx_data), tx_full.eq(1)]

        stage = Signal(8 * max(max_in_bytes, 1))
        stage_full = Signal()
        stage_left = Signal(16)      # WRITE beats still to read from the FIFO
        stage_more = Signal()        # stage_left != 0, kept as a flip-flop
        # A received byte goes into its staging lane whatever the state: the lanes' enables are
        # then `have`, `stage_full` and the byte index, not the parser's state and counters
        # (FACT's 92.6 MHz ULX3S critical path ran from `stage_left` through the state decode
        # to the lanes' enables). Harmless outside W_COLLECT: `stage_full` is clear there, and
        # a WRITE fills every lane of a beat from byte 0 before the beat counts.
        with m.If(have & ~stage_full):
            m.d.sync += stage.word_select(byte_idx, 8).eq(byte)
        move_left = Signal(16)       # WRITE beats still to hand to the unit

        # A READ beat is copied into a shift register that sends its low byte: no multiplexer
        # over the port's bytes (a 25-byte `keep` beat on FACT) in front of the UART's shift
        # register (FACT's 91.7 MHz ULX3S critical path, byte index -> seven LUT levels). The
        # copy is taken in every cycle until a beat is seen (`rbuf_hold`, set in R_WAIT) and
        # shifts once per byte sent (`rbuf_shift`, in R_BYTE): flip-flops, not state decodes.
        rbuf = Signal(8 * max_out_bytes)
        rbuf_hold, rbuf_shift = Signal(), Signal()
        if out_names:
            with m.If(~rbuf_hold):
                with m.Switch(port_idx):
                    for i, name in enumerate(out_names):
                        with m.Case(i):
                            m.d.sync += rbuf.eq(Value.cast(out_streams[name].payload))
            with m.Elif(rbuf_shift & tx_ready):
                m.d.sync += rbuf.eq(rbuf >> 8)

        # one holding register per input stream, so that a unit that joins several inputs
        # sees a beat waiting on each of them
        holds, hold_valid = [], []
        for name in in_names:
            s = getattr(side, name)
            hold = Signal(ins[name], name=f"hold_{name}")
            hvalid = Signal(name=f"hold_{name}_valid")
            m.d.comb += [Value.cast(s.payload).eq(hold), s.valid.eq(hvalid)]
            with m.If(s.ready):
                m.d.sync += hvalid.eq(0)
            holds.append(hold)
            hold_valid.append(hvalid)
        # The WRITE's port as a one-hot register, and whether its holding register was free
        # a cycle ago: moving a staged beat then waits on two flip-flops, not on the port
        # index's decode over every holding register (FACT's ULX3S critical path, port index
        # -> move counter, was 8.8 of 11.4 ns routing). The late view is safe: only the link
        # fills a holding register, and a move empties the staging register, so the next move
        # is decided a cycle later at the earliest, when `hold_free` already sees the fill.
        write_sel = Signal(max(1, len(in_names)))
        hold_free = Signal()
        m.d.sync += hold_free.eq((write_sel & ~Cat(*hold_valid)).any() if in_names else 0)

        # What a response carries, chosen by a small register: the states only pick a source
        # and RESPOND loads the response register one cycle later. Loading it straight from
        # the states made its enable (every bit, status included, spread over the die) hang
        # off the deepest decisions of the state machine: the 60.8 MHz critical path of the
        # ViTCoD ULX3S build ran from a holding register's valid through the WRITE logic to
        # that enable. The values are read in RESPOND: `done` has its final count by then.
        resp_sources = {
            "ok": Const(OK, 8),
            "count": Cat(Const(OK, 8), done),
            "cycles": Cat(Const(OK, 8), counter_value),
            "status": Cat(Const(OK, 8), flags, *(Value.cast(getattr(side, nm)) for nm in pout_names)),
            "end": Const(TAG_END, 8),
            "error": Cat(Const(ERR, 8), err_code),
        }
        resp_src = Signal(range(len(resp_sources)))

        def respond(source, length, then_read=False):
            """Answer with `length` bytes of `source` (a key of resp_sources), via RESPOND."""
            m.d.sync += [resp_src.eq(list(resp_sources).index(source)), resp_len.eq(length),
                         in_read.eq(then_read)]
            m.next = "RESPOND"

        def fail(code):
            m.d.sync += err_code.eq(code)
            m.next = "DROP"

        with m.FSM() as fsm:
            with m.State("HUNT"):
                m.d.comb += rx_take.eq(1)
                with m.If(have & (byte == SYNC)):
                    m.next = "OP"
            for state, target, nxt in (("OP", op, "PORT"), ("PORT", port_idx, "N0"),
                                       ("N0", n[:8], "N1"), ("N1", n[8:], "DISPATCH")):
                with m.State(state):
                    m.d.comb += rx_take.eq(1)
                    with m.If(have):
                        m.d.sync += target.eq(byte)
                        m.next = nxt
            with m.State("DISPATCH"):
                m.d.sync += [byte_idx.eq(0), done.eq(0), timer.eq(0)]
                with m.Switch(op):
                    with m.Case(Op.PING):
                        m.next = "SEND_ID"
                    with m.Case(Op.WRITE):
                        with m.If(port_idx >= len(in_names)):
                            fail(ErrCode.PORT)
                        with m.Elif(n == 0):
                            respond("count", 3)
                        with m.Else():
                            with m.Switch(port_idx):
                                for i, name in enumerate(in_names):
                                    with m.Case(i):
                                        m.d.sync += [last_byte.eq(beat_bytes(ins[name]) - 1),
                                                     write_sel.eq(1 << i)]
                            m.d.sync += [stage_left.eq(n), stage_more.eq(1), move_left.eq(n)]
                            m.next = "W_COLLECT"
                    with m.Case(Op.READ):
                        with m.If(port_idx >= len(out_names)):
                            fail(ErrCode.PORT)
                        with m.Else():
                            with m.Switch(port_idx):
                                for i, name in enumerate(out_names):
                                    with m.Case(i):
                                        m.d.sync += last_byte.eq(beat_bytes(outs[name]) - 1)
                            m.d.sync += done.eq(n)
                            respond("ok", 1, then_read=True)
                    with m.Case(Op.CYCLES):
                        respond("cycles", 5)
                    with m.Case(Op.CYCLES_RESET):
                        m.d.comb += count_clear.eq(1)
                        respond("ok", 1)
                    with m.Case(Op.STATUS):
                        respond("status", 2 + status_bytes)
                    with m.Case(Op.SET):
                        with m.If(port_idx >= len(pin_names)):
                            fail(ErrCode.PORT)
                        with m.Else():
                            with m.Switch(port_idx):
                                for i, name in enumerate(pin_names):
                                    with m.Case(i):
                                        m.d.sync += last_byte.eq(beat_bytes(pins[name]) - 1)
                            m.next = "S_COLLECT"
                    with m.Case(Op.RESET):
                        m.d.comb += [reset_unit.eq(1), count_clear.eq(1)]
                        m.d.sync += [hv.eq(0) for hv in hold_valid]
                        respond("ok", 1)
                    with m.Default():
                        fail(ErrCode.OPCODE)

            # WRITE: collect one beat, push it, repeat.
            with m.State("W_COLLECT"):
                # Bytes are assembled in a staging register whose `stage_full` flag alone gates
                # reading bytes: reading them no longer waits on a multiplexer over every
                # port's holding register, which was the critical path on the iCE40. A complete
                # beat moves into the port's holding register once the unit has taken the
                # previous one; a beat that cannot move within `timeout` cycles ends the write
                # (the rest of the payload is dropped, the host resends it).
                with m.If(stage_full):
                    with m.If(hold_free):
                        for i, name in enumerate(in_names):
                            with m.If(write_sel[i]):
                                m.d.sync += [holds[i].eq(stage[:ins[name]]), hold_valid[i].eq(1)]
                        m.d.sync += [stage_full.eq(0), timer.eq(0), done.eq(done + 1),
                                     move_left.eq(move_left - 1)]
                        with m.If(move_left == 1):
                            respond("count", 3)
                    with m.Elif(timer == self.timeout):
                        m.d.comb += set_timeout_flag.eq(1)
                        # the staged beat is lost; drop the beats still in the FIFO
                        m.d.sync += [stage_full.eq(0), n.eq(stage_left)]
                        m.next = "W_DISCARD"
                    with m.Else():
                        m.d.sync += timer.eq(timer + 1)
                # Counters compared with constants, not sums with `n`: this gate decides `rx_take`,
                # on a timing-critical path on the iCE40.
                with m.Elif(stage_more):
                    m.d.comb += rx_take.eq(1)
                    with m.If(have):                 # the byte is in its lane (see `stage`)
                        with m.If(byte_idx == last_byte):
                            m.d.sync += [byte_idx.eq(0), stage_full.eq(1), timer.eq(0),
                                         stage_left.eq(stage_left - 1),
                                         stage_more.eq(stage_left != 1)]
                        with m.Else():
                            m.d.sync += byte_idx.eq(byte_idx + 1)
            with m.State("W_DISCARD"):
                with m.If(n == 0):
                    respond("count", 3)
                with m.Else():
                    m.d.comb += rx_take.eq(1)
                    with m.If(have):
                        with m.If(byte_idx == last_byte):
                            m.d.sync += [byte_idx.eq(0), n.eq(n - 1)]
                        with m.Else():
                            m.d.sync += byte_idx.eq(byte_idx + 1)

            # SET: collect one value.
            with m.State("S_COLLECT"):
                m.d.comb += rx_take.eq(1)
                with m.If(have):
                    m.d.sync += wbuf.word_select(byte_idx, 8).eq(byte)
                    with m.If(byte_idx == last_byte):
                        m.next = "S_APPLY"
                    with m.Else():
                        m.d.sync += byte_idx.eq(byte_idx + 1)
            with m.State("S_APPLY"):
                with m.Switch(port_idx):
                    for i, name in enumerate(pin_names):
                        with m.Case(i):
                            m.d.sync += pin_regs[i].eq(wbuf[:pins[name]])
                respond("ok", 1)

            # READ: wait for a beat, send tag + bytes, take it.
            with m.State("R_WAIT"):
                valid = Signal()
                # `rbuf` loads the port's payload in this state's every cycle (see `rbuf`)
                with m.Switch(port_idx):
                    for i, name in enumerate(out_names):
                        with m.Case(i):
                            m.d.comb += valid.eq(out_streams[name].valid)
                with m.If(done == 0):
                    respond("end", 1)
                with m.Elif(valid):
                    m.d.sync += [byte_idx.eq(0), rbuf_hold.eq(1)]
                    m.next = "R_TAG"
                with m.Elif(timer == self.timeout):
                    m.d.comb += set_timeout_flag.eq(1)
                    respond("end", 1)
                with m.Else():
                    m.d.sync += timer.eq(timer + 1)
            with m.State("R_TAG"):
                m.d.comb += [tx_data.eq(TAG_BEAT), tx_valid.eq(1)]
                with m.If(tx_ready):
                    m.d.sync += rbuf_shift.eq(1)
                    m.next = "R_BYTE"
            with m.State("R_BYTE"):
                take = Signal()
                m.d.comb += [tx_data.eq(rbuf[:8]), tx_valid.eq(1)]
                with m.Switch(port_idx):
                    for i, name in enumerate(out_names):
                        with m.Case(i):
                            m.d.comb += out_streams[name].ready.eq(take)
                with m.If(tx_ready):
                    with m.If(byte_idx == last_byte):
                        m.d.comb += take.eq(1)     # the beat leaves the unit with its last byte
                        m.d.sync += [done.eq(done - 1), timer.eq(0), rbuf_hold.eq(0),
                                     rbuf_shift.eq(0)]
                        m.next = "R_WAIT"
                    with m.Else():
                        m.d.sync += byte_idx.eq(byte_idx + 1)

            with m.State("RESPOND"):
                with m.Switch(resp_src):
                    for i, (source, value) in enumerate(resp_sources.items()):
                        with m.Case(i):
                            m.d.sync += resp.eq(value)
                            if source == "status":
                                m.d.comb += clear_flags.eq(1)   # the flags are reported now
                m.next = "SEND"
            with m.State("SEND"):
                m.d.comb += [tx_data.eq(resp[:8]), tx_valid.eq(1)]
                with m.If(tx_ready):
                    m.d.sync += [resp.eq(resp >> 8), resp_len.eq(resp_len - 1)]
                    with m.If(resp_len == 1):
                        with m.If(in_read):
                            m.d.sync += in_read.eq(0)
                            m.next = "R_WAIT"
                        with m.Else():
                            m.next = "HUNT"
            with m.State("SEND_ID"):
                ident_idx = Signal(range(len(ident) + 1))
                m.d.comb += [tx_data.eq(ident_const.word_select(ident_idx, 8)), tx_valid.eq(1)]
                with m.If(tx_ready):
                    m.d.sync += ident_idx.eq(ident_idx + 1)
                    with m.If(ident_idx == len(ident)):
                        m.d.sync += ident_idx.eq(0)
                        m.next = "HUNT"
            with m.State("DROP"):
                m.d.comb += rx_take.eq(1)
                with m.If(rx_empty & rx_idle):
                    respond("error", 2)

            m.d.comb += link_active.eq(~fsm.ongoing("HUNT"))
        return m

