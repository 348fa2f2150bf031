"""Amaranth RTL of vitaccel: common blocks in ``common`` and one package per unit."""
