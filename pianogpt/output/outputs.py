"""What sample.py and the studio write: a sample's files, whole or not at all, and the listening page.

Each sample has a stem of its own (claimed atomically, written whole or removed); samples/index.html
lists a folder's samples.

A sample is <stem>.mid, .png (a piano roll), .wav (audio) and .json (settings, seed, token ids),
the .json last. On the page every <name>.json of the folder is one entry (a sample, or a real
piece from --render), newest first: composer, guidance, temperature, seed, length, notes, the piano roll, an
audio player and links to the .mid and .json. No network, no scripts. The page is
rewritten atomically after every run; when two runs finish at once, each rewrites it
until the folder stops changing under it, so the last page written lists both.
"""
import html
import json
import os
from urllib.parse import quote

from pianogpt.output.audio import render, wav_bytes
from pianogpt.cli import CliError
from pianogpt.files import atomic_write_bytes, atomic_write_text
from pianogpt.output.pictures import piano_roll, png_bytes
from pianogpt.data.remi import PIANO_HIGH, PIANO_LOW, decode_sample


# ----------------------------------------------------------------------------- one sample, whole


def claim_stem(base):
    """base, or base-2, base-3, ...: the first stem no earlier or concurrent run has taken.

    The claim is stem.json created with O_EXCL (atomic: two runs finishing at once never
    get the same stem); write_sample later replaces it with the real .json.
    """
    for n in range(1, 100000):
        stem = base if n == 1 else f"{base}-{n}"
        if os.path.exists(f"{stem}.mid"):
            continue
        try:
            fd = os.open(f"{stem}.json", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            continue
        try:
            with os.fdopen(fd, "w") as f:
                f.write('{"status": "being written"}')
        except OSError:  # a full disk: no claim is left behind
            os.unlink(f"{stem}.json")
            raise
        return stem
    raise CliError(f"no free file name for {base} in its folder")


STEM_SUFFIXES = (".mid", ".png", ".wav", ".json")


def write_sample(stem, ids, tokenizer, settings, soundfont=None, audio=True):
    """stem.mid, stem.png, stem.wav (unless audio is off) and stem.json last; returns a summary
    dict (keep_whole makes it all or nothing)."""
    ids, score, errors = decode_sample(tokenizer, ids)
    summary = write_score(stem, score, audio, soundfont)
    atomic_write_text(f"{stem}.json", json.dumps({**settings, "grammar_error_rate": errors,
                                                  "notes": summary["notes"], "seconds": summary["seconds"],
                                                  "voice": summary["voice"], "token_ids": ids}))
    return {**summary, "grammar_error_rate": errors}


def keep_whole(base, write):
    """(stem, write(stem)) under a free stem (base, base-2, ...), all or nothing: a failed write or an
    interrupt removes what that stem had written (never an earlier sample's files: nothing is removed
    before the stem is claimed), and a failed write is a CliError naming the file."""
    stem = base
    try:
        stem = claim_stem(base)
        try:
            return stem, write(stem)
        except BaseException:
            remove_stem(stem)
            raise
    except OSError as e:
        raise CliError(f"cannot write {e.filename or stem + '.*'}: {e.strerror or e}; "
                       f"{os.path.basename(stem)} was not kept") from None


def remove_stem(stem):
    """Every file of one sample, and the temporary files a write may have left."""
    folder, base = os.path.split(stem)
    for name in os.listdir(folder or "."):
        if any(name == base + suffix or name.startswith(base + suffix + ".") or name.startswith(f".{base}{suffix}.")
               for suffix in STEM_SUFFIXES):
            try:
                os.unlink(os.path.join(folder, name))
            except OSError:
                pass


def write_score(stem, score, audio=True, soundfont=None, marked=None):
    """stem.mid, stem.png (marked: a (start, end) tick span shaded on it) and stem.wav of a score;
    {"midi", "notes", "seconds", "voice"}."""
    n_notes = sum(len(t.notes) for t in score.tracks)
    seconds = float(score.to("second").end()) if n_notes else 0.0
    tmp_mid = f"{stem}.mid.{os.getpid()}.tmp"
    score.dump_midi(tmp_mid)  # symusic writes a path; rename it into place
    os.replace(tmp_mid, f"{stem}.mid")
    atomic_write_bytes(f"{stem}.png", png_bytes(piano_roll(score, PIANO_LOW, PIANO_HIGH, marked=marked)))
    voice = None
    if audio:
        samples, voice = render(score, soundfont)
        atomic_write_bytes(f"{stem}.wav", wav_bytes(samples))
    return {"midi": f"{stem}.mid", "notes": n_notes, "seconds": seconds, "voice": voice}


def keep_sample(base, ids, tokenizer, settings, soundfont, audio):
    """One sample written whole under a free stem (base, base-2, ...), or a CliError naming the
    write that failed, with nothing of the sample left; its summary, and what it printed."""
    stem, summary = keep_whole(base, lambda stem: write_sample(stem, ids, tokenizer, settings, soundfont, audio))
    print(f"  {summary['midi']}: {summary['notes']} notes, {summary['seconds']:.1f} s, "
          f"grammar errors {summary['grammar_error_rate']:.2%}  (+ .json, .png{', .wav' if audio else ''})")
    return {**summary, "stem": stem}


def make_out_dir(folder):
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        raise CliError(f"cannot create --out_dir {folder}: {e.strerror or e}") from None


def kept_line(kept, out_dir):
    """What a stopped or failed run leaves: the samples it finished, and where they are listed."""
    if not kept:
        return "no sample was finished; nothing partial was left"
    return (f"kept the {len(kept)} finished sample(s) ({', '.join(os.path.basename(s) for s in kept)}: "
            f".mid, .png{', .wav' if any(os.path.exists(s + '.wav') for s in kept) else ''}, .json), listed on "
            f"{os.path.join(out_dir, 'index.html')}; nothing partial was left")


def refresh_gallery(out_dir, kept):
    """The listening page after a stop or a failed write, listing the samples this run kept (the old
    page, still valid, stays when there are none or when it cannot be written)."""
    try:
        if kept:
            write_gallery(out_dir)
    except OSError:
        pass


# ----------------------------------------------------------------------------- the listening page

STYLE = """body{font-family:system-ui,sans-serif;margin:2em;background:#fafafa;color:#222}
.entry{background:#fff;border:1px solid #ddd;border-radius:6px;padding:1em;margin:0 0 1.2em 0}
.entry h2{font-size:1.1em;margin:0 0 .3em 0}.meta{color:#555;font-size:.9em;margin:.2em 0 .6em 0}
.roll{max-width:100%;image-rendering:pixelated;border:1px solid #ccc;background:#181818}
audio{display:block;margin:.5em 0}"""


def read_entries(folder):
    entries = []
    for name in os.listdir(folder):
        if not name.endswith(".json") or name.startswith("."):
            continue
        path = os.path.join(folder, name)
        try:
            with open(path, encoding="utf-8") as f:
                info = json.load(f)
            modified = os.path.getmtime(path)
        except (OSError, ValueError):
            continue  # being written by another run right now
        if not isinstance(info, dict) or info.get("status") == "being written":
            continue
        entries.append((modified, name[:-5], info))
    return sorted(entries, key=lambda e: (-e[0], e[1]))


def entry_html(folder, stem, info):
    link = quote(stem)
    if "rendered" in info:
        title = f"real: {os.path.basename(info['rendered'])}"
        facts = [f"{info.get('seconds', 0):.1f} s", f"{info.get('notes', 0)} notes", f"voice: {info.get('voice')}"]
    else:
        title = info.get("composer", "?")
        if "infill" in info:  # a take of sample.py --infill: which bars of which file it rewrote
            first, last = info["infill"]["bars"]
            title += f": bars {first}-{last} of {os.path.basename(str(info['infill']['file']))}"
        facts = [f"guidance {info.get('guidance')}", f"rendered as {info.get('render_as', 'any')}",
                 f"temperature {info.get('temperature')}", f"seed {info.get('seed')}",
                 f"{info.get('seconds', 0):.1f} s", f"{info.get('notes', 0)} notes",
                 f"{len(info.get('token_ids', []))} tokens"]
    parts = [f'<div class="entry" id="{html.escape(stem)}"><h2>{html.escape(title)}</h2>',
             f'<div class="meta">{html.escape(" · ".join(str(f) for f in facts))} · {html.escape(stem)}</div>']
    if os.path.exists(os.path.join(folder, stem + ".png")):
        parts.append(f'<img class="roll" src="{link}.png" alt="piano roll of {html.escape(stem)}">')
    if os.path.exists(os.path.join(folder, stem + ".wav")):
        parts.append(f'<audio controls preload="none" src="{link}.wav"></audio>')
    links = [f'<a href="{link}.{ext}">{ext}</a>' for ext in ("mid", "wav", "json")
             if os.path.exists(os.path.join(folder, f"{stem}.{ext}"))]
    parts.append(" · ".join(links) + "</div>")
    return "\n".join(parts)


def page(folder):
    entries = read_entries(folder)
    body = "\n".join(entry_html(folder, stem, info) for _, stem, info in entries) or "<p>No samples yet.</p>"
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>samples: '
            f'{html.escape(os.path.basename(os.path.abspath(folder)))}</title><style>{STYLE}</style></head>\n<body>'
            f'<h1>{len(entries)} pieces in {html.escape(os.path.abspath(folder))}</h1>\n{body}\n</body></html>\n')


def write_gallery(folder, attempts=3):
    """Rewrite folder/index.html; again while the folder's .json files change under it."""
    for _ in range(attempts):
        before = sorted(n for n in os.listdir(folder) if n.endswith(".json"))
        atomic_write_text(os.path.join(folder, "index.html"), page(folder))
        if sorted(n for n in os.listdir(folder) if n.endswith(".json")) == before:
            return
