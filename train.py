"""Train the composer-conditioned transformer on a prepared dataset.

    python train.py config/remi_cpu.py                      # small model, minutes on a laptop CPU
    python train.py config/remi_8layer.py --batch_size=4    # the seed's run (GPU)
    torchrun --nproc_per_node=4 train.py config/remi_8layer.py
    python train.py config/remi_cpu.py --init_from=resume   # continue from out_dir/ckpt.pt
    python train.py config/finetune.py --init_from=out/classical/ckpt.pt --data_dir=data/mine  # a new composer

Config: a plain-Python file of assignments, then --key=value overrides; every key is a
field of TrainConfig below (an unknown key is an error).
"""
import contextlib
import dataclasses
import json
import math
import os
import signal
import statistics
import sys
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch

from pianogpt.checkpoints import load_checkpoint, save_checkpoint, with_composer_rows
from pianogpt.cli import CliError, FolderLock, atomic_write_bytes, fail, load_config, read_jsonl
from pianogpt.dataset import WindowSampler, merge_composer_tables, open_dataset
from pianogpt.infill import N_ROLES, arrange_batch
from pianogpt.remi import tokenizer_from_json
from pianogpt.devices import (autocast_context, compile_problem, cpu_description, device_type_of, first_line,
                              machine_key, machine_matmul_peak, recall, remember, require_compile, resolve_device,
                              resolve_dtype)
from model import ModelConfig, ModelOptions, MusicTransformer, load_state
from pianogpt.optim import OPTIMIZERS, orthogonalization_dtype
from pianogpt.pictures import chart, png_bytes, side_by_side

FINETUNES = ("all", "new_rows")


@dataclass
class TrainConfig(ModelOptions):
    """Every key of a config file and of --key=value: the model's options (model.ModelOptions:
    block_size, n_layer, n_head, n_embd, dropout, positions, norm, mlp, qk_norm, tie_head, n_kinds,
    ...) and the run's, below."""
    data_dir: str = "data/piano-midi"
    out_dir: str = "out"
    init_from: str = "scratch"  # scratch | resume (from out_dir/ckpt.pt) | a checkpoint's path (fine-tune it)
    # fine-tuning (init_from=<path>): the model keeps its shape and its composers' ids; data_dir's new
    # composers get new rows. replay_share of every batch comes from replay_dir (default: the dataset
    # the checkpoint learned from), so the old composers are not forgotten (docs/LOG.md, "Fine-tuning")
    replay_dir: str = ""
    replay_share: float = 0.5
    finetune: str = "all"  # all: every weight learns | new_rows: only the new composers' rows, at the input and
    # before every block (model.composer_layers); the rest frozen
    # length of training: max_iters if > 0, else epochs (one random crop per training piece per epoch)
    max_iters: int = 0
    epochs: float = 1.0
    max_minutes: float = 0.0  # > 0: also stop after this much training wall time; the LR schedule then follows time
    save_every_min: float = 0.0  # > 0: also write ckpt.pt at least this often (minutes), whatever eval_interval says
    eval_interval: int = 250
    eval_iters: int = 20
    log_interval: int = 10
    # batch: batch_size windows per micro-step, grad_accum micro-steps per iteration (over all ranks)
    batch_size: int = 2
    grad_accum: int = 8
    optimizer: str = "adamw"  # adamw | muon (Muon on the blocks' matrices, AdamW on the rest)
    # optimisation
    learning_rate: float = 5e-4
    min_lr: float = 5e-5
    warmup_frac: float = 0.05
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    # data
    cond_drop: float = 0.1  # share of windows whose composer becomes 0 (trains the CFG branch)
    kind_drop: float = 0.1  # with n_kinds: share of windows whose kind becomes 0 (a prompt of unknown kind)
    composer_balance: float = 0.0  # 0: every piece equally often; 1: every composer equally often
    rendition_weight: float = 1.0  # how often a performed rendition (prepare --renditions) is drawn, per file drawn
    transpose: int = 0  # random pitch shift in [-transpose, transpose] semitones per window
    infill_share: float = 0.0  # share of windows rearranged to teach infilling (needs n_roles=5; pianogpt/infill.py)
    infill_bars: int = 4  # the longest middle, in bars, of such a window
    infill_middle: float = 0.5  # the longest middle, as a share of the context
    # system
    device: str = "auto"  # auto | cpu | cuda | mps (or cuda:N)
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16
    compile: str = "auto"  # auto: compile the step only where it repays its compile time in this run (measured) | on | off
    seed: int = 1337

    def validate(self):
        positive = ["eval_interval", "eval_iters", "log_interval", "batch_size", "grad_accum", "block_size",
                    "n_layer", "n_head", "n_embd"]
        for key in positive:
            if getattr(self, key) <= 0:
                raise CliError(f"{key} must be > 0, got {getattr(self, key)}")
        if self.max_iters < 0 or self.epochs <= 0 and self.max_iters == 0:
            raise CliError("set max_iters > 0 or epochs > 0")
        if self.init_from not in ("scratch", "resume") and not os.path.isfile(self.init_from):
            raise CliError(f"init_from must be scratch, resume or a checkpoint file; {self.init_from!r} is not a file")
        if self.finetune not in FINETUNES:
            raise CliError(f"finetune must be one of {', '.join(FINETUNES)}; got {self.finetune!r}")
        if not 0 <= self.replay_share < 1:
            raise CliError(f"replay_share must be in [0, 1), got {self.replay_share}")
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise CliError(f"dtype must be one of auto, float32, bfloat16, float16; got {self.dtype!r}")
        if not (self.device in ("auto", "cpu", "cuda", "mps") or self.device.startswith("cuda:")):
            raise CliError(f"device must be one of auto, cpu, cuda, cuda:N, mps; got {self.device!r}")
        for key in ("dropout", "attn_dropout", "cond_drop", "kind_drop", "warmup_frac", "label_smoothing"):
            if not 0 <= getattr(self, key) < 1:
                raise CliError(f"{key} must be in [0, 1), got {getattr(self, key)}")
        for key in ("max_minutes", "save_every_min"):
            if not getattr(self, key) >= 0:
                raise CliError(f"{key} must be >= 0, got {getattr(self, key)}")
        for key in ("learning_rate", "min_lr", "weight_decay", "grad_clip"):
            if getattr(self, key) < 0:
                raise CliError(f"{key} must be >= 0, got {getattr(self, key)}")
        if not 0 <= self.rendition_weight <= 10:
            raise CliError(f"rendition_weight must be in [0, 10], got {self.rendition_weight}")
        if not 0 <= self.composer_balance <= 1:
            raise CliError(f"composer_balance must be in [0, 1], got {self.composer_balance}")
        if not 0 <= self.infill_share < 1:
            raise CliError(f"infill_share must be in [0, 1), got {self.infill_share}")
        if self.infill_share and self.n_roles != N_ROLES:
            raise CliError(f"infill_share needs a role embedding: set n_roles={N_ROLES}")
        if not 1 <= self.infill_bars <= 64:
            raise CliError(f"infill_bars must be in 1..64, got {self.infill_bars}")
        if not 0 < self.infill_middle < 1:
            raise CliError(f"infill_middle must be in (0, 1), got {self.infill_middle}")
        if not 0 <= self.transpose <= 24:
            raise CliError(f"transpose must be in 0..24 semitones, got {self.transpose}")
        if self.compile not in ("auto", "on", "off"):
            raise CliError(f"compile must be one of auto, on, off; got {self.compile!r}")
        if self.optimizer not in OPTIMIZERS:
            raise CliError(f"optimizer must be one of {', '.join(OPTIMIZERS)}; got {self.optimizer!r}")
        try:  # the model's own options (positions, norm, mlp, rope_base, ...) check themselves
            model_config_of(self, {"vocab_size": 1, "n_composers": 1, "pad_id": 0})
        except ValueError as e:
            raise CliError(str(e)) from None


# ----------------------------------------------------------------------------- data


def train_pieces(n_pieces, seed, sample_start, count, weights=None):
    """Piece rows for global samples [sample_start, sample_start + count): a fresh permutation
    every epoch, so each epoch takes one window from every training piece. With weights
    (one per piece, summing to 1), each epoch is n_pieces draws with those probabilities."""
    out = []
    for k in range(sample_start, sample_start + count):
        epoch, position = divmod(k, n_pieces)
        rng = np.random.default_rng([seed, epoch])
        order = rng.permutation(n_pieces) if weights is None else rng.choice(n_pieces, n_pieces, p=weights)
        out.append(order[position])
    return np.array(out)


def piece_weights(composer_ids, renditions, balance, rendition_weight=1.0):
    """Sampling weight per piece, proportional to (pieces of its composer) ** -balance (0 keeps
    every piece equal, 1 makes every composer equal), a rendition's times rendition_weight.
    None when every piece weighs the same (each epoch then visits every piece once)."""
    if balance == 0 and (rendition_weight == 1 or not renditions.any()):
        return None
    _, inverse, counts = np.unique(composer_ids, return_inverse=True, return_counts=True)
    weights = counts[inverse].astype(np.float64) ** -balance * np.where(renditions, rendition_weight, 1.0)
    return weights / weights.sum()


def pad_share(sampler, batch_size, seed, n=20):
    rng = np.random.default_rng([seed, 99])
    targets = [sampler.batch(rng.integers(0, len(sampler), batch_size), rng)[1] for _ in range(n)]
    return float(torch.cat(targets).eq(sampler.pad_id).float().mean())


# ----------------------------------------------------------------------------- system


def lr_at(it, cfg, max_iters, time_progress=0.0):
    """Linear warmup for warmup_frac of the run, then cosine decay to min_lr.

    time_progress (share of max_minutes used): with a time budget, the run's progress is
    the larger of the iteration share and the time share, so the schedule ends when
    either runs out.
    """
    if time_progress > 0:
        progress = min(1.0, max(it / max_iters, time_progress))
        if progress < cfg.warmup_frac:
            return cfg.learning_rate * progress / cfg.warmup_frac
        decay = (progress - cfg.warmup_frac) / max(1e-9, 1 - cfg.warmup_frac)
        return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * decay)) * (cfg.learning_rate - cfg.min_lr)
    warmup = int(cfg.warmup_frac * max_iters)
    if it < warmup:
        return cfg.learning_rate * (it + 1) / (warmup + 1)
    progress = min(1.0, (it - warmup) / max(1, max_iters - warmup))
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.learning_rate - cfg.min_lr)


# ----------------------------------------------------------------------------- training


def window_nll(model, x, y, composer, kind=None):
    """Mean negative log-likelihood of the non-PAD targets: no label smoothing, whatever the
    model trains with, so runs with and without smoothing compare on one scale."""
    real = (y != model.config.pad_id).float()
    return -(model.token_log_probs(x, composer, y, kind) * real).sum() / real.sum()


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
            losses["true"].append(window_nll(model, x, y, composer, kind).item())
            losses["uncond"].append(window_nll(model, x, y, torch.zeros_like(composer), kind).item())
    model.train()
    return float(np.mean(losses["true"])), float(np.mean(losses["uncond"]))


class TrainingStopped(Exception):
    """SIGINT or SIGTERM stopped the run after a checkpoint of its exact state; .code is 130 or 143."""

    def __init__(self, code):
        super().__init__(code)
        self.code = code


class StopRequest:
    """SIGINT / SIGTERM handlers that ask the loop to stop after the current step; a second
    Ctrl-C stops at once. Under DDP every rank stops at the same iteration (see agreed)."""

    def __init__(self):
        self.signum, self.previous = 0, {}

    def __enter__(self):
        for signum in (signal.SIGINT, signal.SIGTERM):
            self.previous[signum] = signal.signal(signum, self.handle)
        return self

    def __exit__(self, *exc):
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
        return False

    def handle(self, signum, frame):
        if self.signum and signum == signal.SIGINT:
            print("\nsecond interrupt: stopping now (the last checkpoint is kept)", file=sys.stderr, flush=True)
            os._exit(130)
        self.signum = signum
        print(f"\n{signal.Signals(signum).name}: finishing this step, then saving a checkpoint "
              f"(Ctrl-C again to stop at once)", file=sys.stderr, flush=True)

    def agreed(self, ddp):
        """The signal to stop on, the same on every rank (0: go on)."""
        if not ddp:
            return self.signum
        on_gpu = torch.distributed.get_backend() == "nccl"
        flag = torch.tensor([self.signum], device="cuda" if on_gpu else "cpu")
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return int(flag[0])


def resume_command():
    args = [a for a in sys.argv[1:] if not a.startswith("--init_from=")]
    return " ".join(["python", os.path.basename(sys.argv[0] or "train.py"), *args, "--init_from=resume"])


def model_config_of(cfg, meta):
    """The ModelConfig a TrainConfig asks for, on a dataset with this meta.json."""
    shared = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(ModelOptions)}
    return ModelConfig(**shared | dict(vocab_size=meta["vocab_size"], n_composers=meta["n_composers"],
                                       pad_id=meta["pad_id"]))


class Run:
    """What one training run holds: its config, where it runs, its data, model, optimizer and clock.
    Built by set_up; read and advanced by the loop's steps."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.ddp = int(os.environ.get("RANK", -1)) != -1
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

    def time_share(self):
        return time_share(self.train_seconds(), self.cfg, self.ddp)

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
    current step, then raise TrainingStopped."""
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
        if cfg.infill_share and cfg.n_roles != N_ROLES:
            raise CliError(f"infill_share needs a model with a role embedding; {cfg.init_from} has none (n_roles=0): "
                           "fine-tune with infill_share=0, or train a model with n_roles=5 from scratch")
    set_up_device(run)
    set_up_data(run)
    if run.master:  # one run per folder, held for the whole run (a resume into a live run's folder too)
        stack.enter_context(FolderLock(os.path.join(cfg.out_dir, ".lock"), f"out_dir {cfg.out_dir}"))
    run.stop_request = stack.enter_context(StopRequest())
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
    """torchrun's process group (one GPU per rank), the device, the dtype and its autocast, and
    whether the device can do what the config asks (bf16, torch.compile) before any folder is made."""
    cfg = run.cfg
    run.device = resolve_device(cfg.device)
    if run.ddp:
        import torch.distributed as dist

        run.rank, run.world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        if run.device.startswith("cuda"):
            run.device = f"cuda:{os.environ['LOCAL_RANK']}"
            torch.cuda.set_device(run.device)
        dist.init_process_group(backend="nccl" if run.device.startswith("cuda") else "gloo")
        if cfg.grad_accum % run.world:
            raise CliError(f"grad_accum ({cfg.grad_accum}) must be divisible by the number of processes ({run.world})")
    run.device_type = device_type_of(run.device)
    run.dtype = resolve_dtype(cfg.dtype, run.device_type)
    if run.dtype == "bfloat16" and run.device_type == "cuda" and not torch.cuda.is_bf16_supported():
        raise CliError("this GPU does not support bfloat16; use --dtype=float16")
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
        join_composer_tables(run, dataset)
        run.replay_data = open_replay(run)
    run.piece_weights = piece_weights(run.train_data.index[:, 2], run.train_data.renditions, cfg.composer_balance,
                                      cfg.rendition_weight)
    run.composer_train_pieces = composer_train_pieces(run)
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
    checkpoint = resumed_checkpoint(run) if cfg.init_from == "resume" else None
    if checkpoint:
        load_state(model, checkpoint["model"])
    elif run.base is not None:  # fine-tuning: the base's weights, with a row for each new composer
        layer_rows_shape = tuple(model.wcl.shape) if run.model_cfg.composer_layers else None
        load_state(model, with_composer_rows(run.base["model"], run.model_cfg.n_composers, layer_rows_shape))
    model.to(run.device)
    weight_decay = cfg.weight_decay
    if is_fine_tune(cfg, run.base) and cfg.finetune == "new_rows":
        learn_new_rows_only(model, len(run.composers) - len(run.new_composers))
        weight_decay = 0.0  # decay would shrink the frozen rows
    run.optimizer = model.configure_optimizers(weight_decay, cfg.learning_rate, (cfg.beta1, cfg.beta2),
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
    if run.ddp:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(model, device_ids=[int(run.device.split(":")[1])]
                                        if run.device_type == "cuda" else None)
    run.model = model
    run.compile_trial = CompileTrial(model, compile_memory_key(run)) if cfg.compile == "auto" else None


def compile_memory_key(run):
    """What compiling this run's step costs and saves depends on the machine and on the step's
    shape: the key under which an earlier run's measurement is remembered. A fine-tune of a model
    shares the key of its training on this machine (a short fine-tune could not afford to measure
    for itself; its own trial still checks the compiled step is faster)."""
    m, cfg = run.model_cfg, run.cfg
    return (f"{machine_key(run.device, run.dtype)} | {m.n_layer} layers x {m.n_embd}, context {cfg.block_size}, "
            f"batch {cfg.batch_size}, {cfg.optimizer}")


def resumed_checkpoint(run):
    """out_dir/ckpt.pt, checked against this run's model config, optimizer and length."""
    cfg, checkpoint, path = run.cfg, run.base, run.base["path"]
    saved = ModelConfig.from_dict(checkpoint["model_config"])
    if saved != run.model_cfg:
        diff = [f"{f.name} {getattr(saved, f.name)} -> {getattr(run.model_cfg, f.name)}"
                for f in dataclasses.fields(ModelConfig) if getattr(saved, f.name) != getattr(run.model_cfg, f.name)]
        raise CliError(f"cannot resume {path}: model config differs ({', '.join(diff)})")
    saved_optimizer = checkpoint.get("train_config", {}).get("optimizer", "adamw")
    if saved_optimizer != cfg.optimizer:
        raise CliError(f"cannot resume {path}: it was trained with optimizer={saved_optimizer}, not {cfg.optimizer}")
    if checkpoint["iter"] > run.max_iters:
        raise CliError(f"cannot resume {path}: it is at iteration {checkpoint['iter']}, past max_iters "
                       f"{run.max_iters}; raise max_iters to train further")
    return checkpoint


# ----------------------------------------------------------------------------- fine-tuning


def base_checkpoint(cfg):
    """The checkpoint a run starts from: out_dir/ckpt.pt to resume, init_from's file to fine-tune;
    None from scratch."""
    if cfg.init_from == "scratch":
        return None
    resume = cfg.init_from == "resume"
    path = os.path.join(cfg.out_dir, "ckpt.pt") if resume else cfg.init_from
    try:
        checkpoint = load_checkpoint(path, "cpu")
        ModelConfig.from_dict(checkpoint["model_config"])
        if not resume and "composers" not in checkpoint:
            raise ValueError(f"{path} is not a checkpoint of this project (missing composers)")
    except (FileNotFoundError, ValueError) as e:
        raise CliError(f"cannot {'resume' if resume else 'fine-tune'}: {e}") from None
    return {**checkpoint, "path": path}


def is_fine_tune(cfg, base):
    """A run on top of another run's checkpoint: init_from=<path>, or the resume of such a run."""
    if base is None:
        return False
    return cfg.init_from != "resume" or base.get("train_config", {}).get("init_from") not in ("scratch", "resume")


def adopt_base_model(cfg, base):
    """A fine-tune keeps the checkpoint's network (every model option, so the weights fit) and
    replays the data the checkpoint learned from, unless replay_dir names other data."""
    saved, trained = base["model_config"], base.get("train_config", {})
    options = {f.name: saved[f.name] for f in dataclasses.fields(ModelOptions) if f.name in saved}
    replay_dir = cfg.replay_dir or (trained.get("replay_dir", "") if cfg.init_from == "resume"
                                    else trained.get("data_dir", ""))
    if cfg.finetune == "new_rows" and cfg.init_from != "resume":  # (a resume keeps what its checkpoint has)
        options["composer_layers"] = True  # one input row left the frozen network little to say (docs/LOG.md)
    return dataclasses.replace(cfg, **options, replay_dir=replay_dir)


def join_composer_tables(run, dataset):
    """The run's composers: the checkpoint's, with their ids, and data_dir's new ones after them;
    the samplers' composer ids follow (matched by name, as prepare.py matches folders)."""
    check_same_tokenizer(run.base["tokenizer"], dataset, run.cfg.data_dir)
    table, ids, matches = merge_composer_tables(run.base["composers"], dataset.composers)
    for mine, theirs in matches:
        run.say(f"composer {mine!r} of {run.cfg.data_dir} is the checkpoint's {theirs!r}")
    new = [name for name in table if name not in run.base["composers"]]
    run.composers, run.new_composers = table, run.base.get("new_composers", []) + new
    run.train_data.relabel_composers(ids)
    run.val_data.relabel_composers(ids)
    if run.cfg.init_from != "resume":
        run.say(f"fine-tuning {run.base['path']}: {len(table) - 1 - len(new)} composers kept, {len(new)} new "
                f"({', '.join(new) or 'none'}); replaying {run.cfg.replay_share:.0%} of every batch from "
                f"{run.cfg.replay_dir or 'nothing'}")


def learn_new_rows_only(model, first_new):
    """finetune=new_rows: every weight frozen but the composer rows, at the input and before every
    block, from first_new on (their gradient reaches no other row), so the network and the old
    composers stay exactly as they were."""
    for p in model.parameters():
        p.requires_grad_(False)
    for rows in (model.wce.weight, getattr(model, "wcl", None)):
        if rows is None:
            continue
        rows.requires_grad_(True)
        keep_old = torch.ones(len(rows), *[1] * (rows.dim() - 1), device=rows.device)  # composers come first
        keep_old[:first_new] = 0
        rows.register_hook(lambda grad, keep_old=keep_old: grad * keep_old)


def check_same_tokenizer(tokenizer_json, dataset, data_dir):
    if tokenizer_from_json(tokenizer_json).vocab != dataset.tokenizer.vocab:
        raise CliError(f"{data_dir} was prepared with another tokenizer than the checkpoint's; prepare it with this "
                       f"version of prepare.py")


def open_replay(run):
    """The training windows of replay_dir (its composer ids mapped to the run's), or None."""
    cfg = run.cfg
    if cfg.replay_share == 0:
        return None
    if not cfg.replay_dir:
        raise CliError("replay_share > 0 needs replay_dir: the checkpoint names no dataset (or set replay_share=0)")
    replay = open_dataset(cfg.replay_dir)
    check_same_tokenizer(run.tokenizer_json, replay, cfg.replay_dir)
    table, ids, _ = merge_composer_tables(run.composers, replay.composers)
    if len(table) != len(run.composers):
        unknown = [name for name in table if name not in run.composers]
        raise CliError(f"replay_dir {cfg.replay_dir} holds composers the checkpoint does not know "
                       f"({', '.join(unknown[:5])}); replay the data it learned from")
    sampler = WindowSampler(replay, "train", cfg.block_size)
    sampler.relabel_composers(ids)
    run.replay_weights = piece_weights(sampler.index[:, 2], sampler.renditions, cfg.composer_balance,
                                       cfg.rendition_weight)
    return sampler


def composer_train_pieces(run):
    """{composer name: training files the model learned from}: a fine-tune adds data_dir's to what
    its checkpoint records (a resume keeps the record; the replayed data counts only when the
    checkpoint has none). Renditions are not files and do not count."""
    base = run.base.get("composer_train_pieces") if is_fine_tune(run.cfg, run.base) else None
    if base is not None and run.cfg.init_from == "resume":
        return dict(base)
    names = {i: name for name, i in run.composers.items()}
    counts = dict(base or {})
    for sampler in (run.train_data, run.replay_data if base is None else None):
        for composer in (sampler.index[~sampler.renditions, 2] if sampler is not None else []):
            counts[names[int(composer)]] = counts.get(names[int(composer)], 0) + 1
    return counts


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
    bar = tqdm(total=run.max_iters, initial=run.start_iter, desc="train", unit="it", disable=not run.master or None,
               file=sys.stdout)
    run.loop_start = run.last_save = time.perf_counter()
    last, bad_steps, iters_timed, t0 = {}, 0, 0, time.perf_counter()
    run.model.train()
    for it in range(run.start_iter, run.max_iters + 1):
        if run.master and cfg.save_every_min > 0 and time.perf_counter() - run.last_save >= 60 * cfg.save_every_min:
            run.save("ckpt.pt", it)
        out_of_time = run.time_share() >= 1.0
        resumed_here = cfg.init_from == "resume" and it == run.start_iter  # that state was evaluated already
        if (it % cfg.eval_interval == 0 and not resumed_here) or it == run.max_iters or out_of_time:
            evaluate_and_save(run, it, bar)
        if it == run.max_iters or out_of_time:
            break
        stop_if_asked(run, it, bar)
        lr = lr_at(it, cfg, run.max_iters, run.time_share())
        step_start = time.perf_counter()
        loss, grad_norm = run.compile_trial.step(run, it, lr, bar) if run.compile_trial else train_step(run, it, lr)
        if run.compile_trial:
            run.compile_trial.step_done(run, it, time.perf_counter() - step_start, bar)
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
        torch.distributed.destroy_process_group()
    run.say(f"done: {it} iters in {run.train_seconds() / 60:.1f} min of training, best val loss {run.best_val:.4f}; "
            f"checkpoints in {cfg.out_dir}/")
    return last


class CompileTrial:
    """compile=auto: whether torch.compile pays for this run on this device, measured, not assumed.
    The loop times a few eager steps; where the time left could repay a compile (and torch.compile
    can run here at all: devices.compile_problem), the step is compiled, then compiled and eager
    steps alternate (a shared VM's speed drifts for seconds at a time: alternating puts both under
    the same drift) and the faster is kept (compiling already spent is spent). What compiling cost and saved is remembered for this machine and step shape
    (memory_key; devices.remember), so the next such run decides by it; with nothing remembered the
    guess is a COMPILE_GUESS_S compile for a step REPAY_SPEEDUP faster. Short runs, tests and quick
    tries never pay for a compile. Under DDP rank 0's measurement decides for every rank."""

    STEPS = 3  # steps timed each way
    COMPILE_GUESS_S = 60.0  # about what a first compile of this project's step takes on a CPU (docs/LOG.md)
    REPAY_SPEEDUP = 0.1  # try only where a 10 % faster step would repay that in the time left
    MEMORY = "compile.json"

    def __init__(self, eager_model, memory_key=None):
        self.eager_model, self.phase, self.memory_key = eager_model, "warm-up", memory_key
        self.times = {"eager": [], "compiled": []}

    def step_done(self, run, it, seconds, bar):
        """After each step until decided: record its time, choose the model of the next step."""
        if self.phase == "warm-up":  # first-step allocations and kernel choices
            self.phase = "eager"
        elif self.phase == "eager":
            self.times["eager"].append(seconds)
            if len(self.times["eager"]) == self.STEPS:
                self.try_compiling(run, it, bar)
        elif self.phase == "compiling":
            self.compile_s = seconds - statistics.median(self.times["eager"])
            self.times, self.phase = {"eager": [], "compiled": []}, "alternating"
            run.model = self.eager_model
        elif self.phase == "alternating":
            ran = "eager" if run.model is self.eager_model else "compiled"
            self.times[ran].append(seconds)
            if len(self.times["compiled"]) == self.STEPS:
                self.keep_the_faster(run, it, bar)
            else:
                run.model = self.compiled if ran == "eager" else self.eager_model

    def step(self, run, it, lr, bar):
        """train_step; the first compiled step may fail to build (a full disk under inductor's cache,
        a compiler error): that step is taken again eager, and the run stays eager."""
        if self.phase != "compiling":
            return train_step(run, it, lr)
        try:
            return train_step(run, it, lr)
        except Exception as e:  # signals only set a flag (StopRequest): this is the compile failing
            run.optimizer.zero_grad(set_to_none=True)
            run.model = self.eager_model
            self.decided(run, it, bar, f"eager (the compiled step failed: {first_line(e)})")
            return train_step(run, it, lr)

    def try_compiling(self, run, it, bar):
        step_s = statistics.median(self.times["eager"])
        left = seconds_left(run, it, step_s)
        compile_s, saving, source = self.expected()
        pays = saving > 0 and left * saving >= compile_s
        problem = compile_problem(run.device) if pays else None
        if rank0_value(pays and not problem, run.ddp):  # timings differ by rank
            self.compiled = run.model = torch.compile(self.eager_model)
            self.phase = "compiling"
            if run.master:  # the next step stalls while it compiles: say why
                bar.write(f"compile=auto: compiling the step, ~{compile_s:.0f} s {source}; then compiled and eager "
                          f"steps alternate and the faster is kept")
        elif problem:
            self.decided(run, it, bar, f"eager ({step_s:.3f} s/step; torch.compile cannot run here: {problem})")
        elif saving <= 0:
            self.decided(run, it, bar, f"eager ({step_s:.3f} s/step; the compiled step was no faster {source})")
        else:
            self.decided(run, it, bar, f"eager ({step_s:.3f} s/step; the {left / 60:.1f} min left would not repay "
                                       f"compiling, ~{compile_s:.0f} s {source})")

    def expected(self):
        """(compile seconds, share of a step saved, where those come from): this machine's earlier
        measurement for this step shape where there is one, else the guess."""
        known = recall(self.MEMORY, self.memory_key) if self.memory_key else None
        if isinstance(known, dict) and all(isinstance(known.get(k), (int, float)) and math.isfinite(known[k])
                                           for k in ("compile_s", "speedup")) and known["speedup"] > 0:
            return max(known["compile_s"], 0.0), 1 - 1 / known["speedup"], "(measured here before)"
        return self.COMPILE_GUESS_S, self.REPAY_SPEEDUP, "(a guess)"

    def keep_the_faster(self, run, it, bar):
        eager_s, compiled_s = statistics.median(self.times["eager"]), statistics.median(self.times["compiled"])
        keep = bool(rank0_value(compiled_s < eager_s, run.ddp))
        run.model = self.compiled if keep else self.eager_model
        if self.memory_key and run.master:
            remember(self.MEMORY, self.memory_key, {"compile_s": self.compile_s, "speedup": eager_s / compiled_s})
        self.decided(run, it, bar, f"{'compiled' if keep else 'eager'} (compiled {compiled_s:.3f} s/step after "
                                   f"{self.compile_s:.0f} s of compiling, eager {eager_s:.3f} s/step, alternating)")

    def decided(self, run, it, bar, verdict):
        self.phase = "decided"
        run.log({"iter": it, "compile": verdict})
        if run.master:
            bar.write(f"compile=auto: {verdict}")


def seconds_left(run, it, step_s):
    """The run's remaining training time at step_s per step: iterations left, or the time budget."""
    left = (run.max_iters - it - 1) * step_s
    if run.cfg.max_minutes > 0:
        left = min(left, 60 * run.cfg.max_minutes - run.train_seconds())
    return left


def train_step(run, it, lr):
    """One optimizer step over grad_accum micro-batches; (summed loss, gradient norm). A
    non-finite gradient norm means the step was skipped (the float16 scaler backs off)."""
    cfg, model = run.cfg, run.model
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
    options = (cfg.cond_drop, cfg.transpose, cfg.kind_drop if cfg.n_kinds else 0.0)
    batch = run.train_data.batch(pieces, rng, *options)
    if n_replay:  # fine-tuning: the rest of the windows from the data the checkpoint learned from
        old = train_pieces(len(run.replay_data), cfg.seed + 1, micro_step * n_replay, n_replay, run.replay_weights)
        batch = tuple(torch.cat(pair) for pair in zip(batch, run.replay_data.batch(old, rng, *options)))
    if not cfg.infill_share:
        return (*batch, None)
    x, y, role = arrange_batch(batch[0], batch[1], rng, cfg.infill_share, run.train_data.bar_id,
                               run.train_data.pad_id, cfg.infill_bars, int(cfg.infill_middle * cfg.block_size))
    return x, y, batch[2], batch[3], role


def evaluate_and_save(run, it, bar):
    """Val loss (true composer and composer 0), logged and charted; best.pt when it improves,
    ckpt.pt unless it is not finite."""
    val, val_uncond = estimate_val_loss(run.raw_model, run.val_data, run.cfg, run.ctx, run.device)
    if not run.master:
        return
    run.log({"iter": it, "val_loss": val, "val_loss_uncond": val_uncond, "minutes": round(run.train_seconds() / 60, 3)})
    write_curves(run.cfg.out_dir)
    bar.write(f"iter {it}: val loss {val if val is None else round(val, 4)} "
              f"(composer 0: {val_uncond if val_uncond is None else round(val_uncond, 4)})")
    if val is not None and math.isfinite(val) and val < run.best_val:
        run.best_val = val
        run.save("best.pt", it)
    if val is None or math.isfinite(val):
        run.save("ckpt.pt", it)


def stop_if_asked(run, it, bar):
    """After SIGINT / SIGTERM (agreed by every rank): ckpt.pt with the exact state before
    iteration it, one line with the resume command, then TrainingStopped."""
    signum = run.stop_request.agreed(run.ddp)
    if not signum:
        return
    name = signal.Signals(signum).name
    if run.master:
        run.save("ckpt.pt", it)
        run.log({"iter": it, "stopped": name})
    bar.close()
    run.say(f"{name}: stopped before iteration {it}; {os.path.join(run.cfg.out_dir, 'ckpt.pt')} holds the state "
            f"after the last finished step. Resume with: {resume_command()}")
    if run.ddp:
        torch.distributed.destroy_process_group()
    raise TrainingStopped(128 + signum)


def time_share(seconds, cfg, ddp):
    """Share of the max_minutes budget used (0 without a budget); under DDP rank 0's clock decides."""
    if cfg.max_minutes <= 0:
        return 0.0
    return max(rank0_value(seconds / (60 * cfg.max_minutes), ddp), 1e-12)


def rank0_value(value, ddp):
    """A number as rank 0 has it, on every rank (each rank's clock and timings differ a little)."""
    if not ddp:
        return value
    on_gpu = torch.distributed.get_backend() == "nccl"
    tensor = torch.tensor([float(value)], dtype=torch.float64, device="cuda" if on_gpu else "cpu")
    torch.distributed.broadcast(tensor, src=0)
    return float(tensor[0])


def write_curves(out_dir):
    """out_dir/curves.png from log.jsonl: train and val loss against iterations and against
    minutes, and the learning rate; written atomically, so an image viewer can watch a run."""
    records = read_jsonl(os.path.join(out_dir, "log.jsonl"))
    steps = [r for r in records if "loss" in r and "lr" in r]
    evals = [r for r in records if r.get("val_loss") is not None]

    def series(rows, x, y):
        return [r.get(x, float("nan")) for r in rows], [r[y] for r in rows]

    by_iter = [("TRAIN", *series(steps, "iter", "loss")), ("VAL", *series(evals, "iter", "val_loss")),
               ("VAL COMPOSER 0", *series(evals, "iter", "val_loss_uncond"))]
    by_minute = [("TRAIN", *series(steps, "minutes", "loss")), ("VAL", *series(evals, "minutes", "val_loss"))]
    image = side_by_side(chart(by_iter, "LOSS", "ITERATION"), chart(by_minute, "LOSS", "MINUTES"),
                         chart([("LR", *series(steps, "iter", "lr"))], "LEARNING RATE", "ITERATION"))
    atomic_write_bytes(os.path.join(out_dir, "curves.png"), png_bytes(image))


def keep_previous_run(out_dir, say):
    """A fresh run never overwrites an earlier run's checkpoints or log: they move aside."""
    old = [name for name in ("ckpt.pt", "best.pt", "log.jsonl", "curves.png")
           if os.path.exists(os.path.join(out_dir, name))]
    if not old:
        return
    folder = os.path.join(out_dir, time.strftime("previous-%Y%m%d-%H%M%S"))
    os.makedirs(folder, exist_ok=True)
    for name in old:
        os.replace(os.path.join(out_dir, name), os.path.join(folder, name))
    say(f"{out_dir} held an earlier run: moved {', '.join(old)} to {folder}/ (use --init_from=resume to continue it)")


def check_ranks_agree(model, say):
    """All ranks must hold identical weights after DDP steps: compare a checksum."""
    import torch.distributed as dist

    checksum = torch.stack([p.detach().double().sum() for p in model.parameters()]).sum().cpu()
    gathered = [torch.zeros_like(checksum) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, checksum)
    agree = all(torch.equal(g, gathered[0]) for g in gathered)
    say(f"ranks agree on weights: {agree} (checksum {float(gathered[0]):.10f})")
    if not agree:
        raise RuntimeError("DDP ranks hold different weights")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        print("keys (default):")
        for f in dataclasses.fields(TrainConfig):
            print(f"  --{f.name}={f.default}")
        return
    try:
        cfg = load_config(TrainConfig, argv)
        train(cfg)
    except CliError as e:
        fail("train.py", str(e))
    except TrainingStopped as stopped:
        sys.exit(stopped.code)


if __name__ == "__main__":
    main()
