"""FACT's eager attention predictor on leading-one detectors (see ``predictor.py``)."""
from .codes import code_layout, encode, product_term
from .dot import LODotEngine
from .topk import TopKSorter
from .predictor import FACTPredictor, cmd_layout, select_layout, importance_layout

__all__ = ["FACTPredictor", "LODotEngine", "TopKSorter", "cmd_layout", "select_layout",
           "importance_layout", "code_layout", "encode", "product_term"]
