"""What a caller may ask for: the request models (each input declared once), the catalog of models,
samplers and formats, and the safe reading of caller-supplied images. Imports nothing above it, so
a request is fully checked before anything loads."""
