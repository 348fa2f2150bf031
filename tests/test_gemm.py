"""GEMM unit: golden model, RTL in the Amaranth simulator (and Verilator) under random stalls."""
import numpy as np
import pytest

from vitaccel import units
from vitaccel.rtl.common.gemm import GEMMEngine, cmd_layout
from vitaccel.sim import amaranth_sim
from vitaccel.sim.job import Job, StallProfile, pack_fields, unpack

u = units.get("gemm")
SMALL = u.Config(rows=2, cols=3, m_max=10, n_max=10, k_max=10)


def reference(a, b):
    return a.astype(np.int64) @ b.astype(np.int64)


def test_golden_matches_numpy():
    inp = u.random_inputs(u.Config(), seed=3, m=17, n=5, k=64)
    assert np.array_equal(u.golden(u.Config(), **inp)["c"], reference(inp["a"], inp["b"]))


@pytest.mark.parametrize("m,n,k", [(1, 1, 1), (2, 3, 1), (5, 7, 3), (10, 10, 10), (3, 10, 7),
                                   (10, 1, 4), (7, 4, 10)])
def test_rtl_random_shapes_with_stalls(m, n, k):
    inp = u.random_inputs(SMALL, seed=m * 100 + n * 10 + k, m=m, n=n, k=k)
    got, stats = u.simulate(SMALL, **inp, simulator="amaranth", stalls=m + n + k)
    assert u.compare({"c": reference(inp["a"], inp["b"])}, got) == []
    assert stats["error_flag"] == 0


@pytest.mark.parametrize("value_a,value_b", [(-128, -128), (127, -128), (-128, 127), (127, 127)])
def test_rtl_extremes(value_a, value_b):
    a = np.full((4, 10), value_a, dtype=np.int8)
    b = np.full((10, 5), value_b, dtype=np.int8)
    got, _ = u.simulate(SMALL, a=a, b=b, simulator="amaranth")
    assert np.all(got["c"] == value_a * value_b * 10)


def test_back_to_back_problems_and_rejected_command():
    """A bad command raises the sticky error flag without consuming data or hanging; the next
    good command runs normally, and a second problem reuses the buffers correctly."""
    cfg = SMALL
    layout = cmd_layout(cfg.m_max, cfg.n_max, cfg.k_max)
    rng = np.random.default_rng(7)
    a1, b1 = rng.integers(-128, 128, (3, 4)), rng.integers(-128, 128, (4, 5))
    a2, b2 = rng.integers(-128, 128, (2, 2)), rng.integers(-128, 128, (2, 2))
    job = Job(
        inputs={"cmd": [pack_fields(layout, m=0, n=3, k=3),
                        pack_fields(layout, m=3, n=5, k=4),
                        pack_fields(layout, m=2, n=2, k=2)],
                "a": [int(v) & 0xFF for v in np.concatenate([a1.ravel(), a2.ravel()])],
                "b": [int(v) & 0xFF for v in np.concatenate([b1.ravel(), b2.ravel()])]},
        expect={"c": 3 * 2 + 2},
        status=["error"],
        stalls=StallProfile(seed=11),
    )
    res = amaranth_sim.run(GEMMEngine(cfg.rows, cfg.cols, cfg.m_max, cfg.n_max, cfg.k_max), job)
    assert res.status["error"] == 1
    beats = [unpack(w, 32, cfg.cols) for w in res.outputs["c"]]
    c1 = reference(a1, b1)
    # first problem: row tiles of 2 (rows 0-1, then row 2), column tiles of 3 (cols 0-2, 3-4)
    assert list(beats[0]) == list(c1[0, 0:3]) and list(beats[1]) == list(c1[1, 0:3])
    assert list(beats[2][:2]) == list(c1[0, 3:5]) and list(beats[3][:2]) == list(c1[1, 3:5])
    assert list(beats[4]) == list(c1[2, 0:3]) and list(beats[5][:2]) == list(c1[2, 3:5])
    c2 = reference(a2, b2)
    assert list(beats[6][:2]) == list(c2[0]) and list(beats[7][:2]) == list(c2[1])


def test_full_size_utilisation_counts():
    """64x64x64 on the default 8x8 array: bit-exact, and the compute phase keeps the MACs busy."""
    cfg = u.Config()
    inp = u.random_inputs(cfg, seed=5)
    got, stats = u.simulate(cfg, **inp, simulator="amaranth", stalls=False)
    assert u.compare({"c": reference(inp["a"], inp["b"])}, got) == []
    assert stats["compute_cycles"] >= 64 * 64 * 64 // 64        # cannot beat one tile step/cycle
    assert stats["mac_utilisation"] >= 0.9


@pytest.mark.parametrize("field,value", [("rows", 0), ("cols", -1), ("m_max", 0),
                                         ("k_max", 10**6), ("rows", 2.5)])
def test_bad_config_names_field(field, value):
    with pytest.raises(ValueError, match=field):
        u.Config(**{field: value})


def test_bad_inputs_name_the_problem():
    cfg = SMALL
    with pytest.raises(ValueError, match="inner dimensions"):
        u.golden(cfg, a=np.zeros((2, 3), np.int8), b=np.zeros((4, 2), np.int8))
    with pytest.raises(ValueError, match="exceeds"):
        u.golden(cfg, a=np.zeros((11, 3), np.int8), b=np.zeros((3, 2), np.int8))
    with pytest.raises(ValueError, match=r"M \(rows of a\) must be >= 1"):
        u.golden(cfg, a=np.zeros((0, 3), np.int8), b=np.zeros((3, 2), np.int8))
    with pytest.raises(TypeError, match="a: expected an integer array"):
        u.golden(cfg, a=np.zeros((2, 3), np.float32), b=np.zeros((3, 2), np.int8))
    with pytest.raises(ValueError, match="b: values must fit signed 8-bit"):
        u.golden(cfg, a=np.zeros((2, 3), np.int8), b=np.full((3, 2), 300))
    with pytest.raises(ValueError, match="a: expected 2 dimensions"):
        u.golden(cfg, a=np.zeros(3, np.int8), b=np.zeros((3, 2), np.int8))


def test_verilator_matches_golden_and_amaranth_cycles():
    """cocotb on Verilator: bit-exact under stalls, and the same cycle count as the Amaranth
    simulator when stalls are off."""
    inp = u.random_inputs(SMALL, seed=99, m=9, n=7, k=10)
    want = {"c": reference(inp["a"], inp["b"])}
    got, _ = u.simulate(SMALL, **inp, simulator="verilator", stalls=4)
    assert u.compare(want, got) == []
    got_v, stats_v = u.simulate(SMALL, **inp, simulator="verilator", stalls=False)
    got_a, stats_a = u.simulate(SMALL, **inp, simulator="amaranth", stalls=False)
    assert u.compare(want, got_v) == [] and stats_v["cycles"] == stats_a["cycles"]
    assert stats_v["compute_cycles"] == stats_a["compute_cycles"]


def test_back_to_back_problems_overlap_load_and_compute():
    """Four problems streamed back to back, ragged and full: bit-exact under stalls; without stalls
    loading the next problem hides behind computing this one (ping-pong buffers)."""
    cfg = u.Config(rows=2, cols=2, m_max=8, n_max=8, k_max=8)
    rng = np.random.default_rng(21)
    shapes = [(8, 8, 8), (3, 5, 7), (8, 8, 8), (1, 1, 1), (8, 8, 8)]
    problems = [(rng.integers(-128, 128, (m, k), dtype=np.int8),
                 rng.integers(-128, 128, (k, n), dtype=np.int8)) for m, n, k in shapes]
    outs, _ = u.simulate_batch(cfg, problems, simulator="amaranth", stalls=3)
    for (a, b), c in zip(problems, outs):
        assert np.array_equal(c, reference(a, b))
    same = [problems[0]] * 4
    _, stats = u.simulate_batch(cfg, same, simulator="amaranth", stalls=False)
    # 8x8x8 on 2x2: 128 compute cycles and 64 load cycles per problem; serial would be >= 192 each
    assert stats["cycles"] < 4 * 128 + 64 + 40
    assert stats["end_to_end_utilisation"] > 0.85
