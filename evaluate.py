"""How good is a checkpoint, and does it know the composers? Measured on held-out real music.

    python evaluate.py --ckpt out/ckpt.pt
    python evaluate.py --ckpt out/ckpt.pt --real_dir path/to/<Composer>/*.mid --json results.json

1. NLL (nats/token) on fixed, seeded val windows with the TRUE composer, composer 0
   (unconditional) and a WRONG one (a derangement); unigram and n-gram (orders 3-6) baselines on the
   same targets. A model that uses the composer orders them true < uncond < wrong.
2. Whole held-out pieces (the held-out sources of prepare.py --holdout first: cross-source; then
   val, and --real_dir): NLL true / uncond / wrong with bootstrap
   intervals over pieces, and identification: each piece scored under every composer of
   the comparison set (composers with >= --min_train_pieces training pieces); accuracy
   beside chance and always guessing the commonest composer, and a confusion table.
3. An outside judge that never sees the model (judge.py: note statistics, fitted on
   excerpts of training pieces): its accuracy on real val excerpts, then on samples.
4. Copying: the longest run of notes each sample shares with any training piece, beside
   the same for real val excerpts.
5. Samples per composer and guidance: judge accuracy, self-judged adherence (the model
   grading its own samples: a sanity check only), notes/s, pitch range, pitch-class
   entropy, chord size and grammar errors, beside real val excerpts and their spread.
"""
import dataclasses
import json
import math
import os
import sys
import time
from dataclasses import dataclass

import numpy as np

from pianogpt.cli import CliError, Parser, fail, non_negative_int, positive_int, run_program
from pianogpt.data.dataset import TEXTURES
from pianogpt.data.merges import full_vocab
from pianogpt.data.remi import GUIDANCE_MODES, decode_sample
from pianogpt.files import atomic_write_text, write_or_fail
from pianogpt.measures.copies import CopyFinder, note_events
from pianogpt.measures.evaluation import (heldout_piece_measures, ngram_baselines, probe_measures, real_dir_measures,
                                          set_up, val_piece_measures, window_measures)
from pianogpt.measures.infilling import INFILL_BARS, infill_nll_measures, infill_take_measures
from pianogpt.measures.probes import Probes
from pianogpt.measures.report import print_report
from pianogpt.measures.samples import fit_outside_judge, mean_stats, music_stats, sample_measures, spread_stats
from pianogpt.measures.scoring import MIN_SPAN, SCORE_TOKENS, scorings_of, val_windows


@dataclass
class EvalOptions:
    """What evaluate() measures, and on how much: evaluate.py's flags (--help says what each does)."""
    data_dir: str = None  # None: the checkpoint's own dataset
    num_windows: int = 64
    window: int = None
    guidances: tuple = (0.0, 1.0, 5.0)
    samples_per_composer: int = 2
    sample_tokens: int = 512
    seed: int = 0
    device: str = "cpu"
    max_composers: int = None
    real_dir: str = None
    min_train_pieces: int = 30
    max_windows: int = 4
    judge_excerpts: int = 3
    dtype: str = "auto"
    guidance_mode: str = "within_types"
    per_work: int = 1
    probes: tuple = ()
    score_tokens: str = "all"
    infill_gaps: int = 0
    infill_takes: int = 0
    infill_guidance: float = 3.0
    compare: tuple = ()  # composer names: compare exactly these (instead of min_train_pieces' rule)
    val_pieces: int = 0  # > 0: score only that many whole val pieces, spread over the split


def evaluate(ckpt, options=EvalOptions()):
    """Every measure of the module docstring, as one dict (print_report prints it)."""
    r = options
    if r.real_dir and not os.path.isdir(r.real_dir):
        raise CliError(f"--real_dir {r.real_dir} is not a folder")
    e = set_up(ckpt, r.data_dir, r.window, r.device, r.dtype, r.min_train_pieces, r.max_composers, r.seed, r.max_windows,
               r.compare)
    e.scorings = scorings_of(full_vocab(e.tokenizer), r.score_tokens)
    results = {"ckpt": str(ckpt), "data_dir": e.data_dir, "num_windows": r.num_windows, "window": e.window,
               "score_tokens": r.score_tokens,
               "comparison_set": {"rule": e.rule, "composers": {e.names[c]: e.train_counts[c] for c in e.candidates},
                                  "fine_tuned": [e.names[c] for c in e.fine_tuned]}}
    progress = Progress()
    x, y, composer, kind = (t.to(r.device) for t in val_windows(e.val, r.num_windows, r.seed))
    results.update(window_measures(e, x, y, composer, kind))
    progress.say("val windows scored")
    results["baselines"] = ngram_baselines(e, x, y, results["nll"]["true"])
    progress.say("baselines")
    if e.meta.get("heldout_sources"):
        results["heldout_pieces"] = heldout_piece_measures(e, r.per_work)
        progress.say(f"{results['heldout_pieces']['pieces']} pieces of the held-out sources scored")
    results["val_pieces"] = val_piece_measures(e, r.val_pieces)
    progress.say(f"{results['val_pieces']['pieces']} val pieces scored under {len(e.candidates) + 3} conditions")
    if r.real_dir:
        results["real_dir"] = real_dir_measures(e, r.real_dir)
        progress.say(f"pieces of {r.real_dir} scored")
    if r.probes:
        results["probes"] = probe_measures(e, r.probes, r.per_work)
        progress.say(f"probes {', '.join(r.probes)}")
    if r.infill_gaps:
        results["infill"] = infill_nll_measures(e, r.infill_gaps)
        progress.say(f"{results['infill']['gaps']} real gaps of val pieces scored")
    if r.infill_takes:
        results.setdefault("infill", {}).update(infill_take_measures(e, r.infill_takes, r.infill_guidance))
        progress.say("gaps filled and continued, judged")
    if r.samples_per_composer == 0:  # identification and NLL only: no judge, no copy index, no samples
        return results
    judge, val_scores, results["judge"] = fit_outside_judge(e, r.sample_tokens, r.judge_excerpts)
    progress.say("outside judge fitted")
    copies = CopyFinder([note_events(decode_sample(e.tokenizer, p)[1]) for p in e.train_pieces])
    real_runs = [copies.longest(note_events(score)) for score, _ in val_scores]
    results["copying"] = {"rule": "longest run of consecutive notes (pitch and inter-onset interval) shared with "
                                  "any training piece; runs under 5 notes count as 0",
                          "real_val_excerpts": {"median": float(np.median(real_runs)) if real_runs else 0.0,
                                                "max": int(max(real_runs, default=0))}}
    progress.say("copy index built")
    results["samples"] = {}
    # a model with a kind condition renders every guidance both ways (score, performance)
    renderings = [(f"{g}", g, None) for g in r.guidances] if not e.model.config.n_kinds else \
        [(f"{g} {kind}", g, kind) for g in r.guidances for kind in TEXTURES]
    for label, g, kind in renderings:
        results["samples"][label] = sample_measures(e, judge, copies, g, kind, r.samples_per_composer, r.sample_tokens,
                                                    r.guidance_mode)
        progress.say(f"samples at guidance {label}")
    real_stats = [music_stats(score, errors) for score, errors in val_scores]
    results["samples"]["real val excerpts"] = mean_stats(real_stats)
    results["real_val_spread"] = spread_stats(real_stats)
    return results


class Progress:
    """One line per finished stage, with the seconds since the start (to stderr)."""

    def __init__(self):
        self.start = time.perf_counter()

    def say(self, what):
        print(f"[{time.perf_counter() - self.start:6.1f} s] {what}", file=sys.stderr, flush=True)


def flag_parser():
    parser = Parser(description=__doc__.split("\n")[0])
    parser.add_argument("--ckpt", default="out/ckpt.pt")
    parser.add_argument("--data_dir", default=None, help="prepared dataset (default: the checkpoint's data_dir)")
    parser.add_argument("--num_windows", type=positive_int, default=64)
    parser.add_argument("--window", type=positive_int, default=None, help="tokens per window (default: block_size)")
    parser.add_argument("--guidance", default="0,1,5", help="comma-separated guidance values for the samples")
    parser.add_argument("--guidance_mode", default="within_types", choices=GUIDANCE_MODES,
                        help="as sample.py's: guidance within token types (default) or on every logit (plain)")
    parser.add_argument("--samples_per_composer", type=non_negative_int, default=2,
                        help="samples per compared composer and guidance; 0: no samples, no judge, no copy check "
                             "(identification and NLL only, much faster)")
    parser.add_argument("--sample_tokens", type=positive_int, default=512)
    parser.add_argument("--max_composers", type=positive_int, default=None, help="sample only the first N composers")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda", "mps"))
    parser.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"),
                        help="autocast for scoring and sampling (auto: bf16 where the CPU/GPU has it natively)")
    parser.add_argument("--real_dir", default=None, help="a labelled folder <Composer>/*.mid of real held-out pieces")
    parser.add_argument("--min_train_pieces", type=positive_int, default=30,
                        help="identification compares composers with at least this many training pieces")
    parser.add_argument("--compare", default="", help="comma-separated composer names: identification compares exactly "
                        "these (instead of --min_train_pieces' rule), so that two models compare on one set")
    parser.add_argument("--val_pieces", type=non_negative_int, default=0,
                        help="whole val pieces scored for identification, spread over the split (0: all)")
    parser.add_argument("--max_windows", type=positive_int, default=4,
                        help="spans scored per whole piece (spread over it); a span is block_size - 1 tokens, "
                             f"or whole windows of it adding up to at least {MIN_SPAN}")
    parser.add_argument("--per_work", type=positive_int, default=1,
                        help="pieces scored per work of the held-out sources (performances of one work are alike)")
    parser.add_argument("--probes", default="", help="comma-separated fingerprint probes to score again with "
                        f"(probes.py): {', '.join(Probes.PROBES)}, or all")
    parser.add_argument("--score_tokens", default="all", choices=SCORE_TOKENS,
                        help="which tokens' log-probabilities identification sums over a whole piece: all, or the "
                             "notes (pitches and onsets: no velocity, duration, tempo or time-signature token)")
    parser.add_argument("--judge_excerpts", type=positive_int, default=3, help="excerpts per piece for the judge")
    parser.add_argument("--infill_gaps", type=non_negative_int, default=0,
                        help=f"real {INFILL_BARS}-bar gaps cut from val pieces: the real middle's NLL with the music "
                             "after it visible (a model trained with infill_share) and continued from before only")
    parser.add_argument("--infill_takes", type=non_negative_int, default=0,
                        help="gaps per compared composer filled (and continued) in its style and judged: judge "
                             "accuracy, how often a take reaches the bar line where the piece resumes, seam grammar")
    parser.add_argument("--infill_guidance", type=float, default=3.0, help="guidance of those takes")
    parser.add_argument("--json", default=None, help="also write the numbers to this file")
    return parser


def main(argv=None):
    parser = flag_parser()
    args = parser.parse_args(argv)
    try:
        guidances = tuple(float(g) for g in args.guidance.split(","))
        if any(not (g >= 0 and math.isfinite(g)) for g in guidances):
            raise ValueError
    except ValueError:
        fail(parser.prog, f"--guidance expects comma-separated numbers >= 0, got {args.guidance!r}")
    probes = Probes.PROBES if args.probes == "all" else tuple(p for p in args.probes.split(",") if p)
    unknown = [p for p in probes if p not in Probes.PROBES]
    if unknown:
        fail(parser.prog, f"--probes: unknown probe {unknown[0]!r}; choose from {', '.join(Probes.PROBES)} or all")

    def body():
        flags = {f.name: getattr(args, f.name) for f in dataclasses.fields(EvalOptions) if hasattr(args, f.name)}
        compare = tuple(name.strip() for name in args.compare.split(",") if name.strip())
        results = evaluate(args.ckpt, EvalOptions(**flags | {"guidances": guidances, "probes": probes, "compare": compare}))
        print_report(results)
        if args.json:
            write_or_fail(atomic_write_text, args.json, json.dumps(results, indent=1))
            print(f"\nwrote {args.json}", file=sys.stderr)

    written = f"; --json {args.json} is written only at the end" if args.json else ""
    run_program(parser.prog, body, kept=lambda: f"nothing was written{written}")


if __name__ == "__main__":
    main()
