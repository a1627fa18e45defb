"""Sound: a score rendered to a .wav, through a SoundFont when one is given or found, else
through a small built-in piano voice written with numpy. Imports only remi (the notes of a score).

The built-in voice: a few slightly inharmonic partials per note, a quick attack, louder
and brighter with velocity, a longer decay in the bass, each note held as long as in the
MIDI and then released; the mix is normalised so that it never clips. Deterministic.
Mono 16-bit at 22,050 Hz, written with the standard library's wave module.
"""
import functools
import os
import wave

import numpy as np

from pianogpt.data.remi import notes_of

SAMPLE_RATE = 22050
PARTIALS = 6
ATTACK_S, RELEASE_S = 0.005, 0.12
MAX_TONE_S = 8.0  # a held note longer than this has decayed to silence anyway
SOUNDFONT_FOLDERS = ("/usr/share/sounds/sf2", "/usr/share/soundfonts", "/usr/share/sounds/sf3")
SOUNDFONT_ENV = "PIANO_GPT_SOUNDFONT"


def tone(pitch, seconds, sample_rate=SAMPLE_RATE):
    """(soft, bright) decaying tones of one piano key, at least `seconds` long (up to
    MAX_TONE_S): cached by power-of-two lengths, so a piece computes few of them."""
    length = min(MAX_TONE_S, 2.0 ** np.ceil(np.log2(max(seconds, 0.5))))
    return tone_of_length(pitch, float(length), sample_rate)


@functools.lru_cache(maxsize=None)
def tone_of_length(pitch, seconds, sample_rate):
    t = np.arange(int(seconds * sample_rate), dtype=np.float32) / sample_rate
    frequency = 440.0 * 2.0 ** ((pitch - 69) / 12)
    low = (108 - pitch) / 87  # 1 at A0, 0 at C8: the bass rings longer
    decay = 0.4 + 3.6 * low**2  # seconds
    attack = np.minimum(1.0, t / ATTACK_S)
    soft, bright = np.zeros_like(t), np.zeros_like(t)
    for k in range(1, PARTIALS + 1):
        f = k * frequency * np.sqrt(1 + 1e-4 * k * k)  # a string's stretched partials
        if f >= sample_rate / 2:
            break
        wave_k = np.sin(2 * np.pi * f * t, dtype=np.float32) * np.exp(-t * np.sqrt(k) / decay)
        soft += wave_k / k**2.8
        bright += wave_k / k**1.0
    return soft * attack, bright * attack


def note_arrays_seconds(score):
    """(start s, duration s, pitch, velocity) of every note of a symusic score."""
    a = notes_of(score.to("second").tracks)
    return a["time"].astype(np.float64), a["duration"].astype(np.float64), a["pitch"], a["velocity"]


def render_builtin(score, sample_rate=SAMPLE_RATE):
    """int16 mono samples of the score through the built-in piano voice."""
    starts, durations, pitches, velocities = note_arrays_seconds(score)
    if len(pitches) == 0:
        return np.zeros(int(0.5 * sample_rate), np.int16)
    total = int((float(np.max(starts + durations)) + RELEASE_S + 0.05) * sample_rate) + 1
    mix = np.zeros(total, np.float32)
    release = np.exp(-np.arange(int(RELEASE_S * sample_rate), dtype=np.float32) / (0.25 * RELEASE_S * sample_rate))
    for start, duration, pitch, velocity in zip(starts, durations, pitches, velocities):
        soft, bright = tone(int(pitch), duration + RELEASE_S, sample_rate)
        held = min(max(int(duration * sample_rate), 1), len(soft) - len(release))
        loud = (velocity / 127.0) ** 1.5
        v = velocity / 127.0
        sound = (1 - v) * soft[:held + len(release)] + v * bright[:held + len(release)]
        sound = sound * loud
        sound[held:] *= release
        at = int(start * sample_rate)
        mix[at:at + len(sound)] += sound[:total - at]
    peak = float(np.abs(mix).max())
    if peak > 0:
        mix *= 0.89 / peak
    return np.round(mix * 32767).astype(np.int16)


def find_soundfont(explicit=None):
    """The SoundFont to use: --soundfont, $PIANO_GPT_SOUNDFONT, else the first .sf2/.sf3 in the
    usual folders; None (the built-in voice) when there is none or explicit is "builtin"."""
    if explicit == "builtin":
        return None
    if explicit:
        return explicit
    if os.environ.get(SOUNDFONT_ENV):
        return os.environ[SOUNDFONT_ENV]
    for folder in SOUNDFONT_FOLDERS:
        if os.path.isdir(folder):
            found = sorted(f for f in os.listdir(folder) if f.lower().endswith((".sf2", ".sf3")))
            if found:
                return os.path.join(folder, found[0])
    return None


def render_soundfont(score, soundfont, sample_rate=SAMPLE_RATE):
    """int16 mono samples through symusic's SoundFont synthesizer."""
    from symusic import Synthesizer

    audio = Synthesizer(sf_path=soundfont, sample_rate=sample_rate).render(score, stereo=False)
    data = np.asarray(audio, dtype=np.float32).reshape(-1)
    peak = float(np.abs(data).max()) if len(data) else 0.0
    if peak > 0:
        data = data * (0.89 / peak)
    return np.round(data * 32767).astype(np.int16)


def render(score, soundfont=None, sample_rate=SAMPLE_RATE):
    """(int16 samples, voice used): the SoundFont when it renders, else the built-in voice."""
    if soundfont:
        try:
            return render_soundfont(score, soundfont, sample_rate), f"SoundFont {os.path.basename(soundfont)}"
        except Exception as e:  # an unusable SoundFont or a synthesizer that fails here: say so, still make sound
            fallback = f"built-in piano (SoundFont {os.path.basename(soundfont)} failed: {type(e).__name__})"
            return render_builtin(score, sample_rate), fallback
    return render_builtin(score, sample_rate), "built-in piano"


def wav_bytes(samples, sample_rate=SAMPLE_RATE):
    """A mono 16-bit .wav file's bytes."""
    import io

    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(np.asarray(samples, np.int16).tobytes())
    return buffer.getvalue()
