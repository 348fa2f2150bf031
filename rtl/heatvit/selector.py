"""The HeatViT token selector: one MAC array, one GELU, one LayerNorm, sequenced layer by layer.

Golden twin: ``golden.heatvit.selector_int``, bit for bit on ``tokens_out``, ``keep``, ``n_next``.

Streams (in order of use)
-------------------------
``cmd``      one beat {n, has_package} per image; ``n`` = candidate tokens (1..n_max).
``weights``  the weight memory image: ``weights_depth`` beats of ``cols`` int8 lanes (every run).
``biases``   the bias memory image: ``biases_depth`` beats of ``cols`` int32 lanes (every run).
``tokens``   (n+1) x D int8, row-major, one int8 per beat (row 0 = CLS).
``keep``     n beats (1 = kept), ``tokens_out`` n_next x D int8 beats, ``n_next`` one beat.
``params``   plain input (held): the requantisation constants of :func:`params_layout`.

The memory images are built by :func:`vitaccel.units.heatvit.memory_images` from a ``Weights``;
the layout (regions, lanes) is :class:`Plan`'s.

Schedule per image
------------------
load weights, biases, tokens -> for each head i: LayerNorm of head i over all tokens (writes Y and
the head means E) -> L1 = GEMM(Y, W1) + GELU (writes U, sums the global half) -> g = mean of the
global half (one reciprocal of n per image) -> L2G = GEMM(g, W2[:, d/2:]) + b2 written as the
head's L2 bias -> L2 = GEMM(U[:, :d/2], W2[:, :d/2]) + GELU -> L3 + GELU -> L4 -> dz = requant(z0 -
z1) -> after all heads: V1 + GELU, V2 -> requant -> sigmoid = head weights -> per-token decision,
keep score (divider) -> package accumulation -> reciprocal -> output [CLS, kept, package].

GEMMs run on the shared :class:`~vitaccel.rtl.common.mac_array.MACArray` (``rows`` tokens x
``cols`` output channels per tile). Activations live in a scratchpad of ``rows``-byte words
(token t in byte lane t % rows at ``base + (t // rows) * stride + k``), so one read feeds a whole
k-step; weights in ``cols``-byte words (output o in lane o % cols at ``base + (o // cols) * K +
k``).

Throughput of the MLP phases: a tile of ``rows x cols`` results takes ``K`` issue cycles, and its
values are post-processed after the array (bias add, then GELU / logit requantiser / head sigmoid
/ bias write-back). GELU layers take two values per cycle: two GELU units in lockstep, and the
scratchpad split into two banks by word-address parity, so the two channels of a token written
together (addresses A and A + 1) never collide; the global-half sums are banked the same way. A
new result beat is taken in the cycle the last value of the previous one leaves (no bubble), and
the logit / head-score requantiser is pipelined (side FIFO) rather than waited for. So a layer
keeps the array busy while ``2 K >= rows * cols``; for DeiT-T on the 8 x 8 array that is every
layer but the last (K = d/4 = 16, 2 outputs: 2 of the 8 columns used), which is under 3 % of the
MACs. Outside the array: tokens load one byte per beat; the LayerNorm pipelines its groups (about
``3 LN_R + 10`` = 76 cycles per token and head, set by its reciprocal and root) but does not
overlap the GEMMs; the decision, package and compaction are sequential per token, the package one
byte of a dropped token per cycle. The per-phase cycle counters (:data:`PHASES`) measure each.

Timing (ECP5 target 75 MHz): no register-to-register path holds more than about one multiplier
or one wide carry chain plus a few LUT levels. What that takes, beyond the obvious:
* memory addresses are counters, not products: the decision reads dz / hw at a running address
  (``dec_a``, token-major order), the write-back keeps ``L_b_base + pog``, ``L_out_base + ptg *
  stride``, ``L_out - pog * C`` and the head-mean address as registers, and the token load counts
  rows and columns instead of comparing with ``(n + 1) * D``;
* the decision is a pipeline (registered dz / hw read -> registers -> sigmoid -> the two
  head-weight products -> the sums), about 4 cycles more per token than the old single-cycle
  loop; the keep-score divider and the package reciprocal get registered operands;
* a result value (lane select + bias + z0 - z1) goes through one register (``s_*``) before the
  GELU pair / the int16 requantiser / the bias write-back, and the dz / hw write (head sigmoid,
  ``t * h + i``) through another;
* the package accumulation registers the token byte and the product before the
  read-add-write of its distributed-RAM sum; the global mean registers the product and the
  rounding; the LayerNorm is fed from a register, not straight from the token block RAM;
* rows are visited in order in the package and output passes, so the keep bits are read from a
  shift register (bit 0 = current row) instead of an ``n_max``-to-1 multiplexer.
These cost about ``4 n + 2 h + (a cycle or two per layer)`` cycles per image (well under 1 %).
"""
from __future__ import annotations

from dataclasses import dataclass

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from vitaccel.golden.heatvit import PKG_FRAC, RN_FRAC
from vitaccel.rtl.common.banked import BankedMemory
from vitaccel.rtl.common.divider import Divider, Reciprocal
from vitaccel.rtl.common.mac_array import MACArray
from vitaccel.rtl.common.skid import SkidBuffer
from vitaccel.rtl.common.requant import SHIFT_WIDTH, Requantizer

from .gelu import GELU
from .layernorm import LayerNorm
from .sigmoid import plan_sigmoid

__all__ = ["Selector", "Plan", "params_layout", "cmd_layout", "GELU_LAYERS", "PHASES"]

GELU_LAYERS = ("l1", "l2", "l3", "h1")     # layers followed by a GELU, in params order
MB = 16                                      # requantiser multiplier bits (fixedpoint.MULTIPLIER_BITS)


def _cdiv(a, b):
    return -(-a // b)


def params_layout():
    fields = {}
    for name in GELU_LAYERS:
        fields.update({f"{name}_in_mul": unsigned(MB), f"{name}_in_shift": unsigned(SHIFT_WIDTH),
                       f"{name}_out_mul": unsigned(MB), f"{name}_out_shift": unsigned(SHIFT_WIDTH)})
    fields.update({"logit_mul": unsigned(MB), "logit_shift": unsigned(SHIFT_WIDTH),
                   "head_mul": unsigned(MB), "head_shift": unsigned(SHIFT_WIDTH),
                   "gelu_a": signed(16), "gelu_one": unsigned(15), "eps": unsigned(24)})
    return data.StructLayout(fields)


#: status counter -> the sequencer states it counts. Together with ``gemm_cycles`` (every
#: ``*_RUN`` state) they cover the run but for the few control states between layers and heads.
PHASES = {
    "load_cycles": ("LOAD",),                                     # weights, biases, tokens in
    "layernorm_cycles": ("LN_START", "LN"),
    # global mean (reciprocal of n, scaling) and the per-token decision: sigmoids, weighted
    # logit sum, keep-score divider
    "nonlinear_cycles": ("RECIP_N", "RECIP_N_WAIT", "GSUM_CLEAR", "GMEAN", "DECIDE_START",
                         "DECIDE", "DECIDE_RULE", "KEEP_OUT", "PI", "PI_WAIT", "DECIDE_NEXT"),
    "package_cycles": ("PKG", "PKG_RECIP", "PKG_RECIP_WAIT", "OUT_PKG_CHECK", "OUT_PKG"),
    "compaction_cycles": ("OUT_START", "OUT_ROWS", "N_NEXT"),
}


def cmd_layout(n_max):
    return data.StructLayout({"n": range(n_max + 1), "has_package": 1})


@dataclass(frozen=True)
class Layer:
    name: str
    mode: str          # "gelu", "bias", "logit", "head"
    gelu: int          # index into GELU_LAYERS (gelu mode)
    in_base: int
    in_stride: int
    K: int
    out: int
    w_base: int
    b_base: int
    out_base: int      # act region (gelu), bias word base (bias)
    out_stride: int
    single_row: bool   # rows = 1 (the L2G bias GEMM) instead of n


class Plan:
    """Memory regions and the layer table for one configuration."""

    def __init__(self, D, heads, n_max, shared, rows, cols):
        h, d = heads, D // heads
        self.D, self.h, self.d, self.n_max, self.R, self.C = D, h, d, n_max, rows, cols
        self.shared = shared
        G = _cdiv(n_max, rows)
        # activation scratchpad regions (word = rows bytes)
        a = {}
        top = 0
        for name, stride in (("Y", d), ("U", d), ("A2", d // 2), ("A3", d // 4), ("E", h),
                             ("EH", h // 2), ("G", d // 2)):
            a[name] = top
            top += (1 if name == "G" else G) * stride
        self.act, self.act_depth = a, top
        # weights (word = cols bytes): per head-set
        hs = 1 if shared else h
        wshapes = {"w1": (d, d), "w2l": (d // 2, d // 2), "w2g": (d // 2, d // 2),
                   "w3": (d // 4, d // 2), "w4": (2, d // 4)}
        self.w = {}
        top = 0
        for i in range(hs):
            for name, (o, k) in wshapes.items():
                self.w[(name, i)] = top
                top += _cdiv(o, cols) * k
        for name, (o, k) in (("v1", (h // 2, h)), ("v2", (h, h // 2))):
            self.w[(name, 0)] = top
            top += _cdiv(o, cols) * k
        self.weights_depth = top
        # biases (word = cols int32)
        self.b = {}
        top = 0
        for i in range(hs):
            for name, o in (("b1", d), ("b2", d // 2), ("b3", d // 4), ("b4", 2)):
                self.b[(name, i)] = top
                top += _cdiv(o, cols)
        for name, o in (("c1", h // 2), ("c2", h)):
            self.b[(name, 0)] = top
            top += _cdiv(o, cols)
        self.bias2 = top                       # written at run time: W2_G g + b2 of the head
        top += _cdiv(d // 2, cols)
        self.biases_depth = top
        self.wshapes = wshapes

    def head_layers(self, i):
        j = 0 if self.shared else i
        d, a = self.d, self.act
        w, b = self.w, self.b
        return [
            Layer("l1", "gelu", 0, a["Y"], d, d, d, w[("w1", j)], b[("b1", j)], a["U"], d, False),
            Layer("l2g", "bias", 0, a["G"], d // 2, d // 2, d // 2, w[("w2g", j)], b[("b2", j)],
                  self.bias2, 0, True),
            Layer("l2", "gelu", 1, a["U"], d, d // 2, d // 2, w[("w2l", j)], self.bias2, a["A2"],
                  d // 2, False),
            Layer("l3", "gelu", 2, a["A2"], d // 2, d // 2, d // 4, w[("w3", j)], b[("b3", j)],
                  a["A3"], d // 4, False),
            Layer("l4", "logit", 0, a["A3"], d // 4, d // 4, 2, w[("w4", j)], b[("b4", j)], 0, 0,
                  False),
        ]

    def tail_layers(self):
        h, a, w, b = self.h, self.act, self.w, self.b
        return [
            Layer("v1", "gelu", 3, a["E"], h, h, h // 2, w[("v1", 0)], b[("c1", 0)], a["EH"],
                  h // 2, False),
            Layer("v2", "head", 0, a["EH"], h // 2, h // 2, h, w[("v2", 0)], b[("c2", 0)], 0, 0,
                  False),
        ]


class Selector(wiring.Component):
    def __init__(self, D, heads, n_max, shared=True, rows=8, cols=8, decision="logit",
                 normalize_package=True, sigmoid="plan"):
        if cols < 2:
            self._MustUse__used = True
            raise ValueError("Selector.cols must be >= 2 (z0 and z1 share one result beat)")
        self.plan = Plan(D, heads, n_max, shared, rows, cols)
        self.D, self.h, self.d, self.n_max = D, heads, D // heads, n_max
        self.R, self.C = rows, cols
        self.decision, self.normalize_package, self.sigmoid = decision, normalize_package, sigmoid
        self.weights_depth = self.plan.weights_depth
        self.biases_depth = self.plan.bias2      # the run-time bias2 words are not loaded
        super().__init__({
            "cmd": In(stream.Signature(cmd_layout(n_max))),
            "weights": In(stream.Signature(data.ArrayLayout(signed(8), cols))),
            "biases": In(stream.Signature(data.ArrayLayout(signed(32), cols))),
            "tokens": In(stream.Signature(signed(8))),
            "keep": Out(stream.Signature(1)),
            "tokens_out": Out(stream.Signature(signed(8))),
            "n_next": Out(stream.Signature(range(n_max + 2))),
            # flat, so a test bench can hold it with one integer (viewed as params_layout inside)
            "params": In(unsigned(params_layout().size)),
            "busy": Out(1),
            "mac_cycles": Out(32),     # cycles with a k-step entering the MAC array
            "gemm_cycles": Out(32),    # cycles spent in GEMM phases (issue to last write)
            "cycles": Out(32),         # cycles from the command to the last output beat
            **{port: Out(32) for port in PHASES},   # cycles spent in each phase (see PHASES)
        })

    # ------------------------------------------------------------------------------------------
    def elaborate(self, platform):
        m = Module()
        P = self.plan
        R, C, D, h, d, n_max = self.R, self.C, self.D, self.h, self.d, self.n_max
        lg = d.bit_length() - 1
        prm = data.View(params_layout(), self.params)
        G = _cdiv(n_max, R)

        # ---- memories --------------------------------------------------------------------------
        # the token buffer is deep (197 x 192 bytes for DeiT-T: 19 block RAMs), and a plain
        # Memory puts its depth multiplexer straight behind the block RAMs (the ULX3S critical
        # path); BankedMemory registers each block's output first, so every reader below takes
        # its byte LATENCY = 2 enabled cycles after the address
        m.submodules.tok_mem = tok_mem = BankedMemory(8, (n_max + 1) * D, bank_depth=2048)
        # tokens_out leaves through a register slice: its payload is the token RAM's read data
        # behind the bank multiplexer (or the package requantiser), which would otherwise run on
        # into the consumer's logic (the host link's UART shift register: the ULX3S critical path)
        m.submodules.out_skid = out_skid = SkidBuffer(signed(8))
        wiring.connect(m, out_skid.o, wiring.flipped(self.tokens_out))
        tok_out = out_skid.i
        tok_wr, tok_rd = tok_mem.write, tok_mem.read
        # the activation scratchpad is two banks (even / odd word addresses): the GELU write-back
        # stores two output channels of a token per cycle, and their addresses A, A + 1 always
        # fall in different banks whatever the region base or stride
        # Both, and the weight memory, are BankedMemory (block RAM outputs registered before the
        # depth mux, read latency 2): the scratchpad read -> depth mux -> bank mux -> operand
        # slice was the ULX3S critical path at 70.7 MHz.
        bank_depth = _cdiv(P.act_depth, 2)
        act_wr, act_rd = [], []
        for k in range(2):
            mem = BankedMemory(8 * R, bank_depth, granularity=8)
            m.submodules[f"act_mem{k}"] = mem
            act_wr.append(mem.write)
            act_rd.append(mem.read)
        m.submodules.w_mem = w_mem = BankedMemory(8 * C, P.weights_depth)
        w_wr, w_rd = w_mem.write, w_mem.read
        m.submodules.b_mem = b_mem = Memory(shape=data.ArrayLayout(signed(32), C),
                                            depth=P.biases_depth, init=[])
        b_wr, b_rd = b_mem.write_port(), b_mem.read_port(domain="comb")
        m.submodules.dz_mem = dz_mem = Memory(shape=signed(16), depth=n_max * h, init=[])
        dz_wr, dz_rd = dz_mem.write_port(), dz_mem.read_port()      # registered read
        m.submodules.hw_mem = hw_mem = Memory(shape=unsigned(9), depth=n_max * h, init=[])
        hw_wr, hw_rd = hw_mem.write_port(), hw_mem.read_port()      # registered read
        m.submodules.pi_mem = pi_mem = Memory(shape=unsigned(10), depth=n_max, init=[])
        pi_wr, pi_rd = pi_mem.write_port(), pi_mem.read_port(domain="comb")
        m.submodules.acc_mem = acc_mem = Memory(shape=signed(32), depth=D, init=[])
        acc_wr, acc_rd = acc_mem.write_port(), acc_mem.read_port(domain="comb")
        # global-half sums, banked by index parity for the same reason as the scratchpad
        # A sum of at most n_max int8 GELU outputs: |sum| <= 128 n_max < 2**(gsum_w - 1), so
        # gsum_w bits hold it exactly (16 for n_max = 196), and gsum * rn is one 18 x 18 multiply
        gsum_w = 8 + n_max.bit_length()
        gsum_wr, gsum_rd = [], []
        for k in range(2):
            mem = Memory(shape=signed(gsum_w), depth=_cdiv(d // 2, 2), init=[])
            m.submodules[f"gsum_mem{k}"] = mem
            gsum_wr.append(mem.write_port())
            gsum_rd.append(mem.read_port(domain="comb"))

        # ---- compute units -----------------------------------------------------------------------
        m.submodules.array = array = MACArray(R, C)
        # two GELUs driven in lockstep (identical pipelines, identical handshakes): two result
        # values per cycle, so layers with K < rows * cols keep up with the array
        m.submodules.gelu0 = gelu0 = GELU()
        m.submodules.gelu1 = gelu1 = GELU()
        gelus = (gelu0, gelu1)
        m.submodules.ln = ln = LayerNorm(d)
        m.submodules.rq16 = rq16 = Requantizer(1, in_width=34, out_width=16, multiplier_bits=MB)
        m.submodules.recip_n = recip_n = Reciprocal(frac_bits=RN_FRAC, den_width=16,
                                                    out_width=RN_FRAC + 2)
        m.submodules.recip = recip = Reciprocal(frac_bits=PKG_FRAC, den_width=24,
                                                out_width=PKG_FRAC + 2)
        m.submodules.div = div = Divider(num_width=26, den_width=16, out_width=10, out_signed=False)
        m.submodules.rq_pkg = rq_pkg = Requantizer(1, in_width=32, out_width=8,
                                                   multiplier_bits=PKG_FRAC + 2)
        # The package sums reach the requantiser through a register slice: the accumulator RAM's
        # read (address mux, distributed-RAM depth mux) straight into the requantiser's input
        # register was the ULX3S critical path at 63.4 MHz.
        m.submodules.pkg_skid = pkg_skid = SkidBuffer(rq_pkg.i.payload.shape())
        wiring.connect(m, pkg_skid.o, rq_pkg.i)

        # ---- run state ---------------------------------------------------------------------------
        n = Signal(range(n_max + 1))
        has_pkg = Signal()
        head = Signal(range(h))
        rn = Signal(RN_FRAC + 2)                 # reciprocal(n, RN_FRAC)
        cycles = Signal(32)
        mac_cycles = Signal(32)
        gemm_cycles = Signal(32)
        counting = Signal()
        m.d.comb += [self.cycles.eq(cycles), self.mac_cycles.eq(mac_cycles),
                     self.gemm_cycles.eq(gemm_cycles), self.busy.eq(counting)]
        with m.If(counting):
            m.d.sync += cycles.eq(cycles + 1)

        # ---- the layer engine registers ----------------------------------------------------------
        L_mode = Signal(2)       # 0 gelu, 1 bias, 2 logit, 3 head
        L_gelu = Signal(2)
        L_in_base = Signal(range(P.act_depth + 1))
        L_in_stride = Signal(range(max(d, h) + 1))
        L_K = Signal(range(max(d, h) + 1))
        L_out = Signal(range(max(d, h) + 1))
        L_w_base = Signal(range(P.weights_depth + 1))
        L_b_base = Signal(range(P.biases_depth + 1))
        L_out_base = Signal(range(max(P.act_depth, P.biases_depth) + 1))
        L_out_stride = Signal(range(max(d, h) + 1))
        L_rows = Signal(range(n_max + 1))
        MODES = {"gelu": 0, "bias": 1, "logit": 2, "head": 3}

        # values the layer writes back: rows (logit layers: one per row) or rows x outputs. The
        # product of n and a layer constant is a sum of shifted copies of n, formed while the
        # layer loads: an L_rows * L_out multiplier at the layer start was placed on a distant
        # DSP block and became the ULX3S critical path (16 ns).
        L_outputs = Signal(range(n_max * max(d, h) + 1))

        def times_n(constant):
            return sum((n << b) for b in range(constant.bit_length()) if constant >> b & 1)

        def load_layer(layer, head_index):
            rows = 1 if layer.single_row else n
            if layer.mode == "logit":
                outputs = rows
            elif layer.single_row:
                outputs = layer.out
            else:
                outputs = times_n(layer.out)
            return [L_outputs.eq(outputs),
                    L_mode.eq(MODES[layer.mode]), L_gelu.eq(layer.gelu),
                    L_in_base.eq(layer.in_base), L_in_stride.eq(layer.in_stride),
                    L_K.eq(layer.K), L_out.eq(layer.out), L_w_base.eq(layer.w_base),
                    L_b_base.eq(layer.b_base), L_out_base.eq(layer.out_base),
                    L_out_stride.eq(layer.out_stride), L_rows.eq(1 if layer.single_row else n)]

        # GELU parameters follow the layer (the engine drains before the layer changes)
        for gelu in gelus:
            for idx, name in enumerate(GELU_LAYERS):
                with m.If(L_gelu == idx):
                    m.d.comb += [gelu.in_multiplier.eq(getattr(prm, f"{name}_in_mul")),
                                 gelu.in_shift.eq(getattr(prm, f"{name}_in_shift")),
                                 gelu.out_multiplier.eq(getattr(prm, f"{name}_out_mul")),
                                 gelu.out_shift.eq(getattr(prm, f"{name}_out_shift"))]
            m.d.comb += [gelu.a.eq(prm.gelu_a), gelu.one.eq(prm.gelu_one)]
        m.d.comb += ln.eps.eq(prm.eps)

        # two logical scratchpad write ports; each goes to the bank of its address parity (a
        # pair written together is always A, A + 1: never the same bank)
        act_wa = [Signal(range(P.act_depth + 1), name=f"act_wa{v}") for v in range(2)]
        act_wd = [Signal(8, name=f"act_wd{v}") for v in range(2)]
        act_we = [Signal(R, name=f"act_we{v}") for v in range(2)]
        for k in range(2):
            with m.If(act_we[0].any() & (act_wa[0][0] == k)):
                m.d.comb += [act_wr[k].addr.eq(act_wa[0] >> 1),
                             act_wr[k].data.eq(Cat(*[act_wd[0] for _ in range(R)])),
                             act_wr[k].en.eq(act_we[0])]
            with m.Elif(act_we[1].any() & (act_wa[1][0] == k)):
                m.d.comb += [act_wr[k].addr.eq(act_wa[1] >> 1),
                             act_wr[k].data.eq(Cat(*[act_wd[1] for _ in range(R)])),
                             act_wr[k].en.eq(act_we[1])]
        with m.If(L_mode == MODES["logit"]):
            m.d.comb += [rq16.multiplier.eq(prm.logit_mul), rq16.shift.eq(prm.logit_shift)]
        with m.Else():
            m.d.comb += [rq16.multiplier.eq(prm.head_mul), rq16.shift.eq(prm.head_shift)]

        # ---- GEMM issue (operands into the array) ------------------------------------------------
        gemm_start = Signal()          # pulse: start the layer in the L_* registers
        issuing = Signal()
        tg = Signal(range(G + 1))
        og = Signal(range(max(d, h) + 1))
        kk = Signal(range(max(d, h) + 1))
        a_tile = Signal(range(P.act_depth + 1))
        w_tile = Signal(range(P.weights_depth + 1))
        rows_left = Signal(range(n_max + R + 1))
        # Operands reach the array through a register slice: the activation read (block RAM
        # output, depth mux, bank mux) straight into the array's operand register was the ULX3S
        # critical path at 66.9 MHz (15 ns, half of it routing to the array).
        m.submodules.op_skid = op_skid = SkidBuffer(array.operands.payload.shape())
        wiring.connect(m, op_skid.o, array.operands)
        advance = op_skid.i.ready
        act_ra = Signal(range(P.act_depth + 1))
        m.d.comb += act_ra.eq(a_tile + kk)
        for k in range(2):
            m.d.comb += [act_rd[k].addr.eq(act_ra >> 1), act_rd[k].en.eq(advance)]
        m.d.comb += [w_rd.addr.eq(w_tile + kk), w_rd.en.eq(advance),
                     rows_left.eq(L_rows - tg * R)]
        # the issued beat and the scratchpad bank of its word, aligned with the reads' data
        rd, _ = BankedMemory.aligned(m, {
            "valid": issuing, "first": kk == 0, "last": kk == L_K - 1,
            "nrows": Mux(rows_left >= R, R, rows_left), "bank": act_ra[0],
        }, "gemm_rd", en=advance)
        rd_valid, rd_first, rd_last, rd_nrows = rd["valid"], rd["first"], rd["last"], rd["nrows"]
        act_rdata = Signal(8 * R)
        m.d.comb += act_rdata.eq(Mux(rd["bank"], act_rd[1].data, act_rd[0].data))
        ops = op_skid.i.payload
        m.d.comb += [op_skid.i.valid.eq(rd_valid), ops.first.eq(rd_first),
                     ops.last.eq(rd_last), ops.nrows.eq(rd_nrows)]
        for r in range(R):
            m.d.comb += ops.a[r].eq(act_rdata.word_select(r, 8).as_signed())
        for c in range(C):
            m.d.comb += ops.b[c].eq(w_rd.data.word_select(c, 8).as_signed())
        with m.If(rd_valid & advance):
            m.d.sync += mac_cycles.eq(mac_cycles + 1)

        with m.If(gemm_start):
            m.d.sync += [issuing.eq(1), tg.eq(0), og.eq(0), kk.eq(0), a_tile.eq(L_in_base),
                         w_tile.eq(L_w_base)]
        with m.Elif(issuing & advance):
            with m.If(kk == L_K - 1):
                m.d.sync += kk.eq(0)
                with m.If((og + 1) * C >= L_out):
                    m.d.sync += [og.eq(0), w_tile.eq(L_w_base)]
                    with m.If((tg + 1) * R >= L_rows):
                        m.d.sync += issuing.eq(0)
                    with m.Else():
                        m.d.sync += [tg.eq(tg + 1), a_tile.eq(a_tile + L_in_stride)]
                with m.Else():
                    m.d.sync += [og.eq(og + 1), w_tile.eq(w_tile + L_K)]
            with m.Else():
                m.d.sync += kk.eq(kk + 1)

        # ---- post-processing of result beats ----------------------------------------------------
        # tracker mirrors the issue order: (ptg, pog, pr) of the beat held in `beat`. Two stages:
        #   V  `beat` (+ the bias words, read from b_mem at the registered word address b_addr):
        #      pick the lane(s), add the bias, form z0 - z1, and compute the side data;
        #   S  those values in registers (s_*), handed to the GELU pair / the int16 requantiser /
        #      the bias write-back.
        # The S register exists for timing: without it the bias read, the lane multiplexer, the
        # 33-bit bias add, the z0 - z1 subtraction and the requantiser's input selection were one
        # cycle. S moves whenever it is empty or its value is taken (s_adv), so V's lanes are
        # consumed at one per cycle (two in gelu mode) exactly as before, one cycle later.
        beat = Signal(data.ArrayLayout(signed(32), C))
        beat_full = Signal()
        ptg = Signal(range(G + 1))
        pog = Signal(range(max(d, h) + 1))
        pr = Signal(range(R))
        lane = Signal(range(C))
        outputs_left = Signal(range(n_max * max(d, h) + 2))   # values still to be written back
        # word addresses kept as counters beside (ptg, pog), so no adder or multiplier of the
        # tracker sits in front of the bias memory or the write-back address
        b_addr = Signal(range(P.biases_depth + 1))            # L_b_base + pog
        row_base = Signal(range(P.act_depth + max(d, h) + 1))  # L_out_base + ptg * L_out_stride
        m.d.comb += b_rd.addr.eq(b_addr)
        t_cur = Signal(range(n_max + R + 1))
        o_cur = Signal(range(max(d, h) + C + 1))
        m.d.comb += [t_cur.eq(ptg * R + pr), o_cur.eq(pog * C + lane)]
        # outputs of the layer from this beat's first lane on (L_out - pog * C), kept as a counter:
        # the lanes used in the beat and the last-tile test are then one compare each, which
        # keeps the result.ready handshake into the MAC array short
        o_left = Signal(range(max(d, h) + 1))
        # The beat's last lane for one and for two lanes per cycle (lane_count - 1 and
        # max(lane_count - 2, 0), lane_count = min(o_left, C)), registers that move with o_left:
        # computed from o_left in the cycle, they put two compares and an adder in front of
        # result.ready, which loads `beat` and the lane counter (the 68.5 MHz ULX3S path).
        lane_last = Signal(range(C))
        pair_last = Signal(range(C))

        def beat_lanes(outputs_left):
            """Set lane_last and pair_last for a beat with `outputs_left` outputs from lane 0."""
            return [lane_last.eq(Mux(outputs_left >= C, C - 1, outputs_left - 1)),
                    pair_last.eq(Mux(outputs_left >= C, max(C - 2, 0),
                                     Mux(outputs_left >= 2, outputs_left - 2, 0)))]
        # value = accumulator + bias of lane `lane`; value1 = the next lane (GELU pairs)
        value = Signal(signed(33))
        value1 = Signal(signed(33))
        bias_words = b_rd.data
        m.d.comb += [value.eq(beat[0]), value1.eq(beat[0])]
        for c in range(C):
            with m.If(lane == c):
                m.d.comb += value.eq(beat[c] + bias_words[c])
                if c + 1 < C:
                    m.d.comb += value1.eq(beat[c + 1] + bias_words[c + 1])
        z_diff = Signal(signed(34))
        m.d.comb += z_diff.eq((beat[0] + bias_words[0]) - (beat[1] + bias_words[1]))

        # gelu mode consumes two lanes per cycle (the second only if the tile has it)
        pair = Signal()
        has_second = Signal()
        m.d.comb += [pair.eq(L_mode == MODES["gelu"]),
                     has_second.eq(pair & (lane < lane_last))]
        lane_done = Signal()      # the current lane(s) of `beat` moved into S this cycle
        last_lane = Signal()
        m.d.comb += last_lane.eq(Mux(L_mode == MODES["logit"], 1,
                                     Mux(pair, lane >= pair_last, lane == lane_last)))

        # the S register, then a skid buffer whose output the consumers (below) take, setting
        # s_taken. S advances on the skid's registered ready: with the consumers' acceptance
        # (FIFO space, GELU and requantiser ready, the mode) in S's advance, the lane logic,
        # result.ready and the loads of `beat` and the lane counter hung off it (72.6 MHz on
        # the ULX3S). One cycle more of latency, the same throughput.
        side_layout = data.StructLayout({"addr": range(P.act_depth + 1), "lane": range(R),
                                         "o": range(max(d, h) + C + 1), "second": 1})
        s_layout = data.StructLayout({
            "val0": signed(34),          # value (gelu / bias / head) or z0 - z1 (logit)
            "val1": signed(33),          # value1 (gelu: the second channel)
            "side": side_layout,
            "t": range(n_max + R + 1),
            "blane": range(C),           # bias mode: the lane, last lane and word of the value
            "blast": 1,
            "bword": range(max(P.act_depth, P.biases_depth) + max(d, h) + 1)})
        S = Signal(s_layout)
        S_v = Signal()
        m.submodules.s_skid = s_skid = SkidBuffer(s_layout)
        s_adv = Signal()
        m.d.comb += [s_skid.i.valid.eq(S_v), s_skid.i.payload.eq(S),
                     s_adv.eq(~S_v | s_skid.i.ready), lane_done.eq(beat_full & s_adv)]
        with m.If(s_adv):
            m.d.sync += [S_v.eq(beat_full),
                         S.val0.eq(Mux(L_mode == MODES["logit"], z_diff, value)),
                         S.val1.eq(value1),
                         S.side.addr.eq(row_base + o_cur), S.side.lane.eq(pr),
                         S.side.o.eq(o_cur), S.side.second.eq(has_second),
                         S.t.eq(t_cur), S.blane.eq(lane), S.blast.eq(last_lane),
                         S.bword.eq(L_out_base + pog)]
        s_out = s_skid.o.payload
        s_v, s_val0, s_val1, s_side = s_skid.o.valid, s_out.val0, s_out.val1, s_out.side
        s_t, s_blane, s_blast, s_bword = s_out.t, s_out.blane, s_out.blast, s_out.bword
        s_taken = Signal()
        m.d.comb += s_skid.o.ready.eq(s_taken)

        with m.If(lane_done):
            with m.If(last_lane):
                m.d.sync += beat_full.eq(0)
                with m.If((pr == R - 1) | (t_cur + 1 >= L_rows)):
                    m.d.sync += pr.eq(0)
                    with m.If(o_left <= C):
                        m.d.sync += [pog.eq(0), ptg.eq(ptg + 1), b_addr.eq(L_b_base),
                                     row_base.eq(row_base + L_out_stride), o_left.eq(L_out),
                                     *beat_lanes(L_out)]
                    with m.Else():
                        m.d.sync += [pog.eq(pog + 1), b_addr.eq(b_addr + 1),
                                     o_left.eq(o_left - C), *beat_lanes(o_left - C)]
                with m.Else():
                    m.d.sync += pr.eq(pr + 1)
            with m.Else():
                m.d.sync += lane.eq(lane + Mux(pair, 2, 1))
        # the next beat is taken in the cycle the last lane of this one is consumed (no bubble).
        # A skid buffer sits between the array and `beat`: this ready comes out of the lane
        # logic (o_left, mode, S), and straight into the array it drove the enables of its
        # drain registers across the chip (the 68.7 MHz ULX3S critical path, 14.6 ns).
        m.submodules.result_skid = result_skid = SkidBuffer(array.result.payload.shape())
        wiring.connect(m, array.result, result_skid.i)
        result = result_skid.o
        m.d.comb += result.ready.eq(~beat_full | (lane_done & last_lane))
        with m.If(result.valid & result.ready):
            m.d.sync += [beat.eq(result.payload), beat_full.eq(1), lane.eq(0)]

        # the write-back side (act/bias/dz/hw memories), with the gsum accumulation for L1
        in_l1 = Signal()
        write_count = Signal(2)   # values written back this cycle
        with m.If(gemm_start):
            m.d.sync += [ptg.eq(0), pog.eq(0), pr.eq(0), b_addr.eq(L_b_base),
                         row_base.eq(L_out_base), o_left.eq(L_out), *beat_lanes(L_out)]

        # mode gelu: S -> GELU pair with (addr, lane, o, second) on the side FIFO
        # deep enough for every beat in flight in a GELU (the GELUs never see back-pressure)
        m.submodules.gfifo = gfifo = SyncFIFOBuffered(width=s_side.shape().size, depth=32)
        m.d.comb += gfifo.w_data.eq(s_side)
        with m.If(s_v & pair):
            m.d.comb += [gelu0.i.valid.eq(gfifo.w_rdy), gelu0.i.payload.eq(s_val0),
                         gelu1.i.valid.eq(gfifo.w_rdy), gelu1.i.payload.eq(s_val1)]
            with m.If(gelu0.i.ready & gfifo.w_rdy):
                m.d.comb += [gfifo.w_en.eq(1), s_taken.eq(1)]
        g_side = Signal(side_layout)
        m.d.comb += [g_side.eq(gfifo.r_data), gelu0.o.ready.eq(1), gelu1.o.ready.eq(1)]
        # global-half sums: channel o -> index o - d/2, bank = index parity (a pair's two
        # indices differ by one, so they never share a bank)
        g_index = [Signal(range(d), name=f"gsum_index{v}") for v in range(2)]
        g_value = [gelu0.o.payload, gelu1.o.payload]
        g_en = [Signal(name=f"gsum_en{v}") for v in range(2)]
        m.d.comb += [g_index[0].eq(g_side.o - d // 2), g_index[1].eq(g_side.o + 1 - d // 2)]
        with m.If(gelu0.o.valid):
            m.d.comb += [gfifo.r_en.eq(1), act_wa[0].eq(g_side.addr),
                         act_wd[0].eq(gelu0.o.payload), act_we[0].eq(1 << g_side.lane),
                         write_count.eq(1 + g_side.second),
                         g_en[0].eq(in_l1 & (g_side.o >= d // 2)),
                         g_en[1].eq(in_l1 & g_side.second & (g_side.o + 1 >= d // 2))]
            with m.If(g_side.second):
                m.d.comb += [act_wa[1].eq(g_side.addr + 1), act_wd[1].eq(gelu1.o.payload),
                             act_we[1].eq(1 << g_side.lane)]
        for k in range(2):
            for v in range(2):
                with m.If(g_index[v][0] == k):
                    m.d.comb += gsum_rd[k].addr.eq(g_index[v] >> 1)
                    with m.If(g_en[v]):
                        m.d.comb += [gsum_wr[k].addr.eq(g_index[v] >> 1), gsum_wr[k].en.eq(1),
                                     gsum_wr[k].data.eq(gsum_rd[k].data + g_value[v])]

        # mode bias: write value (acc + b2) into the bias2 word lane
        bias_acc = Signal(data.ArrayLayout(signed(32), C))
        with m.If(s_v & (L_mode == MODES["bias"])):
            m.d.comb += [s_taken.eq(1), write_count.eq(1)]
            for c in range(C):
                with m.If(s_blane == c):
                    m.d.sync += bias_acc[c].eq(s_val0)
            with m.If(s_blast):
                m.d.comb += [b_wr.addr.eq(s_bword), b_wr.en.eq(1)]
                for c in range(C):
                    m.d.comb += b_wr.data[c].eq(Mux(s_blane == c, s_val0, bias_acc[c]))

        # modes logit / head: one value per cycle through the int16 requantiser; (t, o) of the
        # values in flight wait in a small FIFO (the requantiser never stalls: o.ready = 1)
        rq_side = Signal(data.StructLayout({"t": range(n_max + R + 1),
                                            "o": range(max(d, h) + C + 1)}))
        m.submodules.rqfifo = rqfifo = SyncFIFOBuffered(width=rq_side.shape().size,
                                                        depth=Requantizer.LATENCY + 4)
        rq_out_side = Signal.like(rq_side)
        m.d.comb += [rq_side.t.eq(s_t), rq_side.o.eq(s_side.o), rqfifo.w_data.eq(rq_side),
                     rq_out_side.eq(rqfifo.r_data), rq16.o.ready.eq(1)]
        with m.If(s_v & ((L_mode == MODES["logit"]) | (L_mode == MODES["head"]))):
            m.d.comb += [rq16.i.valid.eq(rqfifo.w_rdy), rq16.i.payload[0].eq(s_val0)]
            with m.If(rq16.i.ready & rqfifo.w_rdy):
                m.d.comb += [s_taken.eq(1), rqfifo.w_en.eq(1)]
        # one register stage after the requantiser: the head sigmoid and the t * h + i address
        # arithmetic get a cycle of their own before the dz / hw memory write
        w_v, w_logit = Signal(), Signal()
        w_addr = Signal(range(n_max * h + R * h + C + 1))
        w_dz = Signal(signed(16))
        w_hw = Signal(unsigned(9))
        hw_value = plan_sigmoid(m, rq16.o.payload[0], self.sigmoid, "head_sig")
        m.d.sync += [w_v.eq(rq16.o.valid), w_logit.eq(L_mode == MODES["logit"]),
                     w_addr.eq(rq_out_side.t * h + Mux(L_mode == MODES["logit"], head,
                                                       rq_out_side.o)),
                     w_dz.eq(rq16.o.payload[0]), w_hw.eq(hw_value)]
        with m.If(rq16.o.valid):
            m.d.comb += rqfifo.r_en.eq(1)
        with m.If(w_v):
            m.d.comb += write_count.eq(1)
            with m.If(w_logit):
                m.d.comb += [dz_wr.addr.eq(w_addr), dz_wr.data.eq(w_dz), dz_wr.en.eq(1)]
            with m.Else():
                m.d.comb += [hw_wr.addr.eq(w_addr), hw_wr.data.eq(w_hw), hw_wr.en.eq(1)]

        with m.If(gemm_start):
            m.d.sync += outputs_left.eq(L_outputs)
        with m.Else():
            m.d.sync += outputs_left.eq(outputs_left - write_count)
        layer_done = Signal()
        m.d.comb += layer_done.eq(~issuing & (outputs_left == 0))

        # ---- LayerNorm feed / write-back ---------------------------------------------------------
        ln_feed = Signal()                  # LN phase: stream tokens of head `head` into the LN
        ln_t = Signal(range(n_max + 1))     # candidate index of the next read
        ln_j = Signal(range(d))
        ln_addr = Signal(range((n_max + 1) * D + 1))
        ln_ra = Signal()                    # a read for the LN is in the token buffer's pipeline
        ln_rv = Signal()                    # tok_rd.data holds a beat for the LN
        # ln_q / ln_qv: that beat once more in a register, so the block-RAM output does not run
        # straight into the LayerNorm's square-and-accumulate; one enable (ln_adv) moves both
        ln_q = Signal(signed(8))
        ln_qv = Signal()
        ln_issue = Signal()
        tok_rd_addr_ln = Signal.like(ln_addr)
        ln_adv = Signal()
        m.d.comb += [ln_adv.eq(~ln_qv | ln.i.ready), ln.i.valid.eq(ln_qv),
                     ln.i.payload.eq(ln_q), ln_issue.eq(ln_feed & (ln_t < n)),
                     tok_rd_addr_ln.eq(ln_addr)]
        # LN outputs: y in order (t, j); sums in order t
        ly_t = Signal(range(n_max + 1))
        ly_j = Signal(range(d))
        ls_t = Signal(range(n_max + 1))
        ly_tg = Signal(range(G + 1))
        ly_r = Signal(range(R))
        ls_addr = Signal(range(P.act_depth + 1))   # E word of the next mean: E + (t // R) h + i
        ls_r = Signal(range(R))
        m.d.comb += [ln.o.ready.eq(1), ln.sums.ready.eq(1)]
        e_val = Signal(signed(8))
        m.d.comb += e_val.eq((ln.sums.payload + (1 << (lg - 1))) >> lg)

        # ---- decision state ---------------------------------------------------------------------
        dt = Signal(range(n_max + 1))
        di = Signal(range(h + 1))
        s_wdz = Signal(signed(34))
        s_wp = Signal(unsigned(24))
        s_w = Signal(unsigned(16))
        s_p = Signal(unsigned(16))
        keep_bit = Signal()
        kept = Signal(range(n_max + 1))
        dropped = Signal(range(n_max + 1))
        den = Signal(unsigned(24))
        pi_num = Signal(unsigned(24))       # the keep-score division, registered in DECIDE_RULE
        pi_den = Signal(unsigned(16))
        keep_mem = Signal(n_max)           # one bit per candidate (flip-flops: n_max bits)
        # keep_mem read in visiting order: a copy loaded at the start of the package and output
        # passes and shifted right as their row index advances, so bit 0 is the current row
        # (instead of an n_max-to-1 multiplexer indexed by the row counter)
        keep_sh = Signal(n_max + 1)

        # The decision pipeline. dz / hw of token t, head i sit at t * h + i, and the decision
        # visits them in that order, so the read address is a counter (dec_a) rather than a
        # multiply-add. Stages, one cycle each, all moving every cycle (nothing downstream stalls):
        #   D1 registered dz / hw memory reads (address dec_a)
        #   D2 dz, hw in registers
        #   D3 p = sigmoid(dz)
        #   D4 hw * dz, hw * p (multipliers with registered outputs)
        #   and the four sums accumulate the D4 registers.
        # A token issues its h reads in DECIDE, then waits for its last value to be summed.
        dec_a = Signal(range(n_max * h + 1))
        m.d.comb += [dz_rd.addr.eq(dec_a), hw_rd.addr.eq(dec_a)]
        d1_v, d1_last = Signal(), Signal()
        d2_v, d2_last = Signal(), Signal()
        d3_v, d3_last = Signal(), Signal()
        d4_v, d4_last = Signal(), Signal()
        dz2, dz3 = Signal(signed(16)), Signal(signed(16))
        hw2, hw3, hw4 = Signal(unsigned(9)), Signal(unsigned(9)), Signal(unsigned(9))
        p3, p4 = Signal(unsigned(9)), Signal(unsigned(9))
        wdz4 = Signal((hw3 * dz3).shape())
        wp4 = Signal((hw3 * p3).shape())
        p_sig = plan_sigmoid(m, dz2, self.sigmoid, "dec_sig")
        m.d.sync += [d1_v.eq(0), d1_last.eq(0),         # overridden while DECIDE issues
                     d2_v.eq(d1_v), d2_last.eq(d1_last), dz2.eq(dz_rd.data), hw2.eq(hw_rd.data),
                     d3_v.eq(d2_v), d3_last.eq(d2_last), dz3.eq(dz2), hw3.eq(hw2), p3.eq(p_sig),
                     d4_v.eq(d3_v), d4_last.eq(d3_last), wdz4.eq(hw3 * dz3), wp4.eq(hw3 * p3),
                     hw4.eq(hw3), p4.eq(p3)]
        with m.If(d4_v):
            m.d.sync += [s_wdz.eq(s_wdz + wdz4), s_wp.eq(s_wp + wp4), s_w.eq(s_w + hw4),
                         s_p.eq(s_p + p4)]

        # ---- package / output state -------------------------------------------------------------
        pt = Signal(range(n_max + 1))
        pc = Signal(range(D))
        prow = Signal(range((n_max + 1) * D + 1))
        p_rv, p_c_d, p_first = Signal(), Signal(range(D)), Signal()
        p_w = Signal(unsigned(10))
        # the package accumulation after the token read: PR the read's second cycle (the token
        # buffer's bank register), PK1 the byte in a register, PK2 the product w * x in a
        # register and the distributed-RAM read of acc[c], PK3 both in registers and the write
        # acc[c] = acc + product. (Read, add and write in one cycle were the ULX3S critical
        # path at 69.7 MHz.) The same column comes back only D cycles later, so the read never
        # sees a stale value.
        pr_v, pr_c, pr_w = Signal(), Signal(range(D)), Signal(unsigned(10))
        pk1_v, pk2_v = Signal(), Signal()
        pk1_x = Signal(signed(8))
        pk1_w = Signal(unsigned(10))
        pk1_c, pk2_c = Signal(range(D)), Signal(range(D))
        pk2_prod = Signal((pk1_w * pk1_x).shape())
        pk3_v, pk3_c = Signal(), Signal(range(D))
        pk3_prod = Signal.like(pk2_prod)
        pk3_acc = Signal(signed(32))
        pkg_den = Signal(unsigned(24))      # the reciprocal's input, registered during PKG
        pkg_r = Signal(PKG_FRAC + 2)
        out_ra = Signal()                   # an output read is in the token buffer's pipeline
        out_rv = Signal()                   # tok_rd.data holds an output byte
        out_row = Signal(range(n_max + 2))
        out_c = Signal(range(D))
        out_addr = Signal(range((n_max + 1) * D + 1))
        pkg_sent = Signal(range(D + 1))
        pkg_recv = Signal(range(D + 1))

        # token memory read address: LN phase, package phase, or output phase
        phase_pkg = Signal()
        phase_out = Signal()
        tok_rd_addr_pkg = Signal.like(ln_addr)
        m.d.comb += tok_rd.addr.eq(Mux(phase_pkg, tok_rd_addr_pkg,
                                       Mux(phase_out, out_addr, tok_rd_addr_ln)))

        # package accumulation pipeline (see pk1_v): runs on its own, the PKG state feeds it
        m.d.sync += [pr_v.eq(p_rv), pr_c.eq(p_c_d), pr_w.eq(p_w),
                     pk1_v.eq(pr_v), pk1_x.eq(tok_rd.data), pk1_w.eq(pr_w), pk1_c.eq(pr_c),
                     pk2_v.eq(pk1_v), pk2_prod.eq(pk1_w * pk1_x), pk2_c.eq(pk1_c)]
        # the read address is the pipeline's column while it runs, else the output's (OUT_PKG);
        # chosen by pk2_v, a register, rather than by the sequencer state
        m.d.comb += acc_rd.addr.eq(Mux(pk2_v, pk2_c, out_c))
        m.d.sync += [pk3_v.eq(pk2_v), pk3_c.eq(pk2_c), pk3_prod.eq(pk2_prod),
                     pk3_acc.eq(Mux(p_first, 0, acc_rd.data))]
        with m.If(pk2_v & (pk2_c == D - 1)):
            m.d.sync += p_first.eq(0)
        with m.If(pk3_v):
            m.d.comb += [acc_wr.addr.eq(pk3_c), acc_wr.en.eq(1),
                         acc_wr.data.eq(pk3_acc + pk3_prod)]

        # global mean pipeline: GM0 the distributed-RAM read of gsum, GM1 the product gsum * rn
        # (one 18 x 18 multiply), GM2 the RHU rounding; saturation and the write follow GM2.
        # (Read and multiply in one cycle were the ULX3S critical path at 61.8 MHz.)
        gm0_v, gm1_v, gm2_v = Signal(), Signal(), Signal()
        gm0_i, gm1_i, gm2_i = (Signal(range(d // 2)) for _ in range(3))
        gm_s = Signal(signed(gsum_w))
        gm0_s = Signal(signed(gsum_w))
        gm1_p = Signal((gm_s * rn).shape())
        gm_round = (gm1_p + (1 << (RN_FRAC - 1))) >> RN_FRAC
        gm2_r = Signal(gm_round.shape())
        gq = Signal(signed(8))
        m.d.comb += gq.eq(Mux(gm2_r > 127, 127, Mux(gm2_r < -128, -128, gm2_r)))
        m.d.sync += [gm0_v.eq(0),                  # overridden while GMEAN issues
                     gm1_v.eq(gm0_v), gm1_i.eq(gm0_i), gm1_p.eq(gm0_s * rn),
                     gm2_v.eq(gm1_v), gm2_i.eq(gm1_i), gm2_r.eq(gm_round)]

        # ---- the sequencer ----------------------------------------------------------------------
        tk_row = Signal(range(n_max + 2))     # token load: row and column of the next byte
        tk_col = Signal(range(D))
        tk_done = Signal()
        load_idx = Signal(range(max(P.weights_depth, P.biases_depth, (n_max + 1) * D) + 1))
        b_idx = Signal(range(P.biases_depth + 1))
        g_idx = Signal(range(d // 2 + 1))
        head_layers = [P.head_layers(i) for i in range(h)]
        tail = P.tail_layers()

        with m.FSM(name="seq") as fsm:
            with m.State("IDLE"):
                m.d.comb += self.cmd.ready.eq(1)
                with m.If(self.cmd.valid):
                    m.d.sync += [n.eq(self.cmd.payload.n), has_pkg.eq(self.cmd.payload.has_package),
                                 load_idx.eq(0), b_idx.eq(0), cycles.eq(0), mac_cycles.eq(0),
                                 gemm_cycles.eq(0), counting.eq(1), head.eq(0), kept.eq(0),
                                 dropped.eq(0), den.eq(0), ln_addr.eq(0), tk_row.eq(0),
                                 tk_col.eq(0), tk_done.eq(0)]
                    m.next = "LOAD"
            with m.State("LOAD"):
                # weights, biases and tokens arrive concurrently
                w_done = load_idx >= P.weights_depth
                m.d.comb += [self.weights.ready.eq(~w_done), w_wr.addr.eq(load_idx),
                             w_wr.data.eq(self.weights.payload), w_wr.en.eq(self.weights.valid & ~w_done)]
                with m.If(self.weights.valid & ~w_done):
                    m.d.sync += load_idx.eq(load_idx + 1)
                b_done = b_idx >= P.bias2
                m.d.comb += [self.biases.ready.eq(~b_done), b_wr.addr.eq(b_idx),
                             b_wr.data.eq(self.biases.payload), b_wr.en.eq(self.biases.valid & ~b_done)]
                with m.If(self.biases.valid & ~b_done):
                    m.d.sync += b_idx.eq(b_idx + 1)
                # tokens: (n + 1) rows of D bytes, counted by row and column (no (n + 1) * D)
                m.d.comb += [self.tokens.ready.eq(~tk_done), tok_wr.addr.eq(ln_addr),
                             tok_wr.data.eq(self.tokens.payload),
                             tok_wr.en.eq(self.tokens.valid & ~tk_done)]
                with m.If(self.tokens.valid & ~tk_done):
                    m.d.sync += ln_addr.eq(ln_addr + 1)
                    with m.If(tk_col == D - 1):
                        m.d.sync += [tk_col.eq(0), tk_row.eq(tk_row + 1)]
                        with m.If(tk_row == n):
                            m.d.sync += tk_done.eq(1)
                    with m.Else():
                        m.d.sync += tk_col.eq(tk_col + 1)
                with m.If(w_done & b_done & tk_done):
                    m.next = "RECIP_N"
            with m.State("RECIP_N"):
                m.d.comb += [recip_n.i.valid.eq(1), recip_n.i.payload.eq(n)]
                with m.If(recip_n.i.ready):
                    m.next = "RECIP_N_WAIT"
            with m.State("RECIP_N_WAIT"):
                m.d.comb += recip_n.o.ready.eq(1)
                with m.If(recip_n.o.valid):
                    m.d.sync += rn.eq(recip_n.o.payload.value)
                    m.next = "LN_START"
            with m.State("LN_START"):
                m.d.sync += [ln_t.eq(0), ln_j.eq(0), ln_addr.eq(D + head * d), ln_ra.eq(0),
                             ln_rv.eq(0), ln_qv.eq(0),
                             ly_t.eq(0), ly_j.eq(0), ls_t.eq(0), ly_tg.eq(0), ly_r.eq(0),
                             ls_addr.eq(P.act["E"] + head), ls_r.eq(0)]
                m.next = "LN"
            with m.State("LN"):
                m.d.comb += ln_feed.eq(1)
                m.d.comb += tok_rd.en.eq(ln_adv)
                with m.If(ln_adv):
                    m.d.sync += [ln_ra.eq(ln_issue), ln_rv.eq(ln_ra), ln_qv.eq(ln_rv),
                                 ln_q.eq(tok_rd.data)]
                    with m.If(ln_issue):
                        with m.If(ln_j == d - 1):
                            m.d.sync += [ln_j.eq(0), ln_t.eq(ln_t + 1), ln_addr.eq(ln_addr + D - d + 1)]
                        with m.Else():
                            m.d.sync += [ln_j.eq(ln_j + 1), ln_addr.eq(ln_addr + 1)]
                with m.If(ln.o.valid):
                    m.d.comb += [act_wa[0].eq(P.act["Y"] + ly_tg * d + ly_j),
                                 act_wd[0].eq(ln.o.payload), act_we[0].eq(1 << ly_r)]
                    m.d.sync += ly_j.eq(ly_j + 1)
                    with m.If(ly_j == d - 1):
                        m.d.sync += ly_t.eq(ly_t + 1)
                        with m.If(ly_r == R - 1):
                            m.d.sync += [ly_r.eq(0), ly_tg.eq(ly_tg + 1)]
                        with m.Else():
                            m.d.sync += ly_r.eq(ly_r + 1)
                with m.Elif(ln.sums.valid):
                    # the head mean for the importance branch (LN y has priority on the port)
                    m.d.comb += [act_wa[0].eq(ls_addr),
                                 act_wd[0].eq(e_val), act_we[0].eq(1 << ls_r)]
                    m.d.sync += ls_t.eq(ls_t + 1)
                    with m.If(ls_r == R - 1):
                        m.d.sync += [ls_r.eq(0), ls_addr.eq(ls_addr + h)]
                    with m.Else():
                        m.d.sync += ls_r.eq(ls_r + 1)
                m.d.comb += ln.sums.ready.eq(~ln.o.valid)
                with m.If((ly_t == n) & (ls_t == n)):
                    m.d.sync += g_idx.eq(0)
                    m.next = "GSUM_CLEAR"
            with m.State("GSUM_CLEAR"):
                for k in range(2):
                    with m.If(g_idx[0] == k):
                        m.d.comb += [gsum_wr[k].addr.eq(g_idx >> 1), gsum_wr[k].data.eq(0),
                                     gsum_wr[k].en.eq(1)]
                m.d.sync += g_idx.eq(g_idx + 1)
                with m.If(g_idx == d // 2 - 1):
                    m.next = "L1"

            # the per-head layer chain; each state loads the layer, starts it and waits
            def layer_states(prefix, layers_for_head, after):
                names = [f"{prefix}_{L.name}" for L in layers_for_head(0)]
                for k, lname in enumerate(names):
                    with m.State(lname):
                        for i in range(h if prefix == "H" else 1):
                            with m.If(head == i) if prefix == "H" else _nullctx():
                                m.d.sync += load_layer(layers_for_head(i)[k], i)
                        m.next = lname + "_GO"
                    with m.State(lname + "_GO"):
                        m.d.comb += gemm_start.eq(1)
                        m.next = lname + "_RUN"
                    with m.State(lname + "_RUN"):
                        m.d.sync += gemm_cycles.eq(gemm_cycles + 1)
                        if layers_for_head(0)[k].name == "l1":
                            m.d.comb += in_l1.eq(1)
                        with m.If(layer_done):
                            nxt = names[k + 1] if k + 1 < len(names) else after
                            if layers_for_head(0)[k].name == "l1":
                                m.d.sync += g_idx.eq(0)
                                nxt = "GMEAN"
                            m.next = nxt
                return names

            hl = lambda i: head_layers[i]  # noqa: E731
            names = [f"H_{L.name}" for L in hl(0)]
            # L1 is entered from GSUM_CLEAR under the name "L1"
            with m.State("L1"):
                m.next = "H_l1"
            layer_states("H", hl, "NEXT_HEAD")
            with m.State("GMEAN"):
                # g = sat8(rhu(gsum * rn, RN_FRAC)) into the G region (row 0, lane 0), through
                # the gmean pipeline (read, product, rounding) and saturated at the write
                m.d.comb += [gsum_rd[0].addr.eq(g_idx >> 1), gsum_rd[1].addr.eq(g_idx >> 1),
                             gm_s.eq(Mux(g_idx[0], gsum_rd[1].data, gsum_rd[0].data))]
                with m.If(g_idx < d // 2):
                    m.d.sync += [gm0_v.eq(1), gm0_i.eq(g_idx), g_idx.eq(g_idx + 1),
                                 gm0_s.eq(gm_s)]
                with m.If(gm2_v):
                    m.d.comb += [act_wa[0].eq(P.act["G"] + gm2_i), act_wd[0].eq(gq),
                                 act_we[0].eq(1)]
                    with m.If(gm2_i == d // 2 - 1):
                        m.next = names[1]
            with m.State("NEXT_HEAD"):
                with m.If(head == h - 1):
                    m.next = "T_v1"
                with m.Else():
                    m.d.sync += head.eq(head + 1)
                    m.next = "LN_START"
            layer_states("T", lambda i: tail, "DECIDE_START")

            with m.State("DECIDE_START"):
                m.d.sync += [dt.eq(0), di.eq(0), dec_a.eq(0), s_wdz.eq(0), s_wp.eq(0), s_w.eq(0),
                             s_p.eq(0)]
                m.next = "DECIDE"
            with m.State("DECIDE"):
                # issue the token's h reads, then wait for the last one to leave the pipeline
                with m.If(di < h):
                    m.d.sync += [d1_v.eq(1), d1_last.eq(di == h - 1), di.eq(di + 1),
                                 dec_a.eq(dec_a + 1)]
                with m.If(d4_v & d4_last):
                    m.next = "DECIDE_RULE"
            with m.State("DECIDE_RULE"):
                if self.decision == "logit":
                    rule = s_wdz > 0
                else:
                    rule = Mux(s_w > 0, 2 * s_wp >= 256 * s_w, 2 * s_p >= 256 * h)
                kb = rule & ~(has_pkg & (dt == n - 1))
                m.d.sync += [keep_bit.eq(kb), pi_num.eq(Mux(s_w > 0, s_wp, s_p)),
                             pi_den.eq(Mux(s_w > 0, s_w, h))]
                m.next = "KEEP_OUT"
            with m.State("KEEP_OUT"):
                m.d.comb += [self.keep.valid.eq(1), self.keep.payload.eq(keep_bit)]
                with m.If(self.keep.ready):
                    m.d.sync += keep_mem.bit_select(dt, 1).eq(keep_bit)
                    with m.If(keep_bit):
                        m.d.sync += kept.eq(kept + 1)
                        m.next = "DECIDE_NEXT"
                    with m.Else():
                        m.d.sync += dropped.eq(dropped + 1)
                        m.next = "PI"
            with m.State("PI"):
                m.d.comb += [div.i.valid.eq(1), div.i.payload.numerator.eq(pi_num),
                             div.i.payload.denominator.eq(pi_den)]
                with m.If(div.i.ready):
                    m.next = "PI_WAIT"
            with m.State("PI_WAIT"):
                m.d.comb += div.o.ready.eq(1)
                with m.If(div.o.valid):
                    m.d.comb += [pi_wr.addr.eq(dt), pi_wr.data.eq(div.o.payload.quotient),
                                 pi_wr.en.eq(1)]
                    m.d.sync += den.eq(den + div.o.payload.quotient)
                    m.next = "DECIDE_NEXT"
            with m.State("DECIDE_NEXT"):
                m.d.sync += [di.eq(0), s_wdz.eq(0), s_wp.eq(0), s_w.eq(0), s_p.eq(0)]
                with m.If(dt == n - 1):
                    m.d.sync += [pt.eq(0), pc.eq(0), prow.eq(D), p_rv.eq(0), p_first.eq(1),
                                 keep_sh.eq(keep_mem)]
                    with m.If(dropped == 0):
                        m.next = "OUT_START"
                    with m.Else():
                        m.next = "PKG"
                with m.Else():
                    m.d.sync += dt.eq(dt + 1)
                    m.next = "DECIDE"

            # package accumulation over the dropped tokens: acc[c] (+)= w_j * x_jc
            with m.State("PKG"):
                m.d.comb += [phase_pkg.eq(1), pi_rd.addr.eq(pt),
                             tok_rd_addr_pkg.eq(prow + pc), tok_rd.en.eq(1)]
                m.d.sync += pkg_den.eq(Mux(den == 0, dropped, den))
                is_dropped = ~keep_sh[0]
                with m.If(pt < n):
                    with m.If(~is_dropped):
                        m.d.sync += [pt.eq(pt + 1), prow.eq(prow + D), p_rv.eq(0),
                                     keep_sh.eq(keep_sh >> 1)]
                    with m.Else():
                        m.d.sync += [p_rv.eq(1), p_c_d.eq(pc),
                                     p_w.eq(Mux(den == 0, 1, pi_rd.data))]
                        with m.If(pc == D - 1):
                            m.d.sync += [pc.eq(0), pt.eq(pt + 1), prow.eq(prow + D),
                                         keep_sh.eq(keep_sh >> 1)]
                        with m.Else():
                            m.d.sync += pc.eq(pc + 1)
                with m.Else():
                    m.d.sync += p_rv.eq(0)
                    with m.If(~p_rv & ~pr_v & ~pk1_v & ~pk2_v & ~pk3_v):
                        m.next = "PKG_RECIP"
            with m.State("PKG_RECIP"):
                m.d.comb += [recip.i.valid.eq(1), recip.i.payload.eq(pkg_den)]
                with m.If(recip.i.ready):
                    m.next = "PKG_RECIP_WAIT"
            with m.State("PKG_RECIP_WAIT"):
                m.d.comb += recip.o.ready.eq(1)
                with m.If(recip.o.valid):
                    m.d.sync += pkg_r.eq(recip.o.payload.value)
                    m.next = "OUT_START"

            # output: CLS, the kept rows, then the package through the requantiser
            with m.State("OUT_START"):
                m.d.sync += [out_row.eq(0), out_c.eq(0), out_addr.eq(0), out_ra.eq(0),
                             out_rv.eq(0),
                             pkg_sent.eq(0), pkg_recv.eq(0),
                             keep_sh.eq(Cat(Const(1, 1), keep_mem))]     # row 0 = CLS: kept
                m.next = "OUT_ROWS"
            with m.State("OUT_ROWS"):
                m.d.comb += phase_out.eq(1)
                out_adv = ~out_rv | tok_out.ready
                row_kept = keep_sh[0]
                m.d.comb += [tok_out.valid.eq(out_rv),
                             tok_out.payload.eq(tok_rd.data), tok_rd.en.eq(out_adv)]
                with m.If(out_adv):
                    m.d.sync += [out_ra.eq(0), out_rv.eq(out_ra)]
                    with m.If(out_row <= n):
                        with m.If(~row_kept):
                            m.d.sync += [out_row.eq(out_row + 1), out_addr.eq(out_addr + D),
                                         keep_sh.eq(keep_sh >> 1)]
                        with m.Else():
                            m.d.sync += out_ra.eq(1)
                            with m.If(out_c == D - 1):
                                m.d.sync += [out_c.eq(0), out_row.eq(out_row + 1),
                                             out_addr.eq(out_addr + 1), keep_sh.eq(keep_sh >> 1)]
                            with m.Else():
                                m.d.sync += [out_c.eq(out_c + 1), out_addr.eq(out_addr + 1)]
                    with m.Elif(~out_ra & ~out_rv):
                        m.d.sync += out_c.eq(0)
                        m.next = "OUT_PKG_CHECK"
            with m.State("OUT_PKG_CHECK"):
                with m.If(dropped == 0):
                    m.next = "N_NEXT"
                with m.Else():
                    m.next = "OUT_PKG"
            with m.State("OUT_PKG"):
                m.d.comb += [pkg_skid.i.payload[0].eq(acc_rd.data),
                             pkg_skid.i.valid.eq(pkg_sent < D)]
                if self.normalize_package:
                    m.d.comb += [rq_pkg.multiplier.eq(pkg_r), rq_pkg.shift.eq(PKG_FRAC)]
                else:
                    m.d.comb += [rq_pkg.multiplier.eq(1), rq_pkg.shift.eq(8)]
                with m.If(pkg_skid.i.ready & (pkg_sent < D)):
                    m.d.sync += [out_c.eq(out_c + 1), pkg_sent.eq(pkg_sent + 1)]
                m.d.comb += [tok_out.valid.eq(rq_pkg.o.valid),
                             tok_out.payload.eq(rq_pkg.o.payload[0]),
                             rq_pkg.o.ready.eq(tok_out.ready)]
                with m.If(tok_out.valid & tok_out.ready):
                    m.d.sync += pkg_recv.eq(pkg_recv + 1)
                    with m.If(pkg_recv == D - 1):
                        m.next = "N_NEXT"
            with m.State("N_NEXT"):
                m.d.comb += [self.n_next.valid.eq(1),
                             self.n_next.payload.eq(1 + kept + (dropped != 0))]
                with m.If(self.n_next.ready):
                    m.d.sync += counting.eq(0)
                    m.next = "IDLE"

        # ---- per-phase cycle counters (benchmark breakdown of the cycles outside the array) ----
        for port, states in PHASES.items():
            counter = Signal(32, name=f"{port}_count")
            m.d.comb += getattr(self, port).eq(counter)
            with m.If(self.cmd.valid & self.cmd.ready):
                m.d.sync += counter.eq(0)
            with m.Elif(Cat(*[fsm.ongoing(st) for st in states]).any()):
                m.d.sync += counter.eq(counter + 1)
        return m


class _nullctx:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
