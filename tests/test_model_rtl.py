"""The units' RTL on the real ViT's tensors: every unit call of the integer Fashion-MNIST ViT
(:mod:`vitaccel.model.quant`, shipped weights via ``Q.build``) can be captured with its exact
inputs, outputs and unit ``Config``; these tests replay such calls.

For each replayed call:

(a) ``u.golden(call["config"], **call["inputs"])`` equals the captured outputs bit for bit: the
    model's batched arithmetic *is* the unit's golden model;
(b) ``u.simulate(..., simulator="verilator")`` with seeded random valid/ready stalls on every
    stream is bit-exact with it, and its cycle count is printed (``pytest -s``).

Fast set: one call of test image 0 per unit, chosen so that it is not trivial (see ``pick_*``):
vitcod on the ``int8`` model (dense, every key kept) and on the ``vitcod`` model (its fixed
masks; both share one Verilator build: the unit's Verilog depends only on the hardware fields
of its Config, not on the calibrated scales, which are run-time registers), vitality, fact (its
predictor; the model's masked attention after it is a vitcod call), heatvit (a selector stage
that keeps some tokens and drops others). Slow set: every captured call of test images 0 and 1,
all blocks, all units, every variant (``run_call`` / ``captured_calls`` are what the benchmark
reuses). Verilator builds are cached under ``build/sim`` by :mod:`vitaccel.sim.runner` (keyed on
the Verilog), so a second run only simulates. Note: the vitality Verilog embeds constants
derived from the scales, so each of its blocks is a build of its own (slow set only).
"""
from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest

from vitaccel import units
from vitaccel.golden import fmnist
from vitaccel.golden import vit as V
from vitaccel.model import quant as Q

#: model variants whose unit calls are replayed
VARIANTS = ("int8", "vitcod", "vitality", "fact", "heatvit")
#: test images of the shipped subset that are captured
IMAGES = (0, 1)
UNIT_ORDER = ("vitcod", "vitality", "fact", "heatvit")


def weights_file(variant: str):
    """The shipped weight file ``Q.build(variant)`` reads (``int8`` = the float weights)."""
    base = "float" if variant == "int8" else variant
    return V.WEIGHTS_DIR / f"{base}.npz"


def captured_calls(variant: str, images=IMAGES) -> list[dict]:
    """Every unit call of the given test images (indices into the shipped subset) in the
    integer model of ``variant`` built from its shipped weights, in call order."""
    subset, _ = fmnist.load_subset()
    images = list(images)
    model = Q.build(variant)
    capture = {"images": set(range(len(images))), "calls": []}
    model.forward(subset[images], capture=capture)
    for call in capture["calls"]:
        call["variant"] = variant
        call["image"] = images[call["image"]]        # position in the batch -> subset index
    return capture["calls"]


def call_seed(call: dict) -> int:
    """A stall seed of its own for each call (unit, block, image)."""
    return 1000 * call["image"] + 10 * call["block"] + UNIT_ORDER.index(call["unit"]) + 1


def label(call: dict) -> str:
    return f"{call['variant']}/{call['unit']} block {call['block']} image {call['image']}"


def run_call(call: dict, seed: int | None = None, simulator: str = "verilator") -> dict:
    """Replay one captured call through the unit's golden model and its RTL (random stalls on
    every stream, seeded by ``seed``, default :func:`call_seed`). Returns ``golden_problems``
    (captured outputs vs golden), ``rtl_problems`` (golden vs RTL), ``stats`` and the wall
    ``seconds`` of the simulation (Verilog generation, a build if not cached, the run)."""
    u = units.get(call["unit"])
    cfg, inputs = call["config"], call["inputs"]
    want = u.golden(cfg, **inputs)
    golden_problems = u.compare(call["outputs"], want)
    t0 = time.monotonic()
    got, stats = u.simulate(cfg, **inputs, simulator=simulator,
                            stalls=call_seed(call) if seed is None else seed)
    seconds = time.monotonic() - t0
    return {"golden_problems": golden_problems, "rtl_problems": u.compare(want, got),
            "stats": stats, "seconds": seconds}


def check_call(call: dict, seed: int | None = None) -> dict:
    res = run_call(call, seed)
    print(f"\n{label(call)}: {res['stats']['cycles']} cycles (stalled), "
          f"{res['seconds']:.1f} s wall", flush=True)
    assert res["golden_problems"] == [], \
        f"{label(call)}: the model's outputs are not the unit's golden model: " \
        f"{res['golden_problems']}"
    assert res["rtl_problems"] == [], f"{label(call)}: RTL != golden: {res['rtl_problems']}"
    assert res["stats"].get("error_flag", 0) == 0, f"{label(call)}: error flag raised"
    return res


# --- shared per session -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def calls():
    """``calls(variant)`` -> the captured calls of test images 0 and 1 of that variant's model,
    built once per module; skips when the variant's shipped weights are absent."""
    cache = {}

    def get(variant):
        path = weights_file(variant)
        if not path.is_file():
            pytest.skip(f"shipped weights {path} are missing (make train)")
        if variant not in cache:
            cache[variant] = captured_calls(variant)
        return cache[variant]
    return get


def image0(calls, unit):
    return [c for c in calls if c["image"] == 0 and c["unit"] == unit]


# --- choosing a non-trivial call ----------------------------------------------------------------

def vitcod_hardware(cfg) -> dict:
    """The fields of a vitcod Config that shape its hardware (the scales are run-time)."""
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)
            if not f.name.endswith("_scale")}


def pick_vitcod_block(call_list) -> int:
    """The first block whose every head gives both engines work (global columns for the Denser,
    sparse entries for the Sparser), else the one with the most sparse entries."""
    def work(c):
        heads = units.get("vitcod").compile_heads(c["config"], c["inputs"]["mask"])
        return min(min(cm.g, cm.nnz) for cm in heads), sum(cm.nnz for cm in heads)
    scored = [(work(c), c["block"]) for c in call_list]
    both = [b for (w, _), b in scored if w > 0]
    return both[0] if both else max(scored)[1]


def pick_vitality(call_list):
    """A block with clamped Taylor denominators if any, else the first."""
    clamped = [c for c in call_list if c["outputs"]["denominator_clamped"].any()]
    return (clamped or call_list)[0]


def pick_fact(call_list):
    """The block whose outputs are the least uniform: one-hot rows, skipped K/V columns and
    high-precision tokens each both present and absent if possible."""
    def mixed(c):
        o = c["outputs"]
        return sum(bool(a.any() and not a.all())
                   for a in (o["onehot"], o["keep_kv"], o["high_precision"]))
    return max(call_list, key=lambda c: (mixed(c), -c["block"]))


def pick_heatvit(call_list):
    """The selector stage that both keeps and drops the most tokens."""
    def mixed(c):
        keep = c["outputs"]["keep"]
        return min(int(keep.sum()), int((~keep).sum()))
    return max(call_list, key=lambda c: (mixed(c), -c["block"]))


# --- fast set: one call per unit ----------------------------------------------------------------

def test_vitcod_fixed_mask_call(calls):
    vc = image0(calls("vitcod"), "vitcod")
    call = next(c for c in vc if c["block"] == pick_vitcod_block(vc))
    assert call["inputs"]["mask"].any(), "the vitcod model's mask prunes nothing"
    assert call["inputs"]["q"].shape == (2, 50, 32)
    check_call(call)


def test_vitcod_dense_call_of_the_int8_model(calls):
    """The int8 model's attention (every key kept) on the same build as the masked call."""
    dense = image0(calls("int8"), "vitcod")
    block = 0
    if weights_file("vitcod").is_file():
        masked = image0(calls("vitcod"), "vitcod")
        if vitcod_hardware(dense[0]["config"]) != vitcod_hardware(masked[0]["config"]):
            pytest.skip("the int8 and vitcod models' vitcod Configs differ in hardware fields "
                        "(a second Verilator build): covered by the slow test only")
        block = pick_vitcod_block(masked)
    call = next(c for c in dense if c["block"] == block)
    assert not call["inputs"]["mask"].any()
    check_call(call)


def test_vitality_call(calls):
    call = pick_vitality(image0(calls("vitality"), "vitality"))
    assert call["inputs"]["q"].shape == (2, 50, 32)
    check_call(call)


def test_fact_predictor_call(calls):
    call = pick_fact(image0(calls("fact"), "fact"))
    assert call["inputs"]["x"].shape == (50, 64) and call["inputs"]["wq"].shape == (64, 64)
    check_call(call)


def test_heatvit_selector_call(calls):
    call = pick_heatvit(image0(calls("heatvit"), "heatvit"))
    keep = call["outputs"]["keep"]
    assert keep.any() and not keep.all(), \
        f"no selector stage of test image 0 both keeps and drops tokens (keep {keep.tolist()})"
    check_call(call)


# --- slow set: every call of test images 0 and 1 ------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("variant", VARIANTS)
def test_every_captured_call(calls, variant):
    """Every unit call of test images 0 and 1 in the ``variant`` model, RTL vs golden; all
    mismatches are collected before failing."""
    problems = []
    for call in calls(variant):
        res = run_call(call)
        print(f"\n{label(call)}: {res['stats']['cycles']} cycles (stalled), "
              f"{res['seconds']:.1f} s wall", flush=True)
        for kind in ("golden_problems", "rtl_problems"):
            problems += [f"{label(call)} ({kind}): {p}" for p in res[kind]]
        if res["stats"].get("error_flag", 0):
            problems.append(f"{label(call)}: error flag raised")
    assert problems == []


def test_captured_vitcod_mask_is_the_models_mask(calls):
    """Cheap consistency check (no simulation): the vitcod model's captured masks are its
    shipped fixed masks, and the int8 model's attention keeps every key."""
    masked = image0(calls("vitcod"), "vitcod")
    _, params = Q.variant_params("vitcod")
    for call in masked:
        np.testing.assert_array_equal(call["inputs"]["mask"], params["mask"][call["block"]])
    assert not any(c["inputs"]["mask"].any() for c in image0(calls("int8"), "vitcod"))
