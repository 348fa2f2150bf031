"""ViTCoD: a Denser and a Sparser attention engine sharing PE lines (:mod:`.core`, built from
the components beside it) and the Q/K auto-encoder engine (:mod:`.autoencoder`)."""
from .autoencoder import AutoEncoder
from .core import VitCoDCore
from .layouts import ERR_BAD_CMD, ERR_CSC, ERR_INDEX_RANGE, cmd_layout, entry_word

__all__ = ["VitCoDCore", "AutoEncoder", "cmd_layout", "entry_word", "ERR_BAD_CMD",
           "ERR_CSC", "ERR_INDEX_RANGE"]
