"""Model loading, the model cache and image generation.

Nothing here imports torch or diffusers at import time: the start-up chain decides when those
heavy imports happen, and tests of the request schema stay fast.
"""
