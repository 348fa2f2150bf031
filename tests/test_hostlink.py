"""HostLink + HostClient in Amaranth's simulator: the client talks to the link through a simulated
UART that drives the RX pin bit by bit and decodes the TX pin (divisor = a few cycles per bit)."""

import random
from collections import deque

import pytest
from amaranth.hdl import Cat, Fragment, Module
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.sim import Simulator

from vitaccel.boards.host import HostClient, LinkError, LinkTimeout
from vitaccel.boards.hostlink import (ERR, OK, SYNC, ErrCode, HostLink, Op, beat_bytes,
                                      unit_id_of)
from vitaccel.boards.platforms import board_top
from vitaccel.sim.job import Job, plain_ports, stream_ports

DIVISOR = 4


class AddK(wiring.Component):
    """4 lanes of 8 bits: y = x + k per lane (wrapping); ``error`` sticks once a lane of x is 0xFF;
    ``busy`` while a result waits. One register of buffering, so it stalls as soon as the output
    is not read."""
    x: In(stream.Signature(32))
    y: Out(stream.Signature(32))
    k: In(8)
    busy: Out(1)
    error: Out(1)

    def elaborate(self, platform):
        m = Module()
        m.d.comb += self.x.ready.eq(~self.y.valid | self.y.ready)
        with m.If(self.y.ready):
            m.d.sync += self.y.valid.eq(0)
        lanes = [self.x.payload[8 * i:8 * i + 8] for i in range(4)]
        with m.If(self.x.valid & self.x.ready):
            m.d.sync += [self.y.valid.eq(1),
                         self.y.payload.eq(Cat(*((lane + self.k)[:8] for lane in lanes)))]
            with m.If(Cat(*(lane == 0xFF for lane in lanes)).any()):
                m.d.sync += self.error.eq(1)
        m.d.comb += self.busy.eq(self.y.valid)
        return m


def add_k(word, k):
    return sum((((word >> (8 * i)) + k) & 0xFF) << (8 * i) for i in range(4))


class WideSum(wiring.Component):
    """Two 100-bit inputs (a 3-deep FIFO-less join): s = a + b (101 bits), no busy/error, so the
    link's counter runs from the first input beat to the last output beat."""
    a: In(stream.Signature(100))
    b: In(stream.Signature(100))
    s: Out(stream.Signature(101))

    def elaborate(self, platform):
        m = Module()
        take = self.a.valid & self.b.valid & (~self.s.valid | self.s.ready)
        m.d.comb += [self.a.ready.eq(take), self.b.ready.eq(take)]
        with m.If(self.s.ready):
            m.d.sync += self.s.valid.eq(0)
        with m.If(take):
            m.d.sync += [self.s.valid.eq(1), self.s.payload.eq(self.a.payload + self.b.payload)]
        return m


class SimUART:
    """A pyserial-like transport onto a simulated design with ``rx``/``tx`` pins.

    ``write`` queues bytes that a background testbench shifts into ``rx`` (8N1, ``divisor`` cycles
    per bit); ``read(n)`` advances the simulation until ``n`` bytes were decoded from ``tx`` or
    ``timeout_cycles`` pass (then returns what it has, like a serial port read timeout).
    """

    def __init__(self, dut, link, divisor, timeout_cycles=20_000, seed=None):
        self.link, self.divisor, self.timeout_cycles = link, divisor, timeout_cycles
        self.to_board, self.from_board = deque(), deque()
        self.cycle = 0
        self.rng = random.Random(seed) if seed is not None else None
        self.sim = Simulator(dut)
        self.sim.add_clock(1e-8)
        self.sim.add_testbench(self._bench, background=True)

    def _bench_bits(self, byte):
        return [0] + [(byte >> i) & 1 for i in range(8)] + [1]

    async def _bench(self, ctx):
        d = self.divisor
        send_bits, send_left = deque(), 0        # host -> board
        rx_state, rx_count, rx_bits = "idle", 0, []
        ctx.set(self.link.rx, 1)
        while True:
            # drive the board's rx
            if send_left == 0:
                if send_bits:
                    ctx.set(self.link.rx, send_bits.popleft())
                    send_left = d
                elif self.to_board:
                    # with a seed, the host idles for a random few bit times between bytes
                    if self.rng is not None and self.rng.random() < 0.2:
                        send_bits.extend([1] * self.rng.randint(1, 3))
                    send_bits.extend(self._bench_bits(self.to_board.popleft()))
                    ctx.set(self.link.rx, send_bits.popleft())
                    send_left = d
            await ctx.tick()
            self.cycle += 1
            if send_left:
                send_left -= 1
            # decode the board's tx, sampling mid-bit
            tx = ctx.get(self.link.tx)
            if rx_state == "idle":
                if tx == 0:
                    rx_state, rx_count, rx_bits = "bits", d // 2, []
            else:
                rx_count -= 1
                if rx_count == 0:
                    rx_bits.append(tx)
                    rx_count = d
                    if len(rx_bits) == 10:
                        assert rx_bits[0] == 0, "TX start bit glitched"
                        assert rx_bits[9] == 1, "TX stop bit missing"
                        self.from_board.append(sum(b << i for i, b in enumerate(rx_bits[1:9])))
                        rx_state = "idle"

    def write(self, data):
        self.to_board.extend(bytes(data))
        return len(data)

    def read(self, n):
        deadline = self.cycle + self.timeout_cycles
        while len(self.from_board) < n and self.cycle < deadline:
            self.sim.advance()
        return bytes(self.from_board.popleft() for _ in range(min(n, len(self.from_board))))

    def run_cycles(self, n):
        end = self.cycle + n
        while self.cycle < end:
            self.sim.advance()


def make(unit, timeout=200, seed=None, use_board_top=False, **kw):
    if use_board_top:
        top = board_top(unit, "icebreaker", baud=12e6 / DIVISOR, unit_id="addk",
                        timeout=timeout, **kw)
        link = top.link
        dut = top
    else:
        link = HostLink(unit, divisor=DIVISOR, unit_id="addk", timeout=timeout, **kw)
        dut = link
    uart = SimUART(dut, link, DIVISOR, seed=seed)
    ports = (*stream_ports(unit), *plain_ports(unit))
    return link, uart, HostClient(uart, ports=ports, unit_id="addk")


def test_ping_identifies_the_unit():
    link, uart, client = make(AddK())
    ident = client.identify()
    assert ident.unit_id == unit_id_of("addk")
    assert ident.in_widths == [32] and ident.out_widths == [32]
    assert ident.plain_in_widths == [8] and ident.plain_out_widths == [1, 1]
    assert ident.rx_depth == link.rx_depth >= 64
    # the raw bytes match what the gateware was built from
    raw = client.raw(bytes([SYNC, Op.PING, 0, 0, 0]), 1 + len(link.identity_bytes()))
    assert raw == bytes([OK]) + link.identity_bytes()


@pytest.mark.parametrize("register_outputs", [False, True])
def test_write_then_read_one_beat_at_a_time(register_outputs):
    _, _, client = make(AddK(), register_outputs=register_outputs)
    client.set("k", 3)
    rng = random.Random(1)
    for _ in range(4):
        word = rng.getrandbits(32) & 0x7F7F7F7F
        assert client.write_some("x", [word]) == 1
        assert client.read_some("y", 1) == [add_k(word, 3)]


@pytest.mark.parametrize("register_outputs", [False, True])
@pytest.mark.parametrize("seed", [None, 7])
def test_run_streams_many_beats_and_counts_cycles(seed, register_outputs):
    link, uart, client = make(AddK(), seed=seed, register_outputs=register_outputs)
    rng = random.Random(2)
    words = [rng.getrandbits(32) & 0x7E7E7E7E for _ in range(24)]
    start = uart.cycle
    outputs, cycles = client.run({"x": words}, {"y": len(words)}, statics={"k": 0x11})
    assert outputs["y"] == [add_k(w, 0x11) for w in words]
    # busy-mode counter: cycles with a result pending; > 0 and bounded by the wall cycles
    assert 0 < cycles <= uart.cycle - start
    assert client.status()["error"] == 0
    client.reset_cycles()
    assert client.cycles() == 0


def test_write_times_out_instead_of_hanging_and_resumes():
    _, _, client = make(AddK(), timeout=50)
    words = list(range(1, 11))
    took = client.write_some("x", words)            # the unit buffers ~2 beats, then stalls
    assert 1 <= took < len(words)
    assert client.status()["_flags"] & 0b100        # timeout flag, cleared by the read
    assert client.status()["_flags"] == 0
    got = client.read_some("y", 10)                 # returns what there is, then ends
    assert got == [add_k(w, 0) for w in words[:took]]
    assert client.read_some("y", 1) == []           # nothing left: ends after the timeout
    rest, _ = client.run({"x": words[took:]}, {"y": len(words) - took}, reset=False)
    assert rest["y"] == [add_k(w, 0) for w in words[took:]]


def test_unknown_opcode_and_bad_port_get_errors_and_link_keeps_working():
    _, uart, client = make(AddK())
    with pytest.raises(LinkError) as e:
        client._command(0x7E)
    assert e.value.code == ErrCode.OPCODE
    client.identify()
    # a bad port with a payload full of SYNC bytes: the payload must not become commands
    uart.write(bytes([SYNC, Op.WRITE, 9, 4, 0]) + bytes([SYNC, Op.PING, 0, 0, 0] * 3))
    assert uart.read(2) == bytes([ERR, ErrCode.PORT])
    with pytest.raises(LinkError) as e:
        client._command(Op.READ, 3, 1)
    assert e.value.code == ErrCode.PORT
    with pytest.raises(LinkError):
        client._command(Op.SET, 5, 1, b"\x00")
    # garbage between frames is skipped while hunting for SYNC
    uart.write(b"\x00\x13\x37")
    client.set("k", 1)
    assert client.write_some("x", [0x01020304]) == 1
    assert client.read_some("y", 1) == [0x02030405]
    assert uart.read(1) == b""                       # no stray responses left over


@pytest.mark.parametrize("register_outputs", [False, True])
def test_status_reports_unit_error_and_reset_clears_it(register_outputs):
    _, _, client = make(AddK(), register_outputs=register_outputs)
    assert client.status()["error"] == 0
    client.write("x", [0x000000FF])
    assert client.read("y", 1) == [0x000000FF]
    st = client.status()
    assert st["error"] == 1 and st["busy"] == 0
    client.reset_unit()
    assert client.status()["error"] == 0


@pytest.mark.parametrize("register_outputs", [False, True])
def test_reset_drops_a_result_not_yet_read(register_outputs):
    """RESET empties the unit and, with registered outputs, the skid buffers in front of it:
    a result written before the reset is never read after it."""
    _, _, client = make(AddK(), timeout=50, register_outputs=register_outputs)
    assert client.write_some("x", [0x01010101]) == 1
    client.reset_unit()
    assert client.read_some("y", 1) == []
    assert client.write_some("x", [0x02020202]) == 1
    assert client.read_some("y", 1) == [add_k(0x02020202, 0)]


def test_board_top_in_simulation_runs_a_job():
    _, _, client = make(AddK(), use_board_top=True)
    job = Job(inputs={"x": [5, 6, 7]}, expect={"y": 3}, statics={"k": 2}, status=["error"])
    result = client.run_job(job)
    assert result.outputs["y"] == [add_k(w, 2) for w in (5, 6, 7)]
    assert result.status == {"error": 0}
    assert result.cycles > 0


def test_wide_two_input_unit_and_first_in_last_out_counter():
    unit = WideSum()
    link = HostLink(unit, divisor=DIVISOR, unit_id=0x1234, timeout=100)
    uart = SimUART(link, link, DIVISOR)
    client = HostClient(uart, ports=(*stream_ports(unit), *plain_ports(unit)), unit_id=0x1234)
    assert client.identify().out_widths == [101]
    assert beat_bytes(101) == 13
    rng = random.Random(3)
    a = [rng.getrandbits(100) for _ in range(6)]
    b = [rng.getrandbits(100) for _ in range(6)]
    outputs, cycles = client.run({"a": a, "b": b}, {"s": 6})
    assert outputs["s"] == [x + y for x, y in zip(a, b)]
    assert cycles > 0
    # no overflow / framing error (the timeout flag is expected: run() polls with reads)
    assert client.status()["_flags"] & 0b011 == 0


def test_client_rejects_a_different_bitstream():
    unit = AddK()
    link = HostLink(unit, divisor=DIVISOR, unit_id="other", timeout=50)
    client = HostClient(SimUART(link, link, DIVISOR), unit_id="addk")
    with pytest.raises(LinkError, match="unit id"):
        client.identify()


def test_silent_board_raises_timeout():
    class Dead:
        def write(self, data):
            return len(data)

        def read(self, n):
            return b""
    with pytest.raises(LinkTimeout):
        HostClient(Dead()).identify()


def test_ports_mode_exposes_the_unit_interface():
    unit = AddK()
    link = HostLink(ports=(*stream_ports(unit), *plain_ports(unit)), divisor=DIVISOR)
    assert set(link.signature.members) == {"rx", "tx", "busy", "error", "unit", "unit_rst"}
    assert set(link.unit.signature.members) == {"x", "y", "k", "busy", "error"}
    Fragment.get(link, None)                         # elaborates without the unit inside
    unit._MustUse__silence = True


@pytest.mark.parametrize("mode", ["busy", "span"])
def test_cycle_counter_modes(mode):
    """busy: cycles with ``busy`` high; span: first ``started`` to latest ``finished``, both
    inclusive (idle time after the last ``finished`` is not counted); ``clear`` restarts."""
    from vitaccel.boards.hostlink import CycleCounter
    dut = CycleCounter(mode)

    async def pulse(ctx, port, cycles=1):
        ctx.set(port, 1)
        await ctx.tick().repeat(cycles)
        ctx.set(port, 0)

    async def bench(ctx):
        await ctx.tick().repeat(3)
        assert ctx.get(dut.value) == 0
        if mode == "busy":
            await pulse(ctx, dut.busy, 5)
            await ctx.tick().repeat(4)
            await pulse(ctx, dut.busy, 2)
            assert ctx.get(dut.value) == 7
        else:
            await pulse(ctx, dut.started)              # cycle 0
            await ctx.tick().repeat(4)
            await pulse(ctx, dut.finished)             # cycle 5
            assert ctx.get(dut.value) == 6
            await ctx.tick().repeat(10)
            await pulse(ctx, dut.started)              # a later input changes nothing
            assert ctx.get(dut.value) == 6
            await pulse(ctx, dut.finished)             # cycle 17
            assert ctx.get(dut.value) == 18
        await pulse(ctx, dut.clear)
        await ctx.tick().repeat(3)
        assert ctx.get(dut.value) == 0

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
