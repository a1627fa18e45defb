"""evaluate.py: metrics on cases with a known answer, and an end-to-end run."""
import math

import numpy as np
import pytest
import torch

from evaluate import NGram, adherence, bayes_classify, derangement, evaluate, unigram_entropy
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


def test_adherence_of_a_model_that_ignores_the_composer_is_chance():
    torch.manual_seed(0)
    model = MusicTransformer(ModelConfig(block_size=32, vocab_size=30, n_composers=5, n_layer=1, n_head=2, n_embd=16,
                                         dropout=0.0)).eval()
    with torch.no_grad():
        model.wce.weight.zero_()  # every composer looks the same
    samples = torch.randint(2, 30, (8, 20))
    requested = [1, 2, 3, 4, 1, 2, 3, 4]
    assert adherence(bayes_classify(model, samples, 5), requested) == pytest.approx(0.25)
    with torch.no_grad():
        model.wce.weight.normal_(0, 1.0)
    scores = bayes_classify(model, samples, 5)
    perfect = [int(row.argmax()) + 1 for row in scores]
    assert adherence(scores, perfect) == 1.0


def test_samples_longer_than_the_context_are_scored_window_by_window():
    torch.manual_seed(0)
    model = MusicTransformer(ModelConfig(block_size=16, vocab_size=30, n_composers=3, n_layer=1, n_head=2, n_embd=16,
                                         dropout=0.0)).eval()
    sample = torch.cat([torch.ones(1, dtype=torch.long), torch.randint(2, 30, (40,))])
    scores = bayes_classify(model, sample.unsqueeze(0), 3)
    expected = torch.zeros(2)
    for start in range(0, 40, 15):
        window = torch.cat([sample[:1], sample[1 + start:1 + start + 15]]).unsqueeze(0)
        for k in (1, 2):
            expected[k - 1] += model.token_log_probs(window[:, :-1], torch.tensor([k]), window[:, 1:]).sum()
    torch.testing.assert_close(scores[0], expected)


def test_evaluate_end_to_end_on_a_tiny_checkpoint(tiny_checkpoint, tiny_dataset):
    r = evaluate(tiny_checkpoint, str(tiny_dataset), num_windows=6, guidances=(1.0, 3.0), samples_per_composer=1,
                 sample_tokens=100)  # longer than the model's 64-token context
    assert set(r["nll"]) == {"true", "uncond", "wrong"} and all(math.isfinite(v) for v in r["nll"].values())
    assert r["baselines"]["trigram_witten_bell_nll"] < r["baselines"]["unigram_nll"]
    assert set(r["samples"]) == {"1.0", "3.0", "real val windows"}
    assert r["samples"]["3.0"]["grammar_error_rate"] == 0.0
    assert 0 <= r["samples"]["3.0"]["adherence"] <= 1
