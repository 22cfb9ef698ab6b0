"""Device choice shared by every kernel dispatcher.

``device="auto"`` picks CUDA (Triton kernels) when a GPU is present, else the PyTorch CPU path.
``device="cuda"`` without a GPU raises :class:`DeviceError`; it never falls back silently.
The environment variable ``FITSKETCH_DEVICE`` (``cpu`` or ``cuda``) forces the choice that
``"auto"`` makes, so CI can run the whole suite on each path available.
"""
from __future__ import annotations

import os

VALID = ("auto", "cpu", "cuda")


class DeviceError(RuntimeError):
    """The requested device is not available (or not a device name)."""

    code = "device_unavailable"


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity where the OS reports it, else the machine's)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):        # pragma: no cover - not on every platform
        return os.cpu_count() or 1


def cuda_available() -> bool:
    import torch  # here, not at import time: fitsketch.errors imports DeviceError, and the CLI's --help stays fast

    return torch.cuda.is_available()


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:  # pragma: no cover - depends on the install
        return False
    return True


def resolve_device(device: str | None = "auto") -> str:
    """Map ``"auto" | "cpu" | "cuda"`` to the device that will run: ``"cpu"`` or ``"cuda"``."""
    if device is None:
        device = "auto"
    if not isinstance(device, str) or device not in VALID:
        raise DeviceError(
            f"device={device!r} is not a device: use one of {', '.join(VALID)}"
        )
    if device == "auto":
        forced = os.environ.get("FITSKETCH_DEVICE", "").strip().lower()
        if forced:
            if forced not in ("cpu", "cuda"):
                raise DeviceError(
                    f"FITSKETCH_DEVICE={forced!r} is not a device: set it to 'cpu' or 'cuda' or unset it"
                )
            device = forced
        else:
            return "cuda" if cuda_available() else "cpu"
    if device == "cuda" and not cuda_available():
        raise DeviceError(
            "device='cuda' was asked for but PyTorch sees no CUDA GPU: "
            "use device='cpu' (or 'auto'), or install a CUDA build of PyTorch on a GPU machine"
        )
    return device
