"""Where and in what precision to run: device, dtype and autocast choice, and the measured
matmul peak that MFU is quoted against. Shared by train, sample, evaluate and bench."""
import contextlib
import functools
import json
import os
import time

import torch

from pianogpt.cli import CliError
from pianogpt.files import atomic_write_bytes
from pianogpt.torch_internals import cpu_has_native_bf16


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


def cpu_description():
    """The CPU's model name (from /proc/cpuinfo where there is one) and whether it has native bf16:
    the two facts that set how fast a recipe trains here."""
    import platform

    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), name)
    except OSError:
        pass
    return f"{name}, {'native' if cpu_has_native_bf16() else 'no native'} bf16"


def resolve_dtype(name, device_type):
    """auto -> bf16 on a GPU that has it (else fp16), bf16 on a CPU with native bf16
    (AVX512-BF16 or AMX), float32 elsewhere: bf16 emulated on AVX2 crawls."""
    if name == "bfloat16" and device_type == "cuda" and not torch.cuda.is_bf16_supported():
        raise CliError("this GPU does not support bfloat16; use --dtype=float16")
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


@functools.cache
def compile_problem(device):
    """None where torch.compile can build code for this device, else why not, in one line.

    Inductor needs a working C++ compiler for a CPU and Triton for a GPU, and many machines lack
    them (a laptop without build tools, most Windows installs): the first compiled call then fails
    deep inside torch. Compiling a tiny function finds out first (once per process;
    only programs about to compile ask)."""
    try:
        torch.compile(lambda x: x * 2 + 1, fullgraph=True, dynamic=False)(torch.ones(4, device=device))
    except Exception as e:  # torch raises several kinds here (InductorError, BackendCompilerFailed, RuntimeError)
        return first_line(e)
    return None


def require_compile(device, asked_by, otherwise):
    """A CliError where a flag asks for torch.compile and it cannot run here: `asked_by` names the
    flag, `otherwise` how to go on without it."""
    problem = compile_problem(device)
    if problem:
        raise CliError(f"{asked_by}: torch.compile cannot run on {device} here ({problem}); {otherwise}")


def first_line(error):
    """An exception as one line: torch's compile errors run to pages of advice."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def measure_matmul_peak(device, dtype, seconds=1.0, rounds=10):
    """FLOP/s of a square matmul in the training dtype on this device (the MFU denominator).

    One fixed size per device and dtype, and the best of `rounds` timings: a size chosen by how
    fast the first product ran, or a single timing, moves with a moment of contention (a noisy
    neighbour on a shared VM) and so would every MFU of the run. 1024^2 on a CPU (512^2 in bf16
    without native bf16, where products are emulated and crawl); 8192^2 on a GPU, ten products
    per synchronisation (one small product there costs about what a launch and a sync cost).
    """
    torch_dtype = getattr(torch, dtype)
    on_gpu = str(device).startswith("cuda")
    emulated = not on_gpu and dtype == "bfloat16" and not cpu_has_native_bf16()
    size = 8192 if on_gpu else 512 if emulated else 1024
    per_sync = 10 if on_gpu else 1
    sync = torch.cuda.synchronize if on_gpu else (lambda: None)
    a = torch.randn(size, size, device=device, dtype=torch_dtype)
    b = torch.randn(size, size, device=device, dtype=torch_dtype)
    torch.mm(a, b)  # warm up threads and caches
    sync()
    best = 0.0
    for _ in range(rounds):
        n, start = 0, time.perf_counter()
        while n < 3 * per_sync or time.perf_counter() - start < seconds / rounds:
            for _ in range(per_sync):
                torch.mm(a, b)
            n += per_sync
            sync()
        best = max(best, 2 * size**3 * n / (time.perf_counter() - start))
    return best


def machine_key(device, dtype):
    """This machine as its remembered measurements name it: the device, the dtype, the thread count
    and torch's version (any of them changes what a measurement would read)."""
    name = torch.cuda.get_device_name(device) if str(device).startswith("cuda") else cpu_description()
    return f"{name} | {dtype} | {torch.get_num_threads()} threads | torch {torch.__version__}"


def memory_path(file_name):
    folder = os.environ.get("PIANOGPT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "pianogpt")
    return os.path.join(folder, file_name)


def remembered(file_name):
    """Everything earlier runs on this machine remembered in $PIANOGPT_CACHE (default
    ~/.cache/pianogpt)/file_name; a file that cannot be read remembers nothing."""
    try:
        with open(memory_path(file_name)) as f:
            seen = json.load(f)
    except (OSError, ValueError):
        return {}
    return seen if isinstance(seen, dict) else {}


def recall(file_name, key):
    """What an earlier run on this machine remembered under key, or None."""
    return remembered(file_name).get(key)


def remember(file_name, key, value):
    """Keep value under key for later runs; a cache that cannot be written costs only the memory."""
    try:
        atomic_write_bytes(memory_path(file_name), json.dumps({**remembered(file_name), key: value}, indent=1).encode())
    except OSError:
        pass


def machine_matmul_peak(device, dtype):
    """The MFU denominator: the best matmul peak this machine has shown for this device, dtype and
    thread count, today's measurement included. On a shared VM a measurement can read half the
    machine for a while (a neighbour's load, a power state) and every MFU of the run would move with
    it; the best seen is the machine's, so runs on one machine quote MFU against one number (kept
    in matmul_peak.json of the cache, see recall)."""
    measured = measure_matmul_peak(device, dtype)
    key = machine_key(device, dtype)
    known = recall("matmul_peak.json", key)
    known = known if isinstance(known, (int, float)) else 0.0
    if measured > known:
        remember("matmul_peak.json", key, measured)
    return max(measured, known)
