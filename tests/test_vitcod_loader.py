"""RowLoader and WordLoader (rtl/vitcod/loader.py): beats with random valid gaps land in the
buffer at row * chunks_max + chunk (rows) or consecutively (validity words); ``done`` after the
last beat, no beat taken after it; ``start`` rewinds for the next command."""
import random

import pytest
from amaranth.hdl import Module, Value
from amaranth.lib import wiring
from amaranth.lib.memory import Memory

from vitaccel.rtl.vitcod.loader import RowLoader, WordLoader

from vitcod_bench import config, set_run, simulate


def load(dut, cfg, commands, seed):
    """Run ``commands`` (each: cmd fields and beats) one after the other; return the buffer
    after each and the beats taken."""
    m = Module()
    m.submodules.dut = dut
    m.submodules.mem = mem = Memory(shape=dut.wr.data.shape(), depth=1 << len(dut.wr.addr),
                                    init=[])
    wiring.connect(m, dut.wr, mem.write_port())
    rng = random.Random(seed)
    snapshots = []
    extra = 3                                    # beats offered after the last one

    async def bench(ctx):
        for cmd, beats in commands:
            set_run(ctx, dut.run, cfg, **cmd)
            ctx.set(dut.start, 1)
            await ctx.tick()
            ctx.set(dut.start, 0)
            ctx.set(dut.load, 1)
            taken = 0
            it = iter(beats + [0] * extra)
            beat = next(it)
            for _ in range(10 * len(beats) + 20):
                if rng.random() < 0.3:
                    ctx.set(dut.i.valid, 0)
                else:
                    ctx.set(dut.i.valid, 1)
                    ctx.set(Value.cast(dut.i.payload), beat)
                *_, valid, ready, done = await ctx.tick().sample(dut.i.valid, dut.i.ready,
                                                                 dut.done)
                if valid and ready:
                    taken += 1
                    beat = next(it)
                if done:
                    break
            for _ in range(extra):               # after done: nothing more is taken
                ctx.set(dut.i.valid, 1)
                *_, ready = await ctx.tick().sample(dut.i.ready)
                assert not ready
            ctx.set(dut.i.valid, 0)
            ctx.set(dut.load, 0)
            snapshots.append((taken, [ctx.get(mem.data[a]) for a in range(mem.depth)]))

    simulate(m, bench)
    return snapshots


@pytest.mark.parametrize("seed", range(3))
def test_rows_at_their_stride(seed):
    cfg = config(d_max=8, macs_per_line=3)          # chunks_max 3
    rng = random.Random(seed)
    commands = []
    for n, chunks in ((5, 3), (7, 1), (3, 2)):
        beats = [rng.randrange(1 << 24) for _ in range(n * chunks)]
        commands.append((dict(n=n, chunks=chunks, g=1, nnz=0, lines_d=1, dense_groups=1),
                         beats))
    for (cmd, beats), (taken, buf) in zip(commands, load(RowLoader(cfg), cfg, commands, seed)):
        assert taken == len(beats)
        for r in range(cmd["n"]):
            for c in range(cmd["chunks"]):
                assert buf[r * cfg.chunks_max + c] == beats[r * cmd["chunks"] + c]


@pytest.mark.parametrize("seed", range(3))
def test_validity_words_in_order(seed):
    cfg = config()
    rng = random.Random(seed)
    commands = []
    for n, groups in ((6, 2), (4, 0), (9, 1)):
        beats = [rng.randrange(1 << cfg.lines) for _ in range(n * groups)]
        commands.append((dict(n=n, chunks=1, g=groups, nnz=0, lines_d=1, dense_groups=groups),
                         beats))
    for (cmd, beats), (taken, buf) in zip(commands, load(WordLoader(cfg), cfg, commands, seed)):
        assert taken == len(beats)                  # none at all without global columns
        assert buf[:len(beats)] == beats
