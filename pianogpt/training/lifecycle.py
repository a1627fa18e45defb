"""A training run's life around its loop: its processes, its folder, the command that resumes it.

torchrun's processes and what they agree on; the run's folder (an earlier run moved aside, the
curves).
"""
import os
import sys
import time

import torch

from pianogpt.cli import CliError
from pianogpt.files import atomic_write_bytes, read_jsonl
from pianogpt.output.pictures import chart, png_bytes, side_by_side


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
