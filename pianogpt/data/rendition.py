"""A written score played back as a performance: the training-time bridge between the two kinds.

A performance file (recorded from the keys or transcribed) has one constant tempo that is not
the music's, onsets as played, pedalled durations and struck velocities; a sequenced file has
the score's tempo map, metronomic onsets and flat dynamics. `performed_rendition` turns the
second into the first, so that every composer of the sequenced folders is also seen in the
performed texture and the composer condition need not carry the texture. Each step is one
function with one promise (tested in tests/test_rendition.py). Imports nothing of this project.
"""
import numpy as np

RECORDED_TEMPO = 120.0  # what recorders write: one tempo, not the music's
RECORDED_TPQ = 480


def score_seconds(score):
    """Every note of a one-track symusic score in seconds (through its tempo map), as float arrays
    {"onset", "end", "pitch", "velocity"} sorted by onset then pitch."""
    notes = score.to("second").tracks[0].notes.numpy()
    order = np.lexsort((notes["pitch"], notes["time"]))
    onset = notes["time"][order].astype(np.float64)
    return {"onset": onset, "end": onset + notes["duration"][order].astype(np.float64),
            "pitch": notes["pitch"][order].astype(np.int64), "velocity": notes["velocity"][order].astype(np.float64)}


def drifting_clock(rng, tempo_scale=(0.85, 1.15), drift=0.12, period_s=(6.0, 20.0)):
    """A monotonic time warp (seconds -> seconds): the whole piece a little faster or slower, and
    a slow rubato around that (the local pace swings by up to `drift` over `period_s` seconds)."""
    scale = rng.uniform(*tempo_scale)
    depth, period, phase = rng.uniform(0, drift), rng.uniform(*period_s), rng.uniform(0, 2 * np.pi)
    w = 2 * np.pi / period
    # the integral of the pace 1 + depth * sin(w t + phase): never decreasing while depth < 1
    return lambda times: scale * (times + depth / w * (np.cos(phase) - np.cos(w * times + phase)))


def played_onsets(onset, pitch, rng, jitter_s=0.012, roll_share=0.25, roll_s=(0.015, 0.045)):
    """Onsets as a hand plays them: each note a few milliseconds off, and some chords rolled
    from the bottom (notes that sound together in the score start one after the other)."""
    played = onset + rng.normal(0.0, jitter_s, len(onset))
    starts = np.flatnonzero(np.r_[True, np.diff(onset) > 1e-6])
    sizes = np.diff(np.r_[starts, len(onset)])
    for start, size in zip(starts, sizes):
        if size > 1 and rng.random() < roll_share:
            step = rng.uniform(*roll_s)
            by_pitch = start + np.argsort(pitch[start:start + size], kind="stable")
            played[by_pitch] = onset[start] + step * np.arange(size)
    return np.maximum(played, 0.0)


def pedalled_ends(onset, end, rng, articulation=(0.75, 1.0), pedal_share=(0.3, 0.9), segment_s=(0.6, 2.5)):
    """Note ends under a sustain pedal: every note a little shorter or longer as touched, then a
    pedal that goes down and up in segments of a second or two; a note released while it is down
    sounds until it lifts. Ends never come before onsets."""
    held = onset + (end - onset) * rng.uniform(*articulation)
    down_share = rng.uniform(*pedal_share)
    lifts, t, horizon = [], 0.0, float(held.max(initial=0.0)) + 1.0
    while t < horizon:
        t += rng.uniform(*segment_s)
        lifts.append((t, rng.random() < down_share))
    lift_at = np.array([time for time, _ in lifts])
    down = np.array([is_down for _, is_down in lifts])
    segment = np.searchsorted(lift_at, held)  # the pedal segment each release falls in
    pedalled = np.where(down[np.minimum(segment, len(down) - 1)], lift_at[np.minimum(segment, len(lift_at) - 1)], held)
    return np.maximum(pedalled, onset + 0.02)


def struck_velocities(velocity, onset, pitch, rng, level=(50.0, 78.0), swell=14.0, period_s=(4.0, 14.0),
                      noise=6.0, melody_accent=6.0):
    """Velocities as struck: the piece's own dynamics re-centred on a playing level, a slow swell
    and fade, the top note of each chord brought out, and a little noise per note."""
    centred = velocity - velocity.mean() + rng.uniform(*level)
    w, phase = 2 * np.pi / rng.uniform(*period_s), rng.uniform(0, 2 * np.pi)
    out = centred + rng.uniform(0, swell) * np.sin(w * onset + phase) + rng.normal(0.0, noise, len(onset))
    starts = np.flatnonzero(np.r_[True, np.diff(onset) > 1e-6])
    tops = np.r_[starts[1:], len(onset)] - 1  # notes are sorted by pitch within a chord
    out[tops] += melody_accent
    return np.clip(np.round(out), 1, 127)


def performed_rendition(score, seed):
    """A new one-track symusic score: `score` (one track, from merge_piano_tracks) as a recorder
    would write a performance of it: one tempo (120), 4/4, onsets as played, pedalled
    durations, struck velocities. The same seed gives the same rendition."""
    from symusic import Note, Score, Tempo, TimeSignature, Track

    rng = np.random.default_rng(seed)
    notes = score_seconds(score)
    clock = drifting_clock(rng)
    onset, end = clock(notes["onset"]), clock(notes["end"])
    played = played_onsets(onset, notes["pitch"], rng)
    ends = pedalled_ends(played, np.maximum(end + (played - onset), played), rng)
    velocity = struck_velocities(notes["velocity"], notes["onset"], notes["pitch"], rng)
    ticks_per_second = RECORDED_TPQ * RECORDED_TEMPO / 60.0
    start = np.round(played * ticks_per_second).astype(np.int32)
    length = np.maximum(np.round((ends - played) * ticks_per_second).astype(np.int32), 1)
    order = np.lexsort((notes["pitch"], start))
    out = Score(RECORDED_TPQ)
    out.tempos.append(Tempo(0, RECORDED_TEMPO))
    out.time_signatures.append(TimeSignature(0, 4, 4))
    track = Track(name="piano", program=0, is_drum=False)
    track.notes = Note.from_numpy(time=start[order], duration=length[order], pitch=notes["pitch"][order].astype(np.int8),
                                  velocity=velocity[order].astype(np.int8))
    out.tracks.append(track)
    return out
