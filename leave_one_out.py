"""Leave one archive out: train with each MIDI folder held out whole in turn, and name the composers
of the held-out folder's pieces, so that what is measured is the composer, not one archive's habits.

    python leave_one_out.py --midi_root ../shared/midi                      # the whole protocol
    python leave_one_out.py --holdouts piano-midi,welte-rolls --minutes 10  # some folders, shorter runs
    python leave_one_out.py --arm "balanced: --archive_balance=1"           # a lever against the recipe
    python leave_one_out.py --arm_data "m8k: --merges=8000" --arms all,m8k  # a lever of the data
    python leave_one_out.py --report_only --out_dir out/loao                # tabulate what is there

For each held-out folder and each arm, prepare.py makes the dataset (that folder held out, every copy
of its works elsewhere in val), train.py trains the recipe for --minutes (--parallel runs side by side,
one thread each), and evaluate.py scores every held-out piece under one comparison set: the composers
with at least --min_train_pieces training pieces in both the all and the baseline data. The arms:
  all       every --folders folder (the held-out one out)
  baseline  only the --baseline_folders (the held-out one out): what more archives buy
  NAME      --arm "NAME: --key=value ...": the all arm's data, the recipe with those overrides; with
            --arm_data "NAME: --flag=value ...", the all arm's folders prepared with those prepare.py flags
            (a dataset of its own; both may name one arm)
The report pairs each arm with the all arm on the same held-out pieces (a bootstrap over pieces,
seeds pooled per piece), per folder and over the folders' mean, by kind and per composer, with the
val split beside; out_dir/loao.md and loao.json. A finished step is never run again: run the same
command to go on after a stop.
"""
import json
import os
import re
from pathlib import Path

import numpy as np

from pianogpt.cli import CliError, Parser, fail, positive_float, positive_int, run_program
from pianogpt.devices import cpu_description
from pianogpt.files import atomic_write_text, read_jsonl, write_or_fail
from pianogpt.jobs import run_jobs

SIX = ("piano-midi", "classical-keyboard", "asap-performed", "welte-rolls", "dcml-scores", "kern-scores")
THREE = ("piano-midi", "classical-keyboard", "asap-performed")  # the folders before 2026-12-06
HOLDOUTS = ("piano-midi", "asap-performed", "welte-rolls", "dcml-scores", "kern-scores")
KINDS = ("sequenced", "performed")
RESAMPLES = 2000
MIN_KIND_PIECES = 10


# ----------------------------------------------------------------------------- the plan

def arm_folders(arm, args):
    return args.baseline_folders if arm == "baseline" else args.folders


def data_dir_of(args, arm, held):
    """Arms on the same folders share one dataset per held-out folder; an arm with prepare.py flags
    of its own (--arm_data) has its own."""
    name = arm if arm in args.arm_data or arm == "baseline" else "all"
    return os.path.join(args.data_root, f"{name}-minus-{held}")


def dataset_arms(args):
    """The arms whose datasets are prepared: all and baseline always (the comparison set reads both),
    and every arm with prepare.py flags of its own."""
    return ["all", "baseline"] + [arm for arm in args.arms if arm in args.arm_data]


def run_dir(args, held, arm, seed):
    return os.path.join(args.out_dir, held, f"{arm}-seed{seed}")


def prepare_job(args, arm, held):
    """(name, prepare.py's command, log) making the arm's dataset with `held` held out, or None if it is there
    (a CliError if what is there was prepared from other folders)."""
    data_dir = data_dir_of(args, arm, held)
    folders = [f for f in arm_folders(arm, args) if f != held] + [held]
    meta_path = os.path.join(data_dir, "meta.json")
    command = ["prepare.py", *[a for f in folders for a in ("--midi_dir", os.path.join(args.midi_root, f))],
               "--holdout", held, "--out_dir", data_dir, "--renditions", str(args.renditions),
               "--cache_dir", args.cache_dir, *args.arm_data.get(arm, [])]
    recorded = data_dir + ".command.json"
    if os.path.isfile(meta_path) and os.path.isfile(recorded):
        with open(recorded) as f:
            made_by = json.load(f)
        if made_by != command:
            raise CliError(f"{data_dir} was prepared by `{' '.join(made_by)}`, not `{' '.join(command)}`: remove it "
                           f"or pass another --data_root")
        return None
    if os.path.isfile(meta_path):
        with open(meta_path) as f:
            meta = json.load(f)
        there = sorted(os.path.basename(s) for s in (meta["source"] if isinstance(meta["source"], list) else [meta["source"]]))
        if there != sorted(folders) or meta.get("heldout_sources") != [held]:
            raise CliError(f"{data_dir} was prepared from {', '.join(there)} (held out: "
                           f"{', '.join(meta.get('heldout_sources') or ['none'])}), not from {', '.join(sorted(folders))} "
                           f"with {held} held out: remove it or pass another --data_root")
        if args.arm_data.get(arm):
            raise CliError(f"{data_dir} was not prepared with {' '.join(args.arm_data[arm])}: remove it or pass another "
                           f"--data_root")
        return None
    return f"prepare {os.path.basename(data_dir)}", command, data_dir + ".prepare.txt"


def train_command(args, held, arm, seed):
    return ["train.py", args.config, f"--data_dir={data_dir_of(args, arm, held)}",
            f"--out_dir={run_dir(args, held, arm, seed)}", f"--max_minutes={args.minutes}", f"--seed={seed}",
            *args.extra, *args.arms[arm]]


def train_job(args, held, arm, seed):
    """(name, train.py's command, log), or None where that very command has already finished
    (a CliError where the run there was trained with another command)."""
    out, command = run_dir(args, held, arm, seed), train_command(args, held, arm, seed)
    done = os.path.join(out, "done.json")
    if os.path.isfile(done):
        with open(done) as f:
            trained = json.load(f).get("command")
        if trained != command:
            raise CliError(f"{out} was trained by `{' '.join(trained or ['?'])}`, not `{' '.join(command)}`: "
                           f"pass another --out_dir, or remove it")
        return None
    return f"train {held} {arm} seed {seed}", command, os.path.join(out, "stdout.txt")


def scored_on(path):
    """The composers an eval.json compared, or None where there is none."""
    try:
        with open(path) as f:
            return sorted(json.load(f)["comparison_set"]["composers"])
    except (OSError, ValueError, KeyError):
        return None


def evaluate_job(args, held, arm, seed, compare):
    """(name, evaluate.py's command, log), or None where the run is not trained or already scored on compare."""
    out = run_dir(args, held, arm, seed)
    if not os.path.isfile(os.path.join(out, "done.json")) or scored_on(os.path.join(out, "eval.json")) == compare:
        return None
    command = ["evaluate.py", "--ckpt", os.path.join(out, "ckpt.pt"), "--samples_per_composer", "0",
               "--max_windows", str(args.max_windows), "--val_pieces", str(args.val_pieces), "--compare", ",".join(compare),
               "--json", os.path.join(out, "eval.json")]
    return f"evaluate {held} {arm} seed {seed}", command, os.path.join(out, "evaluate.txt")


def training_counts(data_dir):
    """{composer: training files} of a prepared dataset (its renditions not counted)."""
    counts = {}
    for piece in read_jsonl(os.path.join(data_dir, "pieces.jsonl")):
        if piece["split"] == "train" and not piece.get("rendition_of"):
            counts[piece["composer"]] = counts.get(piece["composer"], 0) + 1
    return counts


def comparison_set(args, held):
    """The composers with >= min_train_pieces training files in both the all and the baseline data:
    one set per held-out folder, whichever arms run, so that a piece is named among the same composers
    whatever data or lever trained the model (and a lever measured later meets the same set)."""
    sets = [{c for c, n in training_counts(data_dir_of(args, arm, held)).items() if n >= args.min_train_pieces}
            for arm in ("all", "baseline")]
    return sorted(set.intersection(*sets))


def mark_done(args, finished):
    """done.json beside each training that exited 0 (a stopped one is trained again from scratch)."""
    for name in finished:
        m = re.fullmatch(r"train (\S+) (\S+) seed (\d+)", name)
        if m:
            held, arm, seed = m.groups()
            write_or_fail(atomic_write_text, os.path.join(run_dir(args, held, arm, int(seed)), "done.json"),
                          json.dumps({"cpu": cpu_description(), "command": train_command(args, held, arm, int(seed))}))


def run_protocol(args, finished):
    # one at a time: each prepare uses every core
    steps = [prepare_job(args, arm, held) for held in args.holdouts for arm in dataset_arms(args)]
    run_jobs([s for s in steps if s], 1, finished)
    for _, command, _ in (s for s in steps if s):
        data_dir = command[command.index("--out_dir") + 1]
        if not os.path.isfile(os.path.join(data_dir, "meta.json")):
            raise CliError(f"prepare.py did not make {data_dir} (its log: {data_dir}.prepare.txt)")
        write_or_fail(atomic_write_text, data_dir + ".command.json", json.dumps(command))
    trainings = [train_job(args, held, arm, seed) for seed in args.seeds for held in args.holdouts for arm in args.arms]
    run_jobs([t for t in trainings if t], args.parallel, finished, args.threads)
    mark_done(args, finished)
    scorings = [evaluate_job(args, held, arm, seed, comparison_set(args, held))
                for held in args.holdouts for arm in args.arms for seed in args.seeds]
    run_jobs([s for s in scorings if s], args.parallel, finished, args.threads)


# ----------------------------------------------------------------------------- the report

def piece_table(args, held, arm, seed):
    """{path: (credit, composer, kind)} of the held-out pieces a run scored, its val identification
    and tokens read; None where the run has no eval.json yet."""
    out = run_dir(args, held, arm, seed)
    path = os.path.join(out, "eval.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        result = json.load(f)
    composers = {p["path"]: p["composer"] for p in read_jsonl(os.path.join(data_dir_of(args, arm, held),
                                                                           "pieces.jsonl"))}
    held_out = result["heldout_pieces"]
    kinds = {p: kind for kind, part in held_out.get("by_kind", {}).items()
             for p in part["identification"].get("paths", [])}
    ident = held_out["identification"]
    pieces = {p: (c, composers[p], kinds.get(p, "?")) for p, c in zip(ident["paths"], ident["credit"])}
    tokens = tokens_read(out)
    return {"pieces": pieces, "val": result["val_pieces"]["identification"]["accuracy"],
            "tokens": tokens, "chance": ident["chance"], "compared": sorted(result["comparison_set"]["composers"]),
            # per note and bars: the units every vocabulary shares (an eval.json before merges has neither)
            "nll_per_note": result.get("nll_per_note", {}).get("true"), "bars_per_context": result.get("bars_per_context"),
            "notes_read": tokens * result["notes_per_token"] if "notes_per_token" in result else None}


def tokens_read(out):
    """Training tokens the run read: iterations x tokens per iteration (from its log and config)."""
    import torch

    checkpoint = torch.load(os.path.join(out, "ckpt.pt"), map_location="cpu", weights_only=True)
    cfg = checkpoint["train_config"]
    return int(checkpoint["iter"]) * cfg["batch_size"] * cfg["grad_accum"] * cfg["block_size"]


def pooled_credit(tables):
    """{path: (mean credit over the seeds that scored it, composer, kind)}."""
    out = {}
    for table in tables:
        for path, (credit, composer, kind) in table["pieces"].items():
            out.setdefault(path, ([], composer, kind))[0].append(credit)
    return {p: (float(np.mean(c)), composer, kind) for p, (c, composer, kind) in out.items()}


def bootstrap(per_archive, seed=0):
    """Mean over archives of each archive's mean, and a 95 % interval from resampling the pieces of
    every archive: per_archive is a list of 1-d arrays (one value per piece)."""
    rng = np.random.default_rng(seed)
    point = float(np.mean([v.mean() for v in per_archive]))
    draws = np.mean([v[rng.integers(0, len(v), (RESAMPLES, len(v)))].mean(axis=1) for v in per_archive], axis=0)
    return point, float(np.quantile(draws, 0.025)), float(np.quantile(draws, 0.975))


def balanced(pieces):
    by = {}
    for credit, composer, _ in pieces.values():
        by.setdefault(composer, []).append(credit)
    return float(np.mean([np.mean(v) for v in by.values()])) if by else float("nan")


def fmt(point, low=None, high=None):
    if point is None or point != point:
        return "-"
    return f"{point:.3f}" if low is None else f"{point:.3f} [{low:.3f}, {high:.3f}]"


def mean_of(values):
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def archive_rows(args, held, runs):
    """One archive's figures per arm, and each arm against the all arm on the pieces both scored."""
    pooled = {arm: pooled_credit(runs[arm]) for arm in runs}
    rows = {}
    for arm, pieces in pooled.items():
        credit = np.array([c for c, _, _ in pieces.values()])
        row = {"pieces": len(pieces), "identification": bootstrap([credit]) if len(credit) else None,
               "balanced": balanced(pieces), "val": float(np.mean([r["val"] for r in runs[arm]])),
               "tokens": [r["tokens"] for r in runs[arm]], "chance": runs[arm][0]["chance"],
               "nll_per_note": mean_of(r.get("nll_per_note") for r in runs[arm]),
               "bars_per_context": mean_of(r.get("bars_per_context") for r in runs[arm]),
               "notes_read": [r.get("notes_read") for r in runs[arm]],
               "by_kind": {k: float(np.mean([c for c, _, kind in pieces.values() if kind == k]))
                           for k in KINDS if any(kind == k for _, _, kind in pieces.values())}}
        if arm != "all" and "all" in pooled:
            common = sorted(set(pieces) & set(pooled["all"]))
            diff = np.array([pooled["all"][p][0] - pieces[p][0] for p in common])
            row["all_minus_this"] = bootstrap([diff]) if len(diff) else None
            row["paired_pieces"] = len(common)
            row["all_minus_this_by_kind"] = {
                k: bootstrap([d]) for k in KINDS
                for d in [np.array([pooled["all"][p][0] - pieces[p][0] for p in common if pieces[p][2] == k])]
                if len(d)}
        rows[arm] = row
    return rows, pooled


def per_composer(pooled_by_archive, arm):
    """{composer: (credit summed, pieces)} over every held-out archive."""
    out = {}
    for pooled in pooled_by_archive.values():
        for credit, composer, _ in pooled.get(arm, {}).values():
            got, n = out.get(composer, (0.0, 0))
            out[composer] = (got + credit, n + 1)
    return out


def report(args):
    runs, tables = {}, {}
    for held in args.holdouts:
        for arm in args.arms:
            found = [t for t in (piece_table(args, held, arm, s) for s in args.seeds) if t]
            if found:
                runs.setdefault(held, {})[arm] = found
    if not runs:
        raise CliError(f"no scored run in {args.out_dir} yet (each run's eval.json)")
    pooled_by_archive = {}
    for held, by_arm in runs.items():
        tables[held], pooled_by_archive[held] = archive_rows(args, held, by_arm)
    cpu = cpu_description()
    lines = [f"Leave one archive out: `{os.path.relpath(args.config)}` {' '.join(args.extra)}, {args.minutes:g} min a run, seeds "
             f"{', '.join(map(str, args.seeds))}; {cpu}. Identification of whole held-out pieces among the composers "
             f"with >= {args.min_train_pieces} training pieces in both the all and the baseline data [95 % bootstrap over pieces].", "",
             "| held out | arm | pieces | compared (chance) | identification | balanced | sequenced | performed | "
             "all - arm [95 %] | val split | val NLL per note | bars per context | tokens read | notes read |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for held, rows in tables.items():
        for arm, row in rows.items():
            compared = len(runs[held][arm][0]["compared"])
            lines.append(
                f"| {held} | {arm} | {row['pieces']} | {compared} ({row['chance']:.3f}) | "
                f"{fmt(*row['identification']) if row['identification'] else '-'} | {fmt(row['balanced'])} | "
                f"{fmt(row['by_kind'].get('sequenced'))} | {fmt(row['by_kind'].get('performed'))} | "
                f"{fmt(*row['all_minus_this']) if row.get('all_minus_this') else ''} | {fmt(row['val'])} | "
                f"{fmt(row['nll_per_note'])} | {fmt(row['bars_per_context'])} | "
                f"{', '.join(f'{t / 1e6:.1f} M' for t in row['tokens'])} | "
                f"{', '.join(f'{n / 1e6:.1f} M' if n else '-' for n in row['notes_read'])} |")
    summary = mean_over_archives(tables, pooled_by_archive, args)
    lines += ["", f"Mean over the held-out archives (by kind: over the archives with >= {MIN_KIND_PIECES} pieces of it).",
              "", "| arm | archives | mean identification | all - arm, mean [95 %] | sequenced: all - arm | "
              "performed: all - arm |", "|---|---|---|---|---|---|"]
    for arm, s in summary.items():
        lines.append(f"| {arm} | {s['archives']} | {fmt(*s['identification'])} | "
                     f"{fmt(*s['all_minus_this']) if s.get('all_minus_this') else ''} | "
                     + " | ".join(fmt(*s['by_kind'][k]) if k in s.get('by_kind', {}) else '' for k in KINDS) + " |")
    lines += ["", "| composer | " + " | ".join(f"{arm}: named / pieces" for arm in args.arms) + " |",
              "|---|" + "---|" * len(args.arms)]
    by_arm = {arm: per_composer(pooled_by_archive, arm) for arm in args.arms}
    composers = by_arm["all" if "all" in args.arms else next(iter(args.arms))]
    for name in sorted(composers, key=lambda c: -composers[c][1]):
        cells = [f"{got:.1f} / {n}" if n else "-" for got, n in (by_arm[arm].get(name, (0.0, 0)) for arm in args.arms)]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    write_or_fail(atomic_write_text, os.path.join(args.out_dir, "loao.md"), text)
    write_or_fail(atomic_write_text, os.path.join(args.out_dir, "loao.json"), json.dumps(
        {"cpu": cpu, "config": args.config, "extra": args.extra, "minutes": args.minutes, "seeds": args.seeds,
         "arms": args.arms, "archives": tables, "mean": summary}, indent=1))
    print(text)
    print(f"wrote {args.out_dir}/loao.md and loao.json")


def mean_over_archives(tables, pooled_by_archive, args):
    """Per arm: the mean over the held-out archives it was scored on, and the paired mean against the
    all arm over the archives both were scored on."""
    out = {}
    for arm in args.arms:
        held = [h for h in tables if arm in tables[h] and tables[h][arm]["pieces"]]
        if not held:
            continue
        s = {"archives": len(held), "identification": bootstrap(
            [np.array([c for c, _, _ in pooled_by_archive[h][arm].values()]) for h in held])}
        paired = [h for h in held if arm != "all" and "all" in pooled_by_archive[h]]
        if paired:
            def diffs(h, kind=None):
                a, b = pooled_by_archive[h]["all"], pooled_by_archive[h][arm]
                return np.array([a[p][0] - b[p][0] for p in sorted(set(a) & set(b)) if kind in (None, b[p][2])])
            s["all_minus_this"] = bootstrap([diffs(h) for h in paired])
            # an archive speaks for a kind only with MIN_KIND_PIECES of it: a score corpus's one stray
            # performance would otherwise weigh as much as a whole archive of performances
            s["by_kind"] = {k: bootstrap(d) for k in KINDS
                            for d in [[x for x in (diffs(h, k) for h in paired) if len(x) >= MIN_KIND_PIECES]] if d}
        out[arm] = s
    return out


# ----------------------------------------------------------------------------- command line

def parse_arm(text, flag, parser, taken):
    """(name, overrides) of one "NAME: --key=value ..."."""
    name, colon, overrides = text.partition(":")
    name = name.strip()
    if not colon or not re.fullmatch(r"[\w.-]+", name) or not overrides.split() or name in taken:
        fail(parser.prog, f"{flag} {text!r}: expected NAME: --key=value ... (a new name, not all or baseline)")
    return name, overrides.split()


def parse_arms(texts, data_texts, parser):
    """({arm: train.py overrides}, {arm: prepare.py flags}): an --arm_data name that no --arm names
    trains the recipe as it is."""
    arms = {"all": [], "baseline": []}
    for text in texts:
        name, overrides = parse_arm(text, "--arm", parser, arms)
        arms[name] = overrides
    data = {}
    for text in data_texts:
        name, flags = parse_arm(text, "--arm_data", parser, {"all", "baseline", *data})
        data[name] = flags
        arms.setdefault(name, [])
    return arms, data


def folder_list(text, parser, flag, root):
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        fail(parser.prog, f"{flag} names no folder")
    absent = [n for n in names if not os.path.isdir(os.path.join(root, n))]
    if absent:
        present = sorted(p.name for p in Path(root).iterdir() if p.is_dir()) if os.path.isdir(root) else []
        fail(parser.prog, f"{flag}: {absent[0]} is not a folder of {root} (there: {', '.join(present) or 'nothing'})")
    return names


def main(argv=None):
    parser = Parser(description=__doc__.split("\n")[0])
    parser.add_argument("--midi_root", default="../shared/midi", help="the folder holding the MIDI folders")
    parser.add_argument("--folders", default=",".join(SIX), help="the all arm's folders")
    parser.add_argument("--baseline_folders", default=",".join(THREE), help="the baseline arm's folders")
    parser.add_argument("--holdouts", default=",".join(HOLDOUTS), help="the folders held out, one at a time")
    parser.add_argument("--arms", default="all,baseline", help="which arms to run: all, baseline and --arm names")
    parser.add_argument("--arm", action="append", default=[], metavar="NAME:OVERRIDES",
                        help='a lever: "NAME: --key=value ..." trained on the all arm\'s data')
    parser.add_argument("--arm_data", action="append", default=[], metavar="NAME:FLAGS",
                        help='a lever of the data: "NAME: --flag=value ...", prepare.py flags for that arm\'s own '
                             'dataset of the all arm\'s folders (e.g. "m8k: --merges=8000")')
    parser.add_argument("--config", default="config/remi_cpu.py", help="the recipe every arm trains")
    parser.add_argument("--extra", action="append", default=[], help="one more --key=value for every training")
    parser.add_argument("--minutes", type=positive_float, default=20.0, help="training budget of each run")
    parser.add_argument("--seeds", default="1337", help="comma-separated training seeds")
    parser.add_argument("--parallel", type=positive_int, default=2, help="runs side by side")
    parser.add_argument("--threads", type=int, default=1, help="OMP threads per run (0: torch's default)")
    parser.add_argument("--renditions", type=int, default=1, help="prepare.py --renditions")
    parser.add_argument("--min_train_pieces", type=positive_int, default=30)
    parser.add_argument("--max_windows", type=positive_int, default=2, help="evaluate.py --max_windows")
    parser.add_argument("--val_pieces", type=int, default=300, help="evaluate.py --val_pieces: val pieces scored a run")
    parser.add_argument("--data_root", default="data/loao")
    parser.add_argument("--cache_dir", default="data/.encode-cache", help="prepare.py --cache_dir")
    parser.add_argument("--out_dir", default="out/loao")
    parser.add_argument("--report_only", action="store_true", help="only tabulate the runs already scored")
    args = parser.parse_args(argv)
    args.folders = folder_list(args.folders, parser, "--folders", args.midi_root)
    args.baseline_folders = folder_list(args.baseline_folders, parser, "--baseline_folders", args.midi_root)
    args.holdouts = folder_list(args.holdouts, parser, "--holdouts", args.midi_root)
    outside = [h for h in args.holdouts if h not in args.folders]
    if outside:
        fail(parser.prog, f"--holdouts: {outside[0]} is not one of --folders ({', '.join(args.folders)})")
    table, args.arm_data = parse_arms(args.arm, args.arm_data, parser)
    names = [n.strip() for n in args.arms.split(",") if n.strip()]
    unknown = [n for n in names if n not in table]
    if unknown or not names:
        fail(parser.prog, f"--arms: unknown arm {unknown[0] if unknown else ''!r}; valid: {', '.join(table)}")
    args.arms = {n: table[n] for n in names}
    try:
        args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        fail(parser.prog, f"--seeds expects comma-separated integers, got {args.seeds!r}")
    if not os.path.isfile(args.config):
        fail(parser.prog, f"config file not found: {args.config}")
    for key in ("midi_root", "config", "data_root", "cache_dir", "out_dir"):  # the children run in the project root
        setattr(args, key, os.path.abspath(getattr(args, key)))
    finished = []

    def body():
        if not args.report_only:
            run_protocol(args, finished)
        report(args)

    def kept():
        return (f"the running steps were stopped (a training keeps the checkpoint train.py saved on the signal, and "
                f"is trained again from scratch); run the same command to go on, or --report_only to tabulate")

    run_program(parser.prog, body, kept)


if __name__ == "__main__":
    main()
