"""The unit registry: one face for users, tests and the CLI.

>>> from vitaccel import units
>>> u = units.get("gemm")
>>> cfg = u.Config(rows=2, cols=2, m_max=8, n_max=8, k_max=8)
>>> sorted(u.golden(cfg, a=[[1, 2]], b=[[3], [4]]))
['c']

Every unit module provides ``Config`` (a frozen, validated dataclass), ``golden(cfg, **inputs)``,
``simulate(cfg, simulator=..., **inputs) -> (outputs, stats)``, ``component(cfg)``,
``random_inputs(cfg, seed)`` (demo/CLI data), ``board_config(board)`` (a default that fits that
board), ``FMAX_TARGET_MHZ`` (the nextpnr timing target per board) and ``compare(want, got)``
(list of mismatch descriptions, empty when bit-exact).
"""
from __future__ import annotations

import importlib
import pkgutil

__all__ = ["get", "names"]


def names() -> list[str]:
    """Registered unit names, sorted: every public module of this package is a unit (imported
    lazily, so `vitaccel --help` stays fast)."""
    return sorted(info.name for info in pkgutil.iter_modules(__path__)
                  if not info.name.startswith("_"))


def get(name: str):
    """The unit module called ``name``; ``ValueError`` listing the known units otherwise."""
    if name not in names():
        raise ValueError(f"unknown unit {name!r}; known units: {', '.join(names())}")
    return importlib.import_module(f"{__name__}.{name}")
