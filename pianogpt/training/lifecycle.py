"""A training run's life around its loop: its processes, its clock, its log, its folder, the command
that resumes it.

Where a process computes (Place: torchrun's rank, device, precision) and what the processes agree
on; the run's length and time budget (Clock); what it tells (Log); the run's folder (an earlier run
moved aside, the curves).
"""
import json
import math
import os
import sys
import time
from dataclasses import dataclass

import torch

from pianogpt.cli import CliError
from pianogpt.devices import autocast_context, device_type_of, require_compile, resolve_device, resolve_dtype
from pianogpt.files import atomic_write_bytes, read_jsonl
from pianogpt.output.pictures import chart, png_bytes, side_by_side


# ----------------------------------------------------------------------------- the run: where, how long, what it tells


@dataclass
class Place:
    """Where this process computes: its rank among torchrun's, the device and the precision."""
    ddp: bool
    rank: int
    world: int
    device: str
    device_type: str
    dtype: str
    autocast: object
    accum: int  # micro-steps of this process per iteration

    @property
    def master(self):
        return self.rank == 0


def set_up_place(cfg):
    """torchrun's process group, the device, the dtype and its autocast, and whether the device can
    do what the config asks (bf16, torch.compile) before any folder is made."""
    ddp, rank, world = under_torchrun(), 0, 1
    device = resolve_device(cfg.device)
    if ddp:
        rank, world, device = start_processes(device, cfg.grad_accum)
    device_type = device_type_of(device)
    dtype = resolve_dtype(cfg.dtype, device_type)
    if cfg.compile == "on":
        require_compile(device, "compile=on", "--compile=auto or --compile=off trains eager")
    if device_type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return Place(ddp, rank, world, device, device_type, dtype, autocast_context(device_type, dtype),
                 cfg.grad_accum // world)


class Clock:
    """The run's length and time: iterations, training seconds (the part before a resume counted),
    the max_minutes budget, and when ckpt.pt was last written."""

    def __init__(self, cfg, ddp, start_iter, max_iters, seconds_before):
        self.cfg, self.ddp = cfg, ddp
        self.start_iter, self.max_iters, self.seconds_before = start_iter, max_iters, seconds_before
        self.tokens_per_iter = cfg.batch_size * cfg.grad_accum * cfg.block_size
        self.start()

    def start(self):
        """Training time counts from now (the loop's start: set-up and a resume's reading are not training)."""
        self.loop_start = self.last_save = time.perf_counter()

    def train_seconds(self):
        return self.seconds_before + time.perf_counter() - self.loop_start

    def budget_used(self):
        """Share of the max_minutes budget used (0 without a budget); under DDP rank 0's clock decides."""
        if self.cfg.max_minutes <= 0:
            return 0.0
        return max(rank0_value(self.train_seconds() / (60 * self.cfg.max_minutes), self.ddp), 1e-12)

    def budget_left_s(self):
        return 60 * self.cfg.max_minutes - self.train_seconds() if self.cfg.max_minutes > 0 else math.inf

    def save_due(self):
        minutes = self.cfg.save_every_min
        return minutes > 0 and time.perf_counter() - self.last_save >= 60 * minutes


class Log:
    """What the run tells: lines to the terminal (through the progress bar once there is one) and
    records to out_dir/log.jsonl; rank 0 alone speaks."""

    def __init__(self, master):
        self.master, self.file, self.bar = master, None, None

    def say(self, line):
        if not self.master:
            return
        if self.bar is not None:
            self.bar.write(line)
        else:
            print(line)

    def record(self, record):
        if self.master:
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()

    def close_bar(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


# ----------------------------------------------------------------------------- torchrun's processes


def under_torchrun():
    return int(os.environ.get("RANK", -1)) != -1


def start_processes(device, grad_accum):
    """Join torchrun's process group, one GPU per rank: (rank, world size, this rank's device)."""
    import torch.distributed as dist

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if device.startswith("cuda"):
        device = f"cuda:{os.environ['LOCAL_RANK']}"
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    if grad_accum % world:
        raise CliError(f"grad_accum ({grad_accum}) must be divisible by the number of processes ({world})")
    return rank, world, device


def across_processes(model, device):
    """The model wrapped for DistributedDataParallel: gradients all-reduced on every backward."""
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[int(device.split(":")[1])] if device.startswith("cuda") else None)


def collective_device():
    """Where a tensor must live to be all-reduced: NCCL's on the GPU, gloo's on the CPU."""
    return "cuda" if torch.distributed.get_backend() == "nccl" else "cpu"


def rank0_value(value, ddp):
    """A number as rank 0 has it, on every rank (each rank's clock and timings differ a little)."""
    if not ddp:
        return value
    tensor = torch.tensor([float(value)], dtype=torch.float64, device=collective_device())
    torch.distributed.broadcast(tensor, src=0)
    return float(tensor[0])


def largest_on_any_rank(value, ddp):
    """The largest of every rank's integer: a signal caught by one rank stops them all at one iteration."""
    if not ddp:
        return value
    flag = torch.tensor([value], device=collective_device())
    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
    return int(flag[0])


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


def end_processes(ddp):
    if ddp:
        torch.distributed.destroy_process_group()


# ----------------------------------------------------------------------------- the run's folder


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


def resume_command():
    """This very command line, resuming from out_dir/ckpt.pt."""
    args = [a for a in sys.argv[1:] if not a.startswith("--init_from=")]
    return " ".join(["python", os.path.basename(sys.argv[0] or "train.py"), *args, "--init_from=resume"])
