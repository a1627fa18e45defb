"""Learned merges over REMI (prepare.py --merges N): one token for a run of REMI tokens that often
come together (a pitch with its velocity and duration, a position with its chord), so that a
context of the same length holds more music.

The merges are miditok's own BPE (its HF tokenizers backend), learned on the training split and
saved in the tokenizer's JSON, so miditok decodes merged ids as it decodes base ones. One choice is
ours: Bar, TimeSig and Rest tokens are never merged (each is a "word" of its own when the merges are
learned and applied). Every rule that counts bars, forces a bar's metre or carries time through a
rest then reads the same single token as without merges, and a merged token holds only Position,
Tempo, Pitch, Velocity and Duration tokens of one bar. Base ids keep their numbers (PAD 0, BOS 1,
Pitch 3..90); merged ids follow them.
"""
import numpy as np

CHR_ID_START = 33  # miditok writes base id i as the character chr(i + 33) for its HF model
ALONE_TYPES = ("Bar", "TimeSig", "Rest", "PAD", "BOS")  # never part of a merged token


def has_merges(tokenizer):
    return bool(tokenizer.is_trained)


def alone_mask(tokenizer):
    """Bool per base id: the tokens that stay a word of their own (ALONE_TYPES)."""
    alone = np.zeros(len(tokenizer.vocab), dtype=bool)
    for name, i in tokenizer.vocab.items():
        alone[i] = name.split("_", 1)[0] in ALONE_TYPES
    return alone


def words_of(base_ids, alone):
    """A base-id sequence as the words the merges work inside: each ALONE token is a word, and each
    run of tokens between two of them is one."""
    ids = np.asarray(base_ids, dtype=np.int64)
    if len(ids) == 0:
        return []
    cut = np.flatnonzero(alone[ids])
    edges = np.unique(np.r_[0, cut, cut + 1, len(ids)])
    text = "".join(map(chr, ids + CHR_ID_START))
    return [text[a:b] for a, b in zip(edges[:-1], edges[1:])]


def size_problem(vocab_size, n_base):
    """Why a merged vocabulary of vocab_size tokens cannot be learned over n_base tokens, or None."""
    if n_base < vocab_size <= np.iinfo(np.uint16).max + 1:
        return None
    return (f"--merges {vocab_size}: a merged vocabulary must be larger than the {n_base} base tokens and at most "
            f"{np.iinfo(np.uint16).max + 1} (token ids are uint16); 0 keeps plain REMI")


def learn_merges(tokenizer, sequences, vocab_size):
    """Learn BPE merges in place until the vocabulary holds vocab_size tokens (the 419 base tokens
    included). sequences: the base-id arrays of the training split."""
    problem = size_problem(vocab_size, len(tokenizer.vocab))
    if problem:
        raise ValueError(problem)
    alone = alone_mask(tokenizer)
    # "no": miditok itself then encodes a whole piece as one string; since no merge holds an ALONE
    # token, none can cross one, so that gives exactly the ids merge() gives word by word
    tokenizer.config.encode_ids_split = "no"
    tokenizer.train(vocab_size=vocab_size, model="BPE", iterator=[words_of(ids, alone) for ids in sequences])


def merge(tokenizer, base_ids):
    """uint16 ids of a base-id sequence under the tokenizer's merges (the same ids without merges)."""
    return merge_many(tokenizer, [base_ids])[0]


def merge_many(tokenizer, sequences):
    """merge() of many sequences in one batch (the HF backend encodes them in parallel)."""
    sequences = [np.asarray(ids, dtype=np.uint16) for ids in sequences]
    if not has_merges(tokenizer):
        return sequences
    alone = alone_mask(tokenizer)
    todo = [(k, words_of(ids, alone)) for k, ids in enumerate(sequences) if len(ids)]
    encoded = tokenizer._model.encode_batch([words for _, words in todo], is_pretokenized=True) if todo else []
    for (k, _), enc in zip(todo, encoded):
        sequences[k] = np.asarray(enc.ids, dtype=np.uint16)
    return sequences


def base_parts(tokenizer):
    """For every id of the vocabulary, the tuple of base ids it stands for (a base id: itself).
    Cached on the tokenizer: the table is read for every sample and every piece measured."""
    cached = tokenizer.__dict__.get("_pianogpt_base_parts")
    if cached is not None and len(cached) == len(tokenizer):
        return cached
    parts = [(i,) for i in range(len(tokenizer.vocab))]
    if has_merges(tokenizer):
        parts += [()] * (len(tokenizer) - len(parts))
        for text, i in tokenizer.vocab_model.items():
            if i >= len(tokenizer.vocab):
                parts[i] = tuple(ord(c) - CHR_ID_START for c in text)
    tokenizer.__dict__["_pianogpt_base_parts"] = parts
    return parts


def unmerge(tokenizer, ids):
    """int64 base ids of a sequence of (possibly merged) ids."""
    ids = np.asarray(ids, dtype=np.int64)
    if not has_merges(tokenizer) or len(ids) == 0:
        return ids
    parts = base_parts(tokenizer)
    return np.fromiter((b for i in ids.tolist() for b in parts[i]), dtype=np.int64)


def full_vocab(tokenizer):
    """{name: id} over every id a model reads: the base names, and "A+B+C" for a merged token of
    the base tokens A, B, C (no base name holds a "+")."""
    if not has_merges(tokenizer):
        return tokenizer.vocab
    names = {i: name for name, i in tokenizer.vocab.items()}
    return {"+".join(names[b] for b in parts): i for i, parts in enumerate(base_parts(tokenizer))}


def note_counts(tokenizer):
    """int64 [vocab size]: the notes (Pitch tokens) each id holds, so that a likelihood can be read per
    note, the one unit every vocabulary shares."""
    pitch = np.zeros(len(tokenizer.vocab), dtype=np.int64)
    for name, i in tokenizer.vocab.items():
        pitch[i] = name.startswith("Pitch_")
    return np.array([int(pitch[list(run)].sum()) for run in base_parts(tokenizer)], dtype=np.int64)
