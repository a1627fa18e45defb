"""Scoring tokens under a model: fixed val windows, whole pieces in windows as training saw them,
the tokens a sum counts, and the bootstrap over pieces every interval comes from."""
import contextlib

import numpy as np
import torch

from pianogpt.data.remi import note_token_mask


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
