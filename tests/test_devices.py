"""Mixed precision, torch.compile and the CUDA paths: run here on the CPU, and on a GPU wherever one exists."""
import pytest
import torch

from model import ModelConfig, MusicTransformer
from pianogpt.checkpoints import load_checkpoint, network_of
from pianogpt.generation.engine import generate
from conftest import tiny_train_config
from train import train

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine: GPU paths skipped")


def tiny_run(data_dir, out_dir, **overrides):
    return train(tiny_train_config(data_dir, out_dir, **{"grad_accum": 2, "max_iters": 4, "eval_iters": 1,
                                                          "dropout": 0.0, **overrides}))


def test_mfu_is_quoted_against_the_best_peak_this_machine_has_shown(tmp_path, monkeypatch):
    from pianogpt import devices

    readings = iter([100e9, 50e9, 120e9, 7e9])
    monkeypatch.setattr(devices, "measure_matmul_peak", lambda device, dtype: next(readings))
    monkeypatch.setenv("PIANOGPT_CACHE", str(tmp_path / "cache"))
    peaks = [devices.machine_matmul_peak("cpu", "float32") for _ in range(3)]
    assert peaks == [100e9, 100e9, 120e9], "a slow moment (a noisy neighbour) does not lower the denominator"
    assert devices.machine_matmul_peak("cpu", "bfloat16") == 7e9, "each dtype has its own peak"
    monkeypatch.setenv("PIANOGPT_CACHE", str(tmp_path / "cache" / "matmul_peak.json"))  # a file, not a folder
    monkeypatch.setattr(devices, "measure_matmul_peak", lambda device, dtype: 80e9)
    assert devices.machine_matmul_peak("cpu", "float32") == 80e9, "an unusable cache is only a measurement"


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_cpu_autocast_trains_and_checkpoints(tiny_dataset, tmp_path, dtype, monkeypatch):
    real_forward, seen = MusicTransformer.forward, set()

    def recording(self, *args, **kwargs):
        logits, loss = real_forward(self, *args, **kwargs)
        if self.training:
            seen.add(logits.dtype)
        return logits, loss

    monkeypatch.setattr(MusicTransformer, "forward", recording)
    last = tiny_run(tiny_dataset, tmp_path, dtype=dtype)
    assert seen == {getattr(torch, dtype)}, "the training forward ran under autocast in that dtype"
    monkeypatch.setattr(MusicTransformer, "forward", real_forward)
    exact = tiny_run(tiny_dataset, tmp_path / "float32", dtype="float32")
    # the same seeded run in lower precision: other numbers (autocast really ran), the same learning
    assert last["loss"] != exact["loss"] and abs(last["loss"] - exact["loss"]) < 0.1
    ckpt = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert ckpt["train_config"]["dtype"] == dtype
    if dtype == "float16":  # fp16 needs loss scaling: the GradScaler is on and saved
        assert ckpt["scaler"]["scale"] > 0


def test_compiled_model_trains_and_saves_plain_weights(tiny_dataset, tmp_path):
    tiny_run(tiny_dataset, tmp_path, compile="on")
    ckpt = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert not any(key.startswith("_orig_mod.") for key in ckpt["model"])
    network_of(load_checkpoint(tmp_path / "ckpt.pt"))


NO_COMPILER = "InvalidCxxCompiler: No working C++ compiler found in torch._inductor.config.cpp.cxx"


def test_without_a_cpp_compiler_compile_on_is_a_one_line_error_before_anything_is_written(tiny_dataset, tmp_path):
    """A real machine without one, as inductor sees it: CXX names no compiler."""
    import os
    import subprocess
    import sys
    from conftest import ROOT

    out = tmp_path / "run"
    result = subprocess.run([sys.executable, "train.py", f"--data_dir={tiny_dataset}", f"--out_dir={out}",
                             "--max_iters=2", "--compile=on", "--n_layer=1", "--n_embd=32", "--block_size=32"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "CXX": "/nonexistent/c++"})
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr[-2000:]
    assert f"compile=on: torch.compile cannot run on cpu here ({NO_COMPILER}" in lines[0]
    assert "--compile=auto or --compile=off trains eager" in lines[0]
    assert not out.exists(), "not even an empty run folder"


def test_sample_and_bench_asked_to_compile_where_it_cannot_run_say_so_in_one_line(tiny_checkpoint, tmp_path, capsys,
                                                                                  monkeypatch):
    import bench
    import sample
    from test_dataset import one_line_error

    from pianogpt import devices

    for module in (devices, sample):  # devices.require_compile for --compile on; sample's auto asks itself
        monkeypatch.setattr(module, "compile_problem", lambda device: NO_COMPILER)
    out = tmp_path / "samples"
    err = one_line_error(capsys, lambda: sample.main(["--ckpt", str(tiny_checkpoint), "--composer_id", "1",
                                                      "--compile", "on", "--out_dir", str(out), "--no-audio"]))
    assert "--compile on: torch.compile cannot run on cpu here" in err and "auto or off decodes eager" in err
    assert not out.exists()
    assert not sample.compile_pays("auto", None, "cuda", 4096), "auto decodes eager where compiling cannot run"
    err = one_line_error(capsys, lambda: bench.main(["--quick", "--cases", "train", "--compile"]))
    assert "--compile: torch.compile cannot run on cpu here" in err and "leave --compile out" in err


@needs_cuda
def test_cuda_training_uses_bf16_or_fp16_fused_adamw_and_compile(tiny_dataset, tmp_path):
    last = tiny_run(tiny_dataset, tmp_path, device="cuda", dtype="auto", compile="on", max_iters=6, eval_interval=3)
    assert torch.isfinite(torch.tensor(last["loss"]))
    ckpt = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert ckpt["optimizer"]["param_groups"][0]["fused"] is True


def small_cuda_model_and_prompt():
    """A 2-layer model on the GPU, two 8-token prompts and their composers."""
    torch.manual_seed(0)
    model = MusicTransformer(ModelConfig(block_size=64, vocab_size=419, n_composers=4, n_layer=2, n_head=4,
                                         n_embd=64, dropout=0.0)).cuda().eval()
    return model, torch.randint(2, 419, (2, 8), device="cuda"), torch.tensor([1, 2], device="cuda")


@needs_cuda
def test_cuda_kv_cache_matches_full_forward_and_half_precision_generates():
    model, prompt, composer = small_cuda_model_and_prompt()
    seen = []
    out = generate(model, prompt, composer, 100, guidance=1.0, generator=torch.Generator(device="cuda").manual_seed(0),
                         on_step=lambda step, logits, start: seen.append((step, logits.clone(), start)))
    for step, logits, start in seen[::7]:
        full, _ = model(out[:, start:8 + step], composer)
        torch.testing.assert_close(logits, full[:, -1].float(), atol=1e-3, rtol=0)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = generate(model, prompt, composer, 40, guidance=3.0)
    assert out.shape == (2, 48) and out.max() < 419


@needs_cuda
def test_cuda_compiled_decoding_runs_in_cuda_graphs_and_matches_eager():
    from torch._dynamo.utils import counters
    model, prompt, composer = small_cuda_model_and_prompt()
    counters.clear()
    runs = {}
    for compiled in (False, True):
        seen = []
        out = generate(model, prompt, composer, 40, top_k=1, guidance=3.0, compile=compiled,
                             on_step=lambda step, logits, start: seen.append(logits.clone()))
        runs[compiled] = out, torch.stack(seen)
    assert counters["inductor"]["cudagraph_skips"] == 0, "the compiled step must run as a CUDA graph"
    assert torch.equal(runs[False][0], runs[True][0]), "greedy decoding gives the same tokens"
    torch.testing.assert_close(runs[True][1], runs[False][1], atol=1e-3, rtol=0)
