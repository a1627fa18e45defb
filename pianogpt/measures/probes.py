"""Fingerprint probes: a piece with one of its archive's habits removed, on its tokens.

evaluate.py --probes scores held-out pieces again after each removal. A habit whose removal
costs identification on the model's own sources but not on sources it never trained on is a
shortcut: the model named the archive's habit, not the composer (issue 36).
"""
import numpy as np

from pianogpt.data.remi import ONSET_STEPS_PER_QUARTER, transpose_pitches


def token_values(vocab, prefix):
    """(ids, values) of the tokens "<prefix>_<value>": Velocity_64, Tempo_120.0, Duration_1.4.8
    (beats.positions.resolution, as a number of beats)."""
    ids, values = [], []
    for name, i in vocab.items():
        kind, _, value = name.partition("_")
        if kind != prefix:
            continue
        if prefix == "Duration":
            beats, positions, resolution = (int(v) for v in value.split("."))
            value = beats + positions / resolution
        ids.append(i)
        values.append(float(value))
    order = np.argsort(values)
    return np.array(ids, np.int64)[order], np.array(values)[order]


def nearest(values, wanted, log=False):
    """Index into the sorted `values` of the one nearest each of `wanted` (on a log scale if asked)."""
    a, b = (np.log(values), np.log(np.maximum(wanted, 1e-9))) if log else (values, wanted)
    return np.abs(a[None, :] - b[:, None]).argmin(1)


class Probes:
    """The probes of one vocabulary: PROBES names them, apply(name, ids) runs one."""

    PROBES = ("flat_velocity", "recurved_velocity", "tempo_x1.5", "no_tempo_changes", "onsets_quarter_grid",
              "durations_clipped", "durations_pedalled", "transposed_+1")

    def __init__(self, vocab):
        self.velocity = token_values(vocab, "Velocity")
        self.tempo = token_values(vocab, "Tempo")
        self.duration = token_values(vocab, "Duration")
        self.positions = token_values(vocab, "Position")
        self.bar = vocab["Bar_None"]
        self.markers = np.concatenate([self.positions[0], [self.bar],
                                       [i for name, i in vocab.items() if name.startswith("Rest_")]])
        pitches = token_values(vocab, "Pitch")[0]
        self.pitch_lo, self.pitch_hi = int(pitches.min()), int(pitches.max())

    def apply(self, name, ids):
        if name not in self.PROBES:
            raise ValueError(f"unknown probe {name!r}; choose from {', '.join(self.PROBES)}")
        method = {"flat_velocity": self.flat_velocity, "recurved_velocity": self.recurved_velocity,
                  "tempo_x1.5": self.faster_tempo, "no_tempo_changes": self.no_tempo_changes,
                  "onsets_quarter_grid": self.onsets_on_quarter_grid, "durations_clipped": self.clipped_durations,
                  "durations_pedalled": self.pedalled_durations, "transposed_+1": self.transposed}[name]
        return method(np.asarray(ids, np.int64))

    @staticmethod
    def remapped(ids, table_ids, new_ids):
        table = np.arange(max(int(ids.max()), int(table_ids.max())) + 1)
        table[table_ids] = new_ids
        return table[ids]

    def flat_velocity(self, ids):
        """Every note at the velocity nearest 64, as a sequencer without dynamics writes it."""
        vids, values = self.velocity
        return self.remapped(ids, vids, np.full(len(vids), vids[nearest(values, np.array([64.0]))[0]]))

    def recurved_velocity(self, ids):
        """Dynamics compressed towards the middle (v -> 64 + (v - 64) / 2): another instrument's curve."""
        vids, values = self.velocity
        return self.remapped(ids, vids, vids[nearest(values, 64 + (values - 64) / 2)])

    def faster_tempo(self, ids):
        tids, values = self.tempo
        return self.remapped(ids, tids, tids[nearest(values, np.clip(values * 1.5, values[0], values[-1]))])

    def no_tempo_changes(self, ids):
        """Only the first Tempo token kept (a recorder's one tempo); a Position left with nothing
        after it (the next token a Position, a Bar or a Rest) goes too, as REMI never writes an empty
        onset."""
        tempo = np.isin(ids, self.tempo[0])
        keep = ~tempo
        if tempo.any():
            keep[np.argmax(tempo)] = True
        ids = ids[keep]
        empty = np.isin(ids, self.positions[0]) & np.append(np.isin(ids[1:], self.markers), True)
        return ids[~empty]

    def onsets_on_quarter_grid(self, ids):
        """Every onset moved back to the last quarter-note grid line (notes between grid lines join
        the chord there): a coarser quantisation than the file's."""
        pids, values = self.positions
        snapped = pids[nearest(values, np.floor(values / ONSET_STEPS_PER_QUARTER) * ONSET_STEPS_PER_QUARTER)]
        ids = self.remapped(ids, pids, snapped)
        is_position, is_tempo = np.isin(ids, pids), np.isin(ids, self.tempo[0])
        out, last, merged = [], None, False
        for token, position, tempo in zip(ids.tolist(), is_position.tolist(), is_tempo.tolist()):
            if token == self.bar:
                last = None
            elif position:
                merged = token == last
                if merged:
                    continue  # the same onset as the one before: its notes join that chord
                last = token
            elif tempo and merged:
                continue  # a tempo change inside a chord is no longer at an onset of its own
            out.append(token)
        return np.array(out, np.int64)

    def clipped_durations(self, ids):
        """No note longer than a beat: durations as a sequencer that ignores the pedal writes them."""
        dids, values = self.duration
        return self.remapped(ids, dids, dids[nearest(values, np.minimum(values, 1.0), log=True)])

    def pedalled_durations(self, ids):
        """Every note held twice as long: a sustain pedal folded into the durations."""
        dids, values = self.duration
        return self.remapped(ids, dids, dids[nearest(values, values * 2, log=True)])

    def transposed(self, ids):
        return transpose_pitches(ids, 1, self.pitch_lo, self.pitch_hi)
