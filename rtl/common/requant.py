"""Requantiser: ``saturate(rshift_round(acc * multiplier, shift), out_width)`` on a lane vector.

Golden twin: :func:`vitaccel.golden.fixedpoint.requantize` (RHU rounding, saturation), bit for bit.

Pipeline (latency 5 cycles from an accepted input beat to the output beat, throughput one beat per
cycle while the sink is ready)::

    S0  register the lanes together with ``multiplier`` and ``shift``   (DSP input registers)
    S1  partial products acc[17j : 17j+17] * multiplier                  (DSP output registers)
    S2  p = sum_j partial_j << 17j                                       (carry chain only)
    S3  t = (p << 1) >>> shift        = floor(p / 2**(shift-1))           (barrel shifter only)
    S4  r = (t + 1) >> 1 and saturate = floor((p + 2**(shift-1)) / 2**shift)

S1/S2 split the product at the 18x18 multiplier's width: a 32-bit accumulator times a 16-bit
multiplier needs two multiplier blocks and an adder, and doing all of it in one cycle was the
critical path of the HeatViT selector on the ULX3S (17 ns). Each partial product now fits one
block (the low chunks as unsigned 17-bit operands, the top chunk signed) and the adder gets a
stage of its own.

S4 does not need a full-width adder: the saturation test is done on ``t`` directly
(``r > hi  <=>  t >= 2*hi + 1`` and ``r < lo  <=>  t <= 2*lo - 2``), and when neither holds the
result fits ``out_width`` bits, so only the low ``out_width + 1`` bits of ``t`` are incremented.

Flow control is one enable for the whole pipe, ``en = ~o.valid | o.ready``: every stage advances
when the output register is empty or being emptied. ``valid`` is a register and never depends on
``ready``; ``i.ready`` is ``en`` (a combinational path from ``o.ready``, which is allowed).
``multiplier`` and ``shift`` are sampled with each beat in S0, so they may change between beats.
"""
from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["Requantizer", "SHIFT_WIDTH", "split_product"]

#: Width of the ``shift`` port: shifts 0..63, as :data:`fixedpoint.MAX_SHIFT`.
SHIFT_WIDTH = 6
#: Bits of the signed operand per partial product (unsigned 17 bits fit an 18x18 signed multiplier).
PRODUCT_CHUNK = 17


def split_product(m, a, b, width, name):
    """``a * b`` (``a`` signed, ``b`` unsigned) over two registered stages: the partial products
    of :data:`PRODUCT_CHUNK`-bit pieces of ``a`` (one 18x18 multiplier block each; the low pieces
    unsigned, the top one signed), then their sum on a carry chain of its own. The statements
    go to ``m.d.sync`` under the caller's control flow (so its enable applies); returns the
    product register (``signed(width)``), which holds ``a * b`` two enabled cycles later."""
    aw = len(a)
    parts = []
    for j, lo in enumerate(range(0, aw, PRODUCT_CHUNK)):
        hi = min(lo + PRODUCT_CHUNK, aw)
        piece = a[lo:hi].as_signed() if hi == aw else a[lo:hi]
        part = Signal(signed(hi - lo + len(b) + 1), name=f"{name}_part{j}")
        m.d.sync += part.eq(piece * b)          # signed x unsigned: Amaranth widens, exact
        parts.append((lo, part))
    product = Signal(signed(width), name=name)
    m.d.sync += product.eq(sum(part << lo for lo, part in parts))
    return product


class Requantizer(wiring.Component):
    """Per-lane requantisation of signed accumulators to signed ``out_width`` integers.

    Parameters
    ----------
    lanes : int
        Number of lanes in one beat (all share ``multiplier`` and ``shift``).
    in_width, out_width : int
        Signed widths of the accumulators and of the results.
    multiplier_bits : int
        Width of the unsigned ``multiplier`` (``fixedpoint.MULTIPLIER_BITS`` by default).

    Ports
    -----
    i : In(stream of ArrayLayout(signed(in_width), lanes))
    o : Out(stream of ArrayLayout(signed(out_width), lanes))
    multiplier : In(unsigned(multiplier_bits)), shift : In(unsigned(6))
        From :func:`fixedpoint.quantize_multiplier`; sampled with every accepted beat.
    """

    LATENCY = 5

    def __init__(self, lanes: int, in_width: int = 32, out_width: int = 8,
                 multiplier_bits: int = 16):
        for name, value, least in (("lanes", lanes, 1), ("in_width", in_width, 1),
                                   ("out_width", out_width, 2),
                                   ("multiplier_bits", multiplier_bits, 1)):
            if not isinstance(value, int) or value < least:
                self._MustUse__used = True     # a rejected construction is not an unused design
                raise ValueError(f"Requantizer.{name} must be an integer >= {least}, got {value!r}")
        self.lanes = lanes
        self.in_width = in_width
        self.out_width = out_width
        self.multiplier_bits = multiplier_bits
        super().__init__({
            "i": In(stream.Signature(data.ArrayLayout(signed(in_width), lanes))),
            "o": Out(stream.Signature(data.ArrayLayout(signed(out_width), lanes))),
            "multiplier": In(unsigned(multiplier_bits)),
            "shift": In(unsigned(SHIFT_WIDTH)),
        })

    def elaborate(self, platform):
        m = Module()
        lanes, iw, ow, mb = self.lanes, self.in_width, self.out_width, self.multiplier_bits
        pw = iw + mb                      # signed x unsigned product fits iw + mb signed bits
        lo, hi = -(1 << (ow - 1)), (1 << (ow - 1)) - 1

        en = Signal()
        m.d.comb += [en.eq(~self.o.valid | self.o.ready), self.i.ready.eq(en)]

        # S0: inputs and their parameters
        v0 = Signal()
        acc0 = [Signal(signed(iw), name=f"acc0_{k}") for k in range(lanes)]
        mul0 = Signal(unsigned(mb))
        sh0 = Signal(unsigned(SHIFT_WIDTH))
        # S1, S2: partial products, then the full product (split_product)
        v1, v2 = Signal(), Signal()
        sh1, sh2 = Signal(unsigned(SHIFT_WIDTH)), Signal(unsigned(SHIFT_WIDTH))
        # S3: t = floor(p / 2**(shift-1)), one more bit than p for the doubling
        v3 = Signal()
        t3 = [Signal(signed(pw + 1), name=f"t3_{k}") for k in range(lanes)]

        with m.If(en):
            m.d.sync += [
                v0.eq(self.i.valid),
                mul0.eq(self.multiplier),
                sh0.eq(self.shift),
                v1.eq(v0),
                sh1.eq(sh0),
                v2.eq(v1),
                sh2.eq(sh1),
                v3.eq(v2),
                self.o.valid.eq(v3),
            ]
            for k in range(lanes):
                m.d.sync += acc0[k].eq(self.i.payload[k])
                prod2 = split_product(m, acc0[k], mul0, pw, name=f"prod2_{k}")
                # ``>>`` on a signed value is arithmetic, i.e. a floor division by 2**shift.
                m.d.sync += t3[k].eq(Cat(Const(0, 1), prod2).as_signed() >> sh2)
                t = t3[k]
                rounded = Signal(unsigned(ow + 1), name=f"rounded_{k}")
                m.d.comb += rounded.eq(t[:ow + 1] + 1)
                m.d.sync += self.o.payload[k].eq(
                    Mux(t >= 2 * hi + 1, hi,
                        Mux(t <= 2 * lo - 2, lo, rounded[1:].as_signed())))
        return m
