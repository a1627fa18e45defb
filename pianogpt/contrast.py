"""Composer contrast: a share of training windows scored again under another composer, and trained
to be likelier under their own composer than under that one, on the note tokens (issue 36).

The language-model loss teaches each composer's rows whatever helps predict that composer's files,
an archive's velocity and tempo habits included; identification then asks which composer's rows
make a piece likeliest. This loss asks that question of the training windows themselves, on the
tokens that say what is played and when (remi.note_token_mask), so the rows are pushed to carry
what tells composers apart in the notes rather than in an archive's habits.
"""
import numpy as np
import torch
import torch.nn.functional as F


def composer_odds(piece_composers, piece_weights, n_composers):
    """[n_composers]: each composer's share of the training draws (dataset.piece_weights), 0 for
    composer 0 (the unconditional row) and for composers without training pieces."""
    odds = np.bincount(piece_composers, weights=piece_weights, minlength=n_composers)[:n_composers]
    odds[0] = 0.0
    return odds / odds.sum() if odds.sum() else odds


def contrast_rows(composer, share, odds, rng):
    """(k, negatives [k], live [k]) for a batch's composer ids [B] (on the CPU): the first
    k = round(B * share) windows are contrasted (a batch's windows are in random order), each with
    another composer drawn as often as training draws its windows (odds [n_composers]: the share of
    training draws of each composer id; 0 for a composer without training pieces), never its own;
    live: whether its own composer is known (a window whose condition was dropped to 0 has nothing
    to contrast). Drawn as training draws them, the others are mostly the common composers a piece
    is confused with, not the many rare ones."""
    k = max(1, round(composer.size(0) * share))
    negatives = []
    for own in composer[:k].tolist():
        p = np.array(odds, dtype=np.float64)
        p[own] = 0.0
        negatives.append(int(rng.choice(len(p), p=p / p.sum())))
    return k, torch.tensor(negatives, dtype=torch.long), composer[:k] > 0


def lm_and_contrast_loss(model, x, y, composer, kind, role, contrast, counted, pad_id, label_smoothing, weight):
    """(language-model loss + weight * contrast loss, the language-model loss alone) in one forward
    pass over the batch and, appended, the contrast rows under their negative composers.

    The contrast loss of a row is softplus(S_own - S_other) / n, S the NLL summed over its n counted
    (note) targets: the logistic loss of telling its own composer from the other by likelihood, per
    token, so that its gradient on a token is of the order of the language model's."""
    k, negatives, live = contrast
    batch = x.size(0)
    both = lambda t: None if t is None else torch.cat([t, t[:k]])  # noqa: E731
    logits, _ = model(both(x), torch.cat([composer, negatives]), all_logits=True, kind=both(kind), role=both(role))
    targets = both(y)
    lm = F.cross_entropy(logits[:batch].float().flatten(0, 1), y.reshape(-1), ignore_index=pad_id,
                         label_smoothing=label_smoothing)
    nll = F.cross_entropy(logits.float().flatten(0, 1), targets.reshape(-1), ignore_index=pad_id,
                          reduction="none").view(targets.shape)
    scored = (counted[targets] & (targets != pad_id)).float()
    sums = (nll * scored).sum(dim=1)
    n = scored[batch:].sum(dim=1).clamp(min=1.0)
    per_row = F.softplus(sums[:k] - sums[batch:]) / n * live.float()
    contrast_loss = per_row.sum() / live.sum().clamp(min=1)
    return lm + weight * contrast_loss, lm.detach()
