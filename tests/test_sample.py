"""sample.py: composer lookup, grammar constraints, MIDI/JSON/PNG outputs, CLI errors."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from pianogpt.cli import CliError
from conftest import ROOT
from model import MusicTransformer, ModelConfig
from pianogpt.data.remi import RemiGrammar, build_tokenizer, grammar_error_rate
from pianogpt.generation.engine import generate
from sample import resolve_composer, resolve_mix

COMPOSERS = {"<unconditional>": 0, "Bach, Johann Sebastian": 1, "Chopin, Frédéric": 2, "Schubert": 3,
             "Schumann": 4}


@pytest.mark.parametrize("query, expected", [
    ("chopin", 2), ("Chopin, Frédéric", 2), ("BACH", 1), ("schub", 3), ("frédéric", 2), ("johann", 1),
])
def test_composer_names_resolve_case_insensitively_by_prefix_or_substring(query, expected):
    assert resolve_composer(COMPOSERS, name=query)[0] == expected


def test_ambiguous_unknown_and_out_of_range_composers_are_clear_errors():
    with pytest.raises(CliError, match="ambiguous: Schubert, Schumann"):
        resolve_composer(COMPOSERS, name="schu")
    with pytest.raises(CliError, match="unknown composer 'Shubert'; closest: Schubert"):
        resolve_composer(COMPOSERS, name="Shubert")
    with pytest.raises(CliError, match=r"out of range: valid ids are 0..4"):
        resolve_composer(COMPOSERS, composer_id=9)
    assert resolve_composer(COMPOSERS, composer_id=0) == (0, "<unconditional>")


def test_grammar_mask_never_forbids_every_token_and_matches_real_pieces(tiny_dataset):
    """Every real piece passes the mask token by token, all pieces at once as rows of a batch
    (PAD after the shorter ones), and no state allows nothing."""
    tok = build_tokenizer()
    grammar = RemiGrammar(tok)
    tokens = np.fromfile(tiny_dataset / "train.bin", dtype=np.uint16).astype(np.int64)
    index = np.load(tiny_dataset / "train.idx.npy")
    rows = torch.zeros(len(index), int(index[:, 1].max()), dtype=torch.long)  # PAD = 0
    for row, (offset, length, _) in enumerate(index):
        rows[row, :length] = torch.from_numpy(tokens[offset:offset + length])
    state = grammar.start(len(rows))
    for column in rows.T:
        allowed = grammar.allowed(state)
        assert allowed.any(-1).all()
        real = column != 0
        ok = allowed[torch.arange(len(column)), column]
        assert ok[real].all(), f"real token {tok[int(column[real][~ok[real]][0])]} was forbidden"
        grammar.advance(state, column)


def test_grammar_rows_are_independent_and_follow_the_bar():
    tok = build_tokenizer()
    grammar = RemiGrammar(tok)
    rows = [["Bar_None", "PAD_None", "Position_8", "Pitch_60", "Velocity_63", "Duration_1.0.8"],
            ["Bar_None", "TimeSig_3/4", "Position_20", "Pitch_60", "Velocity_63", "Duration_1.0.8"]]
    state = grammar.start(2)
    for a, b in zip(*rows):  # PAD leaves row 0 as it was
        grammar.advance(state, torch.tensor([tok.vocab[a], tok.vocab[b]]))
    allowed = grammar.allowed(state)
    ok = lambda row, token: bool(allowed[row, tok.vocab[token]])  # noqa: E731
    assert not ok(0, "Position_4") and not ok(0, "Position_8") and ok(0, "Position_9"), "time only moves forward"
    assert ok(0, "Position_31"), "4/4 at 8 positions per beat: 32 positions"
    assert ok(1, "Position_23") and not ok(1, "Position_24"), "3/4: 24 positions"
    assert ok(0, "Bar_None") and not ok(0, "PAD_None") and not ok(0, "BOS_None")



def test_chord_limit_strikes_each_key_once_per_onset_and_caps_the_chord():
    tok = build_tokenizer()

    def feed(grammar, state, *tokens):
        for token in tokens:
            grammar.advance(state, torch.tensor([tok.vocab[token]]))

    grammar = RemiGrammar(tok, chord_limit=2)
    state = grammar.start(1)
    ok = lambda token: bool(grammar.allowed(state)[0, tok.vocab[token]])  # noqa: E731
    feed(grammar, state, "Bar_None", "Position_0", "Pitch_60", "Velocity_63", "Duration_1.0.8")
    assert not ok("Pitch_60") and ok("Pitch_64"), "a key is struck once per onset"
    feed(grammar, state, "Pitch_64", "Velocity_63", "Duration_1.0.8")
    assert not ok("Pitch_67") and ok("Position_8") and ok("Bar_None"), "two keys is the chord limit here"
    feed(grammar, state, "Position_8")
    assert ok("Pitch_60") and ok("Pitch_67"), "a new onset starts a new chord"
    unlimited = RemiGrammar(tok)
    state = unlimited.start(1)
    feed(unlimited, state, "Bar_None", "Position_0", "Pitch_60", "Velocity_63", "Duration_1.0.8")
    assert unlimited.allowed(state)[0, tok.vocab["Pitch_60"]], "without a limit the grammar is miditok's alone"


def test_constrained_sampling_from_an_untrained_model_has_zero_grammar_errors():
    tok = build_tokenizer()
    torch.manual_seed(0)
    model = MusicTransformer(ModelConfig(block_size=96, vocab_size=419, n_composers=2, n_layer=1, n_head=2,
                                         n_embd=32, dropout=0.0))
    kwargs = dict(temperature=1.5, top_k=None, top_p=1.0, generator=torch.Generator().manual_seed(0))
    prompt, composer = torch.ones(6, 1, dtype=torch.long), torch.ones(6, dtype=torch.long)
    out = generate(model, prompt, composer, 300, logits_processor=RemiGrammar(tok), **kwargs)
    assert all(grammar_error_rate(tok, row[1:]) == 0 for row in out.tolist())
    kwargs["generator"] = torch.Generator().manual_seed(0)
    free = generate(model, prompt, composer, 300, **kwargs)
    assert np.mean([grammar_error_rate(tok, row[1:]) for row in free.tolist()]) > 0.1, "the mask is doing the work"



def test_token_kinds_group_the_vocabulary_by_token_type():
    from pianogpt.data.remi import build_tokenizer, token_types

    vocab = build_tokenizer().vocab
    kinds, type_index = token_types(vocab)
    pitches = kinds[3:91]  # the 88 piano pitches are ids 3..90
    assert len(kinds) == len(vocab) and (pitches == pitches[0]).all()
    names = {token.split("_", 1)[0] for token in vocab}
    assert len(set(kinds.tolist())) == len(names) and set(type_index) == names
    assert kinds[vocab["Bar_None"]] != pitches[0] and kinds[vocab["Position_0"]] != kinds[vocab["Bar_None"]]

def run_sample(*args):
    return subprocess.run([sys.executable, os.path.join(ROOT, "sample.py"), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def test_samples_are_midi_files_symusic_opens_and_the_same_seed_repeats(tiny_checkpoint, tmp_path):
    from symusic import Score

    args = ["--ckpt", str(tiny_checkpoint), "--composer", "chop", "--num_samples", "2", "--max_new_tokens", "200",
            "--seed", "5"]
    first = run_sample(*args, "--out_dir", str(tmp_path / "a"))
    assert first.returncode == 0, first.stderr
    assert "Chopin (id 3)" in first.stdout and "grammar errors 0.00%" in first.stdout
    for i in range(2):
        score = Score(str(tmp_path / "a" / f"Chopin_5_{i}.mid"))
        meta = json.load(open(tmp_path / "a" / f"Chopin_5_{i}.json"))
        assert sum(len(t.notes) for t in score.tracks) == meta["notes"] > 0
        assert meta["composer_id"] == 3 and meta["seed"] == 5 and meta["grammar_error_rate"] == 0.0
        assert meta["guidance_mode"] == "within_types"  # the default
        assert (tmp_path / "a" / f"Chopin_5_{i}.png").read_bytes()[:4] == b"\x89PNG"
    run_sample(*args, "--out_dir", str(tmp_path / "b"))
    for i in range(2):
        a = json.load(open(tmp_path / "a" / f"Chopin_5_{i}.json"))["token_ids"]
        b = json.load(open(tmp_path / "b" / f"Chopin_5_{i}.json"))["token_ids"]
        assert a == b
    listing = run_sample("--ckpt", str(tiny_checkpoint), "--list_composers")
    assert "3  Chopin" in listing.stdout and "0  <unconditional>" in listing.stdout


def test_a_prompt_file_is_continued(tiny_checkpoint, tmp_path):
    from conftest import make_score, write_midi

    prompt = write_midi(str(tmp_path / "prompt.mid"), make_score(seed=9))
    result = run_sample("--ckpt", str(tiny_checkpoint), "--composer_id", "1", "--prompt", prompt,
                        "--prompt_tokens", "40", "--max_new_tokens", "30", "--out_dir", str(tmp_path), "--name", "cont")
    assert result.returncode == 0, result.stderr
    ids = json.load(open(tmp_path / "cont.json"))["token_ids"]
    assert len(ids) == 40 + 30


@pytest.mark.parametrize("args, message", [
    (["--top_k", "-1"], "--top_k"), (["--top_p", "0"], "--top_p"), (["--top_p", "1.2"], "--top_p"),
    (["--temperature", "0"], "--temperature"), (["--temperature", "-0.5"], "--temperature"),
    (["--max_new_tokens", "0"], "--max_new_tokens"), (["--guidance", "nan"], "--guidance"),
    (["--composer_id", "99"], "out of range"), (["--composer", "Mahler"], "unknown composer"),
    (["--device", "tpu"], "invalid choice"), ([], "choose a composer"),
])
def test_bad_flags_are_one_line_errors(tiny_checkpoint, args, message, capsys):
    import sample

    with pytest.raises(SystemExit) as exit_info:
        sample.main(["--ckpt", str(tiny_checkpoint), *args])
    stderr = capsys.readouterr().err
    assert exit_info.value.code == 2, stderr
    assert message in stderr and len(stderr.strip().splitlines()) == 1


def test_missing_or_foreign_checkpoint_is_a_one_line_error(tmp_path):
    result = run_sample("--ckpt", str(tmp_path / "nope.pt"), "--composer_id", "1")
    assert result.returncode == 2 and "checkpoint not found" in result.stderr
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    result = run_sample("--ckpt", str(junk), "--composer_id", "1")
    assert result.returncode == 2 and "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_a_mix_of_one_composer_at_weight_1_is_that_composer():
    torch.manual_seed(0)
    model = MusicTransformer(ModelConfig(block_size=32, vocab_size=30, n_composers=4, n_layer=2, n_head=2, n_embd=16,
                                         dropout=0.0)).eval()
    idx = torch.randint(2, 30, (2, 10))
    one_hot = torch.nn.functional.one_hot(torch.tensor([2, 2]), 4).float()
    torch.testing.assert_close(model(idx, one_hot, all_logits=True)[0], model(idx, torch.tensor([2, 2]), all_logits=True)[0])
    by_id = generate(model, idx[:, :1], torch.tensor([2, 2]), 20, guidance=3.0, generator=torch.Generator().manual_seed(1))
    by_mix = generate(model, idx[:, :1], one_hot, 20, guidance=3.0, generator=torch.Generator().manual_seed(1))
    assert torch.equal(by_id, by_mix)


def test_a_mix_is_the_weighted_sum_of_composer_conditions():
    torch.manual_seed(0)
    model = MusicTransformer(ModelConfig(block_size=32, vocab_size=30, n_composers=4, n_layer=1, n_head=2, n_embd=16,
                                         dropout=0.0)).eval()
    idx = torch.randint(2, 30, (1, 10))
    mix = torch.tensor([[0.0, 0.7, 0.3, 0.0]])
    expected_embedding = 0.7 * model.wce.weight[1] + 0.3 * model.wce.weight[2]
    with torch.no_grad():
        model.wce.weight[3] = expected_embedding
    torch.testing.assert_close(model(idx, mix)[0], model(idx, torch.tensor([3]))[0])
    assert not torch.allclose(model(idx, mix)[0], model(idx, torch.tensor([1]))[0])


def test_mix_flags_resolve_names_and_refuse_bad_weights():
    mix, name = resolve_mix(COMPOSERS, "chopin:0.7,bach:0.3")
    assert mix == pytest.approx({2: 0.7, 1: 0.3}) and name == "Chopin, Frédéric 0.7 + Bach, Johann Sebastian 0.3"
    assert resolve_mix(COMPOSERS, "chopin:2,bach:2")[0] == pytest.approx({2: 0.5, 1: 0.5})
    for bad, message in (("chopin:-1", "weights must be > 0"), ("chopin:x", "not NAME:WEIGHT"),
                         ("nobody:1", "unknown composer")):
        with pytest.raises(CliError, match=message):
            resolve_mix(COMPOSERS, bad)


def test_the_cli_samples_a_mix_and_records_it(tiny_checkpoint, tmp_path):
    import sample

    sample.main(["--ckpt", str(tiny_checkpoint), "--composer", "bach:1", "--max_new_tokens", "40", "--out_dir",
                 str(tmp_path / "mix"), "--name", "m"])
    sample.main(["--ckpt", str(tiny_checkpoint), "--composer", "bach", "--max_new_tokens", "40", "--out_dir",
                 str(tmp_path / "one"), "--name", "m"])
    mixed, single = (json.load(open(tmp_path / d / "m.json")) for d in ("mix", "one"))
    assert mixed["token_ids"] == single["token_ids"] and mixed["mix"] == {str(single["composer_id"]): 1.0}


def test_auto_sampling_precision_keeps_a_small_model_in_float32_on_a_cpu():
    from model import ModelConfig, MusicTransformer
    from sample import SMALL_MODEL_PARAMS, sampling_dtype

    small = MusicTransformer(ModelConfig(block_size=32, vocab_size=64, n_composers=4, n_layer=1, n_head=2, n_embd=32))
    assert small.num_params() <= SMALL_MODEL_PARAMS
    assert sampling_dtype("auto", small, "cpu") == "float32"
    assert sampling_dtype("bfloat16", small, "cpu") == "bfloat16"  # an explicit choice is kept
    big = MusicTransformer(ModelConfig(block_size=32, vocab_size=64, n_composers=4, n_layer=4, n_head=8, n_embd=512))
    from pianogpt.devices import resolve_dtype
    assert big.num_params() > SMALL_MODEL_PARAMS and sampling_dtype("auto", big, "cpu") == resolve_dtype("auto", "cpu")


def bar_lines(ids, tokenizer):
    return [i for i, token in enumerate(ids) if token == tokenizer.vocab["Bar_None"]]


def test_bars_16_gives_16_bars(tiny_checkpoint, tmp_path):
    result = run_sample("--ckpt", str(tiny_checkpoint), "--composer_id", "2", "--bars", "16", "--no-audio",
                        "--out_dir", str(tmp_path))
    assert result.returncode == 0 and "before their bar line" not in result.stdout, result.stderr
    sample = json.load(open(tmp_path / "Bach_1337.json"))
    assert len(bar_lines(sample["token_ids"], build_tokenizer())) == 16 and sample["bars"] == 16


def test_seconds_stop_at_the_first_bar_line_past_that_time(tiny_checkpoint, tmp_path):
    from pianogpt.data.remi import bar_line_seconds

    tokenizer = build_tokenizer()
    result = run_sample("--ckpt", str(tiny_checkpoint), "--composer_id", "2", "--seconds", "20", "--no-audio",
                        "--out_dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    ids = json.load(open(tmp_path / "Bach_1337.json"))["token_ids"]
    closing = bar_line_seconds(tokenizer, ids + [tokenizer.vocab["Bar_None"]])  # where the sample was cut
    last_kept = bar_line_seconds(tokenizer, ids[:bar_lines(ids, tokenizer)[-1] + 1])
    assert last_kept < 20 <= closing
