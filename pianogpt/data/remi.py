"""The music representation: what a token means.

Owns the REMI tokenizer settings (and reloading them from JSON), merging a file's tracks
into one piano stream, snapping onsets to the position grid, encoding and decoding, note
matching, the piano's pitch-token ids and transposition, the REMI grammar mask used while
sampling (over learned merges too), and the grammar error rate. Imports merges.py alone of this
project.
"""
import json
import os
import tempfile
from types import SimpleNamespace

import numpy as np
import torch

from pianogpt.data import merges

PIANO_LOW, PIANO_HIGH = 21, 108  # A0..C8: notes outside are dropped (they cannot be played)
ONSET_STEPS_PER_QUARTER = 8  # REMI positions per beat (beat_res 8 for the first 4 beats)


# ----------------------------------------------------------------------------- tokenizer

def build_tokenizer():
    """The original design's REMI: 419 tokens with miditok 3.1.

    pitch_range is inclusive in miditok 3, so (21, 109) holds one more Pitch token than the
    piano has; it is the original design's 419-token vocabulary (miditok 2's range(21, 109) carried
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
    """miditok's share of tokens that break REMI's grammar (0.0 for a well-formed piece), counted on
    the base tokens where the ids are merged."""
    return float(tokenizer.tokens_errors([merges.unmerge(tokenizer, ids).tolist()])[0])


def pitch_token_ids(tokenizer):
    """Token id of each piano pitch 21..108 (contiguous in REMI)."""
    return np.array([tokenizer.vocab[f"Pitch_{p}"] for p in range(PIANO_LOW, PIANO_HIGH + 1)])


def pitch_sequence(ids, pitch_lo, pitch_hi):
    """The Pitch token ids of a token sequence, in order (the notes' pitches, nothing else)."""
    ids = np.asarray(ids)
    return ids[(ids >= pitch_lo) & (ids <= pitch_hi)].astype(np.int64)


def onset_token_ids(tokenizer):
    """Ids of the tokens that move time (Bar, Position, Rest): the notes between two of them
    sound together."""
    return np.array(sorted(i for name, i in tokenizer.vocab.items() if name.startswith(("Bar_", "Position_", "Rest_"))))


def top_voice(ids, pitch_lo, pitch_hi, onset_ids):
    """The highest Pitch token id of each onset of a token sequence: the melody line, as near
    the same in a performance as in its score (chord order and hand spread do not change it)."""
    ids = np.asarray(ids, dtype=np.int64)
    onset = np.cumsum(np.isin(ids, onset_ids))
    is_pitch = (ids >= pitch_lo) & (ids <= pitch_hi)
    if not is_pitch.any():
        return np.empty(0, np.int64)
    groups, pitches = onset[is_pitch], ids[is_pitch]
    return np.maximum.reduceat(pitches, np.r_[0, np.flatnonzero(np.diff(groups)) + 1])


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


def type_of_token(token):
    """"Pitch" of "Pitch_60"; "Pitch+Velocity+Duration" of a merged token (merges.full_vocab's names)."""
    return "+".join(part.split("_", 1)[0] for part in token.split("+"))


def token_types(vocab):
    """(types, type_index): LongTensor [vocab size] with the number of every id's token type, and
    {type name: number} (Bar, Duration, Pitch, ... numbered in sorted order; a merged token's type
    is the run of its tokens' types). Guidance within token types (engine.guided_logits) reads it
    over merges.full_vocab; RemiGrammar over the base vocabulary."""
    type_index = {name: k for k, name in enumerate(sorted({type_of_token(token) for token in vocab}))}
    types = torch.zeros(len(vocab), dtype=torch.long)
    for token, i in vocab.items():
        types[i] = type_index[type_of_token(token)]
    return types, type_index


NOTE_TOKEN_TYPES = ("Pitch", "Position", "Bar", "Rest")  # what is played and when, not how


def note_token_mask(vocab):
    """BoolTensor [vocab size]: the note tokens (a piece's pitches and onsets, which every source
    writes alike), not its velocities, durations, tempo and time-signature tokens, whose habits differ
    from one archive to the next (issue 36). vocab: merges.full_vocab; a merged token counts when
    every token it holds does."""
    notes = torch.zeros(len(vocab), dtype=torch.bool)
    for token, i in vocab.items():
        notes[i] = all(part.split("_", 1)[0] in NOTE_TOKEN_TYPES for part in token.split("+"))
    return notes


GUIDANCE_MODES = ("within_types", "plain")
# notes per onset that sampling allows: in the training tokens of both shared sets 99.9 % of onsets
# have <= 8 notes and 99.99 % <= 14 (the most is 25, from merged doubled voices)
CHORD_LIMIT = 16


def guidance_types(tokenizer, mode):
    """generate's guidance_types for a --guidance_mode: token types (within_types) or None (plain)."""
    if mode not in GUIDANCE_MODES:
        raise ValueError(f"guidance mode must be one of {', '.join(GUIDANCE_MODES)}, got {mode!r}")
    return token_types(merges.full_vocab(tokenizer))[0] if mode == "within_types" else None


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


KINDS = ("sequenced", "performed")  # kind ids 1 and 2 of a piece (0: unknown, or dropped in training)
GRID_STEPS_PER_QUARTER = 24  # sixteenth triplets and thirty-seconds fall on it
PERFORMED_BELOW = 0.5  # grid share under which a file's onsets are as played, not as written


def grid_share(onsets, tpq):
    """Share of onsets (ticks) on one 1/24-quarter grid, allowing any constant offset (a
    sequencer that starts every note a tick late is still on a grid). Written music sits on
    it (~1.0); played onsets scatter over the grid step (~0.07-0.2, by resolution)."""
    onsets = np.asarray(onsets, dtype=np.float64)
    if len(onsets) == 0:
        return 1.0
    step = tpq / GRID_STEPS_PER_QUARTER
    tolerance = tpq // 480 + 1e-6  # one tick of a 480-per-quarter file; exact below that resolution
    residues = np.mod(onsets, step)
    values, counts = np.unique(np.round(residues, 3), return_counts=True)
    best = 0.0
    for offset in values[np.argsort(-counts, kind="stable")[:5]]:  # the commonest residues
        distance = np.abs(residues - offset)
        best = max(best, float((np.minimum(distance, step - distance) <= tolerance).mean()))
    return best


def piece_kind(score):
    """("sequenced" | "performed", grid share) of a symusic score, from its onsets alone: a file
    recorded from the keys (or transcribed from audio) has onsets as played, off any grid."""
    share = grid_share(notes_of(t for t in score.tracks if not t.is_drum)["time"], score.tpq)
    return ("performed" if share < PERFORMED_BELOW else "sequenced"), share


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
    """Token ids (uint16) of a one-track score from merge_piano_tracks (under the tokenizer's
    learned merges, if it has any: merges.merge)."""
    sequences = tokenizer(snap_onsets(merged), encode_ids=False)
    ids = sequences[0].ids if isinstance(sequences, list) else sequences.ids
    return merges.merge(tokenizer, ids)


def bar_line_seconds(tokenizer, ids):
    """Seconds from the start of a piece to the bar line its last token (a Bar) opens, through the
    piece's own tempos and rests: miditok decodes the tokens with one probe note on that bar's
    first position, and the probe's onset is the answer."""
    vocab = tokenizer.vocab
    probe = [vocab["Position_0"], vocab["Pitch_60"], next(i for t, i in vocab.items() if t.startswith("Velocity_")),
             next(i for t, i in vocab.items() if t.startswith("Duration_"))]
    special = {vocab["PAD_None"], vocab["BOS_None"]}
    score = tokenizer.decode([[int(i) for i in ids if int(i) not in special] + probe])
    return float(max(track.notes.numpy()["time"].max() for track in score.to("second").tracks if len(track.notes)))


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


def time_in_positions(value, per_beat):
    """Grid positions a Duration or Rest value spans ("1.4.8": 1 beat and 4/8 of one)."""
    beats, ticks, resolution = (int(v) for v in value.split("."))
    return round((beats + ticks / resolution) * per_beat)


def rest_start(state):
    """[B] where a Rest would start in each row of a RemiGrammar state: the last note's end, or now if
    later (as miditok decodes a rest)."""
    return torch.maximum(state["sounding"], state["clock"].float())


def base_token_tables(tokenizer, type_index):
    """What RemiGrammar reads of each base token: its type and value, whether it may be generated,
    which types may follow which (miditok's graph), its position, its length in positions."""
    vocab = tokenizer.vocab
    base_size = len(vocab)
    type_of, value_of = [""] * base_size, [""] * base_size
    for token, i in vocab.items():
        type_of[i], value_of[i] = token.split("_", 1)
    types = list(type_index)  # in number order
    playable = np.ones(base_size, dtype=bool)
    for i, (name, value) in enumerate(zip(type_of, value_of)):
        if name in ("PAD", "BOS", "PitchDrum") or (name == "Pitch" and not PIANO_LOW <= int(value) <= PIANO_HIGH):
            playable[i] = False
    graph = tokenizer.tokens_types_graph
    follows = np.stack([np.array([t in graph.get(name, set(types)) for t in type_of]) for name in types])
    allowed_after = follows & playable
    allowed_after[type_index["BOS"]] = np.array([t == "Bar" for t in type_of])  # a piece opens with a bar
    per_beat = max(tokenizer.config.beat_res.values())
    return SimpleNamespace(
        size=base_size, type_of=type_of, value_of=value_of, type=np.array([type_index[t] for t in type_of]),
        playable=playable, follows=follows, allowed_after=allowed_after, per_beat=per_beat,
        position=np.array([int(v) if t == "Position" else -1 for t, v in zip(type_of, value_of)]),
        length=np.array([time_in_positions(v, per_beat) if t in ("Duration", "Rest") else 0
                         for t, v in zip(type_of, value_of)]),
        is_pitch=np.array([t == "Pitch" for t in type_of]),
        moves_time=np.array([t in ("Bar", "Position", "Rest") for t in type_of]))


def merged_token_tables(parts, base, chord_limit):
    """RemiGrammar's summaries of every id (a run of base tokens: `parts`), as numpy arrays by name."""
    size = len(parts)
    table = {name: np.full(size, -1, dtype=np.int64) for name in ("first", "first_pos", "max_pos", "last_pos",
                                                                  "before_last")}
    table |= {name: np.zeros(size, dtype=bool) for name in ("static_ok", "first_pos_at0", "moves")}
    table |= {name: np.full(size, -1e9) for name in ("end_after_clock", "end_after_onset")}
    table["last_type"] = np.zeros(size, dtype=np.int64)
    table["lead"] = np.zeros((size, base.size), dtype=bool)
    table["trail"] = np.zeros((size, base.size), dtype=bool)
    for m, run in enumerate(parts):
        summarise_run(table, m, list(run), base, chord_limit)
    is_single = np.array([len(run) == 1 for run in parts])
    type_of, value_of = base.type_of, base.value_of
    first_type = [type_of[b] for b in table["first"]]
    table["is_bar"] = is_single & np.array([t == "Bar" for t in first_type])
    table["is_rest"] = is_single & np.array([t == "Rest" for t in first_type])
    table["rest_length"] = np.where(table["is_rest"], base.length[table["first"]], 0)
    table["bar_length"] = np.array([int(value_of[b].split("/")[0]) * base.per_beat if t == "TimeSig" and single else 0
                                    for b, t, single in zip(table["first"], first_type, is_single)])
    # durations and rests count beats of the time signature's own note value (an eighth in 6/8)
    table["denominator"] = np.array([int(value_of[b].split("/")[1]) if t == "TimeSig" and single else 0
                                     for b, t, single in zip(table["first"], first_type, is_single)])
    table["lead_count"] = table["lead"].sum(1)
    table["allowed_after"] = base.allowed_after
    return table


def summarise_run(table, m, run, base, chord_limit):
    """Row m of the tables: the first and last tokens of run, the positions it moves to, the keys it
    strikes before its first onset (lead) and at its last (trail), the note ends it writes, and
    whether the run is grammatical in itself (static_ok)."""
    table["first"][m], table["last_type"][m] = run[0], base.type[run[-1]]
    if len(run) > 1:
        table["before_last"][m] = base.type[run[-2]]
    ok = all(base.playable[b] for b in run) and all(base.follows[base.type[a], b] for a, b in zip(run, run[1:]))
    onset, positions, struck, counts = None, [], table["lead"][m], [0]
    for j, b in enumerate(run):
        if base.moves_time[b]:
            onset, struck = base.position[b], np.zeros(base.size, dtype=bool)
            counts.append(0)
            table["moves"][m] = True
            if base.position[b] >= 0:
                positions.append(base.position[b])
                table["first_pos_at0"][m] |= j == 0 and len(positions) == 1
        elif base.is_pitch[b]:
            ok &= not struck[b]
            struck[b] = True
            counts[-1] += 1
        elif base.type_of[b] == "Duration":
            key = "end_after_clock" if onset is None else "end_after_onset"
            table[key][m] = max(table[key][m], base.length[b] + (0 if onset is None else onset))
    if table["moves"][m]:
        table["trail"][m] = struck
    ok &= all(a < b for a, b in zip(positions, positions[1:]))
    ok &= chord_limit is None or max(counts[1:], default=0) <= chord_limit
    table["static_ok"][m] = ok
    if positions:
        table["first_pos"][m], table["max_pos"][m], table["last_pos"][m] = positions[0], max(positions), positions[-1]


class RemiGrammar:
    """Which tokens may come next in a REMI piece, for every row of a batch, as tensors.

    The token-type successions are miditok's own graph (tokens_types_graph); on top of it a
    Position never moves backwards or stays inside a bar, and never passes the bar's end
    under the current time signature; and a Rest never reaches the bar's end, nor a TimeSig comes
    anywhere but right after a Bar (REMI lets a rest carry time over bar lines without writing them,
    so a piece that did would have more notated bars than Bar tokens: `--bars N` would not mean N
    bars). PAD, BOS, drum pitches and pitches
    off the piano are never generated. Apart from those two, these are exactly the rules miditok's
    tokens_errors counts, so a constrained sample has zero grammar errors.

    With learned merges (merges.py) a merged token is allowed exactly where its base tokens are,
    one after another: each id has a few summaries of its base tokens (the first one, the
    positions it moves to, the keys it strikes before and after its own onsets, the note ends it
    writes), so one look-up per summary masks the whole vocabulary. Bar, TimeSig and Rest are
    never merged, so the bar's length and the rests are read from single tokens.

    The state of each row is a few small tensors (last token's type, the type before it, the
    current position, the time reached in the bar, the latest note end, the bar's length in
    positions) and the keys struck at the current onset (for chord_limit), advanced with table
    look-ups, so masking costs a few tensor operations per token on the model's device and never
    a round trip to the host. chord_limit (samplers pass CHORD_LIMIT) adds two rules of the
    instrument rather than of the grammar: a key is struck at most once per onset, and at most
    chord_limit keys at once; they stop a rare runaway chord (one sample of 60 held a 169-note
    "chord") from dominating a sample's texture. As a logits_processor it keeps that state
    between calls: use one instance per generate call.
    """

    TENSORS = ("allowed_after", "first", "static_ok", "first_pos", "first_pos_at0", "max_pos", "last_pos",
               "last_type", "before_last", "bar_length", "denominator", "rest_length", "is_bar", "is_rest", "moves", "lead",
               "lead_count", "trail", "end_after_clock", "end_after_onset")

    def __init__(self, tokenizer, device="cpu", chord_limit=None):
        vocab = tokenizer.vocab  # the base tokens; merged ids are runs of them
        _, self.type_index = token_types(vocab)
        base = base_token_tables(tokenizer, self.type_index)
        table = merged_token_tables(merges.base_parts(tokenizer), base, chord_limit)
        for name in self.TENSORS:
            setattr(self, name, torch.from_numpy(np.asarray(table[name])).to(device))
        self.lead_float = self.lead.float()
        self.default_bar = 4 * base.per_beat
        self.pad_id = vocab["PAD_None"]
        self.chord_limit = chord_limit
        self.state = None
        self.consumed = 0

    def to(self, device):
        for name in self.TENSORS + ("lead_float",):
            setattr(self, name, getattr(self, name).to(device))
        return self

    def start(self, batch):
        """The state of `batch` rows before their first token (as after BOS)."""
        device = self.first.device
        bos = torch.full((batch,), self.type_index["BOS"], dtype=torch.long, device=device)
        return {"type": bos, "before": bos.clone(), "pos": torch.full_like(bos, -1),
                "clock": torch.zeros_like(bos), "sounding": torch.zeros(batch, device=device),
                "denominator": torch.full_like(bos, 4),
                "bar_positions": torch.full_like(bos, self.default_bar),
                "struck": torch.zeros(batch, self.lead.size(1), dtype=torch.bool, device=device)}  # pitches at this onset

    def advance(self, state, tokens):
        """Feed one token per row (tokens [B]); PAD leaves a row's state as it was."""
        real = tokens != self.pad_id
        bar, rest, last_pos = self.is_bar[tokens], self.is_rest[tokens], self.last_pos[tokens]
        sounding = torch.maximum(state["sounding"], torch.maximum(state["clock"] + self.end_after_clock[tokens],
                                                                 self.end_after_onset[tokens]))
        denominator = torch.where(self.denominator[tokens] > 0, self.denominator[tokens], state["denominator"])
        sounding = sounding * denominator / state["denominator"]  # the notes still sounding, in the new beats
        new = {"denominator": denominator,"type": self.last_type[tokens],
               "before": torch.where(self.before_last[tokens] >= 0, self.before_last[tokens], state["type"]),
               "pos": torch.where(bar, -1, torch.where(last_pos >= 0, last_pos, state["pos"])),
               "bar_positions": torch.where(self.bar_length[tokens] > 0, self.bar_length[tokens], state["bar_positions"]),
               # note ends are kept from the bar's start: a bar line moves them back by the bar's length
               "sounding": torch.where(bar, sounding - state["bar_positions"], sounding),
               "clock": torch.where(bar, 0, torch.where(
                   rest, rest_start(state).long() + self.rest_length[tokens],
                   torch.where(last_pos >= 0, last_pos, state["clock"])))}
        for key, value in new.items():
            state[key] = torch.where(real, value, state[key])
        struck = torch.where(self.moves[tokens][:, None], self.trail[tokens], state["struck"] | self.lead[tokens])
        state["struck"] = torch.where(real[:, None], struck, state["struck"])
        return state

    def allowed(self, state):
        """[B, vocab] bool: the tokens each row may take next."""
        allowed = self.allowed_after[state["type"]][:, self.first] & self.static_ok
        # miditok lets time restart only right after a Rest (or a TimeSig that follows one)
        rest, timesig = self.type_index["Rest"], self.type_index["TimeSig"]
        after_rest = (state["type"] == rest) | ((state["type"] == timesig) & (state["before"] == rest))
        lowest = torch.where(after_rest[:, None] & self.first_pos_at0, -1, state["pos"][:, None])
        bar_end = state["bar_positions"][:, None]
        has_position = self.first_pos >= 0
        bad = has_position & ((self.first_pos <= lowest) | (self.max_pos >= bar_end))
        bad |= self.is_rest & (rest_start(state)[:, None] + self.rest_length >= bar_end)
        # a time signature only where a bar opens: miditok writes one mid-bar after a rest that crossed
        # a bar line, and rests no longer do
        bad |= (self.denominator > 0) & (state["type"] != self.type_index["Bar"])[:, None]
        if self.chord_limit is not None:  # a key is struck once per onset, and at most chord_limit keys
            struck = state["struck"]
            bad |= (struck.float() @ self.lead_float.T) > 0
            bad |= struck.sum(-1, keepdim=True) + self.lead_count > self.chord_limit
        allowed = allowed & ~bad
        # cannot happen with miditok's graph; never leave a row nothing to sample
        return torch.where(allowed.any(-1, keepdim=True), allowed, self.is_bar)

    def __call__(self, seq, logits):
        """logits_processor for MusicTransformer.generate: -inf on forbidden tokens."""
        if self.state is None:
            self.to(logits.device)
            self.state = self.start(seq.size(0))
        for column in range(self.consumed, seq.size(1)):
            self.advance(self.state, seq[:, column])
        self.consumed = seq.size(1)
        return logits.masked_fill(~self.allowed(self.state), float("-inf"))
