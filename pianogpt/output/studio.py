"""The studio: a local web page to pick a composer (or a mix of two), generate a piece or fill bars
of a MIDI file (a model trained to infill), and hear the result.

Standard library only (http.server). `sample.py --serve` owns the model and passes two callbacks:
check(choices) -> job (a CliError for a bad request: nothing runs) and run_job(job, on_token) ->
the kept sample's summary, where on_token(step, total) follows the progress and raises Cancelled when
the page asked to stop. One generation runs at a time; a request that comes meanwhile is answered
"busy" with how far the running one is. Every sample is written by sample.py's own writer (whole
or not at all) into out_dir, whose listening page lists the earlier ones.

It faces the web pages open beside it in the same browser: a request whose Host is not this
studio's (DNS rebinding) or a POST from another origin, or not JSON, is refused; every answer says
not to be framed by other sites nor sniffed. Work is bounded: MAX_HANDLERS connections at once,
CLIENT_TIMEOUT_S for a client that stops sending, one generation, and the caller's length caps.
Every request gets an answer (a malformed one a 4xx with one sentence) and the terminal one line per
refused request. The page's choices become sample.py's arguments here (studio_arguments), checked as
the command line checks its own.
"""
import argparse
import base64
import contextlib
import json
import math
import mimetypes
import os
import socket
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from pianogpt.cli import CliError
from pianogpt.data.dataset import TEXTURES

MAX_REQUEST_BYTES = 8 * 2**20  # a MIDI file to continue, base64 in JSON
MAX_HANDLERS = 16  # connections handled at once; more wait in the listen queue until one ends
CLIENT_TIMEOUT_S = 10.0  # a client that sends nothing for this long is dropped (slow clients hold no thread)
SERVED = (".mid", ".wav", ".png", ".json", ".html")
SAFETY_HEADERS = {"X-Content-Type-Options": "nosniff", "X-Frame-Options": "SAMEORIGIN",
                  "Content-Security-Policy": "frame-ancestors 'self'", "Referrer-Policy": "no-referrer",
                  "Cross-Origin-Resource-Policy": "same-origin", "Cache-Control": "no-store"}
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


class Cancelled(Exception):
    """The page asked to stop the running generation (raised from its on_token)."""


class Studio:
    """The server's state: what the page may choose from, the callbacks, and the one job."""

    def __init__(self, out_dir, info, check, run_job):
        self.out_dir, self.info, self.check, self.run_job = out_dir, info, check, run_job
        self.lock = threading.Lock()
        self.finished = threading.Condition()
        self.stop_asked = threading.Event()
        self.status = {"state": "idle", "job": 0}

    def status_after(self, wait_s):
        """The job's status, once it has changed state or after wait_s seconds (a long poll: the page
        asks again at once, so it learns of the end without polling fast)."""
        with self.finished:
            if self.status["state"] == "running":
                self.finished.wait(timeout=wait_s)
            return dict(self.status)

    def start(self, choices):
        """(HTTP code, answer) for a generation request: 202 started, 400 a bad request, 409 busy."""
        try:
            job = self.check(choices)
        except CliError as e:
            return 400, {"error": str(e)}
        if not self.lock.acquire(blocking=False):
            return 409, {"error": f"busy: another piece is being generated ({self.progress_line()}); one runs at a "
                                  "time: press it again when that one is done, or Stop it"}
        number = self.status["job"] + 1
        self.stop_asked.clear()
        self.status = {"state": "running", "job": number, "tokens": 0, "total": None, "started": time.time()}
        threading.Thread(target=self.work, args=(job, number), daemon=True).start()
        return 202, {"job": number}

    def progress_line(self):
        """'120 of at most 600 tokens, at most about 8 s left' for the running job."""
        status = dict(self.status)
        done, total = status.get("tokens", 0), status.get("total")
        if not total:
            return "just started"
        elapsed = time.time() - status.get("started", time.time())
        left = elapsed / done * (total - done) if done else float("nan")
        return f"{done} of at most {total} tokens" + (f", at most about {left:.0f} s left" if done else "")

    def stop(self):
        """(HTTP code, answer) for Stop: the running generation ends at its next token, keeping nothing."""
        if self.status["state"] != "running":
            return 409, {"error": "nothing is being generated"}
        self.stop_asked.set()
        return 202, {"stopping": self.status["job"]}

    def on_token(self, step, total=None):
        if self.stop_asked.is_set():
            raise Cancelled()
        self.status.update(tokens=step + 1, total=total or self.status.get("total"))

    def work(self, job, number):
        try:
            summary = self.run_job(job, self.on_token)
            stem = os.path.basename(summary["stem"])
            files = {ext: f"/files/{stem}.{ext}" for ext in ("mid", "wav", "png", "json")
                     if os.path.exists(os.path.join(self.out_dir, f"{stem}.{ext}"))}
            self.status = {"state": "done", "job": number, "stem": stem, "files": files,
                           "notes": summary["notes"], "seconds": round(summary["seconds"], 1)}
        except Cancelled:
            self.status = {"state": "stopped", "job": number}
        except CliError as e:  # a failed write: the request gets the one line, the server serves on
            self.status = {"state": "error", "job": number, "error": str(e)}
        except Exception as e:  # never leave the studio stuck "running"
            self.status = {"state": "error", "job": number, "error": f"{type(e).__name__}: {e}"}
        finally:
            self.lock.release()
            with self.finished:
                self.finished.notify_all()


def allowed_hosts(host, port):
    """The Host header values this studio answers ("name:port"): the loopback names and, when it
    listens on another address, that address (and, on every interface, this machine's names)."""
    names = set(LOOPBACK_NAMES)
    if host in ("0.0.0.0", "::", ""):
        names.add(socket.gethostname())
        try:
            names.update(socket.gethostbyname_ex(socket.gethostname())[2])
        except OSError:
            pass
    else:
        names.add(host)
    return {f"[{n}]:{port}" if ":" in n else f"{n}:{port}" for n in names}


class StudioHandler(BaseHTTPRequestHandler):
    """One connection's requests: the page, its files, status, generate and stop. The class of a
    running studio (handler_for) sets .studio and .hosts, the Host values it answers."""

    studio, hosts = None, frozenset()
    timeout = CLIENT_TIMEOUT_S  # the socket's: a read that waits longer ends the connection

    def log_message(self, *args):  # the terminal shows what matters: requests are not it
        pass

    def answer(self, code, body, content_type="application/json", extra=None):
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for key, value in {**SAFETY_HEADERS, **(extra or {})}.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def refuse(self, code, why, extra=None):
        """A 4xx with one sentence, and one line in the server's terminal."""
        what = f"{getattr(self, 'command', None) or '?'} {getattr(self, 'path', '')[:80]}".strip()
        print(f"studio: refused {what} from {self.client_address[0]} ({code}): {why}", flush=True)
        self.close_connection = True
        self.answer(code, {"error": why}, extra=extra)

    def send_error(self, code, message=None, explain=None):  # http.server's own refusals, as ours
        self.refuse(code, message or self.responses.get(code, ("refused",))[0])

    def host_problem(self):
        host = self.headers.get("Host")
        if host is None:
            return "a request must say which Host it is for"
        if host.lower() not in self.hosts:
            return (f"this studio answers at {sorted(self.hosts)[0]} only, not at Host {host[:60]!r} (a page of "
                    "another site reaching it through its own name is refused)")
        return None

    def do_GET(self):
        problem = self.host_problem()
        if problem:
            return self.refuse(403, problem)
        path = self.path.split("?", 1)[0]
        if path == "/":
            return self.answer(200, PAGE.encode(), "text/html; charset=utf-8")
        if path == "/api/info":
            return self.answer(200, self.studio.info)
        if path == "/api/status":
            return self.answer(200, self.studio.status_after(1.0 if "wait" in self.path else 0.0))
        if path.startswith("/files/"):
            return self.send_file(path[len("/files/"):])
        return self.answer(404, {"error": f"no page {path}"})

    def send_file(self, name):
        from urllib.parse import unquote

        name = unquote(name)
        full = os.path.join(self.studio.out_dir, name)
        if "/" in name or name.startswith(".") or not name.endswith(SERVED) or not os.path.isfile(full):
            return self.answer(404, {"error": f"no file {name}"})
        with open(full, "rb") as f:
            data = f.read()
        kind = mimetypes.guess_type(name)[0] or "application/octet-stream"
        self.answer(200, data, kind + ("; charset=utf-8" if kind.startswith("text/") else ""))

    def sender_refusal(self):
        """(code, why) when a POST is not the studio's own page's JSON, else None (a POST from no
        page at all, a command line tool that sends no Origin, is the user's own)."""
        origin, site = self.headers.get("Origin"), self.headers.get("Sec-Fetch-Site")
        if origin is not None and urlsplit(origin).netloc.lower() != self.headers.get("Host", "").lower():
            return 403, (f"a POST from another origin ({origin[:60]}) is refused: only the studio's own page may "
                         "start work")
        if site not in (None, "same-origin", "none"):
            return 403, f"a POST from a {site} page is refused: only the studio's own page may start work"
        if self.headers.get("Content-Type", "").split(";")[0].strip().lower() != "application/json":
            return 415, "a POST must be JSON (Content-Type: application/json)"
        return None

    def body_length(self):
        """(length, None) of the POST's body, or (None, (code, why))."""
        text = self.headers.get("Content-Length")
        if text is None:
            return None, (411, "a POST must say its Content-Length")
        if not text.strip().isdigit():
            return None, (400, f"Content-Length must be a number of bytes, got {text[:30]!r}")
        if int(text) > MAX_REQUEST_BYTES:
            return None, (413, f"the request is over {MAX_REQUEST_BYTES // 2**20} MB; continue a shorter MIDI file")
        return int(text), None

    def do_POST(self):
        problem = self.host_problem()
        if problem:
            return self.refuse(403, problem)
        if self.path not in ("/api/generate", "/api/stop"):
            return self.refuse(404, f"no action {self.path[:80]}")
        refusal = self.sender_refusal()
        if refusal:
            return self.refuse(*refusal)
        length, refusal = self.body_length()
        if refusal:
            return self.refuse(*refusal)
        try:
            raw = self.rfile.read(length)
        except (TimeoutError, OSError):
            return self.refuse(408, f"the request body did not arrive within {self.timeout:g} s")
        if len(raw) < length:
            return self.refuse(400, f"the request body ended after {len(raw)} of {length} bytes")
        if self.path == "/api/stop":
            return self.answer(*self.studio.stop())
        try:
            choices = json.loads(raw or b"{}")
            if not isinstance(choices, dict):
                raise ValueError
        except (ValueError, UnicodeDecodeError):
            return self.refuse(400, "the request is not a JSON object")
        self.answer(*self.studio.start(choices))

    def not_allowed(self):
        self.refuse(405, f"{self.command} is not served here: the studio answers GET and POST",
                    extra={"Allow": "GET, POST"})

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD = do_TRACE = do_CONNECT = not_allowed


def handler_for(studio, hosts):
    """The request handler of this studio; hosts: the Host values it answers (allowed_hosts)."""
    return type("Handler", (StudioHandler,), {"studio": studio, "hosts": hosts})


class StudioServer(ThreadingHTTPServer):
    """ThreadingHTTPServer with at most MAX_HANDLERS connections handled at once: the next one waits
    in the listen queue until a handler ends (each ends within CLIENT_TIMEOUT_S of silence)."""

    daemon_threads = True
    request_queue_size = 64  # the listen backlog: at socketserver's 5, a burst of clients waits out SYN retries (1 s)

    def __init__(self, address, handler, max_handlers=MAX_HANDLERS):
        self.slots = threading.BoundedSemaphore(max_handlers)
        super().__init__(address, handler)

    def process_request(self, request, client_address):
        self.slots.acquire()
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.slots.release()
            raise

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    def handle_error(self, request, client_address):
        """A connection that failed mid-answer (the client hung up): one line, not a traceback."""
        error = sys.exc_info()[1]
        print(f"studio: dropped a connection from {client_address[0]} ({type(error).__name__}: {error})", flush=True)


def serve(host, port, out_dir, info, check, run_job):
    """Serve the studio until Ctrl-C / SIGTERM (which the caller turns into its one line)."""
    studio = Studio(out_dir, info, check, run_job)
    try:
        server = StudioServer((host, port), None)
    except OSError as e:
        raise CliError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    server.RequestHandlerClass = handler_for(studio, allowed_hosts(host, server.server_address[1]))
    where = f"http://{'localhost' if host in ('127.0.0.1', 'localhost') else host}:{server.server_address[1]}/"
    reach = "this machine only" if host in LOOPBACK_NAMES else f"anyone who can reach {host}"
    print(f"studio: {where} (open it in a browser; {reach}); samples go to {out_dir}/; Ctrl-C stops", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()


PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>pianogpt studio</title>
<style>
body{font-family:system-ui,sans-serif;margin:0;background:#fafafa;color:#222}
header{background:#222;color:#eee;padding:.8em 2em}header h1{margin:0;font-size:1.3em}
main{display:grid;grid-template-columns:minmax(300px,380px) 1fr;gap:2em;padding:1.5em 2em}
fieldset{border:1px solid #ddd;border-radius:6px;background:#fff;margin:0 0 1em 0}
label{display:block;margin:.5em 0 .2em 0;font-size:.9em;color:#444}
input,select,button{font:inherit}select,input[type=text],input[type=number]{width:100%;box-sizing:border-box}
button{background:#1f77b4;color:#fff;border:0;border-radius:5px;padding:.6em 1.4em;cursor:pointer}
button:disabled{background:#999}#message{margin:.8em 0;min-height:1.3em}
.error{color:#b00020;font-weight:600}.roll{max-width:100%;image-rendering:pixelated;background:#181818}
progress{width:100%}audio{display:block;margin:.6em 0}iframe{width:100%;height:60vh;border:1px solid #ddd;border-radius:6px;background:#fff}
</style></head>
<body><header><h1>pianogpt studio</h1><span id="checkpoint"></span></header>
<main><section>
<fieldset><legend>Style</legend>
<label for="search">Composer (type to search)</label><input id="search" type="text" placeholder="search">
<select id="composer" size="8"></select>
<label for="mix_with">Mixed with (optional)</label><select id="mix_with"><option value="">nobody</option></select>
<label for="mix_share">Share of the second composer: <span id="share_value">0.5</span></label>
<input id="mix_share" type="range" min="0" max="1" step="0.05" value="0.5">
<div id="texture_box" hidden><label for="texture">Texture</label><select id="texture">
<option value="any">the model's own mix</option><option value="score">a score (as written)</option>
<option value="performance">a performance (as played)</option></select></div>
</fieldset>
<fieldset><legend>Sound</legend>
<label for="guidance">Guidance (1 = off; higher follows the composer more)</label>
<input id="guidance" type="number" min="0" max="20" step="0.5">
<label for="temperature">Temperature</label><input id="temperature" type="number" min="0.05" max="5" step="0.05">
<label for="length">Length <span id="caps"></span></label><div style="display:flex;gap:.5em"><input id="length" type="number" min="1" value="16">
<select id="unit"><option value="bars">bars</option><option value="seconds">seconds</option></select></div>
<label for="prompt">A MIDI file to continue, or to fill (optional)</label><input id="prompt" type="file" accept=".mid,.midi">
<label for="seed">Seed (empty: a new one each time)</label><input id="seed" type="number" min="0">
</fieldset>
<fieldset id="fill_box" hidden><legend>Rewrite bars of the MIDI file</legend>
<div style="display:flex;gap:.5em;align-items:center">bars <input id="fill_from" type="number" min="1" value="9">
to <input id="fill_to" type="number" min="1" value="12"></div>
<p style="font-size:.85em;color:#555;margin:.4em 0">Every note outside these bars is kept; the new bars lead into
what follows. Fill again for another take.</p>
<button id="fill">Fill</button>
</fieldset>
<button id="generate">Generate</button> <button id="stop" hidden>Stop</button><div id="message"></div>
<progress id="progress" hidden></progress>
</section>
<section><div id="result"></div><h2>Earlier pieces</h2><iframe id="gallery" title="earlier pieces"
src="/files/index.html"></iframe></section></main>
<script>
const $ = (id) => document.getElementById(id);
let info = null;
function say(text, isError) { $("message").textContent = text; $("message").className = isError ? "error" : ""; }
function fillComposers(filter) {
  const keep = $("composer").value, f = filter.toLowerCase();
  $("composer").innerHTML = "";
  for (const name of info.composers.filter((n) => n.toLowerCase().includes(f))) {
    $("composer").add(new Option(name, name, false, name === keep));
  }
  if (!$("composer").value && $("composer").options.length) $("composer").selectedIndex = 0;
}
async function load() {
  info = await (await fetch("/api/info")).json();
  $("checkpoint").textContent = info.checkpoint + " \\u00b7 " + info.composers.length + " composers";
  fillComposers("");
  for (const name of info.composers) $("mix_with").add(new Option(name, name));
  $("guidance").value = info.guidance; $("temperature").value = info.temperature;
  $("texture_box").hidden = !info.texture; $("fill_box").hidden = !info.infill;
  $("caps").textContent = "(at most " + info.max_bars + " bars or " + info.max_seconds + " s, " + info.max_tokens + " tokens)";
  $("length").max = info.max_bars;
  const query = new URLSearchParams(location.search);  // ?composer=...&length=...&go=1 fills the form
  for (const [key, value] of query) if ($(key) && key !== "go") $(key).value = value;
  fillComposers($("search").value);
  if (query.get("composer")) $("composer").value = query.get("composer");
  if (query.get("go")) generate(query.get("go") === "fill" ? "infill" : "continue");
}
function post(path, body) {  // the studio takes JSON from its own page only
  return fetch(path, {method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)});
}
function readFile(file) {
  return new Promise((resolve, reject) => { const r = new FileReader();
    r.onload = () => resolve(r.result.split(",")[1] || ""); r.onerror = reject; r.readAsDataURL(file); });
}
async function generate(mode) {
  const choices = {composer: $("composer").value || $("search").value, mix_with: $("mix_with").value,
    mix_share: $("mix_share").value, guidance: $("guidance").value, temperature: $("temperature").value,
    length: $("length").value, unit: $("unit").value, texture: $("texture").value, seed: $("seed").value};
  if (mode === "infill") Object.assign(choices, {mode: "infill", fill_from: $("fill_from").value, fill_to: $("fill_to").value});
  const file = $("prompt").files[0];
  if (file) { choices.prompt_b64 = await readFile(file); choices.prompt_name = file.name; }
  const response = await post("/api/generate", choices);
  const answer = await response.json();
  if (!response.ok) { say(answer.error, true); return; }
  $("generate").disabled = true; $("fill").disabled = true; $("progress").hidden = false; $("stop").hidden = false;
  say(mode === "infill" ? "filling..." : "generating...", false);
  let status = null;
  do {  // a long poll: the server answers when the piece is done, or after a second with the progress
    status = await (await fetch("/api/status?wait=1")).json();
    if (status.state === "running") say("generating: " + status.tokens + " of at most " + status.total + " tokens", false);
  } while (status.state === "running");
  $("generate").disabled = false; $("fill").disabled = false; $("progress").hidden = true; $("stop").hidden = true;
  if (status.state === "error") { say(status.error, true); return; }
  if (status.state === "stopped") { say("stopped: nothing was kept", false); $("result").dataset.stopped = status.job; return; }
  say("done: " + status.notes + " notes, " + status.seconds + " s", false);
  const f = status.files, parts = [];
  if (f.png) parts.push('<img class="roll" alt="piano roll" src="' + f.png + '">');
  if (f.wav) parts.push('<audio id="player" controls src="' + f.wav + '"></audio>');
  parts.push('<p id="downloads">' + ["mid", "wav", "json"].filter((k) => f[k]).map((k) =>
    '<a download href="' + f[k] + '">' + k.toUpperCase() + "</a>").join(" \\u00b7 ") + "</p>");
  $("result").innerHTML = "<h2>" + status.stem + "</h2>" + parts.join("");
  $("result").dataset.done = status.stem;
  $("gallery").src = "/files/index.html?" + Date.now();
}
$("search").addEventListener("input", () => fillComposers($("search").value));
$("mix_share").addEventListener("input", () => { $("share_value").textContent = $("mix_share").value; });
$("generate").addEventListener("click", () => generate("continue"));
$("fill").addEventListener("click", () => generate("infill"));
$("stop").addEventListener("click", async () => { const r = await post("/api/stop", {});
  if (!r.ok) say((await r.json()).error, true); else say("stopping...", false); });
load();
</script></body></html>
"""


# ----------------------------------------------------------------------------- the page's choices


STUDIO_LIMITS = {"guidance": (0.0, 20.0), "temperature": (0.05, 5.0)}
STUDIO_MAX_BARS, STUDIO_MAX_SECONDS, STUDIO_MAX_TOKENS = 64, 300, 8192  # one request's most work, shown on the page


def studio_arguments(args, choices, max_bar):
    """A copy of sample.py's arguments with the page's choices: composer (or a mix of two),
    guidance, temperature, length in bars or seconds (or the bars to fill, up to max_bar), rendering,
    seed."""
    job = argparse.Namespace(**vars(args))
    composer, other = str(choices.get("composer") or "").strip(), str(choices.get("mix_with") or "").strip()
    if not composer:
        raise CliError("choose a composer")
    share = studio_number(choices, "mix_share", 0.5, (0.0, 1.0)) if other else 0.0
    job.composer_id, job.composer = None, (f"{composer}:{1 - share:g},{other}:{share:g}" if other and 0 < share < 1
                                           else other if other and share >= 1 else composer)
    job.guidance = [studio_number(choices, "guidance", args.guidance[0], STUDIO_LIMITS["guidance"])]
    job.temperature = studio_number(choices, "temperature", args.temperature, STUDIO_LIMITS["temperature"])
    unit = choices.get("unit", "bars")
    if unit not in ("bars", "seconds"):
        raise CliError(f"length unit must be bars or seconds, got {unit!r}")
    most = STUDIO_MAX_BARS if unit == "bars" else STUDIO_MAX_SECONDS
    length = studio_number(choices, "length", 16, (1, most))
    job.bars, job.seconds = (int(length), None) if unit == "bars" else (None, length)
    job.infill = None
    if choices.get("mode") == "infill":  # the bars to fill, by number
        first = int(studio_number(choices, "fill_from", 1, (1, max_bar)))
        job.bars, job.seconds = (first, int(studio_number(choices, "fill_to", first, (first, max_bar)))), None
    job.max_new_tokens, job.num_samples, job.name = STUDIO_MAX_TOKENS, 1, None
    job.texture = choices.get("texture") or "any"
    if job.texture not in ("any",) + tuple(TEXTURES):
        raise CliError(f"texture must be one of any, {', '.join(TEXTURES)}; got {job.texture!r}")
    job.seed = int(studio_number(choices, "seed", int.from_bytes(os.urandom(2), "big"), (0, 2**31 - 1)))
    return job


def studio_number(choices, key, default, bounds):
    value = choices.get(key, default)
    try:
        value = float(default if value in (None, "") else value)
    except (TypeError, ValueError):
        raise CliError(f"{key} must be a number, got {value!r}") from None
    if not (math.isfinite(value) and bounds[0] <= value <= bounds[1]):
        raise CliError(f"{key} must be between {bounds[0]:g} and {bounds[1]:g}, got {value:g}")
    return value


@contextlib.contextmanager
def uploaded_prompt(choices):
    """The page's MIDI file to continue, as a temporary file (None when there is none); a file
    that is not MIDI is a CliError naming it."""
    data = choices.get("prompt_b64")
    if not data:
        yield None
        return
    name = choices.get("prompt_name") or "the uploaded file"
    try:
        raw = base64.b64decode(data, validate=True)
    except (ValueError, TypeError):
        raise CliError(f"{name} did not arrive whole (not base64)") from None
    if not raw.startswith(b"MThd"):
        raise CliError(f"{name} is not a MIDI file (a .mid starts with MThd)")
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "prompt.mid")
        with open(path, "wb") as f:
            f.write(raw)
        yield path
