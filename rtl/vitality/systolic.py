"""SA-General: ViTALiTy's input-stationary systolic array with down-forward accumulation.

``rows x cols`` PEs. PE (r, c) holds one *stationary* operand ``w[r][c]`` (a V tile for
G = K^^T V, a G tile for T = Q G); a vector ``x`` of ``rows`` *streamed* operands enters per step,
``x[r]`` travelling right along row r, and partial sums travel down the columns, so each vector
produces ``y[c] = psum[c] + sum_r x[r] w[r][c]`` at the bottom. Both products use the same
direction; only the roles of the operands change.

Timing (in enabled steps; ``en`` low freezes the whole array, so back-pressure is one signal)::

    vector t enters          -> row r sees x[r] at t + r + 1 (input skew), PE (r, c) at t + r + c + 1
    psum[c] enters at t      -> PE (0, c) at t + c + 1 (skewed like the operands)
    column c leaves at t + rows + c + 1 -> de-skewed to  t + rows + cols = t + LATENCY

Stationary tiles are double-buffered: ``load`` (with the first vector of a pass, ``tag``) copies
``tile`` into a shadow register; each PE switches to the shadow value when the tagged vector
reaches it, so a new pass can follow the previous one without draining the array. The shadow is
read up to ``rows + cols - 1`` steps after ``load``: passes must be at least that long.

This is not a stream component: it is the datapath of :class:`~.core.VitalityCore`, whose sequencer
owns flow control (``en``) and keeps ``side`` (per-vector bookkeeping) aligned with the results.
"""
from __future__ import annotations

from amaranth.hdl import Cat, Module, Mux, Signal, Value, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from vitaccel.rtl.common.delay import delay

__all__ = ["SystolicArray"]


class SystolicArray(wiring.Component):
    def __init__(self, rows: int, cols: int, operand_width: int = 16, acc_width: int = 32,
                 side_width: int = 1):
        for name, value in (("rows", rows), ("cols", cols), ("operand_width", operand_width),
                            ("acc_width", acc_width), ("side_width", side_width)):
            if not isinstance(value, int) or value < 1:
                self._MustUse__used = True
                raise ValueError(f"SystolicArray.{name} must be a positive integer, got {value!r}")
        self.rows, self.cols = rows, cols
        self.operand_width, self.acc_width = operand_width, acc_width
        #: Steps from a vector's entry to its results at ``o_y``.
        self.latency = rows + cols
        ow, aw = signed(operand_width), signed(acc_width)
        super().__init__({
            "en": In(1),
            "i_valid": In(1),
            "i_tag": In(1),
            "i_x": In(data.ArrayLayout(ow, rows)),
            "i_psum": In(data.ArrayLayout(aw, cols)),
            "i_side": In(unsigned(side_width)),
            "load": In(1),
            "tile": In(data.ArrayLayout(data.ArrayLayout(ow, cols), rows)),
            "o_valid": Out(1),
            "o_y": Out(data.ArrayLayout(aw, cols)),
            "o_side": Out(unsigned(side_width)),
            "busy": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        R, C, ow, aw = self.rows, self.cols, self.operand_width, self.acc_width
        en = self.en

        shadow = [[Signal(signed(ow), name=f"shadow_{r}_{c}") for c in range(C)] for r in range(R)]
        with m.If(en & self.load):
            for r in range(R):
                for c in range(C):
                    m.d.sync += shadow[r][c].eq(self.tile[r][c])

        # Partial sums entering each column, skewed so they meet the operands of the same vector.
        psum_top = [delay(m, Value.cast(self.i_psum[c]), c + 1, en=en, name=f"psum_in{c}")
                    for c in range(C)]
        psum = [[Signal(signed(aw), name=f"psum_{r}_{c}") for c in range(C)] for r in range(R)]
        for r in range(R):
            x = delay(m, Value.cast(self.i_x[r]), r + 1, en=en, name=f"x_skew{r}")
            tag = delay(m, self.i_tag & self.i_valid, r + 1, en=en, name=f"tag_skew{r}")
            for c in range(C):
                stat = Signal(signed(ow), name=f"stat_{r}_{c}")
                weight = Mux(tag, shadow[r][c], stat)
                above = psum_top[c] if r == 0 else psum[r - 1][c]
                with m.If(en):
                    m.d.sync += psum[r][c].eq(above + x * weight)
                    with m.If(tag):
                        m.d.sync += stat.eq(shadow[r][c])
                if c < C - 1:          # the streamed operand and its tag move one PE right
                    x_next = Signal(signed(ow), name=f"x_{r}_{c + 1}")
                    tag_next = Signal(name=f"tag_{r}_{c + 1}")
                    with m.If(en):
                        m.d.sync += [x_next.eq(x), tag_next.eq(tag)]
                    x, tag = x_next, tag_next

        for c in range(C):
            deskewed = delay(m, psum[R - 1][c], C - 1 - c, en=en, name=f"y_deskew{c}")
            m.d.comb += self.o_y[c].eq(deskewed)

        # Valid and side information follow the vector through the whole latency.
        valid_chain = delay(m, self.i_valid, self.latency, en=en, name="valid", stages=True)
        m.d.comb += [
            self.o_valid.eq(valid_chain[-1]),
            self.o_side.eq(delay(m, self.i_side, self.latency, en=en, name="side")),
            self.busy.eq(Cat(*valid_chain).any()),
        ]
        return m
