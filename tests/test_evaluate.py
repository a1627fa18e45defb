"""evaluate.py: metrics on cases with a known answer, and an end-to-end run."""
import math

import numpy as np
import pytest
import torch

from pianogpt.measures.copies import CopyFinder
from pianogpt.measures.ngram import NGram, unigram_entropy
from pianogpt.measures.samples import accuracy_on, adherence
from pianogpt.measures.scoring import bootstrap_mean, derangement, score_under, scored_span, tokens_scored, window_starts
from evaluate import evaluate, EvalOptions
from pianogpt.measures.identification import identification, identify_pieces
from pianogpt.measures.report import print_report
from pianogpt.measures.judge import Judge, note_features
from model import ModelConfig, MusicTransformer


def test_trigram_predicts_a_periodic_sequence_almost_perfectly():
    period = [5, 9, 2, 7, 7, 3, 11]
    seq = np.array(period * 300)
    tri, uni = NGram([seq], vocab_size=20, order=3), NGram([seq], vocab_size=20, order=1)
    test = np.array(period * 5)
    assert -tri.log_probs(test, start=2).mean() < 0.01
    # unigram: token frequencies 1/7 (2/7 for the repeated 7), add-one smoothing barely moves them
    expected = -np.mean([math.log(period.count(t) / 7) for t in period])
    assert abs(-uni.log_probs(test, start=2).mean() - expected) < 0.02


def test_witten_bell_probabilities_sum_to_one_in_every_context():
    rng = np.random.default_rng(0)
    model = NGram([rng.integers(0, 12, 500), rng.integers(0, 12, 300)], vocab_size=12, order=3)
    for context in ([3, 4], [0, 11], [7, 7]):
        total = sum(math.exp(model.log_probs(np.array(context + [w]))[-1]) for w in range(12))
        assert abs(total - 1) < 1e-9


def test_unigram_entropy_of_uniform_tokens_is_log_vocab():
    assert abs(unigram_entropy(np.tile(np.arange(16), 10), 16) - math.log(16)) < 1e-12
    assert unigram_entropy(np.zeros(50, dtype=int), 16) == 0


def test_derangement_always_names_a_different_real_composer():
    composer = torch.tensor([0, 1, 2, 3, 4, 5])
    wrong = derangement(composer, n_composers=6)
    assert wrong.tolist() == [0, 2, 3, 4, 5, 1]


def log_p_under_each_composer(model, samples, n_composers):
    """log p(sample | k) for k = 1..N-1 -> [S, N-1]; samples [S, T] start with BOS."""
    return score_under(model, [s[1:].numpy() for s in samples], range(1, n_composers), int(samples[0, 0])).float()


def test_adherence_of_a_model_that_ignores_the_composer_is_chance():
    torch.manual_seed(0)
    model = MusicTransformer(ModelConfig(block_size=32, vocab_size=30, n_composers=5, n_layer=1, n_head=2, n_embd=16,
                                         dropout=0.0)).eval()
    with torch.no_grad():
        model.wce.weight.zero_()  # every composer looks the same
    samples = torch.randint(2, 30, (8, 20))
    requested = [1, 2, 3, 4, 1, 2, 3, 4]
    assert adherence(log_p_under_each_composer(model, samples, 5), requested) == pytest.approx(0.25)
    with torch.no_grad():
        model.wce.weight.normal_(0, 1.0)
    scores = log_p_under_each_composer(model, samples, 5)
    perfect = [int(row.argmax()) + 1 for row in scores]
    assert adherence(scores, perfect) == 1.0


def test_samples_longer_than_the_context_are_scored_window_by_window():
    torch.manual_seed(0)
    model = MusicTransformer(ModelConfig(block_size=16, vocab_size=30, n_composers=3, n_layer=1, n_head=2, n_embd=16,
                                         dropout=0.0)).eval()
    sample = torch.cat([torch.ones(1, dtype=torch.long), torch.randint(2, 30, (40,))])
    scores = log_p_under_each_composer(model, sample.unsqueeze(0), 3)
    expected = torch.zeros(2)
    for start in range(0, 40, 15):
        window = torch.cat([sample[:1], sample[1 + start:1 + start + 15]]).unsqueeze(0)
        for k in (1, 2):
            expected[k - 1] += model.token_log_probs(window[:, :-1], torch.tensor([k]), window[:, 1:]).sum()
    torch.testing.assert_close(scores[0], expected)


def test_a_short_context_model_is_scored_on_as_many_tokens_of_each_piece():
    """Whole pieces are scored in spans of at least 510 tokens whatever the context, so a 256-token
    model is judged on the same evidence as a 512-token one: two consecutive windows per span."""
    assert scored_span(512) == 511 and scored_span(256) == 510 and scored_span(8192) == 8191
    assert abs(tokens_scored(3000, scored_span(256), 4) - tokens_scored(3000, scored_span(512), 4)) <= 4
    torch.manual_seed(0)
    model = MusicTransformer(ModelConfig(block_size=256, vocab_size=30, n_composers=3, n_layer=1, n_head=2,
                                         n_embd=16, dropout=0.0)).eval()
    piece = torch.randint(2, 30, (3000,))
    expected = torch.zeros(2, dtype=torch.float64)
    for span_start in window_starts(3000, 510, 4):
        for start in (span_start, span_start + 255):
            window = torch.cat([torch.ones(1, dtype=torch.long), piece[start:start + 255]]).unsqueeze(0)
            for k in (1, 2):
                expected[k - 1] += model.token_log_probs(window[:, :-1], torch.tensor([k]), window[:, 1:]).sum()
    scores = score_under(model, [piece.numpy()], [1, 2], bos_id=1, max_windows=4)
    torch.testing.assert_close(scores[0], expected, atol=1e-3, rtol=1e-6)


def test_evaluate_end_to_end_on_a_tiny_checkpoint(tiny_checkpoint, tiny_dataset, capsys):
    r = evaluate(tiny_checkpoint, EvalOptions(data_dir=str(tiny_dataset), num_windows=6, guidances=(1.0, 3.0), samples_per_composer=1,
                 sample_tokens=100))  # longer than the model's 64-token context
    assert set(r["nll"]) == {"true", "uncond", "wrong"} and all(math.isfinite(v) for v in r["nll"].values())
    assert r["baselines"]["trigram_witten_bell_nll"] < r["baselines"]["unigram_nll"]
    b = r["baselines"]
    assert set(b["witten_bell_nll_by_order"]) == {"3", "4", "5", "6"}
    assert b["best_ngram_nll"] == min(b["witten_bell_nll_by_order"].values()) <= b["trigram_witten_bell_nll"]
    assert b["model_over_best_ngram"] == pytest.approx(r["nll"]["true"] / b["best_ngram_nll"])
    assert set(r["samples"]) == {"1.0", "3.0", "real val excerpts"}
    assert r["samples"]["3.0"]["grammar_error_rate"] == 0.0
    assert 0 <= r["samples"]["3.0"]["self_judged_adherence"] <= 1 and 0 <= r["samples"]["3.0"]["judge_accuracy"] <= 1
    ident = r["val_pieces"]["identification"]
    assert ident["pieces"] == 5 and ident["chance"] == 1 / 3
    assert set(r["val_pieces"]["by_kind"]) == {"sequenced"}  # the fixture's pieces are written, not played
    assert r["val_pieces"]["by_kind"]["sequenced"]["identification"]["accuracy"] == ident["accuracy"]
    for key in ("true", "uncond", "wrong"):
        n = r["val_pieces"]["nll"][key]
        assert n["low"] <= n["mean"] <= n["high"]
    print_report(r)
    assert "identification" in capsys.readouterr().out


def test_a_large_training_set_gets_only_the_trigram_baseline(tiny_checkpoint, tiny_dataset, monkeypatch):
    """Orders above 3 need memory in proportion to the training tokens: past the limit they are skipped."""
    from pianogpt.measures import evaluation
    monkeypatch.setattr(evaluation, "HIGH_ORDER_MAX_TOKENS", 0)
    r = evaluate(tiny_checkpoint, EvalOptions(data_dir=str(tiny_dataset), num_windows=2, guidances=(1.0,), samples_per_composer=1,
                 sample_tokens=16))
    b = r["baselines"]
    assert b["witten_bell_nll_by_order"] == {"3": b["trigram_witten_bell_nll"]} and b["best_ngram_order"] == 3


def test_identification_by_a_composer_blind_model_is_chance_exactly():
    model = MusicTransformer(ModelConfig(block_size=16, vocab_size=30, n_composers=5, n_layer=1, n_head=2, n_embd=16,
                                         dropout=0.0)).eval()
    torch.nn.init.zeros_(model.wce.weight)  # the composer changes nothing
    rng = np.random.default_rng(0)
    pieces = [(rng.integers(2, 30, 40), int(c), 0) for c in (1, 2, 3, 4, 1, 2)]  # kind 0: unknown
    names = {i: f"c{i}" for i in range(5)}
    r = identify_pieces(model, pieces, [1, 2, 3, 4], names, {1: 9, 2: 5, 3: 5, 4: 5}, 5, bos_id=1, max_windows=None,
                     seed=0)
    assert r["identification"]["accuracy"] == 0.25 == r["identification"]["chance"]
    assert r["identification"]["commonest_baseline"] == 2 / 6
    assert abs(r["nll_gaps"]["uncond_minus_true"]["mean"]) < 1e-9


def test_balanced_identification_weighs_every_composer_alike():
    names = {i: f"c{i}" for i in range(4)}
    true_ids = [1] * 8 + [2, 3]
    always_c1 = [[0.0, -1.0, -1.0]] * 10  # scores under candidates 1, 2, 3: always names c1
    r = identification(always_c1, true_ids, [1, 2, 3], names, {1: 5, 2: 50, 3: 5})
    assert r["accuracy"] == 0.8 == r["commonest_here_baseline"] and r["commonest_here"] == "c1"
    assert r["balanced_accuracy"] == pytest.approx(1 / 3) and r["composers_here"] == 3, "a constant guess: 1/3"
    assert r["commonest_composer"] == "c2" and r["commonest_baseline"] == 0.1, "the training prior, beside it"
    right = [[0.0 if k == t else -1.0 for k in (1, 2, 3)] for t in true_ids]
    assert identification(right, true_ids, [1, 2, 3], names, {1: 5})["balanced_accuracy"] == 1.0
    empty = identification([], [], [1, 2, 3], names, {1: 5})  # a slice with no compared composer's piece
    assert empty["pieces"] == 0 and np.isnan(empty["accuracy"]) and np.isnan(empty["balanced_accuracy"])
    assert set(empty) == set(r) and empty["confusion"] == {} and empty["chance"] == 1 / 3


def test_bootstrap_is_seeded_reproducible_and_brackets_the_mean():
    rng = np.random.default_rng(1)
    values, weights = rng.normal(0.05, 0.1, 50), rng.integers(100, 1000, 50)
    a, b = bootstrap_mean(values, weights, seed=3), bootstrap_mean(values, weights, seed=3)
    assert a == b
    assert a["low"] < a["mean"] < a["high"]
    assert bootstrap_mean(values, weights, seed=4) != a


def test_copy_finder_finds_a_planted_copy_and_nothing_in_unrelated_music():
    rng = np.random.default_rng(2)
    training = [rng.integers(0, 5000, 3000) for _ in range(5)]
    query = rng.integers(0, 5000, 300)
    assert CopyFinder(training).longest(query) < 5
    query[100:160] = training[3][2000:2060]  # a planted 60-note copy
    assert CopyFinder(training).longest(query) == 60
    query[160:170] = training[3][2060:2070]
    assert CopyFinder(training).longest(query) == 70, "measured exactly past its anchor, both ways"
    assert CopyFinder(training).longest(training[1][:40]) == 40


def synthetic_piece(style, rng):
    """Style 0: fast high melodies, loud; style 1: slow low chords, soft."""
    from symusic import Note, Score, Tempo, Track

    score = Score(480)
    score.tempos.append(Tempo(0, 100.0))
    notes, t = [], 0
    for _ in range(60):
        if style == 0:
            notes.append((t, 120, int(rng.choice([60, 62, 64, 65, 67, 69, 71, 72, 74, 76])), int(rng.integers(80, 110))))
            t += int(rng.choice([120, 240]))
        else:
            root = int(rng.integers(36, 52))
            notes += [(t, 480, root + i, int(rng.integers(40, 70))) for i in (0, 4, 7)]
            t += int(rng.choice([480, 960]))
    track = Track(name="p", program=0, is_drum=False)
    time, dur, pitch, vel = (np.array(c) for c in zip(*notes))
    track.notes = Note.from_numpy(time=time.astype(np.int32), duration=dur.astype(np.int32),
                                  pitch=pitch.astype(np.int8), velocity=vel.astype(np.int8))
    score.tracks.append(track)
    return score


def test_the_judge_tells_two_styles_apart_on_held_out_pieces():
    rng = np.random.default_rng(5)
    train = [(note_features(synthetic_piece(s, rng)), s) for s in (0, 1) for _ in range(15)]
    held_out = [(note_features(synthetic_piece(s, rng)), s) for s in (0, 1) for _ in range(10)]
    judge = Judge().fit([f for f, _ in train], [s for _, s in train])
    assert judge.accuracy([f for f, _ in held_out], [s for _, s in held_out]) >= 0.95


def test_note_features_have_one_length_for_any_excerpt():
    from test_audio import score_of

    excerpts = [[], [(0, 1, 60, 80)], [(0, 1, 60, 80), (0, 1, 64, 80), (0, 1, 67, 80)],  # one chord: no onset gaps
                [(0, 1, 60, 80), (1, 2, 64, 90), (1.5, 0.25, 72, 100)]]
    lengths = {len(note_features(score_of(notes))) for notes in excerpts}
    assert lengths == {66}


def test_no_samples_scores_the_val_pieces_only(tiny_checkpoint, tiny_dataset, capsys):
    r = evaluate(tiny_checkpoint, EvalOptions(data_dir=str(tiny_dataset), num_windows=2, samples_per_composer=0))
    assert "val_pieces" in r and not {"judge", "copying", "samples"} & set(r)
    print_report(r)
    assert "identification" in capsys.readouterr().out


def test_samples_are_judged_on_the_composers_real_excerpts_of_a_kind_have():
    confusion = {"Bach": {"Bach": 2}, "Chopin": {"Liszt": 2}, "Liszt": {"Liszt": 1, "Chopin": 1}}
    assert accuracy_on(confusion, ["Bach", "Liszt"]) == 3 / 4
    assert accuracy_on(confusion, ["Chopin"]) == 0
    assert math.isnan(accuracy_on(confusion, ["Ravel"]))  # no samples of that composer: no figure
