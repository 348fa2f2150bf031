"""NumPy golden models: ``fixedpoint`` (the numeric contract) and one module per unit."""
