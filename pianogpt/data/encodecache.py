"""prepare.py's encoded files, kept by content, so that preparing the same folders again (another
--holdout, another --out_dir) reads each file's tokens back instead of parsing it again.

One .npz per file under the cache folder, named by a sha1 of the file's bytes, its name (the
renditions are seeded by it) and a salt: the encoding settings, the miditok and symusic versions
and the source of the modules that decide what a file encodes to. Any change to those gives new
names, so a stale entry is never read; an unreadable entry is encoded again.
"""
import hashlib
import importlib.metadata
import io
import json
import os
from pathlib import Path

import numpy as np

from pianogpt.files import atomic_write_bytes

ENCODING_MODULES = ("prepare.py", "pianogpt/data/remi.py", "pianogpt/data/rendition.py")
# a file skipped for these may encode on another try (more memory, a longer time-out): never kept
UNSETTLED = ("too_large", "crashed_parser")
ROOT = Path(__file__).resolve().parents[2]  # the repository: pianogpt/data/ is two levels down


def encoding_salt(settings):
    """A sha1 of what decides a file's encoding besides its bytes and name."""
    h = hashlib.sha1(json.dumps(settings, sort_keys=True).encode())
    for package in ("miditok", "symusic"):
        h.update(importlib.metadata.version(package).encode())
    for name in ENCODING_MODULES:
        h.update((ROOT / name).read_bytes())
    return h.hexdigest()


class EncodeCache:
    def __init__(self, folder, settings):
        self.folder = Path(folder)
        self.salt = encoding_salt(settings)
        self.hits = self.misses = 0

    def entry(self, path):
        h = hashlib.sha1(self.salt.encode())
        h.update(os.path.basename(path).encode())
        with open(path, "rb") as f:
            h.update(f.read())
        digest = h.hexdigest()
        return self.folder / digest[:2] / f"{digest}.npz"

    def get(self, path):
        """The kept result of encoding the file at path, or None."""
        try:
            with np.load(self.entry(path), allow_pickle=False) as z:
                result = json.loads(str(z["result"]))
                if "ids" in z:
                    result["ids"] = z["ids"]
                    renditions = [z[f"rendition_{i}"] for i in range(result.pop("n_renditions", 0))]
                    if renditions:
                        result["renditions"] = renditions
        except (OSError, ValueError, KeyError):  # absent, unreadable or cut short: encode it again
            self.misses += 1
            return None
        self.hits += 1
        return result

    def put(self, path, result):
        """Keep a worker's result for the file at path (a full disk only loses the saving)."""
        if result.get("reason") in UNSETTLED:
            return
        arrays = {}
        meta = {k: v for k, v in result.items() if k not in ("ids", "renditions")}
        if "ids" in result:
            arrays["ids"] = np.asarray(result["ids"])
            renditions = result.get("renditions", [])
            arrays.update({f"rendition_{i}": np.asarray(r) for i, r in enumerate(renditions)})
            meta["n_renditions"] = len(renditions)
        buffer = io.BytesIO()
        np.savez(buffer, result=np.array(json.dumps(meta)), **arrays)
        try:
            entry = self.entry(path)
            entry.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(entry, buffer.getvalue())
        except OSError:
            pass
