"""The infilling measures: the real middle's NLL of gaps cut from val pieces, with the music after
it visible and without, and takes filled in a composer's style, judged and joined."""

import numpy as np
import torch

from pianogpt.generation.infill import (PLAIN, bar_lines, context_budget, gap_layouts, infill_prompt, real_gaps,
                                        write_middles)
from pianogpt.data.remi import grammar_error_rate, guidance_types
from pianogpt.measures.evaluation import val_pieces
from pianogpt.measures.samples import decoded, features, fit_outside_judge
from pianogpt.measures.scoring import bootstrap_mean


INFILL_BARS = 2  # the gaps the infilling measures cut out of val pieces, in bars


def val_gaps(e, n):
    """n real gaps of INFILL_BARS bars in the whole val pieces (seeded), with their pieces."""
    pieces = val_pieces(e)
    gaps = real_gaps([t for t, _, _ in pieces], e.tokenizer.vocab["Bar_None"], e.model.config.block_size, n,
                     np.random.default_rng([e.seed, 37]), bars=INFILL_BARS)
    return pieces, gaps


def infill_nll_measures(e, n):
    """NLL of the real middle of each gap (after its opening bar line, with the bar line closing it)
    with the music after it visible (a model with roles) and continued from the music before it
    only, the paired difference, and each gap's values (to pair with another checkpoint's)."""
    pieces, gaps = val_gaps(e, n)
    if not gaps:
        return {"gaps": 0, "bars": INFILL_BARS}
    ways = ("infill", "continue") if e.model.config.n_roles else ("continue",)
    nll = {way: [] for way in ways}
    for p, start, end in gaps:
        tokens, composer, kind = pieces[p]
        for way, (ids, roles, first) in gap_layouts(tokens, start, end, e.bos_id, e.model.config.block_size).items():
            if way not in ways:
                continue
            x, y = torch.tensor([ids[:-1]], device=e.device), torch.tensor([ids[1:]], device=e.device)
            role = torch.tensor([roles[:-1]], device=e.device) if e.model.config.n_roles else None
            with torch.no_grad(), e.ctx:
                log_p = e.model.token_log_probs(x, torch.tensor([composer], device=e.device), y,
                                                kind=torch.tensor([kind], device=e.device), role=role)
            nll[way].append(float(-log_p[0, first:].float().mean()))
    out = {"gaps": len(gaps), "bars": INFILL_BARS, "per_gap": nll,
           "nll": {way: bootstrap_mean(v, np.ones(len(v))) for way, v in nll.items()}}
    if "infill" in nll:
        out["infill_minus_continue"] = bootstrap_mean(np.subtract(nll["infill"], nll["continue"]), np.ones(len(gaps)))
    return out


def infill_take_measures(e, per_composer, guidance):
    """For each composer of the comparison set, per_composer val gaps written in its style, filled
    (the music after visible; a model with roles) and continued from the music before and cut after
    INFILL_BARS bars, at one guidance: the outside judge's verdict on the new bars, how often they
    reach the bar line where the piece resumes within their token budget, and the grammar errors
    at the seams (the new bars joined to the music before and after)."""
    bar_id = e.tokenizer.vocab["Bar_None"]
    judge = fit_outside_judge(e, e.model.config.block_size // 2, 3)[0]  # excerpts about as long as a gap
    pieces, gaps = val_gaps(e, len(e.candidates) * per_composer)
    if not gaps:
        return {"takes_per_way": 0}
    ways = ("infill", "continue") if e.model.config.n_roles else ("continue",)
    requested = [e.candidates[i % len(e.candidates)] for i in range(len(gaps))]
    takes, seams = {way: [] for way in ways}, {way: [] for way in ways}
    for i, ((p, start, end), composer) in enumerate(zip(gaps, requested)):
        tokens, _, kind = pieces[p]
        for way in ways:
            take = gap_take(e, tokens, start, end, composer, kind, guidance, way, bar_id, seed=i)
            takes[way].append(take)
            joined = [int(t) for t in tokens[max(0, start - 16):start]] + take[0] + [int(t) for t in tokens[end:end + 16]]
            seams[way].append(grammar_error_rate(e.tokenizer, joined))
    real_verdicts = judge.predict(features(decoded(e.tokenizer, [pieces[p][0][start:end].tolist()
                                                                 for p, start, end in gaps])))
    out = {"takes_per_way": len(gaps), "guidance": guidance, "judge_excerpt_tokens": e.model.config.block_size // 2,
           "real_gaps_judge_accuracy": float(np.mean(real_verdicts == np.array([pieces[p][1] for p, _, _ in gaps])))}
    for way in ways:
        verdicts = judge.predict(features(decoded(e.tokenizer, [middle for middle, _ in takes[way]])))
        right = (verdicts == np.array(requested)).astype(float)
        out[way] = {"judge_accuracy": bootstrap_mean(right, np.ones(len(right))),
                    "closed": float(np.mean([did_close for _, did_close in takes[way]])),
                    "seam_grammar_error_rate": float(np.mean(seams[way])), "chance": 1 / len(e.candidates)}
    return out


def gap_take(e, tokens, start, end, composer, kind, guidance, way, bar_id, seed):
    """(new middle tokens from the gap's opening bar line, closed) for one gap: filled between the
    music before and after it (way "infill") or continued from the music before it ("continue"),
    both given the gap's bar lines' metre and the token budget sample.py --infill gives."""
    block = e.model.config.block_size
    budget, side = context_budget(block, end - start)
    lines = bar_lines(tokens[start:end], bar_id)
    metre = [int(tokens[start + i + 1]) for i in lines]
    if way == "infill":
        prompt, prompt_roles = infill_prompt(tokens[:start], tokens[end:], side, e.bos_id, bar_id, len(lines) == 1)
    else:
        prompt = [e.bos_id] + [int(t) for t in tokens[max(0, start - (block - 1 - budget - 1)):start]] + [bar_id]
        prompt_roles = [PLAIN] * len(prompt)
    with e.ctx:
        return write_middles(e.model, e.tokenizer, prompt, prompt_roles, len(lines), metre, budget,
                             torch.tensor([composer], device=e.device), plain=way != "infill", guidance=guidance,
                             generator=torch.Generator(device=e.device).manual_seed(seed),
                             guidance_types=guidance_types(e.tokenizer, "within_types"),
                             kind=kind if e.model.config.n_kinds else None)[0]
