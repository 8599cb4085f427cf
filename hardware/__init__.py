"""The machine: device and precision (``backend``) and the memory/precision profile (``profiles``)."""
