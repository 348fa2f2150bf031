"""The host link's byte level: command frames in, responses out, a unit's ports on the side.

:class:`HostLinkParser` speaks the protocol described in :mod:`vitaccel.boards.hostlink` on byte
streams; :class:`~vitaccel.boards.hostlink.HostLink` puts a UART (:mod:`.uart`) on either side
of it. With no bits involved it can be tested by pushing bytes in and reading bytes out.

Inside, one component per concern, each owning its registers; only one of them works on a
command at a time, so the parser joins their byte and response-request outputs with plain ORs:

* ``_ByteRegister`` (twice): the one-byte registers between the RX FIFO and the parser, and
  between the parser and the transmitter, so that neither side's enables hang off the other's
  decisions;
* ``_CommandDecoder``: hunts for SYNC, reads the opcode/port/n header, checks the port range and
  starts the part that carries the command out; owns the header and the unit's reset;
* ``_WritePath``: WRITE payload bytes -> beats in each input stream's one-beat holding register,
  with its timeout; owns the staging and holding registers and the accepted-beat count;
* ``_ReadPath``: READ, unit beats -> tagged response bytes, with its timeout;
* ``_SetPath``: SET, payload bytes -> a plain input's static register;
* ``_ErrorDrain``: after a bad opcode or port, drops bytes until the line has been idle;
* ``_Responder``: loads and sends a response (OK/ERR, counts, cycles, status, identity);
* ``_LinkFlags``: the sticky overflow / framing / timeout flags that STATUS reports.
"""
from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Signal, Value
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.wiring import In, Out

from .hostlink_protocol import (ERR, OK, SYNC, TAG_BEAT, TAG_END, ErrCode, Op, beat_bytes,
                                identity_bytes, unit_id_of)

__all__ = ["HostLinkParser", "unit_signature", "check_link_params"]


def unit_signature(ins, outs, pins, pouts, pin_inits=None):
    """The link's view of a unit: it drives the input streams and plain inputs, and takes the
    output streams and plain outputs (``{name: width}`` dicts, as from
    :func:`vitaccel.rtl.common.ports.stream_ports` / ``plain_ports``)."""
    pin_inits = pin_inits or {}
    members = {}
    for name, w in ins.items():
        members[name] = Out(stream.Signature(w))
    for name, w in outs.items():
        members[name] = In(stream.Signature(w))
    for name, w in pins.items():
        members[name] = Out(w, init=pin_inits.get(name))
    for name, w in pouts.items():
        members[name] = In(w)
    return wiring.Signature(members)


def check_link_params(ins, outs, pins, pouts, *, rx_depth, timeout, who):
    """Validate a link's ports, ``timeout`` and ``rx_depth``; return ``rx_depth`` (default:
    enough for two of the widest input beats, at least 64). ``who`` starts the messages."""
    if timeout < 1:
        raise ValueError(f"{who} timeout must be >= 1 cycle, got {timeout}")
    for group in (ins, outs, pins, pouts):
        if len(group) > 255:
            raise ValueError(f"{who} supports at most 255 ports per group")
        for name, w in group.items():
            if not 1 <= w < 1 << 16:
                raise ValueError(f"port {name!r}: width {w} out of range 1..65535")
    max_in = max((beat_bytes(w) for w in list(ins.values()) + list(pins.values())), default=1)
    if rx_depth is None:
        rx_depth = max(64, 1 << (2 * max_in - 1).bit_length())
    if rx_depth < max_in:
        raise ValueError(f"rx_depth {rx_depth} is smaller than one input beat ({max_in} B)")
    return int(rx_depth)


class Reply(enum.Enum, shape=3):
    """Which response the :class:`_Responder` sends (PING's identity has a strobe of its own)."""
    OK = 0          # OK
    READ = 1        # OK, then the read path sends the beats
    COUNT = 2       # OK, beats accepted (2)
    CYCLES = 3      # OK, cycle counter (4)
    STATUS = 4      # OK, flags, plain outputs
    END = 5         # TAG_END, the end of a READ
    ERROR = 6       # ERR, code


#: a one-cycle request for a response; zero when idle, so requests from parts that never ask
#: in the same cycle can be ORed together
ReplyRequest = data.StructLayout({"valid": 1, "kind": Reply})


def _reply(m, port, kind):
    m.d.comb += [port.valid.eq(1), port.kind.eq(kind)]


def _max_bytes(widths):
    return max((beat_bytes(w) for w in widths.values()), default=1)


def _load_last_byte(m, port, widths, last_byte):
    """``last_byte`` <= (bytes per beat - 1) of port number ``port`` in ``widths``."""
    with m.Switch(port):
        for i, w in enumerate(widths.values()):
            with m.Case(i):
                m.d.sync += last_byte.eq(beat_bytes(w) - 1)


def _stream_bundle(widths):
    """A bundle of source streams, one per ``{name: width}`` entry."""
    return wiring.Signature({name: Out(stream.Signature(w)) for name, w in widths.items()})


class _ByteRegister(wiring.Component):
    """One byte between two streams, at half throughput: ``i.ready``, ``o.valid`` and
    ``o.payload`` all come from flip-flops, so neither side's logic drives the other's enables.
    A byte needs two cycles to pass; a UART byte takes at least 20."""

    def __init__(self):
        super().__init__({"i": In(stream.Signature(8)), "o": Out(stream.Signature(8))})

    def elaborate(self, platform):
        m = Module()
        m.d.comb += self.i.ready.eq(~self.o.valid)
        with m.If(~self.o.valid):
            m.d.sync += [self.o.payload.eq(self.i.payload), self.o.valid.eq(self.i.valid)]
        with m.Elif(self.o.ready):
            m.d.sync += self.o.valid.eq(0)
        return m


class _CommandDecoder(wiring.Component):
    """Hunts for SYNC, reads a frame's header (opcode, port, n) and dispatches the command:
    answers the simple ones itself, starts the write/read/set path or the error drain for the
    others, then waits (``active`` high) until the responder has sent the command's last byte.

    Owns the header registers (``port`` and ``n`` are read by the paths while they work), and
    whether ``port`` is out of range for each group and ``n`` is 0, registered with them so that
    the dispatch decisions wait on flip-flops, not on comparators.

    Owns the unit's reset too, registered: it fans out to every flip-flop of the unit (16k on
    the ViTCoD core), and driven straight from the command decode it was a long, deep net. The
    one-cycle delay is invisible to the host (the OK byte takes a UART frame).
    """

    def __init__(self, n_in, n_out, n_pin):
        self.n_in, self.n_out, self.n_pin = n_in, n_out, n_pin
        super().__init__({
            "rx": In(stream.Signature(8)),
            "port": Out(8), "n": Out(16), "n_zero": Out(1),
            "start_write": Out(1), "start_read": Out(1), "start_set": Out(1),
            "fail": Out(1), "fail_code": Out(8),
            "reply": Out(ReplyRequest), "send_ident": Out(1),
            "clear_cycles": Out(1),
            "reset_unit": Out(1),        # the RESET command, in its dispatch cycle
            "unit_rst": Out(1),          # the same, one cycle later, from a flip-flop
            "done": In(1),               # the command's last response byte was sent
            "active": Out(1),            # a command is being read or carried out
        })

    def elaborate(self, platform):
        m = Module()
        op = Signal(8)
        bad_port = {count: Signal(name=f"port_ge_{count}")
                    for count in sorted({self.n_in, self.n_out, self.n_pin})}

        def start_if_port(count, start):
            with m.If(bad_port[count]):
                m.d.comb += [self.fail.eq(1), self.fail_code.eq(ErrCode.PORT)]
            with m.Else():
                m.d.comb += start.eq(1)

        with m.FSM() as fsm:
            with m.State("HUNT"):
                m.d.comb += self.rx.ready.eq(1)
                with m.If(self.rx.valid & (self.rx.payload == SYNC)):
                    m.next = "OP"
            for state, target, nxt in (("OP", op, "PORT"), ("PORT", self.port, "N0"),
                                       ("N0", self.n[:8], "N1"), ("N1", self.n[8:], "DISPATCH")):
                with m.State(state):
                    m.d.comb += self.rx.ready.eq(1)
                    with m.If(self.rx.valid):
                        m.d.sync += target.eq(self.rx.payload)
                        if state == "PORT":
                            m.d.sync += [bad.eq(self.rx.payload >= count)
                                         for count, bad in bad_port.items()]
                        if state == "N1":
                            m.d.sync += self.n_zero.eq((self.n[:8] == 0) & (self.rx.payload == 0))
                        m.next = nxt
            with m.State("DISPATCH"):
                m.next = "BUSY"
                with m.Switch(op):
                    with m.Case(Op.PING):
                        m.d.comb += self.send_ident.eq(1)
                    with m.Case(Op.WRITE):
                        start_if_port(self.n_in, self.start_write)
                    with m.Case(Op.READ):
                        start_if_port(self.n_out, self.start_read)
                    with m.Case(Op.CYCLES):
                        _reply(m, self.reply, Reply.CYCLES)
                    with m.Case(Op.CYCLES_RESET):
                        m.d.comb += self.clear_cycles.eq(1)
                        _reply(m, self.reply, Reply.OK)
                    with m.Case(Op.STATUS):
                        _reply(m, self.reply, Reply.STATUS)
                    with m.Case(Op.SET):
                        start_if_port(self.n_pin, self.start_set)
                    with m.Case(Op.RESET):
                        m.d.comb += [self.reset_unit.eq(1), self.clear_cycles.eq(1)]
                        _reply(m, self.reply, Reply.OK)
                    with m.Default():
                        m.d.comb += [self.fail.eq(1), self.fail_code.eq(ErrCode.OPCODE)]
            with m.State("BUSY"):
                with m.If(self.done):
                    m.next = "HUNT"
        m.d.sync += self.unit_rst.eq(self.reset_unit)
        m.d.comb += self.active.eq(~fsm.ongoing("HUNT"))
        return m


class _WritePath(wiring.Component):
    """WRITE: payload bytes -> beats -> each input stream's one-beat holding register.

    The holding registers (the ``streams`` outputs) are there so that a unit that joins several
    inputs sees a beat waiting on each of them. Bytes are assembled in a staging register whose
    ``stage_full`` flag alone gates reading bytes: reading them does not wait on a multiplexer
    over every port's holding register, which was the critical path on the iCE40. A complete
    beat moves into the port's holding register once the unit has taken the previous one; a
    beat that cannot move within ``timeout`` cycles ends the write (``timed_out`` pulses): the rest
    of the payload is consumed and dropped, and the host resends it. The reply is the number of
    beats ``accepted``. ``flush`` (the RESET command) empties the holding registers.
    """

    def __init__(self, widths, timeout):
        self.widths, self.timeout = dict(widths), timeout
        super().__init__({
            "rx": In(stream.Signature(8)),
            "start": In(1), "port": In(8), "n": In(16), "n_zero": In(1), "flush": In(1),
            "reply": Out(ReplyRequest), "accepted": Out(16), "timed_out": Out(1),
            "streams": Out(_stream_bundle(self.widths)),
        })

    def elaborate(self, platform):
        m = Module()
        names = list(self.widths)
        rx = self.rx
        byte_idx = Signal(range(_max_bytes(self.widths) + 1))
        last_byte = Signal.like(byte_idx)    # bytes per beat - 1 of the WRITE's port
        timer = Signal(range(self.timeout + 1))
        stage = Signal(8 * _max_bytes(self.widths))
        stage_full = Signal()
        stage_left = Signal(16)      # beats still to read from the FIFO (or, timed out, to drop)
        stage_more = Signal()        # stage_left != 0, kept as a flip-flop
        move_left = Signal(16)       # beats still to hand to the unit

        # A received byte goes into its staging lane whatever the state: the lanes' enables are
        # then `rx.valid`, `stage_full` and the byte index, not the state and counters (FACT's
        # 92.6 MHz ULX3S critical path ran from `stage_left` through the state decode to the
        # lanes' enables). Harmless while idle: a WRITE fills every lane of a beat from byte 0
        # before the beat counts.
        with m.If(rx.valid & ~stage_full):
            m.d.sync += stage.word_select(byte_idx, 8).eq(rx.payload)

        streams = [getattr(self.streams, name) for name in names]
        for s in streams:
            with m.If(s.ready):
                m.d.sync += s.valid.eq(0)
        with m.If(self.flush):
            m.d.sync += [s.valid.eq(0) for s in streams]
        # The WRITE's port as a one-hot register, and whether its holding register was free
        # a cycle ago: moving a staged beat then waits on two flip-flops, not on the port
        # index's decode over every holding register (FACT's ULX3S critical path, port index
        # -> move counter, was 8.8 of 11.4 ns routing). The late view is safe: only this path
        # fills a holding register, and a move empties the staging register, so the next move
        # is decided a cycle later at the earliest, when `hold_free` already sees the fill.
        write_sel = Signal(max(1, len(names)))
        hold_free = Signal()
        if names:
            m.d.sync += hold_free.eq((write_sel & ~Cat(*(s.valid for s in streams))).any())

        with m.FSM():
            with m.State("IDLE"):
                # The registers a WRITE starts from follow `port` and `n` in every idle cycle
                # (both are final when `start` comes), so their enables are the state alone,
                # not the dispatch decision.
                _load_last_byte(m, self.port, self.widths, last_byte)
                with m.Switch(self.port):
                    for i in range(len(names)):
                        with m.Case(i):
                            m.d.sync += write_sel.eq(1 << i)
                m.d.sync += [byte_idx.eq(0), timer.eq(0), stage_left.eq(self.n),
                             stage_more.eq(1), move_left.eq(self.n)]
                with m.If(self.start):
                    m.d.sync += self.accepted.eq(0)
                    with m.If(self.n_zero):
                        _reply(m, self.reply, Reply.COUNT)
                    with m.Else():
                        m.next = "COLLECT"
            # collect one beat, move it, repeat
            with m.State("COLLECT"):
                with m.If(stage_full):
                    with m.If(hold_free):
                        for i, (name, s) in enumerate(zip(names, streams)):
                            with m.If(write_sel[i]):
                                m.d.sync += [Value.cast(s.payload).eq(stage[:self.widths[name]]),
                                             s.valid.eq(1)]
                        m.d.sync += [stage_full.eq(0), timer.eq(0),
                                     self.accepted.eq(self.accepted + 1),
                                     move_left.eq(move_left - 1)]
                        with m.If(move_left == 1):
                            _reply(m, self.reply, Reply.COUNT)
                            m.next = "IDLE"
                    with m.Elif(timer == self.timeout):
                        # the staged beat is lost; drop the beats still in the FIFO
                        m.d.comb += self.timed_out.eq(1)
                        m.d.sync += stage_full.eq(0)
                        m.next = "DISCARD"
                    with m.Else():
                        m.d.sync += timer.eq(timer + 1)
                # Counters compared with constants, not sums with `n`: this gate decides
                # `rx.ready`, on a timing-critical path on the iCE40.
                with m.Elif(stage_more):
                    m.d.comb += rx.ready.eq(1)
                    with m.If(rx.valid):             # the byte is in its lane (see `stage`)
                        with m.If(byte_idx == last_byte):
                            m.d.sync += [byte_idx.eq(0), stage_full.eq(1), timer.eq(0),
                                         stage_left.eq(stage_left - 1),
                                         stage_more.eq(stage_left != 1)]
                        with m.Else():
                            m.d.sync += byte_idx.eq(byte_idx + 1)
            with m.State("DISCARD"):
                with m.If(stage_left == 0):
                    _reply(m, self.reply, Reply.COUNT)
                    m.next = "IDLE"
                with m.Else():
                    m.d.comb += rx.ready.eq(1)
                    with m.If(rx.valid):
                        with m.If(byte_idx == last_byte):
                            m.d.sync += [byte_idx.eq(0), stage_left.eq(stage_left - 1)]
                        with m.Else():
                            m.d.sync += byte_idx.eq(byte_idx + 1)
        return m


class _ReadPath(wiring.Component):
    """READ: up to ``n`` beats of output stream ``port``, each sent as TAG_BEAT + its bytes.

    Started, it asks for the OK byte (``Reply.READ``) and waits until the responder has sent it
    (``go``); then it waits for a beat, sends it and takes it (``ready``) with its last byte, so
    the unit is held while the UART sends. It ends with ``Reply.END`` after ``n`` beats, or
    early when no beat arrives for ``timeout`` cycles (``timed_out`` pulses).

    A beat is copied into a shift register that sends its low byte: no multiplexer over the
    port's bytes (a 25-byte `keep` beat on FACT) in front of the UART's shift register (FACT's
    91.7 MHz ULX3S critical path, byte index -> seven LUT levels). The copy is taken in every
    cycle until a beat is seen (`rbuf_hold`, set when waiting ends) and shifts once per byte sent
    (`rbuf_shift`): flip-flops, not state decodes.
    """

    def __init__(self, widths, timeout):
        self.widths, self.timeout = dict(widths), timeout
        super().__init__({
            "start": In(1), "port": In(8), "n": In(16), "go": In(1),
            "tx": Out(stream.Signature(8)),
            "reply": Out(ReplyRequest), "timed_out": Out(1),
            "streams": In(_stream_bundle(self.widths)),
        })

    def elaborate(self, platform):
        m = Module()
        streams = [getattr(self.streams, name) for name in self.widths]
        remaining = Signal(16)
        byte_idx = Signal(range(_max_bytes(self.widths) + 1))
        last_byte = Signal.like(byte_idx)
        timer = Signal(range(self.timeout + 1))

        rbuf = Signal(8 * _max_bytes(self.widths))
        rbuf_hold, rbuf_shift = Signal(), Signal()
        if streams:
            with m.If(~rbuf_hold):
                with m.Switch(self.port):
                    for i, s in enumerate(streams):
                        with m.Case(i):
                            m.d.sync += rbuf.eq(Value.cast(s.payload))
            with m.Elif(rbuf_shift & self.tx.ready):
                m.d.sync += rbuf.eq(rbuf >> 8)

        with m.FSM():
            with m.State("IDLE"):
                # loaded in every idle cycle, so their enables are the state alone
                _load_last_byte(m, self.port, self.widths, last_byte)
                m.d.sync += [remaining.eq(self.n), byte_idx.eq(0), timer.eq(0)]
                with m.If(self.start):
                    _reply(m, self.reply, Reply.READ)
                    m.next = "OK"
            with m.State("OK"):
                with m.If(self.go):
                    m.next = "WAIT"
            with m.State("WAIT"):
                valid = Signal()
                # `rbuf` loads the port's payload in this state's every cycle (see `rbuf`)
                with m.Switch(self.port):
                    for i, s in enumerate(streams):
                        with m.Case(i):
                            m.d.comb += valid.eq(s.valid)
                with m.If(remaining == 0):
                    _reply(m, self.reply, Reply.END)
                    m.next = "IDLE"
                with m.Elif(valid):
                    m.d.sync += [byte_idx.eq(0), rbuf_hold.eq(1)]
                    m.next = "TAG"
                with m.Elif(timer == self.timeout):
                    m.d.comb += self.timed_out.eq(1)
                    _reply(m, self.reply, Reply.END)
                    m.next = "IDLE"
                with m.Else():
                    m.d.sync += timer.eq(timer + 1)
            with m.State("TAG"):
                m.d.comb += [self.tx.payload.eq(TAG_BEAT), self.tx.valid.eq(1)]
                with m.If(self.tx.ready):
                    m.d.sync += rbuf_shift.eq(1)
                    m.next = "BYTE"
            with m.State("BYTE"):
                take = Signal()
                m.d.comb += [self.tx.payload.eq(rbuf[:8]), self.tx.valid.eq(1)]
                with m.Switch(self.port):
                    for i, s in enumerate(streams):
                        with m.Case(i):
                            m.d.comb += s.ready.eq(take)
                with m.If(self.tx.ready):
                    with m.If(byte_idx == last_byte):
                        m.d.comb += take.eq(1)     # the beat leaves the unit with its last byte
                        m.d.sync += [remaining.eq(remaining - 1), timer.eq(0),
                                     rbuf_hold.eq(0), rbuf_shift.eq(0)]
                        m.next = "WAIT"
                    with m.Else():
                        m.d.sync += byte_idx.eq(byte_idx + 1)
        return m


class _SetPath(wiring.Component):
    """SET: one value for plain input ``port``, held in its static register (the ``statics``
    outputs, which start at the unit ports' initial values) until the next SET."""

    def __init__(self, widths, inits=None):
        self.widths = dict(widths)
        inits = inits or {}
        super().__init__({
            "rx": In(stream.Signature(8)),
            "start": In(1), "port": In(8),
            "reply": Out(ReplyRequest),
            "statics": Out(wiring.Signature({name: Out(w, init=inits.get(name))
                                             for name, w in self.widths.items()})),
        })

    def elaborate(self, platform):
        m = Module()
        byte_idx = Signal(range(_max_bytes(self.widths) + 1))
        last_byte = Signal.like(byte_idx)
        value = Signal(8 * _max_bytes(self.widths))      # the value being assembled
        with m.FSM():
            with m.State("IDLE"):
                _load_last_byte(m, self.port, self.widths, last_byte)    # see _WritePath
                m.d.sync += byte_idx.eq(0)
                with m.If(self.start):
                    m.next = "COLLECT"
            with m.State("COLLECT"):
                m.d.comb += self.rx.ready.eq(1)
                with m.If(self.rx.valid):
                    m.d.sync += value.word_select(byte_idx, 8).eq(self.rx.payload)
                    with m.If(byte_idx == last_byte):
                        m.next = "APPLY"
                    with m.Else():
                        m.d.sync += byte_idx.eq(byte_idx + 1)
            with m.State("APPLY"):
                with m.Switch(self.port):
                    for i, (name, w) in enumerate(self.widths.items()):
                        with m.Case(i):
                            m.d.sync += getattr(self.statics, name).eq(value[:w])
                _reply(m, self.reply, Reply.OK)
                m.next = "IDLE"
        return m


class _ErrorDrain(wiring.Component):
    """After a bad opcode or port: drop every received byte until nothing is waiting and the line
    has been idle (``line_idle``: 12 bit times), *then* ask for ``ERR, code``. So a bad frame's
    payload never turns into a command, and the host's next frame, sent after the ERR, is never
    eaten."""

    def __init__(self):
        super().__init__({"rx": In(stream.Signature(8)), "start": In(1), "code": In(8),
                          "rx_empty": In(1), "line_idle": In(1),
                          "err_code": Out(8), "reply": Out(ReplyRequest)})

    def elaborate(self, platform):
        m = Module()
        with m.FSM():
            with m.State("IDLE"):
                with m.If(self.start):
                    m.d.sync += self.err_code.eq(self.code)
                    m.next = "DROP"
            with m.State("DROP"):
                m.d.comb += self.rx.ready.eq(1)
                with m.If(self.rx_empty & self.line_idle):
                    _reply(m, self.reply, Reply.ERROR)
                    m.next = "IDLE"
        return m


class _Responder(wiring.Component):
    """Sends the response a part asked for (``req``), or OK and the identity (``send_ident``),
    then pulses ``done`` (or ``read_go`` after a READ's OK byte, when the read path takes over).

    What a response carries is chosen by a small register (``kind``): a request only picks a
    source, and the response register is loaded from it one cycle later. Loading it straight
    from the requesting states made its enable (every bit, status included, spread over the die)
    hang off the deepest decisions of the state machine: the 60.8 MHz critical path of the ViTCoD
    ULX3S build ran from a holding register's valid through the WRITE logic to that enable. The
    values (``count``, ``cycles``, ``status``, ``err_code``) are read then, when they are final.
    """

    def __init__(self, ident: bytes, status_bits: int):
        self.ident = bytes(ident)
        self.status_bytes = (status_bits + 7) // 8
        super().__init__({
            "req": In(ReplyRequest), "send_ident": In(1),
            "count": In(16), "cycles": In(32), "status": In(8 + status_bits), "err_code": In(8),
            "tx": Out(stream.Signature(8)),
            "status_taken": Out(1),      # the flags in `status` are being reported
            "done": Out(1), "read_go": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        sources = {                      # kind: (value, bytes)
            Reply.OK: (Const(OK, 8), 1),
            Reply.READ: (Const(OK, 8), 1),
            Reply.COUNT: (Cat(Const(OK, 8), self.count), 3),
            Reply.CYCLES: (Cat(Const(OK, 8), self.cycles), 5),
            Reply.STATUS: (Cat(Const(OK, 8), self.status), 2 + self.status_bytes),
            Reply.END: (Const(TAG_END, 8), 1),
            Reply.ERROR: (Cat(Const(ERR, 8), self.err_code), 2),
        }
        resp_bytes = max(length for _, length in sources.values())
        resp = Signal(8 * resp_bytes)
        resp_len = Signal(range(resp_bytes + 1))
        kind = Signal(Reply)
        ident = Const(int.from_bytes(bytes([OK]) + self.ident, "little"),
                      8 * (len(self.ident) + 1))
        ident_idx = Signal(range(len(self.ident) + 1))

        with m.FSM():
            with m.State("IDLE"):
                # `kind` loads in every idle cycle: its enable is the state alone
                m.d.sync += kind.eq(self.req.kind)
                with m.If(self.send_ident):
                    m.next = "SEND_ID"
                with m.Elif(self.req.valid):
                    m.next = "RESPOND"
            with m.State("RESPOND"):
                with m.Switch(kind):
                    for k, (value, length) in sources.items():
                        with m.Case(k):
                            m.d.sync += [resp.eq(value), resp_len.eq(length)]
                            if k == Reply.STATUS:
                                m.d.comb += self.status_taken.eq(1)
                m.next = "SEND"
            with m.State("SEND"):
                m.d.comb += [self.tx.payload.eq(resp[:8]), self.tx.valid.eq(1)]
                with m.If(self.tx.ready):
                    m.d.sync += [resp.eq(resp >> 8), resp_len.eq(resp_len - 1)]
                    with m.If(resp_len == 1):
                        with m.If(kind == Reply.READ):
                            m.d.comb += self.read_go.eq(1)
                        with m.Else():
                            m.d.comb += self.done.eq(1)
                        m.next = "IDLE"
            with m.State("SEND_ID"):
                m.d.comb += [self.tx.payload.eq(ident.word_select(ident_idx, 8)),
                             self.tx.valid.eq(1)]
                with m.If(self.tx.ready):
                    m.d.sync += ident_idx.eq(ident_idx + 1)
                    with m.If(ident_idx == len(self.ident)):
                        m.d.sync += ident_idx.eq(0)
                        m.d.comb += self.done.eq(1)
                        m.next = "IDLE"
        return m


class _LinkFlags(wiring.Component):
    """The sticky link flags (bit 0 RX overflow, bit 1 framing error, bit 2 timeout), cleared
    when STATUS reports them (an event in that very cycle is lost)."""

    def __init__(self):
        super().__init__({"overflow": In(1), "framing_error": In(1), "timeout": In(1),
                          "clear": In(1), "flags": Out(8)})

    def elaborate(self, platform):
        m = Module()
        with m.If(self.clear):
            m.d.sync += self.flags.eq(0)
        with m.Else():
            m.d.sync += self.flags.eq(self.flags
                                      | Cat(self.overflow, self.framing_error, self.timeout))
        return m


class HostLinkParser(wiring.Component):
    """The host link without its UART: command bytes in (``i``), response bytes out (``o``), a
    unit's ports on ``unit``; the protocol is described in :mod:`vitaccel.boards.hostlink`.

    Parameters
    ----------
    ins, outs, pins, pouts : dict
        The unit's ``{name: width}`` input streams, output streams, plain inputs and plain
        outputs (:func:`vitaccel.rtl.common.ports.stream_ports` / ``plain_ports``).
    unit_id : int or str
        Reported by PING (strings through :func:`~.hostlink_protocol.unit_id_of`).
    rx_depth : int or None
        RX FIFO bytes; default: enough for two of the widest input beats, at least 64.
    timeout : int
        Cycles a WRITE beat may wait for ``ready`` (or a READ for ``valid``) before the command
        ends early.
    pin_inits : dict or None
        Initial values of the static registers behind the plain inputs (default 0).

    Ports
    -----
    i : In(stream.Signature(8))
        Received bytes, as from :class:`~.uart.UARTRx`: a byte is never held back, so one that
        finds the RX FIFO full (``i.ready`` low) is lost and sets the overflow flag.
    o : Out(stream.Signature(8))
        Response bytes, from a register (``o.valid`` and ``o.payload`` are flip-flops).
    line_idle, framing_error : In(1)
        From the receiver: the line has been idle for 12 bit times; a byte had a bad stop bit.
    cycles : In(32)
        The cycle counter, reported by CYCLES; ``clear_cycles`` (Out) pulses on CYCLES_RESET and
        RESET.
    unit : Out(unit_signature(...))
        The unit's ports as the link sees them; ``unit_rst`` (Out) is its registered reset.
    active : Out(1)
        A command is being read or carried out.
    link_error : Out(1)
        The overflow or framing flag is set.
    """

    def __init__(self, ins, outs, pins, pouts, *, unit_id=0, rx_depth=None, timeout=1 << 18,
                 pin_inits=None):
        self.ins, self.outs, self.pins, self.pouts = (dict(g) for g in (ins, outs, pins, pouts))
        try:
            self.rx_depth = check_link_params(self.ins, self.outs, self.pins, self.pouts,
                                              rx_depth=rx_depth, timeout=timeout,
                                              who="HostLinkParser")
        except ValueError:
            self._MustUse__silence = True     # no "created but never used" on top of the error
            raise
        self.timeout = int(timeout)
        self.unit_id = unit_id_of(unit_id)
        self.pin_inits = dict(pin_inits or {})
        super().__init__({
            "i": In(stream.Signature(8)), "o": Out(stream.Signature(8)),
            "line_idle": In(1), "framing_error": In(1),
            "cycles": In(32), "clear_cycles": Out(1),
            "unit": Out(unit_signature(self.ins, self.outs, self.pins, self.pouts,
                                       self.pin_inits)),
            "unit_rst": Out(1), "active": Out(1), "link_error": Out(1),
        })

    def identity_bytes(self) -> bytes:
        """The PING response after the OK byte."""
        return identity_bytes(self.unit_id, self.rx_depth,
                              (self.ins, self.outs, self.pins, self.pouts))

    def elaborate(self, platform):
        m = Module()
        m.submodules.rx_fifo = fifo = SyncFIFOBuffered(width=8, depth=self.rx_depth)
        m.submodules.rx_byte = rx_byte = _ByteRegister()
        m.submodules.decoder = decoder = _CommandDecoder(len(self.ins), len(self.outs),
                                                         len(self.pins))
        m.submodules.write = write = _WritePath(self.ins, self.timeout)
        m.submodules.read = read = _ReadPath(self.outs, self.timeout)
        m.submodules.set = set_ = _SetPath(self.pins, self.pin_inits)
        m.submodules.drain = drain = _ErrorDrain()
        m.submodules.responder = responder = _Responder(self.identity_bytes(),
                                                        sum(self.pouts.values()))
        m.submodules.flags = flags = _LinkFlags()
        m.submodules.tx_byte = tx_byte = _ByteRegister()

        # Received bytes: FIFO, then a byte register that the FIFO fills whenever it is empty, so
        # every enable on the FIFO side is a flip-flop and the parts' read decision (`ready`,
        # which hangs off their states and counters) drives nothing but the register's valid.
        # Driving the FIFO's read pointers (FACT's 84.5 MHz ULX3S critical path), and later a
        # skid buffer's enables (ViTCoD's 71.6 MHz one: 12 of 14 ns routing across the link),
        # from that decision were both long routes.
        wiring.connect(m, wiring.flipped(self.i), fifo.w_stream)
        wiring.connect(m, fifo.r_stream, rx_byte.i)
        readers = [decoder.rx, write.rx, set_.rx, drain.rx]
        for r in readers:
            m.d.comb += [r.payload.eq(rx_byte.o.payload), r.valid.eq(rx_byte.o.valid)]
        m.d.comb += rx_byte.o.ready.eq(Cat(*(r.ready for r in readers)).any())

        # The decoder starts one part per command; the part reads `port` and `n` while it works.
        for part in (write, read):
            m.d.comb += [part.port.eq(decoder.port), part.n.eq(decoder.n)]
        m.d.comb += [
            write.n_zero.eq(decoder.n_zero),
            write.start.eq(decoder.start_write), write.flush.eq(decoder.reset_unit),
            read.start.eq(decoder.start_read), read.go.eq(responder.read_go),
            set_.start.eq(decoder.start_set), set_.port.eq(decoder.port),
            drain.start.eq(decoder.fail), drain.code.eq(decoder.fail_code),
            drain.rx_empty.eq(~rx_byte.o.valid & ~fifo.r_rdy), drain.line_idle.eq(self.line_idle),
            decoder.done.eq(responder.done), responder.send_ident.eq(decoder.send_ident),
        ]

        # Responses: only one part asks at a time, and a part's request is zero while it doesn't.
        m.d.comb += responder.req.eq(Value.cast(decoder.reply) | Value.cast(write.reply)
                                     | Value.cast(read.reply) | Value.cast(set_.reply)
                                     | Value.cast(drain.reply))
        m.d.comb += [
            responder.count.eq(write.accepted), responder.cycles.eq(self.cycles),
            responder.status.eq(Cat(flags.flags, *(Value.cast(getattr(self.unit, name))
                                                   for name in self.pouts))),
            responder.err_code.eq(drain.err_code),
        ]
        # Bytes to send: the responder and the read path take turns (the read path sends only
        # between the responder's READ and END replies), each drives zeros while silent. The byte
        # register hands them to the transmitter, so the transmitter's enables come from
        # flip-flops: its load decision was the parser's state decode, routed to the TX pin's
        # corner of the chip (ViTCoD's 71.1 MHz ULX3S critical path, 12 of 14 ns routing).
        m.d.comb += [tx_byte.i.valid.eq(responder.tx.valid | read.tx.valid),
                     tx_byte.i.payload.eq(responder.tx.payload | read.tx.payload),
                     responder.tx.ready.eq(tx_byte.i.ready), read.tx.ready.eq(tx_byte.i.ready)]
        wiring.connect(m, tx_byte.o, wiring.flipped(self.o))

        m.d.comb += [
            flags.overflow.eq(self.i.valid & ~self.i.ready),
            flags.framing_error.eq(self.framing_error),
            flags.timeout.eq(write.timed_out | read.timed_out),
            flags.clear.eq(responder.status_taken),
            self.link_error.eq(flags.flags[:2].any()),
        ]

        # the unit's side
        for name in self.ins:
            wiring.connect(m, getattr(write.streams, name),
                           wiring.flipped(getattr(self.unit, name)))
        for name in self.outs:
            wiring.connect(m, wiring.flipped(getattr(self.unit, name)),
                           getattr(read.streams, name))
        for name in self.pins:
            m.d.comb += getattr(self.unit, name).eq(getattr(set_.statics, name))
        m.d.comb += [self.unit_rst.eq(decoder.unit_rst), self.clear_cycles.eq(decoder.clear_cycles),
                     self.active.eq(decoder.active)]
        return m
