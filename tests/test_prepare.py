"""prepare.py: MIDI folder -> REMI memmap dataset."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pianogpt.cli import CliError
from conftest import REAL_MIDI, ROOT, make_drums_only, make_no_notes, make_score, write_midi
from prepare import find_midi_files, hash_split, prepare
from pianogpt.data.remi import build_tokenizer, encode_score, grammar_error_rate, merge_piano_tracks, note_match, pitch_token_ids


def read_split(out, split):
    tokens = np.memmap(out / f"{split}.bin", dtype=np.uint16, mode="r")
    index = np.load(out / f"{split}.idx.npy")
    return tokens, index


def read_pieces(out):
    return [json.loads(line) for line in open(out / "pieces.jsonl")]


def read_skipped(out):
    return {os.path.basename(s["path"]): s["reason"] for s in map(json.loads, open(out / "skipped.jsonl"))}


def test_tokenizer_is_the_seeds_419_token_remi():
    tok = build_tokenizer()
    assert len(tok) == 419
    assert tok.vocab["PAD_None"] == 0 and tok.vocab["BOS_None"] == 1
    ids = pitch_token_ids(tok)
    assert len(ids) == 88 and np.all(np.diff(ids) == 1), "piano pitches are contiguous ids"


def test_one_stream_keeps_the_notes_of_every_track():
    """Decoded notes == notes of ALL tracks inside 21..108: pitch exact, onset within
    1/16 quarter (half of REMI's 8-per-beat grid), velocity within one of 32 bins."""
    tok = build_tokenizer()
    score = make_score(seed=3)
    merged, _ = merge_piano_tracks(score)
    ids, _ = encode_score(tok, score)
    decoded = tok.decode([ids.tolist()])
    in_range = sum(int(((t.notes.numpy()["pitch"] >= 21) & (t.notes.numpy()["pitch"] <= 108)).sum()) for t in score.tracks)
    first_track_only = len(score.tracks[0].notes)
    matched, n_ref, n_dec = note_match(merged, decoded)
    assert n_ref == in_range and n_ref > first_track_only
    assert matched == n_ref == n_dec
    velocities_in = np.sort(merged.tracks[0].notes.numpy()["velocity"].astype(int))
    velocities_out = np.sort(decoded.tracks[0].notes.numpy()["velocity"].astype(int))
    assert np.abs(velocities_in - velocities_out).max() <= 128 / 32
    assert grammar_error_rate(tok, ids) == 0


def test_triplets_survive_within_half_a_grid_step():
    """miditok alone rounds twice (resample, then grid) and moves triplets 3/32 quarter."""
    from symusic import Note, Score, Tempo, TimeSignature, Track

    score = Score(480)
    score.tempos.append(Tempo(0, 100.0))
    score.time_signatures.append(TimeSignature(0, 4, 4))
    score.time_signatures.append(TimeSignature(480 * 4, 6, 8))  # an x/8 metre doubles miditok's resolution
    onsets = np.arange(0, 480 * 12, 160, dtype=np.int32)  # triplet eighths
    track = Track(name="p", program=0)
    track.notes = Note.from_numpy(time=onsets, duration=np.full(len(onsets), 150, np.int32),
                                  pitch=(60 + np.arange(len(onsets)) % 12).astype(np.int8),
                                  velocity=np.full(len(onsets), 80, np.int8))
    score.tracks.append(track)
    tok = build_tokenizer()
    ids, _ = encode_score(tok, score)
    assert note_match(score, tok.decode([ids.tolist()]))[0] == len(onsets)


def test_folders_layout_writes_the_designed_dataset(folder_corpus, tmp_path):
    out = tmp_path / "data"
    meta = prepare(folder_corpus, out, workers=1, isolate=False, val_fraction=0.3)
    composers = json.load(open(out / "composers.json"))
    assert composers == {"<unconditional>": 0, "Alkan": 1, "Bach": 2, "Chopin": 3}
    assert meta["vocab_size"] == 419 and meta["pad_id"] == 0 and meta["bos_id"] == 1
    assert meta["layout"] == "folders" and meta["n_composers"] == 4
    pieces = read_pieces(out)
    assert len(pieces) == 9
    for split in ("train", "val"):
        tokens, index = read_split(out, split)
        rows = [p for p in pieces if p["split"] == split]
        assert index.dtype == np.int64 and index.shape == (len(rows), 3)
        # offsets tile the file exactly: no piece crosses into another
        assert np.array_equal(index[:, 0], np.concatenate([[0], np.cumsum(index[:, 1])[:-1]]))
        assert index[:, 1].sum() == len(tokens)
        assert ((index[:, 2] >= 1) & (index[:, 2] < meta["n_composers"])).all()
        for row, piece in zip(index, rows):
            assert piece["n_tokens"] == row[1] and composers[piece["composer"]] == row[2] == piece["composer_id"]
            first = tokens[row[0]:row[0] + 4]
            assert first[0] != 0, "pieces start with a real token, never PAD"
        assert tokens.max(initial=0) < 419
    from miditok import REMI

    assert len(REMI(params=out / "tokenizer.json")) == 419
    assert meta["token_length"]["min"] <= meta["token_length"]["median"] <= meta["token_length"]["max"]


def test_giantmidi_layout_reads_composer_from_file_name(tmp_path):
    root = tmp_path / "giant"
    names = ["Chopin, Frédéric, Nocturne Op.9, No.2, dQw4w9WgXcQ.mid", "Chopin, Frédéric, Waltz, aaaaaaaaaaa.mid",
             "Satie, Erik, Gymnopédie No.1, bbbbbbbbbbb.mid", "Anonymous, , Minuet, ccccccccccc.mid"]
    for i, name in enumerate(names):
        write_midi(str(root / name), make_score(seed=i))
    out = tmp_path / "data"
    meta = prepare(root, out, workers=1, isolate=False)
    assert meta["layout"] == "giantmidi"
    composers = json.load(open(out / "composers.json"))
    assert set(composers) == {"<unconditional>", "Anonymous", "Chopin, Frédéric", "Satie, Erik"}
    by_path = {p["path"]: p["composer"] for p in read_pieces(out)}
    assert by_path[names[0]] == "Chopin, Frédéric"


def test_maestro_layout_uses_the_csv_composer_and_split(tmp_path):
    root = tmp_path / "maestro-v3.0.0"
    rows = [("Johann Sebastian Bach", "train", "2004/a.midi"), ("Johann Sebastian Bach", "validation", "2004/b.midi"),
            ("Franz Liszt", "test", "2006/c.midi"), ("Franz Liszt", "train", "2006/d.midi")]
    os.makedirs(root, exist_ok=True)
    with open(root / "maestro-v3.0.0.csv", "w") as f:
        f.write("canonical_composer,canonical_title,split,year,midi_filename,audio_filename,duration\n")
        for i, (composer, split, path) in enumerate(rows):
            f.write(f'"{composer}",Title {i},{split},2004,{path},{path}.wav,100.0\n')
            write_midi(str(root / path), make_score(seed=i))
    out = tmp_path / "data"
    meta = prepare(root, out, workers=1, isolate=False)
    assert meta["layout"] == "maestro"
    split_of = {p["path"]: (p["composer"], p["split"]) for p in read_pieces(out)}
    assert split_of == {"2004/a.midi": ("Johann Sebastian Bach", "train"), "2004/b.midi": ("Johann Sebastian Bach", "val"),
                        "2006/c.midi": ("Franz Liszt", "val"), "2006/d.midi": ("Franz Liszt", "train")}


def test_every_kind_of_bad_input_is_skipped_with_its_reason(tmp_path):
    root = tmp_path / "midi" / "Bach"
    good = write_midi(str(root / "good.mid"), make_score(seed=1))
    open(root / "empty.mid", "wb").close()
    (root / "text.mid").write_text("this is not a MIDI file at all, just text pretending to be one")
    data = open(good, "rb").read()
    (root / "truncated.mid").write_bytes(data[: len(data) // 3])
    make_no_notes(str(root / "silent.mid"))
    make_drums_only(str(root / "drums.mid"))
    write_midi(str(root / "short.mid"), make_score(seed=2, n_bars=1, with_changes=False, out_of_range=False))
    out = tmp_path / "data"
    meta = prepare(tmp_path / "midi", out, workers=1, isolate=False, min_tokens=60)
    skipped = read_skipped(out)
    assert skipped["empty.mid"] == "empty_file"
    assert skipped["text.mid"] == "unreadable"
    assert skipped["silent.mid"] == "no_notes"
    assert skipped["drums.mid"] == "drums_only"
    assert skipped["short.mid"] == "too_short"
    # a truncated file either fails to parse or loses its tail; it never crashes the run
    assert skipped.get("truncated.mid", "kept") in ("unreadable", "too_short", "no_notes", "kept")
    assert [p["path"] for p in read_pieces(out) if p["path"].endswith("good.mid")] == ["Bach/good.mid"]
    assert sum(meta["skipped"].values()) == len(skipped)


def run_prepare(*args, cwd=ROOT):
    return subprocess.run([sys.executable, os.path.join(ROOT, "prepare.py"), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("args, message", [
    (["--midi_dir", "/nonexistent/folder"], "is not a folder"),
    (["--layout", "zip"], "invalid choice"),
    (["--val_fraction", "0.9"], "must be in"),
    (["--workers", "0"], "positive integer"),
    (["--min_tokens", "-3"], ">= 0"),
])
def test_bad_flags_are_one_line_errors(args, message, capsys):
    import prepare as prepare_module

    with pytest.raises(SystemExit) as exit_info:
        prepare_module.main(args)
    stderr = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert message in stderr and len(stderr.strip().splitlines()) == 1


def test_empty_midi_dir_is_a_one_line_error(tmp_path):
    (tmp_path / "empty").mkdir()
    result = run_prepare("--midi_dir", str(tmp_path / "empty"), "--out_dir", str(tmp_path / "out"))
    assert result.returncode == 2 and "holds no .mid/.midi files" in result.stderr
    assert not (tmp_path / "out").exists()


def test_split_is_deterministic_and_adding_files_moves_no_piece(folder_corpus, tmp_path):
    prepare(folder_corpus, tmp_path / "a", workers=1, isolate=False, val_fraction=0.3)
    first = {p["path"]: p["split"] for p in read_pieces(tmp_path / "a")}
    for i in range(5):
        write_midi(str(folder_corpus / "Bach" / f"extra{i}.mid"), make_score(seed=50 + i))
    prepare(folder_corpus, tmp_path / "b", workers=1, isolate=False, val_fraction=0.3)
    second = {p["path"]: p["split"] for p in read_pieces(tmp_path / "b")}
    assert all(second[path] == split for path, split in first.items())
    assert hash_split("Bach/piece0.mid", 0.3) == hash_split("Bach/piece0.mid", 0.3)
    shares = [hash_split(f"x/{i}.mid", 0.05) == "val" for i in range(4000)]
    assert 0.04 < np.mean(shares) < 0.06


def test_parallel_workers_write_the_same_bytes(folder_corpus, tmp_path):
    prepare(folder_corpus, tmp_path / "one", workers=1, isolate=False)
    prepare(folder_corpus, tmp_path / "two", workers=2)
    for name in ("train.bin", "val.bin", "pieces.jsonl", "composers.json"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()


def test_a_failed_write_keeps_the_previous_dataset(folder_corpus, tmp_path, monkeypatch):
    out = tmp_path / "data"
    prepare(folder_corpus, out, workers=1, isolate=False)
    before = (out / "train.bin").read_bytes()
    write_midi(str(folder_corpus / "Bach" / "new.mid"), make_score(seed=99))

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "save", disk_full)
    with pytest.raises(CliError, match="No space left on device"):
        prepare(folder_corpus, out, workers=1, isolate=False)
    assert (out / "train.bin").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "midi"], "no temp folder is left behind"


def test_find_midi_files_ignores_other_files(tmp_path):
    write_midi(str(tmp_path / "A" / "x.MID"), make_score())
    (tmp_path / "A" / "notes.txt").write_text("hi")
    write_midi(str(tmp_path / "B" / "y.midi"), make_score())
    assert find_midi_files(tmp_path) == ["A/x.MID", "B/y.midi"]


@pytest.mark.skipif(not os.path.isdir(REAL_MIDI), reason="../shared/midi/piano-midi is absent (fresh checkout): real-data test skipped")
def test_real_piano_midi_keeps_every_note(tmp_path):
    """End to end on the real piano-midi.de set: no piece lost, every note kept."""
    meta = prepare(REAL_MIDI, tmp_path / "pm", check_notes=True)
    composers = json.load(open(tmp_path / "pm" / "composers.json"))
    assert len(composers) == 27 and composers["<unconditional>"] == 0  # 25 composers + Christmas + id 0
    assert meta["skipped"] == {}
    assert 3.0e6 < meta["n_tokens"]["train"] + meta["n_tokens"]["val"] < 3.5e6
    assert meta["note_check"]["worst_recall"] == 1.0


def test_default_output_never_replaces_the_midi_folder(tmp_path, monkeypatch):
    import prepare as prepare_module

    monkeypatch.chdir(tmp_path)
    write_midi(str(tmp_path / "data" / "midi" / "Bach" / "a.mid"), make_score(seed=1))
    write_midi(str(tmp_path / "data" / "midi" / "Bach" / "b.mid"), make_score(seed=2))
    prepare_module.main(["--workers", "1"])
    assert sorted(os.listdir(tmp_path / "data" / "midi" / "Bach")) == ["a.mid", "b.mid"]
    assert (tmp_path / "data" / "midi_tokens" / "meta.json").is_file()


def test_default_output_avoids_a_parent_of_the_midi_folder(tmp_path, monkeypatch):
    from prepare import default_out_dir

    monkeypatch.chdir(tmp_path)
    assert default_out_dir(Path("data/midi")) == Path("data/midi_tokens")
    assert default_out_dir(Path("data/bach/bach")) == Path("data/bach_tokens")  # data/bach would contain it
    assert default_out_dir(Path("elsewhere/chopin")) == Path("data/chopin")


@pytest.mark.parametrize("where", ["same", "inside", "parent", "foreign"])
def test_an_output_that_would_destroy_other_files_is_refused(folder_corpus, tmp_path, where):
    out = {"same": folder_corpus, "inside": folder_corpus / "data", "parent": folder_corpus.parent,
           "foreign": tmp_path / "photos"}[where]
    if where == "foreign":
        out.mkdir()
        (out / "holiday.jpg").write_bytes(b"precious")
    before = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*"))
    with pytest.raises(CliError, match="overlaps --midi_dir|is not a dataset written by prepare.py"):
        prepare(folder_corpus, out, workers=1, isolate=False)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == before


def test_several_folders_make_one_dataset_with_composers_matched_by_name(tmp_path, capsys):
    a, b = tmp_path / "set-a", tmp_path / "set-b"
    write_midi(str(a / "Burgmüller" / "x.mid"), make_score(seed=1))
    write_midi(str(a / "Bach" / "y.mid"), make_score(seed=2))
    write_midi(str(b / "Burgmueller" / "z.mid"), make_score(seed=3))
    write_midi(str(b / "bach" / "y-copy.mid"), make_score(seed=2))  # the same piece again
    write_midi(str(b / "Chopin" / "w.mid"), make_score(seed=4))
    out = tmp_path / "data"
    meta = prepare([a, b], out, workers=1, isolate=False, val_fraction=0.0)
    pieces = read_pieces(out)
    composers = json.loads((out / "composers.json").read_text())
    assert set(composers) == {"<unconditional>", "Bach", "Burgmüller", "Chopin"} or \
        set(composers) == {"<unconditional>", "Bach", "Burgmueller", "Chopin"}
    by_path = {p["path"]: p["composer"] for p in pieces}
    assert by_path["set-a/Burgmüller/x.mid"] == by_path["set-b/Burgmueller/z.mid"], "one composer, two spellings"
    assert "set-b/bach/y-copy.mid" not in by_path
    skipped = [json.loads(line) for line in open(out / "skipped.jsonl")]
    assert skipped == [{"path": "set-b/bach/y-copy.mid", "reason": "duplicate",
                        "detail": "same first 300 notes as set-a/Bach/y.mid"}]
    assert meta["skipped"] == {"duplicate": 1} and len(meta["composer_names_merged"]) == 1
    assert "composer names merged" in capsys.readouterr().out


def test_composer_spellings_that_are_one_composer():
    from prepare import merge_composer_names

    mapping, merged = merge_composer_names({"Burgmüller": 3, "Burgmueller": 2, "burgmuller": 1, "Rachmaninov": 1,
                                            "Rachmaninoff": 5, "Rimsky": 2, "Rimsky-Korsakov": 1, "Bach": 9,
                                            "Cpe_bach": 2, "Durand_e": 1, "Durand_ma": 1})
    assert mapping["Burgmueller"] == mapping["burgmuller"] == "Burgmüller"
    assert mapping["Rachmaninov"] == "Rachmaninoff" and mapping["Rimsky-Korsakov"] == mapping["Rimsky"]
    assert len({mapping["Bach"], mapping["Cpe_bach"], mapping["Durand_e"], mapping["Durand_ma"]}) == 4
    assert len(merged) == 3


def test_another_sequencing_of_a_piece_is_one_work_and_unrelated_pieces_are_not():
    from prepare import near_duplicate_links, union_groups

    rng = np.random.default_rng(0)
    piece = rng.integers(40, 80, 400)
    resequenced = piece.copy()
    resequenced[rng.choice(400, 8, replace=False)] += 1  # a few notes differ
    other = rng.integers(40, 80, 400)
    scale = np.tile(np.arange(60, 72), 30)  # shared figures alone do not make a work
    pieces = [piece, other, resequenced, scale, scale[5:] + 0]
    groups = union_groups(len(pieces), near_duplicate_links(pieces))
    assert groups[0] == groups[2] and groups[0] != groups[1]
    assert len({groups[0], groups[1], groups[3]}) == 3
