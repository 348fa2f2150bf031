"""Cycles per image of the small ViT (:class:`vitaccel.golden.vit.ViTConfig`) on the units at
their ULX3S board configurations, and the units' ULX3S Fmax for images/s.

Every count is a stall-free cycle count of the unit's RTL (no host-link time), built from the
units' own schedules. Where a unit ships a schedule function it is used as is; where it does not,
the schedule below was derived from the RTL and checked **cycle for cycle** against every
matching row of ``benchmarks/results/<unit>.json`` (``tests/test_model_cost.py`` repeats those
checks, so a wrong wrapper fails there). Nothing is fitted to the ViT's own shapes. Per unit:

``gemm`` (linear layers) -- no schedule function exists; :func:`gemm_stream_cycles` is derived
    from ``rtl/common/gemm.py`` (load FSM, compute FSM, ping-pong buffer sets) and
    ``rtl/common/mac_array.py`` (4-stage pipeline, result bank). It reproduces every
    ``total_cycles`` and ``compute_cycles`` of the ``sizes`` rows and every stream total of
    ``benchmarks/results/gemm.json`` (8 single problems, 3 streams of 5). Valid for K >= rows
    (the MAC array never stalls then; all the ViT's K are 16 or 64).
``vitcod`` (softmax attention, dense or masked) -- :func:`vitcod_head_cycles`. SpMM phase:
    :func:`vitaccel.golden.vitcod.spmm_schedule` (pinned cycle-exact against the RTL by
    ``tests/test_vitcod_rtl.py``), with the normaliser slots (a row is handed off only when the
    slot in turn is free, which the ULX3S config's single normaliser makes matter). SDDMM phase, LOAD phase and the normaliser tail derived from
    ``rtl/vitcod/core.py``; all four reproduce ``sddmm_cycles``, ``spmm_cycles`` and
    ``cycles_total`` of all 36 heads in ``benchmarks/results/vitcod.json`` (8 x 8 lines, six
    normalisers). The single-normaliser hand-off rule, the G = 0 (all-sparse) case and empty
    columns are not exercised by that file (see "Limits" below).
``fact`` (FACT predictor) -- ``vitaccel.units.fact.expected_compute_cycles`` (pinned against
    simulation in ``tests/test_fact.py``) plus the loads: ``max(N D, D D) + 3`` cycles (X, Wq,
    Wk stream in parallel, one int8 per beat), which reproduces both ``cycles`` rows of
    ``benchmarks/results/fact.json`` (demo and DeiT-Tiny).
``vitality`` -- no schedule function exists; :func:`vitality_cycles` is derived from
    ``rtl/vitality/core.py``: ``ceil(n/R) d`` (K/V load) + ``ceil(d/L) (lat + 1)`` (key centring,
    ``lat`` = the divider's latency) + ``ceil(d/C) ceil(n/R) max(d, R+C+3)`` (step 2) +
    ``ceil(d/C) ceil(d/R) max(n, R+C+3)`` (step 5) + ``2 (R + C) + 16`` (two array drains and
    the hand-offs), per head, heads back to back costing one cycle more each. It reproduces all
    five runs of ``benchmarks/results/vitality.json``. It assumes SA-Diag's reciprocals are
    ready before step 5 needs them; :func:`vitality_cycles` raises ``ValueError`` where that is
    not guaranteed (small d on a large array), never guesses.
``heatvit`` (token selector) -- no schedule function exists; :func:`selector_cycles` is derived
    from ``rtl/heatvit/selector.py`` phase by phase (its per-phase counters), the GEMM phases by
    stepping the layer engine's pipeline register by register (:func:`_selector_layer_cycles`).
    It reproduces ``cycles`` of all three runs of ``benchmarks/results/heatvit.json`` (DeiT-T,
    N = 196, 60 / 142 / 192 kept); exact given the keep decisions, an upper bound (at most 4
    cycles over) given only how many are kept.

Linear layers: each layer is split into GEMM problems that fit the engine (M, N, K <= 64 at the
ULX3S config: qkv is three 64-column problems, fc1 two, fc2 two K halves whose int32 partial
sums the host adds); the problems of one layer stream back to back (the engine loads one while
it computes the previous), layers run one after another (each needs the previous one's
output). Per block: qkv, proj, fc1, fc2 on that block's tokens; plus the patch embedding (49 x
16 @ 16 x 64) and the head on the CLS token (1 x 64 @ 64 x 10). LayerNorm, GELU, residuals,
softmax outside the units and the host link are not counted anywhere.

Model-sized configs: FACT, ViTALiTy and HeatViT run with their ULX3S board config resized to
the ViT (:func:`fact_config`: heads = 2, k = topk; :func:`vitality_config`: d = 32, n_max = 50;
:func:`selector_config`: D = 64, heads = 2, n_max = 49); GEMM and ViTCoD run their ULX3S config
unchanged (d = 32 <= d_max).

Limits (what the result files do not pin):
* no result file runs ViTCoD with one normaliser (the ULX3S config), without a global column
  (always so at N <= 50 with theta_d = 50) or with an empty sparse column; nor the selector at
  D = 64, ViTALiTy at d = 32 or GEMM streams of the ViT's shapes. Those cases were checked
  against Amaranth simulations of the ULX3S-sized units (every one matched cycle for cycle;
  the counts are pinned in ``tests/test_model_cost.py``, a slow test re-simulates two).
* attention_cycles("heatvit") knows only the token counts: the selector term is the upper
  bound of :func:`selector_cycles` (at most 4 cycles over per stage).
* Fmax is that of each unit's ULX3S *default* build (ViTALiTy d = 64, HeatViT D = 192, FACT
  3 heads, ...), not of a build resized to the ViT, which nobody has placed and routed.

Fmax: :func:`fmax_mhz` reads the ``builds`` row with ``board == "ulx3s"`` of
``benchmarks/results/<unit>.json`` (the nextpnr report of the unit's ULX3S default config).
"""
from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path

import numpy as np

from vitaccel import units
from vitaccel.golden import vitcod as _gv
from vitaccel.golden.vit import ViTConfig

__all__ = ["VARIANTS", "fmax_mhz", "linear_problems", "gemm_stream_cycles", "linear_cycles",
           "vitcod_head_cycles", "vitcod_cycles", "fact_cycles", "vitality_cycles",
           "fact_config", "vitality_config", "selector_config", "selector_cycles",
           "attention_cycles", "seconds_per_image"]

#: attention variants of :func:`attention_cycles`
VARIANTS = ("int8", "vitcod", "vitality", "fact", "heatvit")
#: where ``benchmarks/results`` lives (a source checkout; not part of an installed wheel)
RESULTS_DIR = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
BOARD = "ulx3s"


# ------------------------------------------------------------------------------------------------
# Fmax
# ------------------------------------------------------------------------------------------------
def fmax_mhz(unit: str, results_dir: str | Path | None = None) -> float:
    """Achieved Fmax (MHz) of ``unit``'s ULX3S build: ``fmax_mhz`` of the ``builds`` row with
    ``board == "ulx3s"`` in ``benchmarks/results/<unit>.json`` (nextpnr, the unit's ULX3S
    default config, the row's router and seed). Clear errors for unknown units, missing files or
    a missing ULX3S build row."""
    if unit not in units.names():
        raise ValueError(f"unknown unit {unit!r}; known units: {', '.join(units.names())}")
    path = Path(results_dir or RESULTS_DIR) / f"{unit}.json"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no benchmark results for {unit!r} (run `make bench` "
                                f"in a source checkout)")
    rows = [b for b in json.loads(path.read_text()).get("builds", [])
            if b.get("board") == BOARD and b.get("fmax_mhz") is not None]
    if not rows:
        raise ValueError(f"{path}: no ULX3S build row with an fmax_mhz")
    return float(rows[0]["fmax_mhz"])


def _vit(vit_cfg):
    if vit_cfg is None:
        return ViTConfig()
    if not isinstance(vit_cfg, ViTConfig):
        raise ValueError(f"vit_cfg must be a ViTConfig or None, got {type(vit_cfg).__name__}")
    return vit_cfg


def _tokens(tokens_per_block, vit_cfg: ViTConfig) -> list[int]:
    if tokens_per_block is None:
        return [vit_cfg.tokens] * vit_cfg.depth
    toks = list(tokens_per_block)
    if len(toks) != vit_cfg.depth:
        raise ValueError(f"tokens_per_block: expected {vit_cfg.depth} counts (one per block), "
                         f"got {len(toks)}")
    for i, n in enumerate(toks):
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) \
                or not 1 <= n <= vit_cfg.tokens:
            raise ValueError(f"tokens_per_block[{i}] must be an integer in [1, "
                             f"{vit_cfg.tokens}], got {n!r}")
    return [int(n) for n in toks]


# ------------------------------------------------------------------------------------------------
# GEMM engine (linear layers)
# ------------------------------------------------------------------------------------------------
def _cdiv(a, b):
    return -(-a // b)


def gemm_stream_cycles(problems, cfg=None) -> dict:
    """Stall-free cycles of the GEMM engine (``rtl/common/gemm.py``) on ``problems``, a list of
    (M, N, K) streamed back to back as ``units.get("gemm").simulate_batch`` streams them.

    Returns ``{"cycles": first command to last result beat (simulate's stats["cycles"]),
    "compute_cycles": busy cycles (stats["compute_cycles"])}``.

    The schedule, from the RTL: problem i's command is taken at s_i (s_0 = 0); A and B load one
    byte per cycle in parallel (L_i = max(M K, K N) cycles) and its buffer set is full at f_i =
    s_i + L_i + 2. The compute side sees it at w_i = max(f_i, r_{i-1} + 1) and issues T_i K_i
    k-steps (T_i = tiles of rows x cols) in cycles w_i + 1 .. r_i = w_i + T_i K_i. The next
    command needs the buffer set problem i - 1 used, freed after its last k-step: s_{i+1} =
    max(f_i, r_{i-1} + 1). The last result beat of problem i
    is seen r_i + 5 + (rows of its last tile); the engine is busy over [w_i + 1, r_i + 4 + rows
    of the last tile]. Valid for K >= rows (the MAC array never stalls); raises ValueError
    otherwise.
    """
    cfg = cfg or units.get("gemm").board_config(BOARD)
    R, C = cfg.rows, cfg.cols
    s, r_prev = 0, None
    last_beat, busy = 0, []
    for m, n, k in problems:
        for name, v, hi in (("M", m, cfg.m_max), ("N", n, cfg.n_max), ("K", k, cfg.k_max)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 1 <= v <= hi:
                raise ValueError(f"GEMM problem {m}x{n}x{k}: {name} must be an integer in "
                                 f"[1, {hi}]")
        if k < R:
            raise ValueError(f"GEMM problem {m}x{n}x{k}: K < rows ({R}) stalls the MAC array; "
                             f"the schedule is only derived for K >= rows")
        full = s + max(m * k, k * n) + 2
        w = full if r_prev is None else max(full, r_prev + 1)
        r = w + _cdiv(m, R) * _cdiv(n, C) * k
        tail_rows = m - R * (_cdiv(m, R) - 1)
        busy.append((w + 1, r + 4 + tail_rows))
        last_beat = max(last_beat, r + 5 + tail_rows)
        s = full if r_prev is None else max(full, r_prev + 1)
        r_prev = r
    compute, end = 0, -1
    for a, b in busy:
        compute += b - max(a, end + 1) + 1 if b > end else 0
        end = max(end, b)
    return {"cycles": last_beat, "compute_cycles": compute}


def linear_problems(tokens_per_block=None, vit_cfg=None, cfg=None) -> list[tuple[str, list]]:
    """The linear layers of one image as GEMM problems that fit the engine: a list of
    ``(layer name, [(M, N, K), ...])``. Layers larger than the engine's maxima are split along
    M, N and K (K halves: int32 partial sums added by the host)."""
    v = _vit(vit_cfg)
    toks = _tokens(tokens_per_block, v)
    cfg = cfg or units.get("gemm").board_config(BOARD)

    def split(m, n, k):
        return [(min(cfg.m_max, m - i), min(cfg.n_max, n - j), min(cfg.k_max, k - q))
                for i in range(0, m, cfg.m_max) for j in range(0, n, cfg.n_max)
                for q in range(0, k, cfg.k_max)]

    D = v.dim
    layers = [("patch", split(v.patches, D, v.patch * v.patch))]
    for b, n in enumerate(toks):
        layers += [(f"blocks.{b}.qkv", split(n, 3 * D, D)), (f"blocks.{b}.proj", split(n, D, D)),
                   (f"blocks.{b}.fc1", split(n, v.mlp, D)), (f"blocks.{b}.fc2", split(n, D, v.mlp))]
    layers.append(("head", split(1, v.classes, D)))
    return layers


def linear_cycles(tokens_per_block=None, vit_cfg=None, *, detail: bool = False):
    """Cycles of all linear layers of one image on the GEMM engine at its ULX3S config
    (``units.get("gemm").board_config("ulx3s")``: 8 x 8 MACs, M, N, K <= 64), each layer's
    problems streamed back to back (:func:`gemm_stream_cycles`), layers one after another.
    ``tokens_per_block``: tokens entering each block (default: all 50 in every block).
    Returns the total, or with ``detail=True`` a dict layer -> cycles plus ``"total"``."""
    per_layer = {name: gemm_stream_cycles(probs)["cycles"]
                 for name, probs in linear_problems(tokens_per_block, vit_cfg)}
    total = sum(per_layer.values())
    return {**per_layer, "total": total} if detail else total


def _latency(component) -> int:
    """``component.latency``; the component (and its Divider) was built only to read it."""
    for c in (component, getattr(component, "_divider", None)):
        if c is not None:
            c._MustUse__used = True
    return component.latency


# ------------------------------------------------------------------------------------------------
# ViTCoD (softmax attention, dense = all-kept mask, or a fixed sparse mask)
# ------------------------------------------------------------------------------------------------
#: rows' done bits are seen this many cycles after an engine's last issue for the row
#: (``spmm_schedule``'s ``pipe``; rtl/vitcod/core.py, phase 2 with stage 1r)
#: SDDMM: cycles from an engine's last issue to the end of the drain (incl. the SDDMM state's
#: exit cycle); the Sparser engine then writes its last group's r scores one per cycle. Derived
#: from rtl/vitcod/core.py (issue -> requantiser -> score write -> row-max read-modify-write,
#: then p1_quiet) and reproduced on all 36 heads of benchmarks/results/vitcod.json.
_VITCOD_SDDMM_DRAIN = 18
#: from the last chunk fed to the output product stage to the last ``out`` beat seen by the sink:
#: the three product stages, Requantizer.LATENCY (5) and the sink's cycle (rtl/vitcod/core.py;
#: the 36 heads of benchmarks/results/vitcod.json).
_VITCOD_OUT_TAIL = 9
#: command handshake before LOAD (IDLE, CMD_PRODUCTS, CMD_CHECK, CMD_ACCEPT)
_VITCOD_CMD = 4


@functools.lru_cache(maxsize=None)
def _vitcod_recip_latency(cfg) -> int:
    """Latency of a normaliser slot's Reciprocal (rtl/vitcod/core.py builds it with
    frac_bits=RECIP_FRAC, den_width = the row sum's width + 1, out_width=E_BITS + 3)."""
    from amaranth.utils import ceil_log2
    from vitaccel.rtl.common.divider import Reciprocal
    lsum = _gv.E_BITS + 1 + ceil_log2(cfg.n_max + 1) + 1
    recip = Reciprocal(frac_bits=_gv.RECIP_FRAC, den_width=lsum + 1, out_width=_gv.E_BITS + 3)
    return _latency(recip)


#: the Divider answers a division by zero (a row with no kept key: l = 0) in 2 cycles
#: (rtl/common/divider.py: IDLE -> SATURATE -> OUTPUT)
_DIVIDE_BY_ZERO_LATENCY = 2


def vitcod_head_cycles(mask, d: int, cfg=None) -> dict:
    """Stall-free cycles of one head on the ViTCoD unit (``cfg``: default the ULX3S board config)
    for an N x N ``mask`` (bool, True = pruned) and head size ``d``; the head's ``cycles_total``
    as ``units.get("vitcod").simulate`` reports it per head (command to last output beat).

    Returns a dict: ``load``, ``sddmm``, ``spmm`` (as the core's counters), ``total``, and the
    compiled split (``g``, ``nnz``, ``lines_d``, ``lines_s``). The mask is compiled by the unit's
    own compiler (``Config.theta_d``) and checked against its limits (ValueError as the unit).

    Phases (rtl/vitcod/core.py; numbers in the module constants above):
    * LOAD: the q/k/v rows (N ceil(d / MACs) beats each), the validity bitmap (ceil(G / lines_d)
      N words) and the index stream (G + 2 (N - G) + 1 + nnz + N words, one stall per sparse
      column the CSC walker steps over before the last entry, one cycle per empty section) load
      in parallel; LOAD ends one cycle after the slowest.
    * SDDMM: Denser engine ceil(G / lines_d) N f cycles, Sparser engine ceil(nnz / lines_s)
      max(f, lines_s) (f = ceil(d / MACs)); each + the drain, the Sparser engine's also + the
      size of its last group (its scores are written one per cycle).
    * SpMM + normalise: :func:`vitaccel.golden.vitcod.spmm_schedule`; a row's reciprocal takes the Reciprocal's
      latency (2 for a row with no kept key), its slot streams the row out 2 cycles after that.
    """
    u = units.get("vitcod")
    cfg = cfg or u.board_config(BOARD)
    mask = np.asarray(mask)
    if mask.dtype != np.bool_ or mask.ndim != 2 or mask.shape[0] != mask.shape[1]:
        raise ValueError(f"mask: expected a square bool array (True = pruned), got "
                         f"{mask.dtype} {mask.shape}")
    n = mask.shape[0]
    if not 1 <= n <= cfg.n_max:
        raise ValueError(f"mask: N = {n} must be in [1, Config.n_max = {cfg.n_max}]")
    if not 1 <= d <= cfg.d_max:
        raise ValueError(f"d = {d} must be in [1, Config.d_max = {cfg.d_max}]")
    (cm,) = u.compile_heads(cfg, mask[None])
    ld, ls = cm.split(cfg.lines)
    f = _cdiv(d, cfg.macs_per_line)
    dg = _cdiv(cm.g, ld) if cm.g else 0
    ncols = n - cm.g
    # LOAD
    col_cnt = np.diff(cm.col_ptr)
    nonempty = np.flatnonzero(col_cnt)
    walker_steps = int(nonempty[-1]) if cm.nnz else 0
    empty_sections = (cm.g == 0) + (ncols == 0) + (cm.nnz == 0)
    index_words = cm.g + ncols + (ncols + 1) + cm.nnz + n
    load = max(n * f + 1, dg * n + 1 if dg else 0,
               index_words + walker_steps + empty_sections + 1)
    # SDDMM
    dense = dg * n * f
    groups = _cdiv(cm.nnz, ls) if ls else 0
    sparse = groups * max(f, ls)
    last_group = cm.nnz - (groups - 1) * ls if cm.nnz else 0
    sddmm = max(dense + _VITCOD_SDDMM_DRAIN if dense else 0,
                sparse + _VITCOD_SDDMM_DRAIN + last_group if sparse else 0)
    if not sddmm:
        raise ValueError("mask: nothing is kept (no global column and no sparse entry)")
    # SpMM and the normalisers
    lat = _vitcod_recip_latency(cfg)
    kept_row = (~mask).any(axis=1)
    ready = [2 + (lat if k else _DIVIDE_BY_ZERO_LATENCY) for k in kept_row]
    spmm, busy_d, busy_s, last_feed = _gv.spmm_schedule(np.diff(cm.row_ptr), f, dg, ls, ready,
                                                     cfg.normalisers)
    total = _VITCOD_CMD + load + sddmm + last_feed + _VITCOD_OUT_TAIL
    return {"load": load, "sddmm": sddmm, "spmm": spmm, "total": total, "g": cm.g,
            "nnz": cm.nnz, "lines_d": ld, "lines_s": ls}


def vitcod_cycles(masks, d: int, cfg=None) -> int:
    """Cycles of all heads in ``masks`` (..., N, N bool, True = pruned) on the ViTCoD unit, one
    head per command as the unit's driver runs them (sum of :func:`vitcod_head_cycles`)."""
    masks = np.asarray(masks)
    if masks.ndim < 2:
        raise ValueError(f"masks: expected (..., N, N), got shape {masks.shape}")
    flat = masks.reshape((-1,) + masks.shape[-2:])
    return sum(vitcod_head_cycles(m, d, cfg)["total"] for m in flat)


# ------------------------------------------------------------------------------------------------
# FACT predictor
# ------------------------------------------------------------------------------------------------
#: command handshake (IDLE, CMD_DECIDE) and the LOAD exit (rtl/fact/predictor.py); with the
#: parallel loads max(N D, D D) it reproduces both `cycles` rows of benchmarks/results/fact.json
_FACT_LOAD_EXTRA = 3


def fact_config(vit_cfg=None, topk=None):
    """The FACT predictor's ULX3S board config with the model's heads and ``k`` (the rest, lanes
    and maxima, as built for the ULX3S)."""
    v = _vit(vit_cfg)
    k = v.topk if topk is None else topk
    base = units.get("fact").board_config(BOARD)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= min(
            base.k_max, v.tokens):
        raise ValueError(f"topk must be an integer in [1, {min(base.k_max, v.tokens)}] (the "
                         f"FACT unit's k_max and the token count), got {k!r}")
    return dataclasses.replace(base, heads=v.heads, k=int(k))


def fact_cycles(n: int, d_model: int, cfg) -> int:
    """Cycles of one FACT prediction (all heads) for N = ``n`` tokens of width ``d_model``: the
    parallel loads of X, Wq and Wk (``max(N D, D D)`` beats, one int8 per beat) +
    :func:`vitaccel.units.fact.expected_compute_cycles` + 3."""
    u = units.get("fact")
    if d_model % (cfg.heads * cfg.lanes) or d_model > cfg.d_model_max or not 1 <= n <= cfg.n_max:
        raise ValueError(f"FACT: N = {n}, D = {d_model} do not fit {cfg}")
    load = max(n * d_model, d_model * d_model)
    if load < cfg.n_max:        # LOAD also waits for the importance counters to clear
        raise ValueError(f"FACT: loads of {load} beats are shorter than the importance "
                         f"clear (n_max = {cfg.n_max}); not modelled")
    return load + u.expected_compute_cycles(cfg, n, d_model) + _FACT_LOAD_EXTRA


# ------------------------------------------------------------------------------------------------
# ViTALiTy
# ------------------------------------------------------------------------------------------------
#: per head beyond the phases: the two SA-General drains (2 x (rows + cols)) plus this; derived
#: from rtl/vitality/core.py and reproducing all five runs of benchmarks/results/vitality.json
_VITALITY_EXTRA = 16


def vitality_config(vit_cfg=None):
    """The ViTALiTy unit's ULX3S board config (4 x 4 array) with the model's head size and token
    count (``d`` = head_dim, ``n_max`` = tokens)."""
    v = _vit(vit_cfg)
    return dataclasses.replace(units.get("vitality").board_config(BOARD), d=v.head_dim,
                               n_max=v.tokens)


def vitality_cycles(n: int, heads: int, cfg) -> int:
    """Cycles of ``heads`` heads of n tokens on the ViTALiTy unit (one command per head, back to
    back as the unit's driver sends them): per head

        ceil(n/R) d                                  K and V (one R-lane beat per feature)
      + ceil(d / L) (lat + 1)                        key centring (divider array, L lanes)
      + ceil(d/C) ceil(n/R) max(d, R + C + 3)        step 2 passes (K^T V)
      + ceil(d/C) ceil(d/R) max(n, R + C + 3)        step 5 passes (Q G)
      + 2 (R + C) + 16                               the two array drains, hand-offs

    and one cycle per further head. ``lat`` is the centring divider's latency (built as
    rtl/vitality/core.py builds it). With ``constant_td`` SA-Diag is one division that never
    delays step 5 (the same count). ValueError where SA-Diag's per-row reciprocals (one per
    ``max(recip latency + 1, ceil(d/R) + 6)`` cycles after step 2's first d/C pass) might not be
    ready when step 5's last pass needs them: those waits are not modelled.
    """
    from vitaccel.golden.vitality import KBAR_FRAC
    from vitaccel.rtl.common.divider import Divider
    if not 1 <= n <= cfg.n_max:
        raise ValueError(f"ViTALiTy: n = {n} must be in [1, Config.n_max = {cfg.n_max}]")
    p = cfg.params
    R, C, d = cfg.rows, cfg.cols, cfg.d
    L = min(cfg.div_lanes, d)
    at, bt, tt = _cdiv(d, R), _cdiv(d, C), _cdiv(n, R)
    min_pass = R + C + 3
    if n < min_pass or d < min_pass:
        raise ValueError(f"ViTALiTy: n = {n} or d = {d} below a pass's minimum of {min_pass} "
                         f"slots (idle slots shorten the drains): not modelled")
    kbar_lat = _latency(Divider(p.ksum_bits + KBAR_FRAC, max(p.n_max.bit_length(), 1),
                                p.kbar_bits))
    recip_lat = _latency(Divider((p.out_mult << p.recip_frac).bit_length() + 1, p.td_bits - 1,
                                 p.recip_bits, out_signed=False))
    g_pass, t_pass = max(d, min_pass), max(n, min_pass)
    # SA-Diag: starts after step 2's bt = 0 passes, a row per max(divider, AT + 6) cycles;
    # step 5 first needs row i's reciprocal (AT - 1) passes + i slots into step 5
    diag = n * max(recip_lat + 1, at + 6) + recip_lat + 2 * (R + C) + _VITALITY_EXTRA
    budget = (bt - 1) * tt * g_pass + (at - 1) * t_pass
    if not p.center_keys or (not p.constant_td and diag > budget) or n * at > tt * (d + g_pass):
        raise ValueError("ViTALiTy: outside the modelled schedule (no key centring, or SA-Diag "
                         "/ the Q load could delay step 5)")
    head = (tt * d + _cdiv(d, L) * (kbar_lat + 1) + bt * tt * g_pass + bt * at * t_pass
            + 2 * (R + C) + _VITALITY_EXTRA)
    return heads * head + (heads - 1)


# ------------------------------------------------------------------------------------------------
# HeatViT token selector
# ------------------------------------------------------------------------------------------------
def selector_config(vit_cfg=None):
    """The HeatViT unit's ULX3S board config with the model's D, heads and n_max = patches (the
    most candidates a selector sees: every patch token, or fewer plus a package)."""
    v = _vit(vit_cfg)
    return dataclasses.replace(units.get("heatvit").board_config(BOARD), D=v.dim, heads=v.heads,
                               n_max=v.patches)


@functools.lru_cache(maxsize=None)
def _selector_layer_cycles(mode: str, K: int, out: int, rows: int, R: int, C: int) -> int:
    """Cycles of one layer's ``*_RUN`` state in rtl/heatvit/selector.py (no stalls), by stepping
    its GEMM path register by register: the issue counters, the operand reads (BankedMemory,
    2 enabled cycles), the operand skid buffer, the MAC array (operand, product, product2
    stages, result bank that stalls a finishing tile while occupied), the result skid buffer,
    the lane logic (gelu: two lanes a cycle; bias/head: one; logit: one beat a cycle), the S
    register and its skid buffer, then the write-back (GELU: 18 cycles, the int16 requantiser:
    5 + 1; bias: at once); the layer ends when every value is written and nothing is issued.
    Reproduces every layer of Amaranth simulations of the ULX3S selector at D = 64 (see the
    tests) and the ``gemm_cycles`` of benchmarks/results/heatvit.json (D = 192, N = 196)."""
    from vitaccel.rtl.common.requant import Requantizer
    from vitaccel.rtl.heatvit.gelu import GELUPoly
    gelu_lat = 2 * Requantizer.LATENCY + GELUPoly.LATENCY     # GELU.latency
    rq_lat = Requantizer.LATENCY + 1          # the int16 requantiser + the dz / hw write register
    single = mode == "bias"
    rows = 1 if single else rows
    outputs = rows if mode == "logit" else (out if single else rows * out)
    pair = mode == "gelu"

    def lanes_of(left):
        return (C - 1 if left >= C else left - 1,
                max(C - 2, 0) if left >= C else (left - 2 if left >= 2 else 0))

    issuing, tg, og, kk = True, 0, 0, 0
    st0 = st1 = None                     # the reads' two aligned stages: (valid, last, nrows)
    os_ov, os_o, os_sv, os_s = False, None, False, None
    a_o = a_p = a_q = (False, False, 0)
    bank = 0
    rs_ov, rs_sv = False, False
    beat_full, lane, pr, pog, ptg = False, 0, 0, 0, 0
    o_left = out
    lane_last, pair_last = lanes_of(out)
    s_v = s_second = k_v = k_second = False
    writes = {}
    left = outputs
    t = 0
    while True:
        if t > 64 * (rows + R) * (out + C) * (K + 8):   # pragma: no cover - a bug
            raise RuntimeError(f"selector layer emulation does not terminate ({mode}, K={K}, "
                               f"out={out}, rows={rows})")
        advance = not os_sv
        rows_left = rows - tg * R
        issue = (issuing, kk == K - 1, R if rows_left >= R else rows_left)
        a_adv = not (a_q[0] and a_q[1] and bank)
        last_lane = True if mode == "logit" else (lane >= pair_last if pair else lane == lane_last)
        has_second = pair and lane < lane_last
        beat_ready = (not beat_full) or last_lane
        wc = writes.pop(t, 0)
        if k_v:                          # the S skid buffer's output, taken at once
            if mode == "bias":
                wc += 1
            else:
                at = t + (gelu_lat if pair else rq_lat)
                writes[at] = writes.get(at, 0) + (1 + k_second if pair else 1)
        if not issuing and left == 0:
            return t + 1
        # next state, downstream first
        n_left = left - wc
        n_k_v, n_k_second = s_v, s_second
        n_s_v, n_s_second = beat_full, has_second
        n_beat_full, n_lane, n_pr, n_pog, n_ptg = beat_full, lane, pr, pog, ptg
        n_o_left, n_lane_last, n_pair_last = o_left, lane_last, pair_last
        if beat_full:
            if last_lane:
                n_beat_full = False
                if pr == R - 1 or ptg * R + pr + 1 >= rows:
                    n_pr = 0
                    if o_left <= C:
                        n_pog, n_ptg, n_o_left = 0, ptg + 1, out
                    else:
                        n_pog, n_o_left = pog + 1, o_left - C
                    n_lane_last, n_pair_last = lanes_of(n_o_left)
                else:
                    n_pr = pr + 1
            else:
                n_lane = lane + (2 if pair else 1)
        if rs_ov and beat_ready:
            n_beat_full, n_lane = True, 0
        res_valid = bank != 0
        if beat_ready or not rs_ov:
            n_rs_ov, n_rs_sv = rs_sv or res_valid, False
        else:
            n_rs_ov, n_rs_sv = rs_ov, rs_sv or res_valid
        n_bank = bank
        if a_adv and a_q[0] and a_q[1]:
            n_bank = a_q[2]
        elif res_valid and not rs_sv:
            n_bank = bank - 1
        if a_adv:
            n_a_o = os_o if os_ov else (False, False, 0)
            n_a_p, n_a_q = a_o, a_p
        else:
            n_a_o, n_a_p, n_a_q = a_o, a_p, a_q
        rd = st1 or (False, False, 0)
        if a_adv or not os_ov:
            n_os_ov, n_os_o, n_os_sv, n_os_s = os_sv or rd[0], (os_s if os_sv else rd), False, os_s
        elif rd[0] and not os_sv:
            n_os_ov, n_os_o, n_os_sv, n_os_s = os_ov, os_o, True, rd
        else:
            n_os_ov, n_os_o, n_os_sv, n_os_s = os_ov, os_o, os_sv, os_s
        n_st0, n_st1 = (issue, st0) if advance else (st0, st1)
        n_issuing, n_tg, n_og, n_kk = issuing, tg, og, kk
        if issuing and advance:
            if kk == K - 1:
                n_kk = 0
                if (og + 1) * C >= out:
                    n_og = 0
                    if (tg + 1) * R >= rows:
                        n_issuing = False
                    else:
                        n_tg = tg + 1
                else:
                    n_og = og + 1
            else:
                n_kk = kk + 1
        left, k_v, k_second = n_left, n_k_v, n_k_second
        s_v, s_second = n_s_v, n_s_second
        beat_full, lane, pr, pog, ptg = n_beat_full, n_lane, n_pr, n_pog, n_ptg
        o_left, lane_last, pair_last = n_o_left, n_lane_last, n_pair_last
        rs_ov, rs_sv, bank = n_rs_ov, n_rs_sv, n_bank
        a_o, a_p, a_q = n_a_o, n_a_p, n_a_q
        os_ov, os_o, os_sv, os_s = n_os_ov, n_os_o, n_os_sv, n_os_s
        st0, st1 = n_st0, n_st1
        issuing, tg, og, kk = n_issuing, n_tg, n_og, n_kk
        t += 1


def _trailing(bits) -> int:
    """Number of leading entries of ``bits`` (read from the end) equal to the last entry."""
    k = 0
    for b in reversed(bits):
        if b != bits[-1]:
            break
        k += 1
    return k


def selector_cycles(n_candidates: int, vit_cfg=None, *, n_kept=None, keep=None,
                    has_package: bool = False) -> int:
    """Cycles of one image through the HeatViT selector (``units.get("heatvit")``, the ULX3S
    board config with the model's D, heads and n_max = patches: :func:`selector_config`), as
    ``simulate``'s ``stats["cycles"]`` (command to the last output beat, no stalls).

    ``n_candidates`` = the unit's N (tokens after CLS, an incoming package included, which is
    always dropped: ``has_package``). How many tokens it keeps changes the count (a dropped token
    costs the keep-score division, a kept one its D output bytes), so give ``n_kept`` or the keep
    decisions ``keep`` (N bools); with ``keep`` the count is exact, with ``n_kept`` alone it is an
    upper bound at most 4 cycles above (1 with ``has_package``): the package and output passes
    drain a few cycles sooner depending on which of the last candidates are kept, and the
    costliest arrangement is assumed.

    No schedule function ships with the unit, so this one is derived from
    rtl/heatvit/selector.py, phase by phase as its counters split a run:

    * load: max(weights words, bias words, (N + 1) D token bytes) + 1;
    * layernorm, per head: 1 + (N - 1) P + 2 d + P + 9 with P = max(d + 1, 3 LN_R + 10) the
      LayerNorm's per-group interval (rtl/heatvit/layernorm.py);
    * GEMM phases: :func:`_selector_layer_cycles` for L1, L2G, L2, L3, L4 per head and V1, V2;
    * nonlinear: reciprocal of N (1 + its latency) + 1 + per head (d/2 clear + d/2 + 3 global
      mean) + per token (h reads + 4 pipeline + 3 states) + per dropped token (1 + the keep-score
      divider's latency);
    * package (if anything is dropped): 1 cycle per kept and D per dropped candidate, the
      accumulation pipeline's drain (6 cycles, 1 fewer per kept candidate after the last
      dropped one, at least 1), 1 + the package reciprocal's latency, 1, D + 6 output beats;
      else 1;
    * compaction: 1 + (kept + 1) D + dropped + the read pipeline's drain (3, 1 fewer per
      dropped row at the end, at least 1) + 1;
    * control: 12 per head + 4 (layer load and start states), and 1 for the sink.

    Checked against benchmarks/results/heatvit.json (all three DeiT-T runs: every phase and
    ``cycles``) and Amaranth simulations at the ULX3S D = 64 config (tests/test_model_cost.py).
    """
    from vitaccel.golden.heatvit import LN_R, PKG_FRAC, RN_FRAC
    from vitaccel.rtl.common.divider import Divider, Reciprocal
    from vitaccel.rtl.heatvit.selector import Plan
    v = _vit(vit_cfg)
    cfg = selector_config(v)
    n = n_candidates
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n <= cfg.n_max:
        raise ValueError(f"n_candidates must be an integer in [1, {cfg.n_max}], got {n!r}")
    if has_package and n < 2:
        raise ValueError("has_package needs at least one candidate besides the package")
    if keep is not None:
        keep = np.asarray(keep)
        if keep.dtype != np.bool_ or keep.shape != (n,):
            raise ValueError(f"keep: expected {n} bools, got {keep.dtype} {keep.shape}")
        if has_package and keep[-1]:
            raise ValueError("keep: the incoming package (the last candidate) is never kept")
        kept = int(keep.sum())
        if n_kept is not None and n_kept != kept:
            raise ValueError(f"n_kept = {n_kept} but keep keeps {kept}")
    elif n_kept is None:
        raise ValueError("selector_cycles needs n_kept (or keep): the selector's cycles depend "
                         "on how many tokens it keeps")
    else:
        kept = n_kept
        if isinstance(kept, bool) or not isinstance(kept, (int, np.integer)) \
                or not 0 <= kept <= n - bool(has_package):
            raise ValueError(f"n_kept must be an integer in [0, {n - bool(has_package)}], got "
                             f"{n_kept!r}")
    dropped = n - kept
    D, h, d, R, C = cfg.D, cfg.heads, cfg.d, cfg.mac_rows, cfg.mac_cols
    ln_interval = 3 * LN_R + 10
    if d + 1 > ln_interval:
        raise ValueError(f"head size {d}: LayerNorm groups longer than its pipeline interval "
                         f"are not modelled")
    plan = Plan(D, h, cfg.n_max, cfg.shared_weights, R, C)
    load = max(plan.weights_depth, plan.bias2, (n + 1) * D) + 1
    layernorm = h * (1 + (n - 1) * ln_interval + 2 * d + ln_interval + 9)
    layers = ([("gelu", d, d, n), ("bias", d // 2, d // 2, 1), ("gelu", d // 2, d // 2, n),
               ("gelu", d // 2, d // 4, n), ("logit", d // 4, 2, n)] * h
              + [("gelu", h, h // 2, n), ("head", h // 2, h, n)])
    gemm = sum(_selector_layer_cycles(mode, K, out, rows, R, C) for mode, K, out, rows in layers)
    rn_lat = _latency(Reciprocal(frac_bits=RN_FRAC, den_width=16, out_width=RN_FRAC + 2))
    pi_lat = _latency(Divider(num_width=26, den_width=16, out_width=10, out_signed=False))
    pkg_lat = _latency(Reciprocal(frac_bits=PKG_FRAC, den_width=24, out_width=PKG_FRAC + 2))
    nonlinear = (1 + rn_lat + 1 + h * (d // 2 + d // 2 + 3) + n * (h + 7)
                 + dropped * (1 + pi_lat))
    if keep is not None:
        trail_kept = _trailing(list(keep)) if keep[-1] else 0
        trail_dropped = 0 if keep[-1] else _trailing(list(keep))
    elif dropped:                           # the costliest arrangement: the last one dropped,
        trail_kept = 0                      # the one before it kept (if any is)
        trail_dropped = 1 if kept else n
    else:
        trail_kept, trail_dropped = n, 0
    if dropped:
        package = (kept + dropped * D + max(1, 6 - trail_kept) + 1 + pkg_lat + 1 + D + 6)
    else:
        package = 1
    compaction = 1 + (kept + 1) * D + dropped + max(1, 3 - trail_dropped) + 1
    control = 12 * h + 4
    return load + layernorm + gemm + nonlinear + package + compaction + control + 1


# ------------------------------------------------------------------------------------------------
# Attention per image, and time per image
# ------------------------------------------------------------------------------------------------
def _check_masks(masks, v: ViTConfig, tokens_per_block):
    if masks is None:
        raise ValueError("masks is required for this variant: a bool array (depth, heads, N, N), "
                         "True = pruned")
    masks = np.asarray(masks)
    if masks.dtype != np.bool_:
        raise ValueError(f"masks: expected a bool array (True = pruned), got dtype {masks.dtype}")
    want = (v.depth, v.heads, v.tokens, v.tokens)
    if masks.shape != want:
        raise ValueError(f"masks: expected shape {want} (depth, heads, N, N), got {masks.shape}")
    if tokens_per_block is not None and _tokens(tokens_per_block, v) != [v.tokens] * v.depth:
        raise ValueError("tokens_per_block: masked variants run every block on all "
                         f"{v.tokens} tokens")
    return masks


def _dense_attention(toks, v: ViTConfig) -> int:
    """Softmax attention of every block on the ViTCoD unit with an all-kept mask."""
    return sum(vitcod_cycles(np.zeros((v.heads, n, n), dtype=bool), v.head_dim) for n in toks)


def _selector_stages(toks, v: ViTConfig) -> list[dict]:
    """The selector runs implied by the token counts: before each block of
    ``v.selector_blocks`` the selector sees the previous block's tokens (CLS + candidates, the
    last one a package once an earlier stage dropped tokens) and leaves CLS + kept (+ the new
    package when it drops any)."""
    if toks[0] != v.tokens:
        raise ValueError(f"tokens_per_block[0] must be {v.tokens} (no selector before block 0)")
    stages, package = [], False
    for b in range(1, v.depth):
        before, after = toks[b - 1], toks[b]
        if b not in v.selector_blocks:
            if after != before:
                raise ValueError(f"tokens_per_block: block {b} has no selector, so it keeps the "
                                 f"{before} tokens of block {b - 1}, got {after}")
            continue
        n = before - 1
        if after == before and not package:
            kept = n                           # nothing dropped: no package
        else:
            kept = after - 2                   # CLS + kept + the package
        if not 0 <= kept <= n - package:
            raise ValueError(f"tokens_per_block: {before} -> {after} tokens at the selector "
                             f"before block {b} is not a selector outcome")
        stages.append({"block": b, "n_candidates": n, "n_kept": kept, "has_package": package})
        package = package or kept < n
    return stages


def attention_cycles(variant: str, vit_cfg=None, *, tokens_per_block=None, masks=None,
                     topk=None) -> dict:
    """Attention cycles of one image (all blocks, all heads) for one of :data:`VARIANTS`, per
    unit, plus ``"total"``:

    * ``"int8"``: dense softmax attention on the ViTCoD unit (ULX3S config) with an all-kept
      mask. (At N <= 50 with the unit's theta_d = 50 no column counts as global, so the
      Sparser engine does all of it.) ``{"vitcod", "total"}``; ``tokens_per_block`` optional.
    * ``"vitcod"``: the fixed masks ``masks`` (depth, heads, N, N), True = pruned, on ViTCoD.
    * ``"vitality"``: ViTALiTy (:func:`vitality_config`: the ULX3S 4 x 4 array with the model's
      d and n_max), both heads of every block; ``tokens_per_block`` optional.
    * ``"fact"``: the FACT predictor once per block (:func:`fact_config`: N = tokens, D, heads,
      k = ``topk`` or the model's), then the attention on the selected keys on ViTCoD with the
      image's selected ``masks`` (depth, heads, N, N), True = not selected.
      ``{"fact", "vitcod", "total"}``.
    * ``"heatvit"``: dense attention (as ``"int8"``) on each block's tokens plus the selector
      before each block of ``vit_cfg.selector_blocks`` (:func:`selector_cycles`, keep count
      read off ``tokens_per_block``; an upper bound within 4 cycles per stage).
      ``{"vitcod", "heatvit", "total"}``.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; expected one of {', '.join(VARIANTS)}")
    v = _vit(vit_cfg)
    if topk is not None and variant != "fact":
        raise ValueError("topk only applies to the 'fact' variant")
    if masks is not None and variant not in ("vitcod", "fact"):
        raise ValueError(f"masks do not apply to the {variant!r} variant")
    out = {}
    if variant == "int8":
        out["vitcod"] = _dense_attention(_tokens(tokens_per_block, v), v)
    elif variant == "vitcod":
        out["vitcod"] = vitcod_cycles(_check_masks(masks, v, tokens_per_block), v.head_dim)
    elif variant == "vitality":
        cfg = vitality_config(v)
        out["vitality"] = sum(vitality_cycles(n, v.heads, cfg)
                              for n in _tokens(tokens_per_block, v))
    elif variant == "fact":
        masks = _check_masks(masks, v, tokens_per_block)
        cfg = fact_config(v, topk)
        out["fact"] = v.depth * fact_cycles(v.tokens, v.dim, cfg)
        out["vitcod"] = vitcod_cycles(masks, v.head_dim)
    else:
        if tokens_per_block is None:
            raise ValueError("the 'heatvit' variant needs tokens_per_block (tokens entering "
                             "each block after the selectors)")
        toks = _tokens(tokens_per_block, v)
        out["vitcod"] = _dense_attention(toks, v)
        out["heatvit"] = sum(selector_cycles(s["n_candidates"], v, n_kept=s["n_kept"],
                                             has_package=s["has_package"])
                             for s in _selector_stages(toks, v))
    out["total"] = sum(out.values())
    return out


def seconds_per_image(cycles_by_unit: dict) -> float:
    """Seconds per image when each unit runs its cycles at its ULX3S Fmax (:func:`fmax_mhz`)
    one after another: ``sum(cycles / Fmax)``. Keys are unit names (``"total"`` is ignored),
    e.g. ``{"gemm": linear_cycles(...), **attention_cycles(...)}``; 1 / that is images/s."""
    return sum(c / (fmax_mhz(u) * 1e6) for u, c in cycles_by_unit.items() if u != "total")


# ------------------------------------------------------------------------------------------------
# one evaluation variant of the integer model
# ------------------------------------------------------------------------------------------------
def variant_cost(variant: str, vit_cfg, model, stats, sample_images=None) -> dict:
    """Cycles per image of an evaluation variant (``vitaccel.model.evaluate``): the linear layers
    on the GEMM engine for the token counts each image had (``stats["tokens"]``), plus every unit
    call the integer ``model`` makes, costed with the unit Config it was made with (masks, kept
    tokens and FACT's selected keys as they were on those images).

    Unit calls are captured on ``sample_images`` (default: the first 50 shipped test images) and
    averaged; ``float`` and ``int8`` have no data-dependent cost, so any image gives the same.
    Returns ``cycles_per_image``, ``cycles_by_unit``, ``images_per_s`` (units one after another,
    each at its measured ULX3S Fmax: :func:`seconds_per_image`) and ``cost_images``."""
    v = _vit(vit_cfg)
    toks = np.asarray(stats["tokens"]) if stats and "tokens" in stats else \
        np.full((1, v.depth), v.tokens)
    lin_cache: dict = {}
    lin = []
    for row in toks:
        key = tuple(int(t) for t in row)
        if key not in lin_cache:
            lin_cache[key] = linear_cycles(list(key), v)
        lin.append(lin_cache[key])
    by_unit = {"gemm": float(np.mean(lin))}
    if variant != "float" and model is not None:
        if sample_images is None:
            from vitaccel.golden import fmnist
            sample_images = fmnist.load_subset()[0][:50]
        cap = {"images": set(range(len(sample_images))), "calls": []}
        model.forward(sample_images, capture=cap)
        sums: dict = {}
        for call in cap["calls"]:
            unit, c, inp = call["unit"], call["config"], call["inputs"]
            if unit == "vitcod":
                cyc = vitcod_cycles(inp["mask"], inp["q"].shape[-1], c)
            elif unit == "vitality":
                cyc = vitality_cycles(inp["q"].shape[1], inp["q"].shape[0], c)
            elif unit == "fact":
                cyc = fact_cycles(inp["x"].shape[0], inp["x"].shape[1], c)
            elif unit == "heatvit":
                cyc = selector_cycles(len(inp["tokens"]) - 1, v, keep=call["outputs"]["keep"],
                                      has_package=bool(inp["has_package"]))
            else:
                raise ValueError(f"no cost model for unit {unit!r}")
            sums[unit] = sums.get(unit, 0) + cyc
        for unit, total in sums.items():
            by_unit[unit] = total / len(sample_images)
    by_unit = {k: int(round(val)) for k, val in by_unit.items()}
    total = sum(by_unit.values())
    return {"cycles_per_image": total, "cycles_by_unit": by_unit,
            "images_per_s": 1.0 / seconds_per_image(by_unit),
            "cost_images": 0 if model is None else len(sample_images)}
