"""Infilling: writing the bars of a gap given the music before it *and* after it.

A causal model sees only what precedes a token, so an infilling window puts the music after
the gap first: [BOS] after-span, before-span, middle, and the bar line that closes the middle.
Every token carries a role (a learned embedding added as the kind condition is; no new token
ids): AFTER, BEFORE, MIDDLE, and LAST_BAR for the middle's final bar, so the model knows when
the next bar line must join what follows. Plain training windows and continuations are PLAIN.

Training rearranges a share of ordinary windows this way (arrange_window); sample.py --infill
builds the same layout from a MIDI file (plan_span, infill_prompt), decodes the new middle and puts
its notes into the original score in place of the span's (splice), every other note untouched.
Imports only remi.
"""
from dataclasses import dataclass

import numpy as np
import torch

from pianogpt.data.remi import CHORD_LIMIT, RemiGrammar, encode_merged, notes_of
from pianogpt.generation.engine import generate

PLAIN, BEFORE, AFTER, MIDDLE, LAST_BAR = range(5)
N_ROLES = 5


# ----------------------------------------------------------------------------- training windows


def arrange_window(window, bar_id, pad_id, rng, max_bars, max_middle):
    """An ordinary window [BOS] + crop (+ PAD), as a training window of infilling, or None when its
    crop has no bar-aligned middle of 1..max_bars bars and at most max_middle tokens with music
    after it. Returns (window, roles) of the same length: the rearranged tokens, and the role of
    each one as an input (the last token is only ever a target)."""
    real = int(np.count_nonzero(window[1:] != pad_id))
    crop = window[1:1 + real]
    bars = np.flatnonzero(crop == bar_id)
    # (start, end) bar-line pairs: end leaves at least one token after its own bar line for the after-span
    pairs = [(i, j) for i in range(len(bars)) for j in range(i + 1, min(i + max_bars, len(bars) - 1) + 1)
             if bars[j] - bars[i] <= max_middle and bars[j] + 2 <= real]
    if not pairs:
        return None
    i, j = pairs[int(rng.integers(len(pairs)))]
    start, end, last = int(bars[i]), int(bars[j]), int(bars[j - 1])
    after = crop[end:real - 1]  # one token shorter: the closing bar line takes its place at the end
    tokens = np.concatenate([window[:1], after, crop[:start], crop[start:end], crop[end:end + 1]])
    roles = np.concatenate([np.full(1 + len(after), AFTER), np.full(start, BEFORE), np.full(last - start, MIDDLE),
                            np.full(end - last + 1, LAST_BAR)])
    out = window.copy()
    out[:len(tokens)] = tokens
    out_roles = np.full(len(window), PLAIN)
    out_roles[:len(roles)] = roles
    return out, out_roles


def arrange_batch(x, y, rng, share, bar_id, pad_id, max_bars, max_middle):
    """(x, y, roles [B, T]) with about `share` of the rows rearranged as infilling windows (the rest,
    and rows without a usable gap, stay plain). x, y: a batch of inputs and targets [B, T]."""
    full = torch.cat([x[:, :1], y], dim=1).numpy().copy()
    roles = np.full(full.shape, PLAIN)
    for row in np.flatnonzero(rng.random(len(full)) < share):
        arranged = arrange_window(full[row], bar_id, pad_id, rng, max_bars, max_middle)
        if arranged is not None:
            full[row], roles[row] = arranged
    full = torch.from_numpy(full)
    return full[:, :-1], full[:, 1:], torch.from_numpy(roles[:, :-1])


# ----------------------------------------------------------------------------- a span of a real piece


def bar_lines(ids, bar_id):
    """Indices of the bar line tokens in ids."""
    return np.flatnonzero(np.asarray(ids) == bar_id)


def bar_ticks(score):
    """The tick of every bar line of a score, as its time signatures lay them (4/4 before the first;
    a new signature starts a bar), from 0 up to the piece's end: bar k opens at [k - 1]."""
    sigs = sorted((ts.time, ts.numerator, ts.denominator) for ts in score.time_signatures)
    if not sigs or sigs[0][0] > 0:
        sigs.insert(0, (0, 4, 4))
    end, lines = max(score.end(), 1), []
    for (start, numerator, denominator), following in zip(sigs, [s[0] for s in sigs[1:]] + [None]):
        length, t = numerator * 4 / denominator * score.tpq, float(start)
        while t < (end if following is None else following):
            lines.append(round(t))
            t += length
    return lines or [0]


def seconds_at(score, ticks):
    """Seconds at each of `ticks` under the score's tempo map (120 qpm before its first tempo)."""
    tempos = sorted((t.time, t.qpm) for t in score.tempos)
    if not tempos or tempos[0][0] > 0:
        tempos.insert(0, (0, 120.0))
    out = []
    for tick in ticks:
        seconds = 0.0
        for (start, qpm), following in zip(tempos, [t[0] for t in tempos[1:]] + [float("inf")]):
            if tick <= start:
                break
            seconds += (min(tick, following) - start) / score.tpq * 60.0 / qpm
        out.append(seconds)
    return out


def bars_of_seconds(bar_starts_s, start_s, end_s):
    """(first, last) bars whose opening bar line lies in [start_s, end_s), 1-based, from the
    seconds at which each bar opens; ValueError when none does."""
    inside = [i + 1 for i, t in enumerate(bar_starts_s) if start_s - 1e-6 <= t < end_s]
    if not inside:
        raise ValueError(f"no bar opens between {start_s:g} s and {end_s:g} s (the piece's {len(bar_starts_s)} bars "
                         f"open from 0 s to {bar_starts_s[-1]:.1f} s)")
    return inside[0], inside[-1]


def excerpt(score, lo, hi=None):
    """A copy of a score holding the notes whose onset lies in [lo, hi) ticks, moved back by lo,
    with the tempo and time signature in force at lo (and the later ones before hi) moved back with
    them: a tempo change after the excerpt would make the tokenizer write the bars up to it."""
    from symusic import Note, Tempo, TimeSignature

    out = score.copy()
    for track in out.tracks:
        a = track.notes.numpy()
        keep = (a["time"] >= lo) & (a["time"] < (hi if hi is not None else np.iinfo(np.int64).max))
        track.notes = Note.from_numpy(time=(a["time"][keep] - lo).astype(np.int32), duration=a["duration"][keep],
                                      pitch=a["pitch"][keep], velocity=a["velocity"][keep])
    end = hi if hi is not None else float("inf")
    tempos = sorted((t.time, t.qpm) for t in score.tempos if t.time < end)
    sigs = sorted((t.time, t.numerator, t.denominator) for t in score.time_signatures if t.time < end)
    out.tempos.clear()
    out.time_signatures.clear()
    for time, qpm in in_force_from(tempos, lo):
        out.tempos.append(Tempo(time, qpm))
    for time, numerator, denominator in in_force_from(sigs, lo):
        out.time_signatures.append(TimeSignature(time, numerator, denominator))
    return out


def in_force_from(events, lo):
    """(time, ...) events sorted by time -> those in force from tick lo on, moved back by lo."""
    before = [e for e in events if e[0] <= lo]
    return [(0, *before[-1][1:])] * bool(before) + [(e[0] - lo, *e[1:]) for e in events if e[0] > lo]


@dataclass
class Plan:
    """What filling bars first..last of a piece takes: the prompt and its roles, the tokens the
    middle may use, where the span lies (ticks and quarters of the original), the TimeSig token of
    each of its bars (a new take keeps the piece's metre) and the span's own token count."""
    first: int
    last: int
    bar_count: int
    prompt: list
    roles: list
    max_new_tokens: int
    start_tick: int
    end_tick: int  # the bar line that closes the span (the piece's end for its last bar)
    time_signatures: list
    span_tokens: int


def plan_span(tokenizer, merged, block_size, first, last):
    """The Plan for bars first..last of a piece (merged: its one piano track, remi.merge_piano_tracks),
    or ValueError naming the bars it has or the span that fits this context."""
    lines = bar_ticks(merged)
    if not 1 <= first <= last <= len(lines):
        raise ValueError(f"bars {first}-{last} are outside the piece: it has bars 1-{len(lines)}")
    start = lines[first - 1]
    end = lines[last] if last < len(lines) else merged.end() + 1
    span_tokens = len(encode_merged(tokenizer, excerpt(merged, start, end)))
    try:
        middle, each_side = context_budget(block_size, span_tokens)
    except ValueError as e:
        raise ValueError(f"bars {first}-{last} {e}: {longest_from(tokenizer, merged, lines, first, block_size)}") from None
    before, opening = tokens_before(tokenizer, merged, start)
    after = [int(t) for t in encode_merged(tokenizer, excerpt(merged, end))] if last < len(lines) else []
    prompt, roles = infill_prompt(before, after, each_side, tokenizer.vocab["BOS_None"], opening, first == last)
    return Plan(first, last, len(lines), prompt, roles, middle, start, end,
                metre_tokens(tokenizer, merged, lines[first - 1:last]), span_tokens)


def infill_prompt(before, after, each_side, bos_id, bar_id, one_bar):
    """(prompt, roles) of a gap: BOS, up to each_side tokens of the music after it (AFTER), up to
    each_side of the music before it (BEFORE; more when the after-span is shorter), and the bar line
    that opens the gap (MIDDLE, or LAST_BAR when the gap is one bar)."""
    after = [int(t) for t in after[:each_side]]
    before = [int(t) for t in before[max(0, len(before) - (2 * each_side - len(after))):]]
    return ([bos_id] + after + before + [bar_id],
            [AFTER] * (1 + len(after)) + [BEFORE] * len(before) + [LAST_BAR if one_bar else MIDDLE])


def tokens_before(tokenizer, merged, start):
    """(tokens of the music before tick `start`, the bar line token that opens the bar at start):
    the notes before it are tokenized with one probe note on that bar line, and cut at its bar."""
    from symusic import Note

    probe = excerpt(merged, 0, start)
    probe.tracks[0].notes.append(Note(start, max(1, merged.tpq // 8), 60, 64))
    ids = [int(t) for t in encode_merged(tokenizer, probe)]
    bar_id = tokenizer.vocab["Bar_None"]
    opening = max(i for i, t in enumerate(ids) if t == bar_id)
    return ids[:opening], bar_id


def metre_tokens(tokenizer, merged, bar_starts):
    """The TimeSig token id in force at each bar line (-1 where the vocabulary has none for it)."""
    sigs = sorted((t.time, t.numerator, t.denominator) for t in merged.time_signatures) or [(0, 4, 4)]
    out = []
    for tick in bar_starts:
        in_force = [s for s in sigs if s[0] <= tick] or [(0, 4, 4)]
        out.append(tokenizer.vocab.get(f"TimeSig_{in_force[-1][1]}/{in_force[-1][2]}", -1))
    return out


LEAST_CONTEXT = 16  # tokens of music a filled span keeps on each side, at the least


def most_span_tokens(block_size):
    """The longest span, in tokens, that a context of block_size can fill (BOS, the closing bar line's
    slot and LEAST_CONTEXT tokens on each side take the rest)."""
    return block_size - 2 - 2 * LEAST_CONTEXT


def context_budget(block_size, span_tokens, margin=1.5):
    """(tokens the new middle may take, tokens of music kept on each side): the middle gets
    `margin` times the original span's tokens (a new take can be denser), the rest of the
    context is shared by the music before and after. ValueError past most_span_tokens."""
    most = most_span_tokens(block_size)
    if span_tokens > most:
        raise ValueError(f"hold {span_tokens} tokens; this model's context ({block_size} tokens) fills spans of at "
                         f"most {most}")
    middle = min(most, max(int(span_tokens * margin), span_tokens + 32))
    return middle, (block_size - 2 - middle) // 2


def longest_from(tokenizer, merged, lines, first, block_size):
    """'bars 9-11 fit' (the longest span from bar `first` that this context fills), or why none does."""
    fits = None
    for last in range(first, len(lines) + 1):
        end = lines[last] if last < len(lines) else merged.end() + 1
        if len(encode_merged(tokenizer, excerpt(merged, lines[first - 1], end))) > most_span_tokens(block_size):
            break
        fits = last
    return f"bars {first}-{fits} fit" if fits else f"bar {first} alone is too long for it"


class MiddleRoles:
    """The roles of generated middle tokens, on the device: MIDDLE until the bar line that opens the
    span's last bar, LAST_BAR from there; `closed` marks the rows whose middle has reached the bar
    line after its last bar (the join). engine.generate calls next_roles with each new token.
    plain=True: a continuation cut after the same bars (it counts them, and feeds PLAIN)."""

    def __init__(self, prompt_roles, bars, bar_id, bars_in_prompt=1, plain=False):
        self.prompt = prompt_roles
        self.bars, self.bar_id, self.plain = bars, bar_id, plain
        self.opened = torch.full((prompt_roles.size(0),), bars_in_prompt, dtype=torch.long,
                                 device=prompt_roles.device)

    def next_roles(self, tokens):
        """tokens [B] just sampled -> their roles [B] (a bar line past the last bar is the join: it
        keeps LAST_BAR and is never fed on, as generation stops there)."""
        self.opened = self.opened + (tokens == self.bar_id).long()
        if self.plain:
            return torch.zeros_like(self.opened)
        return torch.where(self.opened >= self.bars, LAST_BAR, MIDDLE)

    def closed(self):
        return self.opened > self.bars


# ----------------------------------------------------------------------------- putting the middle in place


def splice(original, middle, start_tick, end_tick):
    """A copy of `original` (a symusic Score) with every note whose onset lies in [start_tick,
    end_tick) removed from its non-drum tracks and the notes of `middle` (a Score whose time 0 is
    the span's opening bar line) put there instead, in the first track that held notes, held at
    most to end_tick. Every other note, track, tempo, pedal and meta event is kept as it was.
    Returns (score, notes removed, notes added)."""
    from symusic import Note

    score = original.copy()
    removed, target = 0, None
    for track in score.tracks:
        if track.is_drum:
            continue
        a = track.notes.numpy()
        inside = (a["time"] >= start_tick) & (a["time"] < end_tick)
        if inside.any():
            removed += int(inside.sum())
            track.notes = Note.from_numpy(**{key: value[~inside] for key, value in a.items()})
        if target is None and len(a["time"]):
            target = track
    if target is None:
        target = next(t for t in score.tracks if not t.is_drum)
    new = notes_of(middle.tracks)
    time = start_tick + np.round(new["time"] / middle.tpq * score.tpq).astype(np.int64)
    keep = time < end_tick
    time = time[keep]
    duration = np.clip(np.round(new["duration"][keep] / middle.tpq * score.tpq), 1, end_tick - time)
    old = target.notes.numpy()
    merged = {"time": np.concatenate([old["time"], time]), "duration": np.concatenate([old["duration"], duration]),
              "pitch": np.concatenate([old["pitch"], new["pitch"][keep]]),
              "velocity": np.concatenate([old["velocity"], new["velocity"][keep]])}
    order = np.lexsort((merged["pitch"], merged["time"]))
    target.notes = Note.from_numpy(time=merged["time"][order].astype(np.int32),
                                   duration=merged["duration"][order].astype(np.int32),
                                   pitch=merged["pitch"][order].astype(np.int8),
                                   velocity=merged["velocity"][order].astype(np.int8))
    return score, removed, int(keep.sum())


class KeepMetre:
    """logits_processor: after each bar line of the middle, the TimeSig token its bar has in the
    piece, so the new bars last as the old ones did (RemiGrammar, when the run is constrained, keeps
    every rest inside its bar, so that the middle's bar lines are the bars it counts).
    roles: the MiddleRoles of the run."""

    def __init__(self, time_signatures, bar_id, roles):
        self.forced = torch.tensor(time_signatures, dtype=torch.long)
        self.bar_id, self.roles = bar_id, roles

    def __call__(self, seq, logits):
        forced = self.forced.to(logits.device)[(self.roles.opened - 1).clamp(0, len(self.forced) - 1)]
        at_bar = (seq[:, -1] == self.bar_id) & (forced >= 0)
        others = torch.arange(logits.size(-1), device=logits.device)[None, :] != forced[:, None]
        return logits.masked_fill(at_bar[:, None] & others, float("-inf"))


def write_middles(model, tokenizer, prompt, prompt_roles, bars, metre, budget, composer, constrained=True,
                  plain=False, **sampling):
    """(middle tokens, closed) for every row of composer [B]: the gap after `prompt` written bar by
    bar, each bar in the metre of `metre` (TimeSig ids), until the bar line after the last of
    `bars` bars or `budget` tokens (a continuation cut after the same bars with plain=True).
    sampling: model.generate's own options (temperature, guidance, generator, kind, on_step, ...)."""
    rows = composer.size(0)
    device = composer.device
    bar_id = tokenizer.vocab["Bar_None"]
    roles = MiddleRoles(torch.tensor([prompt_roles] * rows, dtype=torch.long, device=device), bars, bar_id,
                        plain=plain)
    grammar = RemiGrammar(tokenizer, chord_limit=CHORD_LIMIT) if constrained else None
    processors = ([grammar] if constrained else []) + [KeepMetre(metre, bar_id, roles)]

    def constrain(seq, logits):
        for processor in processors:
            logits = processor(seq, logits)
        return logits

    out = generate(model, torch.tensor([prompt] * rows, dtype=torch.long, device=device), composer, budget,
                         logits_processor=constrain, roles=roles, stop=lambda seq: bool(roles.closed().all()),
                         **sampling)
    return [middle_of(row, len(prompt), bars, bar_id) for row in out.tolist()]


def middle_of(row, prompt_len, bars, bar_id):
    """(middle, closed) of one generated row: its tokens from its opening bar line (the prompt's last
    token) up to the bar line after its last bar (not included), and whether it got there (a row
    that did not is cut where the token budget ran out)."""
    middle = [int(t) for t in row[prompt_len - 1:]]
    lines = [i for i, t in enumerate(middle) if t == bar_id]
    if len(lines) > bars:
        return middle[:lines[bars]], True
    return middle, False


# ----------------------------------------------------------------------------- measuring a real gap


def real_gaps(pieces, bar_id, block_size, n, rng, bars=2, least_context=32):
    """Up to n (piece index, start, end) real gaps of `bars` bars (token bar lines) in pieces (token
    arrays), each with at least least_context tokens before and after it and a middle of at most
    half the context: the spans the infilling measure cuts out. Drawn by rng, so a seed names them."""
    gaps, tries = [], 0
    while len(gaps) < n and tries < 50 * n:
        tries += 1
        p = int(rng.integers(len(pieces)))
        lines = bar_lines(pieces[p], bar_id)
        if len(lines) <= bars + 1:
            continue
        i = int(rng.integers(len(lines) - bars))
        start, end = int(lines[i]), int(lines[i + bars])
        if start >= least_context and len(pieces[p]) - end >= least_context and end - start <= block_size // 2:
            gaps.append((p, start, end))
    return gaps


def gap_layouts(tokens, start, end, bos_id, block_size):
    """The two ways to predict the real middle tokens[start:end] (and the bar line that closes it):
    "infill": [BOS] after, before, middle (roles), the context shared by both sides; "continue":
    [BOS] before, middle (plain), the whole context before. Each: (ids, roles, first target index):
    the targets from that index on are the middle's tokens after its opening bar line, and the
    closing bar line."""
    middle = [int(t) for t in tokens[start:end + 1]]  # with the closing bar line
    last_bar = max(i for i, t in enumerate(middle[:-1]) if t == middle[0])
    middle_roles = [MIDDLE] * last_bar + [LAST_BAR] * (len(middle) - last_bar)
    prompt, roles = infill_prompt(tokens[:start], tokens[end:], (block_size - 1 - len(middle)) // 2, bos_id,
                                  middle[0], last_bar == 0)  # the prompt ends on the middle's opening bar line
    infill = (prompt + middle[1:], roles + middle_roles[1:], len(prompt) - 1)
    before_all = [int(t) for t in tokens[max(0, start - (block_size - len(middle))):start]]
    plain = ([bos_id] + before_all + middle, [PLAIN] * (1 + len(before_all) + len(middle)), 1 + len(before_all))
    return {"infill": infill, "continue": plain}
