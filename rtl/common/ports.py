"""Port introspection: a component's stream and plain ports as ``{name: width}`` dicts.

Both the simulation harness (:mod:`vitaccel.sim.job`) and the board host link
(:mod:`vitaccel.boards.hostlink`) address a unit's ports by name and width, in signature order.
The helpers live here, beside the RTL they describe, so that neither layer has to import the other.
"""
from __future__ import annotations

from amaranth.hdl import Value
from amaranth.lib import stream, wiring

__all__ = ["stream_ports", "plain_ports"]


def stream_ports(component: wiring.Component):
    """(inputs, outputs): dicts of stream port name -> payload width, from the signature."""
    ins, outs = {}, {}
    for name, member in component.signature.members.items():
        if member.is_signature and isinstance(member.signature, stream.Signature):
            width = len(Value.cast(getattr(component, name).payload))
            (ins if member.flow == wiring.In else outs)[name] = width
    return ins, outs


def plain_ports(component: wiring.Component):
    """(inputs, outputs): dicts of plain (non-interface) port name -> width."""
    ins, outs = {}, {}
    for name, member in component.signature.members.items():
        if member.is_port:
            width = len(Value.cast(getattr(component, name)))
            (ins if member.flow == wiring.In else outs)[name] = width
    return ins, outs
