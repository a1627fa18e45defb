"""The outside judge: who wrote this excerpt, from note statistics alone.

A multinomial logistic regression over a fixed vector of note statistics (pitch-class and
interval histograms, register, chord sizes, inter-onset intervals, durations, velocities,
tempo, note density). It never sees the generative model: it is fitted on excerpts of
training pieces, checked on excerpts of held-out real pieces, and only then asked about
samples. Its verdict on samples means something only as far as it can judge real music.
Imports only remi (the notes of a score).
"""
import numpy as np
import torch

from pianogpt.data.remi import notes_of

IOI_EDGES = np.array([0, 1 / 8, 1 / 4, 1 / 2, 3 / 4, 1, 3 / 2, 2, 4]) + 1e-6  # quarters
DURATION_EDGES = np.array([0, 1 / 8, 1 / 4, 1 / 2, 1, 2, 4]) + 1e-6


def note_arrays(score):
    """(onset quarters, duration quarters, pitch, velocity) of every note, sorted by onset then pitch."""
    a = notes_of(score.tracks)
    if len(a["pitch"]) == 0:
        return (np.empty(0),) * 4
    order = np.lexsort((a["pitch"], a["time"]))
    tpq = score.tpq
    return (a["time"][order] / tpq, a["duration"][order] / tpq, a["pitch"][order].astype(np.int64),
            a["velocity"][order].astype(np.float64))


def histogram(values, edges):
    """Shares of the values in [edges[1], edges[2]), ..., [edges[-1], inf) among the values in
    those bins (the shortest bin is left out): len(edges) - 1 numbers, for no values too."""
    counts = np.histogram(values, bins=np.append(edges, np.inf))[0][1:] if len(values) else np.zeros(len(edges) - 1)
    return counts / max(counts.sum(), 1)


def note_features(score):
    """A fixed-length vector of note statistics of one excerpt (symusic Score, tick time)."""
    onsets, durations, pitches, velocities = note_arrays(score)
    n_features = 12 + 25 + 5 + 6 + (len(IOI_EDGES) - 1) + (len(DURATION_EDGES) - 1) + 2 + 2
    if len(pitches) < 2:
        return np.zeros(n_features)
    pitch_classes = np.bincount(pitches % 12, minlength=12) / len(pitches)
    starts, chord_sizes = np.unique(onsets, return_counts=True)
    top = np.array([pitches[onsets == t].max() for t in starts])  # the melody line, roughly
    intervals = np.clip(np.diff(top), -12, 12) + 12
    interval_hist = np.bincount(intervals, minlength=25) / max(len(intervals), 1)
    register = np.array([pitches.mean(), pitches.std(), *np.percentile(pitches, [10, 50, 90])]) / 88.0
    chords = np.bincount(np.minimum(chord_sizes, 6) - 1, minlength=6) / len(chord_sizes)
    ioi = histogram(np.diff(starts), IOI_EDGES)
    duration = histogram(durations, DURATION_EDGES)
    velocity = np.array([velocities.mean(), velocities.std()]) / 127.0
    tempos = [t.qpm for t in score.tempos] or [120.0]
    span = max(onsets.max() + durations[onsets.argmax()] - onsets.min(), 1e-3)
    pace = np.array([np.mean(tempos) / 200.0, np.log1p(len(pitches) / span)])
    return np.concatenate([pitch_classes, interval_hist, register, chords, ioi, duration, velocity, pace])


class Judge:
    """Standardised features -> linear softmax over composer labels, fitted with L-BFGS."""

    def __init__(self, l2=1e-2):
        self.l2 = l2

    def fit(self, features, labels, steps=200):
        features, labels = np.asarray(features, np.float64), np.asarray(labels)
        self.classes = np.unique(labels)
        self.mean, self.std = features.mean(0), features.std(0) + 1e-6
        x = torch.tensor((features - self.mean) / self.std, dtype=torch.float64)
        y = torch.tensor(np.searchsorted(self.classes, labels))
        # classes weighted equally, so the commonest composer is not the default answer
        weights = torch.tensor(len(labels) / (len(self.classes) * np.bincount(y.numpy())), dtype=torch.float64)
        self.weight = torch.zeros(x.shape[1], len(self.classes), dtype=torch.float64, requires_grad=True)
        self.bias = torch.zeros(len(self.classes), dtype=torch.float64, requires_grad=True)
        optimizer = torch.optim.LBFGS([self.weight, self.bias], max_iter=steps, line_search_fn="strong_wolfe")

        def closure():
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(x @ self.weight + self.bias, y, weight=weights)
            loss = loss + self.l2 * (self.weight ** 2).sum()
            loss.backward()
            return loss

        optimizer.step(closure)
        return self

    def predict(self, features):
        x = torch.tensor((np.asarray(features, np.float64) - self.mean) / self.std, dtype=torch.float64)
        with torch.no_grad():
            return self.classes[(x @ self.weight + self.bias).argmax(1).numpy()]

    def accuracy(self, features, labels):
        if len(labels) == 0:
            return float("nan")
        return float(np.mean(self.predict(features) == np.asarray(labels)))

    def balanced_accuracy(self, features, labels):
        """Mean over composers of the share of their excerpts judged right: what the
        accuracy would be if every composer had as many excerpts (as samples do)."""
        labels = np.asarray(labels)
        if len(labels) == 0:
            return float("nan")
        right = self.predict(features) == labels
        return float(np.mean([right[labels == c].mean() for c in np.unique(labels)]))
