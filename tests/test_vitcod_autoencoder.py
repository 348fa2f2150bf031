"""ViTCoD Q/K auto-encoder engine (rtl/vitcod/autoencoder.py) == golden.autoencode, bit for bit,
under random stalls; extreme weights and biases saturate the same way."""
import numpy as np
import pytest

from vitaccel import units
from vitaccel.golden import vitcod as gv
from vitaccel.rtl.vitcod.autoencoder import AutoEncoder

u = units.get("vitcod")


def weights(rng, h, extreme=False):
    hh = gv.ae_hidden(h)
    if extreme:
        return {"enc_w": np.full((hh, h), -128), "enc_b": np.full(hh, 2**31 - 1),
                "dec_w": np.full((h, hh), 127), "dec_b": np.full(h, -2**31)}
    return {"enc_w": rng.integers(-128, 128, (hh, h)), "enc_b": rng.integers(-2**16, 2**16, hh),
            "dec_w": rng.integers(-128, 128, (h, hh)), "dec_b": rng.integers(-2**16, 2**16, h)}


@pytest.mark.parametrize("h,extreme", [(3, False), (6, False), (12, False), (1, False),
                                       (3, True)])
def test_autoencoder_matches_golden_with_stalls(h, extreme):
    rng = np.random.default_rng(h)
    cfg = u.Config(ae_enc_scale=1 / 300, ae_dec_scale=1 / 120)
    ae = weights(rng, h, extreme)
    x = rng.integers(-128, 128, (h, 6, 5))
    want = gv.autoencode(x, ae, *u._ae_requants(cfg))
    got, cycles = u.simulate_autoencoder(cfg, x, ae, simulator="amaranth", stalls=h + 1)
    assert np.array_equal(got, want)
    assert cycles >= 30                      # one vector per cycle at best


def test_autoencoder_parameters_are_checked():
    with pytest.raises(ValueError, match="heads"):
        AutoEncoder(0)
    from amaranth.hdl import Fragment
    for h, hidden in ((12, 6), (3, 2)):
        engine = AutoEncoder(h)
        Fragment.get(engine, None)           # elaborates (and marks it used)
        assert engine.hidden == hidden
