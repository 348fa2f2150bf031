"""GEMM engine: C = A @ B (int8 x int8 -> int32) on a :class:`MACArray`, sizes set at run time.

Protocol (one problem per command):
  1. ``cmd`` beat {m, n, k}. Sizes outside ``1..m_max`` (``n_max``, ``k_max``) are rejected: the
     sticky ``error`` flag rises and the engine waits for the next command (no data is consumed).
  2. ``a``: the M x K A matrix, row-major, one int8 per beat; ``b``: the K x N B matrix, row-major,
     one int8 per beat. Both are loaded concurrently into on-chip buffers.
  3. ``c``: results, tile by tile (row tiles of ``rows`` outer, column tiles of ``cols`` inner); a
     tile emits one beat per valid row, each beat ``cols`` int32 lanes (lanes past N read 0).

Buffers: A is stored as ``ceil(m_max/rows)*k_max`` words of ``rows`` bytes (row i in byte lane
i % rows at word (i // rows) * K + k), B likewise by columns, so one read per buffer feeds a whole
k-step of the array. Addresses advance by additions only (no multipliers outside the array).

``busy`` is high from the first compute cycle to the last result beat; ``cycles`` counts those
cycles for the current/last command (the MAC-utilisation denominator).
"""
from amaranth import *
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .mac_array import MACArray

__all__ = ["GEMMEngine", "cmd_layout"]


def cmd_layout(m_max, n_max, k_max):
    return data.StructLayout({
        "m": range(m_max + 1), "n": range(n_max + 1), "k": range(k_max + 1),
    })


def _ceil_div(a, b):
    return -(-a // b)


class GEMMEngine(wiring.Component):
    def __init__(self, rows=8, cols=8, m_max=64, n_max=64, k_max=64, in_width=8, acc_width=32):
        for name, value in (("rows", rows), ("cols", cols), ("m_max", m_max),
                            ("n_max", n_max), ("k_max", k_max)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"GEMMEngine.{name} must be a positive integer, got {value!r}")
        self.rows, self.cols = rows, cols
        self.m_max, self.n_max, self.k_max = m_max, n_max, k_max
        self.in_width, self.acc_width = in_width, acc_width
        self.a_depth = _ceil_div(m_max, rows) * k_max
        self.b_depth = _ceil_div(n_max, cols) * k_max
        super().__init__({
            "cmd": In(stream.Signature(cmd_layout(m_max, n_max, k_max))),
            "a": In(stream.Signature(signed(in_width))),
            "b": In(stream.Signature(signed(in_width))),
            "c": Out(stream.Signature(data.ArrayLayout(signed(acc_width), cols))),
            "busy": Out(1),
            "error": Out(1),
            "cycles": Out(32),
        })

    def elaborate(self, platform):
        m = Module()
        R, C, IW = self.rows, self.cols, self.in_width

        m.submodules.array = array = MACArray(R, C, IW, self.acc_width)
        wiring.connect(m, wiring.flipped(self.c), array.result)

        m.submodules.a_mem = a_mem = Memory(shape=unsigned(R * IW), depth=self.a_depth, init=[])
        m.submodules.b_mem = b_mem = Memory(shape=unsigned(C * IW), depth=self.b_depth, init=[])
        a_wr = a_mem.write_port(granularity=IW)
        b_wr = b_mem.write_port(granularity=IW)
        a_rd = a_mem.read_port()
        b_rd = b_mem.read_port()

        # The problem size, latched from the command.
        size_m = Signal(range(self.m_max + 1))
        size_n = Signal(range(self.n_max + 1))
        size_k = Signal(range(self.k_max + 1))
        cmd = self.cmd.payload
        cmd_ok = ((cmd.m >= 1) & (cmd.m <= self.m_max) & (cmd.n >= 1) & (cmd.n <= self.n_max)
                  & (cmd.k >= 1) & (cmd.k <= self.k_max))

        # --- load counters -------------------------------------------------------------------
        a_k = Signal(range(self.k_max))           # column within the current A row
        a_lane = Signal(range(R))                 # byte lane = row % R
        a_base = Signal(range(self.a_depth + 1))  # word of the current row group
        a_row = Signal(range(self.m_max + 1))
        a_done = Signal()
        b_k = Signal(range(self.k_max + 1))       # current B row
        b_lane = Signal(range(C))
        b_base = Signal(range(self.b_depth + 1))
        b_col = Signal(range(self.n_max + 1))
        b_done = Signal()

        m.d.comb += [
            a_wr.addr.eq(a_base + a_k),
            a_wr.data.eq(Cat(*[self.a.payload for _ in range(R)])),
            b_wr.addr.eq(b_base + b_k),
            b_wr.data.eq(Cat(*[self.b.payload for _ in range(C)])),
        ]

        # --- compute counters ----------------------------------------------------------------
        i0 = Signal(range(self.m_max + R))        # first row of the current row tile
        j0 = Signal(range(self.n_max + C))        # first column of the current column tile
        kk = Signal(range(self.k_max + 1))
        a_tile = Signal(range(self.a_depth + 1))  # word base of the row tile
        b_tile = Signal(range(self.b_depth + 1))
        issuing = Signal()

        advance = array.operands.ready
        m.d.comb += [
            a_rd.addr.eq(a_tile + kk),
            b_rd.addr.eq(b_tile + kk),
            a_rd.en.eq(advance),
            b_rd.en.eq(advance),
        ]

        # Sideband of the k-step being read; it meets the memory data one cycle later.
        rd_valid = Signal()
        rd_first = Signal()
        rd_last = Signal()
        rd_nrows = Signal(range(1, R + 1))
        rd_ncols = Signal(range(C + 1))

        rows_left = Signal(range(self.m_max + R + 1))
        cols_left = Signal(range(self.n_max + C + 1))
        m.d.comb += [rows_left.eq(size_m - i0), cols_left.eq(size_n - j0)]

        with m.If(advance):
            m.d.sync += [
                rd_valid.eq(issuing),
                rd_first.eq(kk == 0),
                rd_last.eq(kk == size_k - 1),
                rd_nrows.eq(Mux(rows_left >= R, R, rows_left)),
                rd_ncols.eq(Mux(cols_left >= C, C, cols_left)),
            ]

        ops = array.operands.payload
        m.d.comb += [
            array.operands.valid.eq(rd_valid),
            ops.first.eq(rd_first),
            ops.last.eq(rd_last),
            ops.nrows.eq(rd_nrows),
        ]
        for r in range(R):
            m.d.comb += ops.a[r].eq(a_rd.data.word_select(r, IW).as_signed())
        for c in range(C):
            # Columns past N hold stale data: zero them so tail lanes read 0.
            m.d.comb += ops.b[c].eq(Mux(c < rd_ncols, b_rd.data.word_select(c, IW).as_signed(), 0))

        cycles = Signal(32)
        m.d.comb += self.cycles.eq(cycles)

        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += self.cmd.ready.eq(1)
                with m.If(self.cmd.valid):
                    with m.If(cmd_ok):
                        m.d.sync += [
                            size_m.eq(cmd.m), size_n.eq(cmd.n), size_k.eq(cmd.k),
                            a_k.eq(0), a_lane.eq(0), a_base.eq(0), a_row.eq(0), a_done.eq(0),
                            b_k.eq(0), b_lane.eq(0), b_base.eq(0), b_col.eq(0), b_done.eq(0),
                            cycles.eq(0),
                        ]
                        m.next = "LOAD"
                    with m.Else():
                        m.d.sync += self.error.eq(1)

            with m.State("LOAD"):
                m.d.comb += [self.a.ready.eq(~a_done), self.b.ready.eq(~b_done)]
                with m.If(self.a.valid & ~a_done):
                    m.d.comb += a_wr.en.eq(1 << a_lane)
                    with m.If(a_k == size_k - 1):
                        m.d.sync += [a_k.eq(0), a_row.eq(a_row + 1)]
                        with m.If(a_row == size_m - 1):
                            m.d.sync += a_done.eq(1)
                        with m.If(a_lane == R - 1):
                            m.d.sync += [a_lane.eq(0), a_base.eq(a_base + size_k)]
                        with m.Else():
                            m.d.sync += a_lane.eq(a_lane + 1)
                    with m.Else():
                        m.d.sync += a_k.eq(a_k + 1)
                with m.If(self.b.valid & ~b_done):
                    m.d.comb += b_wr.en.eq(1 << b_lane)
                    with m.If(b_col == size_n - 1):      # end of a B row
                        m.d.sync += [b_col.eq(0), b_lane.eq(0), b_base.eq(0), b_k.eq(b_k + 1)]
                        with m.If(b_k == size_k - 1):
                            m.d.sync += b_done.eq(1)
                    with m.Else():
                        m.d.sync += b_col.eq(b_col + 1)
                        with m.If(b_lane == C - 1):
                            m.d.sync += [b_lane.eq(0), b_base.eq(b_base + size_k)]
                        with m.Else():
                            m.d.sync += b_lane.eq(b_lane + 1)
                with m.If(a_done & b_done):
                    m.d.sync += [i0.eq(0), j0.eq(0), kk.eq(0), a_tile.eq(0), b_tile.eq(0)]
                    m.next = "COMPUTE"

            with m.State("COMPUTE"):
                m.d.comb += [issuing.eq(1), self.busy.eq(1)]
                m.d.sync += cycles.eq(cycles + 1)
                with m.If(advance):
                    with m.If(kk == size_k - 1):
                        m.d.sync += kk.eq(0)
                        with m.If(j0 + C >= size_n):           # last column tile of this row tile
                            m.d.sync += [j0.eq(0), b_tile.eq(0)]
                            with m.If(i0 + R >= size_m):
                                m.next = "DRAIN"
                            with m.Else():
                                m.d.sync += [i0.eq(i0 + R), a_tile.eq(a_tile + size_k)]
                        with m.Else():
                            m.d.sync += [j0.eq(j0 + C), b_tile.eq(b_tile + size_k)]
                    with m.Else():
                        m.d.sync += kk.eq(kk + 1)

            with m.State("DRAIN"):
                # Wait for the last k-steps to leave the pipeline and the last tile to be read.
                drained = ~rd_valid & ~array.active
                m.d.comb += self.busy.eq(~drained)
                with m.If(~drained):
                    m.d.sync += cycles.eq(cycles + 1)
                with m.Else():
                    m.next = "IDLE"
        return m
