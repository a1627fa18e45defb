"""Many archives per composer: works named as each archive names them, a folder held out whole beside
any others, encodings kept between runs, and leave-one-archive-out as one command."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, make_score, performed, write_midi


def test_a_collections_pieces_are_works_of_their_own_and_a_works_performances_share_one():
    from pianogpt.data.dataset import work_of

    # the score corpora: <collection>__<piece>, each piece a work
    assert work_of("kern-scores/Bach/bach-wtc__wtc1p01.mid") != work_of("kern-scores/Bach/bach-wtc__wtc1p02.mid")
    assert work_of("dcml-scores/Chopin/chopin_mazurkas__BI105_1op30_1.mid") == \
        "dcml-scores/Chopin/chopin_mazurkas__BI105_1op30_1.mid"
    # performances of one work: ASAP's <Work>__<performer>, the Welte rolls' <Title>__<Pianist>_<roll id>
    assert work_of("Chopin/Ballades_1__Ali01.mid") == work_of("Chopin/Ballades_1__Day04.mid") == "Chopin/Ballades_1"
    assert work_of("Liszt/13th_rhapsody__Dohnanyi_bg098gg3899.mid") == \
        work_of("Liszt/13th_rhapsody__Busoni_xy123ab4567.mid") == "Liszt/13th_rhapsody"


def dataset_files(data_dir):
    return {name: (data_dir / name).read_bytes() for name in
            ("train.bin", "val.bin", "train.idx.npy", "val.idx.npy", "pieces.jsonl", "skipped.jsonl", "composers.json")}


def test_the_encode_cache_gives_the_same_dataset_and_encodes_a_file_once(folder_corpus, tmp_path, capsys):
    from prepare import prepare

    cache = tmp_path / "cache"
    prepare(folder_corpus, tmp_path / "plain", workers=1, isolate=False, renditions=1)
    prepare(folder_corpus, tmp_path / "first", workers=1, isolate=False, renditions=1, cache_dir=cache)
    assert "0 files read back, 9 encoded" in capsys.readouterr().out
    prepare(folder_corpus, tmp_path / "again", workers=1, isolate=False, renditions=1, cache_dir=cache)
    assert "9 files read back, 0 encoded" in capsys.readouterr().out
    entries = sorted(cache.rglob("*.npz"))
    entries[0].write_bytes(b"cut short")  # a damaged entry is encoded again, not read
    prepare(folder_corpus, tmp_path / "mended", workers=1, isolate=False, renditions=1, cache_dir=cache)
    assert "8 files read back, 1 encoded" in capsys.readouterr().out
    plain = dataset_files(tmp_path / "plain")
    assert dataset_files(tmp_path / "again") == plain and dataset_files(tmp_path / "mended") == plain
    prepare(folder_corpus, tmp_path / "other", workers=1, isolate=False, renditions=0, cache_dir=cache)
    assert "0 files read back, 9 encoded" in capsys.readouterr().out  # other settings: other entries


def test_a_held_out_folder_keeps_its_copy_of_a_piece_found_in_another_folder(tmp_path):
    from prepare import prepare

    score = make_score(seed=3, n_bars=16, with_changes=False)
    for folder in ("first", "second"):
        write_midi(str(tmp_path / folder / "Bach" / "same.mid"), score)
        write_midi(str(tmp_path / folder / "Chopin" / f"{folder}.mid"), make_score(seed=len(folder), n_bars=16))
    prepare([tmp_path / "first", tmp_path / "second"], tmp_path / "data", workers=1, isolate=False,
            holdout=["second"])
    splits = {json.loads(line)["path"]: json.loads(line)["split"] for line in open(tmp_path / "data" / "pieces.jsonl")}
    skipped = [json.loads(line) for line in open(tmp_path / "data" / "skipped.jsonl")]
    assert splits["second/Bach/same.mid"] == "heldout" and "first/Bach/same.mid" not in splits
    assert [(s["path"], s["reason"]) for s in skipped] == [("first/Bach/same.mid", "duplicate")]


def test_evaluate_compares_exactly_the_composers_it_is_told_and_names_each_credits_piece(tiny_checkpoint):
    from evaluate import EvalOptions, evaluate
    from pianogpt.cli import CliError

    request = EvalOptions(samples_per_composer=0, num_windows=4, max_windows=1, compare=("Bach", "Chopin"))
    result = evaluate(tiny_checkpoint, request)
    assert set(result["comparison_set"]["composers"]) == {"Bach", "Chopin"}
    ident = result["val_pieces"]["identification"]
    assert ident["chance"] == 0.5 and len(ident["paths"]) == len(ident["credit"]) > 0
    assert all(p.split("/")[0] in ("Bach", "Chopin") for p in ident["paths"])
    with pytest.raises(CliError, match="closest: Chopin"):
        evaluate(tiny_checkpoint, EvalOptions(samples_per_composer=0, num_windows=4, max_windows=1,
                                          compare=("Bach", "Chopn")))


TINY_RECIPE = """block_size = 32
n_layer = 1
n_head = 2
n_embd = 32
batch_size = 4
grad_accum = 1
max_iters = 6
eval_interval = 6
eval_iters = 1
log_interval = 3
learning_rate = 3e-3
warmup_frac = 0.0
device = "cpu"
dtype = "float32"
compile = "off"
"""


@pytest.fixture(scope="module")
def three_archives(tmp_path_factory):
    """Three folders with Bach and Chopin in each: two of scores, one of performances."""
    root = tmp_path_factory.mktemp("archives")
    for a, archive in enumerate(["scores-a", "scores-b", "recitals"]):
        for c, composer in enumerate(["Bach", "Chopin"]):
            for i in range(3):
                score = make_score(seed=1000 * a + 100 * c + i, n_bars=12, with_changes=False)
                write_midi(str(root / archive / composer / f"{archive}_{i}.mid"),
                           performed(score, seed=i) if archive == "recitals" else score)
    (root / "recipe.py").write_text(TINY_RECIPE)
    return root


def leave_one_out(root, *flags):
    command = [sys.executable, os.path.join(ROOT, "leave_one_out.py"), "--midi_root", str(root),
               "--folders", "scores-a,scores-b,recitals", "--baseline_folders", "scores-a,recitals",
               "--holdouts", "scores-b,recitals", "--config", str(root / "recipe.py"), "--minutes", "1",
               "--min_train_pieces", "1", "--max_windows", "1", "--renditions", "0", "--data_root", str(root / "data"),
               "--cache_dir", str(root / "cache"), "--out_dir", str(root / "out"), *flags]
    return subprocess.run(command, capture_output=True, text=True, timeout=600)


def test_leave_one_out_trains_each_arm_without_the_held_out_folder_and_pairs_them_on_its_pieces(three_archives):
    done = leave_one_out(three_archives)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for held in ("scores-b", "recitals"):
        for arm in ("all", "baseline"):
            meta = json.loads((three_archives / "data" / f"{arm}-minus-{held}" / "meta.json").read_text())
            assert meta["heldout_sources"] == [held]
            trained_on = {os.path.basename(s) for s in meta["source"]} - {held}
            assert trained_on == ({"scores-a", "scores-b", "recitals"} if arm == "all" else {"scores-a", "recitals"}) - {held}
    report = json.loads((three_archives / "out" / "loao.json").read_text())
    for held in ("scores-b", "recitals"):
        rows = report["archives"][held]
        assert rows["all"]["pieces"] == rows["baseline"]["pieces"] == rows["baseline"]["paired_pieces"] == 6
        assert rows["all"]["tokens"][0] == 6 * 4 * 32  # iterations x batch x grad_accum x context
    assert report["mean"]["baseline"]["archives"] == 2 and "all_minus_this" in report["mean"]["baseline"]
    assert set(report["archives"]["recitals"]["all"]["by_kind"]) == {"performed"}
    table = (three_archives / "out" / "loao.md").read_text()
    assert "| recitals | baseline | 6 |" in table and "| Bach |" in table
    again = leave_one_out(three_archives)  # every step is there: nothing runs again, the report is the same
    assert again.returncode == 0 and "start" not in again.stdout
    assert json.loads((three_archives / "out" / "loao.json").read_text())["archives"] == report["archives"]
    other = leave_one_out(three_archives, "--minutes", "2")  # a run there was trained otherwise: never mixed in
    assert other.returncode == 2 and "was trained by" in other.stderr and "Traceback" not in other.stderr


def test_leave_one_out_refuses_a_folder_that_is_not_there_naming_those_that_are(three_archives):
    done = leave_one_out(three_archives, "--holdouts", "scores-c")
    assert done.returncode == 2 and "scores-c is not a folder" in done.stderr
    assert "recitals, scores-a, scores-b" in done.stderr and "Traceback" not in done.stderr
    done = leave_one_out(three_archives, "--arms", "all,wider")
    assert done.returncode == 2 and "valid: all, baseline" in done.stderr


def test_archive_balance_draws_each_archive_of_a_composer_alike_and_keeps_each_composers_share():
    from pianogpt.data.dataset import piece_weights

    composers = np.array([1] * 9 + [1] + [2] * 4)  # composer 1: nine pieces in archive 0, one in archive 1
    archives = np.array([0] * 9 + [1] + [0] * 4)
    files = np.zeros(14, bool)
    weights = piece_weights(composers, files, 0.0, archives=archives, archive_balance=1.0)
    assert weights[:9].sum() == pytest.approx(weights[9])  # both archives of composer 1 alike
    assert weights[:10].sum() == pytest.approx(10 / 14) and weights[10:] == pytest.approx(np.full(4, 1 / 14))
    half = piece_weights(composers, files, 0.0, archives=archives, archive_balance=0.5)
    assert half[9] / half[0] == pytest.approx(3.0)  # (9 / 1) ** 0.5
    assert piece_weights(composers, files, 0.0, archives=archives, archive_balance=0.0) is None
    assert piece_weights(composers, files, 0.0, archives=np.zeros(14, int), archive_balance=1.0) is None


def test_each_piece_knows_its_archive(three_archives, tmp_path):
    from pianogpt.data.dataset import open_dataset
    from prepare import prepare

    prepare([three_archives / "scores-a", three_archives / "recitals"], tmp_path / "data", workers=1, isolate=False,
            renditions=1)
    dataset = open_dataset(tmp_path / "data")
    ids = dataset.archive_ids("train")
    folders = [p["path"].split("/")[0] for p in dataset.pieces() if p["split"] == "train"]
    assert len(ids) == len(dataset.splits["train"].index) and len(set(ids)) == 2
    assert all((a == b) == (fa == fb) for a, fa in zip(ids, folders) for b, fb in zip(ids, folders))
