"""How good is a checkpoint, and does it know the composers? Measured on held-out real music.

    python evaluate.py --ckpt out/ckpt.pt
    python evaluate.py --ckpt out/ckpt.pt --real_dir path/to/<Composer>/*.mid --json results.json

1. NLL (nats/token) on fixed, seeded val windows with the TRUE composer, composer 0
   (unconditional) and a WRONG one (a derangement); unigram and n-gram (orders 3-6) baselines on the
   same targets. A model that uses the composer orders them true < uncond < wrong.
2. Whole held-out pieces (the held-out sources of prepare.py --holdout first: cross-source; then
   val, and --real_dir): NLL true / uncond / wrong with bootstrap
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
import dataclasses
import difflib
import json
import math
import os
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch

from pianogpt.checkpoints import load_trained
from pianogpt.cli import CliError, Parser, fail, non_negative_int, positive_int, run_program
from pianogpt.files import atomic_write_text, write_or_fail
from pianogpt.data.dataset import (KIND_IDS, RENDER_AS, WindowSampler, composer_key, merge_composer_tables, open_dataset,
                              work_of)
from pianogpt.devices import autocast_context, device_type_of, resolve_dtype
from pianogpt.measures.copies import CopyFinder, note_events
from pianogpt.measures.judge import Judge, note_arrays, note_features
from pianogpt.measures.probes import Probes
from pianogpt.measures.ngram import HIGH_ORDER_MAX_TOKENS, NGRAM_ORDERS, NGram, unigram_entropy
from pianogpt.generation.infill import PLAIN, bar_lines, context_budget, gap_layouts, infill_prompt, real_gaps, write_middles
from pianogpt.data.merges import full_vocab, merge, note_counts, unmerge
from pianogpt.data.remi import (CHORD_LIMIT, GUIDANCE_MODES, RemiGrammar, decode_sample, encode_score, grammar_error_rate,
                           guidance_types, note_token_mask, piece_kind)
from pianogpt.generation.engine import generate


KIND_NAMES = {kind_id: kind for kind, kind_id in KIND_IDS.items()}  # 1: "sequenced", 2: "performed"

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
def window_nll(model, x, y, composer, kind, batch_size=8):
    """Per-window mean NLL (nats/token) over non-PAD targets, no label smoothing (model.target_nll)."""
    out = []
    for i in range(0, len(x), batch_size):
        part = slice(i, i + batch_size)
        nll, real = model.target_nll(x[part], composer[part], y[part], kind[part])
        out.append(nll.sum(1) / real.sum(1).clamp(min=1))
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
def score_under(model, sequences, candidates, bos_id, max_windows=None, batch_size=32, ctx=None, kinds=None,
                counted=None):
    """log p(sequence | k) for every candidate composer k -> [S, K], summed over tokens.

    Each sequence (tokens without BOS) is scored as training saw it: in windows of [BOS] +
    block_size - 1 tokens, consecutive within spans of scored_span(block_size) tokens (at most
    max_windows spans, spread over the piece). kinds: one kind id per sequence (the piece's own
    kind, as a model with a kind condition was trained on it); None scores with kind unknown.
    counted: a bool tensor over the vocabulary, the tokens whose log-probabilities are summed
    (every token is still read as context), or [M, vocab] of them for M sums at once ([S, K, M]);
    None counts every token.
    """
    device = next(model.parameters()).device
    ks = torch.as_tensor(list(candidates), dtype=torch.long, device=device)
    window_len = model.config.block_size - 1
    span = scored_span(model.config.block_size)
    bos = torch.tensor([bos_id], dtype=torch.long, device=device)
    masks = None if counted is None else (counted if counted.dim() == 2 else counted[None]).to(device)
    scores = torch.zeros(len(sequences), len(ks), 1 if masks is None else len(masks), dtype=torch.float64)
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
                lp = lp.double()[:, :, None]
                if masks is not None:
                    lp = lp * masks[:, window[0, 1:]].T[None]
                scores[row, i:i + len(k)] += lp.sum(1).cpu()
    return scores if counted is not None and counted.dim() == 2 else scores[..., 0]


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


def tokens_scored(n_tokens, span, max_windows, tokens=None, counted=None):
    """How many tokens of a piece score_under sums (of `tokens`, only the counted ones, if given)."""
    starts = window_starts(n_tokens, span, max_windows)
    if counted is None:
        return sum(min(span, n_tokens - start) for start in starts)
    return int(sum(counted[torch.as_tensor(tokens[start:start + span])].sum() for start in starts))


SCORE_TOKENS = ("all", "notes")  # notes: what is played and when (Pitch, Position, Bar, Rest), not how


def counted_tokens(vocab, which):
    """score_under's `counted` for --score_tokens: None (all) or the note tokens (remi.note_token_mask)."""
    return None if which == "all" else note_token_mask(vocab)


def scorings_of(vocab, primary):
    """{name: counted} of every --score_tokens choice, the primary one first: whole pieces are scored
    once for all of them (one forward pass, one sum per choice), and identification reported for each."""
    return {name: counted_tokens(vocab, name) for name in (primary, *[n for n in SCORE_TOKENS if n != primary])}


def stacked(scorings, vocab_size):
    """The [M, vocab] masks of scorings, in their order (all tokens: a row of ones)."""
    return torch.stack([torch.ones(vocab_size, dtype=torch.bool) if counted is None else counted
                        for counted in scorings.values()])


def identification(scores, true_ids, candidates, names, train_counts):
    """Accuracy of argmax_k log p(piece | k) over the candidate composers (ties share the
    credit, so a composer-blind model scores chance exactly), chance, the always-the-
    commonest-composer baselines (of training, and of these pieces), a balanced accuracy (every
    composer among these pieces weighs alike: a slice that is mostly one composer cannot be won by
    naming him every time) and a confusion table {true: {predicted: pieces}}."""
    candidates = list(candidates)
    commonest = max(candidates, key=lambda c: train_counts.get(c, 0))
    shared = {"pieces": len(true_ids), "chance": 1 / len(candidates), "commonest_composer": names[commonest]}
    if not true_ids:  # a slice without a piece by a compared composer
        nan = float("nan")
        return {**shared, "accuracy": nan, "accuracy_interval": [nan, nan], "balanced_accuracy": nan,
                "composers_here": 0, "commonest_baseline": nan, "commonest_here": None,
                "commonest_here_baseline": nan, "confusion": {}, "credit": []}
    credit = tie_shared_credit(scores, [candidates.index(true) for true in true_ids], atol=1e-6)
    guesses = [candidates[int(torch.as_tensor(row).argmax())] for row in scores]
    interval = bootstrap_mean(credit, np.ones(len(credit)))
    by_composer = {}
    for true, c in zip(true_ids, credit):
        by_composer.setdefault(true, []).append(c)
    most_here = max(by_composer, key=lambda c: len(by_composer[c]))
    return {**shared, "accuracy": float(np.mean(credit)), "accuracy_interval": [interval["low"], interval["high"]],
            "balanced_accuracy": float(np.mean([np.mean(v) for v in by_composer.values()])),
            "composers_here": len(by_composer),
            "commonest_baseline": float(np.mean([t == commonest for t in true_ids])),
            "commonest_here": names[most_here], "commonest_here_baseline": len(by_composer[most_here]) / len(credit),
            "confusion": confusion_table(zip(true_ids, guesses), names),
            "credit": [float(c) for c in credit]}  # per piece, in order: recipes compare on the same pieces


def score_pieces(model, pieces, candidates, n_composers, bos_id, max_windows, ctx=None, scorings=None):
    """One row per piece [(tokens, composer id, kind id)]: tokens scored, NLL with the true
    composer, composer 0 and a wrong one, and the scores of the candidate composers; each piece
    scored with its own kind. scorings: {name: counted} (scorings_of; None: all tokens), the first
    the primary one (tokens, NLL), the candidates' scores under each under candidate_scores_by_tokens."""
    scorings = scorings or {"all": None}
    masks = stacked(scorings, model.config.vocab_size)
    primary = next(iter(scorings.values()))
    span = scored_span(model.config.block_size)
    rows = []
    for tokens, true, kind in pieces:
        wrong = int(derangement(torch.tensor([true]), n_composers)[0])
        ids = sorted({0, true, wrong, *candidates})
        scores = score_under(model, [tokens], ids, bos_id, max_windows, ctx=ctx, kinds=[kind], counted=masks)[0]
        n = max(1, tokens_scored(len(tokens), span, max_windows, tokens, primary))
        rows.append({"n": n, "true": true, "kind": kind,
                     "nll": {key: float(-scores[ids.index(k), 0] / n) for key, k in
                             (("true", true), ("uncond", 0), ("wrong", wrong))},
                     "candidate_scores_by_tokens": {name: scores[[ids.index(c) for c in candidates], m]
                                                    for m, name in enumerate(scorings)}})
    return rows


def summarise_pieces(rows, candidates, names, train_counts, seed):
    """NLL by condition (bootstrap intervals over pieces) and identification among candidates."""
    weights = [r["n"] for r in rows]
    nll = {key: bootstrap_mean([r["nll"][key] for r in rows], weights, seed) for key in ("true", "uncond", "wrong")}
    gaps = {"uncond_minus_true": bootstrap_mean([r["nll"]["uncond"] - r["nll"]["true"] for r in rows], weights, seed),
            "wrong_minus_uncond": bootstrap_mean([r["nll"]["wrong"] - r["nll"]["uncond"] for r in rows], weights, seed)}
    eligible = [r for r in rows if r["true"] in candidates]
    scorings = rows[0]["candidate_scores_by_tokens"] if rows else ("all",)  # the primary first
    by_tokens = {name: identification([r["candidate_scores_by_tokens"][name] for r in eligible],
                                      [r["true"] for r in eligible], candidates, names, train_counts)
                 for name in scorings}
    if rows and "path" in rows[0]:  # the piece of each credit: two runs pair on the pieces both scored
        for ident in by_tokens.values():
            ident["paths"] = [r["path"] for r in eligible]
    return {"pieces": len(rows), "tokens_scored": int(sum(weights)), "nll": nll, "nll_gaps": gaps,
            "identification": next(iter(by_tokens.values())), "identification_by_tokens": by_tokens}


def judge_pieces(model, pieces, candidates, names, train_counts, n_composers, bos_id, max_windows, seed, ctx=None,
                 sources=None, scorings=None, paths=None):
    """summarise_pieces over all pieces [(tokens, composer id, kind id)], over each kind
    (sequenced, performed) that has pieces under "by_kind", and, given each piece's source (the
    MIDI folder it came from), over each source and kind under "by_source" when there are several.
    paths: each piece's path, listed beside the credits (identification's "paths")."""
    rows = score_pieces(model, pieces, candidates, n_composers, bos_id, max_windows, ctx, scorings)
    for row, path in zip(rows, paths or ()):
        row["path"] = path
    out = summarise_pieces(rows, candidates, names, train_counts, seed)
    out["by_kind"] = {KIND_NAMES[k]: summarise_pieces([r for r in rows if r["kind"] == k], candidates, names,
                                                      train_counts, seed)
                      for k in sorted({r["kind"] for r in rows} & set(KIND_NAMES))}
    if sources and len(set(sources)) > 1:
        groups = sorted({(source, row["kind"]) for source, row in zip(sources, rows)} - {(s, 0) for s in sources})
        out["by_source"] = {f"{source} {KIND_NAMES[k]}": summarise_pieces(
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


# ----------------------------------------------------------------------------- main


def comparison_set(train_counts, min_train_pieces):
    """Composers with at least min_train_pieces training pieces (all composers with any, when
    fewer than two qualify), and the rule that chose them."""
    chosen = sorted(c for c, n in train_counts.items() if c != 0 and n >= min_train_pieces)
    if len(chosen) >= 2:
        return chosen, f"composers with >= {min_train_pieces} training pieces"
    return sorted(c for c, n in train_counts.items() if c != 0 and n > 0), "every composer with a training piece"


def named_comparison_set(composers, names):
    """The ids of the named composers (--compare: two recipes compared on one comparison set), and
    the rule; a name the checkpoint does not know is a CliError naming the closest."""
    ids = []
    for name in names:
        if name not in composers:
            close = difflib.get_close_matches(name, [n for n in composers if composers[n]], n=3)
            raise CliError(f"--compare {name}: not a composer of the checkpoint"
                           + (f" (closest: {', '.join(close)})" if close else ""))
        ids.append(composers[name])
    if len(set(ids)) < 2:
        raise CliError("--compare needs at least two composers")
    return sorted(set(ids)), "the composers named by --compare"


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


@dataclass
class Request:
    """What evaluate() measures, and on how much: evaluate.py's flags (--help says what each does)."""
    data_dir: str = None  # None: the checkpoint's own dataset
    num_windows: int = 64
    window: int = None
    guidances: tuple = (0.0, 1.0, 5.0)
    samples_per_composer: int = 2
    sample_tokens: int = 512
    seed: int = 0
    device: str = "cpu"
    max_composers: int = None
    real_dir: str = None
    min_train_pieces: int = 30
    max_windows: int = 4
    judge_excerpts: int = 3
    dtype: str = "auto"
    guidance_mode: str = "within_types"
    per_work: int = 1
    probes: tuple = ()
    score_tokens: str = "all"
    infill_gaps: int = 0
    infill_takes: int = 0
    infill_guidance: float = 3.0
    compare: tuple = ()  # composer names: compare exactly these (instead of min_train_pieces' rule)
    val_pieces: int = 0  # > 0: score only that many whole val pieces, spread over the split


def evaluate(ckpt, request=Request()):
    """Every measure of the module docstring, as one dict (print_report prints it)."""
    r = request
    if r.real_dir and not os.path.isdir(r.real_dir):
        raise CliError(f"--real_dir {r.real_dir} is not a folder")
    e = set_up(ckpt, r.data_dir, r.window, r.device, r.dtype, r.min_train_pieces, r.max_composers, r.seed, r.max_windows,
               r.compare)
    e.scorings = scorings_of(full_vocab(e.tokenizer), r.score_tokens)
    results = {"ckpt": str(ckpt), "data_dir": e.data_dir, "num_windows": r.num_windows, "window": e.window,
               "score_tokens": r.score_tokens,
               "comparison_set": {"rule": e.rule, "composers": {e.names[c]: e.train_counts[c] for c in e.candidates},
                                  "fine_tuned": [e.names[c] for c in e.fine_tuned]}}
    progress = Progress()
    x, y, composer, kind = (t.to(r.device) for t in val_windows(e.val, r.num_windows, r.seed))
    results.update(window_measures(e, x, y, composer, kind))
    progress.say("val windows scored")
    results["baselines"] = ngram_baselines(e, x, y, results["nll"]["true"])
    progress.say("baselines")
    if e.meta.get("heldout_sources"):
        results["heldout_pieces"] = heldout_piece_measures(e, r.per_work)
        progress.say(f"{results['heldout_pieces']['pieces']} pieces of the held-out sources scored")
    results["val_pieces"] = val_piece_measures(e, r.val_pieces)
    progress.say(f"{results['val_pieces']['pieces']} val pieces scored under {len(e.candidates) + 3} conditions")
    if r.real_dir:
        results["real_dir"] = real_dir_measures(e, r.real_dir)
        progress.say(f"pieces of {r.real_dir} scored")
    if r.probes:
        results["probes"] = probe_measures(e, r.probes, r.per_work)
        progress.say(f"probes {', '.join(r.probes)}")
    if r.infill_gaps:
        results["infill"] = infill_nll_measures(e, r.infill_gaps)
        progress.say(f"{results['infill']['gaps']} real gaps of val pieces scored")
    if r.infill_takes:
        results.setdefault("infill", {}).update(infill_take_measures(e, r.infill_takes, r.infill_guidance))
        progress.say("gaps filled and continued, judged")
    if r.samples_per_composer == 0:  # identification and NLL only: no judge, no copy index, no samples
        return results
    judge, val_scores, results["judge"] = fit_outside_judge(e, r.sample_tokens, r.judge_excerpts)
    progress.say("outside judge fitted")
    copies = CopyFinder([note_events(decode_sample(e.tokenizer, p)[1]) for p in e.train_pieces])
    real_runs = [copies.longest(note_events(score)) for score, _ in val_scores]
    results["copying"] = {"rule": "longest run of consecutive notes (pitch and inter-onset interval) shared with "
                                  "any training piece; runs under 5 notes count as 0",
                          "real_val_excerpts": {"median": float(np.median(real_runs)) if real_runs else 0.0,
                                                "max": int(max(real_runs, default=0))}}
    progress.say("copy index built")
    results["samples"] = {}
    # a model with a kind condition renders every guidance both ways (score, performance)
    renderings = [(f"{g}", g, None) for g in r.guidances] if not e.model.config.n_kinds else \
        [(f"{g} {kind}", g, kind) for g in r.guidances for kind in RENDER_AS]
    for label, g, kind in renderings:
        results["samples"][label] = sample_measures(e, judge, copies, g, kind, r.samples_per_composer, r.sample_tokens,
                                                    r.guidance_mode)
        progress.say(f"samples at guidance {label}")
    real_stats = [music_stats(score, errors) for score, errors in val_scores]
    results["samples"]["real val excerpts"] = mean_stats(real_stats)
    results["real_val_spread"] = spread_stats(real_stats)
    return results


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
    """judge_pieces over the whole val pieces, each with its own kind (and source folder); at_most > 0:
    only that many, spread evenly over the split (in path order)."""
    rows = list(range(len(e.val)))
    if 0 < at_most < len(rows):
        rows = sorted({int(round(i)) for i in np.linspace(0, len(rows) - 1, at_most)})
    paths = [p["path"] for p in e.dataset.pieces() if p["split"] == "val"]
    sources = [e.val_sources[r] for r in rows] if e.val_sources else None
    return judge_pieces(e.model, whole_pieces(e.val, rows), e.candidates, e.names, e.train_counts, e.n_composers,
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
    """judge_pieces over the held-out sources' pieces (heldout_pieces), by kind and by source."""
    pieces, sources, paths, works = heldout_pieces(e, per_work)
    return {"sources": e.meta["heldout_sources"], "works": works, "per_work": per_work,
            **judge_pieces(e.model, pieces, e.candidates, e.names, e.train_counts, e.n_composers, e.bos_id,
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
            out[name][key] = judge_pieces(
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
            **judge_pieces(e.model, [(t, c, k) for _, t, c, k in real], e.candidates, e.names, e.train_counts,
                           e.n_composers, e.bos_id, e.max_windows, e.seed, e.ctx, scorings=e.scorings)}


def decoded(tokenizer, token_lists):
    """(score, grammar error rate) of each token list, decoded once for every measure."""
    return [decode_sample(tokenizer, ids)[1:] for ids in token_lists]


def features(scores):
    return np.array([note_features(score) for score, _ in scores])


def fit_outside_judge(e, sample_tokens, judge_excerpts):
    """The judge fitted on excerpts of training files of the comparison set (not renditions: the
    judge learns from real music only); (judge, decoded real val excerpts, its accuracy on them
    overall and by kind)."""
    train_rows = [r for r in range(len(e.train_split))
                  if int(e.train_split.index[r, 2]) in e.candidates and not e.train_split.renditions[r]]
    val_rows = [r for r in range(len(e.val)) if int(e.val.index[r, 2]) in e.candidates]
    train_ex = excerpts(e.train_split, train_rows, sample_tokens, judge_excerpts, e.seed)
    val_ex = excerpts(e.val, val_rows, sample_tokens, judge_excerpts, e.seed + 1)
    judge = Judge().fit(features(decoded(e.tokenizer, [t for t, _, _ in train_ex])), [c for _, c, _ in train_ex])
    val_scores = decoded(e.tokenizer, [t for t, _, _ in val_ex])
    val_features = features(val_scores)
    val_composers, val_kinds = np.array([c for _, c, _ in val_ex]), np.array([k for _, _, k in val_ex])
    report = {"features": "note statistics (pitch classes, intervals, register, chords, onsets, durations, "
                          "velocities, tempo)", "train_excerpts": len(train_ex), "val_excerpts": len(val_ex),
              "accuracy_on_real_val": judge.accuracy(val_features, val_composers),
              "balanced_accuracy_on_real_val": judge.balanced_accuracy(val_features, val_composers),
              "real_val_composers": len(set(val_composers.tolist())), "chance": 1 / len(e.candidates),
              "by_kind": {kind: judge_on_kind(judge, val_features[val_kinds == k], val_composers[val_kinds == k],
                                              e.names)
                          for kind, k in KIND_IDS.items() if (val_kinds == k).any()}}
    return judge, val_scores, report


def judge_on_kind(judge, features_of_kind, composers_of_kind, names):
    """The judge on the real val excerpts of one kind: plain and balanced accuracy, and which
    composers they are (samples, balanced by design, compare with the balanced figure on these)."""
    return {"val_excerpts": len(composers_of_kind),
            "accuracy_on_real_val": judge.accuracy(features_of_kind, composers_of_kind),
            "balanced_accuracy_on_real_val": judge.balanced_accuracy(features_of_kind, composers_of_kind),
            "composers": [names[c] for c in sorted(set(composers_of_kind.tolist()))]}


def accuracy_on(confusion, composers):
    """The share judged right among the samples requested for `composers` ({true: {guess: n}})."""
    rows = {c: confusion[c] for c in composers if c in confusion}
    total = sum(sum(row.values()) for row in rows.values())
    return sum(row.get(c, 0) for c, row in rows.items()) / total if total else float("nan")


def sample_measures(e, judge, copies, guidance, render_as, per_composer, sample_tokens, guidance_mode):
    """samples for every composer of the comparison set at one guidance (and rendering): the judge's
    verdict, self-judged adherence, copying and music statistics."""
    requested = torch.tensor([c for c in e.candidates for _ in range(per_composer)], device=e.device)
    bos = torch.full((len(requested), 1), e.bos_id, dtype=torch.long, device=e.device)
    kind = None if render_as is None else RENDER_AS[render_as]
    generator = torch.Generator(device=e.device).manual_seed(e.seed)
    with e.ctx:
        out = generate(e.model, bos, requested, sample_tokens, guidance=guidance, generator=generator,
                               logits_processor=RemiGrammar(e.tokenizer, chord_limit=CHORD_LIMIT),
                               guidance_types=guidance_types(e.tokenizer, guidance_mode), kind=kind)
    token_lists = [row[1:].tolist() for row in out]
    scores = score_under(e.model, [np.array(t) for t in token_lists], e.candidates, e.bos_id, ctx=e.ctx,
                         kinds=None if kind is None else [kind] * len(token_lists))
    sample_scores = decoded(e.tokenizer, token_lists)
    runs = [copies.longest(note_events(score)) for score, _ in sample_scores]
    runs_by_composer = {}
    for c, run in zip(requested.tolist(), runs):
        runs_by_composer[e.names[c]] = max(run, runs_by_composer.get(e.names[c], 0))
    verdicts = judge.predict(features(sample_scores))
    return {"judge_accuracy": float(np.mean(verdicts == requested.cpu().numpy())),
            "judge_confusion": confusion_table(zip(requested.tolist(), verdicts.tolist()), e.names),
            "self_judged_adherence": adherence(scores, [e.candidates.index(c) + 1 for c in requested.tolist()]),
            "chance": 1 / len(e.candidates), "longest_copied_run": int(max(runs, default=0)),
            "median_copied_run": float(np.median(runs)) if runs else 0.0,
            "longest_copied_run_by_composer": runs_by_composer,
            **mean_stats([music_stats(score, errors) for score, errors in sample_scores])}


# ----------------------------------------------------------------------------- infilling


INFILL_BARS = 2  # the gaps the infilling measures cut out of val pieces, in bars


def val_gaps(e, n):
    """n real gaps of INFILL_BARS bars in the whole val pieces (seeded), with their pieces."""
    pieces = val_pieces(e)
    gaps = real_gaps([t for t, _, _ in pieces], e.tokenizer.vocab["Bar_None"], e.model.config.block_size, n,
                     np.random.default_rng([e.seed, 37]), bars=INFILL_BARS)
    return pieces, gaps


def infill_nll_measures(e, n):
    """NLL of the real middle of each gap (after its opening bar line, with the bar line closing it)
    with the music after it visible (a model with roles) and continued from the music before it
    only, the paired difference, and each gap's values (to pair with another checkpoint's)."""
    pieces, gaps = val_gaps(e, n)
    if not gaps:
        return {"gaps": 0, "bars": INFILL_BARS}
    ways = ("infill", "continue") if e.model.config.n_roles else ("continue",)
    nll = {way: [] for way in ways}
    for p, start, end in gaps:
        tokens, composer, kind = pieces[p]
        for way, (ids, roles, first) in gap_layouts(tokens, start, end, e.bos_id, e.model.config.block_size).items():
            if way not in ways:
                continue
            x, y = torch.tensor([ids[:-1]], device=e.device), torch.tensor([ids[1:]], device=e.device)
            role = torch.tensor([roles[:-1]], device=e.device) if e.model.config.n_roles else None
            with torch.no_grad(), e.ctx:
                log_p = e.model.token_log_probs(x, torch.tensor([composer], device=e.device), y,
                                                kind=torch.tensor([kind], device=e.device), role=role)
            nll[way].append(float(-log_p[0, first:].float().mean()))
    out = {"gaps": len(gaps), "bars": INFILL_BARS, "per_gap": nll,
           "nll": {way: bootstrap_mean(v, np.ones(len(v))) for way, v in nll.items()}}
    if "infill" in nll:
        out["infill_minus_continue"] = bootstrap_mean(np.subtract(nll["infill"], nll["continue"]), np.ones(len(gaps)))
    return out


def infill_take_measures(e, per_composer, guidance):
    """For each composer of the comparison set, per_composer val gaps written in its style, filled
    (the music after visible; a model with roles) and continued from the music before and cut after
    INFILL_BARS bars, at one guidance: the outside judge's verdict on the new bars, how often they
    reach the bar line where the piece resumes within their token budget, and the grammar errors
    at the seams (the new bars joined to the music before and after)."""
    bar_id = e.tokenizer.vocab["Bar_None"]
    judge = fit_outside_judge(e, e.model.config.block_size // 2, 3)[0]  # excerpts about as long as a gap
    pieces, gaps = val_gaps(e, len(e.candidates) * per_composer)
    if not gaps:
        return {"takes_per_way": 0}
    ways = ("infill", "continue") if e.model.config.n_roles else ("continue",)
    requested = [e.candidates[i % len(e.candidates)] for i in range(len(gaps))]
    takes, seams = {way: [] for way in ways}, {way: [] for way in ways}
    for i, ((p, start, end), composer) in enumerate(zip(gaps, requested)):
        tokens, _, kind = pieces[p]
        for way in ways:
            take = gap_take(e, tokens, start, end, composer, kind, guidance, way, bar_id, seed=i)
            takes[way].append(take)
            joined = [int(t) for t in tokens[max(0, start - 16):start]] + take[0] + [int(t) for t in tokens[end:end + 16]]
            seams[way].append(grammar_error_rate(e.tokenizer, joined))
    real_verdicts = judge.predict(features(decoded(e.tokenizer, [pieces[p][0][start:end].tolist()
                                                                 for p, start, end in gaps])))
    out = {"takes_per_way": len(gaps), "guidance": guidance, "judge_excerpt_tokens": e.model.config.block_size // 2,
           "real_gaps_judge_accuracy": float(np.mean(real_verdicts == np.array([pieces[p][1] for p, _, _ in gaps])))}
    for way in ways:
        verdicts = judge.predict(features(decoded(e.tokenizer, [middle for middle, _ in takes[way]])))
        right = (verdicts == np.array(requested)).astype(float)
        out[way] = {"judge_accuracy": bootstrap_mean(right, np.ones(len(right))),
                    "closed": float(np.mean([did_close for _, did_close in takes[way]])),
                    "seam_grammar_error_rate": float(np.mean(seams[way])), "chance": 1 / len(e.candidates)}
    return out


def gap_take(e, tokens, start, end, composer, kind, guidance, way, bar_id, seed):
    """(new middle tokens from the gap's opening bar line, closed) for one gap: filled between the
    music before and after it (way "infill") or continued from the music before it ("continue"),
    both given the gap's bar lines' metre and the token budget sample.py --infill gives."""
    block = e.model.config.block_size
    budget, side = context_budget(block, end - start)
    lines = bar_lines(tokens[start:end], bar_id)
    metre = [int(tokens[start + i + 1]) for i in lines]
    if way == "infill":
        prompt, prompt_roles = infill_prompt(tokens[:start], tokens[end:], side, e.bos_id, bar_id, len(lines) == 1)
    else:
        prompt = [e.bos_id] + [int(t) for t in tokens[max(0, start - (block - 1 - budget - 1)):start]] + [bar_id]
        prompt_roles = [PLAIN] * len(prompt)
    with e.ctx:
        return write_middles(e.model, e.tokenizer, prompt, prompt_roles, len(lines), metre, budget,
                             torch.tensor([composer], device=e.device), plain=way != "infill", guidance=guidance,
                             generator=torch.Generator(device=e.device).manual_seed(seed),
                             guidance_types=guidance_types(e.tokenizer, "within_types"),
                             kind=kind if e.model.config.n_kinds else None)[0]


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
    here = (f", always {ident['commonest_here']} {ident['commonest_here_baseline']:.3f}"
            if ident["commonest_here"] != ident["commonest_composer"] else "")
    print(f"  identification {ident['accuracy']:.3f} [{ident['accuracy_interval'][0]:.3f}, "
          f"{ident['accuracy_interval'][1]:.3f}] over {ident['pieces']} pieces (chance {ident['chance']:.3f}, "
          f"always {ident['commonest_composer']} {ident['commonest_baseline']:.3f}{here}); balanced over its "
          f"{ident['composers_here']} composers {ident['balanced_accuracy']:.3f} (any constant guess: "
          f"{1 / max(1, ident['composers_here']):.3f})")
    for name, other in list(p.get("identification_by_tokens", {}).items())[1:]:
        print(f"  identification scored on {name} tokens {other['accuracy']:.3f} [{other['accuracy_interval'][0]:.3f}, "
              f"{other['accuracy_interval'][1]:.3f}], balanced {other['balanced_accuracy']:.3f}")
    for true, row in sorted(ident["confusion"].items()):
        guesses = ", ".join(f"{name} {count}" for name, count in sorted(row.items(), key=lambda kv: -kv[1])[:4])
        print(f"    {true[:18]:18s} {row.get(true, 0):3d}/{sum(row.values()):<3d} -> {guesses}")
    for kind, part in p.get("by_kind", {}).items():
        if len(p["by_kind"]) > 1:
            print_pieces(f"{title}, {kind} only", part)
    for source, part in p.get("by_source", {}).items():
        print_pieces(f"{title} from {source}", part)


def print_report(r):
    print(f"\n{r['ckpt']} on {r['data_dir']}: {r['num_windows']} val windows of {r['window']} tokens")
    if r.get("score_tokens", "all") != "all":
        print(f"whole pieces are scored on their {r['score_tokens']} tokens only (--score_tokens)")
    print("\nNLL (nats/token)        true     uncond   wrong")
    print(f"  all windows          {r['nll']['true']:.4f}   {r['nll']['uncond']:.4f}   {r['nll']['wrong']:.4f}"
          f"   (perplexity {r['perplexity']['true']:.2f} / {r['perplexity']['uncond']:.2f} / {r['perplexity']['wrong']:.2f})")
    if "nll_per_note" in r:
        n = r["nll_per_note"]
        print(f"  per note             {n['true']:.4f}   {n['uncond']:.4f}   {n['wrong']:.4f}   (nats per note: every "
              f"vocabulary alike; {r['notes_per_token']:.3f} notes per token, {r['bars_per_context']:.1f} bars per context)")
    b = r["baselines"]
    orders = " / ".join(f"{v:.4f}" for v in b["witten_bell_nll_by_order"].values())
    print(f"\nbaselines: unigram entropy of train tokens {b['unigram_entropy_train']:.4f}; on these targets unigram "
          f"{b['unigram_nll']:.4f}, Witten-Bell orders {', '.join(b['witten_bell_nll_by_order'])} {orders}")
    print(f"  the model's window NLL is {b['model_over_best_ngram']:.3f}x the best n-gram "
          f"(order {b['best_ngram_order']}, {b['best_ngram_nll']:.4f})")
    c = r["comparison_set"]
    print(f"\ncomparison set ({c['rule']}): " + ", ".join(f"{k} {v}" for k, v in c["composers"].items()))
    if "heldout_pieces" in r:
        h = r["heldout_pieces"]
        print_pieces(f"CROSS-SOURCE: held-out sources {', '.join(h['sources'])} (never trained on, nor their works; "
                     f"{h['works']} works, at most {h['per_work']} piece each)", h)
    print_pieces("val pieces", r["val_pieces"])
    if "real_dir" in r:
        print_pieces(f"--real_dir {r['real_dir']['dir']}", r["real_dir"])
        if r["real_dir"]["ignored"]:
            print(f"  ignored: {len(r['real_dir']['ignored'])} ({', '.join(list(r['real_dir']['ignored'])[:6])} ...)")
    if "probes" in r:
        print_probes(r)
    if "infill" in r:
        print_infill(r["infill"])
    if "judge" not in r:
        return
    j, cp = r["judge"], r["copying"]
    print(f"\noutside judge (note statistics, never sees the model): {j['accuracy_on_real_val']:.3f} on "
          f"{j['val_excerpts']} real val excerpts, {j['balanced_accuracy_on_real_val']:.3f} balanced over their "
          f"{j['real_val_composers']} composers (chance {j['chance']:.3f}); samples are balanced by design")
    for kind, part in j.get("by_kind", {}).items():
        print(f"  on {kind} val excerpts: {part['accuracy_on_real_val']:.3f} ({part['val_excerpts']} excerpts), "
              f"{part['balanced_accuracy_on_real_val']:.3f} balanced over their {len(part['composers'])} composers")
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
    print_like_for_like(r["samples"], j.get("by_kind", {}))
    print_fine_tuned_copies(r["samples"], r["comparison_set"].get("fine_tuned", []))


def print_probes(r):
    """Identification with each habit removed, beside none removed: val (the model's own sources)
    and the held-out sources, overall and by kind."""
    slices = [("val", "val_pieces"), ("heldout", "heldout_pieces")]
    slices = [(short, key) for short, key in slices if key in r]
    kinds = sorted({k for _, key in slices for k in r[key].get("by_kind", {})})

    def cells(part):
        row = [part["identification"]["accuracy"]]
        return row + [part.get("by_kind", {}).get(k, {}).get("identification", {}).get("accuracy", float("nan"))
                      for k in kinds]

    header = [f"{short}{'' if not k else ' ' + k}" for short, _ in slices for k in ("", *kinds)]
    print("\nfingerprint probes: identification with one habit removed from every piece")
    print("  " + f"{'probe':22s}" + "".join(f"{h:>20s}" for h in header))
    rows = [("(none)", [r[key] for _, key in slices])]
    rows += [(name, [probe[short] for short, _ in slices]) for name, probe in r["probes"].items()]
    for name, parts in rows:
        print("  " + f"{name:22s}" + "".join(f"{v:20.3f}" for part in parts for v in cells(part)))


def print_infill(f):
    """The infilling measures: the real middle's NLL both ways, and the takes' verdicts and joins."""
    if not f.get("gaps") and not f.get("takes_per_way"):
        print(f"\ninfilling: no val piece has a gap of {INFILL_BARS} bars that fits this model's context with music "
              "on both sides")
        return
    if "nll" in f:
        print(f"\ninfilling: {f['gaps']} real gaps of {f['bars']} bars in val pieces, NLL of the real middle "
              "(nats/token, 95 % bootstrap over gaps)")
        for way, label in (("infill", "music after it visible"), ("continue", "continued from before only")):
            if way in f["nll"]:
                n = f["nll"][way]
                print(f"  {label:28s} {n['mean']:.4f}  [{n['low']:.4f}, {n['high']:.4f}]")
        if "infill_minus_continue" in f:
            d = f["infill_minus_continue"]
            print(f"  {'difference':28s} {d['mean']:+.4f}  [{d['low']:+.4f}, {d['high']:+.4f}]")
    if "takes_per_way" in f:
        print(f"\ninfilling takes: {f['takes_per_way']} gaps, each in the style of one compared composer, guidance "
              f"{f['guidance']:g}; the outside judge on excerpts of {f['judge_excerpt_tokens']} tokens names the real "
              f"gaps' composer {f['real_gaps_judge_accuracy']:.3f} of the time")
        for way in ("infill", "continue"):
            if way in f:
                t, j = f[way], f[way]["judge_accuracy"]
                print(f"  {way:9s} judge {j['mean']:.3f} [{j['low']:.3f}, {j['high']:.3f}] (chance {t['chance']:.3f}), "
                      f"reached the bar line where the piece resumes {t['closed']:.3f}, grammar errors at the seams "
                      f"{t['seam_grammar_error_rate']:.4f}")


def print_fine_tuned_copies(samples, fine_tuned):
    """A composer taught from a few pieces may copy them: its samples' longest copied run beside the
    other composers' (both against this dataset's training pieces)."""
    for label, s in samples.items():
        runs = s.get("longest_copied_run_by_composer", {})
        taught = [runs[c] for c in fine_tuned if c in runs]
        others = [n for c, n in runs.items() if c not in fine_tuned]
        if taught:
            print(f"  g {label}: longest copied run of the fine-tuned composers' samples {max(taught)}, of the "
                  f"other composers' {max(others, default=0)}")


def print_like_for_like(samples, judge_by_kind):
    """Samples rendered as one kind against real val excerpts of that kind, on the composers those
    excerpts have: the samples' accuracy (balanced by design) beside the real excerpts' balanced one."""
    for label, s in samples.items():
        kind = KIND_NAMES.get(RENDER_AS.get(label.split(" ")[-1]))
        real = judge_by_kind.get(kind)
        if "judge_confusion" not in s or real is None:
            continue
        print(f"  g {label} on the {len(real['composers'])} composers of the real {kind} "
              f"val excerpts: samples {accuracy_on(s['judge_confusion'], real['composers']):.3f}, "
              f"real {real['balanced_accuracy_on_real_val']:.3f} balanced")


def flag_parser():
    parser = Parser(description=__doc__.split("\n")[0])
    parser.add_argument("--ckpt", default="out/ckpt.pt")
    parser.add_argument("--data_dir", default=None, help="prepared dataset (default: the checkpoint's data_dir)")
    parser.add_argument("--num_windows", type=positive_int, default=64)
    parser.add_argument("--window", type=positive_int, default=None, help="tokens per window (default: block_size)")
    parser.add_argument("--guidance", default="0,1,5", help="comma-separated guidance values for the samples")
    parser.add_argument("--guidance_mode", default="within_types", choices=GUIDANCE_MODES,
                        help="as sample.py's: guidance within token types (default) or on every logit (plain)")
    parser.add_argument("--samples_per_composer", type=non_negative_int, default=2,
                        help="samples per compared composer and guidance; 0: no samples, no judge, no copy check "
                             "(identification and NLL only, much faster)")
    parser.add_argument("--sample_tokens", type=positive_int, default=512)
    parser.add_argument("--max_composers", type=positive_int, default=None, help="sample only the first N composers")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda", "mps"))
    parser.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"),
                        help="autocast for scoring and sampling (auto: bf16 where the CPU/GPU has it natively)")
    parser.add_argument("--real_dir", default=None, help="a labelled folder <Composer>/*.mid of real held-out pieces")
    parser.add_argument("--min_train_pieces", type=positive_int, default=30,
                        help="identification compares composers with at least this many training pieces")
    parser.add_argument("--compare", default="", help="comma-separated composer names: identification compares exactly "
                        "these (instead of --min_train_pieces' rule), so that two models compare on one set")
    parser.add_argument("--val_pieces", type=non_negative_int, default=0,
                        help="whole val pieces scored for identification, spread over the split (0: all)")
    parser.add_argument("--max_windows", type=positive_int, default=4,
                        help="spans scored per whole piece (spread over it); a span is block_size - 1 tokens, "
                             f"or whole windows of it adding up to at least {MIN_SPAN}")
    parser.add_argument("--per_work", type=positive_int, default=1,
                        help="pieces scored per work of the held-out sources (performances of one work are alike)")
    parser.add_argument("--probes", default="", help="comma-separated fingerprint probes to score again with "
                        f"(probes.py): {', '.join(Probes.PROBES)}, or all")
    parser.add_argument("--score_tokens", default="all", choices=SCORE_TOKENS,
                        help="which tokens' log-probabilities identification sums over a whole piece: all, or the "
                             "notes (pitches and onsets: no velocity, duration, tempo or time-signature token)")
    parser.add_argument("--judge_excerpts", type=positive_int, default=3, help="excerpts per piece for the judge")
    parser.add_argument("--infill_gaps", type=non_negative_int, default=0,
                        help=f"real {INFILL_BARS}-bar gaps cut from val pieces: the real middle's NLL with the music "
                             "after it visible (a model trained with infill_share) and continued from before only")
    parser.add_argument("--infill_takes", type=non_negative_int, default=0,
                        help="gaps per compared composer filled (and continued) in its style and judged: judge "
                             "accuracy, how often a take reaches the bar line where the piece resumes, seam grammar")
    parser.add_argument("--infill_guidance", type=float, default=3.0, help="guidance of those takes")
    parser.add_argument("--json", default=None, help="also write the numbers to this file")
    return parser


def main(argv=None):
    parser = flag_parser()
    args = parser.parse_args(argv)
    try:
        guidances = tuple(float(g) for g in args.guidance.split(","))
        if any(not (g >= 0 and math.isfinite(g)) for g in guidances):
            raise ValueError
    except ValueError:
        fail(parser.prog, f"--guidance expects comma-separated numbers >= 0, got {args.guidance!r}")
    probes = Probes.PROBES if args.probes == "all" else tuple(p for p in args.probes.split(",") if p)
    unknown = [p for p in probes if p not in Probes.PROBES]
    if unknown:
        fail(parser.prog, f"--probes: unknown probe {unknown[0]!r}; choose from {', '.join(Probes.PROBES)} or all")

    def body():
        flags = {f.name: getattr(args, f.name) for f in dataclasses.fields(Request) if hasattr(args, f.name)}
        compare = tuple(name.strip() for name in args.compare.split(",") if name.strip())
        results = evaluate(args.ckpt, Request(**flags | {"guidances": guidances, "probes": probes, "compare": compare}))
        print_report(results)
        if args.json:
            write_or_fail(atomic_write_text, args.json, json.dumps(results, indent=1))
            print(f"\nwrote {args.json}", file=sys.stderr)

    written = f"; --json {args.json} is written only at the end" if args.json else ""
    run_program(parser.prog, body, kept=lambda: f"nothing was written{written}")


if __name__ == "__main__":
    main()
