"""Composers, not sources: a source held out whole, habit augmentation, fingerprint probes."""
import json

import numpy as np
import pytest

from conftest import make_score, performed, tiny_train_config, write_midi


def pieces_of(data_dir):
    return [json.loads(line) for line in open(data_dir / "pieces.jsonl")]


@pytest.fixture(scope="module")
def two_sources(tmp_path_factory):
    """archive/: scores by Bach and Chopin; recitals/: performances, one of them of archive's
    Bach/s0 (the same work in another source), the others of works of their own."""
    root = tmp_path_factory.mktemp("sources")
    for c, composer in enumerate(["Bach", "Chopin"]):
        for i in range(5):
            write_midi(str(root / "archive" / composer / f"s{i}.mid"), make_score(seed=40 * c + i, n_bars=24,
                                                                                  with_changes=False))
    write_midi(str(root / "recitals" / "Bach" / "S0__one.mid"),
               performed(make_score(seed=0, n_bars=24, with_changes=False), seed=1))
    for c, composer in enumerate(["Bach", "Chopin"]):
        for i in range(2):
            write_midi(str(root / "recitals" / composer / f"W{i}__two.mid"),
                       performed(make_score(seed=500 + 10 * c + i, n_bars=24, with_changes=False), seed=i))
    return root


@pytest.fixture(scope="module")
def held_out_dataset(two_sources, tmp_path_factory):
    from prepare import prepare

    out = tmp_path_factory.mktemp("heldout") / "data"
    prepare([two_sources / "archive", two_sources / "recitals"], out, workers=1, isolate=False, val_fraction=0.2,
            renditions=1, holdout=["recitals"])
    return out


def test_a_held_out_source_and_its_works_train_nowhere(held_out_dataset):
    rows = pieces_of(held_out_dataset)
    split_of = {r["path"]: r["split"] for r in rows}
    assert {p: s for p, s in split_of.items() if p.startswith("recitals/")} == {
        "recitals/Bach/S0__one.mid": "heldout", "recitals/Bach/W0__two.mid": "heldout",
        "recitals/Bach/W1__two.mid": "heldout", "recitals/Chopin/W0__two.mid": "heldout",
        "recitals/Chopin/W1__two.mid": "heldout"}
    assert split_of["archive/Bach/s0.mid"] == "val"  # the score of a work the held-out source plays
    assert not any(r.get("rendition_of", "").startswith("recitals/") or r.get("rendition_of") == "archive/Bach/s0.mid"
                   for r in rows)
    assert any(s == "train" for s in split_of.values())
    meta = json.loads((held_out_dataset / "meta.json").read_text())
    assert meta["heldout_sources"] == ["recitals"] and meta["n_pieces"]["heldout"] == 5
    assert meta["pieces_moved_to_val_as_heldout_works"] >= 1


def test_holdout_must_name_one_of_the_folders_and_leave_one(two_sources, tmp_path):
    from pianogpt.cli import CliError
    from prepare import prepare

    folders = [two_sources / "archive", two_sources / "recitals"]
    with pytest.raises(CliError, match="choose from archive, recitals"):
        prepare(folders, tmp_path / "a", workers=1, isolate=False, holdout=["recital"])
    with pytest.raises(CliError, match="nothing is left to train on"):
        prepare(folders, tmp_path / "b", workers=1, isolate=False, holdout=["archive", str(two_sources / "recitals")])
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_a_dataset_prepared_before_heldout_opens_with_an_empty_heldout(tiny_dataset, tmp_path):
    import shutil

    from pianogpt.dataset import open_dataset

    old = tmp_path / "old"
    shutil.copytree(tiny_dataset, old)
    meta = json.loads((old / "meta.json").read_text())
    for key in ("n_pieces", "n_tokens", "n_pieces_by_kind"):
        meta[key].pop("heldout")
    (old / "meta.json").write_text(json.dumps(meta))
    for name in ("heldout.bin", "heldout.idx.npy"):
        (old / name).unlink()
    dataset = open_dataset(old)
    assert len(dataset.splits["heldout"]) == 0 and len(dataset.splits["train"]) > 0


def types_of(vocab, ids):
    inverse = {i: name.split("_")[0] for name, i in vocab.items()}
    return np.array([inverse[int(i)] for i in ids.ravel()]).reshape(ids.shape)


def test_habit_augmentation_keeps_the_notes_and_randomises_the_habits(tiny_dataset):
    from pianogpt.dataset import WindowSampler, open_dataset

    dataset = open_dataset(tiny_dataset)
    # windows longer than any piece start at its first token, whatever the random stream
    sampler, vocab = WindowSampler(dataset, "train", 4096), dataset.tokenizer.vocab
    pieces = np.arange(len(sampler)).repeat(4)
    plain = sampler.batch(pieces, np.random.default_rng(3))[0].numpy()
    augmented = sampler.batch(pieces, np.random.default_rng(3), habits=(1.0, 1.0, 1.0))[0].numpy()
    types = types_of(vocab, plain)
    aug_types = types_of(vocab, augmented)
    for w in range(len(plain)):  # the same notes in the same order, whatever else changed
        assert (augmented[w][aug_types[w] == "Pitch"] == plain[w][types[w] == "Pitch"]).all()
        assert (augmented[w][aug_types[w] == "Position"] == plain[w][types[w] == "Position"]).all() or \
            (aug_types[w] == "Tempo").sum() <= 1  # an onset that held only a tempo change may go with it
    for habit in ("Velocity", "Tempo", "Duration"):
        changed = [(aug_types[w] == habit).sum() != (types[w] == habit).sum() or
                   (augmented[w][aug_types[w] == habit] != plain[w][types[w] == habit]).any() for w in range(len(plain))]
        assert np.mean(changed) > 0.5, habit
    both = sampler.batch(pieces, np.random.default_rng(3), habits=(1.0, 0.0, 1.0))[0].numpy()
    assert (types_of(vocab, both) == types).all()  # velocities and durations: every token keeps its type
    kept = ~np.isin(types, ["Velocity", "Duration"])
    assert (both[kept] == plain[kept]).all()  # pitches, positions, bars, rests and tempos are untouched
    one = sampler.batch(pieces, np.random.default_rng(3), habits=(0.0, 1.0, 0.0))[0].numpy()
    one_types = types_of(vocab, one)
    assert ((one_types == "Tempo").sum(1) <= np.maximum(1, (types == "Tempo").sum(1))).all()
    assert any((one_types[w] == "Tempo").sum() < (types[w] == "Tempo").sum() for w in range(len(plain)))


def test_no_augmentation_draws_no_random_number(tiny_dataset):
    from pianogpt.dataset import WindowSampler, open_dataset

    sampler = WindowSampler(open_dataset(tiny_dataset), "train", 64)
    a, b = np.random.default_rng(5), np.random.default_rng(5)
    sampler.batch(np.arange(len(sampler)), a)
    sampler.batch(np.arange(len(sampler)), b, habits=(0.0, 0.0, 0.0))
    assert a.random() == b.random()


def test_train_config_refuses_an_augmentation_chance_outside_0_1(tmp_path):
    from pianogpt.cli import CliError

    with pytest.raises(CliError, match="augment_tempo must be in"):
        tiny_train_config(tmp_path, tmp_path / "out", augment_tempo=1.5).validate()


@pytest.fixture(scope="module")
def encoded_piece():
    from pianogpt.remi import build_tokenizer, encode_score

    tokenizer = build_tokenizer()
    return tokenizer, np.asarray(encode_score(tokenizer, make_score(seed=7, n_bars=16))[0], np.int64)


def test_each_probe_removes_its_habit_and_keeps_the_grammar(encoded_piece):
    from pianogpt.probes import Probes
    from pianogpt.remi import grammar_error_rate

    tokenizer, ids = encoded_piece
    vocab, probes = tokenizer.vocab, Probes(tokenizer.vocab)
    types = types_of(vocab, ids)
    for name in Probes.PROBES:
        out = probes.apply(name, ids)
        assert grammar_error_rate(tokenizer, out) == 0.0, name
        assert (types_of(vocab, out) == "Pitch").sum() == (types == "Pitch").sum(), name  # no note is lost
    flat = probes.apply("flat_velocity", ids)
    assert len(set(flat[types == "Velocity"].tolist())) == 1 and (flat[types != "Velocity"] == ids[types != "Velocity"]).all()
    one_tempo = probes.apply("no_tempo_changes", ids)
    assert (types_of(vocab, one_tempo) == "Tempo").sum() == 1 < (types == "Tempo").sum()
    grid = probes.apply("onsets_quarter_grid", ids)
    positions = {int(name.split("_")[1]) for name, i in vocab.items() if name.startswith("Position_") and i in set(grid)}
    assert positions and all(p % 8 == 0 for p in positions)
    up = probes.apply("transposed_+1", ids)
    assert ((up - ids)[types == "Pitch"] == 1).all()
    with pytest.raises(ValueError, match="choose from flat_velocity"):
        probes.apply("louder", ids)


def test_evaluate_reports_the_held_out_sources_and_the_probes(held_out_dataset, tmp_path, capsys):
    from evaluate import evaluate, print_report
    from train import train

    train(tiny_train_config(held_out_dataset, tmp_path / "run", block_size=64, max_iters=6))
    results = evaluate(tmp_path / "run" / "ckpt.pt", samples_per_composer=0, min_train_pieces=1, max_windows=1,
                       num_windows=4, probes=("flat_velocity",))
    held = results["heldout_pieces"]
    assert held["sources"] == ["recitals"] and held["works"] == 5 and held["pieces"] == 5
    assert held["identification"]["pieces"] == 5 and "performed" in held["by_kind"]
    assert set(results["probes"]["flat_velocity"]) == {"val", "heldout"}
    by_tokens = held["identification_by_tokens"]  # one scoring pass gives both sums
    assert list(by_tokens) == ["all", "notes"] and by_tokens["all"] == held["identification"]
    notes_first = evaluate(tmp_path / "run" / "ckpt.pt", samples_per_composer=0, min_train_pieces=1, max_windows=1,
                           num_windows=4, score_tokens="notes")["heldout_pieces"]
    assert notes_first["identification"] == by_tokens["notes"]
    assert notes_first["tokens_scored"] < held["tokens_scored"]
    print_report(results)
    report = capsys.readouterr().out
    assert report.index("CROSS-SOURCE") < report.index("val pieces:")
    assert "fingerprint probes" in report and "flat_velocity" in report


def test_scoring_the_notes_only_splits_a_piece_score_in_two(encoded_piece):
    import torch

    from conftest import tiny_model
    from evaluate import counted_tokens, score_under, scored_span, tokens_scored

    tokenizer, ids = encoded_piece
    model = tiny_model(block_size=64, vocab_size=len(tokenizer), n_composers=3)
    notes = counted_tokens(tokenizer.vocab, "notes")
    assert counted_tokens(tokenizer.vocab, "all") is None
    assert notes[tokenizer.vocab["Pitch_60"]] and notes[tokenizer.vocab["Position_0"]]
    assert not notes[tokenizer.vocab["Velocity_63"]] and not notes[tokenizer.vocab["Tempo_121.29"]]
    everything = score_under(model, [ids], [1, 2], bos_id=1, max_windows=2)
    on_notes = score_under(model, [ids], [1, 2], bos_id=1, max_windows=2, counted=notes)
    on_the_rest = score_under(model, [ids], [1, 2], bos_id=1, max_windows=2, counted=~notes)
    assert torch.allclose(everything, on_notes + on_the_rest, atol=1e-3)
    assert (on_notes > everything).all()  # fewer (negative) log-probabilities summed
    span = scored_span(64)
    assert tokens_scored(len(ids), span, 2, ids, notes) + tokens_scored(len(ids), span, 2, ids, ~notes) == \
        tokens_scored(len(ids), span, 2)


def test_a_transcriber_misses_soft_notes_and_adds_only_short_ghosts(encoded_piece):
    from symusic import Note

    from pianogpt.dataset import HabitAugmenter
    from pianogpt.remi import decode_sample, encode_score, notes_of

    tokenizer = encoded_piece[0]
    score, rng = make_score(seed=7, n_bars=32, with_changes=False, out_of_range=False), np.random.default_rng(1)
    for track in score.tracks:  # dynamics from pp to f
        a = track.notes.numpy()
        track.notes = Note.from_numpy(time=a["time"], duration=a["duration"], pitch=a["pitch"],
                                      velocity=rng.integers(20, 110, len(a["pitch"])).astype(np.int8))
    ids = np.asarray(encode_score(tokenizer, score)[0], np.int64)
    habits = HabitAugmenter(tokenizer.vocab)
    heard = habits.transcribed(np.random.default_rng(0), ids)
    before, after = (decode_sample(tokenizer, x) for x in (ids, heard))
    assert after[2] == 0.0  # the grammar holds
    notes = {key: notes_of(result[1].tracks) for key, result in (("before", before), ("after", after))}
    played = set(zip(notes["before"]["time"].tolist(), notes["before"]["pitch"].tolist()))
    heard_notes = list(zip(notes["after"]["time"].tolist(), notes["after"]["pitch"].tolist(),
                           notes["after"]["duration"].tolist(), notes["after"]["velocity"].tolist()))
    shortest = int(notes["after"]["duration"].min())
    ghosts = [(t, p) for t, p, d, v in heard_notes if (t, p) not in played]
    assert ghosts and all((t, p - 12) in played or (t, p + 12) in played for t, p in ghosts)
    assert all(d == shortest for t, p, d, v in heard_notes if (t, p) not in played)
    soft = notes["before"]["velocity"] < 48
    kept = {(t, p) for t, p, _, _ in heard_notes}
    kept_soft = np.mean([(t, p) in kept for t, p in zip(notes["before"]["time"][soft], notes["before"]["pitch"][soft])])
    kept_loud = np.mean([(t, p) in kept for t, p in zip(notes["before"]["time"][~soft], notes["before"]["pitch"][~soft])])
    assert kept_soft < 0.85 < 0.95 < kept_loud


def test_the_source_condition_changes_the_prediction_and_none_means_unknown():
    import torch

    from conftest import tiny_model

    model = tiny_model(block_size=16, n_layer=1, n_embd=16, n_sources=4)
    torch.nn.init.normal_(model.wse.weight, std=1.0)
    idx, composer = torch.randint(2, 64, (2, 10)), torch.tensor([1, 2])
    unknown, _ = model(idx, composer, all_logits=True)
    row_0, _ = model(idx, composer, all_logits=True, source=torch.zeros(2, dtype=torch.long))
    source_3, _ = model(idx, composer, all_logits=True, source=torch.full((2,), 3))
    assert torch.equal(unknown, row_0) and not torch.allclose(unknown, source_3)
    assert not hasattr(tiny_model(block_size=16, n_layer=1, n_embd=16), "wse")
    with pytest.raises(ValueError, match="n_sources must be 0"):
        tiny_model(n_sources=1)


def test_sources_are_told_by_folder_rendition_velocity_and_tempo(held_out_dataset):
    from pianogpt.dataset import open_dataset

    dataset = open_dataset(held_out_dataset)
    keys = dict(zip([p["path"] for p in dataset.pieces() if p["split"] == "train"], dataset.source_keys("train")))
    renditions = {path: key for path, key in keys.items() if "#performed" in path}
    assert renditions and all(key.startswith("archive|rendition|") for key in renditions.values())
    files = {path: key for path, key in keys.items() if "#performed" not in path}
    assert all(key.startswith("archive|file|dynamic|") for key in files.values())  # make_score's varied velocities
    heldout = dataset.source_keys("heldout")
    assert len(heldout) == 5 and all(key.startswith("recitals|file|dynamic|one") for key in heldout)  # one 120 bpm


def test_training_with_sources_drops_them_and_refuses_too_few_rows(held_out_dataset, tmp_path):
    from pianogpt.cli import CliError
    from train import Run, base_checkpoint, micro_batch, set_up_data, set_up_device, train

    train(tiny_train_config(held_out_dataset, tmp_path / "run", block_size=64, max_iters=4, n_sources=8))
    cfg = tiny_train_config(held_out_dataset, tmp_path / "run2", block_size=64, max_iters=4, n_sources=8,
                            source_drop=0.5, batch_size=400)
    run = Run(cfg)
    run.base = base_checkpoint(cfg)
    set_up_device(run)
    set_up_data(run)
    sources = micro_batch(run, 0, 0)[-1]
    known = run.train_data.source_ids[run.train_data.source_ids > 0]
    assert len(known) == len(run.train_data) and 0.35 < (sources == 0).float().mean() < 0.65
    assert set(sources.tolist()) - {0} <= set(known.tolist())
    with pytest.raises(CliError, match="n_sources=2 must be at least"):
        train(tiny_train_config(held_out_dataset, tmp_path / "run3", block_size=64, max_iters=4, n_sources=2))
