"""The benchmark scripts parse their options (an argparse clash once broke one) and the shared
board-build rows read saved reports and reject a report of a different config."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
sys.path.insert(0, str(BENCH))

import common  # noqa: E402


@pytest.mark.parametrize("script", sorted(p.name for p in BENCH.glob("*.py")
                                          if p.name not in ("common.py", "readme.py")))
def test_benchmark_help(script):
    out = subprocess.run([sys.executable, str(BENCH / script), "--help"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "usage" in out.stdout.lower()


def test_saved_board_builds(tmp_path, monkeypatch):
    import dataclasses

    from vitaccel import cli, units
    monkeypatch.setattr(cli, "RESULTS", tmp_path)
    cfg = units.get("gemm").board_config("ulx3s")
    report = {"config": dataclasses.asdict(cfg), "luts": 123, "ffs": 45, "dsps": 6, "brams": 7,
              "fmax_mhz": 101.234, "target_mhz": 100.0}
    (tmp_path / "gemm-build-ulx3s.json").write_text(json.dumps(report))
    rows = common.board_builds("gemm", ["ulx3s"], saved=True)
    assert rows[0]["luts"] == 123 and rows[0]["fmax_mhz"] == 101.23 and rows[0]["meets_target"]
    assert "| ulx3s | 123 | 45 | 6 | 7 | 101.2 |" in "\n".join(common.builds_markdown(rows))

    report["config"]["rows"] += 1          # a build of another config is not this board's figure
    (tmp_path / "gemm-build-ulx3s.json").write_text(json.dumps(report))
    rows = common.board_builds("gemm", ["ulx3s"], saved=True)
    assert "fmax_mhz" not in rows[0] and "not of the default config" in rows[0]["note"]


def test_missing_saved_build_is_a_note_not_a_build(tmp_path, monkeypatch):
    from vitaccel import cli
    monkeypatch.setattr(cli, "RESULTS", tmp_path)
    monkeypatch.setattr(cli, "run_build", lambda *a, **k: pytest.fail("started a build"))
    rows = common.board_builds("gemm", ["ulx3s"], saved=True)
    assert "fmax_mhz" not in rows[0] and "no saved" in rows[0]["note"]


def test_unfit_board_is_a_row_not_a_crash():
    rows = common.board_builds("heatvit", ["icebreaker"], saved=True)
    assert rows[0]["fits"] is False and "does not fit" in rows[0]["note"]
