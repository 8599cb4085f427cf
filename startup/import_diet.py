"""Libraries kept out of sight while diffusers and transformers are first imported, so that they skip
integrations no request of this service uses.

Both libraries look each optional library up once, when they are first imported, and import its
integration whenever it is installed. Two of those cost most of a second each on the CPU and serve
nothing here: bitsandbytes (diffusers' quantizers import it, and it imports torch's inductor
compiler) when the hardware profile quantizes nothing, and scipy (for samplers the catalog does not
offer). During the imports stage each is hidden: ``sys.modules[name] = None`` makes
``importlib.util.find_spec`` answer None and ``import`` fail, which both libraries read as "not
installed". Right after, each is shown again, so anything that imports one later (ADetailer's
detectors, a test, an operator's code) gets it as usual; only the two libraries' own verdicts stay.
Nothing moves into the first request: a plain request never uses either.

``LAZY_IMPORTS=0`` imports everything as usual, for diagnosis.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from typing import Iterator, Mapping, Sequence

import settings
from hardware.profiles import Profile

log = logging.getLogger(__name__)

# library -> why no request of this service needs diffusers' or transformers' integration of it
DEFERRED: Mapping[str, str] = {
    "bitsandbytes": "only the bitsandbytes-quantizing hardware profiles use it, and they keep it",
    "scipy": "only samplers the catalog does not offer (LMS, beta sigmas) use it",
}


def deferred_for(profile: Profile) -> list[str]:
    """The libraries to hide for ``profile`` (none with ``LAZY_IMPORTS=0``)."""
    if not settings.get("LAZY_IMPORTS"):
        return []
    return [name for name in DEFERRED if not (name == "bitsandbytes" and profile.uses_bitsandbytes)]


@contextlib.contextmanager
def hidden(names: Sequence[str]) -> Iterator[list[str]]:
    """Within the block, ``names`` (those not imported yet) look uninstalled; after it, they are back."""
    hide = [name for name in names if name not in sys.modules]
    for name in hide:
        sys.modules[name] = None  # type: ignore[assignment]
    if hide:
        log.info("imports: %s kept out of sight of diffusers and transformers (LAZY_IMPORTS=0 turns this off)",
                 ", ".join(hide))
    try:
        yield hide
    finally:
        for name in hide:
            if name in sys.modules and sys.modules[name] is None:
                del sys.modules[name]
