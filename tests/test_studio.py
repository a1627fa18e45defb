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
    """(HTTP code, JSON answer) of a GET, or of a POST of JSON when body is given."""
    data = None if body is None else json.dumps(body).encode()
    headers = {} if body is None else {"Content-Type": "application/json"}
    try:
        with urllib.request.urlopen(urllib.request.Request(base + path, data=data, headers=headers),
                                    timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.fixture
def fake_studio(tmp_path):
    """The studio's server, with its guards, and callbacks that need no model: run_job waits for a
    go-ahead, fails its write when asked to, or (tokens=N) runs N steps of about 10 ms each, until
    stopped."""
    from pianogpt.output.studio import Studio, StudioServer, allowed_hosts, handler_for

    go = threading.Event()

    def check(choices):
        if choices.get("composer") != "Bach":
            raise CliError(f"unknown composer {choices.get('composer')!r}")
        return choices

    def run_job(job, on_token):
        if job.get("tokens"):
            for step in range(job["tokens"]):
                on_token(step, job["tokens"])
                time.sleep(0.01)
        go.wait(30)
        on_token(0)
        if job.get("full_disk"):
            raise CliError(f"cannot write {tmp_path}/Bach_1.mid: No space left on device; Bach_1 was not kept")
        (tmp_path / "Bach_1.mid").write_bytes(b"MThd")
        return {"stem": str(tmp_path / "Bach_1"), "notes": 3, "seconds": 1.5}

    server = StudioServer(("127.0.0.1", 0), None)
    port = server.server_address[1]
    server.RequestHandlerClass = handler_for(Studio(str(tmp_path), {"composers": ["Bach"]}, check, run_job),
                                             allowed_hosts("127.0.0.1", port))
    server.RequestHandlerClass.timeout = 1.0  # a silent client is dropped after a second, not CLIENT_TIMEOUT_S
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{port}", go
    go.set()
    server.shutdown()
    server.server_close()


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

    from pianogpt.output.studio import studio_arguments, uploaded_prompt

    args = argparse.Namespace(guidance=[5.0], temperature=0.9, composer=None, composer_id=None)
    job = studio_arguments(args, {"composer": "Bach", "mix_with": "Chopin", "mix_share": "0.25", "length": "16"}, 1000)
    assert job.composer == "Bach:0.75,Chopin:0.25" and job.bars == 16 and job.seconds is None
    assert studio_arguments(args, {"composer": "Bach", "unit": "seconds", "length": 30}, 1000).seconds == 30
    for bad, message in (({"length": 5000}, "between 1 and 64"), ({"guidance": "loud"}, "must be a number"),
                         ({"temperature": 0}, "between 0.05 and 5"), ({"unit": "beats"}, "bars or seconds"),
                         ({"composer": ""}, "choose a composer")):
        with pytest.raises(CliError, match=message):
            studio_arguments(args, {"composer": "Bach", **bad}, 1000)
    with pytest.raises(CliError, match="notes.txt is not a MIDI file"):
        with uploaded_prompt({"prompt_b64": base64.b64encode(b"hello").decode(), "prompt_name": "notes.txt"}):
            pass


def test_the_server_listens_on_this_machine_only_by_default():
    from sample import parse_args

    assert parse_args(["--serve"])[1].host == "127.0.0.1"


# ----------------------------------------------------------------------------- hostile requests, load, faults


def raw_exchange(base, data, read=True):
    """Send raw bytes to the studio; (status code or None, headers dict, body) of what comes back
    (None when the server closed the connection without an answer)."""
    host, port = base.rsplit("/", 1)[-1].split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(data)
        if not read:
            return None, {}, b""
        sock.shutdown(socket.SHUT_WR)  # all sent: a body shorter than its Content-Length ends here
        reply = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            reply += chunk
    if not reply.startswith(b"HTTP/"):
        return None, {}, reply
    head, _, body = reply.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


def post_bytes(base, body, host=None, extra=""):
    where = host or base.split("//")[1]
    return (f"POST /api/generate HTTP/1.1\r\nHost: {where}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n{extra}Connection: close\r\n\r\n").encode() + body


HOSTILE = [  # (what, raw request as a function of (base, host:port), expected status, words of the answer)
    ("Host of another site (DNS rebinding)",
     lambda b, h: b"GET /api/info HTTP/1.1\r\nHost: evil.example.com\r\nConnection: close\r\n\r\n", 403,
     "answers at"),
    ("no Host header", lambda b, h: b"GET /api/info HTTP/1.0\r\n\r\n", 403, "Host"),
    ("POST from another origin",
     lambda b, h: post_bytes(b, b'{"composer": "Bach"}', extra="Origin: http://evil.example.com\r\n"), 403,
     "another origin"),
    ("POST from a cross-site page",
     lambda b, h: post_bytes(b, b'{"composer": "Bach"}', extra="Sec-Fetch-Site: cross-site\r\n"), 403,
     "cross-site page"),
    ("POST that is not JSON", lambda b, h: post_bytes(b, b"composer=Bach").replace(
        b"application/json", b"application/x-www-form-urlencoded"), 415, "must be JSON"),
    ("Content-Length not a number", lambda b, h: post_bytes(b, b"{}").replace(b"Content-Length: 2", b"Content-Length: 2x"),
     400, "number of bytes"),
    ("no Content-Length", lambda b, h: post_bytes(b, b"").replace(b"Content-Length: 0\r\n", b""), 411, "Content-Length"),
    ("a body over the limit", lambda b, h: post_bytes(b, b"").replace(b"Content-Length: 0", b"Content-Length: 999999999"),
     413, "MB"),
    ("a body shorter than its Content-Length", lambda b, h: post_bytes(b, b"{}").replace(b"Content-Length: 2",
                                                                                        b"Content-Length: 20"),
     400, "ended after 2 of 20 bytes"),
    ("a JSON body that is not an object", lambda b, h: post_bytes(b, b"[1, 2]"), 400, "not a JSON object"),
    ("an unknown action", lambda b, h: post_bytes(b, b"{}").replace(b"/api/generate", b"/api/format_disk"), 404,
     "no action"),
    ("PUT", lambda b, h: f"PUT /api/generate HTTP/1.1\r\nHost: {h}\r\nContent-Length: 0\r\n\r\n".encode(), 405,
     "GET and POST"),
    ("a malformed request line", lambda b, h: b"GIVE ME EVERYTHING HTTP/1.1\r\n\r\n", 400, "Bad request syntax"),
    ("an unknown composer", lambda b, h: post_bytes(b, b'{"composer": "Nobody"}'), 400, "unknown composer"),
]


@pytest.mark.parametrize("what, request_of, code, words", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_a_hostile_or_malformed_request_is_answered_refused_and_runs_nothing(fake_studio, what, request_of, code,
                                                                            words, capsys):
    base, go = fake_studio
    status, headers, body = raw_exchange(base, request_of(base, base.split("//")[1]))
    assert status == code and words in json.loads(body)["error"]
    assert headers.get("x-frame-options") == "SAMEORIGIN" and headers.get("x-content-type-options") == "nosniff"
    assert call(base, "/api/status")[1]["state"] == "idle", "nothing runs"
    out = capsys.readouterr().out
    assert "Traceback" not in out and len([line for line in out.splitlines() if "studio: refused" in line]) <= 1


def test_the_studios_own_origin_may_post_and_every_answer_forbids_framing_and_sniffing(fake_studio):
    base, go = fake_studio
    status, headers, body = raw_exchange(base, post_bytes(base, b'{"composer": "Bach"}',
                                                          extra=f"Origin: {base}\r\nSec-Fetch-Site: same-origin\r\n"))
    assert status == 202 and json.loads(body) == {"job": 1}
    assert headers["content-security-policy"] == "frame-ancestors 'self'" and headers["referrer-policy"] == "no-referrer"
    go.set()
    assert finished(base)["state"] == "done"


def test_stop_ends_a_running_generation_and_keeps_nothing(fake_studio, tmp_path):
    base, go = fake_studio
    go.set()
    assert call(base, "/api/stop", {}) == (409, {"error": "nothing is being generated"})
    assert call(base, "/api/generate", {"composer": "Bach", "tokens": 100000})[0] == 202
    time.sleep(0.2)
    code, busy = call(base, "/api/generate", {"composer": "Bach"})
    assert code == 409 and re.search(r"\d+ of at most 100000 tokens, at most about \d+ s left", busy["error"])
    assert call(base, "/api/stop", {}) == (202, {"stopping": 1})
    assert finished(base) == {"state": "stopped", "job": 1}
    assert not (tmp_path / "Bach_1.mid").exists()


def test_status_is_answered_throughout_a_generation_under_many_pollers(fake_studio):
    """20 clients poll /api/status 10 times each while a generation runs: every poll is answered
    (the slowest answer is printed: the README's reliability table)."""
    base, go = fake_studio
    assert call(base, "/api/generate", {"composer": "Bach", "tokens": 300})[0] == 202
    slowest, answered, lock = [0.0], [], threading.Lock()

    def poll():
        for _ in range(10):
            start = time.perf_counter()
            code, status = call(base, "/api/status")
            with lock:
                slowest[0] = max(slowest[0], time.perf_counter() - start)
                answered.append((code, status["state"]))

    pollers = [threading.Thread(target=poll) for _ in range(20)]
    for t in pollers:
        t.start()
    for t in pollers:
        t.join(60)
    go.set()
    assert len(answered) == 200 and all(code == 200 for code, _ in answered)
    assert any(state == "running" for _, state in answered)
    print(f"200 status polls by 20 clients during a generation: slowest answer {slowest[0] * 1000:.0f} ms")
    assert finished(base)["state"] == "done"


def test_clients_that_send_slowly_or_vanish_do_not_hold_the_server(fake_studio):
    """More idle connections than handler threads, and clients that hang up mid-request: each is
    dropped after its time-out (1 s in fake_studio), and the server answers the next request."""
    import pianogpt.output.studio as studio_module

    base, go = fake_studio
    host, port = base.rsplit("/", 1)[-1].split(":")
    idle = [socket.create_connection((host, int(port))) for _ in range(studio_module.MAX_HANDLERS + 4)]
    try:
        for sock in idle[:3]:  # a request cut off mid-body, then the client is gone
            sock.sendall(post_bytes(base, b'{"composer": "Bach"}')[:-5])
            sock.close()
        code, status = call(base, "/api/status")  # waits at most one time-out for a free handler
        assert code == 200 and status["state"] == "idle"
    finally:
        for sock in idle:
            sock.close()
    assert call(base, "/api/status")[0] == 200


def resident_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads memory from /proc")
def test_many_generations_in_a_row_keep_memory_flat_and_every_file_valid(tiny_checkpoint, tmp_path):
    """40 short generations through the studio, one after another: every one kept whole (MIDI that
    symusic opens, WAV, the listening page lists them all) and the server's memory flat once warm
    (the figures are printed: the README's reliability table)."""
    from symusic import Score

    out = tmp_path / "samples"
    server = subprocess.Popen([sys.executable, os.path.join(ROOT, "sample.py"), "--serve", "--ckpt",
                               str(tiny_checkpoint), "--port", "0", "--out_dir", str(out), "--soundfont", "builtin"],
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        base = first_line_matching(server.stdout, r"studio: (http://\S+)/").group(1)
        memory = {}
        for i in range(40):
            assert call(base, "/api/generate", {"composer": "Bach", "length": 2, "seed": i})[0] == 202
            assert finished(base)["state"] == "done"
            if i in (9, 39):
                memory[i + 1] = resident_mb(server.pid)
        stems = sorted(p.stem for p in out.glob("*.mid"))
        assert len(stems) == 40
        for stem in stems:
            assert Score(str(out / f"{stem}.mid")).note_num() > 0
            assert (out / f"{stem}.wav").read_bytes()[:4] == b"RIFF"
            assert json.loads((out / f"{stem}.json").read_text())["composer"] == "Bach"
        page = (out / "index.html").read_text()
        assert page.count('class="entry"') == 40 and page.rstrip().endswith("</html>")
        print(f"40 generations in a row: server memory {memory[10]:.0f} MB after 10, {memory[40]:.0f} MB after 40")
        assert memory[40] < memory[10] * 1.3 + 30  # flat once warm, allowing the allocator its slack
    finally:
        server.terminate()
        server.wait(timeout=30)


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
    """Generate, play, download and clear errors; Stop; and a page of another origin that posts to
    the studio is refused."""
    with studio_in_a_browser(tiny_checkpoint, tmp_path) as (tools, server):
        (tmp_path / "other").mkdir()
        (tmp_path / "other" / "attack.html").write_text(  # a simple request: no preflight, the browser just sends it
            f"<script>fetch('{tools.js('location.origin')}/api/generate', {{method: 'POST', mode: 'no-cors', "
            "body: '{\"composer\": \"Bach\"}'}).finally(() => { document.title = 'sent'; });</script>")
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

        tools.js("{ document.getElementById('prompt').value = ''; document.getElementById('message').className = '';"
                 "document.getElementById('length').value = 64; document.getElementById('generate').click() }")
        tools.wait_for("!document.getElementById('stop').hidden")
        tools.js("document.getElementById('stop').click()")
        assert tools.wait_for("document.getElementById('result').dataset.stopped"), "Stop ends the generation"
        assert "stopped: nothing was kept" in tools.js("document.getElementById('message').textContent")

        other = subprocess.Popen([sys.executable, "-m", "http.server", "0", "--bind", "127.0.0.1", "--directory",
                                  str(tmp_path / "other")], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:  # a page of another origin posts to the studio, as a site open beside it could
            other_url = first_line_matching(other.stdout, r"Serving HTTP on \S+ port (\d+)").group(1)
            tools.send("Page.navigate", url=f"http://127.0.0.1:{other_url}/attack.html")
            assert tools.wait_for("document.title === 'sent'")
            refusal = first_line_matching(server.stdout, r"studio: refused POST /api/generate .*(\(403\).*)")
            assert "another origin" in refusal.group(1)
        finally:
            other.terminate()
            other.wait(timeout=30)
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
    from pianogpt.generation.infill import bar_ticks

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
