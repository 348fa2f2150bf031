"""The model layer: a real ViT through the units (calibration, integer inference, evaluation, cost)."""
