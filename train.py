"""Train the composer-conditioned transformer on a prepared dataset.

    python train.py config/remi_cpu.py                      # small model, minutes on a laptop CPU
    python train.py config/remi_8layer.py --batch_size=4    # the GPT-2 baseline's run (GPU)
    torchrun --nproc_per_node=4 train.py config/remi_8layer.py
    python train.py config/remi_cpu.py --init_from=resume   # continue from out_dir/ckpt.pt
    python train.py config/finetune.py --init_from=out/classical/ckpt.pt --data_dir=data/mine  # a new composer

Config: a plain-Python file of assignments, then --key=value overrides; every key is a
field of TrainConfig (pianogpt/training/config.py; an unknown key is an error).
"""
import contextlib
import dataclasses
import json
import math
import os
import sys
import time
from dataclasses import asdict

import numpy as np
import torch

from model import MusicTransformer, load_state
from pianogpt.checkpoints import save_checkpoint
from pianogpt.cli import CliError, StopAtSafePoint, Stopped, run_program
from pianogpt.training.compile_auto import CompileTrial, memory_key
from pianogpt.training.config import TrainConfig, load_config, model_config_of
from pianogpt.data.dataset import WindowSampler, open_dataset, pad_share, piece_weights, train_pieces
from pianogpt.devices import (autocast_context, cpu_description, device_type_of, machine_key, machine_matmul_peak,
                              require_compile, resolve_device, resolve_dtype)
from pianogpt.files import FolderLock
from pianogpt.training.finetune import (adopt_base_model, base_checkpoint, composer_train_pieces, is_fine_tune,
                               join_composer_tables, learn_new_rows_only, load_base_weights, open_replay, resumable)
from pianogpt.generation.infill import arrange_batch
from pianogpt.training.lifecycle import (across_processes, check_ranks_agree, end_processes, keep_previous_run,
                                largest_on_any_rank, rank0_value, resume_command, start_processes, under_torchrun,
                                write_curves)
from pianogpt.training.optim import lr_at, orthogonalization_dtype
from pianogpt.data.periods import period_ids
from pianogpt.training.optim import configure_optimizers


class Run:
    """What one training run holds: its config, where it runs, its data, model, optimizer and clock.
    Built by set_up; read and advanced by the loop."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.ddp = under_torchrun()
        self.rank, self.world = 0, 1
        self.best_val, self.start_iter, self.seconds_before = float("inf"), 0, 0.0
        self.log_file = None

    @property
    def master(self):
        return self.rank == 0

    def say(self, *args, **kwargs):
        if self.master:
            print(*args, **kwargs)

    def log(self, record):
        if self.master:
            self.log_file.write(json.dumps(record) + "\n")
            self.log_file.flush()

    def train_seconds(self):
        """Training wall time, the part before a resume included (the time budget counts it)."""
        return self.seconds_before + time.perf_counter() - self.loop_start

    def checkpoint_state(self, it):
        return {"model": self.raw_model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict(), "iter": it, "best_val_loss": self.best_val,
                "train_seconds": self.train_seconds(), "model_config": asdict(self.model_cfg),
                "train_config": asdict(self.cfg), "tokenizer": self.tokenizer_json, "composers": self.composers,
                "composer_train_pieces": self.composer_train_pieces, "new_composers": self.new_composers}

    def save(self, name, it):
        save_checkpoint(os.path.join(self.cfg.out_dir, name), self.checkpoint_state(it))
        if name == "ckpt.pt":
            self.last_save = time.perf_counter()


def train(cfg):
    """Run training; returns the last logged record. SIGINT/SIGTERM: checkpoint after the
    current step, then raise cli.Stopped."""
    with contextlib.ExitStack() as stack:
        run = set_up(cfg, stack)
        return training_loop(run)


# ----------------------------------------------------------------------------- set-up


def set_up(cfg, stack):
    """Processes, device and precision; data; model, optimizer and the resumed state; the log."""
    run = Run(cfg)
    run.base = base_checkpoint(cfg)
    if is_fine_tune(cfg, run.base):
        run.cfg = cfg = adopt_base_model(cfg, run.base)
    set_up_device(run)
    set_up_data(run)
    if run.master:  # one run per folder, held for the whole run (a resume into a live run's folder too)
        stack.enter_context(FolderLock(os.path.join(cfg.out_dir, ".lock"), f"out_dir {cfg.out_dir}"))
    run.stop = stack.enter_context(StopAtSafePoint("train.py"))
    set_up_model(run)
    run.peak = machine_matmul_peak(run.device, run.dtype)
    if run.master:
        os.makedirs(cfg.out_dir, exist_ok=True)
        if cfg.init_from == "scratch":
            keep_previous_run(cfg.out_dir, run.say)
        run.log_file = stack.enter_context(open(os.path.join(cfg.out_dir, "log.jsonl"), "a"))
    say_what_runs(run)
    return run


def set_up_device(run):
    """torchrun's process group, the device, the dtype and its autocast, and whether the device can
    do what the config asks (bf16, torch.compile) before any folder is made."""
    cfg = run.cfg
    run.device = resolve_device(cfg.device)
    if run.ddp:
        run.rank, run.world, run.device = start_processes(run.device, cfg.grad_accum)
    run.device_type = device_type_of(run.device)
    run.dtype = resolve_dtype(cfg.dtype, run.device_type)
    if cfg.compile == "on":
        require_compile(run.device, "compile=on", "--compile=auto or --compile=off trains eager")
    run.ctx = autocast_context(run.device_type, run.dtype)
    run.accum = cfg.grad_accum // run.world
    if run.device_type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def set_up_data(run):
    """The checked dataset, its train and val windows, the piece weights and the run's length."""
    cfg = run.cfg
    dataset = open_dataset(cfg.data_dir)  # every check before any work: a damaged dataset is one line
    run.meta, run.composers, run.tokenizer_json = dataset.meta, dataset.composers, dataset.tokenizer_json
    run.train_data = WindowSampler(dataset, "train", cfg.block_size)
    run.val_data = WindowSampler(dataset, "val", cfg.block_size)
    if len(run.train_data) == 0:
        raise CliError(f"{cfg.data_dir} has no training pieces")
    run.new_composers, run.replay_data = [], None
    if is_fine_tune(cfg, run.base):
        run.composers, run.new_composers = join_composer_tables(cfg, run.base, dataset,
                                                                (run.train_data, run.val_data), run.say)
        run.replay_data, run.replay_weights = open_replay(cfg, run.composers, run.tokenizer_json)
    run.piece_weights = piece_weights(run.train_data.index[:, 2], run.train_data.renditions, cfg.composer_balance,
                                      cfg.rendition_weight, dataset.archive_ids("train"), cfg.archive_balance)
    run.composer_train_pieces = composer_train_pieces(cfg, run.base, run.composers, run.train_data, run.replay_data)
    samples_per_iter = cfg.batch_size * cfg.grad_accum
    run.max_iters = cfg.max_iters or math.ceil(cfg.epochs * len(run.train_data) / samples_per_iter)
    run.tokens_per_iter = samples_per_iter * cfg.block_size


def set_up_model(run):
    """The model (the same initial weights on every rank and run), its optimizer and scaler, the
    state of the checkpoint it resumes, and the compiled / DDP wrappers the steps call."""
    cfg = run.cfg
    run.model_cfg = model_config_of(cfg, {**run.meta, "n_composers": len(run.composers)})
    torch.manual_seed(cfg.seed)
    model = MusicTransformer(run.model_cfg)
    checkpoint = resumable(run.base, run.model_cfg, cfg.optimizer, run.max_iters) if cfg.init_from == "resume" else None
    if checkpoint:
        load_state(model, checkpoint["model"])
    elif run.base is not None:
        load_base_weights(model, run.base)
    if run.model_cfg.n_periods:  # by name: a fine-tune's new composers join their period's rows
        model.period_of.copy_(torch.tensor(period_ids(run.composers)))
    model.to(run.device)
    weight_decay = cfg.weight_decay
    if is_fine_tune(cfg, run.base) and cfg.finetune == "new_rows":
        learn_new_rows_only(model, len(run.composers) - len(run.new_composers))
        weight_decay = 0.0  # decay would shrink the frozen rows
    run.optimizer = configure_optimizers(model, weight_decay, cfg.learning_rate, (cfg.beta1, cfg.beta2),
                                               run.device_type, cfg.optimizer)
    run.scaler = torch.amp.GradScaler(run.device_type, enabled=run.dtype == "float16")
    if checkpoint:
        run.optimizer.load_state_dict(checkpoint["optimizer"])
        run.scaler.load_state_dict(checkpoint["scaler"])
        run.start_iter, run.best_val = checkpoint["iter"], checkpoint["best_val_loss"]
        run.seconds_before = checkpoint.get("train_seconds", 0.0)
    run.raw_model = model
    if cfg.compile == "on":
        model = torch.compile(model)
    run.model = model = across_processes(model, run.device) if run.ddp else model
    key = memory_key(machine_key(run.device, run.dtype), run.model_cfg, cfg.block_size, cfg.batch_size, cfg.optimizer)
    run.compile_trial = CompileTrial(model, key, run.device, run.ddp, run.master, say=lambda line: run.bar.write(line),
                                     log=run.log) if cfg.compile == "auto" else None


def say_what_runs(run):
    cfg, model = run.cfg, run.raw_model
    hardware = f"{run.device} ({cpu_description()})" if run.device_type == "cpu" else run.device
    if cfg.optimizer == "muon":  # bf16 only where the device runs it natively (optim.orthogonalization_dtype)
        hardware += f", Muon orthogonalising in {str(orthogonalization_dtype(run.device)).removeprefix('torch.')}"
    run.say(f"data {cfg.data_dir}: {len(run.train_data)} train / {len(run.val_data)} val pieces, "
            f"{run.meta['n_composers'] - 1} composers; PAD share of training targets "
            f"{pad_share(run.train_data, cfg.batch_size, cfg.seed):.1%}")
    run.say(f"model {model.num_params() / 1e6:.2f}M parameters; device {hardware}, {run.dtype}, {run.world} "
            f"process(es); {run.tokens_per_iter:,} tokens/iter; iters {run.start_iter} -> {run.max_iters}; "
            f"matmul peak {run.peak / 1e9:.0f} GFLOP/s")


# ----------------------------------------------------------------------------- the loop


def training_loop(run):
    """Evaluate and checkpoint when due, stop on a signal or the budget, else take one step."""
    from tqdm import tqdm

    cfg = run.cfg
    run.bar = bar = tqdm(total=run.max_iters, initial=run.start_iter, desc="train", unit="it",
                         disable=not run.master or None, file=sys.stdout)
    run.loop_start = run.last_save = time.perf_counter()
    last, bad_steps, iters_timed, t0 = {}, 0, 0, time.perf_counter()
    run.model.train()
    for it in range(run.start_iter, run.max_iters + 1):
        if run.master and cfg.save_every_min > 0 and time.perf_counter() - run.last_save >= 60 * cfg.save_every_min:
            run.save("ckpt.pt", it)
        out_of_time = budget_used(run.train_seconds(), cfg, run.ddp) >= 1.0
        resumed_here = cfg.init_from == "resume" and it == run.start_iter  # that state was evaluated already
        if (it % cfg.eval_interval == 0 and not resumed_here) or it == run.max_iters or out_of_time:
            evaluate_and_save(run, it)
        if it == run.max_iters or out_of_time:
            break
        stop_if_asked(run, it)
        lr = lr_at(it, cfg, run.max_iters, budget_used(run.train_seconds(), cfg, run.ddp))
        loss, grad_norm = timed_step(run, it, lr)
        if not math.isfinite(grad_norm):  # the step was skipped; the same on every rank (all-reduced gradients)
            bad_steps += 1
            run.log({"iter": it, "loss": loss, "skipped": "non-finite loss or gradient"})
            bar.write(f"iter {it}: non-finite loss/gradient, step skipped ({bad_steps} in a row)")
            if bad_steps >= 10 and run.dtype != "float16":
                raise RuntimeError("10 non-finite steps in a row: stopping; the last good checkpoint is kept")
            continue
        bad_steps = 0
        bar.update()
        iters_timed += 1
        if it % cfg.log_interval == 0 or it == run.max_iters - 1:
            tokens_per_s = run.tokens_per_iter * iters_timed / (time.perf_counter() - t0)
            last = {"iter": it, "loss": loss, "lr": lr, "grad_norm": grad_norm, "tokens_per_s": round(tokens_per_s),
                    "minutes": round(run.train_seconds() / 60, 3),
                    "mfu": round(run.raw_model.estimate_mfu(tokens_per_s / run.world, cfg.block_size, run.peak), 4)}
            run.log(last)
            bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{tokens_per_s:,.0f}")
            iters_timed, t0 = 0, time.perf_counter()
    bar.close()
    if run.ddp:
        check_ranks_agree(run.raw_model, run.say)
    end_processes(run.ddp)
    run.say(f"done: {it} iters in {run.train_seconds() / 60:.1f} min of training, best val loss {run.best_val:.4f}; "
            f"checkpoints in {cfg.out_dir}/")
    return last


def budget_used(seconds, cfg, ddp):
    """Share of the max_minutes budget used (0 without a budget); under DDP rank 0's clock decides."""
    if cfg.max_minutes <= 0:
        return 0.0
    return max(rank0_value(seconds / (60 * cfg.max_minutes), ddp), 1e-12)


def timed_step(run, it, lr):
    """train_step, through compile=auto's trial while it measures (it picks the model each step calls)."""
    trial = run.compile_trial
    if trial is None:
        return train_step(run, run.model, it, lr)
    start = time.perf_counter()
    result = trial.step(lambda model: train_step(run, model, it, lr),
                        lambda: run.optimizer.zero_grad(set_to_none=True), it)
    trial.step_done(it, time.perf_counter() - start, lambda step_s: seconds_left(run, it, step_s))
    return result


def seconds_left(run, it, step_s):
    """The run's remaining training time at step_s per step: iterations left, or the time budget."""
    left = (run.max_iters - it - 1) * step_s
    if run.cfg.max_minutes > 0:
        left = min(left, 60 * run.cfg.max_minutes - run.train_seconds())
    return left


def train_step(run, model, it, lr):
    """One optimizer step over grad_accum micro-batches; (summed loss, gradient norm). A
    non-finite gradient norm means the step was skipped (the float16 scaler backs off)."""
    cfg = run.cfg
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    torch.manual_seed(cfg.seed + 1_000_003 * it + run.rank)  # dropout masks: a function of (iter, rank)
    loss_sum = 0.0
    for micro in range(run.accum):
        x, y, composer, kind, role = (t if t is None else t.to(run.device) for t in micro_batch(run, it, micro))
        sync = model.no_sync() if run.ddp and micro < run.accum - 1 else contextlib.nullcontext()
        with sync, run.ctx:
            _, loss = model(x, composer, targets=y, kind=kind, role=role)
            loss = loss / run.accum
        run.scaler.scale(loss).backward()
        loss_sum += loss.item()
    run.scaler.unscale_(run.optimizer)
    grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(),
                                                     cfg.grad_clip if cfg.grad_clip > 0 else float("inf")))
    if math.isfinite(grad_norm):
        run.scaler.step(run.optimizer)
    run.scaler.update()
    run.optimizer.zero_grad(set_to_none=True)
    return loss_sum, grad_norm


def micro_batch(run, it, micro):
    """The windows of one micro-step (x, y, composer, kind, role or None): a function of (seed,
    rank, iteration, micro-step) alone, so a resumed run draws exactly the batches the
    uninterrupted one would have."""
    cfg = run.cfg
    rng = np.random.default_rng([cfg.seed, run.rank, it, micro])
    micro_step = it * cfg.grad_accum + run.rank * run.accum + micro
    n_replay = round(cfg.batch_size * cfg.replay_share) if run.replay_data is not None else 0
    n_new = cfg.batch_size - n_replay
    pieces = train_pieces(len(run.train_data), cfg.seed, micro_step * n_new, n_new, run.piece_weights)
    options = (cfg.cond_drop, cfg.kind_drop if cfg.n_kinds else 0.0)
    batch = run.train_data.batch(pieces, rng, *options)
    if n_replay:  # fine-tuning: the rest of the windows from the data the checkpoint learned from
        old = train_pieces(len(run.replay_data), cfg.seed + 1, micro_step * n_replay, n_replay, run.replay_weights)
        batch = tuple(torch.cat(pair) for pair in zip(batch, run.replay_data.batch(old, rng, *options)))
    if not cfg.infill_share:
        return (*batch, None)
    x, y, role = arrange_batch(batch[0], batch[1], rng, cfg.infill_share, run.train_data.bar_id,
                               run.train_data.pad_id, cfg.infill_bars, int(cfg.infill_middle * cfg.block_size))
    return x, y, batch[2], batch[3], role


# ----------------------------------------------------------------------------- evaluate, save, stop


@torch.no_grad()
def estimate_val_loss(model, sampler, cfg, ctx, device):
    """Mean val NLL over eval_iters fixed windows, with the true composer and with composer 0."""
    if sampler is None or len(sampler) == 0:
        return None, None
    model.eval()
    losses = {"true": [], "uncond": []}
    for i in range(cfg.eval_iters):
        rng = np.random.default_rng([cfg.seed, 7, i])  # the same windows at every evaluation
        x, y, composer, kind = (t.to(device) for t in sampler.batch(rng.integers(0, len(sampler), cfg.batch_size), rng))
        with ctx:
            for name, given in (("true", composer), ("uncond", torch.zeros_like(composer))):
                nll, real = model.target_nll(x, given, y, kind)
                losses[name].append((nll.sum() / real.sum()).item())
    model.train()
    return float(np.mean(losses["true"])), float(np.mean(losses["uncond"]))


def evaluate_and_save(run, it):
    """Val loss (true composer and composer 0), logged and charted; best.pt when it improves,
    ckpt.pt unless it is not finite."""
    val, val_uncond = estimate_val_loss(run.raw_model, run.val_data, run.cfg, run.ctx, run.device)
    if not run.master:
        return
    run.log({"iter": it, "val_loss": val, "val_loss_uncond": val_uncond, "minutes": round(run.train_seconds() / 60, 3)})
    write_curves(run.cfg.out_dir)
    run.bar.write(f"iter {it}: val loss {val if val is None else round(val, 4)} "
                  f"(composer 0: {val_uncond if val_uncond is None else round(val_uncond, 4)})")
    if val is not None and math.isfinite(val) and val < run.best_val:
        run.best_val = val
        run.save("best.pt", it)
    if val is None or math.isfinite(val):
        run.save("ckpt.pt", it)


def stop_if_asked(run, it):
    """After SIGINT / SIGTERM (on any rank: every rank stops at this iteration): ckpt.pt with the
    exact state before iteration it, then cli.Stopped, saying how to resume."""
    signum = largest_on_any_rank(run.stop.asked(), run.ddp)
    if not signum:
        return
    stop = Stopped(signum, kept=f"before iteration {it}; {os.path.join(run.cfg.out_dir, 'ckpt.pt')} holds the state "
                                f"after the last finished step. Resume with: {resume_command()}")
    if run.master:
        run.save("ckpt.pt", it)
        run.log({"iter": it, "stopped": stop.name})
    run.bar.close()
    end_processes(run.ddp)
    raise stop


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        print("keys (default):")
        for f in dataclasses.fields(TrainConfig):
            print(f"  --{f.name}={f.default}")
        return
    run_program("train.py", lambda: train(load_config(TrainConfig, argv)),
                kept=lambda: "the last checkpoint written (if any) is kept")


if __name__ == "__main__":
    main()
