"""The music representation: what a token means.

Owns the REMI tokenizer settings (and reloading them from JSON), merging a file's tracks
into one piano stream, snapping onsets to the position grid, encoding and decoding, note
matching, the piano's pitch-token ids and transposition, the REMI grammar mask used while
sampling, and the grammar error rate. Imports nothing of this project.
"""
import json
import os
import tempfile

import numpy as np
import torch

PIANO_LOW, PIANO_HIGH = 21, 108  # A0..C8: notes outside are dropped (they cannot be played)
ONSET_STEPS_PER_QUARTER = 8  # REMI positions per beat (beat_res 8 for the first 4 beats)


# ----------------------------------------------------------------------------- tokenizer

def build_tokenizer():
    """The seed's REMI: 419 tokens with miditok 3.1.

    pitch_range is inclusive in miditok 3, so (21, 109) holds one more Pitch token than the
    piano has; it is the seed's 419-token vocabulary (miditok 2's range(21, 109) carried
    over). Our data never contains Pitch_109: notes are kept inside 21..108.
    """
    from miditok import REMI, TokenizerConfig

    config = TokenizerConfig(
        pitch_range=(21, 109),
        beat_res={(0, 4): 8, (4, 12): 4},
        num_velocities=32,
        special_tokens=["PAD", "BOS"],
        use_tempos=True,
        use_time_signatures=True,
        use_rests=True,
    )
    tokenizer = REMI(config)
    if len(tokenizer) > np.iinfo(np.uint16).max + 1:
        raise ValueError(f"vocab of {len(tokenizer)} tokens does not fit uint16")
    return tokenizer


def tokenizer_from_json(text):
    """A miditok tokenizer from the JSON string that tokenizer.save() writes.

    Raises ValueError (one line) when the text is not a REMI tokenizer of ours.
    """
    from miditok import REMI

    try:
        json.loads(text)
    except (TypeError, ValueError) as e:
        raise ValueError(f"the tokenizer does not parse as JSON ({type(e).__name__}: {e})") from None
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "tokenizer.json")
        with open(path, "w") as f:
            f.write(text)
        try:
            return REMI(params=path)
        except Exception as e:
            raise ValueError(f"the tokenizer does not load in miditok ({type(e).__name__}: {e})"[:300]) from None


def check_tokenizer(where, tokenizer_json, vocab_size, pad_id, bos_id=None):
    """The tokenizer parsed from JSON, checked against the vocabulary size and PAD (and BOS)
    ids that the tokens or the model were made with; a ValueError says what differs."""
    try:
        tokenizer = tokenizer_from_json(tokenizer_json)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
    if len(tokenizer) != vocab_size:
        raise ValueError(f"{where}: a tokenizer of {len(tokenizer)} tokens, but the tokens were written with {vocab_size}")
    if tokenizer.vocab.get("PAD_None") != pad_id or bos_id is not None and tokenizer.vocab.get("BOS_None") != bos_id:
        raise ValueError(f"{where}: PAD/BOS ids differ from the ones the tokens were written with")
    return tokenizer


def grammar_error_rate(tokenizer, ids):
    """miditok's share of tokens that break REMI's grammar (0.0 for a well-formed piece)."""
    return float(tokenizer.tokens_errors([list(map(int, ids))])[0])


def pitch_token_ids(tokenizer):
    """Token id of each piano pitch 21..108 (contiguous in REMI)."""
    return np.array([tokenizer.vocab[f"Pitch_{p}"] for p in range(PIANO_LOW, PIANO_HIGH + 1)])


def pitch_sequence(ids, pitch_lo, pitch_hi):
    """The Pitch token ids of a token sequence, in order (the notes' pitches, nothing else)."""
    ids = np.asarray(ids)
    return ids[(ids >= pitch_lo) & (ids <= pitch_hi)].astype(np.int64)


def gram_keys(seq, k):
    """One int64 key per run of k consecutive values of an int sequence (equal runs, equal
    keys): how near-duplicate pieces and copied passages are found."""
    key = np.zeros(len(seq) - k + 1, dtype=np.int64)
    for j in range(k):
        key = key * 1_000_003 + seq[j:len(seq) - k + 1 + j]
    return key


def transpose_pitches(ids, semitones, pitch_lo, pitch_hi):
    """Shift Pitch token ids (pitch_lo..pitch_hi) by semitones; a note that would leave the
    piano's range stays where it is. Other tokens are untouched."""
    is_pitch = (ids >= pitch_lo) & (ids <= pitch_hi)
    shifted = ids + semitones
    movable = is_pitch & (shifted >= pitch_lo) & (shifted <= pitch_hi)
    return np.where(movable, shifted, ids)


# ----------------------------------------------------------------------------- one stream per piece

def notes_of(tracks):
    """Every note of some symusic tracks as arrays {"time", "duration", "pitch", "velocity"},
    track after track (empty arrays when there is none)."""
    parts = [track.notes.numpy() for track in tracks if len(track.notes)]
    return {key: np.concatenate([p[key] for p in parts]) if parts else np.empty(0)
            for key in ("time", "duration", "pitch", "velocity")}


def merge_piano_tracks(score):
    """One piano track holding the notes of every non-drum track, inside 21..108.

    Returns (merged score, None) or (None, skip reason).
    """
    from symusic import Note, Score, Track

    notes = notes_of(track for track in score.tracks if not track.is_drum)
    if len(notes["pitch"]) == 0:
        has_drums = any(track.is_drum and len(track.notes) for track in score.tracks)
        return None, ("drums_only" if has_drums else "no_notes")
    keep = (notes["pitch"] >= PIANO_LOW) & (notes["pitch"] <= PIANO_HIGH)
    if not keep.any():
        return None, "no_notes_in_piano_range"
    order = np.lexsort((notes["pitch"][keep], notes["time"][keep]))
    merged = Score(score.tpq)
    merged.tempos = score.tempos
    merged.time_signatures = score.time_signatures
    merged.key_signatures = score.key_signatures
    track = Track(name="piano", program=0, is_drum=False)
    track.notes = Note.from_numpy(**{key: value[keep][order] for key, value in notes.items()})
    merged.tracks.append(track)
    return merged, None


def snap_onsets(score, steps_per_quarter=ONSET_STEPS_PER_QUARTER):
    """Round note onsets to the REMI position grid in the file's own resolution.

    miditok first resamples time to its time division (16 ticks/quarter when the piece has
    an x/8 metre) and then snaps to the position grid: two roundings that move a triplet
    by up to 3/32 of a quarter. One rounding here keeps every onset within 1/16 quarter.
    """
    from symusic import Note

    snapped = score.copy()
    step = score.tpq / steps_per_quarter
    for track in snapped.tracks:
        a = track.notes.numpy()
        onsets = np.round(a["time"] / step) * step
        ends = np.maximum(a["time"] + a["duration"], onsets + 1)
        track.notes = Note.from_numpy(time=onsets.astype(np.int32), duration=(ends - onsets).astype(np.int32),
                                      pitch=a["pitch"], velocity=a["velocity"])
    return snapped


def encode_score(tokenizer, score):
    """Token ids (uint16) of a score (its non-drum tracks merged into one), or (None, reason)."""
    merged, reason = merge_piano_tracks(score)
    if merged is None:
        return None, reason
    return encode_merged(tokenizer, merged), None


def encode_merged(tokenizer, merged):
    """Token ids (uint16) of a one-track score from merge_piano_tracks."""
    sequences = tokenizer(snap_onsets(merged))
    ids = sequences[0].ids if isinstance(sequences, list) else sequences.ids
    return np.asarray(ids, dtype=np.uint16)


def note_match(reference, decoded):
    """Greedy one-to-one match of notes by exact pitch and onset within 1/16 quarter note.

    Onsets are snapped to 1/8 quarter before encoding (snap_onsets), so an onset moves by
    at most half a grid step. Returns (matched, n_ref, n_dec).
    """

    def onsets_by_pitch(score):
        by_pitch = {}
        for track in score.tracks:
            a = track.notes.numpy()
            quarters = a["time"] / score.tpq
            for pitch in np.unique(a["pitch"]):
                by_pitch.setdefault(int(pitch), []).append(quarters[a["pitch"] == pitch])
        return {p: np.sort(np.concatenate(v)) for p, v in by_pitch.items()}

    ref, dec = onsets_by_pitch(reference), onsets_by_pitch(decoded)
    tolerance = 1 / 16 + 1e-9
    matched = 0
    for pitch, a in ref.items():
        b = dec.get(pitch, np.empty(0))
        i = j = 0
        while i < len(a) and j < len(b):
            if abs(a[i] - b[j]) <= tolerance:
                matched, i, j = matched + 1, i + 1, j + 1
            elif a[i] < b[j]:
                i += 1
            else:
                j += 1
    count = lambda notes: sum(len(v) for v in notes.values())  # noqa: E731
    return matched, count(ref), count(dec)


def decode_sample(tokenizer, ids):
    """(ids without PAD/BOS, decoded score, grammar error rate) of generated tokens."""
    special = {tokenizer.vocab["PAD_None"], tokenizer.vocab["BOS_None"]}
    ids = [int(i) for i in ids if int(i) not in special]
    errors = grammar_error_rate(tokenizer, ids) if ids else 0.0
    return ids, tokenizer.decode([ids]), errors


# ----------------------------------------------------------------------------- REMI grammar


class RemiGrammar:
    """Which tokens may come next in a REMI piece, per row of a batch.

    The token-type successions are miditok's own graph (tokens_types_graph); on top of it a
    Position never moves backwards or stays inside a bar, and never passes the bar's end
    under the current time signature. PAD, BOS, drum pitches and pitches off the piano are
    never generated. These are exactly the rules miditok's tokens_errors counts, so a
    constrained sample has zero grammar errors. It keeps per-row state: use one instance
    per generate call.
    """

    def __init__(self, tokenizer):
        vocab = tokenizer.vocab
        size = len(vocab)
        self.type_of = [""] * size
        self.value_of = [""] * size
        for token, i in vocab.items():
            self.type_of[i], self.value_of[i] = token.split("_", 1)
        types = sorted(set(self.type_of))
        playable = np.ones(size, dtype=bool)
        for i, (kind, value) in enumerate(zip(self.type_of, self.value_of)):
            if kind in ("PAD", "BOS", "PitchDrum") or (kind == "Pitch" and not PIANO_LOW <= int(value) <= PIANO_HIGH):
                playable[i] = False
        graph = tokenizer.tokens_types_graph
        self.allowed_after = {}
        for kind in types:
            successors = graph.get(kind, set(types))
            mask = np.array([t in successors for t in self.type_of]) & playable
            self.allowed_after[kind] = mask
        self.allowed_after["BOS"] = np.array([t == "Bar" for t in self.type_of])  # a piece opens with a bar
        self.position_ids = np.array([i for i, t in enumerate(self.type_of) if t == "Position"])
        self.position_values = np.array([int(self.value_of[i]) for i in self.position_ids])
        self.positions_per_beat = max(tokenizer.config.beat_res.values())
        self.rows = []
        self.consumed = 0

    def new_state(self):
        return {"type": "BOS", "before": "BOS", "pos": -1, "bar_positions": 4 * self.positions_per_beat}

    def advance(self, state, token):
        kind, value = self.type_of[token], self.value_of[token]
        if kind == "PAD":
            return
        if kind == "Bar":
            state["pos"] = -1
        elif kind == "TimeSig":
            state["bar_positions"] = int(value.split("/")[0]) * self.positions_per_beat
        elif kind == "Position":
            state["pos"] = int(value)
        state["before"], state["type"] = state["type"], kind

    def mask(self, state):
        allowed = self.allowed_after.get(state["type"], self.allowed_after["BOS"]).copy()
        # miditok lets time restart only right after a Rest (or a TimeSig that follows one)
        after_rest = state["type"] == "Rest" or (state["type"] == "TimeSig" and state["before"] == "Rest")
        lowest = -1 if after_rest else state["pos"]
        bad = (self.position_values <= lowest) | (self.position_values >= state["bar_positions"])
        allowed[self.position_ids[bad]] = False
        if not allowed.any():  # cannot happen with miditok's graph; never leave nothing to sample
            allowed = self.allowed_after["BOS"].copy()
        return allowed

    def __call__(self, seq, logits):
        """logits_processor for MusicTransformer.generate: -inf on forbidden tokens."""
        if not self.rows:
            self.rows = [self.new_state() for _ in range(seq.size(0))]
        tokens = seq[:, self.consumed:].tolist()
        for state, row in zip(self.rows, tokens):
            for token in row:
                self.advance(state, token)
        self.consumed = seq.size(1)
        masks = torch.from_numpy(np.stack([self.mask(state) for state in self.rows])).to(logits.device)
        return logits.masked_fill(~masks, float("-inf"))
