"""optim.py: Muon orthogonalises in the dtype this device runs fast, with unchanged maths."""
import os
import platform
import subprocess
import sys

import pytest
import torch

from pianogpt.training.optim import Muon, newton_schulz, orthogonalization_dtype
from pianogpt.training.optim import configure_optimizers


def matrices(seed=0):
    torch.manual_seed(seed)
    return [torch.randn(48, 16), torch.randn(16, 16), torch.randn(16, 64)]


def run_muon(make, steps=5):
    params = [m.clone().requires_grad_() for m in matrices()]
    opt = make(params)
    torch.manual_seed(1)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn_like(p)
        opt.step()
    return params


def test_muon_in_bf16_is_torch_muon_bit_for_bit():
    ours = run_muon(lambda ps: Muon(ps, lr=0.02, weight_decay=0.1, ns_dtype=torch.bfloat16))
    theirs = run_muon(lambda ps: torch.optim.Muon(ps, lr=0.02, weight_decay=0.1, adjust_lr_fn="match_rms_adamw"))
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs))


def test_muon_in_float32_agrees_with_bf16_within_bf16_rounding():
    start = [m.clone() for m in matrices()]
    f32 = run_muon(lambda ps: Muon(ps, lr=0.02, ns_dtype=torch.float32))
    bf16 = run_muon(lambda ps: Muon(ps, lr=0.02, ns_dtype=torch.bfloat16))
    for a, b, s in zip(f32, bf16, start):
        moved = (a - s).abs().max()
        assert moved > 0.02  # five steps of lr 0.02 (RMS-matched) really moved the weights
        assert (a - b).abs().max() < 0.02 * moved  # bf16 keeps 8 bits: its products differ by < 1%


def test_newton_schulz_orthogonalises_in_both_dtypes():
    for dtype in (torch.float32, torch.bfloat16):
        for g in matrices():
            singular = torch.linalg.svdvals(newton_schulz(g, dtype).float())
            # the quintic's band around 1, not exactly 1 (a random square matrix's smallest singular value
            # is near 0 and lags behind); the input's own spread is several-fold
            assert singular.max() < 1.3 and (singular > 0.6).float().mean() >= 0.9
            assert torch.linalg.svdvals(g).max() / torch.linalg.svdvals(g).median() > 1.5
            assert newton_schulz(g, dtype).shape == g.shape


def test_newton_schulz_leaves_its_input_alone():
    g = matrices()[1]
    before = g.clone()
    newton_schulz(g, torch.float32)  # in float32 .to() is no copy: an in-place op would corrupt momentum
    assert torch.equal(g, before)


@pytest.mark.parametrize("native", [True, False])
def test_orthogonalization_dtype_follows_the_cpu(monkeypatch, native):
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: native)
    assert orthogonalization_dtype("cpu") == (torch.bfloat16 if native else torch.float32)
    assert orthogonalization_dtype("cuda") == torch.bfloat16


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="oneDNN's ISA limit is x86's")
def test_a_cpu_limited_to_avx2_orthogonalises_in_float32():
    """The real detection, not a patched one: oneDNN held to AVX2 (as on a CPU without AVX512-BF16
    or AMX, whatever this machine has) makes bf16 emulated, and Muon then picks float32."""
    code = "from pianogpt.training.optim import orthogonalization_dtype; print(orthogonalization_dtype('cpu'))"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    run = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2"})
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "torch.float32"


def test_configure_optimizers_gives_muon_the_device_dtype(monkeypatch):
    from pianogpt.training import optim
    from model import ModelConfig, MusicTransformer

    monkeypatch.setattr(optim, "orthogonalization_dtype", lambda device: torch.float16)  # a marker
    net = MusicTransformer(ModelConfig(block_size=8, vocab_size=32, n_composers=2, n_layer=1, n_head=2, n_embd=16))
    assert configure_optimizers(net, 0.1, 1e-3, optimizer="muon").muon.ns_dtype == torch.float16
