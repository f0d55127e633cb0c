"""Devices and arrays for torch and open3d: one resolver, one tensor helper, one writable copy.

Every config's `device` key (consensus, lift, segment models, SAM, fusion) means the same:
`auto` = CUDA when present, else the CPU; `cpu`; `cuda` or `cuda:<i>`, an error when there is no
CUDA device (asking for a GPU and silently running on the CPU would hide a broken node).
"""
from __future__ import annotations

import functools
import os
from contextlib import contextmanager
from typing import Any

import numpy as np

from .lazy import LazyModule

torch = LazyModule("torch")  # loaded on first use (see lazy.py)


def _check(name: str, cuda_available) -> str:
    """`name` lower-cased and validated: auto | cpu | cuda | cuda:<i>; auto resolved."""
    name = str(name).lower()
    if name == "auto":
        return "cuda" if cuda_available() else "cpu"
    if name.startswith("cuda") and not cuda_available():
        raise RuntimeError(f"device={name} but no CUDA device is visible; use device=auto or cpu")
    if name == "cpu" or name == "cuda" or (name.startswith("cuda:") and name[5:].isdigit()):
        return name
    raise ValueError(f"unknown device {name!r}; use auto, cpu or cuda")


_NVIDIA_DRIVER = ("/proc/driver/nvidia/version", "/dev/nvidiactl", "/dev/dxg")  # Linux driver; WSL's GPU


def numpy_on_cpu(device: str) -> bool:
    """Whether a core configured with `device` (auto | cpu | cuda[:i]) runs on the CPU, where the
    consensus vote and lifting use their numpy twins and torch (1.5 s, ~280 MB) is never loaded.
    `auto` asks torch only on a machine with an NVIDIA driver: without one CUDA cannot be there."""
    name = str(device).lower()
    if name == "cpu":
        return True
    if name != "auto":
        return False  # cuda (an error there when torch sees none), or a name the torch path rejects
    if not any(os.path.exists(p) for p in _NVIDIA_DRIVER):
        return True
    return not torch.cuda.is_available()


def resolve_device(name: Any) -> "torch.device":
    """A config's device for torch (a torch.device passes through)."""
    if not isinstance(name, str):
        return name
    return torch.device(_check(name, torch.cuda.is_available))


def open3d_device(name: str):
    """A config's device for open3d's tensor API (o3c.Device)."""
    import open3d.core as o3c

    found = _check(name, o3c.cuda.is_available)
    if found == "cpu":
        return o3c.Device("CPU:0")
    return o3c.Device(f"CUDA:{found[5:] or 0}")


def writable(array: Any, dtype=None) -> np.ndarray:
    """`array` as a C-contiguous, writable numpy array of `dtype` (torch.from_numpy wants one):
    copied only when it is not one already."""
    a = np.asarray(array)
    if dtype is not None:
        a = a.astype(dtype, copy=False)
    a = np.ascontiguousarray(a)
    return a if a.flags.writeable else a.copy()


def to_tensor(x: Any, device, dtype, copy: bool = False) -> "torch.Tensor":
    """A tensor of `dtype` on `device` from a tensor or anything numpy reads. Arrays are shared
    with the tensor on the CPU unless `copy` (then the caller's array is never written)."""
    if isinstance(x, torch.Tensor):
        return x.to(device=device, dtype=dtype)
    np_dtype = torch.empty((), dtype=dtype).numpy().dtype
    a = np.array(x, dtype=np_dtype) if copy else writable(x, np_dtype)
    return torch.from_numpy(a).to(device)


@contextmanager
def cpu_threads(n: int):
    """torch's intra-op CPU threads set to `n` for the block (0: torch's default, unchanged).

    The consensus and lifting cores run many small operations (~10^5 elements): extra threads cost
    more in hand-offs than they gain, and on a loaded machine spinning threads cost several times
    the work (lifting a 240-frame scene used 7x the CPU time with 2 threads than with 1)."""
    n = int(n)
    before = torch.get_num_threads() if n > 0 else n
    if n <= 0 or before == n:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def nonzero(mask: torch.Tensor) -> torch.Tensor:
    """Indices of the True entries of a 1-D mask (numpy's is several times faster on the CPU)."""
    if mask.is_cuda:
        return torch.nonzero(mask).squeeze(1)
    return torch.from_numpy(np.flatnonzero(mask.numpy()))


def inference_mode(fn):
    """Decorator: run `fn` under torch.inference_mode(), importing torch only when it is called
    (`@torch.inference_mode()` would import torch with the module)."""

    @functools.wraps(fn)
    def run(*args, **kwargs):
        with torch.inference_mode():
            return fn(*args, **kwargs)

    return run
