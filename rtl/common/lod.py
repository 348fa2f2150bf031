"""Leading-one detectors (combinational): the position of the highest set bit.

Golden twins: :func:`vitaccel.golden.fixedpoint.leading_one` (unsigned) and
:func:`~vitaccel.golden.fixedpoint.leading_one_signed` (sign + magnitude), bit for bit.

Wide inputs are built as a tree rather than one flat priority chain: leaves of at most
``LEAF_WIDTH`` bits are small priority encoders, and two children combine as

    lower child of width 2**k, upper child of width <= 2**k:
    zero     = zero_hi & zero_lo
    exponent = Cat(Mux(zero_hi, exp_lo, exp_hi), ~zero_hi)      (bit k says "the upper half won")

so each level adds one 2:1 mux and one AND: depth grows with log2(width) and no adder is needed
(the lower child's width is a power of two, so the offset is just the new top bit).
"""
from __future__ import annotations

from amaranth.hdl import Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

__all__ = ["LeadingOneDetector", "SignedLOD", "exponent_width", "leading_one", "LEAF_WIDTH"]

#: Largest leaf of the tree; 4 inputs map to one LUT4 per output bit on ECP5/iCE40.
LEAF_WIDTH = 4


def exponent_width(width: int) -> int:
    """Bits of the exponent of a ``width``-bit input: ceil(log2(width)), at least 1."""
    return max(1, (width - 1).bit_length())


def leading_one(m: Module, value, *, name: str = "lod"):
    """Add a leading-one tree for the unsigned ``value`` to ``m``.

    Returns ``(exponent, zero)`` signals: ``exponent = floor(log2 value)`` (0 when zero),
    ``exponent_width(len(value))`` bits wide. For use inside other blocks without a sub-component.
    """
    exp, zero = _tree(m, value, name)
    width = exponent_width(len(value))
    exponent = Signal(unsigned(width), name=f"{name}_exponent")
    is_zero = Signal(name=f"{name}_zero")
    m.d.comb += [exponent.eq(exp), is_zero.eq(zero)]
    return exponent, is_zero


def _tree(m, value, name):
    width = len(value)
    if width <= LEAF_WIDTH:
        exp = Signal(unsigned(exponent_width(width)), name=f"{name}_leaf")
        # Priority encoder: later (higher) bits override earlier assignments.
        for bit in range(1, width):
            with m.If(value[bit]):
                m.d.comb += exp.eq(bit)
        return exp, ~value.any()
    lo_width = 1 << ((width - 1).bit_length() - 1)     # largest power of two below width
    exp_lo, zero_lo = _tree(m, value[:lo_width], name + "_l")
    exp_hi, zero_hi = _tree(m, value[lo_width:], name + "_h")
    k = lo_width.bit_length() - 1
    exp = Signal(unsigned(k + 1), name=f"{name}_exp")
    zero = Signal(name=f"{name}_zero")
    m.d.comb += [
        exp.eq(Cat(Mux(zero_hi, exp_lo, exp_hi)[:k], ~zero_hi)),
        zero.eq(zero_hi & zero_lo),
    ]
    return exp, zero


class LeadingOneDetector(wiring.Component):
    """Combinational LOD of an unsigned ``width``-bit ``value``.

    Ports: ``value`` In(unsigned(width)); ``exponent`` Out(unsigned(exponent_width(width))) =
    floor(log2 value); ``zero`` Out(1) when value == 0 (exponent is then 0). Latency 0.
    """

    def __init__(self, width: int):
        if not isinstance(width, int) or width < 1:
            self._MustUse__used = True     # a rejected construction is not an unused design
            raise ValueError(f"LeadingOneDetector.width must be an integer >= 1, got {width!r}")
        self.width = width
        super().__init__({
            "value": In(unsigned(width)),
            "exponent": Out(unsigned(exponent_width(width))),
            "zero": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        exp, zero = leading_one(m, self.value)
        m.d.comb += [self.exponent.eq(exp), self.zero.eq(zero)]
        return m


class SignedLOD(wiring.Component):
    """Combinational LOD of the magnitude of a signed ``width``-bit ``value``.

    Ports: ``value`` In(signed(width)); ``sign`` Out(1) (value < 0); ``exponent``
    Out(unsigned(exponent_width(width))) = floor(log2 |value|); ``zero`` Out(1). The magnitude is
    taken in ``width`` unsigned bits, so ``-2**(width-1)`` gives exponent ``width - 1``.
    Latency 0 (one negation adder in front of the tree).
    """

    def __init__(self, width: int):
        if not isinstance(width, int) or width < 1:
            self._MustUse__used = True
            raise ValueError(f"SignedLOD.width must be an integer >= 1, got {width!r}")
        self.width = width
        super().__init__({
            "value": In(signed(width)),
            "sign": Out(1),
            "exponent": Out(unsigned(exponent_width(width))),
            "zero": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        v = self.value
        magnitude = Signal(unsigned(self.width))
        # -v of a signed(w) is w+1 bits; keeping w unsigned bits is exact for every |v| <= 2**(w-1).
        m.d.comb += magnitude.eq(Mux(v[-1], -v, v))
        exp, zero = leading_one(m, magnitude)
        m.d.comb += [self.sign.eq(v[-1]), self.exponent.eq(exp), self.zero.eq(zero)]
        return m
