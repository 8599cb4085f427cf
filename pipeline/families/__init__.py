"""The model families, one module each, behind one registry: the rest of the code asks
``family_for(spec)`` and never compares model or pipeline names."""

from __future__ import annotations

from typing import MutableMapping

from pipeline.families.base import Family
from pipeline.families.flux import FLUX
from pipeline.families.sdxl import SDXL
from request.catalog import ModelSpec

FAMILIES: MutableMapping[str, Family] = {family.name: family for family in (SDXL, FLUX)}


def family_for(spec: ModelSpec) -> Family:
    return FAMILIES[spec.family]


__all__ = ["FAMILIES", "Family", "family_for"]
