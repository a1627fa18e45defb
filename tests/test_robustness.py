"""Hostile files, crashes and untrusted checkpoints: nothing is lost, nothing crashes."""
import io
import json
import os
import pickle
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from conftest import ROOT, make_score, write_midi

FUZZ_SEED = 20261124
MUTATIONS_PER_KIND = 24


def midi_bytes(seed):
    path = f"/tmp/_fuzz_base_{os.getpid()}_{seed}.mid"
    write_midi(path, make_score(seed=seed, n_bars=4))
    data = open(path, "rb").read()
    os.unlink(path)
    return data


def track_chunks(data):
    """Offsets of every MTrk chunk's length field."""
    out, i = [], 14
    while i + 8 <= len(data) and data[i:i + 4] == b"MTrk":
        out.append(i + 4)
        i += 8 + int.from_bytes(data[i + 4:i + 8], "big")
    return out


def mutate(data, kind, rng):
    data = bytearray(data)
    if kind == "truncate":
        return bytes(data[: int(rng.integers(1, len(data)))])
    if kind == "flip_bytes":
        for _ in range(int(rng.integers(1, 20))):
            data[int(rng.integers(0, len(data)))] = int(rng.integers(0, 256))
        return bytes(data)
    if kind == "bogus_chunk_length":
        where = [4] + track_chunks(data)  # the header's length or a track's
        at = where[int(rng.integers(0, len(where)))]
        data[at:at + 4] = int(rng.choice([0, 1, 2**31 - 1, 2**32 - 1, int(rng.integers(0, 2**32))])).to_bytes(4, "big")
        return bytes(data)
    if kind == "huge_delta_time":
        at = track_chunks(data)[-1] + 4
        return bytes(data[:at] + b"\xff\xff\xff\x7f" * int(rng.integers(1, 50)) + data[at:])
    if kind == "running_status_abuse":  # data bytes with no status byte before them, and stray status bytes
        at = track_chunks(data)[-1] + 4
        junk = bytes(int(b) for b in rng.integers(0, 128, int(rng.integers(4, 64))))
        stray = bytes([0x90, 0x80, 0xB0, 0xF0][int(rng.integers(0, 4))] for _ in range(3))
        return bytes(data[:at] + junk + stray + data[at:])
    if kind == "zero_length_tracks":
        header = bytes(data[:14])
        header = header[:10] + int(rng.integers(1, 8)).to_bytes(2, "big") + header[12:]
        return header + b"MTrk\x00\x00\x00\x00" * int(rng.integers(1, 8))
    if kind == "random_bytes":
        return bytes(int(b) for b in rng.integers(0, 256, int(rng.integers(0, 3000))))
    raise ValueError(kind)


KINDS = ["truncate", "flip_bytes", "bogus_chunk_length", "huge_delta_time", "running_status_abuse",
         "zero_length_tracks", "random_bytes"]


def run_prepare(*args, timeout=600):
    return subprocess.run([sys.executable, os.path.join(ROOT, "prepare.py"), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def test_fuzzed_midi_never_crashes_prepare_and_every_file_is_accounted_for(tmp_path):
    rng = np.random.default_rng(FUZZ_SEED)
    root = tmp_path / "midi"
    good = []
    for i in range(4):
        good.append(f"Good/good{i}.mid")
        write_midi(str(root / good[-1]), make_score(seed=i))
    bases = [midi_bytes(seed) for seed in range(3)]
    fuzzed = 0
    for kind in KINDS:
        os.makedirs(root / kind, exist_ok=True)
        for i in range(MUTATIONS_PER_KIND):
            (root / kind / f"{i}.mid").write_bytes(mutate(bases[i % len(bases)], kind, rng))
            fuzzed += 1
    result = run_prepare("--midi_dir", str(root), "--out_dir", str(tmp_path / "data"), "--workers", "2",
                         "--min_tokens", "1", "--file_timeout", "60")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    kept = {json.loads(line)["path"] for line in open(tmp_path / "data" / "pieces.jsonl")}
    skipped = [json.loads(line) for line in open(tmp_path / "data" / "skipped.jsonl")]
    assert all(s["reason"] for s in skipped)
    skipped_paths = {s["path"] for s in skipped}
    everything = {p.relative_to(root).as_posix() for p in root.rglob("*.mid")}
    assert kept | skipped_paths == everything and not kept & skipped_paths, "every input is accounted for once"
    assert set(good) <= kept
    assert {s["path"].split("/")[0] for s in skipped} >= {"random_bytes", "zero_length_tracks"}
    print(f"fuzzed {fuzzed} inputs: {len(kept) - len(good)} still decodable, {len(skipped)} skipped "
          f"({sorted({s['reason'] for s in skipped})})")


def processes():
    """(pid, state, parent pid, process group, command line) of every process (Linux /proc)."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = open(f"/proc/{entry}/stat").read()
            cmdline = open(f"/proc/{entry}/cmdline", "rb").read()
        except OSError:
            continue
        state, ppid, group = stat.rsplit(")", 1)[1].split()[:3]  # after "pid (command name)"
        yield int(entry), state, int(ppid), int(group), cmdline


def worker_pids(parent):
    return [pid for pid, _, ppid, _, cmdline in processes() if ppid == parent and b"spawn_main" in cmdline]


def test_a_worker_killed_mid_run_does_not_lose_files(tmp_path):
    root = tmp_path / "midi"
    n_files = 40  # ~0.5 s each: ~10 s of encoding on 2 cores after the workers' ~2 s start-up
    for i in range(n_files):
        write_midi(str(root / "Bach" / f"p{i}.mid"), make_score(seed=i, n_bars=3000))
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "prepare.py"), "--midi_dir", str(root), "--out_dir",
                             str(tmp_path / "data"), "--workers", "2"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    killed, deadline = None, time.time() + 120
    while killed is None and time.time() < deadline and proc.poll() is None:
        pids = worker_pids(proc.pid)
        if len(pids) == 2:
            time.sleep(4.0)  # the workers have imported and are encoding
            os.kill(pids[0], signal.SIGKILL)
            killed = pids[0]
        time.sleep(0.05)
    out, err = proc.communicate(timeout=300)
    assert killed is not None, "never saw the workers"
    assert proc.returncode == 0, err[-3000:]
    kept = [json.loads(line)["path"] for line in open(tmp_path / "data" / "pieces.jsonl")]
    assert len(kept) == n_files, "the files in flight were retried, not dropped"


def test_a_file_past_the_time_limit_is_skipped_not_waited_for(tmp_path):
    root = tmp_path / "midi"
    for i in range(2):
        write_midi(str(root / "Bach" / f"p{i}.mid"), make_score(seed=i))
    result = run_prepare("--midi_dir", str(root), "--out_dir", str(tmp_path / "data"), "--workers", "1",
                         "--file_timeout", "0.001", "--val_fraction", "0")
    # nothing can be encoded in a millisecond: both files time out, alone, and the run ends with one clear line
    assert result.returncode == 2, result.stderr
    assert "no piece could be encoded from 2 files (crashed_parser 2)" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "data").exists()


def test_very_long_and_pathological_pieces_finish_in_bounded_time(tmp_path):
    from symusic import Note, Score, Tempo, TimeSignature, Track

    root = tmp_path / "midi" / "X"
    long_score = Score(480)
    long_score.tempos.append(Tempo(0, 120.0))
    long_score.time_signatures.append(TimeSignature(0, 4, 4))
    n = 60000  # sixteenths for ~100 minutes: hundreds of thousands of tokens
    track = Track(name="p", program=0)
    track.notes = Note.from_numpy(time=(np.arange(n) * 120).astype(np.int32), duration=np.full(n, 110, np.int32),
                                  pitch=(40 + np.arange(n) % 40).astype(np.int8), velocity=np.full(n, 80, np.int8))
    long_score.tracks.append(track)
    write_midi(str(root / "long.mid"), long_score)
    chord = Score(480)
    chord.tempos.append(Tempo(0, 120.0))
    track = Track(name="p", program=0)
    m = 10000  # 10k notes at one instant
    track.notes = Note.from_numpy(time=np.zeros(m, np.int32), duration=np.full(m, 480, np.int32),
                                  pitch=(21 + np.arange(m) % 88).astype(np.int8), velocity=np.full(m, 80, np.int8))
    chord.tracks.append(track)
    write_midi(str(root / "chord.mid"), chord)
    start = time.time()
    from prepare import prepare

    meta = prepare(tmp_path / "midi", tmp_path / "data", workers=1, val_fraction=0, file_timeout=240)
    assert time.time() - start < 240
    pieces = {json.loads(line)["path"]: json.loads(line)["n_tokens"] for line in open(tmp_path / "data" / "pieces.jsonl")}
    skipped = {json.loads(line)["path"] for line in open(tmp_path / "data" / "skipped.jsonl")}
    assert set(pieces) | skipped == {"X/long.mid", "X/chord.mid"}
    assert pieces.get("X/long.mid", 0) > 150000
    print(f"long piece: {pieces.get('X/long.mid')} tokens; 10k-note chord: {pieces.get('X/chord.mid', 'skipped')}; "
          f"{meta['seconds']} s")


def live_processes_in_group(pgid):
    """Pids of the processes in a process group that are not zombies."""
    return [pid for pid, state, _, group, _ in processes() if group == pgid and state != "Z"]


def kill_while_encoding(args):
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            start_new_session=True)
    for line in proc.stdout:
        if line.startswith("encoding"):
            break
    time.sleep(0.5)
    proc.kill()
    assert proc.wait() == -signal.SIGKILL, "prepare.py finished before it was killed: the test needs more files"
    if sys.platform == "linux":
        deadline = time.monotonic() + 10
        while live_processes_in_group(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not live_processes_in_group(proc.pid), "the encoding workers die with prepare.py"


def test_sigkill_during_prepare_never_leaves_a_complete_looking_dataset(tmp_path):
    root = tmp_path / "midi"
    for i in range(120):  # a few seconds of encoding even on a fast CPU (60 short pieces took under a second)
        write_midi(str(root / "Bach" / f"p{i}.mid"), make_score(seed=i, n_bars=32))
    out = tmp_path / "data"
    args = [sys.executable, os.path.join(ROOT, "prepare.py"), "--midi_dir", str(root), "--out_dir", str(out),
            "--workers", "1"]
    kill_while_encoding(args)
    assert not out.exists(), "a killed first run leaves no dataset at all"
    assert subprocess.run(args, cwd=ROOT, capture_output=True, timeout=300).returncode == 0
    before = (out / "train.bin").read_bytes()
    kill_while_encoding(args)
    assert (out / "train.bin").read_bytes() == before, "a killed rerun keeps the previous dataset"
    assert subprocess.run(args, cwd=ROOT, capture_output=True, timeout=300).returncode == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "midi"], "temp folders of killed runs are cleaned"


def test_sigkill_during_a_checkpoint_write_keeps_the_previous_checkpoint(tmp_path):
    path = tmp_path / "ckpt.pt"
    script = f"""
import os, signal, torch
from pianogpt.checkpoints import save_checkpoint
save_checkpoint({str(path)!r}, {{"model": {{"w": torch.ones(3)}}, "iter": 1}})
real_fsync = os.fsync
def die(fd):
    os.kill(os.getpid(), signal.SIGKILL)  # the temp file is written, not yet renamed
os.fsync = die
save_checkpoint({str(path)!r}, {{"model": {{"w": torch.zeros(1000000)}}, "iter": 2}})
"""
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == -signal.SIGKILL
    checkpoint = torch.load(path, weights_only=True)
    assert checkpoint["iter"] == 1 and torch.equal(checkpoint["model"]["w"], torch.ones(3))


def test_disk_full_during_a_checkpoint_write_is_a_clear_error(tmp_path, monkeypatch):
    from pianogpt import files
    from pianogpt.cli import CliError
    from pianogpt.checkpoints import save_checkpoint

    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, {"iter": 1})

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files.os, "fsync", full)
    with pytest.raises(CliError, match="No space left on device; the previous checkpoint is kept"):
        save_checkpoint(path, {"iter": 2})
    assert torch.load(path, weights_only=True)["iter"] == 1
    assert os.listdir(tmp_path) == ["ckpt.pt"], "the temp file is removed"


def evil_checkpoint(path):
    class Payload:
        def __reduce__(self):
            return (os.system, ("echo pwned > /tmp/pwned",))

    with open(path, "wb") as f:
        pickle.dump({"model": Payload(), "model_config": {}, "composers": {}}, f)


@pytest.mark.parametrize("script, args", [
    ("sample.py", ["--composer_id", "1"]),
    ("evaluate.py", []),
])
def test_every_loader_refuses_a_pickle_payload(tmp_path, script, args):
    evil = tmp_path / "evil.pt"
    evil_checkpoint(evil)
    result = subprocess.run([sys.executable, os.path.join(ROOT, script), "--ckpt", str(evil), *args], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "refusing to load" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_resume_refuses_a_pickle_payload_and_a_different_shape(tiny_dataset, tmp_path):
    from pianogpt.cli import CliError
    from pianogpt.training.config import TrainConfig
    from train import train

    cfg = dict(data_dir=str(tiny_dataset), out_dir=str(tmp_path), block_size=32, n_layer=1, n_head=2, n_embd=32,
               batch_size=2, grad_accum=1, max_iters=1, eval_interval=1, eval_iters=1, device="cpu", dtype="float32")
    evil_checkpoint(tmp_path / "ckpt.pt")
    with pytest.raises(CliError, match="refusing to load"):
        train(TrainConfig(**cfg, init_from="resume"))
    train(TrainConfig(**cfg))
    with pytest.raises(CliError, match=r"model config differs \(n_embd 32 -> 64"):
        train(TrainConfig(**{**cfg, "n_embd": 64}, init_from="resume"))


def test_sampling_refuses_a_checkpoint_whose_weights_do_not_match_its_config(tiny_checkpoint, tmp_path):
    checkpoint = torch.load(tiny_checkpoint, weights_only=True)
    checkpoint["model_config"]["vocab_size"] = 500
    bad = tmp_path / "bad.pt"
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    bad.write_bytes(buffer.getvalue())
    result = subprocess.run([sys.executable, os.path.join(ROOT, "sample.py"), "--ckpt", str(bad), "--composer_id", "1"],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "wte.weight: checkpoint (419, 32) vs model (500, 32)" in result.stderr
