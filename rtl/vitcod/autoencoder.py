"""ViTCoD's Q/K auto-encoder engine: compress across heads (h -> ceil(h/2)) and restore (-> h).

Golden twin: :func:`vitaccel.golden.vitcod.autoencode`, bit for bit.

One beat on ``i`` is the head vector ``x[0..h-1]`` of one (token, feature); one beat on ``o`` is
the restored vector. Encoder ``z = requantize(enc_w @ x + enc_b, enc)`` and decoder
``y = requantize(dec_w @ z + dec_b, dec)``, int8 weights and int32 biases held on plain input
ports (static during a run, as the weights of a layer are). The encoder and the decoder are
each a row of ``h' x h`` (``h x h'``) multipliers feeding a shared
:class:`~vitaccel.rtl.common.requant.Requantizer`, so the engine takes one vector per cycle;
the two requantisers are the only pipeline registers (latency 2 x ``Requantizer.LATENCY`` = 10
cycles) and carry the stream's back-pressure.
"""
from __future__ import annotations

from amaranth.hdl import Module, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from vitaccel.rtl.common.requant import SHIFT_WIDTH, Requantizer

__all__ = ["AutoEncoder"]


class AutoEncoder(wiring.Component):
    """Auto-encoder across ``heads`` (see the module docstring).

    Ports: ``i``/``o`` streams of ``ArrayLayout(signed(8), heads)``; ``enc_w``
    (``ArrayLayout(signed(8), hidden * heads)``, row-major), ``enc_b`` (``hidden`` x int32),
    ``dec_w`` (``heads * hidden``), ``dec_b`` (``heads`` x int32), ``enc_multiplier``/
    ``enc_shift`` and ``dec_multiplier``/``dec_shift`` (from ``quantize_multiplier``).
    """

    def __init__(self, heads: int):
        if isinstance(heads, bool) or not isinstance(heads, int) or not 1 <= heads <= 32:
            self._MustUse__used = True
            raise ValueError(f"AutoEncoder.heads must be an integer in [1, 32], got {heads!r}")
        self.heads = heads
        self.hidden = -(-heads // 2)
        h, hh = heads, self.hidden
        super().__init__({
            "i": In(stream.Signature(data.ArrayLayout(signed(8), h))),
            "o": Out(stream.Signature(data.ArrayLayout(signed(8), h))),
            "enc_w": In(data.ArrayLayout(signed(8), hh * h)),
            "enc_b": In(data.ArrayLayout(signed(32), hh)),
            "dec_w": In(data.ArrayLayout(signed(8), h * hh)),
            "dec_b": In(data.ArrayLayout(signed(32), h)),
            "enc_multiplier": In(16),
            "enc_shift": In(SHIFT_WIDTH),
            "dec_multiplier": In(16),
            "dec_shift": In(SHIFT_WIDTH),
        })

    def elaborate(self, platform):
        m = Module()
        h, hh = self.heads, self.hidden
        # |sum| <= h * 128 * 128 + 2**31: 34 bits hold every encoder/decoder accumulator
        acc_width = 34
        m.submodules.encoder_requant = enc = Requantizer(lanes=hh, in_width=acc_width,
                                                         out_width=8)
        m.submodules.decoder_requant = dec = Requantizer(lanes=h, in_width=acc_width,
                                                         out_width=8)
        m.d.comb += [enc.multiplier.eq(self.enc_multiplier), enc.shift.eq(self.enc_shift),
                     dec.multiplier.eq(self.dec_multiplier), dec.shift.eq(self.dec_shift)]
        def linear(out, weights, bias, inputs, n_out, n_in):
            """out[o] = bias[o] + sum_k weights[o * n_in + k] * inputs[k] (row-major weights)."""
            for o in range(n_out):
                total = bias[o]
                for k in range(n_in):
                    total = total + weights[o * n_in + k] * inputs[k]
                m.d.comb += out[o].eq(total)

        # encoder: i -> enc
        m.d.comb += [enc.i.valid.eq(self.i.valid), self.i.ready.eq(enc.i.ready)]
        linear(enc.i.payload, self.enc_w, self.enc_b, self.i.payload, hh, h)
        # decoder: enc -> dec
        m.d.comb += [dec.i.valid.eq(enc.o.valid), enc.o.ready.eq(dec.i.ready)]
        linear(dec.i.payload, self.dec_w, self.dec_b, enc.o.payload, h, hh)
        wiring.connect(m, dec.o, wiring.flipped(self.o))
        return m
