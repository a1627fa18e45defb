"""What every measure of evaluate.py reads (Evaluation, set up from a checkpoint and its dataset),
and the measures on windows and whole pieces: val windows, n-gram baselines, val pieces, the
held-out sources, fingerprint probes, a labelled folder of real MIDI."""
import math
import os
from dataclasses import dataclass

import numpy as np
import torch

from pianogpt.checkpoints import load_trained
from pianogpt.cli import CliError
from pianogpt.data.dataset import KIND_IDS, WindowSampler, composer_key, merge_composer_tables, open_dataset, work_of
from pianogpt.devices import autocast_context, device_type_of, resolve_dtype
from pianogpt.measures.probes import Probes
from pianogpt.measures.ngram import HIGH_ORDER_MAX_TOKENS, NGRAM_ORDERS, NGram, unigram_entropy
from pianogpt.data.merges import merge, note_counts, unmerge
from pianogpt.data.remi import encode_score, piece_kind
from pianogpt.measures.identification import comparison_set, identify_pieces, named_comparison_set
from pianogpt.measures.scoring import derangement, window_nll


@dataclass
class Evaluation:
    """What every stage of evaluate() reads: the checked model and its dataset, the splits (val,
    held-out sources, train), the comparison set and how it was chosen, and how to score."""
    model: object
    tokenizer: object
    checkpoint: dict
    data_dir: str
    dataset: object
    meta: dict
    window: int  # tokens per scored window
    val: object  # WindowSamplers of the splits, composer ids the checkpoint's
    heldout: object
    train_split: object
    train_counts: dict  # {composer id: training pieces}
    rule: str  # how the comparison set was chosen
    fine_tuned: list  # composer ids taught by fine-tuning
    candidates: list  # the compared composer ids
    train_pieces: list  # token arrays, for the copy finder
    names: dict  # {composer id: name}
    n_composers: int
    bos_id: int
    device: str
    seed: int
    max_windows: int  # spans scored per whole piece
    ctx: object  # autocast
    val_sources: list  # the folder of each val piece, with several folders; else None
    scorings: dict = None  # {name: the tokens a sum counts} (scorings_of)


def set_up(ckpt, data_dir, window, device, dtype, min_train_pieces, max_composers, seed, max_windows, compare=()):
    """What every stage reads: the checked model and dataset, the splits, the comparison set."""
    model, checkpoint, tokenizer = load_trained(ckpt, device)
    data_dir = data_dir or checkpoint["train_config"]["data_dir"]
    dataset = open_dataset(data_dir)
    meta = dataset.meta
    if meta["vocab_size"] != model.config.vocab_size:
        raise CliError(f"{data_dir} (vocab {meta['vocab_size']}) does not match the checkpoint (vocab "
                       f"{model.config.vocab_size})")
    window = min(window or model.config.block_size, model.config.block_size)
    val, train_split = WindowSampler(dataset, "val", window), WindowSampler(dataset, "train", window)
    heldout = WindowSampler(dataset, "heldout", window)
    if len(val) == 0:
        raise CliError(f"{data_dir} has no val pieces")
    composer_ids = checkpoint_ids(checkpoint["composers"], dataset.composers, data_dir)
    val.relabel_composers(composer_ids)
    heldout.relabel_composers(composer_ids)
    train_split.relabel_composers(composer_ids)
    train_counts = composer_train_counts(checkpoint, train_split)
    candidates, rule = (named_comparison_set(checkpoint["composers"], compare) if compare
                        else comparison_set(train_counts, min_train_pieces))
    new = [checkpoint["composers"][name] for name in checkpoint.get("new_composers", [])]
    if new:  # composers taught by fine-tuning are compared however few pieces taught them
        candidates, rule = sorted(set(candidates) | set(new)), rule + " and the fine-tuned composers"
    several_sources = isinstance(meta.get("source"), list)
    return Evaluation(
        model=model, tokenizer=tokenizer, checkpoint=checkpoint, data_dir=data_dir, dataset=dataset, meta=meta,
        window=window, val=val, heldout=heldout, train_split=train_split, train_counts=train_counts, rule=rule, fine_tuned=new,
        candidates=candidates[:max_composers],  # max_composers None: all
        train_pieces=[train_split.tokens[o:o + n] for o, n, _ in train_split.index],
        names={i: n for n, i in checkpoint["composers"].items()}, n_composers=model.config.n_composers,
        bos_id=meta["bos_id"], device=device, seed=seed, max_windows=max_windows,
        ctx=autocast_context(device_type_of(device), resolve_dtype(dtype, device_type_of(device))),
        val_sources=[p["path"].split("/")[0] for p in dataset.pieces() if p["split"] == "val"] if several_sources
        else None)


def checkpoint_ids(checkpoint_composers, dataset_composers, data_dir):
    """The checkpoint's id of each of the dataset's composer ids, matched by name (a dataset
    prepared from other folders, or the data of a fine-tune, numbers its composers its own way)."""
    table, ids, _ = merge_composer_tables(checkpoint_composers, dataset_composers)
    unknown = [name for name in table if name not in checkpoint_composers]
    if unknown:
        raise CliError(f"{data_dir} holds composers the checkpoint does not know ({', '.join(unknown[:5])})")
    return ids


def composer_train_counts(checkpoint, train_split):
    """{composer id: training pieces}: what the checkpoint records it learned from, else the
    dataset's training split."""
    if "composer_train_pieces" in checkpoint:
        return {checkpoint["composers"][name]: n for name, n in checkpoint["composer_train_pieces"].items()}
    files = train_split.index[~train_split.renditions, 2]  # not the renditions prepare.py adds
    return {int(c): int(n) for c, n in zip(*np.unique(files, return_counts=True))}


def window_measures(e, x, y, composer, kind):
    """NLL with the true composer, composer 0 and a wrong one on seeded val windows, overall and
    per composer, and the perplexities."""
    pad_id = e.meta["pad_id"]
    nll = {"true": window_nll(e.model, x, y, composer, kind),
           "uncond": window_nll(e.model, x, y, torch.zeros_like(composer), kind),
           "wrong": window_nll(e.model, x, y, derangement(composer, e.n_composers), kind)}
    weights = (y != pad_id).sum(1).float()
    overall = {k: float((v * weights).sum() / weights.sum()) for k, v in nll.items()}
    per_composer = {}
    for c in composer.unique().tolist():
        rows = composer == c
        per_composer[e.names.get(c, str(c))] = {k: float((v[rows] * weights[rows]).sum() / weights[rows].sum())
                                                for k, v in nll.items()} | {"windows": int(rows.sum())}
    notes = torch.from_numpy(note_counts(e.tokenizer)).to(y.device)[y].masked_fill(y == pad_id, 0).sum(1).float()
    per_note = {k: float((v * weights).sum() / notes.sum().clamp(min=1)) for k, v in nll.items()}
    return {"nll": overall, "perplexity": {k: math.exp(v) for k, v in overall.items()}, "nll_by_composer": per_composer,
            "nll_per_note": per_note, "notes_per_token": float(notes.sum() / weights.sum()),
            "bars_per_context": bars_per_context(e)}


def bars_per_context(e):
    """Bar lines per block_size tokens of the val split: how much music one context holds."""
    tokens = np.asarray(e.val.tokens) if len(e.val.tokens) else np.zeros(1, np.uint16)
    return float((tokens == e.tokenizer.vocab["Bar_None"]).sum() / len(tokens) * e.model.config.block_size)


def ngram_nll(ngram, x, y, pad_id):
    """Mean NLL of an n-gram model on the non-PAD targets of windows x -> y."""
    mask = (y != pad_id).cpu().numpy()
    xs, ys = x.cpu().numpy(), y.cpu().numpy()
    return float(np.mean(np.concatenate([-ngram.log_probs(np.concatenate([xs[i, :1], ys[i]]))[mask[i]]
                                         for i in range(len(xs))])))


def ngram_baselines(e, x, y, model_nll):
    """Unigram and Witten-Bell n-grams fitted on the training pieces, on the same targets."""
    vocab, pad_id = e.meta["vocab_size"], e.meta["pad_id"]
    orders = NGRAM_ORDERS if len(e.train_split.tokens) <= HIGH_ORDER_MAX_TOKENS else (3,)
    orders = [order for order in orders if order == 3 or vocab ** order < 2 ** 62]  # keys are int64 (ngram.py)
    by_order = {order: ngram_nll(NGram(e.train_pieces, vocab, order=order), x, y, pad_id) for order in orders}
    best_order = min(by_order, key=by_order.get)
    return {"unigram_entropy_train": unigram_entropy(np.asarray(e.train_split.tokens), vocab),
            "unigram_nll": ngram_nll(NGram(e.train_pieces, vocab, order=1), x, y, pad_id),
            "trigram_witten_bell_nll": by_order[3], "witten_bell_nll_by_order": {str(k): v for k, v in by_order.items()},
            "best_ngram_order": best_order, "best_ngram_nll": by_order[best_order],
            "model_over_best_ngram": model_nll / by_order[best_order]}


def whole_pieces(sampler, rows=None):
    """The whole pieces of a split's sampler [(tokens, composer id, kind id)], each with its own kind
    (only the given rows, in their order, if any)."""
    rows = range(len(sampler)) if rows is None else rows
    return [(np.asarray(sampler.tokens[o:o + n], np.int64), int(c), int(sampler.kinds[row]))
            for row, (o, n, c) in zip(rows, sampler.index[list(rows)])]


def val_pieces(e):
    return whole_pieces(e.val)


def val_piece_measures(e, at_most=0):
    """identify_pieces over the whole val pieces, each with its own kind (and source folder); at_most > 0:
    only that many, spread evenly over the split (in path order)."""
    rows = list(range(len(e.val)))
    if 0 < at_most < len(rows):
        rows = sorted({int(round(i)) for i in np.linspace(0, len(rows) - 1, at_most)})
    paths = [p["path"] for p in e.dataset.pieces() if p["split"] == "val"]
    sources = [e.val_sources[r] for r in rows] if e.val_sources else None
    return identify_pieces(e.model, whole_pieces(e.val, rows), e.candidates, e.names, e.train_counts, e.n_composers,
                        e.bos_id, e.max_windows, e.seed, e.ctx, sources, e.scorings, [paths[r] for r in rows])


def heldout_pieces(e, per_work):
    """The pieces of the sources held out whole (prepare.py --holdout) [(tokens, composer id, kind id)]
    and their sources, at most per_work of each work (in path order): many performances of one work
    are not independent evidence, and would narrow the interval without adding any."""
    rows, sources, paths, taken = [], [], [], {}
    for row, piece in enumerate(p for p in e.dataset.pieces() if p["split"] == "heldout"):
        work = work_of(piece["path"])
        taken[work] = taken.get(work, 0) + 1
        if taken[work] <= per_work:
            rows.append(row)
            sources.append(piece["path"].split("/")[0])
            paths.append(piece["path"])
    return whole_pieces(e.heldout, rows), sources, paths, len(taken)


def heldout_piece_measures(e, per_work):
    """identify_pieces over the held-out sources' pieces (heldout_pieces), by kind and by source."""
    pieces, sources, paths, works = heldout_pieces(e, per_work)
    return {"sources": e.meta["heldout_sources"], "works": works, "per_work": per_work,
            **identify_pieces(e.model, pieces, e.candidates, e.names, e.train_counts, e.n_composers, e.bos_id,
                           e.max_windows, e.seed, e.ctx, sources, e.scorings, paths)}


def probe_measures(e, probes, per_work):
    """{probe: {"val": ..., "heldout": ...}}: identification after each fingerprint probe
    (probes.Probes) removed one habit from every piece by a compared composer (the others would
    only add NLL figures, at the cost of a whole scoring each)."""
    table = Probes(e.tokenizer.vocab)
    compared = set(e.candidates)
    slices = {"val": (val_pieces(e), e.val_sources)}
    if e.meta.get("heldout_sources"):
        slices["heldout"] = heldout_pieces(e, per_work)[:2]
    out = {}
    for name in probes:
        out[name] = {}
        for key, (pieces, sources) in slices.items():
            kept = [(piece, source) for piece, source in zip(pieces, sources or [None] * len(pieces))
                    if piece[1] in compared]
            out[name][key] = identify_pieces(
                e.model, [(probed(e.tokenizer, table, name, tokens), c, k) for (tokens, c, k), _ in kept],
                e.candidates, e.names,
                e.train_counts, e.n_composers, e.bos_id, e.max_windows, e.seed, e.ctx,
                [source for _, source in kept] if sources else None, e.scorings)
    return out


def probed(tokenizer, table, name, tokens):
    """A piece's tokens after one probe: the probe edits its REMI tokens, which are merged again
    under the tokenizer's merges (a no-op without them)."""
    return merge(tokenizer, table.apply(name, unmerge(tokenizer, tokens))).astype(np.int64)


def real_dir_measures(e, real_dir):
    real, ignored = read_real_dir(real_dir, e.tokenizer, e.checkpoint["composers"])
    if not real:
        raise CliError(f"--real_dir {real_dir}: no piece by a composer of this checkpoint "
                       f"({len(ignored)} folders/files ignored)")
    return {"dir": real_dir, "ignored": ignored,
            **identify_pieces(e.model, [(t, c, k) for _, t, c, k in real], e.candidates, e.names, e.train_counts,
                           e.n_composers, e.bos_id, e.max_windows, e.seed, e.ctx, scorings=e.scorings)}


def read_real_dir(real_dir, tokenizer, composers):
    """[(path, tokens, composer id, kind id)] of <Composer>/*.mid files whose folder names a
    composer of the checkpoint (matched by composer_key; the kind detected from the file, as
    prepare.py does), and {folder: reason} for the rest."""
    from symusic import Score

    by_key = {composer_key(name): i for name, i in composers.items() if i != 0}
    pieces, ignored = [], {}
    for folder in sorted(os.listdir(real_dir)):
        path = os.path.join(real_dir, folder)
        if not os.path.isdir(path):
            continue
        composer = by_key.get(composer_key(folder))
        if composer is None:
            ignored[folder] = "not a composer of this checkpoint"
            continue
        for name in sorted(os.listdir(path)):
            if not name.lower().endswith((".mid", ".midi")):
                continue
            try:
                score = Score(os.path.join(path, name))
                ids, reason = encode_score(tokenizer, score)
            except Exception as e:  # a real folder may hold a broken file: report it, go on
                ids, reason = None, f"unreadable ({type(e).__name__})"
            if ids is None:
                ignored[f"{folder}/{name}"] = reason
            else:
                pieces.append((f"{folder}/{name}", ids.astype(np.int64), composer, KIND_IDS[piece_kind(score)[0]]))
    return pieces, ignored
