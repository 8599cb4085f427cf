"""The models and what runs them: loading (``loading/``), the speed switches (``speed/``), and
generation, samplers, progress, identity and storyboards.

Torch and diffusers are imported inside the functions that need them (``speed/fp8_linear.py``,
imported only when its switch is on, is the one exception), so the start-up chain decides when the
heavy imports happen and the request layer's tests stay fast.
"""
