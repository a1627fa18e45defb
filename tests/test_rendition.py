"""A written score played back as a performance: each step keeps its promise, and prepare.py adds
the renditions to training only."""
import json

import numpy as np

from conftest import make_score, write_midi


def merged(seed=3, n_bars=24):
    from pianogpt.data.remi import merge_piano_tracks

    return merge_piano_tracks(make_score(seed=seed, n_bars=n_bars))[0]


def test_the_clock_drifts_but_never_runs_backwards():
    from pianogpt.data.rendition import drifting_clock

    times = np.linspace(0, 300, 30001)
    swings = []
    for seed in range(20):
        warped = drifting_clock(np.random.default_rng(seed))(times)
        assert np.all(np.diff(warped) > 0)
        pace = np.diff(warped) / np.diff(times)
        assert 0.85 * 0.88 - 1e-6 <= pace.min() and pace.max() <= 1.15 * 1.12 + 1e-6
        swings.append(pace.max() - pace.min())
    assert np.median(swings) > 0.05  # not one constant tempo


def test_rolled_chords_start_from_the_bottom_and_single_notes_stay_close():
    from pianogpt.data.rendition import played_onsets

    onset = np.array([0.0, 0.0, 0.0, 1.0, 2.0])
    pitch = np.array([72, 48, 60, 65, 67])
    rolled = played_onsets(onset, pitch, np.random.default_rng(0), jitter_s=0.0, roll_share=1.0, roll_s=(0.03, 0.03))
    assert rolled[1] < rolled[2] < rolled[0]  # 48, then 60, then 72
    assert np.allclose(rolled[3:], [1.0, 2.0])
    jittered = played_onsets(onset, pitch, np.random.default_rng(1), jitter_s=0.01, roll_share=0.0)
    assert 0 < np.abs(jittered - onset).max() < 0.06


def test_a_note_released_under_the_pedal_sounds_until_it_lifts():
    from pianogpt.data.rendition import pedalled_ends

    onset, end = np.arange(50) * 0.5, np.arange(50) * 0.5 + 0.1
    dry = pedalled_ends(onset, end, np.random.default_rng(0), articulation=(1, 1), pedal_share=(0, 0))
    assert np.allclose(dry, end)
    wet = pedalled_ends(onset, end, np.random.default_rng(0), articulation=(1, 1), pedal_share=(1, 1))
    assert np.all(wet >= end) and (wet - end).mean() > 0.2


def test_flat_dynamics_are_struck_with_contour_and_stay_in_range():
    from pianogpt.data.rendition import struck_velocities

    onset = np.repeat(np.arange(100) * 0.25, 3)
    pitch = np.tile([48, 55, 64], 100)
    velocity = struck_velocities(np.full(300, 64.0), onset, pitch, np.random.default_rng(0))
    assert velocity.min() >= 1 and velocity.max() <= 127
    assert velocity.std() > 3
    assert velocity[2::3].mean() > velocity[0::3].mean()  # the top of each chord is brought out


def test_a_rendition_reads_as_a_performance_of_the_same_notes():
    from pianogpt.data.remi import piece_kind
    from pianogpt.data.rendition import performed_rendition

    score = merged()
    rendition = performed_rendition(score, seed=7)
    assert piece_kind(score)[0] == "sequenced" and piece_kind(rendition)[0] == "performed"
    assert [t.qpm for t in rendition.tempos] == [120.0]
    assert sorted(rendition.tracks[0].notes.numpy()["pitch"]) == sorted(score.tracks[0].notes.numpy()["pitch"])
    again = performed_rendition(score, seed=7).tracks[0].notes.numpy()
    other = performed_rendition(score, seed=8).tracks[0].notes.numpy()
    assert np.array_equal(again["time"], rendition.tracks[0].notes.numpy()["time"])
    assert not np.array_equal(other["time"], again["time"])


def test_prepare_adds_renditions_to_training_only(tmp_path):
    from prepare import prepare

    root = tmp_path / "midi"
    for c, composer in enumerate(["Bach", "Chopin"]):
        for i in range(4):
            write_midi(str(root / composer / f"p{i}.mid"), make_score(seed=20 * c + i))
    plain = prepare(root, tmp_path / "plain", workers=1, isolate=False, val_fraction=0.3)
    meta = prepare(root, tmp_path / "rendered", workers=1, isolate=False, val_fraction=0.3, renditions=1)
    rows = [json.loads(line) for line in open(tmp_path / "rendered" / "pieces.jsonl")]
    copies = [r for r in rows if "rendition_of" in r]
    sources = {r["path"]: r for r in rows if "rendition_of" not in r}
    assert len(copies) == plain["n_pieces"]["train"] > 0
    for copy in copies:
        assert copy["split"] == "train" and copy["kind"] == "performed"
        assert sources[copy["rendition_of"]]["split"] == "train"
        assert copy["composer_id"] == sources[copy["rendition_of"]]["composer_id"]
    assert meta["n_tokens"]["val"] == plain["n_tokens"]["val"]
    assert (tmp_path / "rendered" / "val.bin").read_bytes() == (tmp_path / "plain" / "val.bin").read_bytes()
