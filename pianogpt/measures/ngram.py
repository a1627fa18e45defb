"""The baseline a model must beat: an interpolated Witten-Bell n-gram over token ids (numpy only)."""
import numpy as np

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
