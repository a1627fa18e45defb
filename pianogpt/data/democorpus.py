"""An offline demo corpus: a procedural composer writing short two-hand piano pieces in six
clearly different period styles, one folder per style (the "composers").

It is synthetic. It exists so a fresh checkout with no data and no network can run the
whole pipeline; for real music pass --midi_dir (see the README's real-music path).

    python -m pianogpt.data.democorpus --out_dir data/demo-midi --pieces_per_style 50

Every piece: a random key (major or minor), a functional chord progression (a Markov chain
over scale degrees that ends with a V-I cadence), a tempo (with per-bar rubato and a final
ritardando) and dynamics drawn from the style's ranges, a time signature, and both hands.
"""
import os

import numpy as np

from pianogpt.cli import Parser, positive_int

TPQ = 480
MAJOR = [0, 2, 4, 5, 7, 9, 11]
MINOR = [0, 2, 3, 5, 7, 8, 11]  # harmonic minor: a real dominant
# scale degree (1..7) -> [(next degree, probability)]: tonic, predominant, dominant functions
NEXT_DEGREE = {
    1: [(4, 0.3), (5, 0.25), (6, 0.25), (2, 0.2)],
    2: [(5, 0.8), (7, 0.2)],
    3: [(6, 0.6), (4, 0.4)],
    4: [(5, 0.5), (2, 0.25), (1, 0.25)],
    5: [(1, 0.7), (6, 0.3)],
    6: [(2, 0.5), (4, 0.5)],
    7: [(1, 1.0)],
}


def progression(rng, n_chords):
    """Degrees that start on I and end every 4-chord phrase group with V-I."""
    degrees = [1]
    while len(degrees) < n_chords - 2:
        options, weights = zip(*NEXT_DEGREE[degrees[-1]])
        degrees.append(int(rng.choice(options, p=weights)))
    return degrees + [5, 1]


def chord_pcs(key, scale, degree, seventh=False):
    """Pitch classes (root first) of the diatonic triad (or seventh chord) on a degree."""
    steps = (0, 2, 4, 6) if seventh else (0, 2, 4)
    return [(key + scale[(degree - 1 + s) % 7]) % 12 for s in steps]


def pitches_in(pcs, low, high):
    """Every pitch in [low, high] whose class is in pcs, ascending."""
    return [p for p in range(low, high + 1) if p % 12 in pcs]


def nearest(pcs, target, low, high):
    options = pitches_in(pcs, low, high)
    return min(options, key=lambda p: abs(p - target))


class Piece:
    def __init__(self, rng, tempo, numerator, denominator, base_velocity):
        self.rng = rng
        self.key = int(rng.integers(0, 12))
        self.scale = MAJOR if rng.random() < 0.7 else MINOR
        self.tempo, self.numerator, self.denominator = tempo, numerator, denominator
        self.base_velocity = base_velocity
        self.right, self.left = [], []

    def velocity(self, time, total, accent=0):
        """A phrase-long swell around the style's base dynamic, plus small human jitter."""
        swell = 10 * np.sin(np.pi * time / max(total, 1))
        return int(np.clip(self.base_velocity + swell + accent + self.rng.integers(-4, 5), 20, 120))

    def melody(self, chord, start, durations, low, high, previous, total, accent=0):
        """A line of chord tones and stepwise passing tones; returns the last pitch."""
        pitch = previous
        t = start
        for i, d in enumerate(durations):
            if i % 2 == 0 or self.rng.random() < 0.4:
                pitch = nearest(chord, pitch + int(self.rng.integers(-4, 5)), low, high)
            else:  # a scale step from the previous note
                scale_pcs = [(self.key + s) % 12 for s in self.scale]
                step = pitch + (1 if self.rng.random() < 0.5 else -1)
                while step % 12 not in scale_pcs:
                    step += 1 if step > pitch else -1
                pitch = int(np.clip(step, low, high))
            self.right.append((t, int(d * 0.95), pitch, self.velocity(t, total, accent)))
            t += d
        return pitch


def bar_ticks(piece):
    return piece.numerator * TPQ * 4 // piece.denominator


def rhythm(rng, total, choices):
    """Durations (ticks) drawn from choices that fill exactly `total` ticks."""
    out, left = [], total
    while left > 0:
        fitting = [c for c in choices if c <= left]
        d = int(rng.choice(fitting)) if fitting else left
        out.append(d)
        left -= d
    return out


# ----------------------------------------------------------------------------- styles
# each returns a Piece; bar length = numerator * (4 / denominator) quarters


def begin(rng, tempo_range, numerator, denominator, base_velocity, bar_choices, chords_per_bar=1):
    """(piece, chord degrees, total ticks): the part every style shares."""
    piece = Piece(rng, float(rng.integers(*tempo_range)), numerator, denominator, base_velocity)
    bars = int(rng.choice(bar_choices))
    return piece, progression(rng, bars * chords_per_bar), bars * bar_ticks(piece)


def chorale(rng):
    """Four voices in slow quarter-note chords, 4/4, a fermata-like long final chord."""
    piece, degrees, total = begin(rng, (56, 76), 4, 4, 64, [8, 12], chords_per_bar=2)
    soprano = 72
    for i, degree in enumerate(degrees):
        pcs = chord_pcs(piece.key, piece.scale, degree)
        t = i * 2 * TPQ
        for half in range(2):
            tt = t + half * TPQ
            soprano = nearest(pcs, soprano + int(rng.integers(-2, 3)), 65, 79)
            alto = nearest(pcs, soprano - 5, 57, soprano - 3)
            tenor = nearest(pcs, alto - 5, 48, alto - 3)
            bass = nearest([pcs[0]], tenor - 9, 36, 52)
            d = TPQ * 2 if i == len(degrees) - 1 else TPQ
            v = piece.velocity(tt, total)
            piece.right += [(tt, int(d * 0.97), soprano, v + 4), (tt, int(d * 0.97), alto, v - 4)]
            piece.left += [(tt, int(d * 0.97), tenor, v - 4), (tt, int(d * 0.97), bass, v)]
    return piece


def sonatina(rng):
    """Classical: a singing right hand over an Alberti bass in eighths, 4/4, allegro."""
    piece, degrees, total = begin(rng, (120, 150), 4, 4, 72, [8, 12, 16])
    last = 76
    for bar, degree in enumerate(degrees):
        pcs = chord_pcs(piece.key, piece.scale, degree, seventh=degree == 5)
        t = bar * 4 * TPQ
        root, third, fifth = (nearest([pc], target, 43, 67) for pc, target in zip(pcs[:3], (48, 55, 52)))
        for i, p in enumerate([root, fifth, third, fifth] * 2):  # Alberti: low-high-middle-high
            piece.left.append((t + i * TPQ // 2, TPQ // 2 - 10, p, piece.velocity(t, total, -14)))
        durations = rhythm(rng, 4 * TPQ, [TPQ // 2, TPQ // 2, TPQ, TPQ // 4 * 2])
        last = piece.melody(pcs, t, durations, 67, 88, last, total)
    return piece


def prelude(rng):
    """Baroque broken-chord prelude: one chord per bar arpeggiated in sixteenths across both hands."""
    piece, degrees, total = begin(rng, (66, 88), 4, 4, 60, [8, 12, 16])
    for bar, degree in enumerate(degrees):
        pcs = chord_pcs(piece.key, piece.scale, degree)
        t = bar * 4 * TPQ
        bass = nearest([pcs[0]], 43, 36, 50)
        upper = pitches_in(pcs, bass + 7, bass + 26)[:5]
        for half in range(2):
            th = t + half * 2 * TPQ
            piece.left.append((th, 2 * TPQ - 20, bass, piece.velocity(th, total, -2)))
            piece.left.append((th + TPQ // 4, 2 * TPQ - TPQ // 4 - 20, upper[0], piece.velocity(th, total, -6)))
            figure = upper[1:] + upper[1:][::-1][1:3] if len(upper) > 3 else upper
            for i in range(6):  # sixteenths from the second sixteenth on
                p = figure[i % len(figure)]
                piece.right.append((th + (i + 2) * TPQ // 4, TPQ // 4 - 10, p, piece.velocity(th, total)))
    return piece


def waltz(rng):
    """Romantic waltz in 3/4: bass on one, chord on two and three; a lilting melody above."""
    piece, degrees, total = begin(rng, (150, 190), 3, 4, 70, [16, 24])
    last = 74
    for bar, degree in enumerate(degrees):
        pcs = chord_pcs(piece.key, piece.scale, degree, seventh=degree == 5)
        t = bar * 3 * TPQ
        piece.left.append((t, TPQ - 20, nearest([pcs[0]], 40, 33, 47), piece.velocity(t, total, 2)))
        chord = pitches_in(pcs, 53, 66)[:3]
        for beat in (1, 2):
            for p in chord:
                piece.left.append((t + beat * TPQ, TPQ // 2, p, piece.velocity(t, total, -16)))
        durations = [2 * TPQ, TPQ] if bar % 2 else rhythm(rng, 3 * TPQ, [TPQ, TPQ // 2, 3 * TPQ // 2])
        last = piece.melody(pcs, t, durations, 69, 91, last, total)
    return piece


def nocturne(rng):
    """Nocturne in 12/8: wide left-hand arpeggios over two octaves, a slow soft cantilena."""
    piece, degrees, total = begin(rng, (40, 56), 12, 8, 50, [6, 8], chords_per_bar=2)
    half_bar = 3 * TPQ  # six eighths: one chord
    last = 79
    for i, degree in enumerate(degrees):
        pcs = chord_pcs(piece.key, piece.scale, degree, seventh=degree == 5)
        t = i * half_bar
        bass = nearest([pcs[0]], 38, 28, 45)
        span = [bass] + pitches_in(pcs, bass + 7, bass + 24)[:4]
        pattern = span + span[-2:0:-1]  # up and back down: 6 eighths
        for j in range(6):
            piece.left.append((t + j * TPQ // 2, TPQ - 20, pattern[j % len(pattern)], piece.velocity(t, total, -8)))
        durations = rhythm(rng, 3 * TPQ, [3 * TPQ // 2, TPQ, TPQ // 2, 3 * TPQ])
        last = piece.melody(pcs, t, durations, 70, 93, last, total, accent=4)
    return piece


def ragtime(rng):
    """Ragtime in 2/4: stride bass (low octave, then a mid chord) under a syncopated melody."""
    piece, degrees, total = begin(rng, (84, 104), 2, 4, 80, [16, 24])
    last = 76
    sixteenth = TPQ // 4
    for bar, degree in enumerate(degrees):
        pcs = chord_pcs(piece.key, piece.scale, degree, seventh=degree in (5, 2))
        t = bar * 2 * TPQ
        for beat in range(2):
            tb = t + beat * TPQ
            low = nearest([pcs[0] if beat == 0 else pcs[2]], 36, 29, 43)
            piece.left += [(tb, TPQ // 2 - 10, low, piece.velocity(t, total, 4)),
                           (tb, TPQ // 2 - 10, low + 12, piece.velocity(t, total, 0))]
            for p in pitches_in(pcs, 52, 64)[:3]:
                piece.left.append((tb + TPQ // 2, TPQ // 2 - 10, p, piece.velocity(t, total, -10)))
        # syncopation: short-long-short figures that tie across the beat
        durations = [sixteenth, 2 * sixteenth, sixteenth, 2 * sixteenth, 2 * sixteenth] if bar % 2 == 0 else \
            rhythm(rng, 2 * TPQ, [sixteenth, 2 * sixteenth, 3 * sixteenth])
        last = piece.melody(pcs, t, durations, 67, 91, last, total, accent=6)
    return piece


STYLES = {"Chorale": chorale, "Sonatina": sonatina, "Prelude": prelude, "Waltz": waltz, "Nocturne": nocturne,
          "Ragtime": ragtime}


def rubato(piece):
    """A tempo per bar, as a player breathes: a slow +-3 % drift and a ritardando at the end.
    (It also puts Tempo tokens inside training windows, not only at a piece's first token.)"""
    notes = piece.right + piece.left
    bars = max(1, -(-max(t + d for t, d, _, _ in notes) // bar_ticks(piece)))
    drift = np.cumsum(piece.rng.normal(0, 0.01, bars)).clip(-0.03, 0.03)
    slowing = np.where(np.arange(bars) >= bars - 2, 0.9, 1.0)
    return [round(float(piece.tempo * (1 + d) * s), 2) for d, s in zip(drift, slowing)]


def to_score(piece):
    from symusic import Note, Score, Tempo, TimeSignature, Track

    score = Score(TPQ)
    for bar, qpm in enumerate(rubato(piece)):
        score.tempos.append(Tempo(bar * bar_ticks(piece), qpm))
    score.time_signatures.append(TimeSignature(0, piece.numerator, piece.denominator))
    for name, notes in (("right", piece.right), ("left", piece.left)):
        track = Track(name=name, program=0, is_drum=False)
        time, dur, pitch, vel = (np.array(c) for c in zip(*sorted(notes)))
        track.notes = Note.from_numpy(time=time.astype(np.int32), duration=np.maximum(dur, 1).astype(np.int32),
                                      pitch=pitch.astype(np.int8), velocity=vel.astype(np.int8))
        score.tracks.append(track)
    return score


def write_demo_corpus(out_dir, pieces_per_style=50, seed=0):
    """Write <out_dir>/<Style>/<style>_NNN.mid; deterministic from seed. Returns the file count."""
    count = 0
    for s, (style, compose) in enumerate(STYLES.items()):
        folder = os.path.join(out_dir, style)
        os.makedirs(folder, exist_ok=True)
        for i in range(pieces_per_style):
            rng = np.random.default_rng([seed, s, i])
            path = os.path.join(folder, f"{style.lower()}_{i:03d}.mid")
            tmp = path + ".tmp"
            to_score(compose(rng)).dump_midi(tmp)
            os.replace(tmp, path)
            count += 1
    return count


def main(argv=None):
    parser = Parser(description=__doc__.split("\n")[0])
    parser.add_argument("--out_dir", default="data/demo-midi")
    parser.add_argument("--pieces_per_style", type=positive_int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    n = write_demo_corpus(args.out_dir, args.pieces_per_style, args.seed)
    print(f"wrote {n} synthetic pieces in {len(STYLES)} styles to {args.out_dir}/")


if __name__ == "__main__":
    main()
