"""Build the diffusers scheduler a request names (``request.catalog.SCHEDULERS``) from the model's
own scheduler config, fresh for every pipeline call."""

from __future__ import annotations

from typing import Any, Mapping

from request.catalog import SCHEDULERS


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
