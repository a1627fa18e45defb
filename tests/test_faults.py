"""Every program meets a full disk and an interrupt the same way: one line, the documented exit
code (2 for a failed write, 130 for Ctrl-C, 143 for SIGTERM), no traceback, nothing partial on
disk; sample.py keeps and lists every sample it had finished; ablate.py stops its child runs."""
import errno
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT, make_score, write_midi


def as_from_a_terminal():
    """A child's signals as a shell gives them: none blocked, none ignored (whatever state the test
    process is in after the tests before it), so the program's own handling is what is tested."""
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_DFL)


def stems_on_disk(folder):
    return sorted({name.rsplit(".", 1)[0] for name in os.listdir(folder) if not name.startswith(("index", "."))})


def listed(folder):
    page = open(os.path.join(folder, "index.html")).read()
    return sorted(stem for stem in stems_on_disk(folder) if f'id="{stem}"' in page)


def sample_main(args, capsys):
    import sample

    with pytest.raises(SystemExit) as exit_info:
        sample.main(args)
    return exit_info.value.code, capsys.readouterr().err


def test_ctrl_c_during_the_third_sample_keeps_the_first_two(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    from pianogpt.output import outputs

    calls = []
    real_render = outputs.render

    def render_then_interrupt(score, soundfont):
        calls.append(1)
        if len(calls) == 3:  # the third sample's .mid and .png are written by now: they must go
            raise KeyboardInterrupt
        return real_render(score, soundfont)

    monkeypatch.setattr(outputs, "render", render_then_interrupt)
    code, err = sample_main(["--ckpt", str(tiny_checkpoint), "--composer_id", "1", "--num_samples", "4",
                             "--max_new_tokens", "30", "--out_dir", str(tmp_path), "--soundfont", "builtin"], capsys)
    assert code == 130 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "SIGINT: stopped; kept the 2 finished sample(s)" in err
    kept = ["Alkan_1337_0", "Alkan_1337_1"]  # composer 1 of the fixture
    assert stems_on_disk(tmp_path) == kept == listed(tmp_path)
    for stem in kept:
        assert {f"{stem}{s}" for s in (".mid", ".png", ".wav", ".json")} <= set(os.listdir(tmp_path))


def test_a_full_disk_is_one_line_and_leaves_no_partial_sample(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    from pianogpt.output import outputs

    writes = []
    real_write = outputs.atomic_write_bytes

    def write_until_full(path, data):
        writes.append(path)
        if path.endswith("_1.wav"):
            raise OSError(errno.ENOSPC, "No space left on device", path)
        return real_write(path, data)

    monkeypatch.setattr(outputs, "atomic_write_bytes", write_until_full)
    code, err = sample_main(["--ckpt", str(tiny_checkpoint), "--composer_id", "1", "--num_samples", "2",
                             "--max_new_tokens", "30", "--out_dir", str(tmp_path), "--soundfont", "builtin"], capsys)
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "_1.wav: No space left on device" in err and "kept the 1 finished sample(s)" in err
    assert stems_on_disk(tmp_path) == ["Alkan_1337_0"] == listed(tmp_path)


def test_an_output_folder_that_is_a_file_is_one_line(tiny_checkpoint, tmp_path, capsys):
    blocker = tmp_path / "taken"
    blocker.write_text("a file, not a folder")
    code, err = sample_main(["--ckpt", str(tiny_checkpoint), "--composer_id", "1", "--max_new_tokens", "5",
                             "--out_dir", str(blocker / "samples")], capsys)
    assert code == 2 and "cannot create --out_dir" in err and len(err.strip().splitlines()) == 1
    assert blocker.read_text() == "a file, not a folder"


def test_sigterm_during_generation_exits_143_without_a_traceback(tiny_checkpoint, tmp_path):
    out = tmp_path / "samples"
    process = subprocess.Popen([sys.executable, os.path.join(ROOT, "sample.py"), "--ckpt", str(tiny_checkpoint),
                                "--composer_id", "1", "--max_new_tokens", "200000", "--out_dir", str(out),
                                "--no-audio"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=as_from_a_terminal)
    deadline = time.time() + 120
    while not out.exists() and time.time() < deadline:  # the folder is made just before generation starts
        time.sleep(0.2)
    time.sleep(1.0)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 143, err
    assert "Traceback" not in err and "SIGTERM: stopped; no sample was finished" in err
    assert stems_on_disk(out) == []


def start(args, **kwargs):
    return subprocess.Popen([sys.executable, *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"}, preexec_fn=as_from_a_terminal,
                            **kwargs)


def wait_for_line(process, text, timeout=120, stream="stdout"):
    """Read the program's stdout (or stderr) until a line holds `text`: it is then at that stage."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        line = getattr(process, stream).readline()
        if text in line:
            return
        assert line, f"the program ended before printing {text!r}: {process.communicate()[1]}"
    raise AssertionError(f"no {text!r} within {timeout} s")


def one_stop_line(process, code, progress=False):
    """The one line a stopped program prints last on stderr (after its progress lines, if it has any)."""
    _, err = process.communicate(timeout=120)
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert process.returncode == code, err
    assert "Traceback" not in err and (progress or len(lines) == 1), err
    return lines[-1]


def test_ctrl_c_while_prepare_encodes_leaves_the_previous_dataset(tmp_path):
    for i in range(40):
        write_midi(str(tmp_path / "midi" / "Bach" / f"p{i}.mid"), make_score(seed=i, n_bars=24))
    data = tmp_path / "data"
    data.mkdir()
    (data / "meta.json").write_text("the previous dataset")
    # Ctrl-C in a terminal reaches the whole process group: the encoding workers as well
    process = start(["prepare.py", "--midi_dir", str(tmp_path / "midi"), "--out_dir", str(data), "--workers", "2"],
                    start_new_session=True)
    wait_for_line(process, "encoding 40 files")
    os.killpg(process.pid, signal.SIGINT)
    line = one_stop_line(process, 130)
    assert "SIGINT: stopped; nothing was written; the previous dataset (if any) is intact" in line
    assert os.listdir(data) == ["meta.json"] and (data / "meta.json").read_text() == "the previous dataset"
    assert sorted(os.listdir(tmp_path)) == ["data", "midi"]  # no temp folder, no lock left


def test_sigterm_stops_evaluate_and_a_failed_report_write_is_one_line(tiny_checkpoint, tmp_path, capsys):
    import evaluate

    process = start(["evaluate.py", "--ckpt", str(tiny_checkpoint), "--samples_per_composer", "50",
                     "--sample_tokens", "400", "--json", str(tmp_path / "eval.json")])
    wait_for_line(process, "val windows scored", stream="stderr")  # its progress goes to stderr
    process.send_signal(signal.SIGTERM)
    line = one_stop_line(process, 143, progress=True)
    assert "SIGTERM: stopped; nothing was written" in line and not (tmp_path / "eval.json").exists()

    blocker = tmp_path / "taken"
    blocker.write_text("a file, not a folder")
    with pytest.raises(SystemExit) as exit_info:
        evaluate.main(["--ckpt", str(tiny_checkpoint), "--num_windows", "2", "--samples_per_composer", "1",
                       "--sample_tokens", "8", "--guidance", "1", "--json", str(blocker / "eval.json")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err  # its progress lines, then the one line
    assert f"cannot write {blocker / 'eval.json'}" in err.strip().splitlines()[-1]
    assert blocker.read_text() == "a file, not a folder"


def test_bench_stops_on_sigint_and_names_a_temp_folder_it_cannot_make(tmp_path, monkeypatch, capsys):
    import bench

    process = start(["bench.py", "--quick", "--cases", "matmul,train,sample"])
    wait_for_line(process, '"case": "machine"')
    process.send_signal(signal.SIGINT)
    assert "SIGINT: stopped; bench.py keeps nothing on disk" in one_stop_line(process, 130)

    blocker = tmp_path / "taken"
    blocker.write_text("a file, not a folder")
    monkeypatch.setattr(bench.tempfile, "tempdir", str(blocker))
    write_midi(str(tmp_path / "midi" / "Bach" / "p.mid"), make_score())
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--quick", "--cases", "prepare", "--midi_dir", str(tmp_path / "midi")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert f"cannot create a temp folder in {blocker}" in err


def test_sigterm_stops_ablate_and_its_running_recipes(tiny_dataset, tmp_path):
    out = tmp_path / "ablation"
    process = start(["ablate.py", "--recipes", "baseline,rope", "--parallel", "1", "--minutes", "5",
                     "--data_dir", str(tiny_dataset), "--out_dir", str(out), "--threads", "1",
                     "--extra=--block_size=64", "--extra=--n_layer=1", "--extra=--n_embd=32", "--extra=--batch_size=2"])
    wait_for_line(process, "start baseline")
    deadline = time.time() + 120
    while not (out / "baseline" / "log.jsonl").exists() and time.time() < deadline:  # the child is training
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    line = one_stop_line(process, 143)
    assert "SIGTERM: stopped; the running recipes were stopped" in line and "complete: none" in line
    children = subprocess.run(["pgrep", "-f", str(out)], capture_output=True, text=True).stdout.split()
    assert children == []  # no training run outlives ablate.py
    assert (out / "baseline" / "ckpt.pt").exists()  # train.py saved its state on the signal
    assert not (out / "rope").exists()  # the queued recipe never started


def test_preparing_in_this_process_leaves_ctrl_c_to_the_caller(folder_corpus, tmp_path):
    from prepare import prepare

    before = signal.getsignal(signal.SIGINT)
    prepare(folder_corpus, tmp_path / "data", workers=1, isolate=False)
    assert signal.getsignal(signal.SIGINT) is before  # only encoding *workers* leave Ctrl-C to their parent


def test_ablate_names_a_report_it_cannot_write_and_keeps_the_runs(tmp_path, monkeypatch, capsys):
    import ablate

    log = tmp_path / "ablation" / "baseline" / "log.jsonl"
    log.parent.mkdir(parents=True)
    log.write_text(json.dumps({"iter": 10, "val_loss": 3.0, "minutes": 1.0}) + "\n"
                   + json.dumps({"iter": 20, "val_loss": 2.5, "minutes": 2.0}) + "\n")

    def full_disk(path, data):
        raise OSError(errno.ENOSPC, "No space left on device", path)

    monkeypatch.setattr(ablate, "atomic_write_bytes", full_disk)
    with pytest.raises(SystemExit) as exit_info:
        ablate.main(["--report_only", "--recipes", "baseline", "--out_dir", str(tmp_path / "ablation")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "ablation.png: No space left on device" in err
    assert sorted(os.listdir(tmp_path / "ablation")) == ["baseline"] and log.exists()
