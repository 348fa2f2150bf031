"""Board tops and builds: ``do_build=False`` smoke tests for every board (no toolchain), report
parsing on a fixed report, and real YoWASP builds marked ``board`` (one) and ``slow`` (the rest)."""
import json
import os
from pathlib import Path

import pytest
from amaranth.hdl import Module
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from vitaccel.boards import build as build_mod
from vitaccel.boards.build import BuildError, build, format_report, parse_report
from vitaccel.boards.platforms import BOARDS, board_names, board_top, get_board


class Inc(wiring.Component):
    """y = x + 1 on a 16-bit stream, one register, with busy and error."""
    x: In(stream.Signature(16))
    y: Out(stream.Signature(16))
    busy: Out(1)
    error: Out(1)

    def elaborate(self, platform):
        m = Module()
        m.d.comb += [self.x.ready.eq(~self.y.valid | self.y.ready), self.busy.eq(self.y.valid)]
        with m.If(self.y.ready):
            m.d.sync += self.y.valid.eq(0)
        with m.If(self.x.valid & self.x.ready):
            m.d.sync += [self.y.valid.eq(1), self.y.payload.eq(self.x.payload + 1)]
        return m


PIN_FILES = {"icebreaker": ("top.pcf", ["clk12_0__io 35", "uart_0__rx__io 6", "uart_0__tx__io 9"]),
             "ulx3s": ("top.lpf", ['"clk25_0__io" SITE "G2"', '"uart_0__rx__io" SITE "M1"',
                                   '"uart_0__tx__io" SITE "L4"'])}


def test_board_table():
    assert board_names() == ["icebreaker", "ulx3s"]
    assert get_board("ulx3s").platform().device == "LFE5U-85F"
    assert get_board("icebreaker").platform().device == "iCE40UP5K"
    with pytest.raises(ValueError, match="unknown board"):
        get_board("de10")


@pytest.mark.parametrize("board", sorted(BOARDS))
def test_board_top_prepares_without_toolchain(board):
    b = get_board(board)
    top = board_top(Inc(), board, baud=115200)
    assert top.link.divisor == round(b.platform().default_clk_frequency / 115200)
    plan = b.platform().build(top, do_build=False, synth_opts=b.synth_opts,
                              nextpnr_opts="--report report.json")
    pin_file, needles = PIN_FILES[board]
    text = plan.files[pin_file]
    for needle in needles:
        assert needle in text, f"{needle!r} not in {pin_file}"
    assert "--report report.json" in plan.files[f"{plan.script}.sh"]


def test_baud_too_fast_is_rejected():
    unit = Inc()
    with pytest.raises(ValueError, match="too fast"):
        board_top(unit, "icebreaker", baud=12e6)
    unit._MustUse__silence = True


def test_parse_and_format_report(tmp_path):
    report = {"utilization": {"ICESTORM_LC": {"used": 900, "available": 5280},
                              "ICESTORM_DSP": {"used": 1, "available": 8},
                              "ICESTORM_RAM": {"used": 2, "available": 30}},
              "fmax": {"cd_sync.clk": {"achieved": 31.234, "constraint": 12.0}}}
    path = tmp_path / "report.json"
    path.write_text(json.dumps(report))
    d = parse_report(path, "icebreaker")
    assert d["fmax_mhz"] == 31.23 and d["target_mhz"] == 12.0
    assert (d["luts"], d["dsps"], d["brams"]) == (900, 1, 2)
    assert d["utilisation"]["ICESTORM_LC"] == {"used": 900, "available": 5280}
    d.update(board="icebreaker", device="iCE40UP5K", bitstream="x.bin", seconds=1.0, ffs=None)
    table = format_report(d)
    assert "ICESTORM_LC" in table and "17.0%" in table and "31.23 MHz" in table


def test_toolchain_failure_is_a_one_line_build_error(tmp_path, monkeypatch):
    env = dict(build_mod._env(), YOSYS="false")          # `false` fails like a broken Yosys
    monkeypatch.setattr(build_mod, "_env", lambda: env)
    with pytest.raises(BuildError) as e:
        build(Inc(), "icebreaker", build_dir=tmp_path, progress=None)
    msg = str(e.value)
    assert "synthesis failed" in msg and "\n" not in msg
    assert Path(e.value.log).is_file() and str(e.value.log) in msg


def _check_build(d, board):
    assert Path(d["bitstream"]).is_file() and Path(d["bitstream"]).stat().st_size > 1000
    assert d["board"] == board
    assert 5 < d["fmax_mhz"] < 500
    assert d["timing_met"]
    assert 50 < d["luts"] < 10_000 and d["ffs"] > 50
    for v in d["utilisation"].values():
        assert 0 <= v["used"] <= v["available"]
    saved = json.loads((Path(d["bitstream"]).parent / "build_result.json").read_text())
    assert saved["fmax_mhz"] == d["fmax_mhz"]
    assert "Fmax" in format_report(d)


@pytest.mark.board
def test_real_build_icebreaker(tmp_path):
    lines = []
    d = build(Inc(), "icebreaker", build_dir=tmp_path, progress=lines.append)
    _check_build(d, "icebreaker")
    assert d["target_mhz"] == 12.0 and d["brams"] >= 1          # the RX FIFO
    assert any("place and route" in ln for ln in lines)
    assert d["router"] == "router1" and not any("netlist up to date" in ln for ln in lines)

    # same design again with the other router: the netlist is reused, only nextpnr reruns
    lines.clear()
    again = build(Inc(), "icebreaker", build_dir=tmp_path, progress=lines.append, router="router2",
                  seed=3)
    _check_build(again, "icebreaker")
    assert any("netlist up to date" in ln for ln in lines) and again["router"] == "router2"
    script = (tmp_path / "icebreaker" / "build_top.sh").read_text()
    assert "--router router2" in script and "--seed 3" in script and again["seed"] == 3


def test_unknown_router_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="router"):
        build(Inc(), "icebreaker", build_dir=tmp_path, progress=None, router="fast")


@pytest.mark.parametrize("seed", [-1, 1.5, True, 1 << 31])
def test_bad_seed_is_rejected(tmp_path, seed):
    with pytest.raises(ValueError, match="seed"):
        build(Inc(), "icebreaker", build_dir=tmp_path, progress=None, seed=seed)


@pytest.mark.board
@pytest.mark.slow
def test_real_build_ulx3s_with_a_frequency_target(tmp_path):
    d = build(Inc(), "ulx3s", freq_mhz=50, build_dir=tmp_path, progress=None)
    _check_build(d, "ulx3s")
    assert d["target_mhz"] == 50.0 and d["device"] == "LFE5U-85F"
    assert d["utilisation"]["TRELLIS_FF"]["available"] == 83640
