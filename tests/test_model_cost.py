"""vitaccel.model.cost: the per-image cycle model against the units' own cycle counts.

(a) Every schedule reproduces the cycle counts of ``benchmarks/results/*.json`` (and the copy of
``spmm_schedule`` is the golden one ``tests/test_vitcod_rtl.py`` pins against the RTL). The parts no
result file exercises (ViTCoD with one normaliser and no global column, the selector at D = 64,
ViTALiTy at d = 32, GEMM streams of the ViT's layer shapes) are pinned to Amaranth simulations of
the ULX3S configs, run without stalls while the model was written (the ``stats`` of
``units.get(u).simulate(..., simulator="amaranth", stalls=False)`` on the inputs rebuilt below);
``test_simulated_*`` marked slow re-run a few of them.
(b) Monotonicity in tokens and mask density. (c) Clear ValueErrors.
"""
import dataclasses
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from vitaccel import units
from vitaccel.golden.vit import ViTConfig
from vitaccel.model import cost

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def results(unit):
    return json.loads((RESULTS / f"{unit}.json").read_text())


def topk_masks(seed, shape, k):
    """True = pruned: every row keeps its k largest random scores."""
    s = np.random.default_rng(seed).normal(size=shape)
    keep = np.zeros(shape, dtype=bool)
    np.put_along_axis(keep, np.argsort(-s, axis=-1)[..., :k], True, axis=-1)
    return ~keep


# ---------------------------------------------------------------- (a) result files ----------
def test_gemm_schedule_reproduces_every_benchmark_row():
    d = results("gemm")
    for r in d["sizes"]:
        got = cost.gemm_stream_cycles([(r["M"], r["N"], r["K"])])
        assert got == {"cycles": r["total_cycles"], "compute_cycles": r["compute_cycles"]}, r
    for r in d["streams"]:
        m, n, k = map(int, r["problem"].split("x"))
        got = cost.gemm_stream_cycles([(m, n, k)] * r["stream_len"])
        assert got["cycles"] == r["total_cycles"], r
        one = cost.gemm_stream_cycles([(m, n, k)])["cycles"]
        assert (got["cycles"] - one) / (r["stream_len"] - 1) == r["cycles_per_problem_steady"]


def test_gemm_schedule_matches_simulated_layer_streams():
    """Amaranth simulations of the ULX3S engine (simulate_batch, no stalls): a qkv layer at
    N = 50 (three 64-column problems), the patch embedding, the head, two 17-token problems,
    and compute-bound streams on a 2 x 2 engine."""
    u = units.get("gemm")
    small = u.Config(rows=2, cols=2, m_max=8, n_max=8, k_max=8)
    for problems, cfg, want in (
            ([(50, 64, 64)] * 3, None, (15885, 10770)), ([(49, 64, 16)], None, (1928, 901)),
            ([(1, 10, 64)], None, (776, 133)), ([(17, 64, 64)] * 2, None, (9738, 3082)),
            ([(8, 8, 8)] * 4, small, (588, 521)),
            ([(3, 8, 4), (8, 8, 8), (5, 3, 8), (8, 8, 6)], small, (382, 318))):
        got = cost.gemm_stream_cycles(problems, cfg)
        assert (got["cycles"], got["compute_cycles"]) == want, problems


def test_linear_layers_are_split_to_the_engine():
    layers = dict(cost.linear_problems())
    assert layers["patch"] == [(49, 64, 16)] and layers["head"] == [(1, 10, 64)]
    assert layers["blocks.0.qkv"] == [(50, 64, 64)] * 3
    assert layers["blocks.5.fc1"] == [(50, 64, 64)] * 2
    assert layers["blocks.2.fc2"] == [(50, 64, 64)] * 2          # two K halves
    detail = cost.linear_cycles(detail=True)
    assert detail["blocks.0.qkv"] == 15885 and detail["patch"] == 1928 and detail["head"] == 776
    assert detail["total"] == sum(v for k, v in detail.items() if k != "total")
    assert cost.linear_cycles() == detail["total"]


def test_vitcod_model_reproduces_all_36_benchmark_heads():
    from vitaccel.golden.vitcod import REAL_MASK_PATH, load_real_mask
    if not REAL_MASK_PATH.exists():
        pytest.skip(f"real ViTCoD mask missing: {REAL_MASK_PATH}")
    d = results("vitcod")
    cfg = units.get("vitcod").Config(**d["config"])
    masks = load_real_mask()
    for h in d["heads"]:
        got = cost.vitcod_head_cycles(masks[h["layer"], h["head"]], 64, cfg)
        assert (got["sddmm"], got["spmm"], got["total"]) == \
            (h["sddmm_cycles"], h["spmm_cycles"], h["cycles_total"]), (h["layer"], h["head"])
        assert (got["g"], got["nnz"]) == (h["G"], h["nnz_sparse"])


def test_vitcod_ulx3s_config_matches_simulation():
    """ULX3S config (2 lines x 8 MACs, one normaliser), d = 32: all kept (G = 0, the Sparser
    engine does all), top-10 rows (empty columns), and a lower theta_d with four global
    columns; Amaranth simulation counts (sddmm, spmm, cycles_total)."""
    u = units.get("vitcod")
    cfg = u.board_config("ulx3s")
    got = cost.vitcod_head_cycles(np.zeros((50, 50), bool), 32)
    assert (got["sddmm"], got["spmm"], got["total"]) == (5020, 5000, 12785)
    assert (got["g"], got["nnz"], got["lines_d"], got["lines_s"]) == (0, 2500, 0, 2)
    for seed, n, want in ((3, 50, (1020, 2070, 3912)), (5, 17, (360, 651, 1371))):
        got = cost.vitcod_head_cycles(topk_masks(seed, (n, n), 10), 32, cfg)
        assert (got["sddmm"], got["spmm"], got["total"]) == want, (seed, n)
    rng = np.random.default_rng(7)
    keep = rng.random((40, 40)) < 0.12
    keep[:, [0, 5, 11, 20]] = True
    keep[0] = True
    got = cost.vitcod_head_cycles(~keep, 32, dataclasses.replace(cfg, theta_d=12))
    assert (got["g"], got["sddmm"], got["spmm"], got["total"]) == (4, 827, 1760, 3066)


def test_fact_cycles_reproduce_the_benchmark_rows():
    u = units.get("fact")
    d = results("fact")["cycles"]
    demo = u.demo_config()
    assert cost.fact_cycles(demo.n_max, demo.d_model_max, demo) == d["sim_demo"]["stats"]["cycles"]
    c = d["config"]
    cfg = u.Config()
    assert (cfg.heads, cfg.lanes, cfg.k) == (c["heads"], c["lanes"], c["k"])
    assert cost.fact_cycles(c["N"], c["D"], cfg) == d["sim_deit_tiny"]["stats"]["cycles"]
    model = cost.fact_config()
    assert (model.heads, model.k, model.lanes) == (2, 10, 16)


def test_vitality_cycles_reproduce_the_benchmark_runs():
    spec = importlib.util.spec_from_file_location("bench_vitality", ROOT / "benchmarks" /
                                                  "vitality.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    u = units.get("vitality")
    runs = {r["run"]: r for r in results("vitality")["runs"]}
    assert len(bench.RUNS) == len(runs)
    for label, overrides, n in bench.RUNS:
        assert cost.vitality_cycles(n, 1, u.Config(**overrides)) == runs[label]["cycles"], label


def test_vitality_model_config_matches_simulation():
    """d = 32, n_max = 50 on the 4 x 4 ULX3S array (Amaranth): one head at n = 50, 40, 25,
    12; two heads at 50; three at 17; and a 2 x 2 array."""
    cfg = cost.vitality_config()
    assert (cfg.d, cfg.n_max, cfg.rows, cfg.cols) == (32, 50, 4, 4)
    for n, heads, want in ((50, 1, 7072), (40, 1, 5568), (25, 1, 3744), (12, 1, 1760),
                           (50, 2, 14145), (17, 3, 7970)):
        assert cost.vitality_cycles(n, heads, cfg) == want, (n, heads)
    assert cost.vitality_cycles(50, 1, dataclasses.replace(cfg, rows=2, cols=2)) == 26520


def deit_selector_vit():
    """A ViTConfig whose selector is the HeatViT benchmark's DeiT-T shape (D = 192, 3 heads,
    196 patches)."""
    return ViTConfig(image=56, patch=4, dim=192, heads=3, depth=2, selector_blocks=(1,),
                     keep_ratios=(0.7,))


def test_selector_cycles_reproduce_the_benchmark_runs():
    u = units.get("heatvit")
    v = deit_selector_vit()
    cfg = cost.selector_config(v)
    assert cfg == u.Config()
    for r in results("heatvit")["runs"]:
        inp = u.random_inputs(cfg, r["seed"])
        keep = u.golden(cfg, **inp)["keep"]
        assert int(keep.sum()) == r["kept"]
        assert cost.selector_cycles(r["N"], v, keep=keep) == r["cycles"], r["seed"]
        bound = cost.selector_cycles(r["N"], v, n_kept=r["kept"])
        assert r["cycles"] <= bound <= r["cycles"] + 4


def test_selector_layers_match_simulation():
    """Every layer's RUN cycles of the D = 64, 2-head selector, from Amaranth runs at N = 8, 9,
    49 (L1, L2G, L2, L3, L4 per head, then V1, V2)."""
    for n, want in ((8, [189, 51, 109, 77, 33, 39, 34]), (9, [289, 51, 121, 81, 35, 41, 36]),
                    (49, [929, 51, 441, 241, 80, 86, 116])):
        d, h = 32, 2
        layers = [("gelu", d, d, n), ("bias", d // 2, d // 2, 1), ("gelu", d // 2, d // 2, n),
                  ("gelu", d // 2, d // 4, n), ("logit", d // 4, 2, n), ("gelu", h, h // 2, n),
                  ("head", h // 2, h, n)]
        assert [cost._selector_layer_cycles(*L, 8, 8) for L in layers] == want, n


def test_selector_model_config_matches_simulation():
    """D = 64, 2 heads, n_max = 49 (Amaranth): cycles for random_inputs(seed, n) images."""
    u = units.get("heatvit")
    cfg = cost.selector_config()
    assert (cfg.D, cfg.heads, cfg.n_max) == (64, 2, 49)
    for n, seed, pkg, want in ((49, 0, False, 19515), (49, 2, False, 19216),
                               (34, 3, True, 13972), (12, 1, False, 5624), (8, 2, True, 3941)):
        inp = u.random_inputs(cfg, seed=seed, n=n)
        inp["has_package"] = pkg
        keep = u.golden(cfg, **inp)["keep"]
        assert cost.selector_cycles(n, keep=keep, has_package=pkg) == want, (n, seed)
        assert 0 <= cost.selector_cycles(n, n_kept=int(keep.sum()), has_package=pkg) - want <= 4


def test_fmax_reads_the_ulx3s_build_rows():
    for unit in units.names():
        rows = [b for b in results(unit)["builds"] if b["board"] == "ulx3s"]
        assert cost.fmax_mhz(unit) == rows[0]["fmax_mhz"] > 0
    assert cost.fmax_mhz("vitcod") == 76.01
    s = cost.seconds_per_image({"gemm": 89_240_000, "vitcod": 76_010_000, "total": 1})
    assert s == pytest.approx(2.0)


# ---------------------------------------------------------------- (b) monotonicity ----------
def test_fewer_tokens_fewer_cycles():
    full = [50] * 6
    pruned = [50, 36, 36, 26, 19, 19]
    assert cost.linear_cycles(pruned) < cost.linear_cycles(full)
    for variant in ("int8", "vitality"):
        assert cost.attention_cycles(variant, tokens_per_block=pruned)["total"] < \
            cost.attention_cycles(variant, tokens_per_block=full)["total"]
    prev = None
    for n in (49, 35, 20, 8):
        c = cost.selector_cycles(n, n_kept=n // 2)
        assert prev is None or c < prev
        prev = c
    hv = cost.attention_cycles("heatvit", tokens_per_block=pruned)
    assert hv["vitcod"] < cost.attention_cycles("int8")["vitcod"] and hv["heatvit"] > 0
    assert hv["total"] == hv["vitcod"] + hv["heatvit"]


def test_sparser_masks_fewer_vitcod_cycles():
    rng = np.random.default_rng(1)
    scores = rng.random((6, 2, 50, 50))
    prev = None
    for keep_fraction in (1.0, 0.6, 0.3, 0.1):          # nested masks, ever sparser
        masks = scores > keep_fraction
        masks[..., 0] = False                             # the CLS column stays
        c = cost.attention_cycles("vitcod", masks=masks)["vitcod"]
        assert prev is None or c < prev
        prev = c
    dense = cost.attention_cycles("int8")["vitcod"]
    assert cost.attention_cycles("vitcod", masks=np.zeros((6, 2, 50, 50), bool))["vitcod"] \
        == dense
    fact = cost.attention_cycles("fact", masks=topk_masks(2, (6, 2, 50, 50), 10))
    assert fact["vitcod"] < dense and fact["total"] == fact["vitcod"] + fact["fact"]
    assert fact["fact"] == 6 * cost.fact_cycles(50, 64, cost.fact_config())


# ---------------------------------------------------------------- (c) errors ----------------
def test_invalid_inputs_raise_clear_errors():
    masks = np.zeros((6, 2, 50, 50), bool)
    with pytest.raises(ValueError, match="unknown variant"):
        cost.attention_cycles("softmax")
    with pytest.raises(ValueError, match=r"masks: expected shape \(6, 2, 50, 50\)"):
        cost.attention_cycles("vitcod", masks=masks[:, :, :49, :49])
    with pytest.raises(ValueError, match="masks is required"):
        cost.attention_cycles("fact")
    with pytest.raises(ValueError, match="bool"):
        cost.attention_cycles("vitcod", masks=masks.astype(int))
    with pytest.raises(ValueError, match="do not apply"):
        cost.attention_cycles("int8", masks=masks)
    with pytest.raises(ValueError, match="tokens_per_block: expected 6"):
        cost.linear_cycles([50] * 5)
    with pytest.raises(ValueError, match=r"tokens_per_block\[1\]"):
        cost.attention_cycles("vitality", tokens_per_block=[50, 0, 50, 50, 50, 50])
    with pytest.raises(ValueError, match="needs tokens_per_block"):
        cost.attention_cycles("heatvit")
    with pytest.raises(ValueError, match="block 2 has no selector"):
        cost.attention_cycles("heatvit", tokens_per_block=[50, 36, 30, 26, 19, 19])
    with pytest.raises(ValueError, match="needs n_kept"):
        cost.selector_cycles(49)
    with pytest.raises(ValueError, match="n_kept"):
        cost.selector_cycles(10, n_kept=11)
    with pytest.raises(ValueError, match="topk"):
        cost.attention_cycles("fact", masks=masks, topk=0)
    with pytest.raises(ValueError, match="K < rows"):
        cost.gemm_stream_cycles([(8, 8, 4)])
    with pytest.raises(ValueError, match="unknown unit"):
        cost.fmax_mhz("softmax")
    with pytest.raises(ValueError, match="square bool"):
        cost.vitcod_head_cycles(np.zeros((4, 5), bool), 32)


# ---------------------------------------------------------------- slow: re-simulate ---------
@pytest.mark.slow
def test_simulated_vitcod_and_selector_agree():
    """Re-runs two of the Amaranth simulations pinned above (about 20 s)."""
    u = units.get("vitcod")
    cfg = u.board_config("ulx3s")
    mask = topk_masks(5, (17, 17), 10)
    rng = np.random.default_rng(0)
    qkv = {x: rng.integers(-128, 128, (1, 17, 32), dtype=np.int8) for x in "qkv"}
    _, st = u.simulate(cfg, **qkv, mask=mask[None], simulator="amaranth", stalls=False)
    assert st["heads"][0]["cycles_total"] == cost.vitcod_head_cycles(mask, 32)["total"] == 1371
    h = units.get("heatvit")
    hcfg = cost.selector_config()
    inp = h.random_inputs(hcfg, seed=2, n=8)
    inp["has_package"] = True
    _, st = h.simulate(hcfg, **inp, simulator="amaranth", stalls=False)
    keep = h.golden(hcfg, **inp)["keep"]
    assert st["cycles"] == cost.selector_cycles(8, keep=keep, has_package=True) == 3941
