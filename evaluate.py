"""How good is a checkpoint, and does it know the composers? Measured on held-out real music.

    python evaluate.py --ckpt out/ckpt.pt
    python evaluate.py --ckpt out/ckpt.pt --real_dir path/to/<Composer>/*.mid --json results.json

1. NLL (nats/token) on fixed, seeded val windows with the TRUE composer, composer 0
   (unconditional) and a WRONG one (a derangement); unigram and n-gram (orders 3-6) baselines on the
   same targets. A model that uses the composer orders them true < uncond < wrong.
2. Whole held-out pieces (val, and --real_dir): NLL true / uncond / wrong with bootstrap
   intervals over pieces, and identification: each piece scored under every composer of
   the comparison set (composers with >= --min_train_pieces training pieces); accuracy
   beside chance and always guessing the commonest composer, and a confusion table.
3. An outside judge that never sees the model (judge.py: note statistics, fitted on
   excerpts of training pieces): its accuracy on real val excerpts, then on samples.
4. Copying: the longest run of notes each sample shares with any training piece, beside
   the same for real val excerpts.
5. Samples per composer and guidance: judge accuracy, self-judged adherence (the model
   grading its own samples: a sanity check only), notes/s, pitch range, pitch-class
   entropy, chord size and grammar errors, beside real val excerpts and their spread.
"""
import contextlib
import json
import math
import os
import sys
import time

import numpy as np
import torch

from checkpoints import load_trained
from cli import CliError, Parser, atomic_write_text, fail, positive_int
from dataset import KIND_IDS, RENDER_AS, WindowSampler, composer_key, open_dataset
from devices import autocast_context, device_type_of, resolve_dtype
from judge import Judge, note_arrays, note_features
from remi import (CHORD_LIMIT, GUIDANCE_MODES, RemiGrammar, decode_sample, encode_score, gram_keys, guidance_kinds,
                  piece_kind)


# ----------------------------------------------------------------------------- n-gram baselines

NGRAM_ORDERS = (3, 4, 5, 6)  # the best smoothed n-gram is the baseline a model must beat (order 5 wins on the shared sets)
HIGH_ORDER_MAX_TOKENS = 60_000_000  # orders above 3 only up to this many training tokens (22M: 2 GB at order 6)


class NGram:
    """Interpolated Witten-Bell n-gram over token ids (numpy only).

    p(w | h) = (c(h, w) + T(h) * p(w | h')) / (c(h) + T(h)), with T(h) the number of distinct
    continuations of h and h' the context one token shorter; the unigram level is add-one smoothed.
    """

    def __init__(self, sequences, vocab_size, order=3):
        self.vocab_size, self.order = vocab_size, order
        self.tables = []  # per context length k: (sorted keys of (h, w), counts, sorted keys of h, c(h), T(h))
        for k in range(order):
            grams = [self._keys(seq, k) for seq in sequences if len(seq) > k]
            full = np.concatenate(grams) if grams else np.empty(0, np.int64)
            keys, counts = np.unique(full, return_counts=True)
            contexts = keys // vocab_size
            ctx_keys, ctx_start = np.unique(contexts, return_index=True)
            ctx_counts = np.add.reduceat(counts, ctx_start) if len(counts) else counts
            ctx_types = np.diff(np.append(ctx_start, len(keys)))
            self.tables.append((keys, counts, ctx_keys, ctx_counts, ctx_types))

    def _keys(self, seq, k):
        """Integer key of (context of length k, next token) at every position >= k."""
        seq = np.asarray(seq, dtype=np.int64)
        key = np.zeros(len(seq) - k, dtype=np.int64)
        for j in range(k + 1):
            key = key * self.vocab_size + seq[j:len(seq) - k + j]
        return key

    @staticmethod
    def _lookup(sorted_keys, values, queries):
        pos = np.searchsorted(sorted_keys, queries)
        pos = np.minimum(pos, max(len(sorted_keys) - 1, 0))
        found = (sorted_keys[pos] == queries) if len(sorted_keys) else np.zeros(len(queries), bool)
        return np.where(found, values[pos] if len(values) else 0, 0)

    def log_probs(self, seq, start=1):
        """log p(seq[t] | seq[t-order+1 : t]) for t >= start (shorter contexts at the beginning)."""
        seq = np.asarray(seq, dtype=np.int64)
        targets = np.arange(start, len(seq))
        keys, counts, _, _, _ = self.tables[0]
        total = counts.sum()
        prob = (self._lookup(keys, counts, seq[targets]) + 1) / (total + self.vocab_size)
        for k in range(1, self.order):
            keys, counts, ctx_keys, ctx_counts, ctx_types = self.tables[k]
            usable = targets >= k
            t = targets[usable]
            ctx = np.zeros(len(t), dtype=np.int64)
            for j in range(k, 0, -1):
                ctx = ctx * self.vocab_size + seq[t - j]
            c_hw = self._lookup(keys, counts, ctx * self.vocab_size + seq[t])
            c_h = self._lookup(ctx_keys, ctx_counts, ctx)
            t_h = self._lookup(ctx_keys, ctx_types, ctx)
            seen = c_h > 0
            mixed = prob[usable].copy()
            mixed[seen] = (c_hw[seen] + t_h[seen] * mixed[seen]) / (c_h[seen] + t_h[seen])
            prob[usable] = mixed
        return np.log(prob)


def unigram_entropy(tokens, vocab_size):
    counts = np.bincount(np.asarray(tokens, dtype=np.int64), minlength=vocab_size).astype(float)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


# ----------------------------------------------------------------------------- NLL


def val_windows(sampler, num_windows, seed=0):
    """Fixed windows: piece i % n_pieces, a seeded crop; (x, y, composer, kind) tensors."""
    rng = np.random.default_rng([seed, 2024])
    pieces = np.arange(num_windows) % len(sampler)
    return sampler.batch(pieces, rng)


def derangement(composer, n_composers):
    """Each real composer id 1..N -> the next one (N -> 1): always a wrong composer."""
    n = n_composers - 1
    return torch.where(composer > 0, composer % n + 1, composer)


@torch.no_grad()
def window_nll(model, x, y, composer, kind, pad_id, batch_size=8):
    """Per-window mean NLL (nats/token) over non-PAD targets, no label smoothing."""
    out = []
    for i in range(0, len(x), batch_size):
        lp = model.token_log_probs(x[i:i + batch_size], composer[i:i + batch_size], y[i:i + batch_size],
                                   kind[i:i + batch_size])
        mask = (y[i:i + batch_size] != pad_id).float()
        out.append((-(lp * mask).sum(1) / mask.sum(1).clamp(min=1)))
    return torch.cat(out)


# ----------------------------------------------------------------------------- samples


def window_starts(n_tokens, span, max_windows=None):
    """Starts of consecutive span-token windows over a piece; at most max_windows of them,
    spread evenly from the beginning to the end."""
    starts = list(range(0, max(n_tokens, 1), span))
    if max_windows and len(starts) > max_windows:
        starts = [starts[i] for i in np.linspace(0, len(starts) - 1, max_windows).round().astype(int)]
    return starts


MIN_SPAN = 510  # tokens: a whole piece is scored in spans of at least this many, whatever the model's context


def scored_span(block_size):
    """Tokens per scored span of a whole piece: whole windows of block_size - 1 tokens, at least
    MIN_SPAN of them, so that a short-context model is scored on as many tokens of each piece as
    a 512-token one (and so with the same evidence for identification), in more windows."""
    window = block_size - 1
    return window * -(-MIN_SPAN // window)


@torch.no_grad()
def score_under(model, sequences, candidates, bos_id, max_windows=None, batch_size=32, ctx=None, kinds=None):
    """log p(sequence | k) for every candidate composer k -> [S, K], summed over tokens.

    Each sequence (tokens without BOS) is scored as training saw it: in windows of [BOS] +
    block_size - 1 tokens, consecutive within spans of scored_span(block_size) tokens (at most
    max_windows spans, spread over the piece). kinds: one kind id per sequence (the piece's own
    kind, as a model with a kind condition was trained on it); None scores with kind unknown.
    """
    device = next(model.parameters()).device
    ks = torch.as_tensor(list(candidates), dtype=torch.long, device=device)
    window_len = model.config.block_size - 1
    span = scored_span(model.config.block_size)
    bos = torch.tensor([bos_id], dtype=torch.long, device=device)
    scores = torch.zeros(len(sequences), len(ks), dtype=torch.float64)
    for row, seq in enumerate(sequences):
        kind = None if kinds is None else torch.full((1,), int(kinds[row]), dtype=torch.long, device=device)
        tokens = torch.as_tensor(np.asarray(seq, dtype=np.int64), device=device)
        starts = [w for start in window_starts(len(tokens), span, max_windows)
                  for w in range(start, min(start + span, len(tokens)), window_len)]
        for start in starts:
            window = torch.cat([bos, tokens[start:start + window_len]]).unsqueeze(0)
            for i in range(0, len(ks), batch_size):
                k = ks[i:i + batch_size]
                with ctx or contextlib.nullcontext():
                    lp = model.token_log_probs(window[:, :-1].expand(len(k), -1), k,
                                               window[:, 1:].expand(len(k), -1),
                                               None if kind is None else kind.expand(len(k)))
                scores[row, i:i + len(k)] += lp.double().sum(1).cpu()
    return scores


def bayes_classify(model, samples, n_composers, batch_size=8):
    """log p(sample | k) for k = 1..N -> [S, N]; samples [S, T] start with BOS."""
    bos = int(samples[0, 0])
    return score_under(model, [s[1:].cpu().numpy() for s in samples], range(1, n_composers), bos,
                       batch_size=batch_size).to(samples.device).float()


def tie_shared_credit(scores, wanted, atol):
    """Per row, the credit for argmax == wanted column: 1 for a clear win, 1/k when k columns
    tie for the top (within atol), so a model that ignores the composer scores chance exactly."""
    credit = []
    for row, want in zip(scores, wanted):
        row = torch.as_tensor(row)
        best = torch.isclose(row, row.max(), rtol=0, atol=atol)
        credit.append(float(best[want]) / float(best.sum()))
    return credit


def adherence(scores, requested):
    """Accuracy of argmax_k scores == requested (ids 1..N), ties sharing the credit."""
    credit = tie_shared_credit(scores, [want - 1 for want in requested], atol=1e-4)
    return float(np.mean(credit)) if credit else float("nan")


def confusion_table(pairs, names):
    """{true name: {guessed name: count}} from (true id, guessed id) pairs."""
    table = {}
    for true, guess in pairs:
        row = table.setdefault(names[true], {})
        row[names[guess]] = row.get(names[guess], 0) + 1
    return table


def music_stats(score, errors):
    """Notes per second, pitch range (semitones), pitch-class entropy (bits), mean chord size, and
    the grammar error rate `errors`, of a decoded score."""
    onsets, _, pitches, _ = note_arrays(score)
    if len(pitches) == 0:
        return {"notes_per_s": 0.0, "pitch_range": 0, "pitch_class_entropy": 0.0, "chord_size": 0.0,
                "grammar_error_rate": errors}
    seconds = float(score.to("second").end())
    pc = np.bincount(pitches % 12, minlength=12) / len(pitches)
    pc = pc[pc > 0]
    return {"notes_per_s": len(pitches) / max(seconds, 1e-6), "pitch_range": int(pitches.max() - pitches.min()),
            "pitch_class_entropy": float(-(pc * np.log2(pc)).sum()),
            "chord_size": float(len(pitches) / len(np.unique(onsets))), "grammar_error_rate": errors}


def mean_stats(stats):
    return {k: float(np.mean([s[k] for s in stats])) for k in stats[0]} if stats else {}


def spread_stats(stats):
    """5th and 95th percentile of each statistic: the range real pieces span."""
    return {k: [float(np.percentile([s[k] for s in stats], q)) for q in (5, 95)] for k in stats[0]} if stats else {}


# ----------------------------------------------------------------------------- real pieces: NLL and identification


def bootstrap_mean(values, weights, seed=0, n_resamples=2000):
    """Weighted mean over pieces and its 95 % percentile-bootstrap interval (resampling pieces)."""
    values, weights = np.asarray(values, np.float64), np.asarray(weights, np.float64)
    rng = np.random.default_rng([seed, 31])
    rows = rng.integers(0, len(values), (n_resamples, len(values)))
    means = (values[rows] * weights[rows]).sum(1) / weights[rows].sum(1)
    low, high = np.percentile(means, [2.5, 97.5])
    return {"mean": float((values * weights).sum() / weights.sum()), "low": float(low), "high": float(high)}


def tokens_scored(n_tokens, span, max_windows):
    return sum(min(span, n_tokens - start) for start in window_starts(n_tokens, span, max_windows))


def identification(scores, true_ids, candidates, names, train_counts):
    """Accuracy of argmax_k log p(piece | k) over the candidate composers (ties share the
    credit, so a composer-blind model scores chance exactly), chance, the always-the-
    commonest-composer baseline, and a confusion table {true: {predicted: pieces}}."""
    candidates = list(candidates)
    credit = tie_shared_credit(scores, [candidates.index(true) for true in true_ids], atol=1e-6)
    guesses = [candidates[int(torch.as_tensor(row).argmax())] for row in scores]
    confusion = confusion_table(zip(true_ids, guesses), names)
    commonest = max(candidates, key=lambda c: train_counts.get(c, 0))
    interval = bootstrap_mean(credit, np.ones(len(credit))) if credit else {"low": float("nan"), "high": float("nan")}
    return {"accuracy": float(np.mean(credit)) if credit else float("nan"), "pieces": len(credit),
            "accuracy_interval": [interval["low"], interval["high"]],
            "chance": 1 / len(candidates), "commonest_composer": names[commonest],
            "commonest_baseline": float(np.mean([t == commonest for t in true_ids])) if credit else float("nan"),
            "confusion": confusion}


def score_pieces(model, pieces, candidates, n_composers, bos_id, max_windows, ctx=None):
    """One row per piece [(tokens, composer id, kind id)]: tokens scored, NLL with the true
    composer, composer 0 and a wrong one, and the scores of the candidate composers; each piece
    scored with its own kind."""
    span = scored_span(model.config.block_size)
    rows = []
    for tokens, true, kind in pieces:
        wrong = int(derangement(torch.tensor([true]), n_composers)[0])
        ids = sorted({0, true, wrong, *candidates})
        scores = score_under(model, [tokens], ids, bos_id, max_windows, ctx=ctx, kinds=[kind])[0]
        n = tokens_scored(len(tokens), span, max_windows)
        rows.append({"n": n, "true": true, "kind": kind,
                     "nll": {key: float(-scores[ids.index(k)] / n) for key, k in
                             (("true", true), ("uncond", 0), ("wrong", wrong))},
                     "candidate_scores": scores[[ids.index(c) for c in candidates]]})
    return rows


def summarise_pieces(rows, candidates, names, train_counts, seed):
    """NLL by condition (bootstrap intervals over pieces) and identification among candidates."""
    weights = [r["n"] for r in rows]
    nll = {key: bootstrap_mean([r["nll"][key] for r in rows], weights, seed) for key in ("true", "uncond", "wrong")}
    gaps = {"uncond_minus_true": bootstrap_mean([r["nll"]["uncond"] - r["nll"]["true"] for r in rows], weights, seed),
            "wrong_minus_uncond": bootstrap_mean([r["nll"]["wrong"] - r["nll"]["uncond"] for r in rows], weights, seed)}
    eligible = [r for r in rows if r["true"] in candidates]
    ident = identification([r["candidate_scores"] for r in eligible], [r["true"] for r in eligible], candidates,
                           names, train_counts)
    return {"pieces": len(rows), "tokens_scored": int(sum(weights)), "nll": nll, "nll_gaps": gaps,
            "identification": ident}


def judge_pieces(model, pieces, candidates, names, train_counts, n_composers, bos_id, max_windows, seed, ctx=None,
                 sources=None):
    """summarise_pieces over all pieces [(tokens, composer id, kind id)], over each kind
    (sequenced, performed) that has pieces under "by_kind", and, given each piece's source (the
    MIDI folder it came from), over each source and kind under "by_source" when there are several."""
    rows = score_pieces(model, pieces, candidates, n_composers, bos_id, max_windows, ctx)
    out = summarise_pieces(rows, candidates, names, train_counts, seed)
    kinds = {kind_id: kind for kind, kind_id in KIND_IDS.items()}
    out["by_kind"] = {kinds[k]: summarise_pieces([r for r in rows if r["kind"] == k], candidates, names, train_counts,
                                                 seed)
                      for k in sorted({r["kind"] for r in rows} & set(kinds))}
    if sources and len(set(sources)) > 1:
        groups = sorted({(source, row["kind"]) for source, row in zip(sources, rows)} - {(s, 0) for s in sources})
        out["by_source"] = {f"{source} {kinds[k]}": summarise_pieces(
            [r for s, r in zip(sources, rows) if (s, r["kind"]) == (source, k)], candidates, names, train_counts, seed)
            for source, k in groups}
    return out


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


# ----------------------------------------------------------------------------- copying


def note_events(score):
    """One int per note: pitch and inter-onset interval (in 1/8 quarters) from the note before."""
    onsets, _, pitches, _ = note_arrays(score)
    steps = np.round(onsets * 8).astype(np.int64)
    ioi = np.clip(np.diff(steps, prepend=steps[:1]), 0, 255)
    return pitches * 256 + ioi


class CopyFinder:
    """The longest run of consecutive notes a query shares with any of a set of pieces.

    Runs are anchored on k-note grams (grams found more than max_occurrences times are
    generic figures and are not used as anchors) and extended both ways note by note, so a
    run of k notes or more is measured exactly; shorter ones count as 0.
    """

    def __init__(self, sequences, k=5, max_occurrences=400):
        self.k, self.max_occurrences = k, max_occurrences
        parts = []
        for i, seq in enumerate(sequences):
            parts += [np.asarray(seq, np.int64), np.array([-(i + 1)])]  # a separator no run can cross
        self.data = np.concatenate(parts) if parts else np.empty(0, np.int64)
        if len(self.data) < k:
            self.keys = self.positions = np.empty(0, np.int64)
            return
        negatives = np.concatenate([[0], np.cumsum(self.data < 0)])
        valid = negatives[k:] - negatives[:-k] == 0
        keys, positions = gram_keys(self.data, k)[valid], np.flatnonzero(valid)
        order = np.argsort(keys, kind="stable")
        self.keys, self.positions = keys[order], positions[order]

    def longest(self, query):
        query = np.asarray(query, np.int64)
        if len(query) < self.k or len(self.keys) == 0:
            return 0
        keys = gram_keys(query, self.k)
        low, high = np.searchsorted(self.keys, keys, "left"), np.searchsorted(self.keys, keys, "right")
        best = 0
        for s in np.flatnonzero((high > low) & (high - low <= self.max_occurrences)):
            starts = self.positions[low[s]:high[s]]
            run = run_lengths(query[s:], self.data, starts) + run_lengths(query[:s][::-1], self.data, starts - 1, -1)
            best = max(best, int(run.max()))
        return best


def run_lengths(query, data, starts, step=1):
    """For each start, how many notes of query match data[start], data[start + step], ... in a row."""
    if len(query) == 0:
        return np.zeros(len(starts), np.int64)
    offsets = starts[:, None] + step * np.arange(len(query))[None, :]
    inside = (offsets >= 0) & (offsets < len(data))
    same = inside & (data[np.clip(offsets, 0, len(data) - 1)] == query[None, :])
    return np.where(same.all(1), len(query), np.argmin(same, axis=1))


# ----------------------------------------------------------------------------- main


def comparison_set(train_counts, min_train_pieces):
    """Composers with at least min_train_pieces training pieces (all composers with any, when
    fewer than two qualify), and the rule that chose them."""
    chosen = sorted(c for c, n in train_counts.items() if c != 0 and n >= min_train_pieces)
    if len(chosen) >= 2:
        return chosen, f"composers with >= {min_train_pieces} training pieces"
    return sorted(c for c, n in train_counts.items() if c != 0 and n > 0), "every composer with a training piece"


def excerpts(split, rows, length, per_piece, seed):
    """[(tokens, composer id, kind id)]: per_piece seeded excerpts of `length` tokens from each
    piece row of a WindowSampler."""
    rng = np.random.default_rng([seed, 77])
    out = []
    for row in rows:
        offset, n, composer = (int(v) for v in split.index[row])
        for _ in range(per_piece):
            start = int(rng.integers(0, max(1, n - length + 1)))
            out.append((np.asarray(split.tokens[offset + start:offset + min(n, start + length)], np.int64), composer,
                        int(split.kinds[row])))
    return out


def evaluate(ckpt, data_dir=None, num_windows=64, window=None, guidances=(0.0, 1.0, 5.0), samples_per_composer=2,
             sample_tokens=512, seed=0, device="cpu", max_composers=None, real_dir=None, min_train_pieces=30,
             max_windows=4, judge_excerpts=3, dtype="auto", guidance_mode="within_types"):
    if real_dir and not os.path.isdir(real_dir):
        raise CliError(f"--real_dir {real_dir} is not a folder")
    model, checkpoint, tokenizer = load_trained(ckpt, device)
    data_dir = data_dir or checkpoint["train_config"]["data_dir"]
    dataset = open_dataset(data_dir)
    meta = dataset.meta
    if meta["vocab_size"] != model.config.vocab_size or meta["n_composers"] != model.config.n_composers:
        raise CliError(f"{data_dir} (vocab {meta['vocab_size']}, {meta['n_composers']} composer ids) does not match "
                       f"the checkpoint (vocab {model.config.vocab_size}, {model.config.n_composers} composer ids)")
    ctx = autocast_context(device_type_of(device), resolve_dtype(dtype, device_type_of(device)))
    names = {i: n for n, i in checkpoint["composers"].items()}
    n_composers, bos_id = model.config.n_composers, meta["bos_id"]
    window = min(window or model.config.block_size, model.config.block_size)
    val = WindowSampler(dataset, "val", window)
    train_split = WindowSampler(dataset, "train", window)
    if len(val) == 0:
        raise CliError(f"{data_dir} has no val pieces")
    train_counts = {int(c): int(n) for c, n in zip(*np.unique(train_split.index[:, 2], return_counts=True))}
    candidates, rule = comparison_set(train_counts, min_train_pieces)
    candidates = candidates[:max_composers]  # max_composers None: all
    results = {"ckpt": str(ckpt), "data_dir": data_dir, "num_windows": num_windows, "window": window,
               "comparison_set": {"rule": rule, "composers": {names[c]: train_counts[c] for c in candidates}}}
    progress = Progress()

    # 1. NLL with true / unconditional / wrong composer on seeded val windows
    x, y, composer, kind = (t.to(device) for t in val_windows(val, num_windows, seed))
    nll = {"true": window_nll(model, x, y, composer, kind, meta["pad_id"]),
           "uncond": window_nll(model, x, y, torch.zeros_like(composer), kind, meta["pad_id"]),
           "wrong": window_nll(model, x, y, derangement(composer, n_composers), kind, meta["pad_id"])}
    weights = (y != meta["pad_id"]).sum(1).float()
    results["nll"] = {k: float((v * weights).sum() / weights.sum()) for k, v in nll.items()}
    results["perplexity"] = {k: math.exp(v) for k, v in results["nll"].items()}
    per_composer = {}
    for c in composer.unique().tolist():
        rows = composer == c
        per_composer[names.get(c, str(c))] = {k: float((v[rows] * weights[rows]).sum() / weights[rows].sum())
                                              for k, v in nll.items()} | {"windows": int(rows.sum())}
    results["nll_by_composer"] = per_composer
    progress.say("val windows scored")

    # 2. baselines on the same targets
    train_tokens = train_split.tokens
    pieces = [train_tokens[o:o + n] for o, n, _ in train_split.index]
    unigram = NGram(pieces, meta["vocab_size"], order=1)
    targets_mask = (y != meta["pad_id"]).cpu().numpy()
    xs, ys = x.cpu().numpy(), y.cpu().numpy()
    full = [np.concatenate([xs[i, :1], ys[i]]) for i in range(len(xs))]
    def baseline(m):  # noqa: E306
        return float(np.mean(np.concatenate([-m.log_probs(f)[targets_mask[i]] for i, f in enumerate(full)])))
    orders = NGRAM_ORDERS if len(train_tokens) <= HIGH_ORDER_MAX_TOKENS else (3,)
    by_order = {order: baseline(NGram(pieces, meta["vocab_size"], order=order)) for order in orders}
    best_order = min(by_order, key=by_order.get)
    results["baselines"] = {"unigram_entropy_train": unigram_entropy(np.asarray(train_tokens), meta["vocab_size"]),
                            "unigram_nll": baseline(unigram), "trigram_witten_bell_nll": by_order[3],
                            "witten_bell_nll_by_order": {str(k): v for k, v in by_order.items()},
                            "best_ngram_order": best_order, "best_ngram_nll": by_order[best_order],
                            "model_over_best_ngram": results["nll"]["true"] / by_order[best_order]}
    progress.say("baselines")

    # 3. whole held-out pieces: NLL by condition with bootstrap intervals, identification
    val_pieces = [(np.asarray(val.tokens[o:o + n], np.int64), int(c), int(k)) for (o, n, c), k in
                  zip(val.index, val.kinds)]
    sources = [p["path"].split("/")[0] if "/" in p["path"] else "" for p in dataset.pieces() if p["split"] == "val"]
    results["val_pieces"] = judge_pieces(model, val_pieces, candidates, names, train_counts, n_composers, bos_id,
                                         max_windows, seed, ctx, sources if isinstance(meta.get("source"), list) else None)
    progress.say(f"{len(val_pieces)} val pieces scored under {len(candidates) + 3} conditions")
    if real_dir:
        real, ignored = read_real_dir(real_dir, tokenizer, checkpoint["composers"])
        if not real:
            raise CliError(f"--real_dir {real_dir}: no piece by a composer of this checkpoint "
                           f"({len(ignored)} folders/files ignored)")
        results["real_dir"] = {"dir": real_dir, "ignored": ignored,
                               **judge_pieces(model, [(t, c, k) for _, t, c, k in real], candidates, names,
                                              train_counts, n_composers, bos_id, max_windows, seed, ctx)}
        progress.say(f"{len(real)} pieces of {real_dir} scored")

    # 4. the outside judge, fitted on excerpts of training pieces of the comparison set
    def decoded(token_lists):
        """(score, grammar error rate) of each token list, decoded once for every measure."""
        return [decode_sample(tokenizer, ids)[1:] for ids in token_lists]

    def features(scores):
        return np.array([note_features(score) for score, _ in scores])

    train_rows = [r for r in range(len(train_split)) if int(train_split.index[r, 2]) in candidates]
    val_rows = [r for r in range(len(val)) if int(val.index[r, 2]) in candidates]
    train_ex = excerpts(train_split, train_rows, sample_tokens, judge_excerpts, seed)
    val_ex = excerpts(val, val_rows, sample_tokens, judge_excerpts, seed + 1)
    judge = Judge().fit(features(decoded([t for t, _, _ in train_ex])), [c for _, c, _ in train_ex])
    val_scores = decoded([t for t, _, _ in val_ex])
    val_features = features(val_scores)
    val_composers, val_kinds = np.array([c for _, c, _ in val_ex]), np.array([k for _, _, k in val_ex])
    results["judge"] = {"features": "note statistics (pitch classes, intervals, register, chords, onsets, durations, "
                                    "velocities, tempo)", "train_excerpts": len(train_ex),
                        "val_excerpts": len(val_ex),
                        "accuracy_on_real_val": judge.accuracy(val_features, val_composers),
                        "balanced_accuracy_on_real_val": judge.balanced_accuracy(val_features, val_composers),
                        "real_val_composers": len(set(val_composers.tolist())), "chance": 1 / len(candidates),
                        "by_kind": {kind: {"val_excerpts": int((val_kinds == k).sum()),
                                           "accuracy_on_real_val": judge.accuracy(val_features[val_kinds == k],
                                                                                  val_composers[val_kinds == k])}
                                    for kind, k in KIND_IDS.items() if (val_kinds == k).any()}}
    progress.say("outside judge fitted")
    copies = CopyFinder([note_events(decode_sample(tokenizer, p)[1]) for p in pieces])
    real_runs = [copies.longest(note_events(score)) for score, _ in val_scores]
    results["copying"] = {"rule": "longest run of consecutive notes (pitch and inter-onset interval) shared with "
                                  "any training piece; runs under 5 notes count as 0",
                          "real_val_excerpts": {"median": float(np.median(real_runs)) if real_runs else 0.0,
                                                "max": int(max(real_runs, default=0))}}
    progress.say("copy index built")

    # 5. samples for the comparison set at each guidance
    requested = torch.tensor([c for c in candidates for _ in range(samples_per_composer)], device=device)
    bos = torch.full((len(requested), 1), bos_id, dtype=torch.long, device=device)
    results["samples"] = {}
    # a model with a kind condition renders every guidance both ways (score, performance)
    renderings = [(f"{g}", g, None) for g in guidances] if not model.config.n_kinds else \
        [(f"{g} {kind}", g, kind) for g in guidances for kind in RENDER_AS]
    for label, g, kind in renderings:
        generator = torch.Generator(device=device).manual_seed(seed)
        with ctx:
            out = model.generate(bos, requested, sample_tokens, guidance=g, generator=generator,
                                 logits_processor=RemiGrammar(tokenizer, chord_limit=CHORD_LIMIT),
                                 guidance_kinds=guidance_kinds(tokenizer, guidance_mode),
                                 kind=None if kind is None else RENDER_AS[kind])
        token_lists = [row[1:].tolist() for row in out]
        scores = score_under(model, [np.array(t) for t in token_lists], candidates, bos_id, ctx=ctx,
                             kinds=None if kind is None else [RENDER_AS[kind]] * len(token_lists))
        sample_scores = decoded(token_lists)
        runs = [copies.longest(note_events(score)) for score, _ in sample_scores]
        stats = [music_stats(score, errors) for score, errors in sample_scores]
        verdicts = judge.predict(features(sample_scores))
        results["samples"][label] = {
            "judge_accuracy": float(np.mean(verdicts == requested.cpu().numpy())),
            "judge_confusion": confusion_table(zip(requested.tolist(), verdicts.tolist()), names),
            "self_judged_adherence": adherence(scores, [candidates.index(c) + 1 for c in requested.tolist()]),
            "chance": 1 / len(candidates), "longest_copied_run": int(max(runs, default=0)),
            "median_copied_run": float(np.median(runs)) if runs else 0.0, **mean_stats(stats)}
        progress.say(f"samples at guidance {label}")
    real_stats = [music_stats(score, errors) for score, errors in val_scores]
    results["samples"]["real val excerpts"] = mean_stats(real_stats)
    results["real_val_spread"] = spread_stats(real_stats)
    return results


class Progress:
    """One line per finished stage, with the seconds since the start (to stderr)."""

    def __init__(self):
        self.start = time.perf_counter()

    def say(self, what):
        print(f"[{time.perf_counter() - self.start:6.1f} s] {what}", file=sys.stderr, flush=True)


def print_pieces(title, p):
    n, g, ident = p["nll"], p["nll_gaps"], p["identification"]
    print(f"\n{title}: {p['pieces']} whole pieces ({p['tokens_scored']:,} tokens scored), 95 % bootstrap over pieces")
    for key in ("true", "uncond", "wrong"):
        print(f"  NLL {key:7s} {n[key]['mean']:.4f}  [{n[key]['low']:.4f}, {n[key]['high']:.4f}]")
    for key, label in (("uncond_minus_true", "uncond - true"), ("wrong_minus_uncond", "wrong - uncond")):
        print(f"  {label:15s} {g[key]['mean']:+.4f}  [{g[key]['low']:+.4f}, {g[key]['high']:+.4f}]")
    print(f"  identification {ident['accuracy']:.3f} [{ident['accuracy_interval'][0]:.3f}, "
          f"{ident['accuracy_interval'][1]:.3f}] over {ident['pieces']} pieces (chance {ident['chance']:.3f}, "
          f"always {ident['commonest_composer']} {ident['commonest_baseline']:.3f})")
    for true, row in sorted(ident["confusion"].items()):
        guesses = ", ".join(f"{name} {count}" for name, count in sorted(row.items(), key=lambda kv: -kv[1])[:4])
        print(f"    {true[:18]:18s} -> {guesses}")
    for kind, part in p.get("by_kind", {}).items():
        if len(p["by_kind"]) > 1:
            print_pieces(f"{title}, {kind} only", part)
    for source, part in p.get("by_source", {}).items():
        print_pieces(f"{title} from {source}", part)


def print_report(r):
    print(f"\n{r['ckpt']} on {r['data_dir']}: {r['num_windows']} val windows of {r['window']} tokens")
    print("\nNLL (nats/token)        true     uncond   wrong")
    print(f"  all windows          {r['nll']['true']:.4f}   {r['nll']['uncond']:.4f}   {r['nll']['wrong']:.4f}"
          f"   (perplexity {r['perplexity']['true']:.2f} / {r['perplexity']['uncond']:.2f} / {r['perplexity']['wrong']:.2f})")
    b = r["baselines"]
    orders = " / ".join(f"{v:.4f}" for v in b["witten_bell_nll_by_order"].values())
    print(f"\nbaselines: unigram entropy of train tokens {b['unigram_entropy_train']:.4f}; on these targets unigram "
          f"{b['unigram_nll']:.4f}, Witten-Bell orders {', '.join(b['witten_bell_nll_by_order'])} {orders}")
    print(f"  the model's window NLL is {b['model_over_best_ngram']:.3f}x the best n-gram "
          f"(order {b['best_ngram_order']}, {b['best_ngram_nll']:.4f})")
    c = r["comparison_set"]
    print(f"\ncomparison set ({c['rule']}): " + ", ".join(f"{k} {v}" for k, v in c["composers"].items()))
    print_pieces("val pieces", r["val_pieces"])
    if "real_dir" in r:
        print_pieces(f"--real_dir {r['real_dir']['dir']}", r["real_dir"])
        if r["real_dir"]["ignored"]:
            print(f"  ignored: {len(r['real_dir']['ignored'])} ({', '.join(list(r['real_dir']['ignored'])[:6])} ...)")
    j, cp = r["judge"], r["copying"]
    print(f"\noutside judge (note statistics, never sees the model): {j['accuracy_on_real_val']:.3f} on "
          f"{j['val_excerpts']} real val excerpts, {j['balanced_accuracy_on_real_val']:.3f} balanced over their "
          f"{j['real_val_composers']} composers (chance {j['chance']:.3f}); samples are balanced by design")
    for kind, part in j.get("by_kind", {}).items():
        print(f"  on {kind} val excerpts: {part['accuracy_on_real_val']:.3f} ({part['val_excerpts']} excerpts)")
    print(f"copying: {cp['rule']}; real val excerpts median {cp['real_val_excerpts']['median']:.0f}, "
          f"max {cp['real_val_excerpts']['max']}")
    print("\nsamples              judge   self-judged*  longest copy  notes/s  pitch range  pc H (bits)  chord  grammar")
    for g, s in r["samples"].items():
        is_real = "judge_accuracy" not in s
        label = g if is_real else f"g {g}"
        judged = "   -   " if is_real else f"{s['judge_accuracy']:.3f}  "
        self_judged = "     -      " if is_real else f"{s['self_judged_adherence']:.3f}       "
        copy = "     -      " if is_real else f"{s['longest_copied_run']:5d}       "
        print(f"  {label:18s} {judged} {self_judged} {copy} {s['notes_per_s']:6.2f}   {s['pitch_range']:6.1f}"
              f"       {s['pitch_class_entropy']:.3f}      {s['chord_size']:.2f}   {s['grammar_error_rate']:.4f}")
    spread = r.get("real_val_spread", {})
    if spread:
        print("  real 5-95 %                                           " + "  ".join(
            f"{spread[k][0]:.1f}-{spread[k][1]:.1f}" for k in ("notes_per_s", "pitch_range", "pitch_class_entropy",
                                                               "chord_size")))
    print("  * self-judged: the model as a Bayes classifier of its own samples; a sanity check of guidance, "
          "not evidence of style")


def main(argv=None):
    parser = Parser(description=__doc__.split("\n")[0])
    parser.add_argument("--ckpt", default="out/ckpt.pt")
    parser.add_argument("--data_dir", default=None, help="prepared dataset (default: the checkpoint's data_dir)")
    parser.add_argument("--num_windows", type=positive_int, default=64)
    parser.add_argument("--window", type=positive_int, default=None, help="tokens per window (default: block_size)")
    parser.add_argument("--guidance", default="0,1,5", help="comma-separated guidance values for the samples")
    parser.add_argument("--guidance_mode", default="within_types", choices=GUIDANCE_MODES,
                        help="as sample.py's: guidance within token types (default) or on every logit (plain)")
    parser.add_argument("--samples_per_composer", type=positive_int, default=2)
    parser.add_argument("--sample_tokens", type=positive_int, default=512)
    parser.add_argument("--max_composers", type=positive_int, default=None, help="sample only the first N composers")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda", "mps"))
    parser.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"),
                        help="autocast for scoring and sampling (auto: bf16 where the CPU/GPU has it natively)")
    parser.add_argument("--real_dir", default=None, help="a labelled folder <Composer>/*.mid of real held-out pieces")
    parser.add_argument("--min_train_pieces", type=positive_int, default=30,
                        help="identification compares composers with at least this many training pieces")
    parser.add_argument("--max_windows", type=positive_int, default=4,
                        help="spans scored per whole piece (spread over it); a span is block_size - 1 tokens, "
                             f"or whole windows of it adding up to at least {MIN_SPAN}")
    parser.add_argument("--judge_excerpts", type=positive_int, default=3, help="excerpts per piece for the judge")
    parser.add_argument("--json", default=None, help="also write the numbers to this file")
    args = parser.parse_args(argv)
    try:
        guidances = tuple(float(g) for g in args.guidance.split(","))
        if any(not (g >= 0 and math.isfinite(g)) for g in guidances):
            raise ValueError
    except ValueError:
        fail(parser.prog, f"--guidance expects comma-separated numbers >= 0, got {args.guidance!r}")
    try:
        results = evaluate(args.ckpt, args.data_dir, args.num_windows, args.window, guidances, args.samples_per_composer,
                           args.sample_tokens, args.seed, args.device, args.max_composers, args.real_dir,
                           args.min_train_pieces, args.max_windows, args.judge_excerpts, args.dtype,
                           args.guidance_mode)
    except CliError as e:
        fail(parser.prog, str(e))
    print_report(results)
    if args.json:
        atomic_write_text(args.json, json.dumps(results, indent=1))
        print(f"\nwrote {args.json}", file=sys.stderr)


if __name__ == "__main__":
    main()
