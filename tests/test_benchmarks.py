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


def test_vitcod_builds_only_keeps_the_simulated_results(tmp_path, monkeypatch):
    """`--builds-only` rewrites the board-build rows and nothing else of the saved results."""
    import dataclasses

    import vitcod
    from vitaccel import cli, units
    u = units.get("vitcod")
    cfg = u.Config()
    summary = {"heads": 1, "all_bit_exact": True, "compute_cycles": 1000, "sddmm_cycles": 600,
               "spmm_cycles": 400, "cycles_total": 1200, "dense_baseline_cycles": 5000,
               "speedup_vs_dense": 5.0, "model_cycles": 900, "mac_utilisation": 0.5,
               "dense_issue_eff_mean": 0.99, "dense_issue_eff_min": 0.98,
               "sparse_issue_eff_mean": 0.97, "sparse_issue_eff_min": 0.96,
               "dense_phase_eff_mean": 0.9, "sparse_phase_eff_mean": 0.8}
    head = {"layer": 0, "head": 0, "G": 3, "nnz_sparse": 77, "lines_d": 1, "lines_s": 1,
            "sddmm_cycles": 600, "spmm_cycles": 400, "compute_cycles": 1000, "cycles_total": 1234,
            "model_cycles": 900, "dense_baseline_cycles": 5000, "speedup_vs_dense": 5.0,
            "mac_utilisation": 0.5, "dense_issue_eff": 0.99, "sparse_issue_eff": 0.97,
            "bit_exact": True}
    results = tmp_path / "results"
    results.mkdir()
    (results / "vitcod.json").write_text(json.dumps({
        "unit": "vitcod", "simulator": "verilator", "stalls": False,
        "config": dataclasses.asdict(cfg), "summary": summary, "heads": [head], "builds": []}))
    monkeypatch.setattr(vitcod, "RESULTS", results)
    monkeypatch.setattr(cli, "RESULTS", tmp_path)
    board_cfg = u.board_config("ulx3s")
    (tmp_path / "vitcod-build-ulx3s.json").write_text(json.dumps(
        {"config": dataclasses.asdict(board_cfg), "luts": 40000, "ffs": 18000, "dsps": 63,
         "brams": 93, "fmax_mhz": 76.54, "target_mhz": 75.0}))
    assert vitcod.main(["--builds-only", "--saved-builds", "--boards", "ulx3s"]) == 0
    saved = json.loads((results / "vitcod.json").read_text())
    assert saved["heads"] == [head] and saved["summary"] == summary
    assert saved["builds"][0]["fmax_mhz"] == 76.54 and saved["builds"][0]["meets_target"]
    md = (results / "vitcod.md").read_text()
    assert "| 0 | 0 | 3 | 77 | 1/1 | 600 | 400 | 1000 | 1234 |" in md
    assert "| ulx3s | 40000 | 18000 | 63 | 93 | 76.5 | 75.0 | True |" in md


def test_refreshed_builds_replaces_only_the_rebuilt_boards(monkeypatch):
    old = [{"board": "ulx3s", "fmax_mhz": 70.0}, {"board": "icebreaker", "fmax_mhz": 28.0}]
    monkeypatch.setattr(common, "board_builds",
                        lambda unit, boards, saved=False: [{"board": b, "fmax_mhz": 80.0}
                                                           for b in boards])
    assert common.refreshed_builds("fact", old, ["ulx3s"]) == [
        {"board": "ulx3s", "fmax_mhz": 80.0}, {"board": "icebreaker", "fmax_mhz": 28.0}]
    assert common.refreshed_builds("fact", [], ["ulx3s"]) == [{"board": "ulx3s", "fmax_mhz": 80.0}]


def test_fact_builds_only_keeps_the_accuracy_and_cycle_results(tmp_path, monkeypatch):
    import dataclasses

    import fact
    from vitaccel import cli, units
    results = tmp_path / "results"
    results.mkdir()
    previous = json.loads((BENCH / "results" / "fact.json").read_text())
    (results / "fact.json").write_text(json.dumps(previous))
    monkeypatch.setattr(fact, "RESULTS", results)
    monkeypatch.setattr(cli, "RESULTS", tmp_path)
    board_cfg = units.get("fact").board_config("ulx3s")
    (tmp_path / "fact-build-ulx3s.json").write_text(json.dumps(
        {"config": dataclasses.asdict(board_cfg), "luts": 18000, "ffs": 12000, "dsps": 0,
         "brams": 79, "fmax_mhz": 101.25, "target_mhz": 100.0}))
    assert fact.main(["--builds-only", "--saved-builds", "--boards", "ulx3s"]) == 0
    saved = json.loads((results / "fact.json").read_text())
    assert saved["accuracy"] == previous["accuracy"] and saved["cycles"] == previous["cycles"]
    boards = [r["board"] for r in saved["builds"]]
    assert boards == [r["board"] for r in previous["builds"]]
    ulx3s = saved["builds"][boards.index("ulx3s")]
    assert ulx3s["fmax_mhz"] == 101.25 and ulx3s["meets_target"]
    others = [r for r in saved["builds"] if r["board"] != "ulx3s"]
    assert others == [r for r in previous["builds"] if r["board"] != "ulx3s"]
    assert "| ulx3s | 18000 | 12000 | 0 | 79 | 101.2 | 100.0 | True |" in \
        (results / "fact.md").read_text()


def test_fact_keep_accuracy_reuses_the_hit_rates_and_redoes_the_cycles(tmp_path, monkeypatch):
    import fact
    from vitaccel import units
    results = tmp_path / "results"
    results.mkdir()
    previous = json.loads((BENCH / "results" / "fact.json").read_text())
    previous["cycles"] = {"stale": True}
    (results / "fact.json").write_text(json.dumps(previous))
    monkeypatch.setattr(fact, "RESULTS", results)
    monkeypatch.setattr(fact, "structured_cases", lambda: pytest.fail("recomputed the hit rates"))
    fact.main(["--keep-accuracy", "--no-build"])
    saved = json.loads((results / "fact.json").read_text())
    assert saved["accuracy"] == previous["accuracy"]
    u = units.get("fact")
    assert saved["cycles"]["compute_cycles"] == u.expected_compute_cycles(u.Config(), 197, 192)
