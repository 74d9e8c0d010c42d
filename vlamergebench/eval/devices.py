"""``--device``: where the policies run, resolved once, before anything is merged or rolled out.

``auto`` is CUDA when torch sees a GPU, else the CPU. ``cuda`` (or ``cuda:N``) on a machine whose torch sees
no GPU fails at once with one line naming the flag, instead of deep inside the first policy build in a
worker. Under the Ray executor the policies run on the actors' machines, not this one, so ``cuda`` is not
checked here (the actors then ask Ray for a GPU each) and ``auto`` resolves on this machine.
"""

from __future__ import annotations

import re

DEVICE_CHOICES = ("cpu", "cuda", "cuda:N", "auto")
_CUDA = re.compile(r"cuda(?::(\d+))?")


def cuda_devices() -> int:
    """GPUs torch can use here (0 with a CPU-only torch build or no GPU)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def resolve_device(device: str, *, check_here: bool = True, flag: str = "--device") -> str:
    """The concrete torch device ``device`` names: ``cpu``, ``cuda`` or ``cuda:N``.

    Args:
        device: ``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (CUDA when available here, else ``cpu``).
        check_here: Refuse a CUDA device this machine lacks (False when the policies run elsewhere).
        flag: The option named in errors.

    Raises:
        ValueError: an unknown device, or a CUDA device this machine does not have (with ``check_here``).
    """
    if device == "auto":
        return "cuda" if cuda_devices() else "cpu"
    if device == "cpu":
        return device
    match = _CUDA.fullmatch(device)
    if match is None:
        raise ValueError(f"{flag} {device!r}: expected one of {', '.join(DEVICE_CHOICES)}")
    if check_here:
        import torch

        available = cuda_devices()
        index = int(match.group(1) or 0)
        if index >= available:
            found = "no CUDA GPU" if not available else f"{available} CUDA GPU(s), 0..{available - 1}"
            raise ValueError(
                f"{flag} {device}: torch {torch.__version__} sees {found} on this machine; "
                "use --device cpu or --device auto"
            )
    return device
