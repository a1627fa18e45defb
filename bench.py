"""Speed benchmarks; prints one JSON line per case (numbers for docs/LOG.md).

    python bench.py                       # everything, on the default device
    python bench.py --cases sample --device cuda
    python bench.py --quick               # tiny shapes: a smoke test of the script itself

Cases:
  matmul   peak FLOP/s of a square matmul on this device (the MFU denominator)
  train    training tokens/s, achieved FLOP/s and MFU: the GPT-2 baseline's shape, the CPU config before the
           modern recipe, and config/remi_cpu.py as shipped (its levers and optimizer)
  sample   128 prompt + 2048 new tokens at the GPT-2 baseline's shape: eager and compiled decode steps side
           by side (compile seconds, 1 and 4 samples, guidance 1 and 3), and the GPT-2 baseline's method
           (recompute the whole context every step) for scale
  loop     where a training step of config/remi_cpu.py goes: the bare forward + backward, the
           optimizer step, a batch from the data sampler, an evaluation, and train.py's whole loop
           (run as a program on --data_dir for a few dozen iterations), beside Hugging Face's GPT-2 of
           the same shape where transformers is installed (never a dependency)
  prepare  pieces/s encoding real MIDI with 1 worker vs all cores
"""
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import torch

from pianogpt.cli import CliError, Parser, fail, positive_int, run_program
from pianogpt.training.config import config_file_values
from pianogpt.generation.engine import guided_logits, sample_next
from model import ModelConfig, ModelOptions, MusicTransformer
from pianogpt.devices import (autocast_context, cpu_description, device_type_of, machine_matmul_peak, require_compile,
                              resolve_device, resolve_dtype)
from pianogpt.generation.engine import generate
from pianogpt.training.optim import configure_optimizers

CASES = ("matmul", "train", "loop", "sample", "prepare")
CPU_SHAPE_BEFORE = dict(n_layer=4, n_head=4, n_embd=128)  # config/remi_cpu.py before the modern recipe
ROOT = os.path.dirname(os.path.abspath(__file__))


def emit(record):
    print(json.dumps(record), flush=True)


def sync(device):
    if device_type_of(device) == "cuda":
        torch.cuda.synchronize()


def model_config(shape, block_size, dropout=0.0):
    return ModelConfig(block_size=block_size, vocab_size=419, n_composers=27, dropout=dropout, **shape)


def make_model(cfg, device):
    torch.manual_seed(0)
    return MusicTransformer(cfg).to(device)


def shipped_recipe(name):
    """(ModelConfig, batch_size, optimizer) of config/<name>.py as shipped: its model options
    exactly as train.py reads them (model.ModelOptions), dropout off for timing."""
    values = config_file_values(os.path.join(ROOT, "config", f"{name}.py"))
    options = {f.name: values[f.name] for f in dataclasses.fields(ModelOptions) if f.name in values}
    model_cfg = ModelConfig(**options | {"dropout": 0.0}, vocab_size=419, n_composers=27)
    return model_cfg, values["batch_size"] * values["grad_accum"], values["optimizer"]


def shape_of(cfg):
    return dict(n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd)


def not_default(cfg):
    """The ModelConfig fields that differ from the defaults (the GPT-2 baseline's architecture): shape and levers."""
    default = ModelConfig()
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)
            if getattr(cfg, f.name) != getattr(default, f.name)}


def bench_train(name, cfg, batch_size, device, dtype, peak, steps, compile_model=False, optimizer="adamw"):
    block_size = cfg.block_size
    model = make_model(cfg, device)
    optimizer_name = optimizer
    optimizer = configure_optimizers(model, 0.1, 1e-4, device_type=device_type_of(device),
                                           optimizer=optimizer_name)
    step_model = torch.compile(model) if compile_model else model
    ctx = autocast_context(device_type_of(device), dtype)
    x = torch.randint(2, 419, (batch_size, block_size), device=device)
    composer = torch.randint(0, 27, (batch_size,), device=device)

    def step():
        with ctx:
            _, loss = step_model(x, composer, targets=x)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    start = time.perf_counter()
    for _ in range(2):  # warm-up (and compilation)
        step()
    sync(device)
    warmup = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    seconds = (time.perf_counter() - start) / steps
    tokens_per_s = batch_size * block_size / seconds
    flops = model.flops_per_token(block_size) * tokens_per_s
    emit({"case": "train", "model": name, **not_default(cfg), "optimizer": optimizer_name,
          "block_size": block_size, "batch_size": batch_size, "dtype": dtype, "compile": compile_model,
          "warmup_s": round(warmup, 1), "params_M": round(model.num_params() / 1e6, 2),
          "step_ms": round(seconds * 1e3, 1), "tokens_per_s": round(tokens_per_s),
          "achieved_GFLOPs": round(flops / 1e9, 1), "mfu_vs_measured_peak": round(flops / peak, 3)})


def timed(fn, device, repeats):
    """Best-of-3 mean seconds of fn() over `repeats` calls, after one warm-up call."""
    fn()
    sync(device)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        sync(device)
        best = min(best, (time.perf_counter() - start) / repeats)
    return best


def hf_gpt2_step_seconds(cfg, batch_size, device, repeats):
    """Forward + backward + fused AdamW of transformers' GPT2LMHeadModel at cfg's shape, or None
    where transformers is not installed."""
    try:
        from transformers import GPT2Config, GPT2LMHeadModel
    except ImportError:
        return None
    model = GPT2LMHeadModel(GPT2Config(vocab_size=cfg.vocab_size, n_positions=cfg.block_size, n_embd=cfg.n_embd,
                                       n_layer=cfg.n_layer, n_head=cfg.n_head, resid_pdrop=0.0, embd_pdrop=0.0,
                                       attn_pdrop=0.0)).to(device)
    model.config._attn_implementation = "sdpa"
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    x = torch.randint(2, cfg.vocab_size, (batch_size, cfg.block_size), device=device)

    def step():
        model(x, labels=x).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return timed(step, device, repeats)


def run_child(command, **kwargs):
    """Run one of this project's programs; its own one-line error (a full disk, a bad dataset) becomes
    ours, so a failed case never prints a traceback."""
    try:
        subprocess.run(command, check=True, capture_output=True, **kwargs)
    except subprocess.CalledProcessError as e:
        lines = (e.stderr or b"").decode(errors="replace").strip().splitlines() or [f"exit status {e.returncode}"]
        raise CliError(f"{os.path.basename(command[1])} failed: {lines[-1]}") from None


def temp_folder(prefix):
    try:
        return tempfile.mkdtemp(prefix=prefix)
    except OSError as e:
        raise CliError(f"cannot create a temp folder in {tempfile.gettempdir()}: {e.strerror or e}") from None


def loop_tokens_per_s(data_dir, iters):
    """Median tokens/s that train.py logs over `iters` iterations of config/remi_cpu.py on data_dir
    (the first logged interval, which holds the start-up, left out); None without the dataset."""
    if not os.path.isdir(data_dir):
        return None
    out = temp_folder("bench-loop-")
    try:
        run_child([sys.executable, os.path.join(ROOT, "train.py"), os.path.join(ROOT, "config", "remi_cpu.py"),
                   f"--data_dir={data_dir}", f"--out_dir={out}", f"--max_iters={iters}", "--max_minutes=0",
                   "--eval_interval=1000000", "--log_interval=10", "--save_every_min=0"], cwd=ROOT)
        with open(os.path.join(out, "log.jsonl")) as f:
            rates = [r["tokens_per_s"] for r in map(json.loads, f) if "tokens_per_s" in r][1:]
        return sorted(rates)[len(rates) // 2] if rates else None
    finally:
        shutil.rmtree(out, ignore_errors=True)


def bench_loop(cfg, batch_size, optimizer_name, device, dtype, data_dir, repeats, loop_iters):
    """Where a training step of the shipped config goes (see the module docstring)."""
    model = make_model(cfg, device)
    device_type = device_type_of(device)
    ctx = autocast_context(device_type, dtype)
    optimizer = configure_optimizers(model, 0.1, 1e-4, device_type=device_type, optimizer=optimizer_name)
    x = torch.randint(2, cfg.vocab_size, (batch_size, cfg.block_size), device=device)
    composer = torch.randint(0, cfg.n_composers, (batch_size,), device=device)

    def forward_backward():
        with ctx:
            _, loss = model(x, composer, targets=x)
        loss.backward()

    def optimizer_step():
        optimizer.step()

    def evaluation_forward():
        with torch.no_grad(), ctx:
            model(x, composer, targets=x)

    forward_backward()  # gradients for the optimizer's timing
    tokens = batch_size * cfg.block_size
    parts = {"forward_backward": timed(forward_backward, device, repeats), "optimizer_step": timed(optimizer_step, device, repeats)}
    model.zero_grad(set_to_none=True)
    parts["eval_forward"] = timed(evaluation_forward, device, repeats)
    if os.path.isdir(data_dir):
        import numpy as np

        from pianogpt.data.dataset import WindowSampler, open_dataset

        sampler = WindowSampler(open_dataset(data_dir), "train", cfg.block_size)
        rng = np.random.default_rng(0)
        parts["data_batch"] = timed(lambda: sampler.batch(rng.integers(0, len(sampler), batch_size), rng), "cpu", repeats)
    step = parts["forward_backward"] + parts["optimizer_step"] + parts.get("data_batch", 0.0)
    record = {"case": "loop", "optimizer": optimizer_name, "dtype": dtype, "tokens_per_step": tokens,
              **{f"{k}_ms": round(v * 1e3, 1) for k, v in parts.items()},
              "optimizer_share_of_step": round(parts["optimizer_step"] / step, 3),
              "bare_forward_backward_tokens_per_s": round(tokens / parts["forward_backward"]),
              "bare_step_tokens_per_s": round(tokens / (parts["forward_backward"] + parts["optimizer_step"]))}
    hf = hf_gpt2_step_seconds(cfg, batch_size, device, repeats) if device_type == "cpu" or device_type == "cuda" else None
    record["hf_gpt2_step_tokens_per_s"] = round(tokens / hf) if hf else "transformers not installed"
    if device_type == "cpu" and loop_iters:
        loop = loop_tokens_per_s(data_dir, loop_iters)
        record["train_py_loop_tokens_per_s"] = loop if loop else f"no dataset at {data_dir}"
        if loop:
            record["loop_over_bare_step"] = round(loop / record["bare_step_tokens_per_s"], 3)
    emit(record)


@torch.no_grad()
def generate_recompute(model, idx, composer, max_new_tokens, guidance, temperature=0.9, top_k=40, top_p=0.95,
                       generator=None):
    """The GPT-2 baseline's sampler: a full forward over the whole (cropped) context for every token.
    CFG rows go in one batch here too, so the comparison isolates the KV cache."""
    block = model.config.block_size
    use_cfg = guidance != 1.0
    conditions = torch.cat([composer, torch.zeros_like(composer)]) if use_cfg else composer
    seq = idx
    for _ in range(max_new_tokens):
        context = seq[:, -block:]
        logits, _ = model(torch.cat([context, context]) if use_cfg else context, conditions)
        logits = guided_logits(logits[:, -1], guidance) if use_cfg else logits[:, -1].float()
        seq = torch.cat([seq, sample_next(logits, temperature, top_k, top_p, generator)], dim=1)
    return seq


def time_recompute_steps(model, prompt_len, new_tokens, guidance, device, points=6):
    """Per-token time of the recompute sampler at `points` context lengths between the first
    and the last step, integrated (trapezoid) over all new_tokens steps: the full run would
    take too long on a CPU, and its cost per step is a smooth function of the context length."""
    lengths = [prompt_len + round(i * (new_tokens - 1) / (points - 1)) for i in range(points)]
    composer = torch.ones(1, dtype=torch.long, device=device)
    per_step = []
    for length in lengths:
        idx = torch.randint(2, 419, (1, min(length, model.config.block_size)), device=device)
        generate_recompute(model, idx, composer, 1, guidance)  # warm-up at this shape
        sync(device)
        start = time.perf_counter()
        generate_recompute(model, idx, composer, 2, guidance)
        sync(device)
        per_step.append((time.perf_counter() - start) / 2)
    total = sum((a + b) / 2 * (lengths[i + 1] - lengths[i]) for i, (a, b) in enumerate(zip(per_step, per_step[1:])))
    return total + per_step[0], lengths, per_step


def time_generate(model, idx, composer, new_tokens, guidance, device, compile_step, prepack=True):
    sync(device)
    start = time.perf_counter()
    generate(model, idx, composer, new_tokens, guidance=guidance, compile=compile_step, prepack=prepack,
                   generator=torch.Generator(device=device).manual_seed(0))
    sync(device)
    return time.perf_counter() - start


def bench_sample(shape, block_size, prompt_len, new_tokens, device, recompute_points, dtype="float32"):
    """Decode steps side by side (eager as generate runs it: prepacked weights, one bf16 row through
    aten's GEMV; eager with plain weights on a CPU; compiled): tokens/s per sample and end-to-end
    seconds for 1 and 4 samples at guidance 1 and 3; compile seconds; the recompute baseline."""
    model = make_model(model_config(shape, block_size), device).eval().to(getattr(torch, dtype))
    steps = {"eager": (False, True), "compiled": (True, False)}
    if device == "cpu":
        steps["eager_plain_weights"] = (False, False)
    results = {}
    for step_name, (compile_step, prepack) in steps.items():
        composer = torch.ones(1, dtype=torch.long, device=device)
        idx = torch.randint(2, 419, (1, prompt_len), device=device)
        first = time_generate(model, idx, composer, 8, 3.0, device, compile_step, prepack)  # warm-up, compilation
        first += time_generate(model, idx, composer, 8, 1.0, device, compile_step, prepack)
        for num_samples in (1, 4):
            for guidance in (1.0, 3.0):
                rows = idx.expand(num_samples, -1)
                seconds = time_generate(model, rows, composer.expand(num_samples), new_tokens, guidance, device,
                                        compile_step, prepack)
                results[step_name, num_samples, guidance] = seconds
                emit({"case": "sample", **shape, "dtype": dtype, "block_size": block_size, "prompt": prompt_len,
                      "new_tokens": new_tokens, "decode_step": step_name,
                      "samples": num_samples, "guidance": guidance, "seconds": round(seconds, 2),
                      "tokens_per_s_per_sample": round(new_tokens / seconds, 1),
                      **({"first_calls_s": round(first, 1)} if num_samples == 1 and guidance == 1.0 else {})})
    for step_name in steps:
        one = results[step_name, 1, 1.0]
        emit({"case": "sample_cost", "decode_step": step_name,
              "guidance_3_over_1": round(results[step_name, 1, 3.0] / one, 2),
              "four_samples_over_one": round(results[step_name, 4, 1.0] / one, 2),
              "speed_vs_eager_g1": round(results["eager", 1, 1.0] / one, 2)})
    if recompute_points:
        idx, composer = torch.randint(2, 419, (1, prompt_len), device=device), torch.ones(1, dtype=torch.long,
                                                                                            device=device)
        for guidance in (1.0, 3.0):
            recompute, lengths, _ = time_recompute_steps(model, prompt_len, new_tokens, guidance, device,
                                                         recompute_points)
            emit({"case": "sample_recompute", "guidance": guidance, "recompute_tokens_per_s": round(new_tokens / recompute, 2),
                  "recompute_method": f"timed at contexts {lengths}, trapezoid over {new_tokens} steps",
                  "kv_cache_speedup": round(recompute / results["eager", 1, guidance], 1)})


def bench_prepare(midi_dir, workers_all):
    """prepare.py, run as a program, on midi_dir with 1 worker and with every core."""
    n = sum(name.lower().endswith((".mid", ".midi")) for _, _, names in os.walk(midi_dir) for name in names)
    for workers in sorted({1, workers_all}):
        out = temp_folder("bench-prepare-")
        try:
            start = time.perf_counter()
            run_child([sys.executable, os.path.join(ROOT, "prepare.py"), "--midi_dir", str(midi_dir), "--out_dir",
                       os.path.join(out, "data"), "--workers", str(workers)])
            seconds = time.perf_counter() - start
        finally:
            shutil.rmtree(out, ignore_errors=True)
        emit({"case": "prepare", "midi_dir": str(midi_dir), "files": n, "workers": workers,
              "seconds": round(seconds, 2), "pieces_per_s": round(n / seconds, 1)})


def main(argv=None):
    parser = Parser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"))
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated subset of {','.join(CASES)}")
    parser.add_argument("--baseline_block_size", type=positive_int, default=None,
                        help="context for the GPT-2 baseline's training case (default: 8192 on CUDA, 1024 on CPU)")
    parser.add_argument("--new_tokens", type=positive_int, default=2048)
    parser.add_argument("--midi_dir", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "shared",
                                                           "midi", "piano-midi"))
    parser.add_argument("--compile", action="store_true", help="torch.compile the training cases")
    parser.add_argument("--data_dir", default=os.path.join(ROOT, "data", "classical"),
                        help="dataset for the loop case's data sampler and train.py run (skipped where absent)")
    parser.add_argument("--loop_iters", type=positive_int, default=60, help="train.py iterations of the loop case")
    parser.add_argument("--quick", action="store_true", help="tiny shapes and lengths (tests the script)")
    parser.add_argument("--no_recompute", action="store_true", help="skip the GPT-2 baseline's recompute-every-step baseline")
    parser.add_argument("--sample_dtype", default="float32", choices=("float32", "bfloat16", "float16"),
                        help="weights and KV cache precision of the sample case")
    args = parser.parse_args(argv)
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        fail(parser.prog, f"unknown case {unknown[0]!r}; valid cases: {', '.join(CASES)}")
    run_program(parser.prog, lambda: run_cases(args, cases),
                kept=lambda: "bench.py keeps nothing on disk; the records printed above are complete")


def run_cases(args, cases):
    """Each chosen case in turn, one JSON record per measurement on stdout."""
    device = resolve_device(args.device)
    device_type = device_type_of(device)
    if args.compile:
        require_compile(device, "--compile", "leave --compile out to time the eager step")
    dtype = resolve_dtype("auto", device_type)
    name = torch.cuda.get_device_name() if device_type == "cuda" else cpu_description()
    emit({"case": "machine", "device": device, "name": name, "threads": torch.get_num_threads(),
          "cpu_count": os.cpu_count(), "torch": torch.__version__, "dtype": dtype})
    baseline_shape, cpu_before = shape_of(shipped_recipe("remi_8layer")[0]), CPU_SHAPE_BEFORE
    cpu_cfg, cpu_batch, cpu_optimizer = shipped_recipe("remi_cpu")
    baseline_block = args.baseline_block_size or (8192 if device_type == "cuda" else 1024)
    new_tokens, steps, points = args.new_tokens, 5, 6
    if args.quick:
        baseline_shape = cpu_before = dict(n_layer=1, n_head=2, n_embd=32)
        cpu_cfg = dataclasses.replace(cpu_cfg, n_layer=1, n_head=2, n_embd=32, block_size=64)
        baseline_block, new_tokens, steps, points, cpu_batch = 64, 16, 1, 2, 8
    peak = machine_matmul_peak(device, dtype)
    if "matmul" in cases:
        emit({"case": "matmul", "dtype": dtype, "peak_GFLOPs": round(peak / 1e9, 1),
              **({"float32_GFLOPs": round(machine_matmul_peak(device, "float32") / 1e9, 1)} if dtype != "float32" else {})})
    if "train" in cases:
        bench_train("gpt2_baseline", model_config(baseline_shape, baseline_block, dropout=0.1), 1 if device_type == "cpu" else 2,
                    device, dtype, peak, steps, args.compile)
        # today's CPU recipe before the modern levers (the same maths as the old code), then the shipped one
        bench_train("remi_cpu_before", model_config(cpu_before, 64 if args.quick else 512), 8, device, dtype, peak,
                    steps, args.compile)
        bench_train("remi_cpu", cpu_cfg, cpu_batch, device, dtype, peak, steps, args.compile, optimizer=cpu_optimizer)
    if "loop" in cases:
        bench_loop(cpu_cfg, cpu_batch, cpu_optimizer, device, dtype, args.data_dir, 1 if args.quick else 5,
                   0 if args.quick else args.loop_iters)
    if "sample" in cases:
        bench_sample(baseline_shape, 64 if args.quick else 8192, 8 if args.quick else 128, new_tokens, device,
                     0 if args.no_recompute else points, args.sample_dtype)
    if "prepare" in cases:
        if os.path.isdir(args.midi_dir):
            bench_prepare(args.midi_dir, os.cpu_count() or 1)
        else:
            emit({"case": "prepare", "skipped": f"{args.midi_dir} not found (pass --midi_dir)"})


if __name__ == "__main__":
    main()
