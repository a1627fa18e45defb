"""sample.py meets a full disk and an interrupt as train.py and prepare.py do: one line, the
documented exit code, no traceback, every finished sample kept and listed, nothing partial."""
import errno
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT


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
    import sample

    calls = []
    real_render = sample.render

    def render_then_interrupt(score, soundfont):
        calls.append(1)
        if len(calls) == 3:  # the third sample's .mid and .png are written by now: they must go
            raise KeyboardInterrupt
        return real_render(score, soundfont)

    monkeypatch.setattr(sample, "render", render_then_interrupt)
    code, err = sample_main(["--ckpt", str(tiny_checkpoint), "--composer_id", "1", "--num_samples", "4",
                             "--max_new_tokens", "30", "--out_dir", str(tmp_path), "--soundfont", "builtin"], capsys)
    assert code == 130 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "SIGINT: stopped; kept the 2 finished sample(s)" in err
    kept = ["Alkan_1337_0", "Alkan_1337_1"]  # composer 1 of the fixture
    assert stems_on_disk(tmp_path) == kept == listed(tmp_path)
    for stem in kept:
        assert {f"{stem}{s}" for s in (".mid", ".png", ".wav", ".json")} <= set(os.listdir(tmp_path))


def test_a_full_disk_is_one_line_and_leaves_no_partial_sample(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    import sample

    writes = []
    real_write = sample.atomic_write_bytes

    def write_until_full(path, data):
        writes.append(path)
        if path.endswith("_1.wav"):
            raise OSError(errno.ENOSPC, "No space left on device", path)
        return real_write(path, data)

    monkeypatch.setattr(sample, "atomic_write_bytes", write_until_full)
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
                                "--no-audio"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not out.exists() and time.time() < deadline:  # the folder is made just before generation starts
        time.sleep(0.2)
    time.sleep(1.0)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 143, err
    assert "Traceback" not in err and "SIGTERM: stopped; no sample was finished" in err
    assert stems_on_disk(out) == []
