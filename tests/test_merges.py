"""Learned merges over REMI (prepare.py --merges): the vocabulary, the round trip, the grammar mask
over merged tokens, and every program on merged data."""
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import make_score, tiny_train_config, write_midi
from pianogpt.cli import CliError
from pianogpt.data.dataset import open_dataset
from pianogpt.data.merges import base_parts, full_vocab, has_merges, learn_merges, merge, unmerge
from pianogpt.data.remi import (CHORD_LIMIT, RemiGrammar, build_tokenizer, encode_score, grammar_error_rate,
                           guidance_types, note_match)
from pianogpt.generation.engine import generate

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "midi" / "piano-midi"


def split_pieces(data_dir, split):
    dataset = open_dataset(data_dir)
    tokens, index = dataset.splits[split].tokens, dataset.splits[split].index
    return dataset.tokenizer, [np.asarray(tokens[o:o + n], dtype=np.int64) for o, n, _ in index]


def test_merges_are_learned_on_the_training_split_alone_and_keep_the_base_ids(tiny_dataset, tiny_merged_dataset):
    tokenizer, train = split_pieces(tiny_merged_dataset, "train")
    assert has_merges(tokenizer) and 419 < len(tokenizer) <= 700
    assert open_dataset(tiny_merged_dataset).meta["vocab_size"] == len(tokenizer)
    assert tokenizer.vocab == build_tokenizer().vocab, "base ids keep their numbers (PAD 0, BOS 1, Pitch 3..90)"
    base_train = [unmerge(tokenizer, ids) for ids in train]
    _, plain_train = split_pieces(tiny_dataset, "train")
    assert all(np.array_equal(a, b) for a, b in zip(base_train, plain_train)), "merged tokens unmerge to plain REMI"
    again = build_tokenizer()
    learn_merges(again, plain_train, 700)
    assert full_vocab(again) == full_vocab(tokenizer), "the training split alone decides the merges"
    assert sum(map(len, train)) < 0.8 * sum(map(len, plain_train))


def test_without_merges_the_dataset_is_the_designs_419_tokens(tiny_dataset):
    tokenizer, _ = split_pieces(tiny_dataset, "train")
    assert not has_merges(tokenizer) and len(tokenizer) == 419 and full_vocab(tokenizer) == tokenizer.vocab


def test_no_merged_token_holds_a_bar_a_time_signature_or_a_rest(tiny_merged_dataset):
    tokenizer, _ = split_pieces(tiny_merged_dataset, "train")
    names = {i: name for name, i in tokenizer.vocab.items()}
    merged = [run for run in base_parts(tokenizer) if len(run) > 1]
    assert merged and not any(names[b].split("_")[0] in ("Bar", "TimeSig", "Rest", "PAD", "BOS")
                              for run in merged for b in run)


def test_round_trip_midi_to_merged_tokens_to_midi_keeps_every_note(tiny_merged_dataset, tmp_path):
    from symusic import Score

    from pianogpt.data.remi import merge_piano_tracks

    tokenizer, _ = split_pieces(tiny_merged_dataset, "train")
    for seed in (1, 7):
        path = write_midi(str(tmp_path / f"p{seed}.mid"), make_score(seed=seed, n_bars=10, out_of_range=False))
        ids, reason = encode_score(tokenizer, Score(path))
        assert reason is None and int(ids.max()) >= 419, "the piece is written with merged tokens"
        matched, n_ref, n_dec = note_match(merge_piano_tracks(Score(path))[0], tokenizer.decode([ids.tolist()]))
        assert matched == n_ref == n_dec
        assert grammar_error_rate(tokenizer, ids) == 0.0


def base_acceptance(base_grammar, state, parts):
    """[V] bool: whether the base grammar takes each id's base tokens one after another from state."""
    width = max(map(len, parts))
    table = torch.zeros(len(parts), width, dtype=torch.long)  # PAD-padded: PAD leaves a state as it was
    for m, run in enumerate(parts):
        table[m, :len(run)] = torch.tensor(run)
    candidates = {key: value.expand(len(parts), *value.shape[1:]).clone() for key, value in state.items()}
    ok = torch.ones(len(parts), dtype=torch.bool)
    for k in range(width):
        column = table[:, k]
        ok &= base_grammar.allowed(candidates)[torch.arange(len(parts)), column] | ((column == 0) & (k > 0))
        base_grammar.advance(candidates, column)
    return ok


def check_mask_against_base_grammar(tokenizer, pieces, every=1):
    """At every `every`-th token of each merged piece: the merged mask allows exactly the ids whose base
    tokens the base grammar takes, and after each token both grammars are in the same state."""
    parts = base_parts(tokenizer)
    for limit in (None, CHORD_LIMIT):
        merged, base = RemiGrammar(tokenizer, chord_limit=limit), RemiGrammar(build_tokenizer(), chord_limit=limit)
        for ids in pieces:
            state, base_state = merged.start(1), base.start(1)
            for j, token in enumerate(ids.tolist()):
                if j % every == 0:
                    mask, truth = merged.allowed(state)[0], base_acceptance(base, base_state, parts)
                    assert not (mask & ~truth).any(), f"token {j}: allowed an invalid id"
                    assert not (~mask & truth).any(), f"token {j}: blocked a valid id"
                merged.advance(state, torch.tensor([token]))
                for b in parts[token]:
                    base.advance(base_state, torch.tensor([b]))
                assert all(torch.equal(state[key], base_state[key]) for key in state)


def test_the_mask_over_merged_tokens_is_the_base_grammar_token_by_token(tiny_merged_dataset):
    tokenizer, val = split_pieces(tiny_merged_dataset, "val")
    check_mask_against_base_grammar(tokenizer, [ids[:300] for ids in val[:2]], every=2)


@pytest.mark.skipif(not REAL.is_dir(), reason="needs the real MIDI in ../shared/midi/piano-midi")
def test_the_mask_over_merged_tokens_is_the_base_grammar_on_real_files():
    from symusic import Score

    files = sorted(REAL.rglob("*.mid"))
    tokenizer = build_tokenizer()
    train = [encode_score(tokenizer, Score(str(path)))[0] for path in files[:40:2]]
    learn_merges(tokenizer, train, 1200)
    held = [encode_score(tokenizer, Score(str(path)))[0].astype(np.int64)[:400] for path in files[1:40:20]]
    check_mask_against_base_grammar(tokenizer, held, every=3)


def test_a_rest_never_carries_time_past_the_bar_line():
    """REMI lets a rest cross bar lines without writing them; the mask does not, so the bars of a sample
    are its Bar tokens. A rest starts where the last note ends (miditok), so a long note counts too."""
    tok = build_tokenizer()
    grammar = RemiGrammar(tok)
    state = grammar.start(1)
    for token in ("Bar_None", "TimeSig_4/4", "Position_16", "Pitch_60", "Velocity_63", "Duration_1.0.8"):
        grammar.advance(state, torch.tensor([tok.vocab[token]]))
    allowed = grammar.allowed(state)[0]
    ok = lambda token: bool(allowed[tok.vocab[token]])  # noqa: E731
    assert ok("Rest_0.4.8") and not ok("Rest_1.0.4") and not ok("Rest_2.0.2"), "a note to beat 4, then up to half a beat"
    for token in ("Position_20", "Pitch_64", "Velocity_63", "Duration_2.0.8"):  # a note held to the bar line
        grammar.advance(state, torch.tensor([tok.vocab[token]]))
    allowed = grammar.allowed(state)[0]
    assert not allowed[[i for name, i in tok.vocab.items() if name.startswith("Rest_")]].any() and ok("Bar_None")


def test_a_constrained_sample_has_as_many_notated_bars_as_bar_tokens():
    """Rests made likely (as a model of sparse music would): every onset still falls inside the bars
    the sample's Bar tokens open."""
    from model import ModelConfig, MusicTransformer

    tok = build_tokenizer()
    torch.manual_seed(0)
    model = MusicTransformer(ModelConfig(block_size=128, vocab_size=419, n_composers=2, n_layer=1, n_head=2,
                                         n_embd=32, dropout=0.0))
    names = sorted(tok.vocab, key=tok.vocab.get)
    likely = (4.0 * torch.tensor([name.startswith("Rest_") for name in names])  # rests, and notes short enough
              + 8.0 * torch.tensor([name == "Duration_0.1.8" for name in names]))  # to leave room for them
    grammar = RemiGrammar(tok, chord_limit=CHORD_LIMIT)
    prompt, composer = torch.ones(4, 1, dtype=torch.long), torch.ones(4, dtype=torch.long)
    out = generate(model, prompt, composer, 400, temperature=1.0, top_k=None, top_p=1.0,
                         logits_processor=lambda seq, logits: grammar(seq, logits + likely),
                         generator=torch.Generator().manual_seed(0))
    assert sum(tok[i].startswith("Rest_") for i in out.flatten().tolist()) >= 20
    for row in out.tolist():
        ids = [t for t in row if t > 1]
        bars = ids.count(tok.vocab["Bar_None"])
        onsets = [n.time for track in tok.decode([ids]).tracks for n in track.notes]
        assert bars and onsets
        assert max(onsets) < bar_end_tick(tok.decode([ids]), bars), "a rest carried the music past a bar line"


def bar_end_tick(score, bars):
    """The tick where `bars` bars of the score's time signatures end."""
    signatures = sorted((int(t.time), t.numerator, t.denominator) for t in score.time_signatures) or [(0, 4, 4)]
    tick, k = 0, 0
    for _ in range(bars):
        while k + 1 < len(signatures) and signatures[k + 1][0] <= tick:
            k += 1
        tick += signatures[k][1] * score.tpq * 4 // signatures[k][2]
    return tick


def test_guidance_types_cover_every_merged_id_by_the_run_of_its_types(tiny_merged_dataset):
    tokenizer, _ = split_pieces(tiny_merged_dataset, "train")
    types = guidance_types(tokenizer, "within_types")
    assert len(types) == len(tokenizer)
    vocab = full_vocab(tokenizer)
    pair = next(name for name in vocab if name.startswith("Velocity_") and "+Duration_" in name and name.count("+") == 1)
    other = next(name for name in vocab if name.startswith("Velocity_") and "+Duration_" in name and name != pair
                 and name.count("+") == 1)
    assert types[vocab[pair]] == types[vocab[other]] != types[vocab["Velocity_63"]]


def test_resume_is_exact_with_merges(tiny_merged_dataset, tmp_path, monkeypatch):
    import signal

    from pianogpt.cli import StopAtSafePoint, Stopped
    from train import train

    def losses(out):
        return {r["iter"]: r["loss"] for r in (json.loads(line) for line in open(out / "log.jsonl")) if "loss" in r}

    full, part = tmp_path / "full", tmp_path / "part"
    train(tiny_train_config(tiny_merged_dataset, full))
    steps = iter(range(1000))
    with monkeypatch.context() as patch:
        patch.setattr(StopAtSafePoint, "asked", lambda self: signal.SIGINT if next(steps) == 4 else 0)
        with pytest.raises(Stopped):
            train(tiny_train_config(tiny_merged_dataset, part))
    train(tiny_train_config(tiny_merged_dataset, part, init_from="resume"))
    a, b = losses(full), losses(part)
    assert set(a) == set(b) == set(range(8)) and all(abs(a[it] - b[it]) <= 1e-6 for it in range(4, 8))
    assert torch.load(full / "ckpt.pt", weights_only=True)["model_config"]["vocab_size"] == len(
        open_dataset(tiny_merged_dataset).tokenizer)


def test_sample_bars_and_infill_on_merged_tokens(tiny_merged_checkpoint, tmp_path):
    from symusic import Score

    import sample

    sample.main(["--ckpt", str(tiny_merged_checkpoint), "--composer_id", "2", "--bars", "6", "--no-audio",
                 "--out_dir", str(tmp_path / "plain")])
    info = json.loads(next((tmp_path / "plain").glob("*.json")).read_text())
    checkpoint = torch.load(tiny_merged_checkpoint, weights_only=True)
    from pianogpt.data.remi import tokenizer_from_json

    tokenizer = tokenizer_from_json(checkpoint["tokenizer"])
    assert info["token_ids"].count(tokenizer.vocab["Bar_None"]) == 6 and info["bars"] == 6
    assert grammar_error_rate(tokenizer, info["token_ids"]) == 0.0
    piece = write_midi(str(tmp_path / "mine.mid"), make_score(seed=3, n_bars=12))
    sample.main(["--ckpt", str(tiny_merged_checkpoint), "--infill", piece, "--bars", "5-6", "--composer_id", "1",
                 "--out_dir", str(tmp_path / "infill"), "--no-audio"])
    filled = next((tmp_path / "infill").glob("mine_bars5-6_*.mid"))
    assert len(Score(str(filled)).tracks[0].notes) > 0


def test_evaluate_reads_likelihood_per_note_and_probes_merged_pieces(tiny_merged_checkpoint, tmp_path):
    import evaluate

    evaluate.main(["--ckpt", str(tiny_merged_checkpoint), "--samples_per_composer", "0", "--max_windows", "1",
                   "--probes", "flat_velocity,transposed_+1", "--json", str(tmp_path / "eval.json")])
    report = json.loads((tmp_path / "eval.json").read_text())
    assert report["notes_per_token"] > 0 and report["nll_per_note"]["true"] > report["nll"]["true"]
    assert set(report["probes"]) == {"flat_velocity", "transposed_+1"}


def test_a_fine_tune_keeps_the_base_models_merges(tiny_merged_checkpoint, tmp_path):
    from prepare import prepare
    from train import train

    for i in range(3):
        write_midi(str(tmp_path / "midi" / "Satie" / f"s{i}.mid"), make_score(seed=900 + i, n_bars=12))
    plain = tmp_path / "plain"
    prepare(tmp_path / "midi", plain, workers=1, isolate=False, val_fraction=0.34)
    with pytest.raises(CliError, match="--merges_from"):
        train(tiny_train_config(plain, tmp_path / "bad", init_from=str(tiny_merged_checkpoint), max_iters=2))
    same = tmp_path / "same"
    prepare(tmp_path / "midi", same, workers=1, isolate=False, val_fraction=0.34, merges_from=str(tiny_merged_checkpoint))
    assert full_vocab(open_dataset(same).tokenizer) == full_vocab(split_pieces(
        Path(torch.load(tiny_merged_checkpoint, weights_only=True)["train_config"]["data_dir"]), "train")[0])
    train(tiny_train_config(same, tmp_path / "tuned", init_from=str(tiny_merged_checkpoint), max_iters=2,
                            eval_interval=2))
    assert (tmp_path / "tuned" / "ckpt.pt").exists()


@pytest.mark.parametrize("flags, message", [
    (["--merges", "300"], "must be larger than the 419 base tokens"),
    (["--merges", "70000"], "at most 65536"),
    (["--merges", "800", "--merges_from", "x"], "not both"),
    (["--merges_from", "/nowhere/ckpt.pt"], "no tokenizer can be read there"),
])
def test_bad_merges_flags_are_one_line_errors(folder_corpus, tmp_path, flags, message, capsys):
    import prepare

    with pytest.raises(SystemExit) as stop:
        prepare.main(["--midi_dir", str(folder_corpus), "--out_dir", str(tmp_path / "out"), "--workers", "1", *flags])
    assert stop.value.code != 0
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not os.path.exists(tmp_path / "out")
