"""vitaccel: vision-transformer accelerator units in Amaranth HDL.

The public face: :mod:`vitaccel.units` (the unit registry and contract), :mod:`vitaccel.cli`.
The layers live in ``vitaccel.golden`` (NumPy models), ``vitaccel.rtl`` (Amaranth),
``vitaccel.sim`` (simulation runners) and ``vitaccel.boards`` (board tops and builds).
"""
__version__ = "0.1.0"
