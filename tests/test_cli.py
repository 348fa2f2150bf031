"""The `vitaccel` command line: every subcommand on the gemm unit, and one-line errors."""
import json

import pytest

from vitaccel import cli


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)     # results and generated files go under ./build
    return tmp_path


def run(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_list(capsys):
    code, out, _ = run(capsys, "list")
    assert code == 0 and "gemm" in out


def test_verilog_writes_a_module(capsys, in_tmp):
    code, out, _ = run(capsys, "verilog", "gemm", "--set", "rows=2", "--set", "cols=2",
                       "-o", "x.v")
    assert code == 0
    text = (in_tmp / "x.v").read_text()
    assert "module top" in text and "c__payload" in text and "Config(rows=2, cols=2" in out


@pytest.mark.parametrize("setting,needle", [("rows=0", "Config.rows must be in [1, 64], got 0"),
                                            ("nope=1", "has no field 'nope'"),
                                            ("rows=two", "cannot read 'two' as int"),
                                            ("rows", "--set expects key=value")])
def test_bad_settings_are_one_line_errors(capsys, setting, needle):
    code, out, err = run(capsys, "verilog", "gemm", "--set", setting, "-o", "x.v")
    assert code == 2
    assert needle in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_unknown_unit_is_rejected(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["verilog", "nosuchunit", "-o", "x.v"])
    assert exc.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_sim_amaranth_and_report(capsys, in_tmp):
    code, out, _ = run(capsys, "sim", "gemm", "--sim", "amaranth", "--no-stalls",
                       "--set", "rows=2", "--set", "cols=2", "--set", "m_max=6",
                       "--set", "n_max=5", "--set", "k_max=4")
    assert code == 0 and "bit-exact" in out
    saved = json.loads((in_tmp / "build/results/gemm-sim.json").read_text())
    assert saved["bit_exact"] and saved["stats"]["cycles"] > 0
    code, out, _ = run(capsys, "report", "--json", "r.json")
    assert code == 0 and "| gemm | sim (amaranth) |" in out
    assert "gemm-sim" in json.loads((in_tmp / "r.json").read_text())


def test_report_without_results_says_what_to_do(capsys):
    code, _, err = run(capsys, "report")
    assert code == 2 and "run `vitaccel sim`" in err


def test_lint_passes(capsys):
    code, out, _ = run(capsys, "lint", "gemm", "--set", "rows=2", "--set", "cols=2")
    assert code == 0 and "lint ok" in out


def test_help_explains_subcommands(capsys):
    with pytest.raises(SystemExit):
        cli.main(["build", "--help"])
    out = capsys.readouterr().out
    assert "--board" in out and "--freq" in out


@pytest.mark.parametrize("argv,want", [
    (("heatvit", "--board", "ulx3s"), 75.0),                  # the unit's target, not 25 MHz
    (("fact", "--board", "icebreaker"), 30.0),
    (("gemm", "--board", "ulx3s", "--freq", "50"), 50.0),     # --freq overrides it
])
def test_build_asks_nextpnr_for_the_units_target(monkeypatch, argv, want):
    asked = []

    def fake_run_build(unit_name, cfg, board, freq, router=None, seed=None):
        asked.append(freq)
        raise SystemExit(0)          # stop before any toolchain runs

    monkeypatch.setattr(cli, "run_build", fake_run_build)
    with pytest.raises(SystemExit):
        cli.main(["build", *argv])
    assert asked == [want]


def test_build_passes_the_seed(monkeypatch):
    asked = []

    def fake_run_build(unit_name, cfg, board, freq, router=None, seed=None):
        asked.append((router, seed))
        raise SystemExit(0)

    monkeypatch.setattr(cli, "run_build", fake_run_build)
    with pytest.raises(SystemExit):
        cli.main(["build", "gemm", "--board", "ulx3s", "--seed", "7"])
    assert asked == [(None, 7)]


def test_every_unit_has_a_ulx3s_fmax_target():
    from vitaccel import units
    for name in units.names():
        assert units.get(name).FMAX_TARGET_MHZ["ulx3s"] > 25.0, name


def test_seeded_builds_have_their_own_directory(monkeypatch):
    """Seeds of one netlist can run side by side: each seed builds in a directory of its own."""
    from vitaccel import units
    from vitaccel.boards import build as board_build
    dirs = []

    def fake_build(top, board, build_dir, **kwargs):
        dirs.append(build_dir)
        return {"fmax_mhz": 50.0, "seed": kwargs.get("seed")}
    monkeypatch.setattr(board_build, "build", fake_build)
    cfg = units.get("gemm").board_config("icebreaker")
    cli.run_build("gemm", cfg, "icebreaker", 30, seed=None)
    cli.run_build("gemm", cfg, "icebreaker", 30, seed=3)
    assert dirs == ["build/boards/gemm", "build/boards/gemm/seed3"]
