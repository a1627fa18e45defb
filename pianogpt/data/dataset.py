"""The prepared dataset on disk: its format, writing it, and opening it with checks.

data/<name>/ holds train.bin / val.bin (uint16 tokens), train.idx.npy / val.idx.npy (int64
[N, 3]: offset, length, composer id), composers.json, tokenizer.json, meta.json (counts,
format version, a sha256 per file), pieces.jsonl and skipped.jsonl. prepare.py writes it
with write_dataset; train.py, evaluate.py and bench.py open it with open_dataset, which
checks sizes, index bounds, token and composer ids and the tokenizer before any work
starts. A mismatch is a DatasetError: one line naming the file and the fix.
"""
import hashlib
import json
import os
import re
import shutil
import tempfile
import unicodedata
from pathlib import Path

import numpy as np

from pianogpt.cli import CliError
from pianogpt.data.remi import KINDS, check_tokenizer

FORMAT_VERSION = 2
UNCONDITIONAL = "<unconditional>"  # composers.json name of id 0; real composers are 1..N by name
SPLITS = ("train", "val", "heldout")  # heldout: the pieces of sources held out whole (prepare.py --holdout)
KIND_IDS = {kind: i for i, kind in enumerate(KINDS, start=1)}  # 0: unknown (or dropped in training, like composer 0)
TEXTURES = dict(zip(("score", "performance"), KIND_IDS.values()))  # the same kinds as a texture to write (--texture)
CHECKSUMMED = tuple(f"{split}{ext}" for split in SPLITS for ext in (".bin", ".idx.npy")) + (
    "composers.json", "tokenizer.json", "pieces.jsonl")


class DatasetError(CliError):
    """A prepared dataset that is missing, damaged or from another version: one line, exit 2."""


COLLECTION = re.compile(r"^[a-z0-9][a-z0-9_-]*$")  # a lowercase slug: dcml-scores' and kern-scores' corpora
PERFORMER_AND_ROLL = re.compile(r"^[A-Z][a-z]+(?:[A-Z][a-z]+)*_[a-z0-9]{8,}$")  # welte-rolls: Carreno_bj606rp8160


def work_of(relpath):
    """The work a file belongs to: `<Work>__<performer>.mid` (ASAP's, MAESTRO-style and the Welte
    rolls' naming of several performances of one work) is `<folder>/<Work>`; `<collection>__<piece>.mid`
    (a lowercase slug first, as the score corpora name their pieces: bach-wtc__wtc1p01.mid) and any
    other file are works of their own."""
    path = Path(relpath)
    work, _, rest = path.stem.partition("__")
    if not rest or COLLECTION.match(work) and not PERFORMER_AND_ROLL.match(rest):
        return relpath
    return (path.parent / work).as_posix()


def composer_key(name):
    """A spelling-free key: Burgmüller, Burgmueller and burgmuller; Rachmaninoff and
    Rachmaninov are one composer each."""
    folded = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode().lower()
    folded = re.sub(r"[^a-z0-9]", "", folded)
    folded = folded.replace("ae", "a").replace("oe", "o").replace("ue", "u")
    return re.sub(r"(off|ow)$", "ov", folded)


def not_prepared(data_dir, what):
    return DatasetError(f"{data_dir} is not a prepared dataset ({what}); run prepare.py first")


def damaged(data_dir, name, problem):
    return DatasetError(f"{os.path.join(str(data_dir), name)}: {problem}; run prepare.py again to rebuild the dataset")


# ----------------------------------------------------------------------------- writing


def sha256_of(path, chunk=1 << 22):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def write_dataset(out_dir, pieces, skipped, composers, tokenizer, meta):
    """Write every file into a temp folder beside out_dir, then rename it into place.

    pieces: dicts with "ids" (uint16 tokens), "split", "n_tokens", "composer_id" and the
    fields of pieces.jsonl. meta gains format_version and checksums.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    for stale in list(out_dir.parent.glob(f".{out_dir.name}.tmp-*")) + list(out_dir.parent.glob(f".{out_dir.name}.old-*")):
        shutil.rmtree(stale, ignore_errors=True)  # left by a run that was killed
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        for split in SPLITS:
            rows = [p for p in pieces if p["split"] == split]
            tokens = np.concatenate([p.pop("ids") for p in rows]) if rows else np.empty(0, np.uint16)
            lengths = np.array([p["n_tokens"] for p in rows], dtype=np.int64)
            offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64) if rows else lengths
            index = np.stack([offsets, lengths, [p["composer_id"] for p in rows]], axis=1) if rows else np.empty((0, 3), np.int64)
            tokens.astype(np.uint16).tofile(tmp / f"{split}.bin")
            np.save(tmp / f"{split}.idx.npy", index.astype(np.int64))
        with open(tmp / "pieces.jsonl", "w") as f:
            for split in SPLITS:
                for p in pieces:
                    if p["split"] == split:
                        f.write(json.dumps(p, ensure_ascii=False) + "\n")
        with open(tmp / "skipped.jsonl", "w") as f:
            for s in skipped:
                f.write(json.dumps(s, ensure_ascii=False) + "\n")
        (tmp / "composers.json").write_text(json.dumps(composers, indent=1, ensure_ascii=False))
        tokenizer.save(tmp / "tokenizer.json")
        meta = {"format_version": FORMAT_VERSION, **meta,
                "sha256": {name: sha256_of(tmp / name) for name in CHECKSUMMED}}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1, ensure_ascii=False))
        replace_dir(tmp, out_dir)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise CliError(f"cannot write {out_dir}: {e.strerror or e}; the previous dataset (if any) is intact") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return meta


def replace_dir(new, target):
    """Swap `new` into `target`; the old target survives until the new one is in place."""
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.rename(target, old / target.name)
        os.rename(new, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(new, target)


# ----------------------------------------------------------------------------- opening


class Split:
    """One split's tokens (a read-only memmap) and index [N, 3]: offset, length, composer id."""

    def __init__(self, tokens, index):
        self.tokens, self.index = tokens, index

    def __len__(self):
        return len(self.index)

    def piece(self, row):
        offset, length, _ = self.index[row]
        return self.tokens[offset:offset + length]


class Dataset:
    """An opened, checked dataset: meta, composers, tokenizer (JSON text and object), splits."""

    def __init__(self, data_dir, meta, composers, tokenizer_json, tokenizer, splits):
        self.data_dir, self.meta, self.composers = str(data_dir), meta, composers
        self.tokenizer_json, self.tokenizer, self.splits = tokenizer_json, tokenizer, splits
        self._pieces = None

    def pieces(self):
        """The rows of pieces.jsonl (path, composer, composer_id, split, n_tokens, kind), in index order."""
        if self._pieces is None:  # read once: every sampler of the dataset asks
            with open(os.path.join(self.data_dir, "pieces.jsonl"), encoding="utf-8") as f:
                self._pieces = [json.loads(line) for line in f]
        return self._pieces

    def kind_ids(self, split):
        """Kind id per row of a split's index: 1 sequenced, 2 performed, 0 unknown (a dataset
        prepared before kinds were detected)."""
        rows = [p for p in self.pieces() if p["split"] == split]
        return np.array([KIND_IDS.get(p.get("kind"), 0) for p in rows], dtype=np.int64)

    def archive_ids(self, split):
        """Archive (MIDI folder) id per row of a split's index, 0.. in the order the folders were given;
        all 0 for a dataset prepared from one folder."""
        if not isinstance(self.meta.get("source"), list):
            return np.zeros(sum(p["split"] == split for p in self.pieces()), dtype=np.int64)
        labels = {}
        return np.array([labels.setdefault(p["path"].split("/")[0], len(labels)) for p in self.pieces()
                         if p["split"] == split], dtype=np.int64)

    def rendition_mask(self, split):
        """True for each row of a split's index that is a performed rendition (prepare.py
        --renditions), not a file of its own."""
        return np.array([("rendition_of" in p) for p in self.pieces() if p["split"] == split], dtype=bool)


def read_json(data_dir, name):
    path = os.path.join(str(data_dir), name)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise not_prepared(data_dir, f"missing {name}") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise damaged(data_dir, name, f"does not parse ({type(e).__name__}: {str(e)[:120]})") from None


def check_meta(data_dir, meta):
    version = meta.get("format_version") if isinstance(meta, dict) else None
    if version != FORMAT_VERSION:
        raise damaged(data_dir, "meta.json", f"format version {version}, this code reads {FORMAT_VERSION}")
    for key in ("vocab_size", "pad_id", "bos_id", "pitch_ids", "n_composers", "n_pieces", "n_tokens"):
        if key not in meta:
            raise damaged(data_dir, "meta.json", f"has no {key!r}")


def composer_table_problem(composers, n_composers, expected_by):
    """What is wrong with a {name: id} composer table that should have n_composers ids
    (None when nothing is): ids must be the ints 0..N-1, id 0 the unconditional one."""
    ids = sorted(composers.values()) if isinstance(composers, dict) else None
    if ids is None or any(type(i) is not int for i in ids) or ids != list(range(len(ids))):
        return "is not a {name: id} table with ids 0..N-1"
    if composers.get(UNCONDITIONAL) != 0:
        return f"id 0 must be {UNCONDITIONAL!r}"
    if len(ids) != n_composers:
        return f"{len(ids)} composer ids, {expected_by} {n_composers}"
    return None


def merge_composer_tables(base, added):
    """(table, ids, matches): the composers of `base` ({name: id}, kept with their ids) and those
    of `added` that base lacks (new ids after base's), matched by composer_key as prepare.py
    matches folders; ids[i] is the merged id of added's composer id i (ids[0] = 0); matches lists
    (added name, base name) pairs spelled differently. Two added names that fall on one composer
    are a CliError: they are never merged silently."""
    table = dict(base) if base else {UNCONDITIONAL: 0}
    by_key = {composer_key(name): name for name, i in table.items() if i != 0}
    ids = np.zeros(max(added.values(), default=0) + 1, np.int64)
    claimed, matches = {}, []
    for name, i in sorted(added.items(), key=lambda kv: kv[1]):
        if i == 0:
            continue
        key = composer_key(name)
        if key in claimed:
            raise CliError(f"composers {claimed[key]!r} and {name!r} are one composer after name matching "
                           f"({key!r}); rename one folder or merge them in the data")
        claimed[key] = name
        if key in by_key:
            ids[i] = table[by_key[key]]
            if by_key[key] != name:
                matches.append((name, by_key[key]))
        else:
            ids[i] = table[name] = len(table)
            by_key[key] = name
    return table, ids, matches


def check_composers(data_dir, composers, meta):
    problem = composer_table_problem(composers, meta["n_composers"], "meta.json says")
    if problem:
        raise damaged(data_dir, "composers.json", problem)


def open_split(data_dir, split, meta, check_tokens=True):
    """Memmap one split after checking its files against meta.json and each other."""
    if split == "heldout" and split not in meta["n_pieces"]:  # prepared before sources could be held out
        return Split(np.empty(0, np.uint16), np.empty((0, 3), np.int64))
    bin_name, idx_name = f"{split}.bin", f"{split}.idx.npy"
    bin_path, idx_path = os.path.join(str(data_dir), bin_name), os.path.join(str(data_dir), idx_name)
    for name, path in ((bin_name, bin_path), (idx_name, idx_path)):
        if not os.path.isfile(path):
            raise not_prepared(data_dir, f"missing {name}")
    n_tokens, n_pieces = meta["n_tokens"].get(split, 0), meta["n_pieces"].get(split, 0)
    size = os.path.getsize(bin_path)
    if size != 2 * n_tokens:
        raise damaged(data_dir, bin_name, f"{size:,} bytes, but meta.json says {n_tokens:,} uint16 tokens "
                                          f"({2 * n_tokens:,} bytes)")
    try:
        index = np.load(idx_path, allow_pickle=False)
    except Exception as e:
        raise damaged(data_dir, idx_name, f"does not load ({type(e).__name__}: {str(e)[:120]})") from None
    if index.dtype != np.int64 or index.ndim != 2 or index.shape[1] != 3 or len(index) != n_pieces:
        raise damaged(data_dir, idx_name, f"shape {index.shape} {index.dtype}, expected ({n_pieces}, 3) int64")
    offsets, lengths, composer_ids = index[:, 0], index[:, 1], index[:, 2]
    outside = (offsets < 0) | (lengths <= 0) | (offsets + lengths > n_tokens)
    if outside.any():
        row = int(np.argmax(outside))
        raise damaged(data_dir, idx_name, f"entry {row} (offset {offsets[row]}, length {lengths[row]}) lies outside "
                                          f"{bin_name} ({n_tokens:,} tokens)")
    bad = (composer_ids < 0) | (composer_ids >= meta["n_composers"])
    if bad.any():
        raise damaged(data_dir, idx_name, f"composer id {composer_ids[np.argmax(bad)]} is not in composers.json "
                                          f"(0..{meta['n_composers'] - 1})")
    tokens = np.memmap(bin_path, dtype=np.uint16, mode="r") if n_tokens else np.empty(0, np.uint16)
    if check_tokens and n_tokens and int(tokens.max()) >= meta["vocab_size"]:
        where = int(np.argmax(tokens >= meta["vocab_size"]))
        raise damaged(data_dir, bin_name, f"token id {int(tokens[where])} at position {where} is not below the "
                                          f"vocabulary size {meta['vocab_size']}")
    return Split(tokens, index)


def open_dataset(data_dir, splits=SPLITS, check_tokens=True):
    """Open and check a prepared dataset; a DatasetError names the first problem found."""
    if not os.path.isdir(str(data_dir)):
        raise not_prepared(data_dir, "no such folder")
    meta = read_json(data_dir, "meta.json")
    check_meta(data_dir, meta)
    composers = read_json(data_dir, "composers.json")
    check_composers(data_dir, composers, meta)
    path = os.path.join(str(data_dir), "tokenizer.json")
    try:
        with open(path, encoding="utf-8") as f:
            tokenizer_json = f.read()
        tokenizer = check_tokenizer(path, tokenizer_json, meta["vocab_size"], meta["pad_id"], meta["bos_id"])
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise DatasetError(f"{e}; run prepare.py again to rebuild the dataset") from None
    opened = {split: open_split(data_dir, split, meta, check_tokens) for split in splits}
    return Dataset(data_dir, meta, composers, tokenizer_json, tokenizer, opened)


def verify_dataset(data_dir):
    """open_dataset plus every file's sha256 against meta.json; returns the Dataset."""
    dataset = open_dataset(data_dir)
    for name, expected in dataset.meta.get("sha256", {}).items():
        path = os.path.join(str(data_dir), name)
        if not os.path.isfile(path):
            raise DatasetError(f"{data_dir} is missing {name}; run prepare.py again to rebuild the dataset")
        if sha256_of(path) != expected:
            raise damaged(data_dir, name, "its sha256 differs from meta.json (the file changed after prepare.py wrote it)")
    return dataset


# ----------------------------------------------------------------------------- training windows


class WindowSampler:
    """Training windows from one split: [BOS] + a crop of block_size tokens, padded with PAD.

    Randomness comes only from the rng passed in, so a caller that seeds it from (seed,
    rank, iteration, micro-step) draws the same batches after a resume.
    """

    def __init__(self, dataset, split, block_size):
        meta = dataset.meta
        self.tokens, self.index = dataset.splits[split].tokens, dataset.splits[split].index
        self.block_size = block_size
        self.pad_id, self.bos_id = meta["pad_id"], meta["bos_id"]
        self.bar_id = dataset.tokenizer.vocab["Bar_None"]
        self.pitch_lo, self.pitch_hi = meta["pitch_ids"]
        self.kinds = dataset.kind_ids(split) if len(self.index) else np.zeros(0, np.int64)
        self.renditions = dataset.rendition_mask(split) if len(self.index) else np.zeros(0, bool)

    def __len__(self):
        return len(self.index)

    def relabel_composers(self, ids):
        """Give every piece the composer id ids[its dataset id] (a model with another composer table)."""
        self.index = self.index.copy()
        self.index[:, 2] = ids[self.index[:, 2]]

    def window(self, piece, rng):
        offset, length, _ = self.index[piece]
        start = int(rng.integers(0, max(0, length - self.block_size) + 1))
        crop = self.tokens[offset + start: offset + min(length, start + self.block_size)]
        x = np.full(self.block_size + 1, self.pad_id, dtype=np.int64)
        x[0] = self.bos_id
        x[1:1 + len(crop)] = crop
        return x

    def batch(self, pieces, rng, cond_drop=0.0, kind_drop=0.0):
        """(input [B, T], target [B, T], composer [B], kind [B]) for the given piece rows.
        cond_drop / kind_drop: the share of windows whose composer / kind becomes 0 (unknown)."""
        import torch

        x = torch.from_numpy(np.stack([self.window(piece, rng) for piece in pieces]))
        composer = torch.from_numpy(self.index[pieces, 2].astype(np.int64))
        dropped = torch.from_numpy(rng.random(len(pieces)) < cond_drop)
        composer = torch.where(dropped, torch.zeros_like(composer), composer)
        kind = torch.from_numpy(self.kinds[pieces])
        if kind_drop:  # drawn only when asked: runs without kinds keep their random stream
            kind = torch.where(torch.from_numpy(rng.random(len(pieces)) < kind_drop), torch.zeros_like(kind), kind)
        return x[:, :-1], x[:, 1:], composer, kind


def train_pieces(n_pieces, seed, sample_start, count, weights=None):
    """Piece rows for global samples [sample_start, sample_start + count): a fresh permutation
    every epoch, so each epoch takes one window from every training piece. With weights
    (one per piece, summing to 1), each epoch is n_pieces draws with those probabilities."""
    out = []
    for k in range(sample_start, sample_start + count):
        epoch, position = divmod(k, n_pieces)
        rng = np.random.default_rng([seed, epoch])
        order = rng.permutation(n_pieces) if weights is None else rng.choice(n_pieces, n_pieces, p=weights)
        out.append(order[position])
    return np.array(out)


def piece_weights(composer_ids, renditions, balance, rendition_weight=1.0, archives=None, archive_balance=0.0):
    """Sampling weight per piece, proportional to (pieces of its composer) ** -balance (0 keeps
    every piece equal, 1 makes every composer equal), a rendition's times rendition_weight.
    archive_balance (with each piece's archive id): within each composer, a piece's weight is also
    times (the composer's pieces in its archive) ** -archive_balance, the composer's total kept, so
    that at 1 every archive of a composer is drawn alike. None when every piece weighs the same
    (each epoch then visits every piece once)."""
    mixed = archive_balance and archives is not None and len(np.unique(archives)) > 1
    if balance == 0 and (rendition_weight == 1 or not renditions.any()) and not mixed:
        return None
    _, inverse, counts = np.unique(composer_ids, return_inverse=True, return_counts=True)
    weights = counts[inverse].astype(np.float64) ** -balance * np.where(renditions, rendition_weight, 1.0)
    if mixed:
        _, group, group_counts = np.unique(np.stack([composer_ids, archives]), axis=1, return_inverse=True,
                                           return_counts=True)
        group = group.reshape(-1)
        balanced = weights * group_counts[group].astype(np.float64) ** -archive_balance
        total, total_balanced = (np.bincount(inverse, w) for w in (weights, balanced))
        weights = balanced * (total / total_balanced)[inverse]
    return weights / weights.sum()


def pad_share(sampler, batch_size, seed, n=20):
    """The share of PAD among the targets of n batches: how much of each step learns nothing."""
    import torch

    rng = np.random.default_rng([seed, 99])
    targets = [sampler.batch(rng.integers(0, len(sampler), batch_size), rng)[1] for _ in range(n)]
    return float(torch.cat(targets).eq(sampler.pad_id).float().mean())
