"""Infilling: the training layout, the roles, the plan of a span, and sample.py --infill keeping
every note outside the span."""
import json

import numpy as np
import pytest
import torch

from conftest import make_score, tiny_model, write_midi
from pianogpt.generation.infill import (AFTER, BEFORE, LAST_BAR, MIDDLE, PLAIN, MiddleRoles, arrange_batch, arrange_window,
                             bar_ticks, bars_of_seconds, context_budget, excerpt, plan_span, seconds_at, splice)
from pianogpt.generation.engine import generate

BAR, PAD, BOS = 9, 0, 1


def test_an_infilling_window_holds_after_then_before_then_middle_and_its_closing_bar_line():
    crop = [5, 5, BAR, 6, 6, 6, BAR, 7, 7, BAR, 8, 8, 8, BAR, 4, 4]
    window = np.array([BOS] + crop + [PAD, PAD])
    rng = np.random.default_rng(0)
    for _ in range(20):
        arranged, roles = arrange_window(window, BAR, PAD, rng, max_bars=2, max_middle=8)
        n = len(crop) + 1
        assert len(arranged) == len(window) and (arranged[n:] == PAD).all() and (roles[n:] == PLAIN).all()
        after = arranged[roles == AFTER][1:]  # BOS opens the window as the after-span's first input
        before, middle = arranged[roles == BEFORE], arranged[(roles == MIDDLE) | (roles == LAST_BAR)]
        start = len(before)
        assert list(before) == crop[:start] and middle[0] == BAR
        end = start + len(middle) - 1  # the last LAST_BAR input is the closing bar line, fed as a target only
        assert list(middle[:-1]) == crop[start:end] and middle[-1] == BAR == crop[end]
        assert list(after) == crop[end:len(crop) - 1]  # one token shorter: the window keeps its length
        bars_in_middle = int((middle[:-1] == BAR).sum())
        assert 1 <= bars_in_middle <= 2 and len(middle) - 1 <= 8
        last_bar = np.flatnonzero(middle[:-1] == BAR)[-1]  # LAST_BAR from the middle's last bar line on
        assert (roles[roles >= MIDDLE][last_bar:] == LAST_BAR).all() and (roles[roles >= MIDDLE][:last_bar] == MIDDLE).all()


def test_a_window_without_a_bar_aligned_middle_stays_plain():
    window = np.array([BOS, 5, 5, 6, 6, BAR, 7, PAD])
    assert arrange_window(window, BAR, PAD, np.random.default_rng(0), 4, 8) is None
    x, y = torch.from_numpy(window[None, :-1]), torch.from_numpy(window[None, 1:])
    x2, y2, roles = arrange_batch(x, y, np.random.default_rng(0), 0.99, BAR, PAD, 4, 8)
    assert torch.equal(x2, x) and torch.equal(y2, y) and (roles == PLAIN).all()


def test_roles_change_the_logits_and_a_plain_role_is_the_default():
    model = tiny_model(n_roles=5)
    idx, composer = torch.randint(2, 64, (1, 12)), torch.tensor([1])
    plain = model(idx, composer, all_logits=True)[0]
    assert torch.equal(plain, model(idx, composer, all_logits=True, role=torch.zeros_like(idx))[0])
    assert not torch.allclose(plain, model(idx, composer, all_logits=True, role=torch.full_like(idx, AFTER))[0])


@pytest.mark.parametrize("guidance", [1.0, 3.0])
def test_infilling_generation_feeds_each_new_token_the_role_a_full_forward_gives_it(guidance):
    """The cached decode equals a full forward over the same tokens and roles: MIDDLE until the bar
    line that opens the last bar, LAST_BAR from it."""
    model = tiny_model(n_roles=5)
    prompt = torch.tensor([[BOS, 11, 12, BAR, 13, 14, BAR]])
    prompt_roles = torch.tensor([[AFTER, AFTER, AFTER, BEFORE, BEFORE, BEFORE, MIDDLE]])
    roles = MiddleRoles(prompt_roles, bars=2, bar_id=BAR)
    seen = []
    out = generate(model, prompt, torch.tensor([1]), 12, temperature=1.0, top_k=None, top_p=None, guidance=guidance,
                         generator=torch.Generator().manual_seed(0), roles=roles,
                         on_step=lambda step, logits, start: seen.append(logits), prepack=False)
    new = out[0, prompt.size(1):]
    opened = 1 + torch.cumsum((new == BAR).long(), 0)
    full_roles = torch.cat([prompt_roles[0], torch.where(opened >= 2, LAST_BAR, MIDDLE)[:-1]])[None]
    composer = torch.tensor([1])
    cond = model(out[:, :-1], composer, all_logits=True, role=full_roles)[0][0, prompt.size(1) - 1:]
    uncond = model(out[:, :-1], torch.tensor([0]), all_logits=True, role=full_roles)[0][0, prompt.size(1) - 1:]
    expected = uncond + guidance * (cond - uncond)
    assert torch.allclose(torch.stack(seen)[:, 0], expected.float(), atol=1e-4)


def test_middle_roles_close_after_the_last_bar():
    roles = MiddleRoles(torch.zeros(2, 3, dtype=torch.long), bars=2, bar_id=BAR)
    assert roles.next_roles(torch.tensor([5, BAR])).tolist() == [MIDDLE, LAST_BAR]
    assert roles.closed().tolist() == [False, False]
    roles.next_roles(torch.tensor([BAR, BAR]))
    assert roles.closed().tolist() == [False, True]


def test_an_infilling_prompt_that_cannot_fit_its_middle_is_refused():
    model = tiny_model(n_roles=5, block_size=16)
    roles = MiddleRoles(torch.zeros(1, 10, dtype=torch.long), bars=1, bar_id=BAR)
    with pytest.raises(ValueError, match="leaves 6 of the context's 16 for the middle, not 8"):
        generate(model, torch.ones(1, 10, dtype=torch.long), torch.tensor([1]), 8, roles=roles)


def test_bars_follow_the_time_signatures_and_seconds_the_tempo_map():
    score = make_score(n_bars=8)  # 4 bars of 4/4 then 3/4 from bar 5; 96 qpm then 132 from tick 5760
    tpq = score.tpq
    lines = bar_ticks(score)
    assert lines[:6] == [0, 4 * tpq, 8 * tpq, 12 * tpq, 16 * tpq, 19 * tpq] and len(lines) == 8
    seconds = seconds_at(score, [0, 4 * tpq, 12 * tpq, 16 * tpq])
    assert seconds == pytest.approx([0, 2.5, 7.5, 7.5 + 4 * 60 / 132])
    assert bars_of_seconds(seconds_at(score, lines), 2.5, 8.0) == (2, 4)
    with pytest.raises(ValueError, match="no bar opens between 100 s and 200 s"):
        bars_of_seconds(seconds_at(score, lines), 100, 200)


def test_an_excerpt_starts_at_its_bar_line_with_the_metre_and_tempo_in_force_there():
    score = make_score(n_bars=8)
    tpq = score.tpq
    part = excerpt(score, 16 * tpq, 19 * tpq)
    assert [(t.time, t.numerator) for t in part.time_signatures] == [(0, 3)]
    assert [(t.time, round(t.qpm)) for t in part.tempos] == [(0, 132)]
    times = np.concatenate([t.notes.numpy()["time"] for t in part.tracks])
    assert times.min() == 0 and times.max() < 3 * tpq


def test_splice_keeps_every_note_outside_the_span_and_puts_the_new_notes_inside_it():
    from symusic import Note, Score, Track

    original = make_score(n_bars=8)
    tpq = original.tpq
    start, end = 4 * tpq, 12 * tpq
    middle = Score(8)
    track = Track(name="new", program=0, is_drum=False)
    track.notes = Note.from_numpy(time=np.array([0, 8, 64], np.int32), duration=np.array([4, 100, 8], np.int32),
                                  pitch=np.array([60, 62, 64], np.int8), velocity=np.array([70, 70, 70], np.int8))
    middle.tracks.append(track)
    score, removed, added = splice(original, middle, start, end)

    def notes(s, inside):
        return sorted((t, n.time, n.duration, n.pitch, n.velocity) for t, tr in enumerate(s.tracks)
                      for n in tr.notes if (start <= n.time < end) == inside)

    assert notes(score, False) == notes(original, False)
    assert removed == len(notes(original, True)) and added == 2  # the note at 64/8 = 8 quarters opens the next bar
    assert [(n[1], n[2], n[3]) for n in notes(score, True)] == [(start, tpq // 2, 60), (start + tpq, end - start - tpq, 62)]
    assert [t.qpm for t in score.tempos] == [t.qpm for t in original.tempos]


def test_a_plan_puts_the_music_after_the_span_first_and_names_the_bars_that_fit(tiny_dataset):
    from pianogpt.data.dataset import open_dataset
    from pianogpt.data.remi import merge_piano_tracks

    tokenizer = open_dataset(tiny_dataset).tokenizer
    score = make_score(n_bars=16, with_changes=False, out_of_range=False)
    score = merge_piano_tracks(score)[0]
    plan = plan_span(tokenizer, score, 256, 5, 6)
    bar_id = tokenizer.vocab["Bar_None"]
    assert plan.prompt[0] == tokenizer.vocab["BOS_None"] and plan.prompt[-1] == bar_id and plan.roles[-1] == MIDDLE
    n_after = plan.roles.count(AFTER) - 1
    assert plan.prompt[1] == bar_id and n_after > 0 and plan.roles.count(BEFORE) > 0
    assert len(plan.prompt) + plan.max_new_tokens <= 256 and plan.max_new_tokens >= plan.span_tokens
    assert plan.time_signatures == [tokenizer.vocab["TimeSig_4/4"]] * 2
    assert (plan.start_tick, plan.end_tick) == (16 * score.tpq, 24 * score.tpq)
    with pytest.raises(ValueError, match=r"bars 17-18 are outside the piece: it has bars 1-16"):
        plan_span(tokenizer, score, 256, 17, 18)
    with pytest.raises(ValueError, match=r"bars 2-12 hold \d+ tokens; this model's context \(256 tokens\) fills spans "
                                         r"of at most 222: bars 2-\d fit"):
        plan_span(tokenizer, score, 256, 2, 12)


def test_context_budget_gives_the_middle_room_to_be_denser_and_keeps_both_sides():
    assert context_budget(256, 100) == (150, 52)
    with pytest.raises(ValueError, match="fills spans of at most 222"):
        context_budget(256, 223)


# ----------------------------------------------------------------------------- sample.py --infill


def notes_by_onset(score, start, end, inside):
    return sorted((n.time, n.duration, n.pitch, n.velocity) for tr in score.tracks for n in tr.notes
                  if (start <= n.time < end) == inside)


def test_sample_infill_keeps_every_note_outside_the_span_and_ends_the_span_at_its_bar_line(tiny_infill_checkpoint,
                                                                                         tmp_path, capsys):
    from symusic import Score

    import sample

    piece = write_midi(str(tmp_path / "mine.mid"), make_score(seed=3, n_bars=12))
    sample.main(["--ckpt", str(tiny_infill_checkpoint), "--infill", piece, "--bars", "5-6", "--composer_id", "1",
                 "--num_samples", "2", "--out_dir", str(tmp_path / "out"), "--no-audio", "--guidance", "2"])
    original = Score(piece)
    lines = bar_ticks(original)
    start, end = lines[4], lines[6]
    written = sorted((tmp_path / "out").glob("mine_bars5-6_*.mid"))
    assert len(written) == 2
    for path in written:
        filled = Score(str(path))
        assert notes_by_onset(filled, start, end, False) == notes_by_onset(original, start, end, False)
        new = notes_by_onset(filled, start, end, True)
        assert all(start <= t < end and t + d <= end for t, d, _, _ in new)
        info = json.loads(path.with_suffix(".json").read_text())
        assert info["infill"]["bars"] == [5, 6] and info["infill"]["notes_added"] == len(new)
        assert path.with_suffix(".png").exists()
    out = capsys.readouterr().out
    assert "bars 5-6 of" in out and "take(s)" in out


@pytest.mark.parametrize("args, message", [
    (["--bars", "40-41"], "bars 40-41 are outside the piece: it has bars 1-12"),
    (["--bars", "2-12"], "fills spans of at most"),
    (["--seconds", "500-600"], "no bar opens between 500 s and 600 s"),
    (["--seconds", "5"], "--infill takes a time span, --seconds START-END"),
    ([], "--infill needs the span to rewrite: --bars 9-12 or --seconds 20-30"),
])
def test_infill_requests_outside_the_piece_or_the_context_are_one_line_errors(tiny_infill_checkpoint, tmp_path, args,
                                                                             message, capsys):
    import sample

    piece = write_midi(str(tmp_path / "mine.mid"), make_score(seed=3, n_bars=12))
    with pytest.raises(SystemExit) as stop:
        sample.main(["--ckpt", str(tiny_infill_checkpoint), "--infill", piece, "--composer_id", "1",
                     "--out_dir", str(tmp_path / "out"), "--no-audio"] + args)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_infill_with_a_model_that_only_continues_and_a_span_without_infill_are_refused(tiny_checkpoint, tmp_path,
                                                                                      capsys):
    import sample

    piece = write_midi(str(tmp_path / "mine.mid"), make_score(seed=3, n_bars=12))
    for args, message in ((["--infill", piece, "--bars", "5-6"], "--infill needs a model trained to fill gaps"),
                          (["--bars", "5-6"], "--bars A-B is a span to rewrite: it needs --infill FILE")):
        with pytest.raises(SystemExit):
            sample.main(["--ckpt", str(tiny_checkpoint), "--composer_id", "1", "--out_dir", str(tmp_path / "o"),
                         "--no-audio"] + args)
        assert message in capsys.readouterr().err


# ----------------------------------------------------------------------------- evaluate.py's infilling measures


def test_both_layouts_of_a_real_gap_predict_the_same_middle_tokens():
    from pianogpt.generation.infill import gap_layouts

    tokens = np.array([5, BAR, 6, 6, BAR, 7, 7, 7, BAR, 8, 8, BAR, 4, 4, 4, BAR, 3, 3])
    start, end = 4, 11  # bars 2-3 of the token stream
    layouts = gap_layouts(tokens, start, end, BOS, block_size=14)
    targets = {way: ids[first + 1:] for way, (ids, roles, first) in layouts.items()}
    assert targets["infill"] == targets["continue"] == [7, 7, 7, BAR, 8, 8, BAR]
    for ids, roles, first in layouts.values():
        assert len(ids) <= 13 and len(roles) == len(ids) and ids[first] == BAR
    ids, roles, first = layouts["infill"]
    assert roles[first:] == [MIDDLE] * 4 + [LAST_BAR] * 4 and ids[1:1 + roles.count(AFTER) - 1] == [BAR, 4]


def test_evaluate_scores_real_gaps_both_ways_and_judges_filled_and_continued_takes(tiny_infill_checkpoint, tiny_dataset,
                                                                                  tmp_path, capsys):
    from evaluate import evaluate, EvalOptions
    from pianogpt.measures.report import print_report
    from train import train

    from conftest import tiny_train_config

    r = evaluate(tiny_infill_checkpoint, EvalOptions(data_dir=str(tiny_dataset), num_windows=2, samples_per_composer=0, infill_gaps=6,
                 infill_takes=1, infill_guidance=2.0))
    f = r["infill"]
    assert f["gaps"] == 6 and len(f["per_gap"]["infill"]) == len(f["per_gap"]["continue"]) == 6
    assert f["infill_minus_continue"]["mean"] == pytest.approx(
        np.mean(f["per_gap"]["infill"]) - np.mean(f["per_gap"]["continue"]))
    for way in ("infill", "continue"):
        assert 0 <= f[way]["judge_accuracy"]["mean"] <= 1 and 0 <= f[way]["closed"] <= 1
    print_report(r)
    out = capsys.readouterr().out
    assert "music after it visible" in out and "infilling takes" in out
    train(tiny_train_config(tiny_dataset, tmp_path / "plain", block_size=256, max_iters=4, eval_interval=4))
    plain = evaluate(tmp_path / "plain" / "ckpt.pt", EvalOptions(data_dir=str(tiny_dataset), num_windows=2, samples_per_composer=0,
                     infill_gaps=6))
    assert set(plain["infill"]["nll"]) == {"continue"}  # a model that only continues is scored one way ...
    assert len(plain["infill"]["per_gap"]["continue"]) == 6  # ... on the same gaps
    capsys.readouterr()


def test_a_context_too_short_for_any_gap_says_so(tiny_checkpoint, tiny_dataset, capsys):
    from evaluate import evaluate, EvalOptions
    from pianogpt.measures.report import print_report

    r = evaluate(tiny_checkpoint, EvalOptions(data_dir=str(tiny_dataset), num_windows=2, samples_per_composer=0, infill_gaps=6,
                 infill_takes=1))  # a 64-token context: no 2-bar gap with music on both sides
    assert r["infill"] == {"gaps": 0, "bars": 2, "takes_per_way": 0}
    print_report(r)
    assert "no val piece has a gap of 2 bars that fits this model's context" in capsys.readouterr().out


def test_a_middle_keeps_the_pieces_metre_and_writes_no_rest_past_its_bar_line(tiny_dataset):
    from pianogpt.data.dataset import open_dataset
    from pianogpt.generation.infill import KeepMetre
    from pianogpt.data.remi import RemiGrammar

    tokenizer = open_dataset(tiny_dataset).tokenizer
    vocab = tokenizer.vocab
    bar, three_four = vocab["Bar_None"], vocab["TimeSig_3/4"]
    roles = MiddleRoles(torch.zeros(1, 3, dtype=torch.long), bars=2, bar_id=bar)
    grammar = RemiGrammar(tokenizer)
    keep = KeepMetre([three_four, three_four], bar, roles)
    logits = torch.zeros(1, len(vocab))
    seq = torch.tensor([[vocab["BOS_None"], bar]])
    after_bar = keep(seq, grammar(seq, logits))
    assert torch.isfinite(after_bar[0]).nonzero().flatten().tolist() == [three_four]
    velocity, duration = (next(i for t, i in vocab.items() if t.startswith(kind)) for kind in ("Velocity_", "Duration_"))
    seq = torch.tensor([[vocab["BOS_None"], bar, three_four, vocab["Position_16"], vocab["Pitch_60"], velocity,
                         duration]])  # a note on beat 3 of a 3/4 bar: a rest of a beat would pass the bar line
    allowed = torch.isfinite(keep(seq, grammar(seq, logits))[0])
    assert allowed[vocab["Rest_0.4.8"]] and not allowed[vocab["Rest_1.0.4"]] and not allowed[vocab["Rest_2.0.2"]]


def test_sample_infill_by_seconds_rewrites_the_bars_that_open_in_that_time(tiny_infill_checkpoint, tmp_path):
    import sample

    piece = write_midi(str(tmp_path / "mine.mid"), make_score(seed=3, n_bars=12))  # 96 qpm 4/4: 2.5 s a bar at first
    sample.main(["--ckpt", str(tiny_infill_checkpoint), "--infill", piece, "--seconds", "2.5-7.5", "--composer_id", "2",
                 "--out_dir", str(tmp_path / "out"), "--no-audio"])
    info = json.loads(next((tmp_path / "out").glob("mine_bars2-3_*.json")).read_text())
    assert info["infill"]["bars"] == [2, 3]


def test_a_take_that_does_not_reach_its_bar_line_is_drawn_again_with_the_next_seed(monkeypatch):
    import sample
    from pianogpt.generation.infill import Plan

    draws = []

    def fake_write_middles(model, tokenizer, prompt, roles, bars, metre, budget, conditions, constrained, **sampling):
        """Take 0 closes at once; take 1 on the second draw; take 2 never."""
        draws.append((len(conditions), sampling["generator"].initial_seed()))
        rows = [0, 1, 2][-len(conditions):]
        return [([len(draws), row], row == 0 or row == 1 and len(draws) == 2) for row in rows]

    monkeypatch.setattr(sample, "write_middles", fake_write_middles)
    monkeypatch.setattr(sample, "guidance_types", lambda tokenizer, mode: None)
    plan = Plan(1, 2, 4, [1, 9], [AFTER, MIDDLE], 10, 0, 960, [5, 5], 8)
    draw = sample.Draw(temperature=1.0, top_k=0, top_p=1.0, guidance=1.0, seed=100)
    takes = sample.fill_takes(tiny_model(n_roles=5), None, plan, 3, 3, draw, "cpu")
    assert draws == [(3, 100), (2, 101), (1, 102)]  # all takes, then those left open, each time the next seed
    assert takes == [([1, 0], True), ([2, 1], True), ([3, 2], False)]  # the last draw is kept either way


def test_an_excerpt_ends_with_its_notes_not_with_the_pieces_later_tempo_changes(tiny_dataset):
    """piano-midi.de writes rubato as hundreds of tempo events: an excerpt that kept the later ones
    would tokenize as every bar up to the piece's end."""
    from symusic import Tempo

    from pianogpt.data.dataset import open_dataset
    from pianogpt.data.remi import encode_merged, merge_piano_tracks

    tokenizer = open_dataset(tiny_dataset).tokenizer
    score = make_score(n_bars=12, with_changes=False)
    for bar in range(12):
        score.tempos.append(Tempo(bar * 4 * score.tpq + score.tpq, 90.0 + bar))
    merged = merge_piano_tracks(score)[0]
    bar_id = tokenizer.vocab["Bar_None"]
    part = encode_merged(tokenizer, excerpt(merged, 4 * 4 * score.tpq, 6 * 4 * score.tpq))
    assert int((part == bar_id).sum()) == 2
    assert [t.time for t in excerpt(merged, 4 * 4 * score.tpq, 6 * 4 * score.tpq).tempos] == [0, score.tpq,
                                                                                            5 * score.tpq]


def test_a_take_that_cannot_claim_its_name_leaves_the_earlier_takes_whole(tiny_infill_checkpoint, tmp_path,
                                                                          monkeypatch, capsys):
    import errno

    import sample

    piece = write_midi(str(tmp_path / "mine.mid"), make_score(seed=3, n_bars=12))
    args = ["--ckpt", str(tiny_infill_checkpoint), "--infill", piece, "--bars", "5-6", "--composer_id", "1",
            "--out_dir", str(tmp_path / "out"), "--no-audio"]
    sample.main(args)
    earlier = sorted(p.name for p in (tmp_path / "out").iterdir())

    def full_disk(base):
        raise OSError(errno.ENOSPC, "No space left on device", base + "-2.json")

    from pianogpt.output import outputs

    monkeypatch.setattr(outputs, "claim_stem", full_disk)
    with pytest.raises(SystemExit) as stop:
        sample.main(args)
    assert stop.value.code == 2 and "No space left on device" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == earlier  # the first take is untouched
