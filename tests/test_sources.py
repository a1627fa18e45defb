"""Composers, not sources: a source held out whole, identification on it, fingerprint probes."""
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

    from pianogpt.data.dataset import open_dataset

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


@pytest.fixture(scope="module")
def encoded_piece():
    from pianogpt.data.remi import build_tokenizer, encode_score

    tokenizer = build_tokenizer()
    return tokenizer, np.asarray(encode_score(tokenizer, make_score(seed=7, n_bars=16))[0], np.int64)


def test_each_probe_removes_its_habit_and_keeps_the_grammar(encoded_piece):
    from pianogpt.measures.probes import Probes
    from pianogpt.data.remi import grammar_error_rate

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
    from evaluate import evaluate, EvalOptions
    from pianogpt.measures.report import print_report
    from train import train

    train(tiny_train_config(held_out_dataset, tmp_path / "run", block_size=64, max_iters=6))
    results = evaluate(tmp_path / "run" / "ckpt.pt", EvalOptions(samples_per_composer=0, min_train_pieces=1, max_windows=1,
                       num_windows=4, probes=("flat_velocity",)))
    held = results["heldout_pieces"]
    assert held["sources"] == ["recitals"] and held["works"] == 5 and held["pieces"] == 5
    assert held["identification"]["pieces"] == 5 and "performed" in held["by_kind"]
    assert set(results["probes"]["flat_velocity"]) == {"val", "heldout"}
    by_tokens = held["identification_by_tokens"]  # one scoring pass gives both sums
    assert list(by_tokens) == ["all", "notes"] and by_tokens["all"] == held["identification"]
    notes_first = evaluate(tmp_path / "run" / "ckpt.pt", EvalOptions(samples_per_composer=0, min_train_pieces=1, max_windows=1,
                           num_windows=4, score_tokens="notes"))["heldout_pieces"]
    assert notes_first["identification"] == by_tokens["notes"]
    assert notes_first["tokens_scored"] < held["tokens_scored"]
    print_report(results)
    report = capsys.readouterr().out
    assert report.index("CROSS-SOURCE") < report.index("val pieces:")
    assert "fingerprint probes" in report and "flat_velocity" in report


def test_scoring_the_notes_only_splits_a_piece_score_in_two(encoded_piece):
    import torch

    from conftest import tiny_model
    from pianogpt.measures.scoring import counted_tokens, score_under, scored_span, tokens_scored

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
