"""Every private torch API the project calls, in one place: why each is worth it, and what runs
where it is missing. torch may rename or drop any of them in a release; the fallbacks keep every
program working (slower), and nothing else in the project touches torch's internals.
"""
from contextlib import contextmanager

import torch
from torch.nn import functional as F


def cpu_has_native_bf16():
    """Whether this CPU runs bf16 matmuls natively (AVX512-BF16 / AMX): oneDNN's own check, the
    only one that knows what its kernels use. Missing: False, and bf16 is chosen nowhere by itself."""
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return bool(check()) if check is not None else False


def onednn_enabled():
    return torch._C._get_mkldnn_enabled()


@contextmanager
def onednn_off():
    """Inside: CPU matmuls run in aten's own kernels instead of oneDNN's (the global flag is
    restored on exit, exception or not). Why: one bf16 row through aten's matrix-vector kernel
    reads the weights faster than oneDNN's packed kernel (engine.gemv_pays). torch has no public
    switch for it."""
    was_enabled = torch._C._get_mkldnn_enabled()
    torch._C._set_mkldnn_enabled(False)
    try:
        yield
    finally:
        torch._C._set_mkldnn_enabled(was_enabled)


class PackedLinear:
    """A Linear's forward from its weight reordered once into oneDNN's blocked layout (the
    inference_forward model.Linear calls while no gradient is wanted). Why: a plain CPU linear
    reorders its weight on every call, which doubles the cost of a one-token decoding step. It runs
    the packed op only for inputs of the packed dtype, outside autocast (which it would bypass) and
    with oneDNN on; otherwise the plain linear, with the same weight and bias."""

    def __init__(self, linear, rows):
        self.weight, self.bias = linear.weight, linear.bias
        self.packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), rows)

    def __call__(self, x):
        if (x.dtype == self.packed.dtype and not torch.is_autocast_enabled(x.device.type)
                and torch._C._get_mkldnn_enabled()):
            return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")
        return F.linear(x, self.weight, self.bias)


def can_pack_linears():
    """PackedLinear can run here (a torch built with oneDNN and its two ops)."""
    return (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
            and hasattr(torch.ops.mkldnn, "_linear_pointwise"))


def mark_static_address(tensor):
    """Tell torch.compile that tensor keeps its address across calls. Why: CUDA graphs skip a graph
    that writes into an ordinary input, and the compiled decode step writes into the KV cache; a
    static address may be written. Missing: the graph is skipped and the step runs compiled
    without CUDA graphs."""
    mark = getattr(getattr(torch, "_dynamo", None), "mark_static_address", None)
    if mark is not None:
        mark(tensor)
