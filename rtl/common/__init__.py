"""Common RTL blocks: streams, MAC array / GEMM engine, requantiser, LOD, reciprocal."""
