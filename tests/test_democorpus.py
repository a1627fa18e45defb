"""democorpus.py: the offline demo corpus and prepare.py's default."""
import hashlib
import os

import numpy as np
import pytest

from pianogpt.checkpoints import network_of
from pianogpt.data.democorpus import STYLES, write_demo_corpus

STYLE_TEST_ITERS = 200
EXPECTED_METRE = {"Chorale": (4, 4), "Sonatina": (4, 4), "Prelude": (4, 4), "Waltz": (3, 4), "Nocturne": (12, 8),
                  "Ragtime": (2, 4)}


def style_features(score):
    """What tells the styles apart: metre, tempo, notes per quarter, hand span, notes per onset
    (block chords vs broken ones), median note length."""
    ts, tempo = score.time_signatures[0], score.tempos[0].qpm
    notes = [n for t in score.tracks for n in t.notes]
    quarters = max(n.time + n.duration for n in notes) / score.tpq
    pitches = np.array([n.pitch for n in notes])
    onsets = len({n.time for n in notes})
    return np.array([ts.numerator / ts.denominator * 4, tempo / 20, len(notes) / quarters * 2,
                     (np.percentile(pitches, 90) - np.percentile(pitches, 10)) / 6, len(notes) / onsets * 2,
                     np.median([n.duration for n in notes]) / score.tpq * 4])


class NearestCentroid:
    def __init__(self, features_by_style):
        self.styles = list(features_by_style)
        self.centroids = np.stack([np.mean(f, axis=0) for f in features_by_style.values()])
        self.scale = np.std(np.concatenate(list(features_by_style.values())), axis=0) + 1e-9

    def __call__(self, features):
        return self.styles[int(np.argmin((((features - self.centroids) / self.scale) ** 2).sum(1)))]


@pytest.fixture(scope="module")
def demo_midi(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    write_demo_corpus(root, pieces_per_style=12, seed=0)
    return root


def test_demo_corpus_is_deterministic_two_handed_and_styled(demo_midi, tmp_path):
    from symusic import Score

    write_demo_corpus(tmp_path, pieces_per_style=12, seed=0)
    for style in STYLES:
        files = sorted(os.listdir(demo_midi / style))
        assert len(files) == 12
        for name in files[:3]:
            a, b = (demo_midi / style / name).read_bytes(), (tmp_path / style / name).read_bytes()
            assert hashlib.sha1(a).digest() == hashlib.sha1(b).digest()
            score = Score(str(demo_midi / style / name))
            assert [len(t.notes) > 0 for t in score.tracks] == [True, True], "both hands play"
            ts = score.time_signatures[0]
            assert (ts.numerator, ts.denominator) == EXPECTED_METRE[style]
            assert all(21 <= n.pitch <= 108 for t in score.tracks for n in t.notes)


def test_a_feature_classifier_tells_the_styles_apart(demo_midi):
    """The judge used for generated samples must itself be right on the corpus."""
    from symusic import Score

    features = {s: np.stack([style_features(Score(str(demo_midi / s / f))) for f in sorted(os.listdir(demo_midi / s))])
                for s in STYLES}
    train = {s: f[:8] for s, f in features.items()}
    judge = NearestCentroid(train)
    held_out = [(s, row) for s, f in features.items() for row in f[8:]]
    accuracy = np.mean([judge(row) == s for s, row in held_out])
    assert accuracy >= 0.95


def test_prepare_without_midi_dir_builds_and_prepares_the_demo_corpus(tmp_path, monkeypatch):
    import prepare

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("pianogpt.data.democorpus.write_demo_corpus.__defaults__", (6, 0))  # 6 pieces per style: fast
    prepare.main(["--workers", "1"])
    assert sorted(os.listdir(tmp_path / "data" / "demo-midi")) == sorted(STYLES)
    composers = (tmp_path / "data" / "demo" / "composers.json").read_text()
    assert all(style in composers for style in STYLES)


def test_samples_follow_the_requested_style_with_guidance_3(demo_midi, tmp_path):
    """Train briefly on the demo corpus, sample each style, judge with the feature classifier."""
    import torch
    from symusic import Score

    from prepare import prepare
    from pianogpt.data.remi import tokenizer_from_json
    from sample import Draw, generate_samples
    from pianogpt.training.config import TrainConfig
    from train import train

    data, out = tmp_path / "data", tmp_path / "out"
    prepare(demo_midi, data, workers=1, isolate=False, val_fraction=0.1)
    train(TrainConfig(data_dir=str(data), out_dir=str(out), block_size=128, n_layer=2, n_head=2, n_embd=64,
                      batch_size=16, grad_accum=1, max_iters=STYLE_TEST_ITERS, eval_interval=STYLE_TEST_ITERS,
                      eval_iters=2, log_interval=50, learning_rate=3e-3, dropout=0.0, device="cpu", dtype="float32"))
    checkpoint = torch.load(out / "ckpt.pt", weights_only=True)
    model = network_of(checkpoint)
    tokenizer = tokenizer_from_json(checkpoint["tokenizer"])
    features = {s: np.stack([style_features(Score(str(demo_midi / s / f))) for f in sorted(os.listdir(demo_midi / s))])
                for s in STYLES}
    judge = NearestCentroid(features)
    verdicts = []
    for style in STYLES:
        request = {"condition": checkpoint["composers"][style], "prompt": [1], "kind": None, "max_new_tokens": 192}
        samples = generate_samples(model, tokenizer, request, 3, Draw(guidance=3.0, seed=1), "cpu", progress=False)
        for ids in samples:
            score = tokenizer.decode([ids])
            notes = sum(len(t.notes) for t in score.tracks)
            verdicts.append(notes > 0 and judge(style_features(score)) == style)
    accuracy = float(np.mean(verdicts))
    print(f"style adherence at guidance 3: {accuracy:.2f} (chance {1 / len(STYLES):.2f})")
    assert accuracy >= 0.6, accuracy
