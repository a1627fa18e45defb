"""Checkpoint files: written atomically, and loaded with every check a sampler needs.

A checkpoint is one torch.save'd dict of plain tensors and plain data (see DESIGN.md):
model and optimizer state, iteration, configs, the tokenizer as JSON and the composers.
load_trained refuses, in one line, a checkpoint that carries code, whose weights do not
fit its config, whose tokenizer does not parse or does not match the model's vocabulary,
or whose composers do not match the composer table.
"""
import io

import torch

from cli import CliError, atomic_write_bytes
from model import MusicTransformer, load_checkpoint
from remi import check_tokenizer


def save_checkpoint(path, checkpoint):
    """torch.save into memory, then temp file + fsync + rename: a crash keeps the old file."""
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    try:
        atomic_write_bytes(path, buffer.getvalue())
    except OSError as e:
        raise CliError(f"cannot write {path}: {e.strerror or e}; the previous checkpoint is kept") from None


def check_composers(path, composers, n_composers):
    ids = sorted(composers.values()) if isinstance(composers, dict) else None
    if ids is None or ids != list(range(len(ids))):
        raise ValueError(f"{path}: its composers are not a {{name: id}} table with ids 0..N-1")
    if len(ids) != n_composers:
        raise ValueError(f"{path}: {len(ids)} composers, but its composer table has {n_composers} rows")


def load_trained(path, device="cpu"):
    """(model in eval mode, checkpoint dict, tokenizer); any problem is a CliError."""
    try:
        checkpoint = load_checkpoint(path, device)
        for key in ("tokenizer", "composers"):
            if key not in checkpoint:
                raise ValueError(f"{path} is not a checkpoint of this project (missing {key})")
        model = MusicTransformer.from_checkpoint_dict(checkpoint, device)
        cfg = model.config
        tokenizer = check_tokenizer(f"{path} (its tokenizer)", checkpoint["tokenizer"], cfg.vocab_size, cfg.pad_id)
        check_composers(path, checkpoint["composers"], cfg.n_composers)
    except (FileNotFoundError, ValueError) as e:
        raise CliError(str(e)) from None
    return model, checkpoint, tokenizer
