"""UARTRx / UARTTx (boards/uart.py) in Amaranth's simulator, bit by bit: transmitter into
receiver with random bytes and random valid gaps, the transmitter's frame timing, a framing error,
a glitch that is not a start bit, and the receiver's idle flag."""
import random

import pytest
from amaranth.hdl import Module
from amaranth.sim import Simulator

from vitaccel.boards.uart import UARTRx, UARTTx


def bits_of(byte, stop=1):
    return [0] + [(byte >> i) & 1 for i in range(8)] + [stop]


def simulate(dut, *benches):
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    for bench, background in benches:
        sim.add_testbench(bench, background=background)
    sim.run()


@pytest.mark.parametrize("divisor", [2, 3, 4, 7])
def test_loopback_random_bytes(divisor):
    """Every byte sent arrives once, in order, with no framing error, whether it follows the
    previous one back to back or after random valid gaps."""
    rng = random.Random(divisor)
    data = [rng.randrange(256) for _ in range(40)]
    m = Module()
    m.submodules.tx = tx = UARTTx(divisor)
    m.submodules.rx = rx = UARTRx(divisor)
    m.d.comb += rx.rx.eq(tx.tx)
    got, errors = [], []

    async def source(ctx):
        for byte in data:
            while rng.random() < 0.3:
                await ctx.tick()
            ctx.set(tx.i.payload, byte)
            ctx.set(tx.i.valid, 1)
            await ctx.tick().until(tx.i.ready)
            ctx.set(tx.i.valid, 0)

    async def sink(ctx):
        ctx.set(rx.o.ready, 1)
        for _ in range(len(data) * (12 * divisor + 10) + 100):
            _, _, valid, payload, framing_error = await ctx.tick().sample(
                rx.o.valid, rx.o.payload, rx.framing_error)
            if valid:
                got.append(payload)
            if framing_error:
                errors.append(len(got))
            if len(got) == len(data):
                return

    simulate(m, (source, False), (sink, False))
    assert got == data
    assert errors == []


@pytest.mark.parametrize("divisor", [2, 5])
def test_transmitter_frame_timing(divisor):
    """Start bit, 8 data bits LSB first, stop bit, each ``divisor`` cycles; ``ready`` only when
    the line is back to idle."""
    dut = UARTTx(divisor)
    line = []

    async def bench(ctx):
        assert ctx.get(dut.tx) == 1 and ctx.get(dut.i.ready) == 1
        ctx.set(dut.i.payload, 0x5C)
        ctx.set(dut.i.valid, 1)
        await ctx.tick()
        ctx.set(dut.i.valid, 0)
        for _ in range(10 * divisor):
            line.append(ctx.get(dut.tx))
            if len(line) < 10 * divisor:
                assert not ctx.get(dut.i.ready)
            await ctx.tick()
        assert ctx.get(dut.i.ready) and ctx.get(dut.tx) == 1

    simulate(dut, (bench, False))
    assert line == [b for b in bits_of(0x5C) for _ in range(divisor)]


def drive_bits(ctx, dut, bits, divisor):
    async def run():
        for bit in bits:
            ctx.set(dut.rx, bit)
            await ctx.tick().repeat(divisor)
    return run()


def test_framing_error_drops_the_byte_and_the_next_byte_arrives():
    divisor = 4
    dut = UARTRx(divisor)
    events = []

    async def watch(ctx):
        ctx.set(dut.o.ready, 1)
        while True:
            _, _, valid, payload, framing_error = await ctx.tick().sample(
                dut.o.valid, dut.o.payload, dut.framing_error)
            if valid:
                events.append(("byte", payload))
            if framing_error:
                events.append(("framing_error",))

    async def bench(ctx):
        await drive_bits(ctx, dut, [1] * 3 + bits_of(0x3C, stop=0) + [1] * 3, divisor)
        await drive_bits(ctx, dut, bits_of(0xA5) + [1] * 3, divisor)

    simulate(dut, (watch, True), (bench, False))
    assert events == [("framing_error",), ("byte", 0xA5)]


def test_a_short_glitch_is_not_a_start_bit():
    divisor = 8
    dut = UARTRx(divisor)
    events = []

    async def watch(ctx):
        while True:
            _, _, valid, framing_error = await ctx.tick().sample(dut.o.valid, dut.framing_error)
            if valid or framing_error:
                events.append((valid, framing_error))

    async def bench(ctx):
        ctx.set(dut.rx, 0)
        await ctx.tick().repeat(divisor // 2 - 1)      # low for less than half a bit
        ctx.set(dut.rx, 1)
        await ctx.tick().repeat(12 * divisor)

    simulate(dut, (watch, True), (bench, False))
    assert events == []


def test_idle_after_idle_bits_of_high_line():
    divisor, idle_bits = 3, 5
    dut = UARTRx(divisor, idle_bits=idle_bits)

    async def bench(ctx):
        await drive_bits(ctx, dut, bits_of(0x00), divisor)
        ctx.set(dut.rx, 1)
        high = 0
        while not ctx.get(dut.idle):
            await ctx.tick()
            high += 1
            assert high < 100, "idle never rose"
        # two synchroniser stages and the output register come on top of the idle time
        assert idle_bits * divisor <= high <= idle_bits * divisor + 4
        ctx.set(dut.rx, 0)
        await ctx.tick().repeat(4)
        assert not ctx.get(dut.idle)

    simulate(dut, (bench, False))


def test_divisor_is_checked():
    with pytest.raises(ValueError, match="divisor"):
        UARTRx(1)
    with pytest.raises(ValueError, match="divisor"):
        UARTTx(0)
    with pytest.raises(ValueError, match="idle_bits"):
        UARTRx(4, idle_bits=0)
