"""HostLinkParser (boards/hostlink_parser.py) on bytes, no UART in the loop: frames go in on a
byte stream with random gaps, responses come out under random back-pressure, and a small unit
sits on the parser's ``unit`` ports. PING, WRITE/READ, SET/STATUS, CYCLES, RESET, errors and the
recovery after them, the write and read timeouts, the RX overflow flag."""
import random
from collections import deque

import pytest
from amaranth.hdl import Module, ResetInserter, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.sim import Simulator

from vitaccel.boards.hostlink_parser import HostLinkParser
from vitaccel.boards.hostlink_protocol import (ERR, FLAG_FRAMING, FLAG_OVERFLOW, FLAG_TIMEOUT, OK,
                                               SYNC, TAG_BEAT, TAG_END, ErrCode, Op)
from vitaccel.rtl.common.ports import plain_ports, stream_ports

IDLE_CYCLES = 12          # the bench's "line idle": this many cycles without a byte


class AddK(wiring.Component):
    """y = x + k (16 bits, wrapping), one output register; ``error`` sticks once x is 0xFFFF;
    ``busy`` while a result waits."""
    x: In(stream.Signature(16))
    y: Out(stream.Signature(16))
    k: In(16, init=5)
    busy: Out(1)
    error: Out(1)

    def elaborate(self, platform):
        m = Module()
        m.d.comb += [self.x.ready.eq(~self.y.valid | self.y.ready), self.busy.eq(self.y.valid)]
        with m.If(self.y.ready):
            m.d.sync += self.y.valid.eq(0)
        with m.If(self.x.valid & self.x.ready):
            m.d.sync += [self.y.valid.eq(1), self.y.payload.eq(self.x.payload + self.k)]
            with m.If(self.x.payload == 0xFFFF):
                m.d.sync += self.error.eq(1)
        return m


class Join(wiring.Component):
    """s = a + b (12-bit inputs): takes a beat only when both inputs have one."""
    a: In(stream.Signature(12))
    b: In(stream.Signature(12))
    s: Out(stream.Signature(13))

    def elaborate(self, platform):
        m = Module()
        take = self.a.valid & self.b.valid & (~self.s.valid | self.s.ready)
        m.d.comb += [self.a.ready.eq(take), self.b.ready.eq(take)]
        with m.If(self.s.ready):
            m.d.sync += self.s.valid.eq(0)
        with m.If(take):
            m.d.sync += [self.s.valid.eq(1), self.s.payload.eq(self.a.payload + self.b.payload)]
        return m


def frame(op, port=0, n=0, payload=b""):
    return bytes([SYNC, op, port, n & 0xFF, n >> 8]) + bytes(payload)


class Bench:
    """A parser with ``unit`` on its ports, a byte feeder with random gaps (``line_idle`` rises
    after :data:`IDLE_CYCLES` cycles without a byte, as a UART receiver's would) and a response
    sink with random back-pressure. ``exchange`` sends bytes and waits for a number of bytes back;
    ``cycles_in`` drives the parser's cycle counter input, ``clears`` counts its clear pulses."""

    def __init__(self, unit, seed=0, p_ready=0.6, max_gap=3, **kw):
        ins, outs = stream_ports(unit)
        pins, pouts = plain_ports(unit)
        pin_inits = {name: getattr(unit, name).init for name in pins}
        self.parser = HostLinkParser(ins, outs, pins, pouts, pin_inits=pin_inits, **kw)
        self.unit = unit
        m = Module()
        m.submodules.parser = self.parser
        m.submodules.unit = ResetInserter(self.parser.unit_rst)(unit)
        wiring.connect(m, self.parser.unit, unit)
        self.cycles_in = Signal(32)
        m.d.comb += self.parser.cycles.eq(self.cycles_in)
        self.rng = random.Random(seed)
        self.p_ready, self.max_gap = p_ready, max_gap
        self.to_parser, self.got = deque(), deque()
        self.cycle, self.last_sent, self.clears, self.unit_resets = 0, 0, 0, 0
        self.got_at = []          # cycle at which each response byte arrived
        self.sim = Simulator(m)
        self.sim.add_clock(1e-8)
        self.sim.add_testbench(self._feed, background=True)
        self.sim.add_testbench(self._sink, background=True)

    async def _feed(self, ctx):
        p = self.parser
        while True:
            if self.to_parser:
                for _ in range(self.rng.randint(1, self.max_gap)):
                    await ctx.tick()
                ctx.set(p.i.payload, self.to_parser.popleft())
                ctx.set(p.i.valid, 1)
                ctx.set(p.line_idle, 0)
                await ctx.tick()
                ctx.set(p.i.valid, 0)
                self.last_sent = self.cycle
            else:
                ctx.set(p.line_idle, self.cycle - self.last_sent >= IDLE_CYCLES)
                await ctx.tick()

    async def _sink(self, ctx):
        p = self.parser
        while True:
            ctx.set(p.o.ready, self.rng.random() < self.p_ready)
            _, _, valid, ready, payload, clear, rst = await ctx.tick().sample(
                p.o.valid, p.o.ready, p.o.payload, p.clear_cycles, p.unit_rst)
            self.cycle += 1
            self.clears += clear
            self.unit_resets += rst
            if valid and ready:
                self.got.append(payload)
                self.got_at.append(self.cycle)

    def run(self, test):
        self.sim.add_testbench(test)
        self.sim.run()

    async def exchange(self, ctx, data, n, max_cycles=5000):
        """Send ``data``; return the next ``n`` response bytes (fewer if they do not come)."""
        self.to_parser.extend(bytes(data))
        deadline = self.cycle + max_cycles
        while len(self.got) < n and self.cycle < deadline:
            await ctx.tick()
        return bytes(self.got.popleft() for _ in range(min(n, len(self.got))))

    async def quiet(self, ctx, cycles=300):
        """Let ``cycles`` pass; return any response bytes that came (there should be none)."""
        await ctx.tick().repeat(cycles)
        out = bytes(self.got)
        self.got.clear()
        return out


def le(value, nbytes):
    return int(value).to_bytes(nbytes, "little")


def read_response(beats, nbytes):
    return bytes([OK]) + b"".join(bytes([TAG_BEAT]) + le(b, nbytes) for b in beats) \
        + bytes([TAG_END])


@pytest.mark.parametrize("seed", [0, 1])
def test_ping_returns_the_identity(seed):
    bench = Bench(AddK(), seed=seed, unit_id=0x1234)
    ident = bench.parser.identity_bytes()
    assert ident[:4] == b"VTAX" and ident[5:7] == le(0x1234, 2)

    async def test(ctx):
        assert await bench.exchange(ctx, frame(Op.PING), 1 + len(ident)) == bytes([OK]) + ident
        assert await bench.quiet(ctx) == b""
    bench.run(test)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_write_then_read(seed):
    bench = Bench(AddK(), seed=seed, timeout=400)
    rng = random.Random(seed)

    async def test(ctx):
        words = [rng.randrange(0xFFFF) for _ in range(3)]
        payload = b"".join(le(w, 2) for w in words)
        # AddK holds one result and the link one beat: two beats go in without a READ
        got = await bench.exchange(ctx, frame(Op.WRITE, 0, 2, payload[:4]), 3)
        assert got == bytes([OK]) + le(2, 2)
        got = await bench.exchange(ctx, frame(Op.READ, 0, 2), 2 + 2 * 3)
        assert got == read_response([(w + 5) & 0xFFFF for w in words[:2]], 2)
        # zero-length WRITE and READ
        assert await bench.exchange(ctx, frame(Op.WRITE, 0, 0), 3) == bytes([OK, 0, 0])
        assert await bench.exchange(ctx, frame(Op.READ, 0, 0), 2) == bytes([OK, TAG_END])
        # SET a new k, then one more beat through
        assert await bench.exchange(ctx, frame(Op.SET, 0, 1, le(0x100, 2)), 1) == bytes([OK])
        assert await bench.exchange(ctx, frame(Op.WRITE, 0, 1, le(words[2], 2)), 3) \
            == bytes([OK]) + le(1, 2)
        got = await bench.exchange(ctx, frame(Op.READ, 0, 5), 2 + 3)
        assert got == read_response([(words[2] + 0x100) & 0xFFFF], 2)
        assert await bench.quiet(ctx) == b""
    bench.run(test)


def test_a_unit_that_joins_two_inputs_sees_a_beat_on_each():
    bench = Bench(Join(), seed=3)

    async def test(ctx):
        assert await bench.exchange(ctx, frame(Op.WRITE, 0, 1, le(0x123, 2)), 3) \
            == bytes([OK]) + le(1, 2)
        assert await bench.exchange(ctx, frame(Op.WRITE, 1, 1, le(0xFFF, 2)), 3) \
            == bytes([OK]) + le(1, 2)
        assert await bench.exchange(ctx, frame(Op.READ, 0, 1), 5) \
            == read_response([0x123 + 0xFFF], 2)
    bench.run(test)


def test_status_cycles_and_reset():
    bench = Bench(AddK(), seed=4, timeout=100)

    async def test(ctx):
        # STATUS: flags, then busy (bit 0) and error (bit 1) packed
        assert await bench.exchange(ctx, frame(Op.STATUS), 3) == bytes([OK, 0, 0b00])
        assert await bench.exchange(ctx, frame(Op.WRITE, 0, 1, le(0xFFFF, 2)), 3) \
            == bytes([OK]) + le(1, 2)
        assert await bench.exchange(ctx, frame(Op.STATUS), 3) == bytes([OK, 0, 0b11])
        # CYCLES reports the counter input; CYCLES_RESET and RESET pulse the clear
        ctx.set(bench.cycles_in, 0xDEADBEEF)
        assert await bench.exchange(ctx, frame(Op.CYCLES), 5) == bytes([OK]) + le(0xDEADBEEF, 4)
        assert await bench.exchange(ctx, frame(Op.CYCLES_RESET), 1) == bytes([OK])
        assert (bench.clears, bench.unit_resets) == (1, 0)
        # RESET: the unit forgets its result and its error; k keeps its value
        assert await bench.exchange(ctx, frame(Op.RESET), 1) == bytes([OK])
        assert (bench.clears, bench.unit_resets) == (2, 1)
        assert await bench.exchange(ctx, frame(Op.STATUS), 3) == bytes([OK, 0, 0b00])
        assert await bench.exchange(ctx, frame(Op.READ, 0, 1), 2) == bytes([OK, TAG_END])
        # ... and the READ that found nothing timed out: the flag is reported once
        assert await bench.exchange(ctx, frame(Op.STATUS), 3) == bytes([OK, FLAG_TIMEOUT, 0])
        assert await bench.exchange(ctx, frame(Op.STATUS), 3) == bytes([OK, 0, 0])
    bench.run(test)


def test_reset_empties_the_holding_register():
    """A beat that waits in the link's holding register (the unit is full) is dropped by RESET."""
    bench = Bench(AddK(), seed=5, timeout=30)

    async def test(ctx):
        got = await bench.exchange(ctx, frame(Op.WRITE, 0, 2, le(1, 2) + le(2, 2)), 3)
        assert got == bytes([OK]) + le(2, 2)       # one in the unit, one in the holding register
        assert await bench.exchange(ctx, frame(Op.RESET), 1) == bytes([OK])
        assert await bench.exchange(ctx, frame(Op.READ, 0, 2), 2) == bytes([OK, TAG_END])
        assert await bench.exchange(ctx, frame(Op.WRITE, 0, 1, le(7, 2)), 3) == bytes([OK, 1, 0])
        assert await bench.exchange(ctx, frame(Op.READ, 0, 2), 5) == read_response([12], 2)
    bench.run(test)


@pytest.mark.parametrize("seed", [0, 1])
def test_bad_opcode_and_port_answer_after_the_line_is_idle_and_the_link_recovers(seed):
    bench = Bench(AddK(), seed=seed)

    async def test(ctx):
        assert await bench.exchange(ctx, frame(0x7E), 2) == bytes([ERR, ErrCode.OPCODE])
        assert bench.got_at[-2] - bench.last_sent >= IDLE_CYCLES
        # a bad port with a payload full of SYNC + PING frames: they must not become commands
        junk = frame(Op.PING) * 3
        assert await bench.exchange(ctx, frame(Op.WRITE, 9, 3, junk), 2) \
            == bytes([ERR, ErrCode.PORT])
        assert bench.got_at[-2] - bench.last_sent >= IDLE_CYCLES
        assert await bench.quiet(ctx) == b""
        for op in (Op.READ, Op.SET):
            assert await bench.exchange(ctx, frame(op, 1, 1, b"\x00"), 2) \
                == bytes([ERR, ErrCode.PORT])
        # garbage between frames is skipped while hunting for SYNC
        assert await bench.exchange(ctx, b"\x00\x13\x37" + frame(Op.WRITE, 0, 1, le(1, 2)), 3) \
            == bytes([OK, 1, 0])
        assert await bench.exchange(ctx, frame(Op.READ, 0, 1), 5) == read_response([6], 2)
        assert await bench.quiet(ctx) == b""
    bench.run(test)


async def read(bench, ctx, port, n, nbytes):
    """One READ of up to ``n`` beats of ``nbytes`` each; returns the beats."""
    assert await bench.exchange(ctx, frame(Op.READ, port, n), 1) == bytes([OK])
    beats = []
    while (await bench.exchange(ctx, b"", 1)) == bytes([TAG_BEAT]):
        beats.append(int.from_bytes(await bench.exchange(ctx, b"", nbytes), "little"))
    return beats


def test_write_timeout_drops_the_rest_and_the_host_can_resend():
    bench = Bench(AddK(), seed=6, timeout=40)

    async def test(ctx):
        words = list(range(10, 16))
        payload = b"".join(le(w, 2) for w in words)
        got = await bench.exchange(ctx, frame(Op.WRITE, 0, len(words), payload), 3)
        # one beat in the unit's register, one in the link's holding register, then the timeout
        assert got == bytes([OK]) + le(2, 2)
        # the dropped payload did not turn into commands, and the timeout is flagged
        assert await bench.exchange(ctx, frame(Op.STATUS), 3) == bytes([OK, FLAG_TIMEOUT, 0b01])
        took, results = 2, []
        while len(results) < len(words):
            results += await read(bench, ctx, 0, len(words), 2)
            if took < len(words):
                resend = b"".join(le(w, 2) for w in words[took:])
                got = await bench.exchange(ctx, frame(Op.WRITE, 0, len(words) - took, resend), 3)
                assert got[0] == OK and int.from_bytes(got[1:], "little") >= 1
                took += int.from_bytes(got[1:], "little")
        assert results == [w + 5 for w in words]
        assert await bench.quiet(ctx) == b""
    bench.run(test)


def test_overflow_and_framing_flags():
    bench = Bench(AddK(), seed=7, rx_depth=4, max_gap=1, timeout=2000)
    p = bench.parser

    async def test(ctx):
        # a READ waits for a beat that never comes, while 16 bytes arrive: the FIFO (4 bytes,
        # plus the byte register) overflows
        bench.to_parser.extend(frame(Op.READ, 0, 1) + bytes(range(16)))
        await ctx.tick().repeat(100)
        assert ctx.get(p.link_error)
        ctx.set(p.framing_error, 1)
        await ctx.tick()
        ctx.set(p.framing_error, 0)
        assert await bench.exchange(ctx, b"", 2) == bytes([OK, TAG_END])
        got = await bench.exchange(ctx, frame(Op.STATUS), 3)
        assert got == bytes([OK, FLAG_OVERFLOW | FLAG_FRAMING | FLAG_TIMEOUT, 0])
        assert not ctx.get(p.link_error)
    bench.run(test)


def test_parameters_are_checked():
    with pytest.raises(ValueError, match="timeout"):
        HostLinkParser({"x": 8}, {}, {}, {}, timeout=0)
    with pytest.raises(ValueError, match="rx_depth"):
        HostLinkParser({"x": 64}, {}, {}, {}, rx_depth=4)
    with pytest.raises(ValueError, match="width"):
        HostLinkParser({"x": 0}, {}, {}, {})
