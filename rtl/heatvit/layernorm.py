"""Per-head integer LayerNorm and its inverse-square-root unit.

Golden twin: ``golden.heatvit.layernorm_q`` (and ``isqrt`` / ``inv_sqrt``), bit for bit. For each
group of ``d`` int8 values (one head of one token)::

    s = sum x, q = sum x^2, v = d*q - s^2 + eps_int           (d^2 * variance + eps, exact)
    r = isqrt(div_round(2^(2 LN_R), v))                        (shared Reciprocal, then ISqrt)
    y_j = sat8(rhu((d*x_j - s) * r, LN_R - LN_Y))              (shared Requantizer, multiplier r)

The LayerNorm affine (gamma, beta) is folded into the next Linear layer by the weight converter,
so the hardware only normalises. ``d`` is a power of two, so ``d*q`` and ``d*x_j`` are shifts.
Three stages overlap on consecutive groups: A accumulates ``s``, ``q`` while writing the group
into a slot of a ``4 d``-entry buffer (asynchronous read port: distributed RAM, 256 bytes for
DeiT); B runs the reciprocal (``2*LN_R + 5`` cycles) and the square root (``LN_R + 3``); C reads the
slot back for the normalisation pass, one value per cycle. A group is in at most one stage at a
time and each stage hands over when the next is free, so at most three slots are live. Unstalled,
a group costs ``max(d + 1, 3*LN_R + 10)`` cycles instead of their sum (DeiT, d = 64: about 76
instead of about 205).
"""
from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from vitaccel.golden.heatvit import LN_R, LN_Y
from vitaccel.rtl.common.divider import Reciprocal
from vitaccel.rtl.common.requant import Requantizer

__all__ = ["ISqrt", "LayerNorm"]

GROUPS = 4      # group slots in the buffer (3 are in use at most; 4 keeps the address a Cat)


class ISqrt(wiring.Component):
    """``floor(sqrt(x))`` of an unsigned ``width``-bit stream value, two radicand bits per cycle.

    Restoring digit recurrence: ``rem = 4 rem + next two bits``; ``trial = 4 root + 1``; if
    ``rem >= trial`` subtract and shift a 1 into the root, else shift a 0. ``ceil(width / 2)``
    iterations; one root in flight; ``latency = iterations + 2`` cycles from handshake to valid.
    """

    def __init__(self, width: int):
        if not isinstance(width, int) or width < 2:
            self._MustUse__used = True
            raise ValueError(f"ISqrt.width must be an integer >= 2, got {width!r}")
        self.width = width + (width & 1)        # pad to whole bit pairs
        self.iterations = self.width // 2
        self.latency = self.iterations + 2
        super().__init__({
            "i": In(stream.Signature(unsigned(width))),
            "o": Out(stream.Signature(unsigned(self.iterations))),
        })

    def elaborate(self, platform):
        m = Module()
        w, n = self.width, self.iterations
        rad = Signal(unsigned(w))
        rem = Signal(unsigned(n + 2))
        root = Signal(unsigned(n))
        count = Signal(range(n))
        rem4 = Signal(unsigned(n + 4))
        trial = Signal(unsigned(n + 2))
        diff = Signal(signed(n + 5))
        m.d.comb += [
            rem4.eq(Cat(rad[w - 2:], rem)),
            trial.eq(Cat(Const(1, 2), root)),
            diff.eq(rem4 - trial),
        ]
        with m.FSM(name="isqrt"):
            with m.State("IDLE"):
                m.d.comb += self.i.ready.eq(1)
                with m.If(self.i.valid):
                    m.d.sync += [rad.eq(self.i.payload), rem.eq(0), root.eq(0), count.eq(n - 1)]
                    m.next = "ITERATE"
            with m.State("ITERATE"):
                m.d.sync += [rad.eq(rad << 2), count.eq(count - 1)]
                with m.If(diff >= 0):
                    m.d.sync += [rem.eq(diff), root.eq(Cat(Const(1, 1), root))]
                with m.Else():
                    m.d.sync += [rem.eq(rem4), root.eq(Cat(Const(0, 1), root))]
                with m.If(count == 0):
                    m.next = "DONE"
            with m.State("DONE"):
                m.d.comb += [self.o.valid.eq(1), self.o.payload.eq(root)]
                with m.If(self.o.ready):
                    m.next = "IDLE"
        return m


def square_int8(x):
    """``x * x`` of a signed 8-bit value as a sum of shifted copies of ``|x|`` (<= 128): no
    multiplier block. 16 bits unsigned."""
    mag = Mux(x < 0, -x, x)[:8]
    total = 0
    for i in range(8):
        total = total + Mux(mag[i], mag << i, 0)
    return total[:16]


class LayerNorm(wiring.Component):
    """Integer LayerNorm over groups of ``d`` int8 beats.

    Ports: ``i`` In(stream of signed(8)), ``d`` beats per group; ``o`` Out(stream of signed(8)),
    ``d`` normalised beats per group (Q``LN_Y``); ``sums`` Out(stream of signed), one beat per group
    carrying ``s`` (the head mean for the importance branch is ``rhu(s, log2 d)``); ``eps`` In:
    ``eps_int`` (held).
    """

    def __init__(self, d: int, eps_width: int = 24):
        if not isinstance(d, int) or d < 2 or d & (d - 1):
            self._MustUse__used = True
            raise ValueError(f"LayerNorm.d must be a power of two >= 2, got {d!r}")
        self.d = d
        self.log2_d = d.bit_length() - 1
        self.sum_width = 8 + self.log2_d + 1
        self.v_width = max(2 * self.sum_width, 2 * 8 + 2 * self.log2_d, eps_width) + 1
        self._recip = Reciprocal(frac_bits=2 * LN_R, den_width=self.v_width, out_width=2 * LN_R + 1)
        self._isqrt = ISqrt(2 * LN_R + 1)
        self._rq = Requantizer(1, in_width=8 + self.log2_d + 2, out_width=8,
                               multiplier_bits=LN_R + 1)
        super().__init__({
            "i": In(stream.Signature(signed(8))),
            "o": Out(stream.Signature(signed(8))),
            "sums": Out(stream.Signature(signed(self.sum_width))),
            "eps": In(unsigned(eps_width)),
        })

    def elaborate(self, platform):
        m = Module()
        d, lg = self.d, self.log2_d
        m.submodules.recip = recip = self._recip
        m.submodules.isqrt = isqrt = self._isqrt
        m.submodules.rq = rq = self._rq
        # GROUPS slots of d values: one filling, one waiting for its root, one normalising
        m.submodules.buf = buf = Memory(shape=signed(8), depth=GROUPS * d, init=[])
        wr = buf.write_port()
        rd = buf.read_port(domain="comb")

        # stage A: accumulate a group into slot a_slot
        a_idx = Signal(range(d))
        a_slot = Signal(range(GROUPS))
        a_s = Signal(signed(self.sum_width))
        a_q = Signal(unsigned(2 * 8 + lg))
        a_full = Signal()                  # a whole group waits for stage B
        # stage B: v -> reciprocal -> root
        b_busy = Signal()
        b_slot = Signal(range(GROUPS))
        b_s = Signal(signed(self.sum_width))
        b_q = Signal(unsigned(2 * 8 + lg))
        b_ssq = Signal(unsigned(2 * self.sum_width))
        b_r = Signal(unsigned(LN_R + 1))
        b_done = Signal()                  # b_r is the root of the group in b_slot
        # stage C: normalise slot c_slot
        c_busy = Signal()
        c_slot = Signal(range(GROUPS))
        c_idx = Signal(range(d))
        c_s = Signal(signed(self.sum_width))
        c_r = Signal(unsigned(LN_R + 1))

        m.d.comb += [
            wr.addr.eq(Cat(a_idx, a_slot)), wr.data.eq(self.i.payload),
            rd.addr.eq(Cat(c_idx, c_slot)),
            # recip -> isqrt: the root is r
            isqrt.i.valid.eq(recip.o.valid), isqrt.i.payload.eq(recip.o.payload.value),
            recip.o.ready.eq(isqrt.i.ready),
            # the normalisation pass: (d*x - s) * r, rounded by the shared requantiser
            rq.multiplier.eq(c_r), rq.shift.eq(LN_R - LN_Y),
            rq.i.payload[0].eq((rd.data << lg) - c_s),
            self.o.valid.eq(rq.o.valid), self.o.payload.eq(rq.o.payload[0]),
            rq.o.ready.eq(self.o.ready),
        ]
        with m.If(self.sums.ready):
            m.d.sync += self.sums.valid.eq(0)

        # A: a group's sum leaves on `sums` when the group is complete; the next group starts
        # once it has left (it is overwritten) and the finished group has moved on to B
        m.d.comb += self.i.ready.eq(~a_full & ~self.sums.valid)
        # x * x is registered (sq) and added to a_q one cycle later. It is a shift-add of |x| in
        # the fabric: as `x * x` it became a multiplier block, placed far from the
        # accumulator, and input route + multiplier + route back + add was the HeatViT ULX3S
        # critical path (14 ns).
        sq = Signal(unsigned(16))
        sq_v = Signal()
        m.d.sync += sq_v.eq(0)
        with m.If(sq_v):
            m.d.sync += a_q.eq(a_q + sq)
        with m.If(self.i.valid & self.i.ready):
            x = self.i.payload
            m.d.comb += wr.en.eq(1)
            m.d.sync += [a_s.eq(a_s + x), a_idx.eq(a_idx + 1), sq.eq(square_int8(x)),
                         sq_v.eq(1)]
            with m.If(a_idx == d - 1):
                m.d.sync += [a_full.eq(1), self.sums.valid.eq(1), self.sums.payload.eq(a_s + x)]
        a_to_b = Signal()
        m.d.comb += a_to_b.eq(a_full & ~b_busy)
        with m.If(a_to_b):
            # the group's last square may still be in sq (a_full rises with the last value)
            m.d.sync += [a_full.eq(0), a_s.eq(0), a_q.eq(0),
                         a_slot.eq(Mux(a_slot == GROUPS - 1, 0, a_slot + 1)),
                         b_busy.eq(1), b_done.eq(0), b_slot.eq(a_slot), b_s.eq(a_s),
                         b_q.eq(a_q + Mux(sq_v, sq, 0)), b_ssq.eq(a_s * a_s)]

        # B: one reciprocal and one root per group (the two iterative units chain directly)
        b_sent = Signal()
        with m.If(b_busy & ~b_sent):
            m.d.comb += [recip.i.valid.eq(1), recip.i.payload.eq((b_q << lg) - b_ssq + self.eps)]
            with m.If(recip.i.ready):
                m.d.sync += b_sent.eq(1)
        m.d.comb += isqrt.o.ready.eq(b_busy & ~b_done)
        with m.If(isqrt.o.valid & isqrt.o.ready):
            m.d.sync += [b_r.eq(isqrt.o.payload), b_done.eq(1)]

        # C: d values through the requantiser; takes B's group as soon as it is free
        b_to_c = Signal()
        c_last = Signal()
        m.d.comb += c_last.eq(c_busy & rq.i.ready & (c_idx == d - 1))
        m.d.comb += b_to_c.eq(b_busy & b_done & (~c_busy | c_last))
        with m.If(c_busy):
            m.d.comb += rq.i.valid.eq(1)
            with m.If(rq.i.ready):
                m.d.sync += c_idx.eq(c_idx + 1)
                with m.If(c_idx == d - 1):
                    m.d.sync += c_busy.eq(0)
        with m.If(b_to_c):
            m.d.sync += [c_busy.eq(1), c_idx.eq(0), c_slot.eq(b_slot), c_s.eq(b_s), c_r.eq(b_r),
                         b_busy.eq(0), b_sent.eq(0)]
        # A -> B in the same cycle as B -> C would lose B's new group: B takes A's group only
        # when B is not busy (above), so the two hand-overs never coincide
        return m
