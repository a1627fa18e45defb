"""train.py: batches, learning, resume, crash safety, DDP, config errors."""
import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from pianogpt.cli import CliError
from pianogpt.training.config import load_config
from conftest import ROOT, tiny_train_config
from pianogpt.data.dataset import WindowSampler, open_dataset
from pianogpt.training import compile_auto
from pianogpt.cli import StopAtSafePoint, Stopped
from pianogpt.training.compile_auto import CompileTrial
from pianogpt.training.config import TrainConfig
from pianogpt.data.dataset import piece_weights, train_pieces
from pianogpt.data.remi import transpose_pitches
from pianogpt.training.optim import lr_at
from train import train




def read_log(out_dir):
    return [json.loads(line) for line in open(os.path.join(out_dir, "log.jsonl"))]


def sampler_of(data_dir, block_size=32):
    dataset = open_dataset(data_dir)
    return WindowSampler(dataset, "train", block_size), dataset.meta


def test_windows_start_with_bos_stay_inside_one_piece_and_pad_the_tail(tiny_dataset):
    sampler, meta = sampler_of(tiny_dataset, block_size=600)  # longer than every piece: must pad
    rng = np.random.default_rng(0)
    pieces = np.arange(len(sampler))
    x, y, composer, _ = sampler.batch(pieces, rng)
    assert x.shape == y.shape == (len(pieces), 600)
    assert (x[:, 0] == meta["bos_id"]).all()
    assert torch.equal(x[:, 1:], y[:, :-1]), "target is the input shifted by one"
    for row, piece in enumerate(pieces):
        offset, length, composer_id = sampler.index[piece]
        whole = torch.from_numpy(sampler.tokens[offset:offset + length].astype(np.int64))
        assert torch.equal(y[row, :length], whole), "short piece: all of it, then PAD"
        assert (y[row, length:] == meta["pad_id"]).all()
        assert composer[row] == composer_id
    sampler, _ = sampler_of(tiny_dataset, block_size=16)
    x, y, _, _ = sampler.batch(np.zeros(50, dtype=int), rng)
    offset, length, _ = sampler.index[0]
    piece = sampler.tokens[offset:offset + length].astype(np.int64).tobytes()
    for row in y.numpy():
        assert row.tobytes() in piece, "a crop never crosses into another piece"


def test_condition_dropout_replaces_the_composer_at_the_configured_rate(tiny_dataset):
    sampler, _ = sampler_of(tiny_dataset)
    rng = np.random.default_rng(1)
    _, _, composer, _ = sampler.batch(np.zeros(4000, dtype=int), rng, cond_drop=0.25)
    dropped = (composer == 0).float().mean().item()
    assert 0.22 < dropped < 0.28
    assert set(composer.unique().tolist()) == {0, int(sampler.index[0, 2])}
    _, _, composer, _ = sampler.batch(np.zeros(500, dtype=int), rng, cond_drop=0.0)
    assert (composer != 0).all()


def test_kind_dropout_replaces_the_kind_at_its_own_rate(tiny_dataset):
    sampler, _ = sampler_of(tiny_dataset)
    rng = np.random.default_rng(2)
    _, _, composer, kind = sampler.batch(np.zeros(4000, dtype=int), rng, cond_drop=0.0, kind_drop=0.25)
    assert 0.22 < (kind == 0).float().mean().item() < 0.28
    assert set(kind.unique().tolist()) == {0, int(sampler.kinds[0])} and sampler.kinds[0] == 1  # the fixture is sequenced
    assert (composer != 0).all(), "the composer keeps its own dropout"
    _, _, _, kind = sampler.batch(np.zeros(500, dtype=int), rng)
    assert (kind == 1).all()


def test_transposition_moves_pitch_tokens_only_and_stays_on_the_piano(tiny_dataset):
    _, meta = sampler_of(tiny_dataset)
    lo, hi = meta["pitch_ids"]
    x = np.array([1, 2, lo, lo + 1, hi - 1, hi, 200, 400])
    up = transpose_pitches(x, 2, lo, hi)
    assert up.tolist() == [1, 2, lo + 2, lo + 3, hi - 1, hi, 200, 400]
    down = transpose_pitches(x, -1, lo, hi)
    assert down.tolist() == [1, 2, lo, lo, hi - 2, hi - 1, 200, 400]


def test_each_epoch_visits_every_training_piece_once():
    first = train_pieces(10, seed=3, sample_start=0, count=10)
    second = train_pieces(10, seed=3, sample_start=10, count=10)
    assert sorted(first) == sorted(second) == list(range(10))
    assert not np.array_equal(first, second)


def test_composer_balance_evens_out_composers_as_asked():
    composers, files_only = np.array([1] * 90 + [2] * 9 + [3]), np.zeros(100, bool)
    assert piece_weights(composers, files_only, 0.0) is None
    equal = piece_weights(composers, files_only, 1.0)
    assert [equal[composers == c].sum() for c in (1, 2, 3)] == pytest.approx([1 / 3] * 3)
    sqrt = piece_weights(composers, files_only, 0.5)
    assert [sqrt[composers == c].sum() for c in (1, 2, 3)] == pytest.approx(np.sqrt([90, 9, 1]) / np.sqrt([90, 9, 1]).sum())
    drawn = train_pieces(100, seed=0, sample_start=0, count=3000, weights=equal)
    share = np.bincount(composers[drawn], minlength=4)[1:] / 3000
    assert np.all(np.abs(share - 1 / 3) < 0.05), share
    assert np.array_equal(drawn, train_pieces(100, seed=0, sample_start=0, count=3000, weights=equal)), "seeded"


def test_rendition_weight_sets_how_often_renditions_are_drawn_per_file():
    composers = np.array([1] * 60 + [2] * 40)
    renditions = np.arange(100) % 2 == 1  # every file followed by its rendition
    assert piece_weights(composers, renditions, 0.0, 1.0) is None, "as prepared: every piece once per epoch"
    for weight, expected in ((0.5, 1 / 3), (0.0, 0.0), (2.0, 2 / 3)):
        weights = piece_weights(composers, renditions, 0.0, weight)
        drawn = train_pieces(100, seed=0, sample_start=0, count=4000, weights=weights)
        assert abs(renditions[drawn].mean() - expected) < 0.03, (weight, renditions[drawn].mean())
    balanced = piece_weights(composers, renditions, 1.0, 0.5)
    assert [balanced[composers == c].sum() for c in (1, 2)] == pytest.approx([0.5, 0.5]), "composers stay even"


def test_a_time_budget_warms_up_decays_to_min_lr_and_stops_the_run(tiny_dataset, tmp_path):
    cfg = tiny_train_config(tiny_dataset, tmp_path, warmup_frac=0.1, max_minutes=0.02, max_iters=100000, eval_interval=100000)
    assert lr_at(0, cfg, 100000, time_progress=0.05) == pytest.approx(cfg.learning_rate / 2)
    assert lr_at(0, cfg, 100000, time_progress=0.1) == pytest.approx(cfg.learning_rate)
    assert lr_at(0, cfg, 100000, time_progress=1.0) == pytest.approx(cfg.min_lr)
    assert lr_at(100000, cfg, 100000, time_progress=0.2) == pytest.approx(cfg.min_lr), "iterations can end it first"
    train(cfg)
    log = read_log(tmp_path)
    last_eval = [r for r in log if "val_loss" in r][-1]
    assert 0 < last_eval["iter"] < 100000, "stopped by the clock, with a final evaluation"
    checkpoint = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert checkpoint["iter"] == last_eval["iter"] and checkpoint["train_seconds"] >= 1.2


def test_a_few_iterations_lower_the_loss(tiny_dataset, tmp_path):
    train(tiny_train_config(tiny_dataset, tmp_path, max_iters=30, eval_interval=30, dropout=0.0))
    log = read_log(tmp_path)
    vals = [r["val_loss"] for r in log if "val_loss" in r]
    assert vals[-1] < vals[0] - 1.0
    losses = [r["loss"] for r in log if "loss" in r]
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 1.0
    assert {"iter", "loss", "lr", "grad_norm", "tokens_per_s", "mfu"} <= set(log[1])
    assert os.path.isfile(tmp_path / "ckpt.pt") and os.path.isfile(tmp_path / "best.pt")


def compile_trial_run(max_iters, step_times, max_minutes=0.0, memory_key=None):
    """A CompileTrial fed those step times (torch.compile patched to mark its model), in a run of
    max_iters iterations or max_minutes; (the model of the next step, the eager one, the verdicts said)."""
    eager, said = object(), []
    trial = CompileTrial(eager, memory_key, "cpu", say=said.append)
    for it, seconds in enumerate(step_times):
        trial.step_done(it, seconds, max_iters - it - 1, 60 * max_minutes if max_minutes > 0 else math.inf)
    return trial.model, eager, [line.removeprefix("compile=auto: ") for line in said]


FASTER_COMPILED = [5.0, 1.0, 1.0, 1.0, 61.0] + [1.0, 0.8] * 3  # warm-up, eager x3, compiling, alternating


def test_compile_auto_compiles_only_where_the_time_left_repays_it_and_keeps_the_faster_step(monkeypatch):
    monkeypatch.setattr(torch, "compile", lambda model: ("compiled", model))
    monkeypatch.setattr(compile_auto, "compile_problem", lambda device: None)
    model, eager, said = compile_trial_run(200, [5.0, 1.0, 1.0, 1.0])  # 196 s left: a 60 s compile cannot repay
    assert model is eager and said[0].startswith("eager") and "would not repay" in said[0]
    model, eager, said = compile_trial_run(5000, [5.0, 1.0, 1.0, 1.0], max_minutes=2.0)  # the time budget counts too
    assert model is eager and said, "two minutes left cannot repay a compile, however many iterations"
    model, eager, said = compile_trial_run(5000, [5.0, 1.0, 1.0, 1.0])
    assert model == ("compiled", eager) and said == ["compiling the step, ~60 s (a guess); then compiled and eager "
                                                     "steps alternate and the faster is kept"], "an hour left: compile"
    model, eager, said = compile_trial_run(5000, [5.0, 1.0, 1.0, 1.0, 61.0])
    assert model is eager, "then eager and compiled steps alternate, eager first"
    model, eager, said = compile_trial_run(5000, [5.0, 1.0, 1.0, 1.0, 61.0, 1.0])
    assert model == ("compiled", eager)
    model, eager, said = compile_trial_run(5000, FASTER_COMPILED)
    assert model == ("compiled", eager) and said[1].startswith("compiled") and "after 60 s of compiling" in said[1]
    drifting = [5.0, 1.0, 1.0, 1.0, 61.0] + [0.5, 0.6, 1.0, 1.2, 1.5, 1.8]  # the VM slows; eager stays ahead
    model, eager, said = compile_trial_run(5000, drifting + [9.0, 9.0])
    assert model is eager and len(said) == 2 and said[1].startswith("eager (compiled 1.200"), "slower: eager"


def test_compile_auto_decides_by_what_compiling_cost_and_saved_on_this_machine_before(monkeypatch, tmp_path):
    from pianogpt.devices import recall, remember

    monkeypatch.setattr(torch, "compile", lambda model: ("compiled", model))
    monkeypatch.setattr(compile_auto, "compile_problem", lambda device: None)
    monkeypatch.setenv("PIANOGPT_CACHE", str(tmp_path))
    compile_trial_run(5000, FASTER_COMPILED, memory_key="this step")
    assert recall("compile.json", "this step") == {"compile_s": 60.0, "speedup": 1.25}  # 61 - 1 s; 1.0 / 0.8
    remember("compile.json", "this step", {"compile_s": 5.0, "speedup": 1.5})  # a warm compile cache, say
    model, eager, said = compile_trial_run(200, [5.0, 1.0, 1.0, 1.0], memory_key="this step")
    assert model == ("compiled", eager), "196 s left repay 5 s at a third of a step saved (the guess would not)"
    model, eager, said = compile_trial_run(200, [5.0, 1.0, 1.0, 1.0], memory_key="another step")
    assert model is eager and "(a guess)" in said[0], "another step shape is not this one"
    remember("compile.json", "this step", {"compile_s": 5.0, "speedup": 0.8})
    model, eager, said = compile_trial_run(5000, [5.0, 1.0, 1.0, 1.0], memory_key="this step")
    assert model is eager and "no faster (measured here before)" in said[0], "slower here before: not again"
    remember("compile.json", "this step", "garbled")
    model, eager, said = compile_trial_run(200, [5.0, 1.0, 1.0, 1.0], memory_key="this step")
    assert model is eager and "(a guess)" in said[0]


def test_compile_auto_trains_eager_and_says_why_where_torch_compile_cannot_run(monkeypatch):
    monkeypatch.setattr(torch, "compile", lambda model: ("compiled", model))
    asked = []
    monkeypatch.setattr(compile_auto, "compile_problem",
                        lambda device: asked.append(device) or "InvalidCxxCompiler: No working C++ compiler found")
    model, eager, said = compile_trial_run(200, [5.0, 1.0, 1.0, 1.0])
    assert model is eager and not asked, "a run too short to compile never pays for the probe"
    model, eager, said = compile_trial_run(5000, [5.0, 1.0, 1.0, 1.0] + [1.0] * 8)
    assert model is eager and said == [said[0]], "decided once, and never compiled later"
    assert said[0].startswith("eager (1.000 s/step; torch.compile cannot run here: InvalidCxxCompiler")


class CompiledStepThatFails(torch.nn.Module):
    """What torch.compile gives where building the step fails at its first call (a full disk
    under inductor's cache, say): the model's parameters, and an error for every step."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, *args, **kwargs):
        raise RuntimeError("OSError: [Errno 28] No space left on device\n\nSet TORCHDYNAMO_VERBOSE=1 for ...")


def test_a_compiled_step_that_fails_to_build_is_taken_again_eager_and_the_run_goes_on(tiny_dataset, tmp_path,
                                                                                      monkeypatch):
    eager = tmp_path / "eager"
    train(tiny_train_config(tiny_dataset, eager, max_iters=12, compile="off"))
    monkeypatch.setattr(torch, "compile", CompiledStepThatFails)
    monkeypatch.setattr(compile_auto, "compile_problem", lambda device: None)  # a compiler is there
    monkeypatch.setattr(CompileTrial, "expected", lambda self: (0.0, 0.5, "(pays at once)"))
    failed = tmp_path / "failed"
    train(tiny_train_config(tiny_dataset, failed, max_iters=12, compile="auto"))
    log = read_log(failed)
    verdicts = [r["compile"] for r in log if "compile" in r]
    assert verdicts == ["eager (the compiled step failed: OSError: [Errno 28] No space left on device)"]
    assert [r["iter"] for r in log if "compile" in r] == [4], "after the warm-up and 3 timed steps"
    losses = lambda out: [(r["iter"], r["loss"]) for r in read_log(out) if "loss" in r]
    assert losses(failed) == losses(eager), "the failed step was retaken with the same batch: nothing lost"


def test_compile_auto_leaves_a_short_run_eager_and_logs_why(tiny_dataset, tmp_path):
    train(tiny_train_config(tiny_dataset, tmp_path, max_iters=6, compile="auto"))
    verdicts = [r["compile"] for r in read_log(tmp_path) if "compile" in r]
    assert len(verdicts) == 1 and verdicts[0].startswith("eager") and "would not repay" in verdicts[0]


MODERN = dict(positions="rope", norm="rmsnorm", mlp="relu2", qk_norm=True, tie_head=False, optimizer="muon",
              n_kinds=3, n_roles=5, infill_share=0.5)


@pytest.mark.parametrize("recipe", [{}, MODERN], ids=["gpt2", "modern"])
def test_resume_reproduces_the_uninterrupted_run(tiny_dataset, tmp_path, recipe, monkeypatch):
    """Exact on CPU float32: data, dropout and LR are functions of the iteration; Muon's
    momentum and AdamW's moments travel in the checkpoint."""
    full = tmp_path / "full"
    train(tiny_train_config(tiny_dataset, full, **recipe))
    part = tmp_path / "part"
    steps = iter(range(1000))  # Ctrl-C arrives during iteration 3: the loop stops before iteration 4
    with monkeypatch.context() as patch:
        patch.setattr(StopAtSafePoint, "asked", lambda self: signal.SIGINT if next(steps) == 4 else 0)
        with pytest.raises(Stopped):
            train(tiny_train_config(tiny_dataset, part, **recipe))
    train(tiny_train_config(tiny_dataset, part, init_from="resume", **recipe))
    losses = lambda out: {r["iter"]: r["loss"] for r in read_log(out) if "loss" in r}  # noqa: E731
    a, b = losses(full), losses(part)
    assert set(a) == set(b) == set(range(8))
    for it in range(4, 8):
        assert abs(a[it] - b[it]) <= 1e-6, (it, a[it], b[it])
    final = [torch.load(out / "ckpt.pt", weights_only=True)["model"] for out in (full, part)]
    for key in final[0]:
        torch.testing.assert_close(final[0][key], final[1][key], atol=1e-6, rtol=0)


def test_a_fresh_run_moves_an_earlier_run_aside_instead_of_overwriting_it(tiny_dataset, tmp_path):
    train(tiny_train_config(tiny_dataset, tmp_path, max_iters=2, eval_interval=2))
    first = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    train(tiny_train_config(tiny_dataset, tmp_path, max_iters=4, eval_interval=4, seed=5))
    previous = [p for p in os.listdir(tmp_path) if p.startswith("previous-")]
    assert len(previous) == 1
    kept = torch.load(tmp_path / previous[0] / "ckpt.pt", weights_only=True)
    assert kept["iter"] == 2 and all(torch.equal(kept["model"][k], first["model"][k]) for k in first["model"])
    assert torch.load(tmp_path / "ckpt.pt", weights_only=True)["iter"] == 4
    assert max(r["iter"] for r in read_log(tmp_path)) == 4 and read_log(tmp_path)[0]["iter"] == 0
    assert max(r["iter"] for r in read_log(tmp_path / previous[0])) == 2, "the earlier log moved with its checkpoint"


def test_checkpoint_holds_everything_sampling_and_resume_need(tiny_dataset, tmp_path):
    train(tiny_train_config(tiny_dataset, tmp_path, max_iters=2, eval_interval=2))
    ckpt = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert {"model", "optimizer", "scaler", "iter", "best_val_loss", "model_config", "train_config", "tokenizer",
            "composers"} <= set(ckpt)
    assert ckpt["iter"] == 2 and ckpt["composers"]["<unconditional>"] == 0
    assert json.loads(ckpt["tokenizer"])["config"]["num_velocities"] == 32


def test_non_finite_loss_skips_the_step_and_keeps_the_weights(tiny_dataset, tmp_path, monkeypatch):
    from model import MusicTransformer

    real_forward = MusicTransformer.forward

    def poisoned(self, *args, **kwargs):
        logits, loss = real_forward(self, *args, **kwargs)
        return logits, (loss * float("nan") if self.training and loss is not None else loss)

    monkeypatch.setattr(MusicTransformer, "forward", poisoned)
    train(tiny_train_config(tiny_dataset, tmp_path, max_iters=3, eval_interval=100))
    log = read_log(tmp_path)
    assert sum("skipped" in r for r in log) == 3
    first = torch.load(tmp_path / "best.pt", weights_only=True)["model"]  # saved at iter 0
    end = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    # the end's evaluation saw finite weights, so ckpt.pt was written there (a NaN step would leave
    # NaN weights, a NaN val loss, and ckpt.pt from iter 0: equal to best.pt for the wrong reason)
    assert end["iter"] == 3 and all(math.isfinite(r["val_loss"]) for r in log if "val_loss" in r)
    for key in first:
        assert torch.equal(first[key], end["model"][key])


def free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli_args(data_dir, out_dir, **overrides):
    cfg = tiny_train_config(data_dir, out_dir, **overrides)
    return [f"--{k}={v}" for k, v in vars(cfg).items()]


def test_sigkill_mid_training_leaves_a_loadable_checkpoint_and_resume_finishes(tiny_dataset, tmp_path):
    args = cli_args(tiny_dataset, tmp_path, max_iters=100000, eval_interval=2)
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "train.py"), *args], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:
        if os.path.isfile(tmp_path / "log.jsonl") and sum(1 for _ in open(tmp_path / "log.jsonl")) > 12:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    ckpt = torch.load(tmp_path / "ckpt.pt", weights_only=True)  # never a half-written file
    assert ckpt["iter"] >= 2
    resume = cli_args(tiny_dataset, tmp_path, max_iters=ckpt["iter"] + 2, eval_interval=2, init_from="resume")
    result = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), *resume], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert torch.load(tmp_path / "ckpt.pt", weights_only=True)["iter"] == ckpt["iter"] + 2


@pytest.mark.parametrize("recipe", [{}, dict(optimizer="muon", positions="rope", n_roles=5, infill_share=0.5)],
                         ids=["adamw", "muon"])
def test_torchrun_two_cpu_processes_agree_on_the_weights(tiny_dataset, tmp_path, recipe):
    args = cli_args(tiny_dataset, tmp_path, max_iters=3, grad_accum=2, eval_interval=3, **recipe)

    def torchrun():
        return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                               f"--master_port={free_port()}", os.path.join(ROOT, "train.py"), *args],
                              cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})

    result = torchrun()
    if result.returncode != 0 and "terminate called without an active exception" in result.stderr:
        # seen about once in ten loaded runs on a 2-core machine: a rank aborts in gloo's C++ teardown
        # (std::terminate, no Python frame); run once more, a second failure fails the test
        result = torchrun()
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ranks agree on weights: True" in result.stdout
    assert "2 process(es)" in result.stdout
    assert torch.load(tmp_path / "ckpt.pt", weights_only=True)["iter"] == 3


@pytest.mark.parametrize("argv, message", [
    (["--n_layers=4"], "unknown config key 'n_layers' (did you mean n_layer"),
    (["--batch_size=two"], "--batch_size expects an integer"),
    (["--batch_size=0"], "batch_size must be > 0"),
    (["--dropout=1.5"], "dropout must be in [0, 1)"),
    (["--dtype=float8"], "dtype must be one of"),
    (["--init_from=gpt2"], "init_from must be scratch, resume or a checkpoint file"),
    (["--compile=maybe"], "compile must be one of auto, on, off"),
    (["no_such_config.py"], "config file not found"),
    (["--composer_mode=block"], "unknown config key 'composer_mode'"),
    (["--composer_balance=1.5"], "composer_balance must be in [0, 1]"),
    (["--n_kinds=2"], "n_kinds must be 0 (off) or 3"),
    (["--kind_drop=1"], "kind_drop must be in [0, 1)"),
    (["--max_minutes=-1"], "max_minutes must be >= 0"),
])
def test_bad_config_keys_and_values_are_clean_errors(argv, message):
    with pytest.raises(CliError, match=None) as error:
        load_config(TrainConfig, argv)
    assert message in str(error.value)


def test_config_file_with_unknown_key_is_an_error(tmp_path):
    path = tmp_path / "c.py"
    path.write_text("n_layer = 2\nlearning_rat = 1e-3\n")
    with pytest.raises(CliError, match="learning_rat"):
        load_config(TrainConfig, [str(path)])
    path.write_text("n_layer = 2\nlearning_rate = 1e-3\n")
    cfg = load_config(TrainConfig, [str(path), "--n_layer=3"])
    assert cfg.n_layer == 3 and cfg.learning_rate == 1e-3


def test_cli_errors_are_one_line_with_exit_code_2(tmp_path):
    for argv in (["--n_layers=4"], ["--data_dir=/nowhere"], [f"--out_dir={tmp_path}", "--init_from=resume", "--data_dir=/nowhere"]):
        result = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), *argv], cwd=ROOT,
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert "Traceback" not in result.stderr
