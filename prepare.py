"""MIDI files -> data/<name>/: REMI tokens as uint16 memmaps, a per-piece index, composer ids.

    python prepare.py --midi_dir ../shared/midi/piano-midi --out_dir data/piano-midi
    python prepare.py --verify data/piano-midi
    python prepare.py --midi_dir A --midi_dir B --midi_dir C --holdout C   # C held out whole: split "heldout"

The corpus pipeline: finding files, layouts, composers, splits, the crash-isolating worker
pool and the skip report. What a token means lives in remi.py; the on-disk format and its
checks live in dataset.py.
"""
import collections
import csv
import importlib.metadata
import hashlib
import multiprocessing
import os
import re
import signal
import sys
import time
import zlib
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from pianogpt.cli import CliError, Parser, fraction_in, non_negative_int, positive_float, positive_int, run_program
from pianogpt.data.encodecache import EncodeCache
from pianogpt.files import FolderLock
from pianogpt.data.merges import has_merges, learn_merges, merge_many, size_problem
from pianogpt.data.rendition import performed_rendition
from pianogpt.data.dataset import SPLITS, UNCONDITIONAL, composer_key, verify_dataset, work_of, write_dataset
from pianogpt.data.remi import (KINDS, PIANO_HIGH, PIANO_LOW, build_tokenizer, encode_merged, gram_keys, merge_piano_tracks,
                  note_match, onset_token_ids, piece_kind, pitch_sequence, pitch_token_ids, tokenizer_from_json,
                  top_voice)

MIDI_SUFFIXES = (".mid", ".midi")
LAYOUTS = ("auto", "folders", "giantmidi", "maestro")
# GiantMIDI-Piano: "Surname, Firstname, Title, YouTubeID.mid" (titles may hold commas)
GIANTMIDI_NAME = re.compile(r"^(?P<surname>[^,]+), (?P<first>[^,]*), (?P<title>.+), (?P<youtube>[\w-]{11})$")


# ----------------------------------------------------------------------------- composers and splits

def find_midi_files(midi_dir):
    """Relative POSIX paths of every .mid/.midi under midi_dir, sorted."""
    found = []
    for root, dirs, files in os.walk(midi_dir):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in files:
            if name.lower().endswith(MIDI_SUFFIXES) and not name.startswith("."):
                found.append(Path(root, name).relative_to(midi_dir).as_posix())
    return sorted(found)


def find_maestro_csv(midi_dir):
    candidates = sorted(Path(midi_dir).glob("maestro-v*.csv"))
    return candidates[-1] if candidates else None


def detect_layout(midi_dir, relpaths):
    if find_maestro_csv(midi_dir):
        return "maestro"
    stems = [Path(p).stem for p in relpaths]
    if stems and sum(bool(GIANTMIDI_NAME.match(s)) for s in stems) >= 0.5 * len(stems):
        return "giantmidi"
    return "folders"


def composer_of_folder(relpath):
    """Parent folder name; a file at the top of midi_dir has no composer (id 0)."""
    parent = Path(relpath).parent.name
    return parent or None


def composer_of_giantmidi(relpath):
    match = GIANTMIDI_NAME.match(Path(relpath).stem)
    if not match:
        return None
    first = match["first"].strip()
    return f"{match['surname'].strip()}, {first}" if first else match["surname"].strip()


def read_maestro(midi_dir):
    """{relative midi path: (canonical_composer, 'train'|'val')} from maestro-v*.csv.

    MAESTRO's validation and test pieces both go to our val split: neither is trained on.
    """
    rows = {}
    with open(find_maestro_csv(midi_dir), newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            split = "train" if row["split"] == "train" else "val"
            rows[Path(row["midi_filename"]).as_posix()] = (row["canonical_composer"].strip(), split)
    return rows


def hash_split(relpath, val_fraction):
    """Deterministic per-work split: adding files never moves an existing piece, and every
    performance of a work (see work_of) lands in the same split."""
    digest = hashlib.sha1(work_of(relpath).encode("utf-8")).hexdigest()
    return "val" if int(digest[:8], 16) / 2**32 < val_fraction else "train"


def assign_composers_and_splits(midi_dir, relpaths, layout, val_fraction):
    """[(relpath, composer or None, split)] for every file."""
    if layout == "maestro":
        table = read_maestro(midi_dir)
        out = []
        for p in relpaths:
            composer, split = table.get(p, (None, hash_split(p, val_fraction)))
            out.append((p, composer, split))
        return out
    composer_of = composer_of_giantmidi if layout == "giantmidi" else composer_of_folder
    out = [(p, composer_of(p), hash_split(p, val_fraction)) for p in relpaths]
    if val_fraction > 0 and out and not any(split == "val" for _, _, split in out):
        # a tiny corpus can miss the val fraction entirely: the lowest hash becomes val
        lowest = min(range(len(out)), key=lambda i: hashlib.sha1(out[i][0].encode()).hexdigest())
        out[lowest] = (out[lowest][0], out[lowest][1], "val")
    return out


# ----------------------------------------------------------------------------- encoding workers

_worker = {}


def _init_pool_worker(*limits):
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group: the parent stops the run
    _die_with_parent()
    _init_worker(*limits)


def _die_with_parent():
    """Linux: the worker gets SIGKILL when prepare.py dies, even killed outright (SIGKILL, the OOM
    killer); otherwise it waits forever on the task queue, whose write end its siblings also hold."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: a killed run may leave idle workers behind
        return
    parent = multiprocessing.parent_process()
    if parent is not None and os.getppid() != parent.pid:  # it died while this worker started
        os._exit(1)


def _init_worker(min_tokens, check_notes, max_memory_mb=0, renditions=0):
    _worker["tokenizer"] = build_tokenizer()
    if max_memory_mb:  # after the imports: a huge file fails its allocation, not the worker's start-up
        import resource

        limit = max_memory_mb * 2**20 + resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
    _worker["min_tokens"] = min_tokens
    _worker["check_notes"] = check_notes
    _worker["renditions"] = renditions


def encode_file(path):
    """Worker: one MIDI file -> {"ids"} or {"reason", "detail"}; never raises."""
    from symusic import Score

    try:
        if os.path.getsize(path) == 0:
            return {"reason": "empty_file"}
        score = Score(path)
    except MemoryError:
        return {"reason": "too_large", "detail": "ran out of the worker's memory limit (--max_memory_mb)"}
    except Exception as e:
        return {"reason": "unreadable", "detail": f"{type(e).__name__}: {e}"[:300]}
    try:
        tokenizer = _worker["tokenizer"]
        merged, reason = merge_piano_tracks(score)
        if merged is None:
            return {"reason": reason}
        ids = encode_merged(tokenizer, merged)
        if len(ids) < _worker["min_tokens"]:
            return {"reason": "too_short", "detail": f"{len(ids)} tokens < min_tokens {_worker['min_tokens']}"}
        kind, share = piece_kind(merged)
        result = {"ids": ids, "kind": kind, "grid_share": round(share, 3)}
        if kind == "sequenced" and _worker["renditions"]:
            seed = zlib.crc32(os.path.basename(path).encode())
            result["renditions"] = [encode_merged(tokenizer, performed_rendition(merged, seed + i))
                                    for i in range(_worker["renditions"])]
        if _worker["check_notes"]:
            result["notes"] = note_match(merged, tokenizer.decode([ids.tolist()]))
        return result
    except MemoryError:
        return {"reason": "too_large", "detail": "ran out of the worker's memory limit (--max_memory_mb)"}
    except Exception as e:
        return {"reason": "encode_error", "detail": f"{type(e).__name__}: {e}"[:300]}


def encode_all(midi_dir, relpaths, workers, min_tokens, check_notes, isolate=True, file_timeout=300.0,
               max_memory_mb=4096, renditions=0, cache=None):
    """{relpath: result} for every file, with a progress bar.

    isolate: parse in worker processes, so a file that crashes the parser (a segfault in
    C++), runs past file_timeout seconds or needs more than max_memory_mb is skipped with
    that reason instead of taking the run down. isolate=False encodes in this process.
    renditions: also encode that many performed renditions of each sequenced piece.
    cache: an EncodeCache: files it holds are read back, the others encoded and kept in it.
    """
    from tqdm import tqdm

    results = {}
    if cache is not None:
        for rel in relpaths:
            kept = cache.get(os.path.join(midi_dir, rel))
            if kept is not None:
                results[rel] = kept
        relpaths = [rel for rel in relpaths if rel not in results]
    bar = tqdm(total=len(relpaths), desc="encoding", unit="file", file=sys.stdout, disable=None)
    if not isolate:
        _init_worker(min_tokens, check_notes, renditions=renditions)
        for rel in relpaths:
            results[rel] = encode_file(os.path.join(midi_dir, rel))
            bar.update()
    else:
        pending = list(reversed(relpaths))  # pop() from the end keeps the input order
        limits = (min_tokens, check_notes, max_memory_mb, renditions)
        while pending:
            suspects = _run_pool(midi_dir, pending, workers, limits, file_timeout, results, bar)
            for rel in suspects:  # the files in flight when the pool died: try each alone
                if _run_pool(midi_dir, [rel], 1, limits, file_timeout, results, bar):
                    results[rel] = {"reason": "crashed_parser",
                                    "detail": f"the worker died or ran past {file_timeout:g} s on this file"}
                    bar.update()
    bar.close()
    if cache is not None:
        for rel in relpaths:
            cache.put(os.path.join(midi_dir, rel), results[rel])
    return results


def _run_pool(midi_dir, pending, workers, limits, file_timeout, results, bar):
    """Encode files popped from `pending` with one file in flight per worker. Returns []
    when all are done, or the files that were in flight when a worker died or stalled."""
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    # spawn, not fork: torch/OpenMP state in the parent must not leak into workers
    pool = ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_init_pool_worker, initargs=limits)
    in_flight = {}  # future -> (relpath, time it was first seen running, or None)
    try:
        while pending or in_flight:
            while pending and len(in_flight) < workers:
                rel = pending.pop()
                in_flight[pool.submit(encode_file, os.path.join(midi_dir, rel))] = (rel, None)
            done, _ = wait(in_flight, timeout=min(file_timeout, 5.0), return_when=FIRST_COMPLETED)
            for future in done:
                rel, _ = in_flight[future]
                results[rel] = future.result()  # BrokenProcessPool if a worker died: rel stays a suspect
                del in_flight[future]
                bar.update()
            now = time.monotonic()
            for future, (rel, started) in list(in_flight.items()):
                if started is None and future.running():
                    in_flight[future] = (rel, now)
                elif started is not None and now - started > file_timeout:
                    raise TimeoutError(rel)
        return []
    except (BrokenProcessPool, TimeoutError):
        suspects = [rel for rel, _ in in_flight.values()]
        kill_workers(pool)  # a stalled worker must not outlive its pool
        return suspects
    except BaseException:  # Ctrl-C, SIGTERM: no worker outlives the run
        kill_workers(pool)
        raise
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def kill_workers(pool):
    for process in list((getattr(pool, "_processes", None) or {}).values()):
        process.kill()


# ----------------------------------------------------------------------------- writing

def overlaps(a, b):
    """True when one folder is, contains or lies inside the other."""
    a, b = Path(a).resolve(), Path(b).resolve()
    return a == b or a in b.parents or b in a.parents


def check_out_dir(midi_dir, out_dir):
    """Refuse an output that would replace the MIDI files or a folder prepare.py did not write."""
    target = out_dir.resolve()
    if overlaps(midi_dir, out_dir):
        raise CliError(f"--out_dir {out_dir} overlaps --midi_dir {midi_dir}: writing there would replace the MIDI "
                       f"files; choose another --out_dir")
    if target.exists() and (not target.is_dir() or (any(target.iterdir()) and not (target / "meta.json").is_file())):
        raise CliError(f"--out_dir {out_dir} exists and is not a dataset written by prepare.py; refusing to replace it")


def default_out_dir(midi_dirs):
    """data/<name of the MIDI folder> (names joined by + for several folders), or
    data/<name>_tokens when that is a MIDI folder (data/midi)."""
    midi_dirs = midi_dirs if isinstance(midi_dirs, (list, tuple)) else [midi_dirs]
    name = "+".join("demo" if d == DEMO_MIDI_DIR else d.resolve().name for d in midi_dirs)
    out_dir = Path("data") / name
    return Path("data") / f"{name}_tokens" if any(overlaps(d, out_dir) for d in midi_dirs) else out_dir


def length_stats(lengths):
    if len(lengths) == 0:
        return {"min": 0, "median": 0, "mean": 0, "max": 0}
    a = np.asarray(lengths)
    return {"min": int(a.min()), "median": float(np.median(a)), "mean": float(a.mean()), "max": int(a.max())}


# ----------------------------------------------------------------------------- main

def merge_composer_names(counts):
    """{spelling: canonical name} from {spelling: pieces}. Spellings with one composer_key
    are one composer, and so is a name that is the first part of a hyphenated one
    (Rimsky = Rimsky-Korsakov). The canonical name of a group is its most used spelling.
    Returns (mapping, [(canonical, [other spellings])])."""
    keys = {name: composer_key(name) for name in counts}
    all_keys = set(keys.values())
    for name in counts:
        first = composer_key(re.split(r"[-\s]", name.strip())[0])
        if "-" in name and first in all_keys and first != keys[name]:
            keys = {n: (keys[name] if k == first else k) for n, k in keys.items()}
    groups = {}
    for name in sorted(counts):
        groups.setdefault(keys[name], []).append(name)
    mapping, merged = {}, []
    for names in groups.values():
        canonical = max(names, key=lambda n: (counts[n], n))
        mapping.update({n: canonical for n in names})
        if len(names) > 1:
            merged.append((canonical, [n for n in names if n != canonical]))
    return mapping, merged


def shared_runs(seqs, k, max_sharing=8):
    """(pairs [P, 2], shared [P], sizes [N]): for every two sequences that share a k-value run,
    how many distinct runs they share, and each sequence's count of distinct runs. Runs found
    in more than max_sharing sequences (scales, repeated figures) are ignored."""
    n = len(seqs)
    grams, owners, sizes = [], [], np.zeros(n, np.int64)
    for piece, seq in enumerate(seqs):
        if len(seq) < k:
            continue
        key = np.unique(gram_keys(seq, k))
        grams.append(key)
        owners.append(np.full(len(key), piece, np.int64))
        sizes[piece] = len(key)
    if not grams:
        return np.empty((0, 2), np.int64), np.empty(0, np.int64), sizes
    grams, owners = np.concatenate(grams), np.concatenate(owners)
    order = np.argsort(grams, kind="stable")
    grams, owners = grams[order], owners[order]
    starts = np.flatnonzero(np.r_[True, grams[1:] != grams[:-1]])
    counts = np.diff(np.r_[starts, len(grams)])
    shareable = (counts > 1) & (counts <= max_sharing)
    pairs = []
    for count in np.unique(counts[shareable]):  # every run held by `count` pieces: their pairs, all at once
        members = owners[starts[shareable & (counts == count)][:, None] + np.arange(count)]
        a, b = np.triu_indices(count, 1)
        pairs.append((members[:, a] * n + members[:, b]).ravel())
    if not pairs:
        return np.empty((0, 2), np.int64), np.empty(0, np.int64), sizes
    keys, shared = np.unique(np.concatenate(pairs), return_counts=True)
    return np.stack(np.divmod(keys, n), axis=1), shared, sizes


def union_groups(n, links):
    """Group id per item 0..n-1, items joined by the (a, b) links (union-find)."""
    parent = list(range(n))

    def root(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in links:
        parent[root(int(a))] = root(int(b))
    return [root(i) for i in range(n)]


def near_duplicate_links(pitch_seqs, k=12, threshold=0.5):
    """Pairs of pieces that share at least `threshold` of the k-note pitch runs of the shorter
    one: another sequencing of one work."""
    pairs, shared, sizes = shared_runs(pitch_seqs, k)
    keep = shared >= threshold * np.minimum(sizes[pairs[:, 0]], sizes[pairs[:, 1]]) if len(pairs) else []
    return [tuple(p) for p in pairs[keep]]


PERFORMANCE_LINK_K = 8  # top-voice notes per run
PERFORMANCE_LINK_SHARE = 0.05  # above the 99.9th percentile of two sequenced pieces by different composers (0.046)


def performance_links(top_voices, performed, k=PERFORMANCE_LINK_K, min_share=PERFORMANCE_LINK_SHARE):
    """Each performed piece with its best-matching written (sequenced) piece, when they share at
    least min_share of the shorter one's k-note runs of the top voice. A performance keeps few
    exact pitch runs of its score (chords rolled and hands apart reorder the notes, ornaments and
    slips add some); its top voice, one note per onset, keeps many."""
    pairs, shared, sizes = shared_runs(top_voices, k)
    best = {}
    for (a, b), count in zip(pairs.tolist(), shared.tolist()):
        if performed[a] == performed[b]:
            continue
        played, written = (a, b) if performed[a] else (b, a)
        share = count / max(1, min(sizes[a], sizes[b]))
        if share >= min_share and share > best.get(played, (0.0, None))[0]:
            best[played] = (share, written)
    return [(played, written) for played, (_, written) in best.items()]


def folder_labels(midi_dirs):
    """A short, unique label per MIDI folder: its name (name-2, ... when two share one)."""
    labels = []
    for folder in midi_dirs:
        name = Path(folder).resolve().name or "midi"
        label, i = name, 2
        while label in labels:
            label, i = f"{name}-{i}", i + 1
        labels.append(label)
    return labels


def read_folder(midi_dir, layout, val_fraction):
    """(layout, [(relpath, composer or None, split)]) of one MIDI folder."""
    if not midi_dir.is_dir():
        raise CliError(f"--midi_dir {midi_dir} is not a folder")
    relpaths = find_midi_files(midi_dir)
    if not relpaths:
        raise CliError(f"--midi_dir {midi_dir} holds no .mid/.midi files")
    if layout == "auto":
        layout = detect_layout(midi_dir, relpaths)
        print(f"{midi_dir}: layout {layout} (auto-detected; pass --layout to override)")
    if layout == "maestro" and not find_maestro_csv(midi_dir):
        raise CliError(f"--layout maestro needs a maestro-v*.csv in {midi_dir}")
    return layout, assign_composers_and_splits(midi_dir, relpaths, layout, val_fraction)


def prepare(midi_dir, out_dir, layout="auto", val_fraction=0.05, workers=None, min_tokens=64, check_notes=False,
            isolate=True, file_timeout=300.0, max_memory_mb=4096, renditions=0, holdout=(), cache_dir=None, merges=0,
            merges_from=None):
    """Build the dataset from one MIDI folder or a list of them; returns meta (also written
    to out_dir/meta.json). With several folders, paths in pieces.jsonl start with the
    folder's name, composers are matched across folders by name, and a piece found twice
    is kept once. renditions: add that many performed renditions of every sequenced training
    piece (rendition.py) as training pieces of kind "performed". holdout: folders (a --midi_dir's
    path or its label) whose every piece goes to the split "heldout", and every copy of their works
    in the other folders to val, so that the model meets those sources, and those works, only there.
    cache_dir: keep each file's encoding there and read it back on the next run (encodecache.py).
    merges: learn BPE merges on the training split up to that vocabulary size (merges.py); merges_from:
    a dataset folder or checkpoint whose tokenizer (and merges) to use instead (a fine-tune's data)."""
    start = time.time()
    midi_dirs = [Path(d) for d in (midi_dir if isinstance(midi_dir, (list, tuple)) else [midi_dir])]
    for folder in midi_dirs:
        check_out_dir(folder, Path(out_dir))
    held_labels = held_out_labels(midi_dirs, holdout)
    out_dir = Path(out_dir)
    tokenizer = tokenizer_to_use(merges, merges_from)
    cache = EncodeCache(cache_dir, {"min_tokens": min_tokens, "check_notes": check_notes,
                                    "renditions": renditions}) if cache_dir else None
    with FolderLock(out_dir.parent / f".{out_dir.name}.lock", f"--out_dir {out_dir}"):
        return build_dataset(midi_dirs, out_dir, layout, val_fraction, workers, min_tokens, check_notes, isolate,
                             file_timeout, max_memory_mb, renditions, start, held_labels, cache, tokenizer, merges)


def tokenizer_to_use(merges, merges_from):
    """The base REMI tokenizer, or the one saved in merges_from (a dataset folder or a checkpoint):
    a CliError where that cannot be read, or where both --merges and --merges_from are given."""
    if merges and merges_from:
        raise CliError("give --merges (learn new merges) or --merges_from (reuse a dataset's or checkpoint's), not both")
    base = build_tokenizer()
    problem = merges and size_problem(merges, len(base.vocab))
    if problem:
        raise CliError(problem)
    if not merges_from:
        return base
    source = Path(merges_from)
    try:
        if source.is_dir():
            text = (source / "tokenizer.json").read_text()
        else:
            from pianogpt.checkpoints import load_checkpoint

            text = load_checkpoint(str(source), mmap=True)["tokenizer"]
        return tokenizer_from_json(text)
    except (OSError, KeyError, TypeError, ValueError) as e:
        raise CliError(f"--merges_from {merges_from}: no tokenizer can be read there ({type(e).__name__}: "
                       f"{str(e)[:200]}); give a prepared dataset folder or a checkpoint") from None


def apply_merges(tokenizer, pieces, merges):
    """Every piece's ids under the tokenizer's merges, learned first on the training split when
    merges > 0 (the val and held-out pieces never shape the vocabulary). Returns meta's "merges"
    entry: the vocabulary, and base tokens, notes and bars per split (what a token holds)."""
    if merges:
        train = [p["ids"] for p in pieces if p["split"] == "train"]
        print(f"learning merges up to {merges} tokens on {len(train)} training pieces ...")
        learn_merges(tokenizer, train, merges)
    if not has_merges(tokenizer):
        return None
    pitch_lo, pitch_hi = (int(i) for i in pitch_token_ids(tokenizer)[[0, -1]])
    bar_id = tokenizer.vocab["Bar_None"]
    counts = {split: {"base_tokens": 0, "notes": 0, "bars": 0} for split in SPLITS}
    for piece in pieces:
        ids = piece["ids"]
        count = counts[piece["split"]]
        count["base_tokens"] += len(ids)
        count["notes"] += int(((ids >= pitch_lo) & (ids <= pitch_hi)).sum())
        count["bars"] += int((ids == bar_id).sum())
    for piece, merged in zip(pieces, merge_many(tokenizer, [p["ids"] for p in pieces])):
        piece["ids"], piece["n_tokens"] = merged, int(len(merged))
    return {"vocab_size": len(tokenizer), "base_vocab_size": len(tokenizer.vocab),
            "never_merged": "Bar, TimeSig, Rest (merges.ALONE_TYPES)", "learned": bool(merges), **counts}


def held_out_labels(midi_dirs, holdout):
    """The folder labels of the --holdout folders, each named by its --midi_dir path or its label;
    a name that is neither, or holding out every folder, is a CliError naming the choices."""
    if not holdout:
        return set()
    labels = folder_labels(midi_dirs)
    by_name = {label: label for label in labels}
    by_name.update({str(d): label for d, label in zip(midi_dirs, labels)})
    by_name.update({str(d.resolve()): label for d, label in zip(midi_dirs, labels)})
    held = set()
    for name in holdout:
        label = by_name.get(str(name)) or by_name.get(str(Path(name).resolve()))
        if label is None:
            raise CliError(f"--holdout {name}: not one of the --midi_dir folders (choose from {', '.join(labels)})")
        held.add(label)
    if len(held) == len(labels):
        raise CliError("--holdout names every --midi_dir folder: nothing is left to train on")
    return held


def split_rule(folders, val_fraction, held_labels):
    """meta.json's sentence for how pieces were split."""
    if folders[0][0] == "maestro" and len(folders) == 1:
        rule = "maestro csv split (validation+test -> val)"
    else:
        rule = (f"val if int(sha1(work inside its folder)[:8], 16) / 2**32 < {val_fraction} "
                "(a work: <Work> of <Work>__<performer>.mid, else the file); maestro folders keep their csv split; "
                "another sequencing of a piece (near-duplicate notes) or a performance of it (shared top-voice "
                "runs) joins the split of its first copy")
    held = ("; every piece of the --holdout folders is heldout, and a copy of one of their works in another folder "
            "val" if held_labels else "")
    return rule + held


def build_dataset(midi_dirs, out_dir, layout, val_fraction, workers, min_tokens, check_notes, isolate, file_timeout,
                  max_memory_mb, renditions, start, held_labels=frozenset(), cache=None, tokenizer=None, merges=0):
    labels = folder_labels(midi_dirs) if len(midi_dirs) > 1 else [""]
    folders = [read_folder(folder, layout, val_fraction) for folder in midi_dirs]
    folders = [(folder_layout, [(relpath, composer, "heldout" if label in held_labels else split)
                                for relpath, composer, split in assigned])
               for label, (folder_layout, assigned) in zip(labels, folders)]
    workers = workers or os.cpu_count() or 1
    tokenizer = tokenizer or build_tokenizer()
    pitch_ids = pitch_token_ids(tokenizer)
    pitch_lo, pitch_hi = int(pitch_ids[0]), int(pitch_ids[-1])
    kept, skipped, n_files = encode_folders(midi_dirs, labels, folders, workers, min_tokens, check_notes, isolate,
                                            file_timeout, max_memory_mb, renditions, cache)
    kept = drop_duplicates(kept, skipped, pitch_lo, pitch_hi)
    reasons = dict(collections.Counter(s["reason"] for s in skipped))
    if not kept:
        raise CliError(f"no piece could be encoded from {n_files} files ("
                       + ", ".join(f"{k} {v}" for k, v in sorted(reasons.items())) + "); nothing was written")
    n_moved, n_played_linked, n_held_works = keep_works_in_one_split(kept, pitch_lo, pitch_hi,
                                                                     onset_token_ids(tokenizer))
    composers, pieces, merged = number_composers(kept)
    pieces += rendition_pieces(pieces, kept)
    merges_meta = apply_merges(tokenizer, pieces, merges)
    lengths = [p["n_tokens"] for p in pieces]
    meta = {
        "vocab_size": len(tokenizer),
        "pad_id": tokenizer.vocab["PAD_None"],
        "bos_id": tokenizer.vocab["BOS_None"],
        "pitch_ids": [pitch_lo, pitch_hi],
        "pitch_range": [PIANO_LOW, PIANO_HIGH],
        "n_composers": len(composers) + 1,
        "n_files": n_files,
        "n_pieces": {split: sum(p["split"] == split for p in pieces) for split in SPLITS},
        "n_tokens": {split: sum(p["n_tokens"] for p in pieces if p["split"] == split) for split in SPLITS},
        "n_pieces_by_kind": {split: {kind: sum(p["split"] == split and p["kind"] == kind for p in pieces)
                                     for kind in KINDS} for split in SPLITS},
        "heldout_sources": sorted(held_labels),
        "pieces_moved_to_val_as_heldout_works": n_held_works,
        "kind_rule": "performed if under half of the onsets sit on one 1/24-quarter grid (remi.piece_kind)",
        "token_length": length_stats(lengths),
        "skipped": reasons,
        "source": str(midi_dirs[0].resolve()) if len(midi_dirs) == 1 else [str(d.resolve()) for d in midi_dirs],
        "layout": folders[0][0] if len(midi_dirs) == 1 else [f[0] for f in folders],
        "split_rule": split_rule(folders, val_fraction, held_labels),
        "works_moved_to_one_split": n_moved,
        "performances_linked_to_a_score": n_played_linked,
        "renditions_per_sequenced_train_piece": renditions,
        "composer_names_merged": {name: others for name, others in merged},
        "miditok_version": importlib.metadata.version("miditok"),
        **({"merges": merges_meta} if merges_meta else {}),
        "seconds": None,
    }
    if check_notes:
        meta["note_check"] = note_check_summary(kept)
    meta["seconds"] = round(time.time() - start, 2)
    meta = write_dataset(out_dir, pieces, skipped, {UNCONDITIONAL: 0, **composers}, tokenizer, meta)
    print_summary(out_dir, meta, len(composers))
    return meta


def number_composers(kept):
    """({composer: id 1..N}, the pieces as pieces.jsonl rows with their tokens): composer names
    merged across spellings, ids in name order."""
    counts = {}
    for piece in kept:
        if piece["composer"]:
            counts[piece["composer"]] = counts.get(piece["composer"], 0) + 1
    canonical, merged = merge_composer_names(counts)
    for name, others in merged:
        print(f"composer names merged: {name} = {' = '.join(others)}")
    composers = {name: i + 1 for i, name in enumerate(sorted(set(canonical.values())))}
    pieces = []
    for piece in kept:
        name = canonical.get(piece["composer"], "")
        ids = piece["result"]["ids"]
        pieces.append({"path": piece["path"], "composer": name, "composer_id": composers.get(name, 0),
                       "split": piece["split"], "n_tokens": int(len(ids)), "kind": piece["result"]["kind"],
                       "grid_share": piece["result"]["grid_share"], "ids": ids})
    return composers, pieces, merged


def encode_folders(midi_dirs, labels, folders, workers, min_tokens, check_notes, isolate, file_timeout,
                   max_memory_mb, renditions, cache=None):
    """(pieces encoded, inputs skipped with their reason, files seen) over every MIDI folder."""
    kept, skipped, n_files = [], [], 0
    for folder, label, (folder_layout, assigned) in zip(midi_dirs, labels, folders):
        relpaths = [relpath for relpath, _, _ in assigned]
        n_files += len(relpaths)
        print(f"encoding {len(relpaths)} files from {folder} with {workers} worker(s)")
        results = encode_all(folder, relpaths, workers, min_tokens, check_notes, isolate, file_timeout, max_memory_mb,
                             renditions, cache)
        for relpath, composer, split in assigned:
            path, result = f"{label}/{relpath}" if label else relpath, results[relpath]
            if "ids" in result:
                kept.append({"path": path, "composer": composer, "split": split, "result": result,
                             "fixed_split": folder_layout == "maestro"})
            else:
                skipped.append({"path": path, "reason": result["reason"],
                                **({"detail": result["detail"]} if "detail" in result else {})})
    if cache is not None:
        print(f"encode cache {cache.folder}: {cache.hits} files read back, {cache.misses} encoded")
    return kept, skipped, n_files


def rendition_pieces(pieces, kept):
    """The performed renditions of the sequenced training pieces, as training pieces of their own
    ("<path>#performed<i>"); val keeps only real files, so every figure measured on it is real."""
    out = []
    for piece, source in zip(pieces, kept):
        if piece["split"] != "train":
            continue
        for i, ids in enumerate(source["result"].get("renditions", [])):
            out.append({**piece, "path": f"{piece['path']}#performed{i}", "n_tokens": int(len(ids)), "kind": "performed",
                        "grid_share": None, "rendition_of": piece["path"], "ids": ids})
    return out


def note_check_summary(kept):
    """--check_notes: how many notes survive the round trip through tokens, and the worst piece."""
    pairs = [(p["path"], p["result"]["notes"]) for p in kept]
    recalls = {path: m / max(n_ref, 1) for path, (m, n_ref, n_dec) in pairs}
    precisions = {path: m / max(n_dec, 1) for path, (m, n_ref, n_dec) in pairs}
    worst = min(recalls, key=recalls.get) if recalls else None
    return {"rule": "pitch exact, onset within 1/16 quarter note", "notes": sum(n_ref for _, (_, n_ref, _) in pairs),
            "matched": sum(m for _, (m, _, _) in pairs), "worst_recall": recalls.get(worst, 1.0),
            "worst_recall_piece": worst, "worst_precision": min(precisions.values(), default=1.0)}


def drop_duplicates(kept, skipped, pitch_lo, pitch_hi, n_notes=300):
    """Keep the first of pieces whose first n_notes pitches are the same (the same piece
    twice, within or across folders); the others go to skipped as "duplicate". A held-out
    folder's piece is kept before any other copy, so that a folder held out is held out whole,
    whichever folders are prepared beside it."""
    first_of, dropped = {}, set()
    for i in sorted(range(len(kept)), key=lambda i: kept[i]["split"] != "heldout"):  # stable: held out first
        piece = kept[i]
        key = pitch_sequence(piece["result"]["ids"], pitch_lo, pitch_hi)[:n_notes].tobytes()
        if key in first_of:
            dropped.add(i)
            skipped.append({"path": piece["path"], "reason": "duplicate",
                            "detail": f"same first {n_notes} notes as {first_of[key]}"})
        else:
            first_of[key] = piece["path"]
    return [piece for i, piece in enumerate(kept) if i not in dropped]


def keep_works_in_one_split(kept, pitch_lo, pitch_hi, onset_ids):
    """Another sequencing of a piece, and a performance of it, join the split of the work's first
    copy, so val never holds a near-copy of a training piece. A work with a piece in a held-out
    source trains nowhere: its copies in the other sources go to val. Returns (pieces moved,
    performances linked to a written piece, pieces moved to val as copies of held-out works)."""
    links = near_duplicate_links([pitch_sequence(p["result"]["ids"], pitch_lo, pitch_hi) for p in kept])
    played = performance_links([top_voice(p["result"]["ids"], pitch_lo, pitch_hi, onset_ids) for p in kept],
                               [p["result"]["kind"] == "performed" for p in kept])
    groups = union_groups(len(kept), links + played)
    held_groups = {group for piece, group in zip(kept, groups) if piece["split"] == "heldout"}
    first_split, moved, held_works = {}, 0, 0
    for piece, group in zip(kept, groups):
        if piece["split"] == "heldout":
            continue
        if group in held_groups:
            held_works += piece["split"] != "val"
            piece["split"] = "val"
            continue
        if piece["fixed_split"]:
            continue
        split = first_split.setdefault(group, piece["split"])
        if split != piece["split"]:
            piece["split"], moved = split, moved + 1
    return moved, len(played), held_works


def print_summary(out_dir, meta, n_composers):
    s = meta["token_length"]
    print(f"\nwrote {out_dir}/ in {meta['seconds']} s")
    held = (f", heldout {meta['n_pieces']['heldout']} (sources held out whole: {', '.join(meta['heldout_sources'])}; "
            f"{meta['pieces_moved_to_val_as_heldout_works']} copies of their works moved to val)"
            if meta.get("heldout_sources") else "")
    print(f"  pieces   train {meta['n_pieces']['train']}, val {meta['n_pieces']['val']}{held}; "
          f"composers {n_composers} (+ id 0 unconditional)")
    kinds = meta["n_pieces_by_kind"]
    print("  kinds    " + "; ".join(f"{kind} {kinds['train'][kind]} train / {kinds['val'][kind]} val" for kind in kinds["train"])
          + " (from each file's onsets)")
    print(f"  works    {meta['works_moved_to_one_split']} pieces moved to their work's split; "
          f"{meta['performances_linked_to_a_score']} performances linked to a written copy")
    print(f"  tokens   train {meta['n_tokens']['train']:,}, val {meta['n_tokens']['val']:,}; "
          f"length min {s['min']} / median {s['median']:.0f} / mean {s['mean']:.0f} / max {s['max']}")
    if meta.get("merges"):
        m, train = meta["merges"], meta["merges"]["train"]
        print(f"  merges   vocabulary of {m['vocab_size']} tokens ({'learned on train' if m['learned'] else 'reused'}): "
              f"{train['base_tokens'] / max(1, meta['n_tokens']['train']):.2f} REMI tokens per token, "
              f"{meta['n_tokens']['train'] / max(1, train['notes']):.2f} tokens per note, "
              f"{meta['n_tokens']['train'] / max(1, train['bars']):.1f} per bar (train)")
    if meta["renditions_per_sequenced_train_piece"]:
        n = meta["n_pieces_by_kind"]["train"]["performed"]
        print(f"  renders  {meta['renditions_per_sequenced_train_piece']} performed rendition(s) of each sequenced "
              f"training piece (counted in performed train: {n})")
    skipped = ", ".join(f"{k} {v}" for k, v in sorted(meta["skipped"].items())) or "none"
    print(f"  skipped  {sum(meta['skipped'].values())} ({skipped}); reasons in skipped.jsonl")
    if "note_check" in meta:
        c = meta["note_check"]
        print(f"  notes    {c['matched']:,}/{c['notes']:,} kept through tokens; worst piece recall "
              f"{c['worst_recall']:.4f} ({c['worst_recall_piece']}), worst precision {c['worst_precision']:.4f}")


def verify(data_dir):
    dataset = verify_dataset(data_dir)
    meta = dataset.meta
    print(f"{data_dir}: ok (format {meta['format_version']}; {meta['n_pieces']['train']} train / "
          f"{meta['n_pieces']['val']} val pieces, {sum(meta['n_tokens'].values()):,} tokens, "
          f"{meta['n_composers'] - 1} composers; sizes, index, token ids, composer ids, tokenizer and "
          f"{len(meta['sha256'])} checksums agree)")


DEMO_MIDI_DIR = Path("data/demo-midi")


def default_midi_dir():
    """data/midi/ when it holds MIDI files, else the synthetic demo corpus (written once)."""
    local = Path("data/midi")
    if local.is_dir() and find_midi_files(local):
        return local
    if not (DEMO_MIDI_DIR.is_dir() and find_midi_files(DEMO_MIDI_DIR)):
        from pianogpt.data.democorpus import STYLES, write_demo_corpus

        print(f"no --midi_dir given and data/midi/ is empty: writing the SYNTHETIC demo corpus "
              f"({', '.join(STYLES)}) to {DEMO_MIDI_DIR}/ (use --midi_dir for real music)")
        write_demo_corpus(DEMO_MIDI_DIR)
    return DEMO_MIDI_DIR


def main(argv=None):
    parser = Parser(description=__doc__.split("\n")[0])
    parser.add_argument("--midi_dir", action="append", help="folder of MIDI files; repeat it to merge several folders "
                        "into one dataset (default: data/midi/, else the synthetic demo corpus)")
    parser.add_argument("--out_dir", help="output folder (default: data/<name of midi_dir>; data/midi -> data/midi_tokens)")
    parser.add_argument("--layout", default="auto", choices=LAYOUTS, help="how composers are found")
    parser.add_argument("--val_fraction", type=fraction_in(-1e-12, 0.5), default=0.05, help="share of pieces in val, 0..0.5")
    parser.add_argument("--workers", type=positive_int, default=None, help="encoding processes (default: all cores)")
    parser.add_argument("--min_tokens", type=non_negative_int, default=64, help="skip pieces shorter than this")
    parser.add_argument("--check_notes", action="store_true", help="decode every piece and compare its notes to the MIDI")
    parser.add_argument("--file_timeout", type=positive_float, default=300.0, help="seconds per file before it is skipped")
    parser.add_argument("--max_memory_mb", type=positive_int, default=4096, help="memory cap of each encoding worker")
    parser.add_argument("--renditions", type=non_negative_int, default=0,
                        help="performed renditions added per sequenced training piece (one tempo, played onsets, "
                             "pedal, struck velocities), so the composers are also seen as performances")
    parser.add_argument("--holdout", action="append", default=[], metavar="MIDI_DIR",
                        help="hold one of the --midi_dir folders out whole (by its path or name; repeatable): its "
                             "pieces form the split 'heldout', copies of its works elsewhere go to val, and "
                             "evaluate.py reports identification on it (cross-source)")
    parser.add_argument("--cache_dir", default=None, metavar="DIR",
                        help="keep each file's encoding in DIR and read it back when the same file is prepared again "
                             "(another --holdout or --out_dir); entries are named by the file's bytes and the settings")
    parser.add_argument("--merges", type=non_negative_int, default=0, metavar="N",
                        help="learn BPE merges over REMI on the training split, up to a vocabulary of N tokens (the "
                             "419 base tokens included; Bar, TimeSig and Rest are never merged); 0: plain REMI")
    parser.add_argument("--merges_from", metavar="PATH",
                        help="use the tokenizer and merges of a prepared dataset folder or a checkpoint (the data of "
                             "a fine-tune must be written in its checkpoint's vocabulary)")
    parser.add_argument("--verify", metavar="DATA_DIR", help="check a prepared dataset (sizes, index, ids, tokenizer, "
                                                             "sha256 of every file) and exit")
    args = parser.parse_args(argv)

    def body():
        if args.verify:
            return verify(args.verify)
        midi_dirs = [Path(d) for d in args.midi_dir] if args.midi_dir else [default_midi_dir()]
        out_dir = Path(args.out_dir) if args.out_dir else default_out_dir(midi_dirs)
        prepare(midi_dirs, out_dir, args.layout, args.val_fraction, args.workers, args.min_tokens, args.check_notes,
                file_timeout=args.file_timeout, max_memory_mb=args.max_memory_mb, renditions=args.renditions,
                holdout=args.holdout, cache_dir=args.cache_dir, merges=args.merges, merges_from=args.merges_from)

    run_program(parser.prog, body, kept=lambda: "nothing was written; the previous dataset (if any) is intact")


if __name__ == "__main__":
    main()
