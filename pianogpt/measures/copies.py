"""Does a piece copy its training data? The longest run of notes it shares with any training piece."""
import numpy as np

from pianogpt.measures.judge import note_arrays
from pianogpt.data.remi import gram_keys


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
