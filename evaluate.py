"""How good is a checkpoint? Validation NLL by composer condition, baselines, style adherence.

    python evaluate.py --ckpt out/ckpt.pt
    python evaluate.py --ckpt out/ckpt.pt --guidance 0,1,3,5 --samples_per_composer 4 --json results.json

1. NLL (nats/token, perplexity) on fixed, seeded val windows with the TRUE composer, with
   composer 0 (unconditional) and with a WRONG composer (each id mapped to the next one, a
   derangement). A model that uses the composer orders them true < uncond < wrong.
2. Baselines on the same targets: unigram and Witten-Bell-smoothed trigram of the training tokens.
3. Samples per composer and guidance: style adherence (the model as a Bayes classifier,
   argmax_k log p(sample | k) == requested composer), grammar errors, notes/s, pitch range,
   pitch-class entropy, beside the same statistics of real val windows.
"""
import json
import math

import sys

import numpy as np
import torch

from checkpoints import load_trained
from cli import CliError, Parser, atomic_write_text, fail, positive_int
from dataset import WindowSampler, open_dataset
from remi import RemiGrammar, decode_sample


# ----------------------------------------------------------------------------- n-gram baselines


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
    """Fixed windows: piece i % n_pieces, a seeded crop; (x, y, composer) tensors."""
    rng = np.random.default_rng([seed, 2024])
    pieces = np.arange(num_windows) % len(sampler)
    return sampler.batch(pieces, rng)


def derangement(composer, n_composers):
    """Each real composer id 1..N -> the next one (N -> 1): always a wrong composer."""
    n = n_composers - 1
    return torch.where(composer > 0, composer % n + 1, composer)


@torch.no_grad()
def window_nll(model, x, y, composer, pad_id, batch_size=8):
    """Per-window mean NLL (nats/token) over non-PAD targets, no label smoothing."""
    out = []
    for i in range(0, len(x), batch_size):
        lp = model.token_log_probs(x[i:i + batch_size], composer[i:i + batch_size], y[i:i + batch_size])
        mask = (y[i:i + batch_size] != pad_id).float()
        out.append((-(lp * mask).sum(1) / mask.sum(1).clamp(min=1)))
    return torch.cat(out)


# ----------------------------------------------------------------------------- samples


@torch.no_grad()
def bayes_classify(model, samples, n_composers, batch_size=8):
    """log p(sample | k) for k = 1..N -> [S, N], summed over the tokens after BOS.

    A sample longer than the context is scored as training saw it: in windows of
    [BOS] + block_size - 1 tokens.
    """
    scores = []
    ks = torch.arange(1, n_composers, device=samples.device)
    span = model.config.block_size - 1
    for seq in samples:
        bos, tokens = seq[:1], seq[1:]
        total = torch.zeros(len(ks), device=seq.device)
        for start in range(0, len(tokens), span):
            window = torch.cat([bos, tokens[start:start + span]]).unsqueeze(0)
            for i in range(0, len(ks), batch_size):
                k = ks[i:i + batch_size]
                lp = model.token_log_probs(window[:, :-1].expand(len(k), -1), k, window[:, 1:].expand(len(k), -1))
                total[i:i + len(k)] += lp.sum(1)
        scores.append(total)
    return torch.stack(scores)


def adherence(scores, requested):
    """Accuracy of argmax_k scores == requested (ids 1..N); ties share the credit, so a model
    that ignores the composer scores exactly chance, 1/N."""
    credit = []
    for row, want in zip(scores, requested):
        best = torch.isclose(row, row.max(), rtol=0, atol=1e-4)
        credit.append(float(best[want - 1]) / float(best.sum()))
    return float(np.mean(credit)) if credit else float("nan")


def music_stats(tokenizer, ids):
    """Notes per second, pitch range (semitones), pitch-class entropy (bits), grammar error rate."""
    _, score, errors = decode_sample(tokenizer, ids)
    pitches = np.array([n.pitch for t in score.tracks for n in t.notes])
    if len(pitches) == 0:
        return {"notes_per_s": 0.0, "pitch_range": 0, "pitch_class_entropy": 0.0, "grammar_error_rate": errors}
    seconds = float(score.to("second").end())
    pc = np.bincount(pitches % 12, minlength=12) / len(pitches)
    pc = pc[pc > 0]
    return {"notes_per_s": len(pitches) / max(seconds, 1e-6), "pitch_range": int(pitches.max() - pitches.min()),
            "pitch_class_entropy": float(-(pc * np.log2(pc)).sum()), "grammar_error_rate": errors}


def mean_stats(stats):
    return {k: float(np.mean([s[k] for s in stats])) for k in stats[0]} if stats else {}


# ----------------------------------------------------------------------------- main


def evaluate(ckpt, data_dir=None, num_windows=64, window=None, guidances=(0.0, 1.0, 3.0), samples_per_composer=2,
             sample_tokens=512, seed=0, device="cpu", max_composers=None):
    model, checkpoint, tokenizer = load_trained(ckpt, device)
    data_dir = data_dir or checkpoint["train_config"]["data_dir"]
    dataset = open_dataset(data_dir)
    meta = dataset.meta
    if meta["vocab_size"] != model.config.vocab_size or meta["n_composers"] != model.config.n_composers:
        raise CliError(f"{data_dir} (vocab {meta['vocab_size']}, {meta['n_composers']} composer ids) does not match "
                       f"the checkpoint (vocab {model.config.vocab_size}, {model.config.n_composers} composer ids)")
    names = {i: n for n, i in checkpoint["composers"].items()}
    window = min(window or model.config.block_size, model.config.block_size)
    val = WindowSampler(dataset, "val", window)
    train_split = WindowSampler(dataset, "train", window)
    if len(val) == 0:
        raise CliError(f"{data_dir} has no val pieces")
    results = {"ckpt": str(ckpt), "data_dir": data_dir, "num_windows": num_windows, "window": window}

    # 1. NLL with true / unconditional / wrong composer
    x, y, composer = val_windows(val, num_windows, seed)
    x, y, composer = x.to(device), y.to(device), composer.to(device)
    nll = {"true": window_nll(model, x, y, composer, meta["pad_id"]),
           "uncond": window_nll(model, x, y, torch.zeros_like(composer), meta["pad_id"]),
           "wrong": window_nll(model, x, y, derangement(composer, model.config.n_composers), meta["pad_id"])}
    weights = (y != meta["pad_id"]).sum(1).float()
    results["nll"] = {k: float((v * weights).sum() / weights.sum()) for k, v in nll.items()}
    results["perplexity"] = {k: math.exp(v) for k, v in results["nll"].items()}
    per_composer = {}
    for c in composer.unique().tolist():
        rows = composer == c
        per_composer[names.get(c, str(c))] = {k: float((v[rows] * weights[rows]).sum() / weights[rows].sum())
                                              for k, v in nll.items()} | {"windows": int(rows.sum())}
    results["nll_by_composer"] = per_composer

    # 2. baselines on the same targets
    train_tokens = train_split.tokens
    pieces = [train_tokens[o:o + n] for o, n, _ in train_split.index]
    ngram = NGram(pieces, meta["vocab_size"], order=3)
    unigram = NGram(pieces, meta["vocab_size"], order=1)
    targets_mask = (y != meta["pad_id"]).cpu().numpy()
    xs, ys = x.cpu().numpy(), y.cpu().numpy()
    full = [np.concatenate([xs[i, :1], ys[i]]) for i in range(len(xs))]
    def baseline(m):  # noqa: E306
        return float(np.mean(np.concatenate([-m.log_probs(f)[targets_mask[i]] for i, f in enumerate(full)])))
    results["baselines"] = {"unigram_entropy_train": unigram_entropy(np.asarray(train_tokens), meta["vocab_size"]),
                            "unigram_nll": baseline(unigram), "trigram_witten_bell_nll": baseline(ngram)}

    # 3. samples: adherence and music statistics
    composer_ids = sorted(c for c in names if c != 0)[:max_composers]  # max_composers None: all
    requested = torch.tensor([c for c in composer_ids for _ in range(samples_per_composer)], device=device)
    bos = torch.full((len(requested), 1), meta["bos_id"], dtype=torch.long, device=device)
    results["samples"] = {}
    for g in guidances:
        generator = torch.Generator(device=device).manual_seed(seed)
        out = model.generate(bos, requested, sample_tokens, guidance=g, generator=generator,
                             logits_processor=RemiGrammar(tokenizer))
        scores = bayes_classify(model, out, model.config.n_composers)
        stats = [music_stats(tokenizer, row[1:].tolist()) for row in out]
        results["samples"][str(g)] = {"adherence": adherence(scores, requested.tolist()),
                                      "chance": 1 / (model.config.n_composers - 1), **mean_stats(stats)}
    real_x, _, _ = val_windows(WindowSampler(dataset, "val", sample_tokens), num_windows, seed + 1)
    results["samples"]["real val windows"] = mean_stats([music_stats(tokenizer, row[1:].tolist()) for row in real_x])
    return results


def print_report(r):
    print(f"\n{r['ckpt']} on {r['data_dir']}: {r['num_windows']} val windows of {r['window']} tokens")
    print("\nNLL (nats/token)        true     uncond   wrong")
    print(f"  all windows          {r['nll']['true']:.4f}   {r['nll']['uncond']:.4f}   {r['nll']['wrong']:.4f}"
          f"   (perplexity {r['perplexity']['true']:.2f} / {r['perplexity']['uncond']:.2f} / {r['perplexity']['wrong']:.2f})")
    for name, v in sorted(r["nll_by_composer"].items()):
        print(f"  {name[:20]:20s} {v['true']:.4f}   {v['uncond']:.4f}   {v['wrong']:.4f}   ({v['windows']} windows)")
    b = r["baselines"]
    print(f"\nbaselines: unigram entropy of train tokens {b['unigram_entropy_train']:.4f}; on these targets unigram "
          f"{b['unigram_nll']:.4f}, Witten-Bell trigram {b['trigram_witten_bell_nll']:.4f}")
    print("\nsamples                adherence (chance)   grammar err   notes/s   pitch range   pitch-class H (bits)")
    for g, s in r["samples"].items():
        label = f"guidance {g}" if g != "real val windows" else g
        adh = f"{s['adherence']:.3f} ({s['chance']:.3f})" if "adherence" in s else "-".ljust(15)
        print(f"  {label:20s} {adh:20s} {s['grammar_error_rate']:.4f}        {s['notes_per_s']:6.2f}    "
              f"{s['pitch_range']:6.1f}        {s['pitch_class_entropy']:.3f}")


def main(argv=None):
    parser = Parser(description=__doc__.split("\n")[0])
    parser.add_argument("--ckpt", default="out/ckpt.pt")
    parser.add_argument("--data_dir", default=None, help="prepared dataset (default: the checkpoint's data_dir)")
    parser.add_argument("--num_windows", type=positive_int, default=64)
    parser.add_argument("--window", type=positive_int, default=None, help="tokens per window (default: block_size)")
    parser.add_argument("--guidance", default="0,1,3", help="comma-separated guidance values for the samples")
    parser.add_argument("--samples_per_composer", type=positive_int, default=2)
    parser.add_argument("--sample_tokens", type=positive_int, default=512)
    parser.add_argument("--max_composers", type=positive_int, default=None, help="sample only the first N composers")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda", "mps"))
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
                           args.sample_tokens, args.seed, args.device, args.max_composers)
    except CliError as e:
        fail(parser.prog, str(e))
    print_report(results)
    if args.json:
        atomic_write_text(args.json, json.dumps(results, indent=1))
        print(f"\nwrote {args.json}", file=sys.stderr)


if __name__ == "__main__":
    main()
