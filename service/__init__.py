"""One prediction from raw inputs to files (``job``), the layer ``predict.py`` calls."""
