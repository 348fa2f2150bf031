"""HeatViT adaptive token selector RTL (golden twin: :mod:`vitaccel.golden.heatvit`).

Blocks, each bit-exact with the integer function of the same name in the golden model:

* :class:`~.gelu.GELU` -- ``gelu_q``: requantiser -> I-BERT polynomial -> requantiser.
* :class:`~.sigmoid.Sigmoid` -- ``sigmoid_q``: PLAN (shift-only) or hard sigmoid.
* :class:`~.layernorm.ISqrt` -- ``isqrt``: bit-serial integer square root.
* :class:`~.layernorm.LayerNorm` -- ``layernorm_q``: per-head integer LayerNorm with the shared
  reciprocal unit and :class:`ISqrt` as the inverse square root.
"""
from .gelu import GELU, GELUPoly
from .layernorm import ISqrt, LayerNorm
from .sigmoid import Sigmoid, plan_sigmoid

__all__ = ["GELU", "GELUPoly", "ISqrt", "LayerNorm", "Sigmoid", "plan_sigmoid", "Selector"]
from .selector import Selector  # noqa: E402
