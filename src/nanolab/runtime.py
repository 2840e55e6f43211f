"""Where and how a process computes: device, dtype, autocast, compile, seeds and the RNG states a
checkpoint captures, the CPU allocator setting and the device's peak FLOPs. Every entry point
(train, evaluate, sample, bench) sets itself up through `Runtime.create`, so they all run with the
same settings.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import os
import platform
import random
import time
from dataclasses import dataclass

import numpy as np
import torch

from nanolab import ConfigError
from nanolab.distributed import launched_by_torchrun

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt parameters, from glibc's malloc.h


def pick_device(name: str, job_num: int | None = None) -> torch.device:
    """`auto` is cuda, then mps, then cpu; anything else must be available. With several GPUs,
    job n of a multirun takes GPU n mod their number, so jobs that a parallel launcher
    (hydra/launcher=joblib) runs at once spread over the GPUs."""
    if name == "auto":
        if torch.cuda.is_available():
            if job_num is not None and torch.cuda.device_count() > 1 and not launched_by_torchrun():
                return torch.device("cuda", job_num % torch.cuda.device_count())
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(
            f"device={name!r} is not a device; use auto, cpu, cuda, cuda:<n> or mps"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"device={name} but CUDA is not available here; use device=auto or device=cpu"
        )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(
            f"device={name} but MPS is not available here; use device=auto or device=cpu"
        )
    return device


def native_bfloat16(device: torch.device) -> bool:
    """Whether `device` (a GPU) computes bfloat16 in hardware: compute capability 8.0 (Ampere)
    or later. torch.cuda.is_bf16_supported() also counts emulation, which V100s and T4s offer
    at a fraction of float16's speed, and asks about the current device, not this one."""
    return torch.cuda.get_device_capability(device) >= (8, 0)


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    """`auto` is bfloat16 on CUDA GPUs that have it in hardware, float16 (with a GradScaler) on
    older ones, float32 elsewhere."""
    if name == "auto":
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if native_bfloat16(device) else torch.float16
    if name not in DTYPES:
        raise ConfigError(f"dtype={name!r} is not one of {['auto', *DTYPES]}")
    if name == "bfloat16" and device.type == "cuda" and not native_bfloat16(device):
        raise ConfigError(
            f"dtype=bfloat16 but {torch.cuda.get_device_name(device)} has no "
            "bfloat16 in hardware (only a slow emulation); use dtype=float16"
        )
    return DTYPES[name]


def use_compile(value: bool | str, device: torch.device) -> bool:
    """`auto` compiles on CUDA only: on CPU compiling measured 1.05x faster on nano after 9.5 s
    and slower on baby (docs/benchmarks.md), while on a GPU it fuses far more and pays back."""
    if value == "auto":
        return device.type == "cuda"
    if not isinstance(value, bool):
        raise ConfigError(f"compile={value!r} must be auto, true or false")
    return value


def keep_freed_memory_for_reuse(setting: bool, device: torch.device) -> None:
    """The `cpu_keep_freed_memory` config applied: on a CPU, have glibc's malloc keep freed large
    blocks for reuse instead of unmapping them.

    By default glibc gives every block over 32 MiB back to the OS when it is freed, so on a CPU
    each logits-sized temporary at GPT-2's vocabulary (150 MB for 768 tokens) is mapped again
    and faulted in page by page; the measured effect is in docs/benchmarks.md."""
    if not isinstance(setting, bool):
        raise ConfigError(f"cpu_keep_freed_memory={setting!r} must be true or false")
    if (
        not setting
        or device.type != "cpu"
        or platform.system() != "Linux"
        or platform.libc_ver()[0] != "glibc"
    ):
        return
    libc = ctypes.CDLL("libc.so.6")
    libc.mallopt(M_MMAP_THRESHOLD, 2**30)
    libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1)


def thread_count(threads: int | str) -> int | None:
    """The `threads` config checked: a number of threads, or None for torch's default (auto)."""
    if threads == "auto":
        return None
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
        raise ConfigError(f"threads={threads!r} must be auto or a number of threads >= 1")
    return threads


def set_threads(threads: int | str) -> None:
    """The `threads` config applied to torch's intra-op threads; `auto` leaves torch's default
    (one per core). On a CPU shared with another busy process, fewer threads than cores can be
    much faster (docs/benchmarks.md)."""
    count = thread_count(threads)
    if count is not None:
        torch.set_num_threads(count)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on CPU), before reading a clock."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass(frozen=True)
class Runtime:
    """A process's device and numerics, resolved from the top-level config keys."""

    device: torch.device
    dtype: torch.dtype
    compile: bool

    @classmethod
    def create(
        cls,
        device: torch.device,
        dtype: str = "float32",
        compile: bool | str = False,
        keep_freed_memory: bool = True,
        threads: int | str = "auto",
    ) -> Runtime:
        """Resolve `auto` settings for `device` and apply the process-wide ones: TF32 matmuls
        on CUDA, the CPU allocator setting and the number of CPU threads."""
        runtime = cls(device, pick_dtype(dtype, device), use_compile(compile, device))
        keep_freed_memory_for_reuse(keep_freed_memory, device)
        set_threads(threads)
        if device.type == "cuda":
            torch.set_float32_matmul_precision("high")  # TF32 matmuls for float32 work
        return runtime

    def autocast(self) -> contextlib.AbstractContextManager:
        """Mixed precision in `dtype` for forward passes; nothing in float32."""
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def memory_bytes(self) -> int:
        """The device's memory: the GPU's, or this machine's RAM."""
        if self.device.type == "cuda":
            return torch.cuda.get_device_properties(self.device).total_memory
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")

    def peak_flops(self) -> float | None:
        """The peak that MFU is measured against (see `device_peak_flops`)."""
        return device_peak_flops(self.device, self.dtype)


# Dense tensor-core peaks from the vendors' datasheets (no sparsity): (name, bf16/fp16,
# float32), float32 being TF32 (half of bf16) where the GPU has it. V100 and T4 have no TF32,
# so float32 runs on their plain FP32 units. Matched against torch.cuda.get_device_name() in
# order, so the longer names come first ("H100 NVL" before "H100", "L40" before "L4").
GPU_PEAKS = [
    ("GB200", 2.5e15, 1.25e15),
    ("B200", 2.25e15, 1.125e15),
    ("H200 NVL", 835e12, 417.5e12),
    ("H200", 989e12, 494.5e12),
    ("H100 NVL", 835e12, 417.5e12),
    ("H100 PCIe", 756e12, 378e12),
    ("H100", 989e12, 494.5e12),
    ("H800 PCIe", 756e12, 378e12),
    ("H800", 989e12, 494.5e12),
    ("A100", 312e12, 156e12),
    ("A800", 312e12, 156e12),
    ("L40S", 362e12, 183e12),
    ("L40", 181e12, 90.5e12),
    ("L4", 121e12, 60e12),
    ("A10G", 70e12, 35e12),
    ("A10", 125e12, 62.5e12),
    ("RTX 4090", 165e12, 82.6e12),
    ("RTX 3090", 71e12, 35.6e12),
    ("V100", 125e12, 15.7e12),
    ("T4", 65e12, 8.1e12),
]


def measure_cpu_matmul_flops(n: int = 1024, repeats: int = 5) -> float:
    """Best observed float32 matmul throughput of this CPU (FLOP/s), in about a tenth of a
    second."""
    g = torch.Generator().manual_seed(0)  # never touch the global RNG: resumed runs restore it
    a, b = torch.randn(n, n, generator=g), torch.randn(n, n, generator=g)
    a @ b  # warm-up: thread pool and caches
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def device_peak_flops(device: torch.device, dtype: torch.dtype) -> float | None:
    """The peak that MFU is measured against: a datasheet number on known GPUs (GPU_PEAKS), a
    measured matmul peak on CPU, None where unknown."""
    if device.type == "cpu":
        return measure_cpu_matmul_flops()
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, half, single in GPU_PEAKS:
            if key in name:
                return half if dtype in (torch.bfloat16, torch.float16) else single
    return None


def capture_rng_state(device: torch.device) -> dict:
    """The RNG states of python, numpy, torch's CPU generator and, on a GPU, of the run's own
    device only: the states of every visible GPU could not be restored where fewer are visible."""
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": {
            "keys": torch.from_numpy(np_state[1].copy()),
            "pos": np_state[2],
            "gauss": [np_state[3], np_state[4]],
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
    }


def restore_rng_state(state: dict, device: torch.device) -> None:
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    np_state = state["numpy"]
    np.random.set_state(("MT19937", np_state["keys"].numpy(), np_state["pos"], *np_state["gauss"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)
