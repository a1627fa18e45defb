"""evaluate.py's report: its results dict printed for a reader."""

from pianogpt.data.dataset import TEXTURES
from pianogpt.measures.identification import KIND_NAMES
from pianogpt.measures.infilling import INFILL_BARS
from pianogpt.measures.samples import accuracy_on


def print_pieces(title, p):
    n, g, ident = p["nll"], p["nll_gaps"], p["identification"]
    print(f"\n{title}: {p['pieces']} whole pieces ({p['tokens_scored']:,} tokens scored), 95 % bootstrap over pieces")
    for key in ("true", "uncond", "wrong"):
        print(f"  NLL {key:7s} {n[key]['mean']:.4f}  [{n[key]['low']:.4f}, {n[key]['high']:.4f}]")
    for key, label in (("uncond_minus_true", "uncond - true"), ("wrong_minus_uncond", "wrong - uncond")):
        print(f"  {label:15s} {g[key]['mean']:+.4f}  [{g[key]['low']:+.4f}, {g[key]['high']:+.4f}]")
    here = (f", always {ident['commonest_here']} {ident['commonest_here_baseline']:.3f}"
            if ident["commonest_here"] != ident["commonest_composer"] else "")
    print(f"  identification {ident['accuracy']:.3f} [{ident['accuracy_interval'][0]:.3f}, "
          f"{ident['accuracy_interval'][1]:.3f}] over {ident['pieces']} pieces (chance {ident['chance']:.3f}, "
          f"always {ident['commonest_composer']} {ident['commonest_baseline']:.3f}{here}); balanced over its "
          f"{ident['composers_here']} composers {ident['balanced_accuracy']:.3f} (any constant guess: "
          f"{1 / max(1, ident['composers_here']):.3f})")
    for name, other in list(p.get("identification_by_tokens", {}).items())[1:]:
        print(f"  identification scored on {name} tokens {other['accuracy']:.3f} [{other['accuracy_interval'][0]:.3f}, "
              f"{other['accuracy_interval'][1]:.3f}], balanced {other['balanced_accuracy']:.3f}")
    for true, row in sorted(ident["confusion"].items()):
        guesses = ", ".join(f"{name} {count}" for name, count in sorted(row.items(), key=lambda kv: -kv[1])[:4])
        print(f"    {true[:18]:18s} {row.get(true, 0):3d}/{sum(row.values()):<3d} -> {guesses}")
    for kind, part in p.get("by_kind", {}).items():
        if len(p["by_kind"]) > 1:
            print_pieces(f"{title}, {kind} only", part)
    for source, part in p.get("by_source", {}).items():
        print_pieces(f"{title} from {source}", part)


def print_report(r):
    print(f"\n{r['ckpt']} on {r['data_dir']}: {r['num_windows']} val windows of {r['window']} tokens")
    if r.get("score_tokens", "all") != "all":
        print(f"whole pieces are scored on their {r['score_tokens']} tokens only (--score_tokens)")
    print("\nNLL (nats/token)        true     uncond   wrong")
    print(f"  all windows          {r['nll']['true']:.4f}   {r['nll']['uncond']:.4f}   {r['nll']['wrong']:.4f}"
          f"   (perplexity {r['perplexity']['true']:.2f} / {r['perplexity']['uncond']:.2f} / {r['perplexity']['wrong']:.2f})")
    if "nll_per_note" in r:
        n = r["nll_per_note"]
        print(f"  per note             {n['true']:.4f}   {n['uncond']:.4f}   {n['wrong']:.4f}   (nats per note: every "
              f"vocabulary alike; {r['notes_per_token']:.3f} notes per token, {r['bars_per_context']:.1f} bars per context)")
    b = r["baselines"]
    orders = " / ".join(f"{v:.4f}" for v in b["witten_bell_nll_by_order"].values())
    print(f"\nbaselines: unigram entropy of train tokens {b['unigram_entropy_train']:.4f}; on these targets unigram "
          f"{b['unigram_nll']:.4f}, Witten-Bell orders {', '.join(b['witten_bell_nll_by_order'])} {orders}")
    print(f"  the model's window NLL is {b['model_over_best_ngram']:.3f}x the best n-gram "
          f"(order {b['best_ngram_order']}, {b['best_ngram_nll']:.4f})")
    c = r["comparison_set"]
    print(f"\ncomparison set ({c['rule']}): " + ", ".join(f"{k} {v}" for k, v in c["composers"].items()))
    if "heldout_pieces" in r:
        h = r["heldout_pieces"]
        print_pieces(f"CROSS-SOURCE: held-out sources {', '.join(h['sources'])} (never trained on, nor their works; "
                     f"{h['works']} works, at most {h['per_work']} piece each)", h)
    print_pieces("val pieces", r["val_pieces"])
    if "real_dir" in r:
        print_pieces(f"--real_dir {r['real_dir']['dir']}", r["real_dir"])
        if r["real_dir"]["ignored"]:
            print(f"  ignored: {len(r['real_dir']['ignored'])} ({', '.join(list(r['real_dir']['ignored'])[:6])} ...)")
    if "probes" in r:
        print_probes(r)
    if "infill" in r:
        print_infill(r["infill"])
    if "judge" not in r:
        return
    j, cp = r["judge"], r["copying"]
    print(f"\noutside judge (note statistics, never sees the model): {j['accuracy_on_real_val']:.3f} on "
          f"{j['val_excerpts']} real val excerpts, {j['balanced_accuracy_on_real_val']:.3f} balanced over their "
          f"{j['real_val_composers']} composers (chance {j['chance']:.3f}); samples are balanced by design")
    for kind, part in j.get("by_kind", {}).items():
        print(f"  on {kind} val excerpts: {part['accuracy_on_real_val']:.3f} ({part['val_excerpts']} excerpts), "
              f"{part['balanced_accuracy_on_real_val']:.3f} balanced over their {len(part['composers'])} composers")
    print(f"copying: {cp['rule']}; real val excerpts median {cp['real_val_excerpts']['median']:.0f}, "
          f"max {cp['real_val_excerpts']['max']}")
    print_samples(r)
    print("  * self-judged: the model as a Bayes classifier of its own samples; a sanity check of guidance, "
          "not evidence of style")
    print_like_for_like(r["samples"], j.get("by_kind", {}))
    print_fine_tuned_copies(r["samples"], r["comparison_set"].get("fine_tuned", []))


def print_samples(r):
    """The samples' table: one row per guidance (and rendering), the real val excerpts, their spread."""
    print("\nsamples              judge   self-judged*  longest copy  notes/s  pitch range  pc H (bits)  chord  grammar")
    for g, s in r["samples"].items():
        is_real = "judge_accuracy" not in s
        label = g if is_real else f"g {g}"
        judged = "   -   " if is_real else f"{s['judge_accuracy']:.3f}  "
        self_judged = "     -      " if is_real else f"{s['self_judged_adherence']:.3f}       "
        copy = "     -      " if is_real else f"{s['longest_copied_run']:5d}       "
        print(f"  {label:18s} {judged} {self_judged} {copy} {s['notes_per_s']:6.2f}   {s['pitch_range']:6.1f}"
              f"       {s['pitch_class_entropy']:.3f}      {s['chord_size']:.2f}   {s['grammar_error_rate']:.4f}")
    spread = r.get("real_val_spread", {})
    if spread:
        print("  real 5-95 %                                           " + "  ".join(
            f"{spread[k][0]:.1f}-{spread[k][1]:.1f}" for k in ("notes_per_s", "pitch_range", "pitch_class_entropy",
                                                               "chord_size")))


def print_probes(r):
    """Identification with each habit removed, beside none removed: val (the model's own sources)
    and the held-out sources, overall and by kind."""
    slices = [("val", "val_pieces"), ("heldout", "heldout_pieces")]
    slices = [(short, key) for short, key in slices if key in r]
    kinds = sorted({k for _, key in slices for k in r[key].get("by_kind", {})})

    def cells(part):
        row = [part["identification"]["accuracy"]]
        return row + [part.get("by_kind", {}).get(k, {}).get("identification", {}).get("accuracy", float("nan"))
                      for k in kinds]

    header = [f"{short}{'' if not k else ' ' + k}" for short, _ in slices for k in ("", *kinds)]
    print("\nfingerprint probes: identification with one habit removed from every piece")
    print("  " + f"{'probe':22s}" + "".join(f"{h:>20s}" for h in header))
    rows = [("(none)", [r[key] for _, key in slices])]
    rows += [(name, [probe[short] for short, _ in slices]) for name, probe in r["probes"].items()]
    for name, parts in rows:
        print("  " + f"{name:22s}" + "".join(f"{v:20.3f}" for part in parts for v in cells(part)))


def print_infill(f):
    """The infilling measures: the real middle's NLL both ways, and the takes' verdicts and joins."""
    if not f.get("gaps") and not f.get("takes_per_way"):
        print(f"\ninfilling: no val piece has a gap of {INFILL_BARS} bars that fits this model's context with music "
              "on both sides")
        return
    if "nll" in f:
        print(f"\ninfilling: {f['gaps']} real gaps of {f['bars']} bars in val pieces, NLL of the real middle "
              "(nats/token, 95 % bootstrap over gaps)")
        for way, label in (("infill", "music after it visible"), ("continue", "continued from before only")):
            if way in f["nll"]:
                n = f["nll"][way]
                print(f"  {label:28s} {n['mean']:.4f}  [{n['low']:.4f}, {n['high']:.4f}]")
        if "infill_minus_continue" in f:
            d = f["infill_minus_continue"]
            print(f"  {'difference':28s} {d['mean']:+.4f}  [{d['low']:+.4f}, {d['high']:+.4f}]")
    if "takes_per_way" in f:
        print(f"\ninfilling takes: {f['takes_per_way']} gaps, each in the style of one compared composer, guidance "
              f"{f['guidance']:g}; the outside judge on excerpts of {f['judge_excerpt_tokens']} tokens names the real "
              f"gaps' composer {f['real_gaps_judge_accuracy']:.3f} of the time")
        for way in ("infill", "continue"):
            if way in f:
                t, j = f[way], f[way]["judge_accuracy"]
                print(f"  {way:9s} judge {j['mean']:.3f} [{j['low']:.3f}, {j['high']:.3f}] (chance {t['chance']:.3f}), "
                      f"reached the bar line where the piece resumes {t['closed']:.3f}, grammar errors at the seams "
                      f"{t['seam_grammar_error_rate']:.4f}")


def print_fine_tuned_copies(samples, fine_tuned):
    """A composer taught from a few pieces may copy them: its samples' longest copied run beside the
    other composers' (both against this dataset's training pieces)."""
    for label, s in samples.items():
        runs = s.get("longest_copied_run_by_composer", {})
        taught = [runs[c] for c in fine_tuned if c in runs]
        others = [n for c, n in runs.items() if c not in fine_tuned]
        if taught:
            print(f"  g {label}: longest copied run of the fine-tuned composers' samples {max(taught)}, of the "
                  f"other composers' {max(others, default=0)}")


def print_like_for_like(samples, judge_by_kind):
    """Samples rendered as one kind against real val excerpts of that kind, on the composers those
    excerpts have: the samples' accuracy (balanced by design) beside the real excerpts' balanced one."""
    for label, s in samples.items():
        kind = KIND_NAMES.get(TEXTURES.get(label.split(" ")[-1]))
        real = judge_by_kind.get(kind)
        if "judge_confusion" not in s or real is None:
            continue
        print(f"  g {label} on the {len(real['composers'])} composers of the real {kind} "
              f"val excerpts: samples {accuracy_on(s['judge_confusion'], real['composers']):.3f}, "
              f"real {real['balanced_accuracy_on_real_val']:.3f} balanced")
