"""An output-stationary int8 MAC array with a double-buffered result bank.

``rows x cols`` multiply-accumulate cells. Each accepted ``operands`` beat carries one k-step of a
tile: ``rows`` A values (one per array row) and ``cols`` B values (one per array column); every cell
adds ``a[r] * b[c]`` to its int32 accumulator. ``first`` restarts the accumulation, ``last`` ends the
tile: the final sums go straight into a result bank (so the accumulators are free for the next
tile on the following cycle) and leave on ``result`` one array row per beat, ``cols`` int32 lanes,
``nrows`` beats for the tile (tail tiles emit fewer rows).

Pipeline: operands -> [operand registers] -> [multiply] -> [product register] ->
[accumulate / write result bank]. The
operand registers cut the path from whatever feeds the array (block RAM outputs are slow on ECP5)
to the DSP multipliers. The only stall is a tile that
ends while the result bank still holds the previous tile; with ``rows <= K`` that never happens, so
a long GEMM keeps every MAC busy on every cycle.
"""
from amaranth import *
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["MACArray", "operand_layout"]


def operand_layout(rows, cols, in_width=8):
    return data.StructLayout({
        "a": data.ArrayLayout(signed(in_width), rows),
        "b": data.ArrayLayout(signed(in_width), cols),
        "first": 1,                            # first k-step of a tile: start from zero
        "last": 1,                             # last k-step: emit the tile
        "nrows": range(1, rows + 1),           # rows of this tile to emit (tail tiles: fewer)
    })


class MACArray(wiring.Component):
    """``rows x cols`` int8 MACs with ``acc_width``-bit accumulators.

    Ports:
      operands: In stream of :func:`operand_layout` beats (one k-step each).
      result:   Out stream of ``ArrayLayout(signed(acc_width), cols)``, one array row per beat.
      active:   Out, high while any k-step or result is in flight (for busy/cycle counting).
    """

    def __init__(self, rows, cols, in_width=8, acc_width=32):
        for name, value in (("rows", rows), ("cols", cols), ("in_width", in_width),
                            ("acc_width", acc_width)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"MACArray.{name} must be a positive integer, got {value!r}")
        if acc_width < 2 * in_width:
            raise ValueError(f"MACArray.acc_width ({acc_width}) must hold one product "
                             f"({2 * in_width} bits)")
        self.rows, self.cols = rows, cols
        self.in_width, self.acc_width = in_width, acc_width
        super().__init__({
            "operands": In(stream.Signature(operand_layout(rows, cols, in_width))),
            "result": Out(stream.Signature(data.ArrayLayout(signed(acc_width), cols))),
            "active": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        R, C, W = self.rows, self.cols, self.acc_width
        ops = self.operands.payload

        # The tile sideband (valid, first, last, nrows) travels beside the data, one register
        # per stage.
        sideband = data.StructLayout({"valid": 1, "first": 1, "last": 1,
                                      "nrows": ops.nrows.shape()})

        # Stage 0: operand registers.
        o_valid = Signal()
        o_ops = Signal.like(ops)

        # Stage 1: products (registered so the multiplier maps onto a DSP with a short path).
        p = Signal(sideband)
        prod = [[Signal(signed(2 * self.in_width), name=f"prod_{r}_{c}") for c in range(C)]
                for r in range(R)]
        # Stage 1b: a second product register. Its only load is the accumulator's register, so
        # the placer can keep the first one beside its DSP; with a single register the placer
        # pulled it toward the accumulator and DSP -> FF routing set the ECP5 Fmax.
        q = Signal(sideband)
        prod2 = [[Signal(signed(2 * self.in_width), name=f"prod2_{r}_{c}") for c in range(C)]
                 for r in range(R)]

        # Stage 2: accumulators and the result bank (rows shift out toward row 0).
        acc = [[Signal(signed(W), name=f"acc_{r}_{c}") for c in range(C)] for r in range(R)]
        bank = [[Signal(signed(W), name=f"bank_{r}_{c}") for c in range(C)] for r in range(R)]
        bank_count = Signal(range(R + 1))     # rows still to emit; 0 = bank free

        # The pipeline advances unless a finishing tile finds the bank occupied. This enable
        # depends only on registers, never on result.ready, so no combinational path runs from
        # the consumer's ready back into the array.
        advance = Signal()
        m.d.comb += advance.eq(~(q.valid & q.last & (bank_count != 0)))
        m.d.comb += self.operands.ready.eq(advance)

        with m.If(advance):
            m.d.sync += [
                o_valid.eq(self.operands.valid),
                o_ops.eq(ops),
                p.valid.eq(o_valid),
                p.first.eq(o_ops.first),
                p.last.eq(o_ops.last),
                p.nrows.eq(o_ops.nrows),
                q.eq(p),
            ]
            for r in range(R):
                for c in range(C):
                    m.d.sync += [prod[r][c].eq(o_ops.a[r] * o_ops.b[c]),
                                 prod2[r][c].eq(prod[r][c])]

        with m.If(advance & q.valid):
            for r in range(R):
                for c in range(C):
                    total = Mux(q.first, 0, acc[r][c]) + prod2[r][c]
                    m.d.sync += acc[r][c].eq(total)
                    with m.If(q.last):
                        m.d.sync += bank[r][c].eq(total)

        # Drain: row 0 of the bank is the payload; a handshake shifts the rows up by one.
        m.d.comb += self.result.valid.eq(bank_count != 0)
        for c in range(C):
            m.d.comb += self.result.payload[c].eq(bank[0][c])
        with m.If(advance & q.valid & q.last):
            m.d.sync += bank_count.eq(q.nrows)
        with m.Elif(self.result.valid & self.result.ready):
            m.d.sync += bank_count.eq(bank_count - 1)
            for r in range(R - 1):
                for c in range(C):
                    m.d.sync += bank[r][c].eq(bank[r + 1][c])

        m.d.comb += self.active.eq(o_valid | p.valid | q.valid | (bank_count != 0))
        return m
