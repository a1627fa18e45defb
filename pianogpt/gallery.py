"""samples/index.html: one self-contained listening page for a folder of samples.

Every <name>.json in the folder is one entry (a sample, or a real piece from --render),
newest first: composer, guidance, temperature, seed, length, notes, the piano roll, an
audio player and links to the .mid and .json. No network, no scripts. The page is
rewritten atomically after every run; when two runs finish at once, each rewrites it
until the folder stops changing under it, so the last page written lists both.
"""
import html
import json
import os
from urllib.parse import quote

from pianogpt.cli import atomic_write_text

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
