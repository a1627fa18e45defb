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
import math
import os
import sys
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch

from model import MusicTransformer, load_state
from pianogpt.checkpoints import save_checkpoint
from pianogpt.cli import CliError, StopAtSafePoint, Stopped, run_program
from pianogpt.devices import cpu_description, machine_key, machine_matmul_peak
from pianogpt.files import FolderLock
from pianogpt.data.dataset import WindowSampler, open_dataset, pad_share, piece_weights, train_pieces
from pianogpt.data.periods import period_ids
from pianogpt.generation.infill import arrange_batch
from pianogpt.training.compile_auto import CompileTrial, memory_key
from pianogpt.training.config import TrainConfig, load_config, model_config_of
from pianogpt.training.finetune import (adopt_base_model, base_checkpoint, composer_train_pieces, is_fine_tune,
                                        join_composer_tables, learn_new_rows_only, load_base_weights, open_replay,
                                        resumable)
from pianogpt.training.lifecycle import (Clock, Log, across_processes, check_ranks_agree, end_processes,
                                         keep_previous_run, largest_on_any_rank, resume_command, set_up_place,
                                         write_curves)
from pianogpt.training.optim import configure_optimizers, lr_at, orthogonalization_dtype

# ----------------------------------------------------------------------------- what the loop holds (beside
# lifecycle's Place, Clock and Log)


@dataclass
class Data:
    """The windows the run learns from and is scored on, and the composer table they are labelled by."""
    meta: dict
    composers: dict
    tokenizer_json: str
    train: WindowSampler
    val: WindowSampler
    weights: np.ndarray  # each training piece's chance of being drawn
    new_composers: list  # a fine-tune's composers the checkpoint did not know
    composer_train_pieces: dict
    replay: WindowSampler = None  # fine-tuning: windows of the data the checkpoint learned from
    replay_weights: np.ndarray = None


@dataclass
class Learner:
    """The model (raw, and wrapped as the steps call it), its optimizer and scaler, and the best val loss."""
    model_cfg: object
    raw_model: MusicTransformer
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    best_val: float = float("inf")


def train(cfg):
    """Run training; returns the last logged record. SIGINT/SIGTERM: checkpoint after the
    current step, then raise cli.Stopped."""
    with contextlib.ExitStack() as stack:
        base = base_checkpoint(cfg)
        if is_fine_tune(cfg, base):
            cfg = adopt_base_model(cfg, base)
        place = set_up_place(cfg)
        log = Log(place.master)
        data = open_data(cfg, base, log)
        if place.master:  # one run per folder, held for the whole run (a resume into a live run's folder too)
            stack.enter_context(FolderLock(os.path.join(cfg.out_dir, ".lock"), f"out_dir {cfg.out_dir}"))
        stop = stack.enter_context(StopAtSafePoint("train.py"))
        learner, clock = build_learner(cfg, base, data, place)
        if place.master:
            os.makedirs(cfg.out_dir, exist_ok=True)
            if cfg.init_from == "scratch":
                keep_previous_run(cfg.out_dir, log.say)
            log.file = stack.enter_context(open(os.path.join(cfg.out_dir, "log.jsonl"), "a"))
        peak = machine_matmul_peak(place.device, place.dtype)
        say_what_runs(cfg, place, data, learner, clock, peak, log)
        return training_loop(cfg, place, data, learner, clock, log, stop, peak)


# ----------------------------------------------------------------------------- set-up


def open_data(cfg, base, log):
    """The checked dataset, its train and val windows, the piece weights; a fine-tune's joined
    composer table and replayed data."""
    dataset = open_dataset(cfg.data_dir)  # every check before any work: a damaged dataset is one line
    train_data = WindowSampler(dataset, "train", cfg.block_size)
    val_data = WindowSampler(dataset, "val", cfg.block_size)
    if len(train_data) == 0:
        raise CliError(f"{cfg.data_dir} has no training pieces")
    composers, new_composers, replay, replay_weights = dataset.composers, [], None, None
    if is_fine_tune(cfg, base):
        composers, new_composers = join_composer_tables(cfg, base, dataset, (train_data, val_data), log.say)
        replay, replay_weights = open_replay(cfg, composers, dataset.tokenizer_json)
    weights = piece_weights(train_data.index[:, 2], train_data.renditions, cfg.composer_balance,
                            cfg.rendition_weight, dataset.archive_ids("train"), cfg.archive_balance)
    return Data(dataset.meta, composers, dataset.tokenizer_json, train_data, val_data, weights, new_composers,
                composer_train_pieces(cfg, base, composers, train_data, replay), replay, replay_weights)


def build_learner(cfg, base, data, place):
    """The model (the same initial weights on every rank and run), its optimizer and scaler, the
    state of the checkpoint it resumes, the compiled / DDP wrappers the steps call; and the clock."""
    max_iters = cfg.max_iters or math.ceil(cfg.epochs * len(data.train) / (cfg.batch_size * cfg.grad_accum))
    model_cfg = model_config_of(cfg, {**data.meta, "n_composers": len(data.composers)})
    torch.manual_seed(cfg.seed)
    model = MusicTransformer(model_cfg)
    checkpoint = resumable(base, model_cfg, cfg.optimizer, max_iters) if cfg.init_from == "resume" else None
    if checkpoint:
        load_state(model, checkpoint["model"])
    elif base is not None:
        load_base_weights(model, base)
    if model_cfg.n_periods:  # by name: a fine-tune's new composers join their period's rows
        model.period_of.copy_(torch.tensor(period_ids(data.composers)))
    model.to(place.device)
    weight_decay = cfg.weight_decay
    if is_fine_tune(cfg, base) and cfg.finetune == "new_rows":
        learn_new_rows_only(model, len(data.composers) - len(data.new_composers))
        weight_decay = 0.0  # decay would shrink the frozen rows
    optimizer = configure_optimizers(model, weight_decay, cfg.learning_rate, (cfg.beta1, cfg.beta2), place.device_type,
                                     cfg.optimizer)
    scaler = torch.amp.GradScaler(place.device_type, enabled=place.dtype == "float16")
    if checkpoint:
        optimizer.load_state_dict(checkpoint["optimizer"])
        scaler.load_state_dict(checkpoint["scaler"])
    learner = Learner(model_cfg, model, model, optimizer, scaler,
                      checkpoint["best_val_loss"] if checkpoint else float("inf"))
    clock = Clock(cfg, place.ddp, checkpoint["iter"] if checkpoint else 0, max_iters,
                  checkpoint.get("train_seconds", 0.0) if checkpoint else 0.0)
    wrapped = torch.compile(model) if cfg.compile == "on" else model
    learner.model = across_processes(wrapped, place.device) if place.ddp else wrapped
    return learner, clock


def say_what_runs(cfg, place, data, learner, clock, peak, log):
    hardware = f"{place.device} ({cpu_description()})" if place.device_type == "cpu" else place.device
    if cfg.optimizer == "muon":  # bf16 only where the device runs it natively (optim.orthogonalization_dtype)
        hardware += f", Muon orthogonalising in {str(orthogonalization_dtype(place.device)).removeprefix('torch.')}"
    log.say(f"data {cfg.data_dir}: {len(data.train)} train / {len(data.val)} val pieces, "
            f"{data.meta['n_composers'] - 1} composers; PAD share of training targets "
            f"{pad_share(data.train, cfg.batch_size, cfg.seed):.1%}")
    log.say(f"model {learner.raw_model.num_params() / 1e6:.2f}M parameters; device {hardware}, {place.dtype}, "
            f"{place.world} process(es); {clock.tokens_per_iter:,} tokens/iter; iters {clock.start_iter} -> "
            f"{clock.max_iters}; matmul peak {peak / 1e9:.0f} GFLOP/s")


# ----------------------------------------------------------------------------- the loop


def training_loop(cfg, place, data, learner, clock, log, stop, peak):
    """Evaluate and checkpoint when due, stop on a signal or the budget, else take one step."""
    from tqdm import tqdm

    log.bar = tqdm(total=clock.max_iters, initial=clock.start_iter, desc="train", unit="it",
                   disable=not place.master or None, file=sys.stdout)
    trial = CompileTrial(learner.model, memory_key(machine_key(place.device, place.dtype), learner.model_cfg,
                                                   cfg.block_size, cfg.batch_size, cfg.optimizer),
                         place.device, place.ddp, place.master, say=log.say, log=log.record) \
        if cfg.compile == "auto" else None
    clock.start()
    last, bad_steps, iters_timed, t0 = {}, 0, 0, time.perf_counter()
    learner.model.train()
    for it in range(clock.start_iter, clock.max_iters + 1):
        if place.master and clock.save_due():
            save(cfg, data, learner, clock, "ckpt.pt", it)
        used = clock.budget_used()  # once a step: under DDP each reading is a broadcast
        resumed_here = cfg.init_from == "resume" and it == clock.start_iter  # that state was evaluated already
        if (it % cfg.eval_interval == 0 and not resumed_here) or it == clock.max_iters or used >= 1.0:
            evaluate_and_save(cfg, place, data, learner, clock, log, it)
        if it == clock.max_iters or used >= 1.0:
            break
        stop_if_asked(cfg, place, data, learner, clock, log, stop, it)
        lr = lr_at(it, cfg, clock.max_iters, used)
        model = trial.model if trial is not None else learner.model  # compile=auto decides which model steps
        started = time.perf_counter()
        loss, grad_norm = train_step(cfg, place, data, learner, model, it, lr, trial)
        if trial is not None:
            trial.step_done(it, time.perf_counter() - started, clock.max_iters - it - 1, clock.budget_left_s())
        if not math.isfinite(grad_norm):  # the step was skipped; the same on every rank (all-reduced gradients)
            bad_steps += 1
            log.record({"iter": it, "loss": loss, "skipped": "non-finite loss or gradient"})
            log.say(f"iter {it}: non-finite loss/gradient, step skipped ({bad_steps} in a row)")
            if bad_steps >= 10 and place.dtype != "float16":
                raise RuntimeError("10 non-finite steps in a row: stopping; the last good checkpoint is kept")
            continue
        bad_steps = 0
        log.bar.update()
        iters_timed += 1
        if it % cfg.log_interval == 0 or it == clock.max_iters - 1:
            tokens_per_s = clock.tokens_per_iter * iters_timed / (time.perf_counter() - t0)
            last = {"iter": it, "loss": loss, "lr": lr, "grad_norm": grad_norm, "tokens_per_s": round(tokens_per_s),
                    "minutes": round(clock.train_seconds() / 60, 3),
                    "mfu": round(learner.raw_model.estimate_mfu(tokens_per_s / place.world, cfg.block_size, peak), 4)}
            log.record(last)
            log.bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{tokens_per_s:,.0f}")
            iters_timed, t0 = 0, time.perf_counter()
    log.close_bar()
    if place.ddp:
        check_ranks_agree(learner.raw_model, log.say)
    end_processes(place.ddp)
    log.say(f"done: {it} iters in {clock.train_seconds() / 60:.1f} min of training, best val loss "
            f"{learner.best_val:.4f}; checkpoints in {cfg.out_dir}/")
    return last


def train_step(cfg, place, data, learner, model, it, lr, trial=None):
    """One optimizer step over grad_accum micro-batches through `model`; (summed loss, gradient norm).
    A non-finite gradient norm means the step was skipped (the float16 scaler backs off). The first
    compiled step of compile=auto may fail to build (a full disk under inductor's cache, a compiler
    error): then the same step is taken again eager, and the run stays eager."""
    try:
        return accumulate_and_step(cfg, place, data, learner, model, it, lr)
    except Exception as e:  # signals only ask to stop (cli.StopAtSafePoint): this is the compile failing
        if trial is None or not trial.compiling:
            raise
        learner.optimizer.zero_grad(set_to_none=True)
        trial.compile_failed(it, e)
        return accumulate_and_step(cfg, place, data, learner, trial.model, it, lr)


def accumulate_and_step(cfg, place, data, learner, model, it, lr):
    optimizer, scaler = learner.optimizer, learner.scaler
    for group in optimizer.param_groups:
        group["lr"] = lr
    torch.manual_seed(cfg.seed + 1_000_003 * it + place.rank)  # dropout masks: a function of (iter, rank)
    loss_sum = 0.0
    for micro in range(place.accum):
        x, y, composer, kind, role = (t if t is None else t.to(place.device)
                                      for t in micro_batch(cfg, place, data, it, micro))
        sync = model.no_sync() if place.ddp and micro < place.accum - 1 else contextlib.nullcontext()
        with sync, place.autocast:
            _, loss = model(x, composer, targets=y, kind=kind, role=role)
            loss = loss / place.accum
        scaler.scale(loss).backward()
        loss_sum += loss.item()
    scaler.unscale_(optimizer)
    grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(),
                                                     cfg.grad_clip if cfg.grad_clip > 0 else float("inf")))
    if math.isfinite(grad_norm):
        scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return loss_sum, grad_norm


def micro_batch(cfg, place, data, it, micro):
    """The windows of one micro-step (x, y, composer, kind, role or None): a function of (seed,
    rank, iteration, micro-step) alone, so a resumed run draws exactly the batches the
    uninterrupted one would have."""
    rng = np.random.default_rng([cfg.seed, place.rank, it, micro])
    micro_step = it * cfg.grad_accum + place.rank * place.accum + micro
    n_replay = round(cfg.batch_size * cfg.replay_share) if data.replay is not None else 0
    n_new = cfg.batch_size - n_replay
    pieces = train_pieces(len(data.train), cfg.seed, micro_step * n_new, n_new, data.weights)
    options = (cfg.cond_drop, cfg.kind_drop if cfg.n_kinds else 0.0)
    batch = data.train.batch(pieces, rng, *options)
    if n_replay:  # fine-tuning: the rest of the windows from the data the checkpoint learned from
        old = train_pieces(len(data.replay), cfg.seed + 1, micro_step * n_replay, n_replay, data.replay_weights)
        batch = tuple(torch.cat(pair) for pair in zip(batch, data.replay.batch(old, rng, *options)))
    if not cfg.infill_share:
        return (*batch, None)
    x, y, role = arrange_batch(batch[0], batch[1], rng, cfg.infill_share, data.train.bar_id,
                               data.train.pad_id, cfg.infill_bars, int(cfg.infill_middle * cfg.block_size))
    return x, y, batch[2], batch[3], role


# ----------------------------------------------------------------------------- evaluate, save, stop


@torch.no_grad()
def estimate_val_loss(model, sampler, cfg, autocast, device):
    """Mean val NLL over eval_iters fixed windows, with the true composer and with composer 0."""
    if sampler is None or len(sampler) == 0:
        return None, None
    model.eval()
    losses = {"true": [], "uncond": []}
    for i in range(cfg.eval_iters):
        rng = np.random.default_rng([cfg.seed, 7, i])  # the same windows at every evaluation
        x, y, composer, kind = (t.to(device) for t in sampler.batch(rng.integers(0, len(sampler), cfg.batch_size), rng))
        with autocast:
            for name, given in (("true", composer), ("uncond", torch.zeros_like(composer))):
                nll, real = model.target_nll(x, given, y, kind)
                losses[name].append((nll.sum() / real.sum()).item())
    model.train()
    return float(np.mean(losses["true"])), float(np.mean(losses["uncond"]))


def evaluate_and_save(cfg, place, data, learner, clock, log, it):
    """Val loss (true composer and composer 0), logged and charted; best.pt when it improves,
    ckpt.pt unless it is not finite."""
    val, val_uncond = estimate_val_loss(learner.raw_model, data.val, cfg, place.autocast, place.device)
    if not place.master:
        return
    log.record({"iter": it, "val_loss": val, "val_loss_uncond": val_uncond,
                "minutes": round(clock.train_seconds() / 60, 3)})
    write_curves(cfg.out_dir)
    log.say(f"iter {it}: val loss {val if val is None else round(val, 4)} "
            f"(composer 0: {val_uncond if val_uncond is None else round(val_uncond, 4)})")
    if val is not None and math.isfinite(val) and val < learner.best_val:
        learner.best_val = val
        save(cfg, data, learner, clock, "best.pt", it)
    if val is None or math.isfinite(val):
        save(cfg, data, learner, clock, "ckpt.pt", it)


def save(cfg, data, learner, clock, name, it):
    """out_dir/name: the state before iteration it (DESIGN.md's checkpoint contract)."""
    save_checkpoint(os.path.join(cfg.out_dir, name), {
        "model": learner.raw_model.state_dict(), "optimizer": learner.optimizer.state_dict(),
        "scaler": learner.scaler.state_dict(), "iter": it, "best_val_loss": learner.best_val,
        "train_seconds": clock.train_seconds(), "model_config": asdict(learner.model_cfg),
        "train_config": asdict(cfg), "tokenizer": data.tokenizer_json, "composers": data.composers,
        "composer_train_pieces": data.composer_train_pieces, "new_composers": data.new_composers})
    if name == "ckpt.pt":
        clock.last_save = time.perf_counter()


def stop_if_asked(cfg, place, data, learner, clock, log, stop, it):
    """After SIGINT / SIGTERM (on any rank: every rank stops at this iteration): ckpt.pt with the
    exact state before iteration it, then cli.Stopped, saying how to resume."""
    signum = largest_on_any_rank(stop.asked(), place.ddp)
    if not signum:
        return
    stopped = Stopped(signum, kept=f"before iteration {it}; {os.path.join(cfg.out_dir, 'ckpt.pt')} holds the "
                                   f"state after the last finished step. Resume with: {resume_command()}")
    if place.master:
        save(cfg, data, learner, clock, "ckpt.pt", it)
        log.record({"iter": it, "stopped": stopped.name})
    log.close_bar()
    end_processes(place.ddp)
    raise stopped


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
