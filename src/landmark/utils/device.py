"""Device selection: never hard-code ``.cuda()``; resolve ``auto`` once and pass the device along.
And the CPU allocator setting that eager torch needs to run at its pace."""

from __future__ import annotations

import ctypes
import os
import platform

import torch


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """``auto`` -> CUDA if available, else Apple MPS, else CPU; anything else is passed to torch."""
    if isinstance(name, torch.device):
        return name
    if name in (None, "", "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} requested but CUDA is not available on this machine")
    return device


_ALLOCATOR_TUNED = False


def tune_cpu_allocator(threshold: int = 1 << 30) -> bool:
    """Keep glibc from returning large freed blocks to the OS between forward passes.

    By default glibc serves blocks above a (moving) threshold with fresh ``mmap`` pages and unmaps
    them on free, so each forward pass of a CNN page-faults its activations in again: eager torch
    then runs at 10-30 images/s on the same 2 cores depending on where the threshold has drifted
    (``benchmarks/extract.py``). Fixing the thresholds at ``threshold`` bytes keeps the freed
    activations for the next batch. Once per process, glibc only; ``LANDMARK_MALLOC_TUNING=0``
    leaves the allocator alone. Returns whether it was tuned."""
    global _ALLOCATOR_TUNED
    if _ALLOCATOR_TUNED or os.environ.get("LANDMARK_MALLOC_TUNING", "1") == "0" or platform.system() != "Linux":
        return _ALLOCATOR_TUNED
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
        _ALLOCATOR_TUNED = bool(libc.mallopt(m_mmap_threshold, threshold)) and bool(
            libc.mallopt(m_trim_threshold, threshold)
        )
    except (OSError, AttributeError):  # not glibc (musl, ...): nothing to tune
        _ALLOCATOR_TUNED = False
    return _ALLOCATOR_TUNED
