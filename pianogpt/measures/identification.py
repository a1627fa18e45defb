"""Identification: which composer a whole piece is most likely under, among a comparison set,
with NLL by condition, by kind and by source (the measure of style on held-out real music)."""
import difflib

import numpy as np
import torch

from pianogpt.cli import CliError
from pianogpt.data.dataset import KIND_IDS
from pianogpt.measures.scoring import (bootstrap_mean, derangement, score_under, scored_span, stacked,
                                       tie_shared_credit, tokens_scored)


KIND_NAMES = {kind_id: kind for kind, kind_id in KIND_IDS.items()}  # 1: "sequenced", 2: "performed"


def confusion_table(pairs, names):
    """{true name: {guessed name: count}} from (true id, guessed id) pairs."""
    table = {}
    for true, guess in pairs:
        row = table.setdefault(names[true], {})
        row[names[guess]] = row.get(names[guess], 0) + 1
    return table


def identification(scores, true_ids, candidates, names, train_counts):
    """Accuracy of argmax_k log p(piece | k) over the candidate composers (ties share the
    credit, so a composer-blind model scores chance exactly), chance, the always-the-
    commonest-composer baselines (of training, and of these pieces), a balanced accuracy (every
    composer among these pieces weighs alike: a slice that is mostly one composer cannot be won by
    naming him every time) and a confusion table {true: {predicted: pieces}}."""
    candidates = list(candidates)
    commonest = max(candidates, key=lambda c: train_counts.get(c, 0))
    shared = {"pieces": len(true_ids), "chance": 1 / len(candidates), "commonest_composer": names[commonest]}
    if not true_ids:  # a slice without a piece by a compared composer
        nan = float("nan")
        return {**shared, "accuracy": nan, "accuracy_interval": [nan, nan], "balanced_accuracy": nan,
                "composers_here": 0, "commonest_baseline": nan, "commonest_here": None,
                "commonest_here_baseline": nan, "confusion": {}, "credit": []}
    credit = tie_shared_credit(scores, [candidates.index(true) for true in true_ids], atol=1e-6)
    guesses = [candidates[int(torch.as_tensor(row).argmax())] for row in scores]
    interval = bootstrap_mean(credit, np.ones(len(credit)))
    by_composer = {}
    for true, c in zip(true_ids, credit):
        by_composer.setdefault(true, []).append(c)
    most_here = max(by_composer, key=lambda c: len(by_composer[c]))
    return {**shared, "accuracy": float(np.mean(credit)), "accuracy_interval": [interval["low"], interval["high"]],
            "balanced_accuracy": float(np.mean([np.mean(v) for v in by_composer.values()])),
            "composers_here": len(by_composer),
            "commonest_baseline": float(np.mean([t == commonest for t in true_ids])),
            "commonest_here": names[most_here], "commonest_here_baseline": len(by_composer[most_here]) / len(credit),
            "confusion": confusion_table(zip(true_ids, guesses), names),
            "credit": [float(c) for c in credit]}  # per piece, in order: recipes compare on the same pieces


def score_pieces(model, pieces, candidates, n_composers, bos_id, max_windows, ctx=None, scorings=None):
    """One row per piece [(tokens, composer id, kind id)]: tokens scored, NLL with the true
    composer, composer 0 and a wrong one, and the scores of the candidate composers; each piece
    scored with its own kind. scorings: {name: counted} (scorings_of; None: all tokens), the first
    the primary one (tokens, NLL), the candidates' scores under each under candidate_scores_by_tokens."""
    scorings = scorings or {"all": None}
    masks = stacked(scorings, model.config.vocab_size)
    primary = next(iter(scorings.values()))
    span = scored_span(model.config.block_size)
    rows = []
    for tokens, true, kind in pieces:
        wrong = int(derangement(torch.tensor([true]), n_composers)[0])
        ids = sorted({0, true, wrong, *candidates})
        scores = score_under(model, [tokens], ids, bos_id, max_windows, ctx=ctx, kinds=[kind], counted=masks)[0]
        n = max(1, tokens_scored(len(tokens), span, max_windows, tokens, primary))
        rows.append({"n": n, "true": true, "kind": kind,
                     "nll": {key: float(-scores[ids.index(k), 0] / n) for key, k in
                             (("true", true), ("uncond", 0), ("wrong", wrong))},
                     "candidate_scores_by_tokens": {name: scores[[ids.index(c) for c in candidates], m]
                                                    for m, name in enumerate(scorings)}})
    return rows


def summarise_pieces(rows, candidates, names, train_counts, seed):
    """NLL by condition (bootstrap intervals over pieces) and identification among candidates."""
    weights = [r["n"] for r in rows]
    nll = {key: bootstrap_mean([r["nll"][key] for r in rows], weights, seed) for key in ("true", "uncond", "wrong")}
    gaps = {"uncond_minus_true": bootstrap_mean([r["nll"]["uncond"] - r["nll"]["true"] for r in rows], weights, seed),
            "wrong_minus_uncond": bootstrap_mean([r["nll"]["wrong"] - r["nll"]["uncond"] for r in rows], weights, seed)}
    eligible = [r for r in rows if r["true"] in candidates]
    scorings = rows[0]["candidate_scores_by_tokens"] if rows else ("all",)  # the primary first
    by_tokens = {name: identification([r["candidate_scores_by_tokens"][name] for r in eligible],
                                      [r["true"] for r in eligible], candidates, names, train_counts)
                 for name in scorings}
    if rows and "path" in rows[0]:  # the piece of each credit: two runs pair on the pieces both scored
        for ident in by_tokens.values():
            ident["paths"] = [r["path"] for r in eligible]
    return {"pieces": len(rows), "tokens_scored": int(sum(weights)), "nll": nll, "nll_gaps": gaps,
            "identification": next(iter(by_tokens.values())), "identification_by_tokens": by_tokens}


def identify_pieces(model, pieces, candidates, names, train_counts, n_composers, bos_id, max_windows, seed, ctx=None,
                 sources=None, scorings=None, paths=None):
    """summarise_pieces over all pieces [(tokens, composer id, kind id)], over each kind
    (sequenced, performed) that has pieces under "by_kind", and, given each piece's source (the
    MIDI folder it came from), over each source and kind under "by_source" when there are several.
    paths: each piece's path, listed beside the credits (identification's "paths")."""
    rows = score_pieces(model, pieces, candidates, n_composers, bos_id, max_windows, ctx, scorings)
    for row, path in zip(rows, paths or ()):
        row["path"] = path
    out = summarise_pieces(rows, candidates, names, train_counts, seed)
    out["by_kind"] = {KIND_NAMES[k]: summarise_pieces([r for r in rows if r["kind"] == k], candidates, names,
                                                      train_counts, seed)
                      for k in sorted({r["kind"] for r in rows} & set(KIND_NAMES))}
    if sources and len(set(sources)) > 1:
        groups = sorted({(source, row["kind"]) for source, row in zip(sources, rows)} - {(s, 0) for s in sources})
        out["by_source"] = {f"{source} {KIND_NAMES[k]}": summarise_pieces(
            [r for s, r in zip(sources, rows) if (s, r["kind"]) == (source, k)], candidates, names, train_counts, seed)
            for source, k in groups}
    return out


def comparison_set(train_counts, min_train_pieces):
    """Composers with at least min_train_pieces training pieces (all composers with any, when
    fewer than two qualify), and the rule that chose them."""
    chosen = sorted(c for c, n in train_counts.items() if c != 0 and n >= min_train_pieces)
    if len(chosen) >= 2:
        return chosen, f"composers with >= {min_train_pieces} training pieces"
    return sorted(c for c, n in train_counts.items() if c != 0 and n > 0), "every composer with a training piece"


def named_comparison_set(composers, names):
    """The ids of the named composers (--compare: two recipes compared on one comparison set), and
    the rule; a name the checkpoint does not know is a CliError naming the closest."""
    ids = []
    for name in names:
        if name not in composers:
            close = difflib.get_close_matches(name, [n for n in composers if composers[n]], n=3)
            raise CliError(f"--compare {name}: not a composer of the checkpoint"
                           + (f" (closest: {', '.join(close)})" if close else ""))
        ids.append(composers[name])
    if len(set(ids)) < 2:
        raise CliError("--compare needs at least two composers")
    return sorted(set(ids)), "the composers named by --compare"
