"""Fixture MIDI made here with symusic: never downloaded, never committed."""
import os
import signal
import sys
import tempfile

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
REAL_MIDI = os.path.join(ROOT, "..", "shared", "midi", "piano-midi")
# the machine's matmul peak (devices.machine_matmul_peak) is remembered in a folder of the tests' own,
# by this process and by the programs the tests start, never in the user's ~/.cache
os.environ["PIANOGPT_CACHE"] = tempfile.mkdtemp(prefix="pianogpt-cache-")


def make_score(seed=0, n_bars=8, tpq=480, with_changes=True, out_of_range=True, drums=False, right_hand=True):
    """A two-hand piano piece: right hand melody, left hand chords, with tempo and
    time-signature changes, plus notes outside 21..108 that the piano cannot play."""
    from symusic import Note, Score, Tempo, TimeSignature, Track

    rng = np.random.default_rng(seed)
    score = Score(tpq)
    score.tempos.append(Tempo(0, 96.0))
    score.time_signatures.append(TimeSignature(0, 4, 4))
    if with_changes:
        score.tempos.append(Tempo(4 * tpq * 3, 132.0))
        score.time_signatures.append(TimeSignature(4 * tpq * 4, 3, 4))
    bar_starts, t = [], 0
    for bar in range(n_bars):
        bar_starts.append(t)
        t += (3 if with_changes and bar >= 4 else 4) * tpq

    def track(name, notes):
        tr = Track(name=name, program=0, is_drum=False)
        time, dur, pitch, vel = (np.array(c) for c in zip(*notes))
        tr.notes = Note.from_numpy(time=time.astype(np.int32), duration=dur.astype(np.int32),
                                   pitch=pitch.astype(np.int8), velocity=vel.astype(np.int8))
        return tr

    right, left = [], []
    for start in bar_starts:
        beats = 3 if start >= 4 * tpq * 4 and with_changes else 4
        for beat in range(beats * 2):  # eighth notes
            right.append((start + beat * tpq // 2, tpq // 2, int(rng.integers(60, 84)), int(rng.integers(50, 110))))
        root = int(rng.integers(36, 52))
        for offset in (0, 4, 7):
            left.append((start, beats * tpq, root + offset, 70))
    if out_of_range:
        right.append((bar_starts[1], tpq, 110, 80))  # above C8
        left.append((bar_starts[2], tpq, 12, 80))  # below A0
    if right_hand:
        score.tracks.append(track("right", right))
    score.tracks.append(track("left", left))
    if drums:
        d = track("drums", [(s, tpq // 4, 38, 100) for s in bar_starts])
        d.is_drum = True
        score.tracks.append(d)
    return score


def performed(score, seed=0, jitter=0.05, qpm=120.0):
    """The score as a Disklavier records it: one constant tempo, onsets as played (timing jitter
    of `jitter` quarter notes), durations stretched as by the pedal, velocities as struck."""
    from symusic import Note, Tempo

    rng = np.random.default_rng(seed)
    played = score.copy()
    for track in played.tracks:
        a = track.notes.numpy()
        onsets = np.maximum(0, a["time"] + rng.normal(0, jitter * score.tpq, len(a["time"])).round())
        velocity = np.clip(a["velocity"].astype(int) + rng.integers(-15, 16, len(a["pitch"])), 1, 127)
        track.notes = Note.from_numpy(time=onsets.astype(np.int32), duration=(a["duration"] * 1.3).astype(np.int32),
                                      pitch=a["pitch"], velocity=velocity.astype(np.int8))
    played.tempos.clear()
    played.tempos.append(Tempo(0, qpm))
    return played


def write_midi(path, score):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    score.dump_midi(path)
    return path


def make_drums_only(path):
    from symusic import Note, Score, Track

    score = Score(480)
    tr = Track(name="drums", program=0, is_drum=True)
    tr.notes = Note.from_numpy(time=np.arange(0, 4800, 480, dtype=np.int32), duration=np.full(10, 120, np.int32),
                               pitch=np.full(10, 38, np.int8), velocity=np.full(10, 100, np.int8))
    score.tracks.append(tr)
    return write_midi(path, score)


def make_no_notes(path):
    from symusic import Score, Tempo, Track

    score = Score(480)
    score.tempos.append(Tempo(0, 120.0))
    score.tracks.append(Track(name="empty", program=0, is_drum=False))
    return write_midi(path, score)


@pytest.fixture(autouse=True)
def signals_as_found():
    """Every test starts with no signal blocked in this process (signal masks pass to threads'
    children and across exec), so the interrupt tests test the programs, not the tests before them;
    and whatever a program run in this process sets for SIGINT / SIGTERM, it puts back."""
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    yield
    changed = [signal.Signals(signum).name for signum, handler in handlers.items() if signal.getsignal(signum) != handler]
    for signum, handler in handlers.items():
        signal.signal(signum, handler)
    assert not changed, f"the code under test left its own handler for {', '.join(changed)}"


def tiny_model(block_size=32, vocab_size=64, n_composers=4, n_layer=2, n_head=2, n_embd=32, dropout=0.0, **options):
    """The shared tiny network for tests of the model and the engine: seeded, in eval mode."""
    import torch

    from model import ModelConfig, MusicTransformer

    torch.manual_seed(0)
    return MusicTransformer(ModelConfig(block_size=block_size, vocab_size=vocab_size, n_composers=n_composers,
                                        n_layer=n_layer, n_head=n_head, n_embd=n_embd, dropout=dropout,
                                        **options)).eval()


def tiny_train_config(data_dir, out_dir, **overrides):
    """The shared tiny training run for tests of train.py (on tiny_dataset): a few seconds."""
    from pianogpt.training.config import TrainConfig

    values = dict(data_dir=str(data_dir), out_dir=str(out_dir), block_size=32, n_layer=1, n_head=2, n_embd=32,
                  batch_size=4, grad_accum=1, max_iters=8, eval_interval=4, eval_iters=2, log_interval=1,
                  learning_rate=3e-3, warmup_frac=0.0, device="cpu", dtype="float32", dropout=0.1)
    values.update(overrides)
    return TrainConfig(**values)


def decode_png(data):
    """[H, W, 3] uint8 pixels of an 8-bit RGB PNG as pictures.png_bytes writes it (one IDAT, filter 0)."""
    import zlib

    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    idat = data.index(b"IDAT")
    length = int.from_bytes(data[idat - 4:idat], "big")
    rows = np.frombuffer(zlib.decompress(data[idat + 4:idat + 4 + length]), np.uint8).reshape(height, 1 + 3 * width)
    assert (rows[:, 0] == 0).all()  # filter type "none" on every row
    return rows[:, 1:].reshape(height, width, 3)


@pytest.fixture
def folder_corpus(tmp_path):
    """3 composers x 3 pieces in <Composer>/ folders."""
    root = tmp_path / "midi"
    for c, composer in enumerate(["Bach", "Chopin", "Alkan"]):
        for i in range(3):
            write_midi(str(root / composer / f"piece{i}.mid"), make_score(seed=10 * c + i))
    return root


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """A prepared dataset of 12 synthetic pieces by 3 composers (shared by model/train tests)."""
    from prepare import prepare

    root = tmp_path_factory.mktemp("corpus")
    for c, composer in enumerate(["Bach", "Chopin", "Alkan"]):
        for i in range(4):
            write_midi(str(root / "midi" / composer / f"p{i}.mid"), make_score(seed=100 * c + i, n_bars=12))
    out = root / "data"
    prepare(root / "midi", out, workers=1, isolate=False, val_fraction=0.25)
    return out


@pytest.fixture(scope="session")
def tiny_merged_dataset(tiny_dataset, tmp_path_factory):
    """tiny_dataset's corpus prepared with learned merges (prepare.py --merges 700)."""
    from prepare import prepare

    out = tmp_path_factory.mktemp("merged") / "data"
    prepare(tiny_dataset.parent / "midi", out, workers=1, isolate=False, val_fraction=0.25, merges=700)
    return out


@pytest.fixture(scope="session")
def tiny_merged_checkpoint(tiny_merged_dataset, tmp_path_factory):
    """A tiny model trained briefly on merged tokens, to fill gaps as well as continue."""
    return train_infill_checkpoint(tiny_merged_dataset, tmp_path_factory.mktemp("merged_run"), block_size=128)


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_dataset, tmp_path_factory):
    """A checkpoint of a tiny model trained briefly on tiny_dataset."""
    from train import train

    out = tmp_path_factory.mktemp("run")
    train(tiny_train_config(tiny_dataset, out, block_size=64, max_iters=40, eval_interval=40, log_interval=10,
                            warmup_frac=0.05, dropout=0.0))
    return out / "ckpt.pt"


@pytest.fixture(scope="session")
def tiny_infill_checkpoint(tiny_dataset, tmp_path_factory):
    """A tiny model trained briefly to fill gaps as well as continue (infill_share 0.5)."""
    return train_infill_checkpoint(tiny_dataset, tmp_path_factory.mktemp("infill_run"), block_size=256)


def train_infill_checkpoint(data_dir, out, block_size):
    """ckpt.pt of a tiny model trained briefly to fill gaps as well as continue (infill_share 0.5)."""
    from train import train

    train(tiny_train_config(data_dir, out, block_size=block_size, max_iters=30, eval_interval=30, log_interval=10,
                            warmup_frac=0.05, dropout=0.0, n_roles=5, infill_share=0.5, infill_bars=2))
    return out / "ckpt.pt"
