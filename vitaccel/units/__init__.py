"""The unit registry: one face for users, tests and the CLI.

>>> from vitaccel import units
>>> u = units.get("gemm")
>>> cfg = u.Config(rows=2, cols=2, m_max=8, n_max=8, k_max=8)
>>> sorted(u.golden(cfg, a=[[1, 2]], b=[[3], [4]]))
['c']

Every unit module provides ``Config`` (a frozen, validated dataclass), ``golden(cfg, **inputs)``,
``simulate(cfg, simulator=..., **inputs) -> (outputs, stats)``, ``component(cfg)``,
``random_inputs(cfg, seed)`` (demo/CLI data), ``board_config(board)`` (a default that fits that
board) and ``compare(want, got)`` (list of mismatch descriptions, empty when bit-exact).
"""
from __future__ import annotations

import importlib

__all__ = ["get", "names"]

# name -> module (imported lazily so `vitaccel --help` stays fast)
_UNITS = {
    "gemm": "vitaccel.units.gemm",
}


def names() -> list[str]:
    """Registered unit names, sorted."""
    return sorted(_UNITS)


def get(name: str):
    """The unit module called ``name``; ``ValueError`` listing the known units otherwise."""
    try:
        module = _UNITS[name]
    except KeyError:
        raise ValueError(f"unknown unit {name!r}; known units: {', '.join(names())}") from None
    return importlib.import_module(module)
