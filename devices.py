"""Where and in what precision to run: device, dtype and autocast choice, and the measured
matmul peak that MFU is quoted against. Shared by train, sample, evaluate and bench."""
import contextlib
import time

import torch

from cli import CliError


def resolve_device(name):
    """auto -> cuda, else mps, else cpu; an unavailable explicit choice is a CliError."""
    if name == "auto":
        if torch.cuda.is_available():
            return "cuda"
        return "mps" if torch.backends.mps.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise CliError("device cuda requested but torch.cuda.is_available() is False; use --device=cpu")
    if name == "mps" and not torch.backends.mps.is_available():
        raise CliError("device mps requested but it is not available; use --device=cpu")
    return name


def device_type_of(device):
    return "cuda" if str(device).startswith("cuda") else str(device)


def cpu_has_native_bf16():
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def resolve_dtype(name, device_type):
    """auto -> bf16 on a GPU that has it (else fp16), bf16 on a CPU with native bf16
    (AVX512-BF16 or AMX), float32 elsewhere: bf16 emulated on AVX2 crawls."""
    if name != "auto":
        return name
    if device_type == "cuda":
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    if device_type == "cpu" and cpu_has_native_bf16():
        return "bfloat16"
    return "float32"


def autocast_context(device_type, dtype):
    if dtype == "float32" or device_type == "mps":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device_type, dtype=getattr(torch, dtype))


def measure_matmul_peak(device, dtype, max_size=None, seconds=0.5):
    """FLOP/s of a square matmul in the training dtype on this device (the MFU denominator).

    The matrix grows from 256 only while one product stays cheap: on a CPU without native
    bf16, a 2048^2 bf16 matmul takes about a minute. A GPU gets up to 8192^2 and ten products
    per synchronisation: a 2048^2 product takes tens of microseconds there, about what a
    launch and a sync cost, so timing one at a time would understate the peak (and overstate MFU).
    """
    torch_dtype = getattr(torch, dtype)
    on_gpu = str(device).startswith("cuda")
    max_size = max_size or (8192 if on_gpu else 2048)
    per_sync = 10 if on_gpu else 1
    sync = torch.cuda.synchronize if on_gpu else (lambda: None)
    size = 256
    while True:
        a = torch.randn(size, size, device=device, dtype=torch_dtype)
        b = torch.randn(size, size, device=device, dtype=torch_dtype)
        torch.mm(a, b)  # warm up threads and caches
        sync()
        start = time.perf_counter()
        torch.mm(a, b)
        sync()
        if size >= max_size or time.perf_counter() - start > 0.02:
            break
        size *= 2
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(per_sync):
            torch.mm(a, b)
        n += per_sync
        sync()
    return 2 * size**3 * n / (time.perf_counter() - start)
