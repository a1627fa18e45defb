"""Runs that survive people and schedulers: signals stop cleanly, one run per folder."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

import train as train_module
from pianogpt.cli import CliError
from pianogpt.files import FolderLock
from conftest import ROOT, tiny_train_config
from prepare import prepare
from pianogpt.output.outputs import claim_stem
from pianogpt.cli import Stopped
from train import train


def tiny(data_dir, out_dir, **overrides):
    """The shared tiny run, longer, with transposition on: resume must reproduce its random draws too.
    Never compiled: a run told to go on until it is stopped would otherwise stall in a compile."""
    return tiny_train_config(data_dir, out_dir, **{"max_iters": 12, "eval_interval": 100000, "n_roles": 5, "infill_share": 0.5,
                                                   "compile": "off", **overrides})


def as_args(cfg):
    return [f"--{k}={v}" for k, v in vars(cfg).items()]


def losses(out_dir):
    return {r["iter"]: r["loss"] for r in map(json.loads, open(os.path.join(out_dir, "log.jsonl"))) if "loss" in r}


def dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def start_train(cfg):
    return subprocess.Popen([sys.executable, os.path.join(ROOT, "train.py"), *as_args(cfg)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.pthread_sigmask(signal.SIG_SETMASK, set()))


def wait_for_log_lines(out_dir, n, proc, timeout=120):
    deadline = time.time() + timeout
    path = os.path.join(out_dir, "log.jsonl")
    while time.time() < deadline and proc.poll() is None:
        if os.path.isfile(path) and sum(1 for _ in open(path)) >= n:
            return
        time.sleep(0.05)
    raise AssertionError("the run never got going")


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_between_evaluations_checkpoints_the_last_step_and_exits_cleanly(signum, code, tiny_dataset,
                                                                                tmp_path):
    cfg = tiny(tiny_dataset, tmp_path, max_iters=100000)
    proc = start_train(cfg)
    wait_for_log_lines(tmp_path, 6, proc)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err[-2000:]
    assert "Traceback" not in err and "Traceback" not in out
    last = err.strip().splitlines()[-1]
    name = signal.Signals(signum).name
    assert last.startswith(f"train.py: {name}: stopped; before iteration") and last.endswith("--init_from=resume"), \
        "one line, as every program stops, with the command that resumes"
    checkpoint = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    finished = max(losses(tmp_path))
    assert checkpoint["iter"] == finished + 1, "the state after the last finished step"
    assert not (tmp_path / ".lock").exists(), "the lock is released"
    train(tiny(tiny_dataset, tmp_path, max_iters=checkpoint["iter"] + 3, init_from="resume"))
    assert max(losses(tmp_path)) == checkpoint["iter"] + 2, "the resume command's run goes on from there"


def test_resume_after_a_signal_reproduces_the_uninterrupted_run(tiny_dataset, tmp_path, monkeypatch):
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    train(tiny(tiny_dataset, tmp_path / "full"))
    real_lr_at = train_module.lr_at

    def lr_at_that_signals(it, *args):
        if it == 5:  # mid-step: the handler only asks; the step finishes
            signal.raise_signal(signal.SIGTERM)
        return real_lr_at(it, *args)

    monkeypatch.setattr(train_module, "lr_at", lr_at_that_signals)
    with pytest.raises(Stopped) as stopped:
        train(tiny(tiny_dataset, tmp_path / "part"))
    assert stopped.value.code == 143
    assert torch.load(tmp_path / "part" / "ckpt.pt", weights_only=True)["iter"] == 6
    monkeypatch.setattr(train_module, "lr_at", real_lr_at)
    train(tiny(tiny_dataset, tmp_path / "part", init_from="resume"))
    a, b = losses(tmp_path / "full"), losses(tmp_path / "part")
    assert set(a) == set(b) == set(range(12))
    for it in range(12):
        assert abs(a[it] - b[it]) <= 1e-6, (it, a[it], b[it])
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers, "handlers are restored"


def test_a_second_run_into_a_held_folder_fails_fast_and_the_first_goes_on_intact(tiny_dataset, tmp_path):
    first = start_train(tiny(tiny_dataset, tmp_path, max_iters=10**7))  # runs until it is told to stop
    wait_for_log_lines(tmp_path, 3, first)
    for init_from in ("scratch", "resume"):
        second = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"),
                                 *as_args(tiny(tiny_dataset, tmp_path, init_from=init_from))],
                                cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert second.returncode == 2
        assert len(second.stderr.strip().splitlines()) == 1
        assert f"in use by pid {first.pid}" in second.stderr and socket.gethostname() in second.stderr
    at_second_runs_end = max(losses(tmp_path))
    logged = sum(1 for _ in open(tmp_path / "log.jsonl"))
    wait_for_log_lines(tmp_path, logged + 1, first)  # a step logged after the second runs' end, then the stop
    first.send_signal(signal.SIGINT)
    out, err = first.communicate(timeout=120)
    assert first.returncode == 130, err[-2000:]
    finished = max(losses(tmp_path))
    assert finished > at_second_runs_end, "the first run kept training while the second ones failed"
    assert torch.load(tmp_path / "ckpt.pt", weights_only=True)["iter"] == finished + 1
    assert sorted(losses(tmp_path)) == list(range(finished + 1)), "one run's log, every step once"
    assert not (tmp_path / ".lock").exists()
    assert not any(name.startswith("previous-") for name in os.listdir(tmp_path)), "nothing was moved aside"


def test_a_stale_lock_is_taken_over_with_a_warning(tiny_dataset, tmp_path, capsys):
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / ".lock").write_text(json.dumps({"pid": dead_pid(), "host": socket.gethostname(), "command": "x"}))
    train(tiny(tiny_dataset, tmp_path, max_iters=2))
    assert "taking over the stale lock" in capsys.readouterr().err
    assert not (tmp_path / ".lock").exists()


def test_prepare_holds_its_output_folder(folder_corpus, tmp_path, capsys):
    out = tmp_path / "data"
    lock = tmp_path / ".data.lock"
    lock.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "command": "prepare.py"}))
    with pytest.raises(CliError, match=f"in use by pid {os.getpid()}"):
        prepare(folder_corpus, out, workers=1, isolate=False)
    assert not out.exists()
    lock.write_text(json.dumps({"pid": dead_pid(), "host": socket.gethostname(), "command": "prepare.py"}))
    prepare(folder_corpus, out, workers=1, isolate=False)
    assert "taking over the stale lock" in capsys.readouterr().err
    assert (out / "meta.json").is_file() and not lock.exists()


def test_folder_lock_names_its_holder_and_is_released(tmp_path):
    path = tmp_path / "x.lock"
    with FolderLock(path, "folder x"):
        holder = json.loads(path.read_text())
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
        with pytest.raises(CliError, match="folder x is in use by pid"):
            FolderLock(path, "folder x").__enter__()
    assert not path.exists()


def test_stems_claimed_at_the_same_moment_are_all_different(tmp_path):
    import threading

    base, n = str(tmp_path / "s"), 8
    start, stems = threading.Barrier(n), []

    def claim():
        start.wait()  # every thread claims at once: a check-then-create claim would hand out one stem twice
        stems.append(claim_stem(base))

    threads = [threading.Thread(target=claim) for _ in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(stems) == sorted([base] + [f"{base}-{i}" for i in range(2, n + 1)])


def test_two_sample_runs_with_one_name_keep_both_samples(tiny_checkpoint, tmp_path):
    import sample

    args = ["--ckpt", str(tiny_checkpoint), "--composer_id", "1", "--max_new_tokens", "30", "--out_dir",
            str(tmp_path / "runs"), "--name", "same"]
    sample.main(args)
    sample.main([*args, "--seed", "7"])
    first, second = (json.load(open(tmp_path / "runs" / f"{stem}.json")) for stem in ("same", "same-2"))
    assert first["seed"] == 1337 and second["seed"] == 7
    assert {"same.mid", "same-2.mid", "same.png", "same-2.png"} <= set(os.listdir(tmp_path / "runs"))


def test_resuming_a_checkpoint_past_max_iters_is_a_one_line_error(tiny_dataset, tmp_path):
    train(tiny(tiny_dataset, tmp_path, max_iters=6))
    with pytest.raises(CliError, match="iteration 6, past max_iters 4"):
        train(tiny(tiny_dataset, tmp_path, max_iters=4, init_from="resume"))
