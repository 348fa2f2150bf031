"""FACT unit: RTL == golden bit for bit under random stalls (Amaranth simulator, and Verilator
through the cocotb runner), the unit contract, cycle schedule and clear errors."""
import numpy as np
import pytest

from vitaccel import units
from amaranth.sim import Simulator

from vitaccel.rtl.fact import FACTPredictor, cmd_layout
from vitaccel.rtl.fact.topk import TopKSorter
from vitaccel.sim import amaranth_sim
from vitaccel.sim.job import Job, StallProfile, pack_fields

u = units.get("fact")


def small(**kw):
    base = dict(heads=2, k=3, k_max=4, n_max=9, d_model_max=8, lanes=2, importance_threshold=3)
    base.update(kw)
    return u.Config(**base)


def check(cfg, inp, simulator="amaranth", stalls=1):
    want = u.golden(cfg, **inp)
    got, stats = u.simulate(cfg, **inp, simulator=simulator, stalls=stalls)
    assert u.compare(want, got) == []
    assert stats["error_flag"] == 0
    return want, stats


# (heads, lanes, N, D, k, mantissa_bits, structured)
CASES = [
    (1, 2, 5, 4, 1, 0, False),      # k = 1, one head
    (2, 2, 6, 8, 6, 0, True),       # k = N
    (3, 2, 7, 12, 3, 1, False),     # three heads, 1 mantissa bit
    (2, 4, 9, 16, 4, 0, True),      # 4 lanes, structured data
    (4, 1, 5, 4, 2, 1, True),       # 1 lane (no adder tree), head size 1
    (2, 2, 8, 8, 4, 2, False),      # 2 mantissa bits
    (2, 4, 9, 8, 5, 0, False),      # one-word keys (d == lanes): padded to the top-k's interval
]


@pytest.mark.parametrize("heads,lanes,n,dm,k,m,structured", CASES)
def test_rtl_matches_golden_with_stalls(heads, lanes, n, dm, k, m, structured):
    cfg = u.Config(heads=heads, lanes=lanes, n_max=max(n, 2), d_model_max=dm, k=k, k_max=max(k, 2),
                   mantissa_bits=m, importance_threshold=heads * k, onehot_threshold=0.5)
    inp = u.random_inputs(cfg, seed=n * 10 + dm + m, n=n, d_model=dm, structured=structured)
    check(cfg, inp, stalls=heads + n)


def _tie_heavy_scores(rng, size, width):
    """Scores with many ties; for wide scores (the split compare) the values sit on both sides
    of the half-width boundary, so equal high halves with different low halves (and the sign)
    decide many compares."""
    if width < 16:
        return rng.integers(-4, 5, size=size)
    step = 1 << (width // 2)
    return rng.integers(-2, 3, size=size) * step + rng.integers(-3, 4, size=size)


@pytest.mark.parametrize("k_max,score_width", [(5, 8), (5, 24), (40, 24)])
@pytest.mark.parametrize("gap_rate", [0.0, 0.4], ids=["full-rate", "random-gaps"])
def test_topk_sorter_streams_one_score_per_interval(gap_rate, k_max, score_width):
    """Scores from a narrow range (many ties) inserted every INTERVAL cycles or with random
    extra gaps: after each row the array is the stable descending sort's first k_max (lower
    index wins a tie). k_max = 40 splits the comparators over four copies of the element's
    score."""
    rng = np.random.default_rng(11)
    dut = TopKSorter(k_max, score_width=score_width, index_width=7)
    rows = [_tie_heavy_scores(rng, int(rng.integers(1, k_max + 35)), score_width)
            for _ in range(30)]
    mismatches = []

    async def bench(ctx):
        for row in rows:
            ctx.set(dut.clear, 1)
            await ctx.tick()
            ctx.set(dut.clear, 0)
            for index, score in enumerate(row):
                while rng.random() < gap_rate:
                    await ctx.tick()
                ctx.set(dut.insert, 1)
                ctx.set(dut.in_score, int(score))
                ctx.set(dut.in_index, index)
                await ctx.tick()
                ctx.set(dut.insert, 0)
                await ctx.tick().repeat(TopKSorter.INTERVAL - 1)
            while ctx.get(dut.busy):
                await ctx.tick()
            order = sorted(range(len(row)), key=lambda i: (-row[i], i))[:k_max]
            got = [(ctx.get(dut.index[e]), ctx.get(dut.score[e]))
                   for e in range(k_max) if ctx.get(dut.valid[e])]
            want = [(i, int(row[i])) for i in order]
            if got != want:
                mismatches.append((list(row), got, want))

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    assert not mismatches, mismatches[:2]


def test_onehot_rows_keep_and_importance():
    """A low threshold makes some rows one-hot (10 of 18 here): those rows contribute only their
    argmax to keep_kv and importance, and the RTL agrees."""
    cfg = small(onehot_threshold=0.05)
    inp = u.random_inputs(cfg, seed=5, n=9, d_model=8)
    want, _ = check(cfg, inp, stalls=7)
    assert 0 < want["onehot"].sum() < want["onehot"].size
    assert want["importance"].sum() == sum(1 if o else cfg.k for o in want["onehot"].ravel())


def test_ties_and_all_zero_rows():
    """X = 0: every score of a row ties (the bias makes Q~/K~ rows equal), so the lowest keys win."""
    cfg = small()
    rng = np.random.default_rng(2)
    inp = {"x": np.zeros((6, 8), np.int8), "wq": rng.integers(-128, 128, (8, 8)),
           "wk": rng.integers(-128, 128, (8, 8)), "bq": rng.integers(-999, 999, 8),
           "bk": rng.integers(-999, 999, 8)}
    want, _ = check(cfg, inp, stalls=3)
    assert (want["argmax"] == 0).all() and want["select"][:, :, :cfg.k].all()
    x = rng.integers(-128, 128, (6, 8))
    x[2] = 0                                          # one all-zero token among random ones
    check(cfg, {**inp, "x": x, "bq": None, "bk": None}, stalls=4)


@pytest.mark.parametrize("value", [-128, 127])
def test_int8_extremes_and_saturating_bias(value):
    cfg = small(mantissa_bits=1)
    rng = np.random.default_rng(value & 0xFF)
    x = np.full((5, 8), value, np.int8)
    x[1, ::2] = -128
    w = rng.choice([-128, 127, -1, 0, 1], (8, 8))
    big = np.array([2**31 - 1, -(2**31)] * 4)          # saturates Q~ / K~ to qk_bits
    check(cfg, {"x": x, "wq": w, "wk": -w.clip(-127, 127), "bq": big, "bk": big[::-1].copy()},
          stalls=value & 7)


def test_stall_free_cycles_follow_the_schedule():
    cfg = small()
    inp = u.random_inputs(cfg, seed=9, n=9, d_model=8)
    _, stats = check(cfg, inp, stalls=False)
    assert stats["compute_cycles"] == u.expected_compute_cycles(cfg, 9, 8)


def test_rejected_command_raises_error_flag():
    """A command with k > N is dropped (sticky error) without consuming data; the next good
    command runs."""
    cfg = small(k=2)
    inp = u.random_inputs(cfg, seed=1, n=3, d_model=8)
    good = u.make_job(cfg, **inp, stalls=StallProfile(seed=2))
    layout = cmd_layout(cfg.n_max, cfg.d_model_max, cfg.heads, cfg.lanes, cfg.k_max, cfg.qk_bits)
    bad = pack_fields(layout, n=3, row_words=4, head_words=2, k=4, t_int=0, importance_threshold=0)
    job = Job(inputs={**good.inputs, "cmd": [bad] + good.inputs["cmd"]}, expect=good.expect,
              status=["error"], stalls=good.stalls, max_cycles=good.max_cycles)
    res = amaranth_sim.run(u.component(cfg), job)
    assert res.status["error"] == 1
    assert u.compare(u.golden(cfg, **inp), u.decode(cfg, 3, res.outputs)) == []


def test_unit_contract_and_demo():
    cfg = u.demo_config()
    inp = u.random_inputs(cfg, seed=1)
    assert set(inp) <= set(u.INPUTS)
    want = u.golden(cfg, **inp)
    assert set(want) == set(u.OUTPUTS)
    top = u.component(cfg)
    top._MustUse__used = True          # only its type is checked here
    assert isinstance(top, FACTPredictor)
    for board in ("ulx3s", "icebreaker"):
        assert isinstance(u.board_config(board), u.Config)
    with pytest.raises(ValueError, match="board"):
        u.board_config("arty")


@pytest.mark.parametrize("field,value,match", [
    ("heads", 0, "heads"), ("lanes", 3, "lanes"), ("k", 0, "k"), ("k", 41, "k"),
    ("k_max", 1, "k_max"), ("mantissa_bits", 4, "mantissa_bits"), ("qk_bits", 31, "qk_bits"),
    ("x_scale", 0.0, "x_scale"), ("onehot_threshold", -1.0, "onehot_threshold"),
    ("exact_operand", "w", "exact_operand"), ("d_model_max", 100, "d_model_max"),
])
def test_bad_config_names_field(field, value, match):
    with pytest.raises(ValueError, match=match):
        u.Config(**{field: value})


def test_bad_inputs_name_the_problem():
    cfg = small()
    z = np.zeros
    with pytest.raises(ValueError, match="out of range"):
        u.golden(cfg, x=z((2, 8), np.int8), wq=z((8, 8), np.int8), wk=z((8, 8), np.int8))
    with pytest.raises(ValueError, match="multiple of"):
        u.golden(cfg, x=z((4, 6), np.int8), wq=z((6, 6), np.int8), wk=z((6, 6), np.int8))
    with pytest.raises(ValueError, match="exceeds"):
        u.golden(cfg, x=z((10, 8), np.int8), wq=z((8, 8), np.int8), wk=z((8, 8), np.int8))
    with pytest.raises(ValueError, match="wk: expected shape"):
        u.golden(cfg, x=z((4, 8), np.int8), wq=z((8, 8), np.int8), wk=z((8, 4), np.int8))
    with pytest.raises(ValueError, match="bq: values must fit signed 32-bit"):
        u.golden(cfg, x=z((4, 8), np.int8), wq=z((8, 8), np.int8), wk=z((8, 8), np.int8),
                 bq=np.full(8, 2**31))
    with pytest.raises(TypeError, match="x: expected an integer array"):
        u.golden(cfg, x=z((4, 8)), wq=z((8, 8), np.int8), wk=z((8, 8), np.int8))
    with pytest.raises(ValueError, match="golden model only"):
        u.component(u.Config(exact_operand="x"))


def test_no_multiplier_cells_in_the_netlist():
    """Zero DSPs starts here: the elaborated design contains no $mul cell at all."""
    from amaranth.back import rtlil
    text = rtlil.convert(u.component(small(mantissa_bits=2)), name="top")
    assert "$mul" not in text


@pytest.mark.slow                     # ~50 s cold (Verilator build); seconds once cached
@pytest.mark.parametrize("case", [CASES[2], CASES[3]])
def test_verilator_matches_golden_with_stalls(case):
    pytest.importorskip("cocotb")
    heads, lanes, n, dm, k, m, structured = case
    cfg = u.Config(heads=heads, lanes=lanes, n_max=n, d_model_max=dm, k=k, k_max=max(k, 2),
                   mantissa_bits=m, importance_threshold=heads * k, onehot_threshold=0.5)
    inp = u.random_inputs(cfg, seed=n + dm, n=n, d_model=dm, structured=structured)
    check(cfg, inp, simulator="verilator", stalls=n)


def test_verilator_demo_config_cycles():
    """The one FACT Verilator run in `make test` (~1 min with the model build)."""
    cfg = u.demo_config()
    inp = u.random_inputs(cfg, seed=3)
    _, stats = check(cfg, inp, simulator="verilator", stalls=False)
    assert stats["compute_cycles"] == u.expected_compute_cycles(cfg, cfg.n_max, cfg.d_model_max)
