"""Tempo-map restyling (pianogpt/tempomaps.py): the other archive's tempo map, the same notes."""
import numpy as np
import pytest

from conftest import make_score, tiny_train_config


@pytest.fixture(scope="module")
def tokenizer():
    from pianogpt.remi import build_tokenizer

    return build_tokenizer()


def encoded(tokenizer, score):
    from pianogpt.remi import encode_score

    return np.asarray(encode_score(tokenizer, score)[0], np.int64)


def dense_map_score():
    """make_score with a tempo on every beat, as a hand-shaped rubato writes it."""
    from symusic import Tempo

    score = make_score(seed=3, n_bars=8, with_changes=False)
    score.tempos.clear()
    for beat in range(8 * 4):
        score.tempos.append(Tempo(beat * score.tpq, 100.0 + 14.0 * (beat % 2)))
    return score


def notes_in_ticks(tokenizer, ids):
    score = tokenizer.decode([ids.tolist()])
    notes = score.tracks[0].notes.numpy()
    return sorted(zip(notes["time"].tolist(), notes["pitch"].tolist(), notes["duration"].tolist(),
                      notes["velocity"].tolist()))


def tempo_count(tokenizer, ids):
    tempos = {i for name, i in tokenizer.vocab.items() if name.startswith("Tempo_")}
    return sum(int(i) in tempos for i in ids)


def test_a_sparse_map_gets_a_drifting_tempo_and_keeps_every_note(tokenizer):
    from pianogpt.remi import grammar_error_rate
    from pianogpt.tempomaps import TempoMapStyle

    ids = encoded(tokenizer, make_score(seed=5, n_bars=16, with_changes=False))
    style = TempoMapStyle(tokenizer.vocab)
    assert tempo_count(tokenizer, ids) == 1 and not style.is_dense(ids)
    out = style.restyled(ids, np.random.default_rng(0))
    assert tempo_count(tokenizer, out) >= 8  # a tempo every other bar at least, over 16 bars
    assert grammar_error_rate(tokenizer, out) == 0.0
    assert notes_in_ticks(tokenizer, out) == notes_in_ticks(tokenizer, ids)  # onsets, pitches, durations, velocities
    tempo = np.isin(out, style.tempo_ids)
    assert (out[~tempo] == ids[~np.isin(ids, style.tempo_ids)]).all()  # only Tempo tokens were added
    assert np.isin(out[np.flatnonzero(tempo) - 1], style.position_ids).all()  # each right after a Position


def test_a_dense_map_keeps_one_tempo_and_every_note(tokenizer):
    from pianogpt.remi import grammar_error_rate
    from pianogpt.tempomaps import TempoMapStyle

    ids = encoded(tokenizer, dense_map_score())
    style = TempoMapStyle(tokenizer.vocab)
    assert tempo_count(tokenizer, ids) > 16 and style.is_dense(ids)
    out = style.restyled(ids, np.random.default_rng(0))
    assert tempo_count(tokenizer, out) == 1
    assert grammar_error_rate(tokenizer, out) == 0.0
    assert notes_in_ticks(tokenizer, out) == notes_in_ticks(tokenizer, ids)


def test_training_restyles_only_sequenced_windows_and_only_when_asked(tiny_dataset):
    from pianogpt.dataset import WindowSampler, open_dataset

    sampler = WindowSampler(open_dataset(tiny_dataset), "train", 256)
    pieces = np.arange(len(sampler))
    plain = sampler.batch(pieces, np.random.default_rng(1))
    assert all((a == b).all() for a, b in zip(plain, sampler.batch(pieces, np.random.default_rng(1), 0.0, 0.0, 0.0)))
    restyled = sampler.batch(pieces, np.random.default_rng(1), 0.0, 0.0, 1.0)
    is_tempo = np.isin(restyled[0].numpy(), sampler.tempo_maps.tempo_ids).sum(1)
    was_tempo = np.isin(plain[0].numpy(), sampler.tempo_maps.tempo_ids).sum(1)
    assert (is_tempo > was_tempo).all()  # every window is sequenced here: each got a drifting map
    sampler.kinds = np.full_like(sampler.kinds, 2)  # as if every piece were a performance
    performed = sampler.batch(pieces, np.random.default_rng(1), 0.0, 0.0, 1.0)
    assert (np.isin(performed[0].numpy(), sampler.tempo_maps.tempo_ids).sum(1) <= was_tempo.max()).all()


def test_tempo_map_share_outside_0_1_is_a_one_line_error(tiny_dataset, tmp_path):
    from pianogpt.cli import CliError

    with pytest.raises(CliError, match=r"tempo_map_share must be in \[0, 1\)"):
        tiny_train_config(tiny_dataset, tmp_path, tempo_map_share=1.5).validate()
