"""dataset.py: a damaged dataset or checkpoint is one line from every program, before any work."""
import json
import os
import shutil

import numpy as np
import pytest
import torch

import evaluate
import prepare
import sample
import train
from pianogpt.data.dataset import DatasetError, open_dataset, verify_dataset


def copy_of(tiny_dataset, tmp_path):
    target = tmp_path / "data"
    shutil.copytree(tiny_dataset, target)
    return target


def rewrite_json(path, change):
    value = json.loads(path.read_text())
    change(value)
    path.write_text(json.dumps(value))


def halve_train_bin(d):
    data = (d / "train.bin").read_bytes()
    (d / "train.bin").write_bytes(data[: len(data) // 4 * 2])


def odd_train_bin(d):
    with open(d / "train.bin", "ab") as f:
        f.write(b"\x00")


def corrupt_tokenizer(d):
    (d / "tokenizer.json").write_text('{"config": {"pitch_range": [21, ')


def index_past_the_end(d):
    index = np.load(d / "train.idx.npy")
    index[-1, 1] += 10
    np.save(d / "train.idx.npy", index)


def token_at_vocab_size(d):
    tokens = np.fromfile(d / "train.bin", dtype=np.uint16)
    tokens[5] = json.loads((d / "meta.json").read_text())["vocab_size"]
    tokens.tofile(d / "train.bin")


def composer_past_the_table(d):
    index = np.load(d / "val.idx.npy")
    index[0, 2] = 99
    np.save(d / "val.idx.npy", index)


def meta_from_another_tokenizer(d):
    rewrite_json(d / "meta.json", lambda m: m.update(vocab_size=500))


def old_format(d):
    rewrite_json(d / "meta.json", lambda m: m.pop("format_version"))


DAMAGE = {  # damage -> (file the error must name, words it must hold)
    halve_train_bin: ("train.bin", "bytes"),
    odd_train_bin: ("train.bin", "bytes"),
    corrupt_tokenizer: ("tokenizer.json", "does not parse"),
    index_past_the_end: ("train.idx.npy", "outside"),
    token_at_vocab_size: ("train.bin", "vocabulary size"),
    composer_past_the_table: ("val.idx.npy", "composer id 99"),
    meta_from_another_tokenizer: ("tokenizer.json", "500"),
    old_format: ("meta.json", "format version"),
}


def one_line_error(capsys, run):
    with pytest.raises(SystemExit) as stop:
        run()
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("damage", DAMAGE, ids=lambda f: f.__name__)
def test_a_damaged_dataset_is_one_line_from_train_and_evaluate_and_nothing_is_written(damage, tiny_dataset,
                                                                                      tiny_checkpoint, tmp_path, capsys):
    data = copy_of(tiny_dataset, tmp_path)
    damage(data)
    name, words = DAMAGE[damage]
    out = tmp_path / "run"
    err = one_line_error(capsys, lambda: train.main([f"--data_dir={data}", f"--out_dir={out}", "--max_iters=2",
                                                     "--block_size=32", "--n_layer=1", "--n_head=2", "--n_embd=32"]))
    assert name in err and words in err and "prepare.py" in err, err
    assert not out.exists(), "nothing is written before the checks"
    err = one_line_error(capsys, lambda: evaluate.main(["--ckpt", str(tiny_checkpoint), "--data_dir", str(data)]))
    assert name in err and words in err, err


def test_a_valid_dataset_opens_and_verifies(tiny_dataset, capsys):
    dataset = open_dataset(tiny_dataset)
    assert len(dataset.splits["train"]) + len(dataset.splits["val"]) == 12
    assert set(dataset.meta["sha256"]) >= {"train.bin", "val.bin", "tokenizer.json"}
    prepare.main(["--verify", str(tiny_dataset)])
    assert "ok" in capsys.readouterr().out


def test_verify_finds_a_changed_byte_that_sizes_cannot(tiny_dataset, tmp_path, capsys):
    data = copy_of(tiny_dataset, tmp_path)
    tokens = np.fromfile(data / "train.bin", dtype=np.uint16)
    tokens[3] = (tokens[3] + 1) % 400  # still a valid id: only the checksum can tell
    tokens.tofile(data / "train.bin")
    open_dataset(data)
    with pytest.raises(DatasetError, match="sha256"):
        verify_dataset(data)
    err = one_line_error(capsys, lambda: prepare.main(["--verify", str(data)]))
    assert "train.bin" in err


def damaged_checkpoint(tiny_checkpoint, tmp_path, change):
    checkpoint = torch.load(tiny_checkpoint, weights_only=True)
    change(checkpoint)
    path = tmp_path / "bad.pt"
    torch.save(checkpoint, path)
    return path


def save_json_418():
    """A REMI tokenizer whose pitch range ends at 108: 418 tokens, one fewer than ours."""
    from miditok import REMI, TokenizerConfig

    return save_json(REMI(TokenizerConfig(pitch_range=(21, 108), beat_res={(0, 4): 8, (4, 12): 4}, num_velocities=32,
                                          special_tokens=["PAD", "BOS"], use_tempos=True, use_time_signatures=True,
                                          use_rests=True)))


def save_json(tokenizer):
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        tokenizer.save(os.path.join(folder, "t.json"))
        return open(os.path.join(folder, "t.json")).read()


CHECKPOINT_DAMAGE = {
    "corrupt tokenizer": (lambda c: c.update(tokenizer=c["tokenizer"][:50]), "does not parse"),
    "tokenizer of another vocabulary": (lambda c: c.update(tokenizer=save_json_418()), "418"),
    "composers do not match the table": (lambda c: c["composers"].update(Extra=len(c["composers"])), "composer"),
}


@pytest.mark.parametrize("case", CHECKPOINT_DAMAGE)
def test_a_damaged_checkpoint_is_one_line_from_sample_and_evaluate(case, tiny_checkpoint, tmp_path, capsys):
    change, words = CHECKPOINT_DAMAGE[case]
    path = damaged_checkpoint(tiny_checkpoint, tmp_path, change)
    out = tmp_path / "samples"
    err = one_line_error(capsys, lambda: sample.main(["--ckpt", str(path), "--composer_id", "1", "--out_dir", str(out),
                                                      "--max_new_tokens", "4"]))
    assert words in err and str(path) in err, err
    assert not out.exists()
    err = one_line_error(capsys, lambda: evaluate.main(["--ckpt", str(path)]))
    assert words in err, err


def test_a_missing_dataset_names_the_fix(tmp_path, capsys):
    err = one_line_error(capsys, lambda: train.main([f"--data_dir={tmp_path / 'nothing'}", "--max_iters=1"]))
    assert "prepare.py" in err
    os.makedirs(tmp_path / "empty")
    err = one_line_error(capsys, lambda: train.main([f"--data_dir={tmp_path / 'empty'}", "--max_iters=1"]))
    assert "meta.json" in err
