"""Samples measured: the outside judge fitted on real excerpts and its verdict on samples, the
model's self-judged adherence, copying, and music statistics beside real music's."""

import numpy as np
import torch

from pianogpt.data.dataset import KIND_IDS, TEXTURES
from pianogpt.measures.copies import note_events
from pianogpt.measures.judge import Judge, note_arrays, note_features
from pianogpt.data.remi import CHORD_LIMIT, RemiGrammar, decode_sample, guidance_types
from pianogpt.generation.engine import generate
from pianogpt.measures.identification import confusion_table
from pianogpt.measures.scoring import score_under, tie_shared_credit


def adherence(scores, requested):
    """Accuracy of argmax_k scores == requested (ids 1..N), ties sharing the credit."""
    credit = tie_shared_credit(scores, [want - 1 for want in requested], atol=1e-4)
    return float(np.mean(credit)) if credit else float("nan")


def music_stats(score, errors):
    """Notes per second, pitch range (semitones), pitch-class entropy (bits), mean chord size, and
    the grammar error rate `errors`, of a decoded score."""
    onsets, _, pitches, _ = note_arrays(score)
    if len(pitches) == 0:
        return {"notes_per_s": 0.0, "pitch_range": 0, "pitch_class_entropy": 0.0, "chord_size": 0.0,
                "grammar_error_rate": errors}
    seconds = float(score.to("second").end())
    pc = np.bincount(pitches % 12, minlength=12) / len(pitches)
    pc = pc[pc > 0]
    return {"notes_per_s": len(pitches) / max(seconds, 1e-6), "pitch_range": int(pitches.max() - pitches.min()),
            "pitch_class_entropy": float(-(pc * np.log2(pc)).sum()),
            "chord_size": float(len(pitches) / len(np.unique(onsets))), "grammar_error_rate": errors}


def mean_stats(stats):
    return {k: float(np.mean([s[k] for s in stats])) for k in stats[0]} if stats else {}


def spread_stats(stats):
    """5th and 95th percentile of each statistic: the range real pieces span."""
    return {k: [float(np.percentile([s[k] for s in stats], q)) for q in (5, 95)] for k in stats[0]} if stats else {}


def excerpts(split, rows, length, per_piece, seed):
    """[(tokens, composer id, kind id)]: per_piece seeded excerpts of `length` tokens from each
    piece row of a WindowSampler."""
    rng = np.random.default_rng([seed, 77])
    out = []
    for row in rows:
        offset, n, composer = (int(v) for v in split.index[row])
        for _ in range(per_piece):
            start = int(rng.integers(0, max(1, n - length + 1)))
            out.append((np.asarray(split.tokens[offset + start:offset + min(n, start + length)], np.int64), composer,
                        int(split.kinds[row])))
    return out


def decoded(tokenizer, token_lists):
    """(score, grammar error rate) of each token list, decoded once for every measure."""
    return [decode_sample(tokenizer, ids)[1:] for ids in token_lists]


def features(scores):
    return np.array([note_features(score) for score, _ in scores])


def fit_outside_judge(e, sample_tokens, judge_excerpts):
    """The judge fitted on excerpts of training files of the comparison set (not renditions: the
    judge learns from real music only); (judge, decoded real val excerpts, its accuracy on them
    overall and by kind)."""
    train_rows = [r for r in range(len(e.train_split))
                  if int(e.train_split.index[r, 2]) in e.candidates and not e.train_split.renditions[r]]
    val_rows = [r for r in range(len(e.val)) if int(e.val.index[r, 2]) in e.candidates]
    train_ex = excerpts(e.train_split, train_rows, sample_tokens, judge_excerpts, e.seed)
    val_ex = excerpts(e.val, val_rows, sample_tokens, judge_excerpts, e.seed + 1)
    judge = Judge().fit(features(decoded(e.tokenizer, [t for t, _, _ in train_ex])), [c for _, c, _ in train_ex])
    val_scores = decoded(e.tokenizer, [t for t, _, _ in val_ex])
    val_features = features(val_scores)
    val_composers, val_kinds = np.array([c for _, c, _ in val_ex]), np.array([k for _, _, k in val_ex])
    report = {"features": "note statistics (pitch classes, intervals, register, chords, onsets, durations, "
                          "velocities, tempo)", "train_excerpts": len(train_ex), "val_excerpts": len(val_ex),
              "accuracy_on_real_val": judge.accuracy(val_features, val_composers),
              "balanced_accuracy_on_real_val": judge.balanced_accuracy(val_features, val_composers),
              "real_val_composers": len(set(val_composers.tolist())), "chance": 1 / len(e.candidates),
              "by_kind": {kind: judge_on_kind(judge, val_features[val_kinds == k], val_composers[val_kinds == k],
                                              e.names)
                          for kind, k in KIND_IDS.items() if (val_kinds == k).any()}}
    return judge, val_scores, report


def judge_on_kind(judge, features_of_kind, composers_of_kind, names):
    """The judge on the real val excerpts of one kind: plain and balanced accuracy, and which
    composers they are (samples, balanced by design, compare with the balanced figure on these)."""
    return {"val_excerpts": len(composers_of_kind),
            "accuracy_on_real_val": judge.accuracy(features_of_kind, composers_of_kind),
            "balanced_accuracy_on_real_val": judge.balanced_accuracy(features_of_kind, composers_of_kind),
            "composers": [names[c] for c in sorted(set(composers_of_kind.tolist()))]}


def accuracy_on(confusion, composers):
    """The share judged right among the samples requested for `composers` ({true: {guess: n}})."""
    rows = {c: confusion[c] for c in composers if c in confusion}
    total = sum(sum(row.values()) for row in rows.values())
    return sum(row.get(c, 0) for c, row in rows.items()) / total if total else float("nan")


def sample_measures(e, judge, copies, guidance, texture, per_composer, sample_tokens, guidance_mode):
    """samples for every composer of the comparison set at one guidance (and rendering): the judge's
    verdict, self-judged adherence, copying and music statistics."""
    requested = torch.tensor([c for c in e.candidates for _ in range(per_composer)], device=e.device)
    bos = torch.full((len(requested), 1), e.bos_id, dtype=torch.long, device=e.device)
    kind = None if texture is None else TEXTURES[texture]
    generator = torch.Generator(device=e.device).manual_seed(e.seed)
    with e.ctx:
        out = generate(e.model, bos, requested, sample_tokens, guidance=guidance, generator=generator,
                               logits_processor=RemiGrammar(e.tokenizer, chord_limit=CHORD_LIMIT),
                               guidance_types=guidance_types(e.tokenizer, guidance_mode), kind=kind)
    token_lists = [row[1:].tolist() for row in out]
    scores = score_under(e.model, [np.array(t) for t in token_lists], e.candidates, e.bos_id, ctx=e.ctx,
                         kinds=None if kind is None else [kind] * len(token_lists))
    sample_scores = decoded(e.tokenizer, token_lists)
    runs = [copies.longest(note_events(score)) for score, _ in sample_scores]
    runs_by_composer = {}
    for c, run in zip(requested.tolist(), runs):
        runs_by_composer[e.names[c]] = max(run, runs_by_composer.get(e.names[c], 0))
    verdicts = judge.predict(features(sample_scores))
    return {"judge_accuracy": float(np.mean(verdicts == requested.cpu().numpy())),
            "judge_confusion": confusion_table(zip(requested.tolist(), verdicts.tolist()), e.names),
            "self_judged_adherence": adherence(scores, [e.candidates.index(c) + 1 for c in requested.tolist()]),
            "chance": 1 / len(e.candidates), "longest_copied_run": int(max(runs, default=0)),
            "median_copied_run": float(np.median(runs)) if runs else 0.0,
            "longest_copied_run_by_composer": runs_by_composer,
            **mean_stats([music_stats(score, errors) for score, errors in sample_scores])}
