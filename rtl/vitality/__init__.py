"""ViTALiTy RTL: SA-General, SA-Diag, accumulator/adder/divider arrays and the core sequencer."""
from .core import VitalityCore, cmd_layout, z_layout
from .divider_array import DividerArray
from .systolic import SystolicArray

__all__ = ["VitalityCore", "SystolicArray", "DividerArray", "cmd_layout", "z_layout"]
