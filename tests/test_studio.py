"""The studio (sample.py --serve): requests are checked before anything runs, one generation at a
time, a failed write answers that request and the server serves on; in a real headless browser
the page generates a piece for a named composer, plays and downloads it, and shows clear errors."""
import base64
import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest

from conftest import ROOT
from pianogpt.cli import CliError

BROWSER = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def call(base, path, body=None):
    """(HTTP code, JSON answer) of a GET, or of a POST when body is given."""
    data = None if body is None else json.dumps(body).encode()
    try:
        with urllib.request.urlopen(urllib.request.Request(base + path, data=data), timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.fixture
def fake_studio(tmp_path):
    """The studio's server with callbacks that need no model: run_job waits for a go-ahead, and
    fails its write when asked to."""
    from http.server import ThreadingHTTPServer

    from pianogpt.studio import Studio, handler_for

    go = threading.Event()

    def check(choices):
        if choices.get("composer") != "Bach":
            raise CliError(f"unknown composer {choices.get('composer')!r}")
        return choices

    def run_job(job, on_token):
        go.wait(30)
        on_token(0)
        if job.get("full_disk"):
            raise CliError(f"cannot write {tmp_path}/Bach_1.mid: No space left on device; Bach_1 was not kept")
        (tmp_path / "Bach_1.mid").write_bytes(b"MThd")
        return {"stem": str(tmp_path / "Bach_1"), "notes": 3, "seconds": 1.5}

    server = ThreadingHTTPServer(("127.0.0.1", 0), handler_for(Studio(str(tmp_path), {"composers": ["Bach"]}, check,
                                                                      run_job)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", go
    go.set()
    server.shutdown()


def finished(base):
    for _ in range(60):
        code, status = call(base, "/api/status?wait=1")
        if status["state"] != "running":
            return status
    raise AssertionError("the job never finished")


def test_one_generation_at_a_time_and_a_bad_request_runs_nothing(fake_studio):
    base, go = fake_studio
    assert call(base, "/api/generate", {"composer": "Nobody"}) == (400, {"error": "unknown composer 'Nobody'"})
    assert call(base, "/api/status")[1]["state"] == "idle"
    assert call(base, "/api/generate", {"composer": "Bach"}) == (202, {"job": 1})
    code, answer = call(base, "/api/generate", {"composer": "Bach"})
    assert code == 409 and answer["error"].startswith("busy")
    go.set()
    status = finished(base)
    assert status["state"] == "done" and status["files"] == {"mid": "/files/Bach_1.mid"}
    with urllib.request.urlopen(base + "/files/Bach_1.mid") as response:
        assert response.read() == b"MThd"
    assert call(base, "/files/..%2Fsecret.mid")[0] == 404


def test_a_failed_write_answers_its_request_and_the_server_serves_on(fake_studio):
    base, go = fake_studio
    go.set()
    assert call(base, "/api/generate", {"composer": "Bach", "full_disk": True})[0] == 202
    status = finished(base)
    assert status["state"] == "error" and "No space left on device" in status["error"]
    assert call(base, "/api/generate", {"composer": "Bach"})[0] == 202
    assert finished(base)["state"] == "done"


def test_the_page_asks_for_numbers_in_range_and_a_midi_file():
    import argparse

    from sample import studio_arguments, uploaded_prompt

    args = argparse.Namespace(guidance=[5.0], temperature=0.9, composer=None, composer_id=None)
    job = studio_arguments(args, {"composer": "Bach", "mix_with": "Chopin", "mix_share": "0.25", "length": "16"})
    assert job.composer == "Bach:0.75,Chopin:0.25" and job.bars == 16 and job.seconds is None
    assert studio_arguments(args, {"composer": "Bach", "unit": "seconds", "length": 30}).seconds == 30
    for bad, message in (({"length": 5000}, "between 1 and 1000"), ({"guidance": "loud"}, "must be a number"),
                         ({"temperature": 0}, "between 0.05 and 5"), ({"unit": "beats"}, "bars or seconds"),
                         ({"composer": ""}, "choose a composer")):
        with pytest.raises(CliError, match=message):
            studio_arguments(args, {"composer": "Bach", **bad})
    with pytest.raises(CliError, match="notes.txt is not a MIDI file"):
        with uploaded_prompt({"prompt_b64": base64.b64encode(b"hello").decode(), "prompt_name": "notes.txt"}):
            pass


def test_the_server_listens_on_this_machine_only_by_default():
    from sample import parse_args

    assert parse_args(["--serve"])[1].host == "127.0.0.1"


# ----------------------------------------------------------------------------- a real browser


class DevTools:
    """The least of the Chrome DevTools protocol over a WebSocket (standard library only):
    evaluate JavaScript in the page and take a screenshot."""

    def __init__(self, ws_url):
        host, port, path = re.match(r"ws://([^:/]+):(\d+)(/.*)", ws_url).groups()
        self.sock = socket.create_connection((host, int(port)), timeout=120)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        reply = b""
        while b"\r\n\r\n" not in reply:
            reply += self.sock.recv(4096)
        assert b" 101 " in reply.split(b"\r\n")[0], reply
        self.next_id = 0

    def send(self, method, **params):
        self.next_id += 1
        payload = json.dumps({"id": self.next_id, "method": method, "params": params}).encode()
        header = bytes([0x81])
        n = len(payload)
        header += bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + n.to_bytes(2, "big") if n < 65536 \
            else bytes([0x80 | 127]) + n.to_bytes(8, "big")
        mask = os.urandom(4)
        self.sock.sendall(header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))
        while True:
            message = json.loads(self.receive())
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise AssertionError(message["error"])
                return message["result"]

    def receive(self):
        data = b""
        while True:
            first, second = self.read(2)
            n = second & 0x7F
            if n == 126:
                n = int.from_bytes(self.read(2), "big")
            elif n == 127:
                n = int.from_bytes(self.read(8), "big")
            data += self.read(n)
            if first & 0x80:
                return data

    def read(self, n):
        out = b""
        while len(out) < n:
            chunk = self.sock.recv(n - len(out))
            assert chunk, "the browser closed the connection"
            out += chunk
        return out

    def js(self, expression):
        result = self.send("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        assert "exceptionDetails" not in result, result
        return result["result"].get("value")

    def wait_for(self, expression, timeout=120):
        deadline = time.time() + timeout
        while time.time() < deadline:
            value = self.js(expression)
            if value:
                return value
            time.sleep(0.3)
        raise AssertionError(f"{expression} stayed false for {timeout} s")


def first_line_matching(stream, pattern, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        line = stream.readline()
        found = re.search(pattern, line)
        if found:
            return found
        assert line, f"the program ended before printing {pattern!r}"
    raise AssertionError(f"no {pattern!r} within {timeout} s")


@contextlib.contextmanager
def studio_in_a_browser(ckpt, tmp_path):
    """sample.py --serve on ckpt, and a headless browser on its page: (DevTools, server process)."""
    server = subprocess.Popen([sys.executable, os.path.join(ROOT, "sample.py"), "--serve", "--ckpt",
                               str(ckpt), "--port", "0", "--out_dir", str(tmp_path / "samples"),
                               "--soundfont", "builtin"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    browser = None
    try:
        url = first_line_matching(server.stdout, r"studio: (http://\S+)").group(1)
        browser = subprocess.Popen([BROWSER, "--headless=new", "--no-sandbox", "--disable-gpu",
                                    "--remote-debugging-port=0", f"--user-data-dir={tmp_path / 'profile'}",
                                    "--autoplay-policy=no-user-gesture-required", "--window-size=1280,900", url],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        port = first_line_matching(browser.stderr, r"DevTools listening on ws://[^:]+:(\d+)/").group(1)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json") as response:
            page = next(t for t in json.loads(response.read()) if t["type"] == "page")
        tools = DevTools(page["webSocketDebuggerUrl"])
        tools.wait_for("document.getElementById('composer')?.options.length === 3")  # loaded, and asked /api/info
        yield tools, server
    finally:
        for process in (browser, server):
            if process is not None and process.poll() is None:
                process.terminate()
                process.wait(timeout=30)


def screenshot_if_asked(tools, variable="STUDIO_SCREENSHOT"):
    if os.environ.get(variable):  # for a person to look at
        shot = tools.send("Page.captureScreenshot", format="png")["data"]
        with open(os.environ[variable], "wb") as f:
            f.write(base64.b64decode(shot))


@pytest.mark.skipif(BROWSER is None, reason="no headless browser (apt-get install chromium) to test the page in")
def test_the_page_in_a_real_browser(tiny_checkpoint, tmp_path):
    with studio_in_a_browser(tiny_checkpoint, tmp_path) as (tools, server):
        assert tools.js("document.getElementById('fill_box').hidden"), "a model that only continues offers no Fill"
        tools.js("document.getElementById('composer').value = 'Bach'; document.getElementById('length').value = 2;"
                 "document.getElementById('generate').click()")
        stem = tools.wait_for("document.getElementById('result').dataset.done")
        assert stem.startswith("Bach_")
        duration = tools.js("new Promise((done) => { const a = document.getElementById('player');"
                            "a.onloadedmetadata = () => done(a.duration); a.onerror = () => done(-1); a.load(); })")
        assert duration > 0, "the audio element plays the piece"
        heads = tools.js("Promise.all([...document.querySelectorAll('#downloads a')].map((a) => fetch(a.href)"
                         ".then((r) => r.arrayBuffer()).then((b) => String.fromCharCode(...new Uint8Array(b)"
                         ".slice(0, 4)))))")
        assert heads == ["MThd", "RIFF", "{\"co"], "MIDI, WAV and JSON downloads"
        assert {f"{stem}.mid", f"{stem}.wav"} <= set(os.listdir(tmp_path / "samples"))

        tools.js("{ const s = document.getElementById('search'); s.value = 'Nobody';"
                 "s.dispatchEvent(new Event('input')); document.getElementById('generate').click() }")
        error = tools.wait_for("document.querySelector('#message.error')?.textContent")
        assert "unknown composer 'Nobody'" in error
        tools.js("{ const s = document.getElementById('search'); s.value = '';"
                 "s.dispatchEvent(new Event('input')); document.getElementById('message').className = '';"
                 "const d = new DataTransfer(); d.items.add(new File(['just words'], 'notes.txt'));"
                 "document.getElementById('prompt').files = d.files; document.getElementById('generate').click() }")
        error = tools.wait_for("document.querySelector('#message.error')?.textContent")
        assert "notes.txt is not a MIDI file" in error
        screenshot_if_asked(tools)
        server.terminate()  # SIGTERM: the studio stops as sample.py does, naming what it kept
        output, _ = server.communicate(timeout=60)
        assert server.returncode == 143 and "Traceback" not in output
        assert output.strip().splitlines()[-1].endswith(f"SIGTERM: stopped; kept the 1 finished sample(s) ({stem}: "
                                                        f".mid, .png, .wav, .json), listed on "
                                                        f"{tmp_path / 'samples' / 'index.html'}; nothing partial was left")


@pytest.mark.skipif(BROWSER is None, reason="no headless browser (apt-get install chromium) to test the page in")
def test_the_page_fills_bars_of_a_midi_file_in_a_real_browser(tiny_infill_checkpoint, tmp_path):
    from symusic import Score

    from conftest import make_score, write_midi
    from pianogpt.infill import bar_ticks

    piece = write_midi(str(tmp_path / "mine.mid"), make_score(seed=3, n_bars=12))
    data = base64.b64encode(open(piece, "rb").read()).decode()
    with studio_in_a_browser(tiny_infill_checkpoint, tmp_path) as (tools, server):
        assert not tools.js("document.getElementById('fill_box').hidden")
        tools.js("{ const bytes = Uint8Array.from(atob('" + data + "'), (c) => c.charCodeAt(0));"
                 "const d = new DataTransfer(); d.items.add(new File([bytes], 'mine.mid'));"
                 "document.getElementById('prompt').files = d.files; document.getElementById('composer').value = 'Bach';"
                 "document.getElementById('fill_from').value = 5; document.getElementById('fill_to').value = 6;"
                 "document.getElementById('fill').click() }")
        stem = tools.wait_for("document.getElementById('result').dataset.done")
        assert stem.startswith("mine_bars5-6_Bach_")
        assert tools.js("new Promise((done) => { const a = document.getElementById('player');"
                        "a.onloadedmetadata = () => done(a.duration); a.onerror = () => done(-1); a.load(); })") > 0
        original, filled = Score(piece), Score(str(tmp_path / "samples" / f"{stem}.mid"))
        lines = bar_ticks(original)
        outside = lambda s: sorted((n.time, n.duration, n.pitch, n.velocity) for t in s.tracks  # noqa: E731
                                   for n in t.notes if not lines[4] <= n.time < lines[6])
        assert outside(filled) == outside(original), "every note outside bars 5-6 is kept"
        screenshot_if_asked(tools, "STUDIO_FILL_SCREENSHOT")
        tools.js("document.getElementById('fill_from').value = 40; document.getElementById('fill_to').value = 41;"
                 "document.getElementById('fill').click()")
        error = tools.wait_for("document.querySelector('#message.error')?.textContent")
        assert "bars 40-41 are outside the piece: it has bars 1-12" in error and "mine.mid" in error
