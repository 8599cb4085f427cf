"""Sampler names callers may ask for, as a table from name to diffusers scheduler and options.

The names follow Replicate's SDXL models so existing callers keep working.
"""

from __future__ import annotations

from typing import Any, Mapping

# name -> (diffusers scheduler class name, extra config)
SCHEDULERS: Mapping[str, tuple[str, Mapping[str, Any]]] = {
    "K_EULER": ("EulerDiscreteScheduler", {}),
    "K_EULER_ANCESTRAL": ("EulerAncestralDiscreteScheduler", {}),
    "DPMSolverMultistep": ("DPMSolverMultistepScheduler", {}),
    "KarrasDPM": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),  # DPM++ 2M Karras
    "DDIM": ("DDIMScheduler", {}),
    "HeunDiscrete": ("HeunDiscreteScheduler", {}),
    "PNDM": ("PNDMScheduler", {}),
}
SCHEDULER_NAMES: tuple[str, ...] = tuple(SCHEDULERS)


def fresh_scheduler(selectable: bool, name: str, base_config: Mapping[str, Any], current: Any) -> Any:
    """A new scheduler for one pipeline call: the named one for a model whose sampler is chosen per
    request, else another instance of the model's own (schedulers keep per-run state)."""
    if selectable:
        return make_scheduler(name, base_config)
    return type(current).from_config(base_config)


def make_scheduler(name: str, base_config: Mapping[str, Any]) -> Any:
    """Build the named scheduler from the model's own scheduler config (its betas and timesteps)."""
    import diffusers

    class_name, extra = SCHEDULERS[name]
    return getattr(diffusers, class_name).from_config(base_config, **extra)
