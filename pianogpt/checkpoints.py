"""Checkpoint files: the one place they are written and read.

A checkpoint is one torch.save'd dict of plain tensors and plain data (see DESIGN.md):
model and optimizer state, iteration, configs, the tokenizer as JSON and the composers.
Every program reads one through load_checkpoint (weights only: a file carrying code is refused);
network_of builds its model; load_trained, the two with every check a sampler needs, refuses in
one line a checkpoint whose weights do not fit its config, whose tokenizer does not parse or does
not match the model's vocabulary, or whose composers do not match the composer table.
"""
import io
import os
import pickle
import warnings
import zipfile

import torch

from pianogpt.cli import CliError
from pianogpt.files import atomic_write_bytes
from pianogpt.data.dataset import composer_table_problem
from model import ModelConfig, MusicTransformer, load_state
from pianogpt.data.remi import check_tokenizer


def save_checkpoint(path, checkpoint):
    """torch.save into memory, then temp file + fsync + rename: a crash keeps the old file."""
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    try:
        atomic_write_bytes(path, buffer.getvalue())
    except OSError as e:
        raise CliError(f"cannot write {path}: {e.strerror or e}; the previous checkpoint is kept") from None


def with_composer_rows(state, n_composers, layer_rows_shape=None):
    """A model state_dict with n_composers rows in its composer embedding: the saved rows as they
    are, each new row the mean of the saved composers' rows (a composer-like start, not noise).
    layer_rows_shape (n_composers, n_layer, n_embd): a model with composer_layers; its layer rows
    start at zero for every composer the state has none for (zero adds nothing)."""
    rows = state["wce.weight"]
    if len(rows) < n_composers:
        new = rows[1:].mean(dim=0, keepdim=True).expand(n_composers - len(rows), -1)
        state = {**state, "wce.weight": torch.cat([rows, new])}
    if "period_of" in state and len(state["period_of"]) < n_composers:  # a new composer's period: set by name
        saved = state["period_of"]
        state = {**state, "period_of": torch.cat([saved, saved.new_zeros(n_composers - len(saved))])}
    if layer_rows_shape is not None:
        layer_rows = torch.zeros(layer_rows_shape, dtype=rows.dtype)
        saved = state.get("wcl")
        if saved is not None:
            layer_rows[:len(saved)] = saved
        state = {**state, "wcl": layer_rows}
    return state


def load_trained(path, device="cpu"):
    """(model in eval mode, checkpoint dict, tokenizer); any problem is a CliError."""
    try:
        checkpoint = load_checkpoint(path, "cpu", mmap=True)  # mapped: only the model's tensors are read
        for key in ("tokenizer", "composers"):
            if key not in checkpoint:
                raise ValueError(f"{path} is not a checkpoint of this project (missing {key})")
        model = network_of(checkpoint, device)
        cfg = model.config
        tokenizer = check_tokenizer(f"{path} (its tokenizer)", checkpoint["tokenizer"], cfg.vocab_size, cfg.pad_id)
        problem = composer_table_problem(checkpoint["composers"], cfg.n_composers, "but its composer table holds")
        if problem:
            raise ValueError(f"{path}: its composers: {problem}")
    except (FileNotFoundError, ValueError) as e:
        raise CliError(str(e)) from None
    return model, checkpoint, tokenizer


def network_of(checkpoint, device="cpu"):
    """The model of a checkpoint dict (load_checkpoint's), in eval mode on device; weights that do
    not fit its config are a ValueError naming what differs."""
    model = MusicTransformer(ModelConfig.from_dict(checkpoint["model_config"]))
    load_state(model, checkpoint["model"])
    return model.to(device).eval()


def load_checkpoint(path, device="cpu", mmap=False):
    """torch.load with weights_only=True: a checkpoint carrying code is refused. mmap=True maps
    the file instead of reading it (a zip-format file only): a sampler then never reads the
    optimizer state, most of a training checkpoint. Not for resuming: on some systems a mapped
    file cannot be replaced, and train.py replaces its checkpoint."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        with warnings.catch_warnings():  # torch warns about foreign pickle protocols; our error says more
            warnings.simplefilter("ignore", UserWarning)
            checkpoint = torch.load(path, map_location=device, weights_only=True,
                                    mmap=mmap and zipfile.is_zipfile(path))
    except pickle.UnpicklingError as e:
        culprit = next((line.strip() for line in str(e).splitlines() if "Unsupported" in line or "GLOBAL" in line),
                       "objects other than tensors")
        raise ValueError(f"refusing to load {path}: it is not a plain-tensor checkpoint and may run code "
                         f"({culprit}); only load checkpoints from sources you trust") from None
    except Exception as e:
        raise ValueError(f"cannot read checkpoint {path}: {type(e).__name__}: {str(e).splitlines()[0]}") from None
    missing = [k for k in ("model", "model_config") if k not in checkpoint]
    if missing:
        raise ValueError(f"{path} is not a checkpoint of this project (missing {', '.join(missing)})")
    return checkpoint
