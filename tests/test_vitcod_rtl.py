# amaranth: UnusedElaboratable=no
"""ViTCoD RTL (rtl/vitcod) == integer golden model, bit for bit, under random stalls.

Amaranth simulator on small configs (every test seeded, stalls always on); Verilator runs of the
same unit (slow: the first C++ build takes about a minute, cached afterwards)."""

import dataclasses

import numpy as np
import pytest

from vitaccel import units
from vitaccel.golden import vitcod as gv
from vitaccel.golden.vitcod import REAL_MASK_PATH, load_real_mask, toy_mask
from vitaccel.golden.vitcod import spmm_schedule as gv_schedule
from vitaccel.rtl.vitcod import (ERR_BAD_CMD, ERR_CSC, ERR_INDEX_RANGE, VitCoDCore, cmd_layout)
from vitaccel.rtl.vitcod.core import SPMM_DONE_LATENCY
from vitaccel.sim import amaranth_sim
from vitaccel.sim.job import Job, StallProfile, pack_fields

u = units.get("vitcod")
needs_data = pytest.mark.skipif(not REAL_MASK_PATH.exists(),
                                reason=f"real ViTCoD mask missing: {REAL_MASK_PATH}")

SMALL = u.Config(lines=4, macs_per_line=3, n_max=16, d_max=8, g_max=16, nnz_max=160,
                 dense_groups_max=8, normalisers=3, theta_d=4, q_scale=0.02, k_scale=0.03,
                 v_scale=1 / 64, out_scale=1 / 64)


def qkv(rng, h, n, d):
    return {name: rng.integers(-128, 128, (h, n, d), dtype=np.int8) for name in "qkv"}


def check(cfg, inputs, stalls, **expect):
    want = u.golden(cfg, **inputs)
    got, stats = u.simulate(cfg, **inputs, simulator="amaranth", stalls=stalls)
    assert u.compare(want, got) == []
    assert stats["error_flag"] == 0
    for key, value in expect.items():
        assert [hd[key] for hd in stats["heads"]] == value, key
    return stats




def test_toy_case_of_the_spec():
    rng = np.random.default_rng(1)
    check(SMALL, {**qkv(rng, 1, 8, 8), "mask": toy_mask()[None]}, stalls=1, g=[2], nnz=[17],
          lines_d=[1])


def test_g0_user_mask_sparser_engine_loads_q_itself():
    rng = np.random.default_rng(2)
    mask = rng.random((1, 11, 11)) > 0.3
    mask[0, :, 0] = True            # no CLS column: nothing reaches theta_d
    check(SMALL.__class__(**{**SMALL.__dict__, "theta_d": 11}),
          {**qkv(rng, 1, 11, 5), "mask": mask}, stalls=2, g=[0], lines_d=[0])


def test_g1_and_vit_like_masks_two_heads():
    cfg = u.demo_config()
    inputs = u.random_inputs(cfg, seed=3, heads=2, n=13, d=7, globals_=1)
    stats = check(cfg, inputs, stalls=3)
    assert [hd["g"] for hd in stats["heads"]] == [1, 1]
    assert all(hd["nnz"] > 0 for hd in stats["heads"])


def test_dense_only_and_dense_block_with_zeros():
    rng = np.random.default_rng(4)
    keep = np.ones((1, 9, 9), dtype=bool)
    keep[0, 3, 2] = keep[0, 5, 7] = keep[0, 8, 0] = False      # zeros inside the dense block
    cfg = SMALL.__class__(**{**SMALL.__dict__, "theta_d": 2})
    cm = gv.compile_mask(~keep[0], 2)
    assert cm.g == 9 and cm.nnz == 0 and not cm.dense_valid.all()
    check(cfg, {**qkv(rng, 1, 9, 4), "mask": ~keep}, stalls=4, g=[9], lines_d=[4])


def test_empty_sparse_columns_and_empty_rows():
    rng = np.random.default_rng(5)
    keep = np.zeros((1, 12, 12), dtype=bool)
    keep[0, :, 0] = True                 # the only global column
    keep[0, [0, 4, 9], 3] = True         # columns 1, 2, 4.. stay empty, some with one entry
    keep[0, 7, 8] = keep[0, 2, 11] = True
    keep[0, 5, 0] = False                # row 5 keeps nothing at all: output 0
    inputs = {**qkv(rng, 1, 12, 6), "mask": ~keep}
    stats = check(SMALL, inputs, stalls=5, g=[1], nnz=[5])
    assert (u.golden(SMALL, **inputs)["out"][0, 5] == 0).all()
    # the spec's floor(4 * 12 / 17) = 2 dense lines, capped at G = 1 (line_split)
    assert stats["heads"][0]["lines_s"] == 3


def spmm_schedule(cnt, f, dgroups, lines_s):
    """(SpMM cycles, dense issue cycles, sparse issue cycles) of the golden cycle model with
    enough normalisers that no row waits for a slot (what these tests pin against the RTL)."""
    return gv_schedule(cnt, f, dgroups, lines_s)[:3]


@pytest.mark.parametrize("globals_", [1, 3])
def test_cycle_counts_rows_back_to_back(globals_):
    """The engines' busy counts and the SpMM phase, cycle for cycle, without stalls (cycle
    counts are what this test pins; stalled runs are checked elsewhere), against
    :func:`spmm_schedule`; enough normalisers that no row waits for a slot. The Sparser
    engine's SpMM issue cycles are the packed ideal: ceil(pairs / lines_s) over its runs of
    non-empty rows (here every row keeps an entry: one run)."""
    n, d = 14, 8
    cfg = SMALL.__class__(**{**SMALL.__dict__, "macs_per_line": 1, "normalisers": 16,
                             "theta_d": 6})
    inputs = u.random_inputs(cfg, seed=20 + globals_, heads=1, n=n, d=d, globals_=globals_)
    stats = check(cfg, inputs, stalls=False)
    hd = stats["heads"][0]
    cm = gv.compile_mask(inputs["mask"][0], cfg.theta_d)
    ld, ls = cm.split(cfg.lines)
    assert (hd["lines_d"], hd["lines_s"]) == (ld, ls) and cm.g >= 1 and ld <= cm.g
    f, dg, cnt = d, -(-cm.g // ld), np.diff(cm.row_ptr)
    spmm, busy_d, busy_s = spmm_schedule(cnt, f, dg, ls)
    assert hd["spmm_cycles"] == spmm == [163, 245][globals_ == 3]
    assert hd["dense_busy"] == dg * n * f + busy_d == 2 * dg * n * f
    assert hd["sparse_busy"] == f * -(-cm.nnz // ls) + busy_s
    if (cnt > 0).all():
        assert busy_s == -(-cm.nnz * f // ls)


@pytest.mark.parametrize("n,lines,macs,d", [(7, 4, 3, 8), (13, 3, 2, 3), (5, 2, 1, 2),
                                            (16, 5, 4, 5)])
def test_n_not_a_multiple_of_lines(n, lines, macs, d):
    rng = np.random.default_rng(n * lines)
    cfg = SMALL.__class__(**{**SMALL.__dict__, "lines": lines, "macs_per_line": macs})
    mask = rng.random((1, n, n)) > 0.35
    mask[0, :, 0] = False
    mask[0, 0, :] = False
    check(cfg, {**qkv(rng, 1, n, d), "mask": mask}, stalls=n + lines)


@pytest.mark.parametrize("normalisers", [1, 2])
def test_few_normalisers_rows_wait_for_a_slot(normalisers):
    """One or two normaliser slots (the ULX3S default has one): rows wait for a free slot while
    each slot shifts its row out chunk by chunk (chunks = 3 here), under stalls, bit-exact."""
    rng = np.random.default_rng(40 + normalisers)
    cfg = SMALL.__class__(**{**SMALL.__dict__, "normalisers": normalisers})
    n = 12
    mask = rng.random((2, n, n)) > 0.4
    mask[:, :, 0] = False
    check(cfg, {**qkv(rng, 2, n, 8), "mask": mask}, stalls=5)


@pytest.mark.parametrize("d,macs", [(1, 1), (3, 3), (4, 1)])
def test_sparse_row_max_updates_of_one_row_back_to_back(d, macs):
    """Row 0 in every sparse column (and every row in column 0): with one chunk per dot product
    the sparse writer updates row 0's maximum on consecutive cycles, which only the row-max
    read-modify-write's forwarding of the previous update gets right."""
    n = 9
    rng = np.random.default_rng(n + d)
    keep = np.zeros((1, n, n), dtype=bool)
    keep[0, 0, :] = True
    keep[0, :, 0] = True
    keep[0, 3, 5] = keep[0, 7, 2] = True
    cfg = dataclasses.replace(SMALL, theta_d=n + 1, macs_per_line=macs)
    check(cfg, {**qkv(rng, 1, n, d), "mask": ~keep}, stalls=False)


def test_extreme_values_and_flat_softmax():
    n, d = 10, 8
    mask = np.zeros((2, n, n), dtype=bool)
    mask[1] = np.triu(np.ones((n, n), dtype=bool), 1)
    inputs = {"q": np.full((2, n, d), -128, np.int8), "k": np.full((2, n, d), 127, np.int8),
              "v": np.full((2, n, d), -128, np.int8), "mask": mask}
    check(SMALL.__class__(**{**SMALL.__dict__, "theta_d": 6}), inputs, stalls=6)


def test_large_g_70():
    rng = np.random.default_rng(7)
    n, d = 72, 3
    cfg = u.Config(lines=4, macs_per_line=3, n_max=72, d_max=3, g_max=72, nnz_max=64,
                   dense_groups_max=24, theta_d=50, q_scale=0.05, k_scale=0.05)
    keep = rng.random((1, n, n)) < 0.05
    cols = rng.choice(n, 70, replace=False)
    keep[0][:, cols] = rng.random((n, 70)) < 0.9           # 70 global columns, ~10 % zeros
    keep[0][0, :] = True
    cm = gv.compile_mask(~keep[0], 50)
    assert cm.g == 70
    check(cfg, {**qkv(rng, 1, n, d), "mask": ~keep}, stalls=7, g=[70], lines_d=[3])


@pytest.mark.slow
@needs_data
def test_real_mask_head_with_random_qkv():
    """Layer 0, head 0 of the authors' DeiT-Tiny mask (G = 1, nnz = 2,244), d reduced to 3 for
    the Python simulator (~14k cycles: 25-60 s); all 36 heads at d = 64 run in the benchmark
    and three of them in the Verilator tests below."""
    pruned = load_real_mask()
    rng = np.random.default_rng(8)
    cfg = u.Config(lines=4, macs_per_line=3, n_max=197, d_max=3, g_max=80, nnz_max=4096,
                   dense_groups_max=12, theta_d=50)
    check(cfg, {**qkv(rng, 1, 197, 3), "mask": pruned[0, 0:1]}, stalls=8, g=[1],
          nnz=[2244], lines_d=[1])


# --- protocol: errors never hang ------------------------------------------------------------

def _raw_job(cfg, heads, stalls=11, extra_cmds=()):
    """Back-to-back commands on one component: ``extra_cmds`` (rejected) first, then heads."""
    cmds, streams = list(extra_cmds), {"q": [], "k": [], "v": [], "index": [], "dense_valid": []}
    beats = 0
    statics = None
    for q, k, v, cm in heads:
        job = u.head_job(cfg, q, k, v, cm, stalls=stalls)
        cmds += job.inputs["cmd"]
        for key in streams:
            streams[key] += job.inputs[key]
        beats += job.expect["out"]
        statics = job.statics
    return Job(inputs={"cmd": cmds, **streams}, expect={"out": beats}, statics=statics,
               status=["error"], stalls=StallProfile(seed=stalls), max_cycles=200_000)


def test_rejected_command_raises_flag_then_two_heads_back_to_back():
    """Index-buffer overflow (nnz > nnz_max) and an impossible line split are rejected with the
    sticky ERR_BAD_CMD flag, without consuming data; the following heads run normally and
    reuse the buffers."""
    cfg = SMALL
    rng = np.random.default_rng(12)
    heads, want = [], []
    for n in (8, 6):
        data = qkv(rng, 1, n, 5)
        mask = rng.random((1, n, n)) > 0.4
        mask[0, :, 0] = False
        cm = gv.compile_mask(mask[0], cfg.theta_d)
        heads.append((data["q"][0], data["k"][0], data["v"][0], cm))
        want.append(u.golden(cfg, **data, mask=mask)["out"][0])
    bad = [pack_fields(cmd_layout(), n=8, chunks=2, g=1, nnz=cfg.nnz_max + 1, lines_d=1,
                       dense_groups=1),
           pack_fields(cmd_layout(), n=8, chunks=2, g=3, nnz=5, lines_d=1, dense_groups=1)]
    job = _raw_job(cfg, heads, extra_cmds=bad)
    res = amaranth_sim.run(u.component(cfg), job)
    got0 = u.decode(cfg, 8, 5, res.outputs["out"][:8 * 2])
    got1 = u.decode(cfg, 6, 5, res.outputs["out"][8 * 2:])
    assert np.array_equal(got0, want[0]) and np.array_equal(got1, want[1])
    assert res.status["error"] == ERR_BAD_CMD
    res = amaranth_sim.run(u.component(cfg), _raw_job(cfg, heads))
    assert res.status["error"] == 0


def _corrupt(cfg, seed, edit):
    rng = np.random.default_rng(seed)
    n = 8
    data = qkv(rng, 1, n, 4)
    cm = gv.compile_mask(toy_mask(), 4)
    job = u.head_job(cfg, data["q"][0], data["k"][0], data["v"][0], cm, stalls=seed)
    words = job.inputs["index"]
    g, ncols = cm.g, n - cm.g
    edit(words, g, ncols, cm)
    job.status = ["error"]
    return amaranth_sim.run(u.component(cfg), job)


@pytest.mark.parametrize("what,edit,flag", [
    ("col_ptr not monotone", lambda w, g, nc, cm: w.__setitem__(g + nc + 3, 1), ERR_CSC),
    ("col_ptr[0] != 0", lambda w, g, nc, cm: w.__setitem__(g + nc, 1), ERR_CSC),
    ("row_idx >= N", lambda w, g, nc, cm: w.__setitem__(g + nc + nc + 1 + 3,
                                                        (w[g + nc + nc + 1 + 3] & ~0xFF) | 9),
     ERR_INDEX_RANGE),
    ("global column >= N", lambda w, g, nc, cm: w.__setitem__(0, 200), ERR_INDEX_RANGE),
    ("bank out of range", lambda w, g, nc, cm: w.__setitem__(g + nc + nc + 1 + 2,
                                                             w[g + nc + nc + 1 + 2] | 7 << 24),
     ERR_INDEX_RANGE),
    ("row counts do not sum to nnz", lambda w, g, nc, cm: w.__setitem__(len(w) - 1, 5),
     ERR_INDEX_RANGE),
])
def test_malformed_index_sets_flag_and_finishes(what, edit, flag):
    res = _corrupt(SMALL, 21, edit)
    assert res.status["error"] & flag, what
    assert len(res.outputs["out"]) == 8 * 2          # every output beat still arrives


def test_the_core_takes_the_units_config():
    """One Config from the API to the RTL: the core keeps the validated Config (no second set
    of range checks inside the RTL); out-of-range values are the Config's errors."""
    cfg = u.demo_config()
    core = VitCoDCore(cfg)           # not elaborated: this file silences UnusedElaboratable
    assert core.cfg is cfg and core.out.payload.shape().length == cfg.macs_per_line
    for field, value in (("lines", 1), ("n_max", 300), ("g_max", 17)):
        with pytest.raises(ValueError, match=field):
            dataclasses.replace(SMALL, **{field: value})


def test_spmm_done_latency_is_the_cycle_models():
    """The phase-2 pipeline depth that the cycle model assumes is the sum of the components'
    latencies (operand fetch, MAC line, accumulator)."""
    assert SPMM_DONE_LATENCY == gv.SPMM_DONE_LATENCY


# --- Verilator ------------------------------------------------------------------------------

def test_verilator_demo_config_matches_golden_and_amaranth_cycles():
    """The one ViTCoD Verilator run in `make test` (~1 min with the model build)."""
    cfg = u.demo_config()
    inputs = u.random_inputs(cfg, seed=1, heads=2)
    want = u.golden(cfg, **inputs)
    got_v, st_v = u.simulate(cfg, **inputs, simulator="verilator", stalls=3)
    got_a, st_a = u.simulate(cfg, **inputs, simulator="amaranth", stalls=3)
    assert u.compare(want, got_v) == [] and u.compare(want, got_a) == []
    assert st_v["cycles"] == st_a["cycles"]


@pytest.mark.slow
@needs_data
@pytest.mark.parametrize("layer,head", [(0, 0), (2, 0), (11, 1)])
def test_verilator_real_heads_full_size(layer, head):
    pruned = load_real_mask()
    rng = np.random.default_rng(layer * 3 + head)
    cfg = u.Config()
    inputs = {**qkv(rng, 1, 197, 64), "mask": pruned[layer, head:head + 1]}
    want = u.golden(cfg, **inputs)
    got, stats = u.simulate(cfg, **inputs, simulator="verilator", stalls=layer + head)
    assert u.compare(want, got) == []
    assert stats["error_flag"] == 0
