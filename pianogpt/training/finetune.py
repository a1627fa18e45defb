"""Training on top of a checkpoint: resuming it, or fine-tuning it on new composers.

A fine-tune keeps the checkpoint's network, gives new composers rows, and replays the data it
learned from so that the old composers stay.
"""
import dataclasses
import os

import torch

from model import ModelConfig, ModelOptions, load_state
from pianogpt.checkpoints import load_checkpoint, with_composer_rows
from pianogpt.cli import CliError
from pianogpt.data.dataset import WindowSampler, merge_composer_tables, open_dataset, piece_weights
from pianogpt.generation.infill import N_ROLES
from pianogpt.data.merges import full_vocab
from pianogpt.data.remi import tokenizer_from_json


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
    cfg = dataclasses.replace(cfg, **options, replay_dir=replay_dir)
    if cfg.infill_share and cfg.n_roles != N_ROLES:
        raise CliError(f"infill_share needs a model with a role embedding; {cfg.init_from} has none (n_roles=0): "
                       "fine-tune with infill_share=0, or train a model with n_roles=5 from scratch")
    return cfg


def join_composer_tables(cfg, base, dataset, samplers, say):
    """(the run's composers, its new composers): the checkpoint's, with their ids, and data_dir's new
    ones after them; the samplers' composer ids follow (matched by name, as prepare.py matches folders)."""
    check_same_tokenizer(base["tokenizer"], dataset, cfg.data_dir)
    table, ids, matches = merge_composer_tables(base["composers"], dataset.composers)
    for mine, theirs in matches:
        say(f"composer {mine!r} of {cfg.data_dir} is the checkpoint's {theirs!r}")
    new = [name for name in table if name not in base["composers"]]
    for sampler in samplers:
        sampler.relabel_composers(ids)
    if cfg.init_from != "resume":
        say(f"fine-tuning {base['path']}: {len(table) - 1 - len(new)} composers kept, {len(new)} new "
            f"({', '.join(new) or 'none'}); replaying {cfg.replay_share:.0%} of every batch from "
            f"{cfg.replay_dir or 'nothing'}")
    return table, base.get("new_composers", []) + new


def open_replay(cfg, composers, tokenizer_json):
    """(the training windows of replay_dir, their composer ids mapped to the run's, and their piece
    weights), or (None, None) without replay."""
    if cfg.replay_share == 0:
        return None, None
    if not cfg.replay_dir:
        raise CliError("replay_share > 0 needs replay_dir: the checkpoint names no dataset (or set replay_share=0)")
    replay = open_dataset(cfg.replay_dir)
    check_same_tokenizer(tokenizer_json, replay, cfg.replay_dir)
    table, ids, _ = merge_composer_tables(composers, replay.composers)
    if len(table) != len(composers):
        unknown = [name for name in table if name not in composers]
        raise CliError(f"replay_dir {cfg.replay_dir} holds composers the checkpoint does not know "
                       f"({', '.join(unknown[:5])}); replay the data it learned from")
    sampler = WindowSampler(replay, "train", cfg.block_size)
    sampler.relabel_composers(ids)
    return sampler, piece_weights(sampler.index[:, 2], sampler.renditions, cfg.composer_balance, cfg.rendition_weight)


def check_same_tokenizer(tokenizer_json, dataset, data_dir):
    """A CliError unless the data was written in the checkpoint's vocabulary, learned merges included."""
    theirs = tokenizer_from_json(tokenizer_json)
    if theirs.vocab != dataset.tokenizer.vocab:
        raise CliError(f"{data_dir} was prepared with another tokenizer than the checkpoint's; prepare it with this "
                       f"version of prepare.py")
    if full_vocab(theirs) != full_vocab(dataset.tokenizer):
        raise CliError(f"{data_dir} was prepared with other merges than the checkpoint's ({len(dataset.tokenizer)} "
                       f"against {len(theirs)} tokens); prepare it with --merges_from CHECKPOINT")


def composer_train_pieces(cfg, base, composers, train_data, replay_data):
    """{composer name: training files the model learned from}: a fine-tune adds data_dir's to what
    its checkpoint records (a resume keeps the record; the replayed data counts only when the
    checkpoint has none). Renditions are not files and do not count."""
    recorded = base.get("composer_train_pieces") if is_fine_tune(cfg, base) else None
    if recorded is not None and cfg.init_from == "resume":
        return dict(recorded)
    names = {i: name for name, i in composers.items()}
    counts = dict(recorded or {})
    for sampler in (train_data, replay_data if recorded is None else None):
        for composer in (sampler.index[~sampler.renditions, 2] if sampler is not None else []):
            counts[names[int(composer)]] = counts.get(names[int(composer)], 0) + 1
    return counts


def load_base_weights(model, base):
    """The base's weights, with a row for each new composer (at the input, and before every block)."""
    layer_rows_shape = tuple(model.wcl.shape) if model.config.composer_layers else None
    load_state(model, with_composer_rows(base["model"], model.config.n_composers, layer_rows_shape))


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


def resumable(checkpoint, model_cfg, optimizer, max_iters):
    """out_dir/ckpt.pt, checked against this run's model config, optimizer and length."""
    path = checkpoint["path"]
    saved = ModelConfig.from_dict(checkpoint["model_config"])
    if saved != model_cfg:
        diff = [f"{f.name} {getattr(saved, f.name)} -> {getattr(model_cfg, f.name)}"
                for f in dataclasses.fields(ModelConfig) if getattr(saved, f.name) != getattr(model_cfg, f.name)]
        raise CliError(f"cannot resume {path}: model config differs ({', '.join(diff)})")
    saved_optimizer = checkpoint.get("train_config", {}).get("optimizer", "adamw")
    if saved_optimizer != optimizer:
        raise CliError(f"cannot resume {path}: it was trained with optimizer={saved_optimizer}, not {optimizer}")
    if checkpoint["iter"] > max_iters:
        raise CliError(f"cannot resume {path}: it is at iteration {checkpoint['iter']}, past max_iters "
                       f"{max_iters}; raise max_iters to train further")
    return checkpoint
