"""Hearing and watching: the built-in piano voice, .wav files, the listening page, training curves."""
import html.parser
import io
import json
import os
import wave

import numpy as np
import pytest

from conftest import decode_png, tiny_train_config
from pianogpt.output import audio
from pianogpt.output.pictures import chart, png_bytes


def score_of(notes, tpq=480, qpm=120.0):
    """notes: [(start quarter, length in quarters, pitch, velocity)]."""
    from symusic import Note, Score, Tempo, Track

    score = Score(tpq)
    score.tempos.append(Tempo(0, qpm))
    track = Track(name="piano", program=0, is_drum=False)
    if notes:
        start, length, pitch, velocity = (np.array(c, dtype=float) for c in zip(*notes))
        track.notes = Note.from_numpy(time=(start * tpq).astype(np.int32), duration=(length * tpq).astype(np.int32),
                                      pitch=pitch.astype(np.int8), velocity=velocity.astype(np.int8))
    score.tracks.append(track)
    return score


def test_a_440_hz_a4_peaks_at_440_hz():
    samples = audio.render_builtin(score_of([(0, 2, 69, 90)])).astype(float)  # one second at 120 bpm
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    peak_hz = np.argmax(spectrum) * audio.SAMPLE_RATE / len(samples)
    assert abs(peak_hz - 440) < 3


def test_length_follows_the_midi_and_the_mix_never_clips():
    score = score_of([(0, 1, 60, 80), (2, 1, 64, 127), (7, 1, 67, 127), (7, 1, 43, 127), (7, 1, 31, 127)])
    samples = audio.render_builtin(score)
    seconds = len(samples) / audio.SAMPLE_RATE
    assert 4.0 <= seconds <= 4.0 + 0.5 + audio.RELEASE_S  # the last note ends at 8 quarters = 4 s
    assert np.abs(samples.astype(int)).max() < 32767 and np.abs(samples.astype(int)).max() > 20000
    assert np.sqrt(np.mean(samples.astype(float) ** 2)) > 500, "not silent"


def test_louder_velocity_is_louder_and_brighter():
    soft = audio.render_builtin(score_of([(0, 2, 60, 30), (4, 2, 60, 120)])).astype(float)
    first, second = soft[:int(0.9 * audio.SAMPLE_RATE)], soft[int(2 * audio.SAMPLE_RATE):int(2.9 * audio.SAMPLE_RATE)]
    assert np.sqrt(np.mean(second ** 2)) > 3 * np.sqrt(np.mean(first ** 2))
    centroid = [np.sum(np.arange(len(s)) * s) / np.sum(s) for s in (np.abs(np.fft.rfft(first)),
                                                                    np.abs(np.fft.rfft(second)))]
    assert centroid[1] > 1.2 * centroid[0], "brighter when louder"


def test_an_empty_score_is_silence_and_rendering_is_deterministic():
    assert not audio.render_builtin(score_of([])).any()
    score = score_of([(0, 1, 60, 80), (1, 1, 62, 80)])
    assert np.array_equal(audio.render_builtin(score), audio.render_builtin(score))


def test_wav_bytes_are_a_mono_16_bit_wav():
    samples = audio.render_builtin(score_of([(0, 1, 60, 80)]))
    with wave.open(io.BytesIO(audio.wav_bytes(samples))) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()) == (1, 2, 22050, len(samples))


def test_a_soundfont_is_used_when_given(tmp_path):
    fonts = [os.path.join(d, f) for d in audio.SOUNDFONT_FOLDERS if os.path.isdir(d) for f in sorted(os.listdir(d))
             if f.endswith((".sf2", ".sf3"))]
    if not fonts:
        pytest.skip("no SoundFont on this machine (apt-get install timgm6mb-soundfont)")
    samples, voice = audio.render(score_of([(0, 2, 69, 90)]), fonts[0])
    if "failed" in voice:
        pytest.skip(f"symusic cannot render a SoundFont here: {voice}")
    assert voice.startswith("SoundFont") and np.abs(samples.astype(int)).max() > 1000
    assert len(samples) / audio.SAMPLE_RATE >= 1.0, "as long as its MIDI at least"
    assert audio.find_soundfont("/x/given.sf2") == "/x/given.sf2" and audio.find_soundfont("builtin") is None


def test_an_unusable_soundfont_falls_back_to_the_built_in_voice(tmp_path):
    bad = tmp_path / "bad.sf2"
    bad.write_bytes(b"not a soundfont")
    samples, voice = audio.render(score_of([(0, 1, 60, 80)]), str(bad))
    assert "built-in piano" in voice and "failed" in voice and samples.any()


class Page(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.links, self.entries = [], 0

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag in ("img", "audio") and "src" in attrs:
            self.links.append(attrs["src"])
        if tag == "a":
            self.links.append(attrs["href"])
        if tag == "div" and attrs.get("class") == "entry":
            self.entries += 1


def test_samples_come_with_audio_and_a_gallery_of_two_runs(tiny_checkpoint, tmp_path, capsys):
    import sample
    from urllib.parse import unquote

    out = tmp_path / "samples"
    common = ["--ckpt", str(tiny_checkpoint), "--max_new_tokens", "60", "--out_dir", str(out), "--soundfont", "builtin"]
    sample.main([*common, "--composer_id", "1", "--guidance", "0,1,3"])
    sample.main([*common, "--composer_id", "2", "--seed", "3"])
    assert "built-in piano" in capsys.readouterr().out
    stems = sorted(name[:-4] for name in os.listdir(out) if name.endswith(".mid"))
    assert len(stems) == 4 and any(s.endswith("_g0") for s in stems) and any(s.endswith("_g3") for s in stems)
    for stem in stems:
        meta = json.load(open(out / f"{stem}.json"))
        with wave.open(str(out / f"{stem}.wav")) as w:
            seconds = w.getnframes() / w.getframerate()
        assert meta["seconds"] - 0.05 <= seconds <= meta["seconds"] + 0.5 + audio.RELEASE_S
    page = Page()
    page.feed((out / "index.html").read_text())
    assert page.entries == 4
    assert all(os.path.exists(out / unquote(link)) for link in page.links) and len(page.links) >= 4 * 5
    sample.main([*common, "--composer_id", "1", "--no-audio", "--name", "quiet"])
    assert not (out / "quiet.wav").exists() and (out / "quiet.mid").exists()


def test_render_plays_a_real_midi_file_through_the_same_voice(tmp_path, capsys):
    import sample

    path = tmp_path / "real.mid"
    score_of([(0, 1, 60, 80), (1, 1, 64, 80)]).dump_midi(str(path))
    sample.main(["--render", str(path), "--out_dir", str(tmp_path / "out")])
    assert (tmp_path / "out" / "real_real.wav").exists() and "real: real.mid" in (tmp_path / "out" / "index.html").read_text()
    with pytest.raises(SystemExit):
        sample.main(["--render", str(tmp_path / "missing.mid")])
    assert "cannot read --render" in capsys.readouterr().err


def test_a_render_that_cannot_be_written_is_one_line_and_leaves_nothing(tmp_path, capsys, monkeypatch):
    import errno

    import sample

    path = tmp_path / "real.mid"
    score_of([(0, 1, 60, 80), (1, 1, 64, 80)]).dump_midi(str(path))

    def full_disk(samples):
        raise OSError(errno.ENOSPC, "No space left on device", "real_real.wav")

    from pianogpt.output import outputs

    monkeypatch.setattr(outputs, "wav_bytes", full_disk)
    with pytest.raises(SystemExit) as stop:
        sample.main(["--render", str(path), "--out_dir", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "No space left on device" in err and "Traceback" not in err
    assert not any(p.name.startswith("real_real") for p in (tmp_path / "out").iterdir())


def test_png_bytes_round_trip_every_pixel():
    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    assert np.array_equal(decode_png(png_bytes(rgb)), rgb)


def test_training_writes_a_curves_png_that_decodes(tiny_dataset, tmp_path):
    from train import train

    train(tiny_train_config(tiny_dataset, tmp_path, max_iters=6, eval_interval=3, eval_iters=1))
    pixels = decode_png((tmp_path / "curves.png").read_bytes())
    assert pixels.shape[1] > 1000 and pixels.shape[0] > 200
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 3, "coloured lines and labels, not a blank image"


def test_a_chart_draws_each_series_where_its_values_are():
    from pianogpt.output.pictures import COLOURS

    image = chart([("A", [0, 1, 2], [3.0, 2.0, 1.0]), ("B", [0, 1, 2], [1.0, 2.0, float("nan")])], "T", "X")
    assert image.shape == (300, 520, 3)
    plot = image[34:260, 72:490]  # inside the axes, left of the legend (at x >= 496)
    for colour, falls in ((COLOURS[0], True), (COLOURS[1], False)):
        rows, cols = np.nonzero((plot == colour).all(axis=-1))
        assert len(cols) > 100, "each series is drawn as a line, not a dot"
        left, right = rows[cols < cols.min() + 10].mean(), rows[cols > cols.max() - 10].mean()
        assert (left < right) == falls  # A falls from 3 to 1 (down the image), B rises from 1 to 2
    b_cols = np.nonzero((plot == COLOURS[1]).all(axis=-1))[1]
    a_cols = np.nonzero((plot == COLOURS[0]).all(axis=-1))[1]
    assert b_cols.max() < a_cols.max() - 100  # B's NaN point is left out: its line stops at x = 1
