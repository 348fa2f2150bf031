"""Iterative divider with RHU rounding and saturation, and a reciprocal built on it.

Golden twins: :func:`vitaccel.golden.fixedpoint.div_round` and
:func:`~vitaccel.golden.fixedpoint.reciprocal`, bit for bit.

Arithmetic
----------
``q = floor((2n + d) / (2d))`` is a floor division of ``N = 2n + d`` by ``D = 2d``. For ``N < 0``
the identity ``floor(N / D) = ~(~N // D)`` holds (``~x = -x - 1``), so one unsigned restoring
divider serves both signs with two bitwise inversions and no negation adders.
``d == 0`` skips the iterations and returns the extreme toward the sign of ``n`` with
``div_by_zero`` set, as the golden model defines.

Timing
------
One quotient bit per cycle: ``U = N or ~N`` has ``max(num_width, den_width) + 1`` bits, so a
division takes :attr:`Divider.latency` = ``max(num_width, den_width) + 3`` cycles from the input
handshake to ``o.valid`` (35 for 32/32); the divide-by-zero case takes 2. One division is in flight
at a time; ``i.ready`` is high only when the divider is idle. The critical path is one
``den_width + 2``-bit subtractor and a mux.
"""
from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["Divider", "Reciprocal"]


def _check(owner, name, value, least):
    if not isinstance(value, int) or isinstance(value, bool) or value < least:
        owner._MustUse__used = True      # a rejected construction is not an unused design
        raise ValueError(f"{type(owner).__name__}.{name} must be an integer >= {least}, "
                         f"got {value!r}")


class Divider(wiring.Component):
    """``div_round(numerator, denominator, out_width, signed=out_signed)`` on a stream.

    Parameters
    ----------
    num_width : int
        Width of the signed numerator.
    den_width : int
        Width of the unsigned denominator.
    out_width : int
        Width of the saturated quotient.
    out_signed : bool
        Signed quotient (default); ``False`` saturates to the unsigned range (negative -> 0).

    Ports
    -----
    i : In(stream of StructLayout({"numerator": signed(num_width),
                                   "denominator": unsigned(den_width)}))
    o : Out(stream of StructLayout({"quotient": signed(out_width) (unsigned if not out_signed),
                                    "div_by_zero": 1}))
    busy : Out(1)
        A division is in flight or its result waits for ``o.ready``.
    """

    def __init__(self, num_width: int = 32, den_width: int = 32, out_width: int = 32,
                 out_signed: bool = True):
        _check(self, "num_width", num_width, 1)
        _check(self, "den_width", den_width, 1)
        _check(self, "out_width", out_width, 2 if out_signed else 1)
        self.num_width = num_width
        self.den_width = den_width
        self.out_width = out_width
        self.out_signed = bool(out_signed)
        #: Bits of the dividend ``U`` = quotient bits computed = iterations per division.
        self.iterations = max(num_width, den_width) + 1
        #: Cycles from the input handshake to ``o.valid`` (load + iterations + saturate).
        self.latency = self.iterations + 2
        out_shape = signed(out_width) if out_signed else unsigned(out_width)
        super().__init__({
            "i": In(stream.Signature(data.StructLayout({
                "numerator": signed(num_width), "denominator": unsigned(den_width)}))),
            "o": Out(stream.Signature(data.StructLayout({
                "quotient": out_shape, "div_by_zero": 1}))),
            "busy": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        nw, dw, ow, uw = self.num_width, self.den_width, self.out_width, self.iterations
        if self.out_signed:
            lo, hi = -(1 << (ow - 1)), (1 << (ow - 1)) - 1
        else:
            lo, hi = 0, (1 << ow) - 1

        n = self.i.payload.numerator
        d = self.i.payload.denominator
        big_n = Signal(signed(uw + 1))                 # N = 2n + d
        m.d.comb += big_n.eq(Cat(Const(0, 1), n).as_signed() + d)

        uq = Signal(unsigned(uw))       # dividend U, shifted out at the top while Q shifts in
        rem = Signal(unsigned(dw + 2))  # partial remainder, < 2D <= 2**(dw+2)
        den2 = Signal(unsigned(dw + 1))  # D = 2d
        neg = Signal()                  # N < 0: the quotient is ~Q
        n_neg = Signal()                # sign of n, for the divide-by-zero extreme
        dbz = Signal()
        count = Signal(range(uw))

        # One restoring step: bring down the next dividend bit, subtract D if it fits.
        shifted = Signal(unsigned(dw + 2))
        diff = Signal(signed(dw + 3))
        m.d.comb += [
            shifted.eq(Cat(uq[-1], rem[:dw + 1])),
            diff.eq(shifted - den2),
        ]

        # Saturate the signed quotient (Q or ~Q) into the output range.
        q_signed = Signal(signed(uw + 1))
        m.d.comb += q_signed.eq(Mux(neg, ~Cat(uq, Const(0, 1)).as_signed(), uq))

        m.d.comb += self.busy.eq(~self.i.ready)
        with m.FSM(name="div"):
            with m.State("IDLE"):
                m.d.comb += self.i.ready.eq(1)
                with m.If(self.i.valid):
                    m.d.sync += [
                        uq.eq(Mux(big_n[-1], ~big_n, big_n)),
                        rem.eq(0),
                        den2.eq(Cat(Const(0, 1), d)),
                        neg.eq(big_n[-1]),
                        n_neg.eq(n[-1]),
                        dbz.eq(d == 0),
                        count.eq(uw - 1),
                    ]
                    with m.If(d == 0):
                        m.next = "SATURATE"
                    with m.Else():
                        m.next = "ITERATE"
            with m.State("ITERATE"):
                with m.If(diff >= 0):
                    m.d.sync += [rem.eq(diff), uq.eq(Cat(Const(1, 1), uq[:-1]))]
                with m.Else():
                    m.d.sync += [rem.eq(shifted), uq.eq(Cat(Const(0, 1), uq[:-1]))]
                m.d.sync += count.eq(count - 1)
                with m.If(count == 0):
                    m.next = "SATURATE"
            with m.State("SATURATE"):
                m.d.sync += [self.o.valid.eq(1), self.o.payload.div_by_zero.eq(dbz)]
                with m.If(dbz):
                    m.d.sync += self.o.payload.quotient.eq(Mux(n_neg, lo, hi))
                with m.Elif(q_signed > hi):
                    m.d.sync += self.o.payload.quotient.eq(hi)
                with m.Elif(q_signed < lo):
                    m.d.sync += self.o.payload.quotient.eq(lo)
                with m.Else():
                    m.d.sync += self.o.payload.quotient.eq(q_signed)
                m.next = "OUTPUT"
            with m.State("OUTPUT"):
                with m.If(self.o.ready):
                    m.d.sync += self.o.valid.eq(0)
                    m.next = "IDLE"
        return m


class Reciprocal(wiring.Component):
    """``reciprocal(d, frac_bits, out_width)`` = ``div_round(2**frac_bits, d)``, unsigned.

    A thin wrapper: a :class:`Divider` with the constant numerator ``2**frac_bits`` and an
    unsigned saturating output. ``d == 0`` gives ``2**out_width - 1`` and ``div_by_zero``.

    Ports: ``i`` In(stream of unsigned(den_width)) carrying ``d``; ``o`` Out(stream of
    StructLayout({"value": unsigned(out_width), "div_by_zero": 1})); ``busy`` Out(1).
    Latency: ``max(frac_bits + 2, den_width) + 3`` cycles (:attr:`latency`).
    """

    def __init__(self, frac_bits: int, den_width: int = 32, out_width: int = 32):
        _check(self, "frac_bits", frac_bits, 0)
        _check(self, "den_width", den_width, 1)
        _check(self, "out_width", out_width, 1)
        self.frac_bits = frac_bits
        self.den_width = den_width
        self.out_width = out_width
        # 2**frac_bits is positive in a signed(frac_bits + 2) numerator.
        self._divider = Divider(num_width=frac_bits + 2, den_width=den_width,
                                out_width=out_width, out_signed=False)
        self.latency = self._divider.latency
        super().__init__({
            "i": In(stream.Signature(unsigned(den_width))),
            "o": Out(stream.Signature(data.StructLayout({
                "value": unsigned(out_width), "div_by_zero": 1}))),
            "busy": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.divider = div = self._divider
        m.d.comb += [
            div.i.valid.eq(self.i.valid),
            div.i.payload.numerator.eq(1 << self.frac_bits),
            div.i.payload.denominator.eq(self.i.payload),
            self.i.ready.eq(div.i.ready),
            self.o.valid.eq(div.o.valid),
            self.o.payload.value.eq(div.o.payload.quotient),
            self.o.payload.div_by_zero.eq(div.o.payload.div_by_zero),
            div.o.ready.eq(self.o.ready),
            self.busy.eq(div.busy),
        ]
        return m
