"""Shared pieces of the ViTCoD component tests (tests/test_vitcod_*.py): small configs, the run
constants of a command on a component's ``run``/``params`` port, seeded stream sources."""
import dataclasses

from amaranth.hdl import Value
from amaranth.sim import Simulator

from vitaccel import units
from vitaccel.rtl.vitcod.layouts import run_constants, run_layout
from vitaccel.sim.job import pack_fields

u = units.get("vitcod")

#: 4 lines x 3 MACs, N <= 16, d <= 8 (chunks <= 3): the RTL tests' small config
SMALL = u.Config(lines=4, macs_per_line=3, n_max=16, d_max=8, g_max=16, nnz_max=160,
                 dense_groups_max=8, normalisers=3, theta_d=4, q_scale=0.02, k_scale=0.03,
                 v_scale=1 / 64, out_scale=1 / 64)


def config(**changes):
    return dataclasses.replace(SMALL, **changes)


def set_run(ctx, port, cfg, **cmd):
    """Drive a component's run-constants port as the core would after accepting ``cmd``
    (``n``, ``chunks``, ``g``, ``nnz``, ``lines_d``, ``dense_groups``)."""
    ctx.set(Value.cast(port), pack_fields(run_layout(cfg), **run_constants(cfg, **cmd)))


def command(cm, lines, chunks):
    """The command fields of a compiled mask (the unit's line split)."""
    ld, _ = cm.split(lines)
    return dict(n=cm.n, chunks=chunks, g=cm.g, nnz=cm.nnz, lines_d=ld,
                dense_groups=-(-cm.g // ld) if cm.g else 0)


def stream_source(port, beats, rng, gap=0.3):
    """A testbench pushing ``beats`` into the stream ``port``, idling before each beat for a
    geometric number of cycles (mean ``gap / (1 - gap)``; ``rng``: a seeded random.Random)."""
    async def source(ctx):
        for beat in beats:
            idle = 0
            while rng.random() < gap:
                idle += 1
            if idle:
                ctx.set(port.valid, 0)
                await ctx.tick().repeat(idle)
            ctx.set(Value.cast(port.payload), beat)
            ctx.set(port.valid, 1)
            await ctx.tick().until(port.ready)
        ctx.set(port.valid, 0)
    return source

def simulate(top, *testbenches, background=()):
    """Run ``testbenches`` (and the ``background`` ones) on ``top`` with a clock."""
    sim = Simulator(top)
    sim.add_clock(1e-6)
    for bench in testbenches:
        sim.add_testbench(bench)
    for bench in background:
        sim.add_testbench(bench, background=True)
    sim.run()
