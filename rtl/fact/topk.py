"""Streaming top-k: a sorted register array that takes one (score, index) every other cycle.

``k_max`` entries, kept sorted by descending score. An insert compares the new score with every
entry at once (``k_max`` comparators, no loop-carried chain): ``stay[e] = valid[e] & score[e] >=
new``. Because the array is sorted, ``stay`` is a prefix; entry ``e`` keeps its value where
``stay[e]``, takes the new element at the first ``e`` that does not stay, and takes entry
``e - 1`` (a shift down) after it; the last entry falls out. Keys arrive in increasing index
order, so ``>=`` lets an earlier (lower) index win a tie, as the golden model's stable sort does.

Pipeline: the element is registered on ``insert`` (a private copy of the score, so the engine's
output register does not fan out to ``k_max`` comparators), compared in the next cycle (``stay``
registered), and written in the cycle after. Done in one cycle, the ~50-bit compare, the
prefix decode and the enables of every entry's flip-flops were the FACT unit's ULX3S critical
path (13.6 ns). Elements arrive at most every :attr:`INTERVAL` = 2 cycles, so an element is
compared after the previous one has been written. Accepting one per cycle needed a forwarding
compare (each entry as the write in flight leaves it: a three-way choice behind the
comparators, plus one comparator against the element being written), and that choice behind
the carry chains stayed the critical path at 11.2 ns (87.4 MHz on the ULX3S) however it was
arranged; the predictor's keys take ``d / lanes`` >= 2 cycles each in every useful
configuration, and it pads one-word keys to two cycles. The element's score is held in several
copies, each feeding a group of comparators (one register driving every comparator was a 3 ns
route), and each comparator is split into halves whose carry chains run in parallel (see
``_at_least``). ``busy`` is high while an element is in flight.

The run-time ``k`` (<= ``k_max``) is applied by the reader, who takes entries ``0 .. k-1``; the
unit always keeps ``k_max`` so the one-hot rule can compare entries 0 and 1 even for ``k = 1``.
"""
from __future__ import annotations

from amaranth.hdl import Cat, Module, Signal, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["TopKSorter"]


class TopKSorter(wiring.Component):
    """Ports: ``clear`` (empties the array, drops an element in flight), ``insert`` /
    ``in_score`` / ``in_index`` (one element every :attr:`INTERVAL` cycles at most), ``busy``
    and the sorted ``score``, ``index``, ``valid`` arrays (registered)."""

    #: Cycles from ``insert`` until the element is in the arrays (``busy`` meanwhile).
    LATENCY = 3
    #: Fewest cycles from one ``insert`` to the next: an element is compared with the array
    #: after the previous element's write.
    INTERVAL = 2
    #: Comparators fed by one copy of the element's score, as far as four copies go (see the
    #: module doc).
    COMPARATORS_PER_COPY = 11

    def __init__(self, k_max: int, score_width: int, index_width: int):
        for name, value in (("k_max", k_max), ("score_width", score_width),
                            ("index_width", index_width)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"TopKSorter.{name} must be a positive integer, got {value!r}")
        self.k_max = k_max
        super().__init__({
            "clear": In(1), "insert": In(1),
            "in_score": In(signed(score_width)), "in_index": In(unsigned(index_width)),
            "busy": Out(1),
            "score": Out(data.ArrayLayout(signed(score_width), k_max)),
            "index": Out(data.ArrayLayout(unsigned(index_width), k_max)),
            "valid": Out(data.ArrayLayout(unsigned(1), k_max)),
        })

    @staticmethod
    def _at_least(a, b):
        """``a >= b`` for wide signed scores as three carry chains of half the width in parallel:
        ``hi(a) > hi(b) | (hi(a) >= hi(b) & lo(a) >= lo(b))`` (lo unsigned). One ~54-bit chain
        was most of the sorter's critical path on the ECP5 (2.2 ns of carry, then the choice)."""
        width = len(a)
        if width < 16:
            return a >= b
        half = width // 2
        a_lo, b_lo = a.as_unsigned()[:half], b.as_unsigned()[:half]
        a_hi, b_hi = a[half:].as_signed(), b[half:].as_signed()
        return (a_hi > b_hi) | ((a_hi >= b_hi) & (a_lo >= b_lo))

    def elaborate(self, platform):
        m = Module()
        K = self.k_max
        # stage 1: the element
        new_valid = Signal()
        new_index = Signal.like(self.in_index)
        m.d.sync += [new_valid.eq(self.insert & ~self.clear)]
        with m.If(self.insert):
            m.d.sync += new_index.eq(self.in_index)
        # Copies of the score, comparator e reading copy e // COMPARATORS_PER_COPY. Only `new_valid` says whether the score matters, so a
        # copy may load on any superset of `insert`: each copy gets a different enable, since
        # yosys merges flip-flops with identical inputs into one.
        enables = [self.insert, None, ~self.clear, self.insert | self.clear]
        copies = min(len(enables), -(-K // self.COMPARATORS_PER_COPY))
        per_copy = -(-K // copies)
        new_scores = []
        for c in range(copies):
            copy = Signal.like(self.in_score, name=f"new_score_{c}")
            if enables[c] is None:
                m.d.sync += copy.eq(self.in_score)
            else:
                with m.If(enables[c]):
                    m.d.sync += copy.eq(self.in_score)
            new_scores.append(copy)
        score_for = [new_scores[e // per_copy] for e in range(K)]
        # stage 2: which entries stay (the array holds every earlier element by now)
        put_valid = Signal()
        put_score, put_index = Signal.like(self.in_score), Signal.like(self.in_index)
        stay = Signal(K)
        m.d.sync += [put_valid.eq(new_valid & ~self.clear), put_score.eq(new_scores[-1]),
                     put_index.eq(new_index),
                     stay.eq(Cat(*(self.valid[e] & self._at_least(self.score[e], score_for[e])
                                   for e in range(K))))]
        m.d.comb += self.busy.eq(new_valid | put_valid)
        # what stage 3 does to entry e: take the element at the first entry that does not stay
        take_new = [~stay[e] if e == 0 else (stay[e - 1] & ~stay[e]) for e in range(K)]
        # stage 3: write
        with m.If(self.clear):
            for e in range(K):
                m.d.sync += self.valid[e].eq(0)
        with m.Elif(put_valid):
            for e in range(K):
                with m.If(take_new[e]):
                    m.d.sync += [self.score[e].eq(put_score), self.index[e].eq(put_index),
                                 self.valid[e].eq(1)]
                if e > 0:
                    with m.Elif(~stay[e]):
                        m.d.sync += [self.score[e].eq(self.score[e - 1]),
                                     self.index[e].eq(self.index[e - 1]),
                                     self.valid[e].eq(self.valid[e - 1])]
        return m
