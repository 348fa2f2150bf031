"""Leading-one codes: the log-domain operands of FACT's predictor, and their shift-add products.

``LO_m(a) = (-1)**sign * mant << shift`` (golden twin: :func:`vitaccel.golden.fact.lo_code`), with
``shift = max(floor(log2 |a|) - m, 0)`` and ``mant = |a| >> shift`` (``m + 1`` bits; 0 for a = 0).

A product of two codes is ``(-1)**(sa ^ sb) * (ma * mb) << (sa + sb)``. ``ma * mb`` is at most a
4 x 4-bit product; it is built as a constant table (a LUT ROM), never with ``*``, so synthesis has
no multiplier to map onto a DSP block. With ``m = 0`` the table is just "both non-zero".
"""
from __future__ import annotations

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, unsigned
from amaranth.lib import data

from vitaccel.rtl.common.lod import exponent_width, leading_one

__all__ = ["code_layout", "encode", "encode_magnitude", "sign_magnitude", "product_term",
           "term_width"]


def _shift_width(value_width: int, mantissa_bits: int) -> int:
    """Bits of ``shift`` for a signed ``value_width``-bit value: shift <= value_width - 1 - m."""
    return max(1, max(value_width - 1 - mantissa_bits, 0).bit_length())


def code_layout(value_width: int, mantissa_bits: int) -> data.StructLayout:
    """Code of a signed ``value_width``-bit integer: ``mant`` (m+1 bits), ``shift``, ``sign``."""
    return data.StructLayout({
        "mant": unsigned(mantissa_bits + 1),
        "shift": unsigned(_shift_width(value_width, mantissa_bits)),
        "sign": unsigned(1),
    })


def encode(m: Module, value, mantissa_bits: int, *, name: str):
    """Combinational LO code of the signed ``value`` (a LOD tree on its magnitude).

    Returns a ``data.View`` of :func:`code_layout`. ``-2**(w-1)`` is exact (its magnitude is kept
    in ``w`` unsigned bits).
    """
    sign, magnitude = sign_magnitude(m, value, name=name)
    return encode_magnitude(m, sign, magnitude, mantissa_bits, name=name)


def sign_magnitude(m: Module, value, *, name: str):
    """``(sign, magnitude)`` of the signed ``value``, the magnitude in ``len(value)`` unsigned
    bits (exact for ``-2**(w-1)``): the negation :func:`encode` starts with, for a caller that
    registers it before :func:`encode_magnitude`."""
    magnitude = Signal(unsigned(len(value)), name=f"{name}_mag")
    m.d.comb += magnitude.eq(Mux(value[-1], -value, value))
    return value[-1], magnitude


def encode_magnitude(m: Module, sign, magnitude, mantissa_bits: int, *, name: str):
    """Combinational LO code of ``(-1)**sign * magnitude`` (``magnitude`` unsigned, its width
    that of the signed value it came from)."""
    width = len(magnitude)
    code = Signal(code_layout(width, mantissa_bits), name=name)
    exponent, zero = leading_one(m, magnitude, name=f"{name}_lod")
    shift = Signal(unsigned(exponent_width(width) + 1), name=f"{name}_shift")
    m.d.comb += shift.eq(Mux(exponent > mantissa_bits, exponent - mantissa_bits, 0))
    m.d.comb += [
        code.sign.eq(sign),
        code.shift.eq(shift),
        code.mant.eq(Mux(zero, 0, (magnitude >> shift)[:mantissa_bits + 1])),
    ]
    return code


def term_width(width_a: int, width_b: int) -> int:
    """Signed width of one product of LO codes of signed ``width_a``- and ``width_b``-bit values
    (``(-2**(wa-1)) * (-2**(wb-1))`` needs ``wa + wb`` bits)."""
    return width_a + width_b


def product_term(m: Module, a, b, mantissa_bits: int, width: int, *, name: str):
    """Combinational product of two codes (views of :func:`code_layout`) as ``(sign, magnitude)``:
    ``magnitude`` is ``width - 1`` bits, ``(-1)**sign * magnitude`` the signed product. The caller
    registers between this and the negation (:class:`~vitaccel.rtl.fact.dot.LODotEngine` does),
    so the shifter and the wide negate sit in different pipeline stages."""
    mb = mantissa_bits + 1
    mant_product = Signal(unsigned(2 * mb), name=f"{name}_mp")
    if mb == 1:
        m.d.comb += mant_product.eq(a.mant & b.mant)        # 1 x 1 bit: "both non-zero"
    else:
        table = Array(Const(i * j, unsigned(2 * mb)) for i in range(1 << mb) for j in range(1 << mb))
        m.d.comb += mant_product.eq(table[Cat(b.mant, a.mant)])
    magnitude = Signal(unsigned(width - 1), name=f"{name}_mag")
    m.d.comb += magnitude.eq(mant_product << (a.shift + b.shift))
    sign = Signal(name=f"{name}_sign")
    m.d.comb += sign.eq(a.sign ^ b.sign)
    return sign, magnitude
