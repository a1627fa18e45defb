"""Tempo-map style, randomised per training window: how densely a file writes its tempo map is its
archive's habit, not its composer's (issue 36).

One archive writes a score with one tempo or a change at each new section; another writes a tempo
for nearly every beat (a hand-shaped rubato); a recorder writes one tempo for a whole
performance. A composer whose files all come from one archive is otherwise learned with that
archive's map. `TempoMapStyle.restyled` gives a sequenced window the other style: a window whose
map is dense (a tempo per bar or more) keeps only its first tempo; a sparse one gets a drifting
tempo at its onsets. Notes, onsets, velocities and durations are untouched. Token edits only,
on REMI ids; the grammar stays valid (a Tempo token follows a Position token, as REMI writes it).
"""
import numpy as np

from pianogpt.probes import Probes, nearest, token_values

QUARTER_STEPS = 8  # REMI positions per beat (remi.ONSET_STEPS_PER_QUARTER)


class TempoMapStyle:
    """The tempo-map restyling of one vocabulary."""

    def __init__(self, vocab, change_share=(0.3, 1.0), drift=0.06, keep=0.8, tempo_range=(60.0, 160.0)):
        self.tempo_ids, self.tempo_values = token_values(vocab, "Tempo")
        self.position_ids, self.position_values = token_values(vocab, "Position")
        self.bar = vocab["Bar_None"]
        self.probes = Probes(vocab)
        self.change_share, self.drift, self.keep, self.tempo_range = change_share, drift, keep, tempo_range
        self.is_tempo = np.zeros(max(vocab.values()) + 1, bool)
        self.is_tempo[self.tempo_ids] = True
        self.value_of = np.zeros(len(self.is_tempo))
        self.value_of[self.tempo_ids] = self.tempo_values
        self.step_of = np.full(len(self.is_tempo), -1)
        self.step_of[self.position_ids] = self.position_values.astype(int)

    def is_dense(self, ids):
        """A tempo token per bar or more (at least two in all): a hand-shaped map."""
        tempos = int(self.is_tempo[ids].sum())
        return tempos >= 2 and tempos >= int((ids == self.bar).sum())

    def restyled(self, ids, rng):
        """ids in the other tempo-map style: dense -> one tempo, sparse -> a drifting map."""
        ids = np.asarray(ids, np.int64)
        return self.probes.no_tempo_changes(ids) if self.is_dense(ids) else self.drifting(ids, rng)

    def drifting(self, ids, rng):
        """A tempo after a share of the onsets (a beat's onsets first), drifting slowly around the
        window's own tempo (its first Tempo token, else one drawn from tempo_range); a tempo the
        file already writes there is kept and the drift goes on from it."""
        tempos = self.value_of[ids[self.is_tempo[ids]]]
        base = float(tempos[0]) if len(tempos) else float(rng.uniform(*self.tempo_range))
        share = rng.uniform(*self.change_share)
        out, log_offset, current = [], 0.0, None
        for i, token in enumerate(ids.tolist()):
            if self.is_tempo[token]:
                base, log_offset, current = float(self.value_of[token]), 0.0, token
            out.append(token)
            step = self.step_of[token]
            if step < 0 or (i + 1 < len(ids) and self.is_tempo[ids[i + 1]]):
                continue  # not an onset, or one whose tempo the file writes itself
            on_beat = step % QUARTER_STEPS == 0
            if rng.random() < (share if on_beat else share / 4):
                log_offset = self.keep * log_offset + rng.normal(0.0, self.drift)
                wanted = np.clip(base * np.exp(log_offset), self.tempo_values[0], self.tempo_values[-1])
                tempo = int(self.tempo_ids[nearest(self.tempo_values, np.array([wanted]))[0]])
                if tempo != current:  # a change only where the tempo's bin changes
                    out.append(tempo)
                    current = tempo
        return np.array(out, np.int64)
