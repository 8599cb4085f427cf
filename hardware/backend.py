"""Pick the device, precision and attention backend, and say why.

Kept separate from model loading so a benchmark or test can see the exact settings a run used.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, replace
from typing import Any, Mapping, Optional

from hardware.profiles import Profile, choose_profile, detect_profile

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Backend:
    """The compute settings every model load and generation in this process uses."""

    device: str
    dtype_name: str
    tf32: bool
    bitsandbytes: str  # installed and usable here, or why not (quantizing profiles need it)
    profile: Optional[Profile] = None  # memory/precision settings; None: plain defaults for the device

    @property
    def settings(self) -> Profile:
        """The hardware profile in force (a device default when none was detected)."""
        return self.profile or choose_profile(self.device, None, False, False, env={})

    @property
    def dtype(self) -> Any:
        import torch

        return getattr(torch, self.dtype_name)

    def describe(self) -> str:
        return (
            f"backend: device {self.device}, {self.dtype_name}, attention PyTorch SDPA, "
            f"TF32 {'on' if self.tf32 else 'off'}; bitsandbytes {self.bitsandbytes}"
        )


def _usability(version: Optional[str], usable: bool, why_not: str) -> str:
    if version is None:
        return "not installed"
    return f"{version} usable" if usable else f"{version} installed, not usable ({why_not})"


def configure_backend(packages: Mapping[str, Optional[str]]) -> Backend:
    """Import torch, choose the device, and turn on the settings that are free speed.

    TF32 matmuls and convolutions lose nothing visible for diffusion in fp16/bf16 and are faster
    on Ampere and newer. Attention uses PyTorch's SDPA, which dispatches to flash or cuDNN kernels
    by itself; xformers is not needed for it (see README).
    """
    import torch

    if torch.cuda.is_available():
        device, dtype_name = "cuda", "float16"
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        tf32 = True
        why_not = ""
    elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        device, dtype_name, tf32, why_not = "mps", "float16", False, "needs CUDA"
    else:
        device, dtype_name, tf32, why_not = "cpu", "float32", False, "no CUDA device"
    cuda = device == "cuda"
    backend = Backend(
        device=device,
        dtype_name=dtype_name,
        tf32=tf32,
        bitsandbytes=_usability(packages.get("bitsandbytes"), cuda, why_not),
    )
    log.info(backend.describe())
    usable = cuda and packages.get("bitsandbytes") is not None
    return replace(backend, profile=detect_profile(device, usable))


def start_device_init(backend: Backend) -> threading.Thread:
    """Create the CUDA context in the background (hundreds of ms) while imports and file reads run.

    On other devices the thread has nothing to do; callers join it either way.
    """

    def init() -> None:
        if backend.device == "cuda":
            import torch

            torch.empty(1, device="cuda")

    thread = threading.Thread(target=init, name="device-init", daemon=True)
    thread.start()
    return thread
