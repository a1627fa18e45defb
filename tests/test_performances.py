"""Performed MIDI: detecting it, keeping a work's performances and its score in one split, and
the kind condition that lets the composer carry style alone."""
import json
import os

import pytest
import torch

from conftest import REAL_MIDI, make_score, performed, tiny_model, write_midi
from pianogpt.generation.engine import generate

ASAP = os.path.join(os.path.dirname(REAL_MIDI), "asap-performed")


def test_written_onsets_are_sequenced_and_played_ones_performed():
    from pianogpt.data.remi import piece_kind

    score = make_score(seed=3, n_bars=16)
    assert piece_kind(score)[0] == "sequenced"
    assert piece_kind(performed(score))[0] == "performed"
    late = score.shift_time(1)  # a sequencer that starts every note a tick late is still on a grid
    assert piece_kind(late) == ("sequenced", pytest.approx(1.0))


def test_every_performance_of_a_work_lands_in_one_split():
    from prepare import hash_split, work_of

    assert work_of("Chopin/Ballades_1__Ali01.mid") == work_of("Chopin/Ballades_1__Day04.mid") == "Chopin/Ballades_1"
    assert work_of("Chopin/Op10.mid") == "Chopin/Op10.mid"
    for work in range(200):
        assert len({hash_split(f"X/W{work}__{p}.mid", 0.3) for p in ("a", "b", "c", "d")}) == 1
    assert {hash_split(f"X/W{work}__a.mid", 0.3) for work in range(200)} == {"train", "val"}


def test_a_performance_joins_its_score_and_an_unrelated_piece_does_not():
    from prepare import performance_links
    from pianogpt.data.remi import build_tokenizer, encode_score, onset_token_ids, pitch_token_ids, top_voice

    tokenizer = build_tokenizer()
    pitches = pitch_token_ids(tokenizer)
    score = make_score(seed=5, n_bars=40, with_changes=False)
    pieces = [score, performed(score, seed=1), make_score(seed=6, n_bars=40, with_changes=False)]
    voices = [top_voice(encode_score(tokenizer, s)[0], pitches[0], pitches[-1], onset_token_ids(tokenizer))
              for s in pieces]
    assert performance_links(voices, [False, True, False]) == [(1, 0)]
    assert performance_links(voices, [False, False, False]) == []  # only a performance is linked this way


def test_prepare_records_the_kind_of_every_piece(tmp_path):
    from prepare import prepare

    root = tmp_path / "midi"
    for i in range(3):
        write_midi(str(root / "Bach" / f"score{i}.mid"), make_score(seed=i))
        write_midi(str(root / "Bach" / f"W{i}__played.mid"), performed(make_score(seed=10 + i), seed=i))
    meta = prepare(root, tmp_path / "data", workers=1, isolate=False, val_fraction=0.3)
    rows = [json.loads(line) for line in open(tmp_path / "data" / "pieces.jsonl")]
    assert {r["path"]: r["kind"] for r in rows} == {**{f"Bach/score{i}.mid": "sequenced" for i in range(3)},
                                                   **{f"Bach/W{i}__played.mid": "performed" for i in range(3)}}
    by_kind = meta["n_pieces_by_kind"]
    assert sum(by_kind[s]["performed"] for s in by_kind) == 3 and sum(by_kind[s]["sequenced"] for s in by_kind) == 3


@pytest.mark.skipif(not (os.path.isdir(ASAP) and os.path.isdir(REAL_MIDI)),
                    reason="needs ../shared/midi/asap-performed and piano-midi (not in a fresh checkout)")
def test_the_kind_detector_on_real_performances_and_scores():
    from symusic import Score

    from pianogpt.data.remi import piece_kind

    names = sorted(os.listdir(os.path.join(ASAP, "Chopin")))[:10]
    assert all(piece_kind(Score(os.path.join(ASAP, "Chopin", n)))[0] == "performed" for n in names)
    scores = sorted(os.listdir(os.path.join(REAL_MIDI, "Chopin")))[:10]
    assert sum(piece_kind(Score(os.path.join(REAL_MIDI, "Chopin", n)))[0] == "sequenced" for n in scores) >= 9


def tiny(n_kinds):
    return tiny_model(block_size=16, n_layer=1, n_embd=16, n_kinds=n_kinds)


def test_the_kind_condition_changes_the_prediction_and_none_means_unknown():
    model = tiny(3)
    torch.nn.init.normal_(model.wke.weight, std=1.0)
    idx, composer = torch.randint(2, 64, (2, 10)), torch.tensor([1, 2])
    unknown, _ = model(idx, composer, all_logits=True)
    as_row_0, _ = model(idx, composer, all_logits=True, kind=torch.zeros(2, dtype=torch.long))
    performance, _ = model(idx, composer, all_logits=True, kind=torch.full((2,), 2))
    assert torch.equal(unknown, as_row_0)
    assert not torch.allclose(unknown, performance)
    plain = tiny(0)
    assert not hasattr(plain, "wke")
    assert torch.equal(plain(idx, composer, all_logits=True)[0], plain(idx, composer, all_logits=True, kind=torch.full((2,), 2))[0])


def test_generation_keeps_the_kind_in_both_guidance_branches():
    model = tiny(3)
    torch.nn.init.normal_(model.wke.weight, std=1.0)
    idx, composer = torch.tensor([[1, 5, 9]]), torch.tensor([2])
    seen = []
    original = model.forward

    def spy(rows, conditions, *args, **kwargs):
        seen.append(kwargs.get("kind"))
        return original(rows, conditions, *args, **kwargs)

    model.forward = spy
    generate(model, idx, composer, 4, guidance=3.0, kind=2, generator=torch.Generator().manual_seed(0))
    assert seen[0].tolist() == [2, 2]  # the prefill: conditional and unconditional rows, both performances
    a = generate(model, idx, composer, 6, kind=1, generator=torch.Generator().manual_seed(0))
    b = generate(model, idx, composer, 6, kind=1, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b)


@pytest.fixture(scope="module")
def mixed_checkpoint(tmp_path_factory):
    """A tiny model with the kind condition, trained briefly on scores and performances of 2 composers."""
    from prepare import prepare
    from pianogpt.training.config import TrainConfig
    from train import train

    root = tmp_path_factory.mktemp("mixed")
    for c, composer in enumerate(["Bach", "Chopin"]):
        for i in range(4):
            score = make_score(seed=50 * c + i, n_bars=12)
            write_midi(str(root / "midi" / composer / f"score{i}.mid"), score)
            write_midi(str(root / "midi" / composer / f"W{i}__played.mid"), performed(make_score(seed=50 * c + 9 + i, n_bars=12), seed=i))
    prepare(root / "midi", root / "data", workers=1, isolate=False, val_fraction=0.3)
    train(TrainConfig(data_dir=str(root / "data"), out_dir=str(root / "run"), block_size=64, n_layer=1, n_head=2,
                      n_embd=32, batch_size=4, grad_accum=1, max_iters=20, eval_interval=20, eval_iters=2,
                      log_interval=10, learning_rate=3e-3, device="cpu", dtype="float32", dropout=0.0, n_kinds=3))
    return root / "run" / "ckpt.pt", root / "data"


def test_evaluate_reports_each_kind_and_samples_rendered_both_ways(mixed_checkpoint, capsys):
    from evaluate import evaluate, EvalOptions
    from pianogpt.measures.report import print_report

    ckpt, data = mixed_checkpoint
    r = evaluate(ckpt, EvalOptions(data_dir=str(data), num_windows=4, guidances=(3.0,), samples_per_composer=1, sample_tokens=40,
                 min_train_pieces=1))
    by_kind = r["val_pieces"]["by_kind"]
    assert set(by_kind) == {"sequenced", "performed"}  # the fixture's val split holds both (a fixed hash)
    assert sum(part["pieces"] for part in by_kind.values()) == r["val_pieces"]["pieces"]
    assert set(r["samples"]) == {"3.0 score", "3.0 performance", "real val excerpts"}
    assert set(r["judge"]["by_kind"]) <= {"sequenced", "performed"}
    print_report(r)
    out = capsys.readouterr().out
    assert "val pieces, sequenced only" in out and "val pieces, performed only" in out
    for kind in r["judge"]["by_kind"]:  # samples of a kind beside the real excerpts of that kind, same composers
        assert f"composers of the real {kind} val excerpts: samples" in out


def test_sample_renders_as_a_performance_and_records_it(mixed_checkpoint, tmp_path):
    import sample

    ckpt, _ = mixed_checkpoint
    sample.main(["--ckpt", str(ckpt), "--composer", "bach", "--texture", "performance", "--max_new_tokens", "30",
                 "--out_dir", str(tmp_path), "--no-audio"])
    settings = [json.load(open(tmp_path / name)) for name in os.listdir(tmp_path) if name.endswith(".json")]
    assert [s["render_as"] for s in settings] == ["performance"]
    assert "rendered as performance" in (tmp_path / "index.html").read_text()


@pytest.mark.parametrize("flag", ["--texture", "--render_as"])  # --render_as: the flag's earlier name, for a release
def test_a_texture_without_a_kind_condition_is_a_one_line_error(tiny_checkpoint, tmp_path, capsys, flag):
    import sample

    with pytest.raises(SystemExit) as exit_info:
        sample.main(["--ckpt", str(tiny_checkpoint), "--composer_id", "1", flag, "score", "--out_dir",
                     str(tmp_path)])
    stderr = capsys.readouterr().err
    assert exit_info.value.code == 2 and "--texture score needs a model trained with a kind condition" in stderr
    assert len(stderr.strip().splitlines()) == 1
    assert not os.listdir(tmp_path)
