"""Board tops (ULX3S, iCEBreaker), UART host link, YoWASP builds and report parsing."""
