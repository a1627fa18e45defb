"""Training-recipe ablation: each lever alone and the chosen combination against a baseline,
at the same wall-clock budget on the same machine; a Markdown table and a PNG plot.

    python ablate.py --data_dir data/classical --minutes 3 --parallel 2        # every recipe
    python ablate.py --recipes baseline,rope,muon --minutes 1                  # a subset
    python ablate.py --recipes wide --custom "wide: --n_embd=256 --n_head=4"   # a recipe of your own
    python ablate.py --report_only --out_dir out/ablation                      # re-draw from the logs

Each recipe is `python train.py <config> --key=value ...` with max_minutes set, so every run
ends its learning-rate schedule inside the same budget; --parallel runs share the cores (one
thread each with --threads 1), which is fair between recipes as long as every run has the
same company. Writes out_dir/<recipe>/ (the runs), out_dir/ablation.json, out_dir/ablation.md
and out_dir/ablation.png (val NLL against minutes, one line per recipe).
"""
import json
import os

from pianogpt.cli import CliError, Parser, fail, positive_float, positive_int, run_program
from pianogpt.jobs import run_jobs
from pianogpt.files import atomic_write_bytes, atomic_write_text, read_jsonl, write_or_fail
from pianogpt.output.pictures import chart, png_bytes


# the CPU recipe before the levers (config/remi_cpu_baseline.py) is the baseline; each lever is its overrides
LEVERS = {
    "baseline": [],
    "rope": ["--positions=rope"],
    "rmsnorm": ["--norm=rmsnorm"],
    "relu2": ["--mlp=relu2"],
    "qk_norm": ["--qk_norm=True"],
    "untied": ["--tie_head=False"],
    "muon": ["--optimizer=muon"],
    "head64": ["--n_head=2"],  # head size 64: what AVX512 / AMX tiles and the CPU flash kernel like
}
CHOSEN = ["config/remi_cpu.py"]  # the shipped recipe: its own config file instead of the baseline's
RECIPES = {**LEVERS, "chosen": CHOSEN}


def recipe_job(name, overrides, args):
    """(name, train.py's command line, its log) of one recipe."""
    out = os.path.join(args.out_dir, name)
    config = args.config
    if overrides and overrides[0].endswith(".py"):
        config, overrides = overrides[0], overrides[1:]
    command = ["train.py", config, f"--data_dir={args.data_dir}", f"--out_dir={out}", f"--max_minutes={args.minutes}",
               "--max_iters=1000000", f"--eval_interval={args.eval_interval}", "--save_every_min=0", *args.extra,
               *overrides]
    return name, command, os.path.join(out, "stdout.txt")


def summarise(name, out_dir, overrides):
    """Final val NLL, its curve against minutes, and mean training tokens/s of one run."""
    records = read_jsonl(os.path.join(out_dir, name, "log.jsonl"))
    evals = [r for r in records if r.get("val_loss") is not None]
    speeds = [r["tokens_per_s"] for r in records if "tokens_per_s" in r][1:]  # the first includes warm-up
    if not evals:
        return None
    return {"recipe": name, "overrides": overrides, "final_val_nll": evals[-1]["val_loss"],
            "best_val_nll": min(r["val_loss"] for r in evals), "minutes": evals[-1].get("minutes"),
            "iters": evals[-1]["iter"], "tokens_per_s": round(sum(speeds) / len(speeds)) if speeds else None,
            "curve": [(r.get("minutes", 0.0), r["val_loss"]) for r in evals]}


def report(names, args):
    rows = [row for row in (summarise(name, args.out_dir, args.table[name]) for name in names) if row]
    if not rows:
        raise CliError(f"no finished runs in {args.out_dir}")
    base = next((r for r in rows if r["recipe"] == "baseline"), None)
    lines = [f"| recipe | overrides | final val NLL | vs baseline | tokens/s | iterations |", "|---|---|---|---|---|---|"]
    for r in rows:
        delta = f"{r['final_val_nll'] - base['final_val_nll']:+.3f}" if base else ""
        lines.append(f"| {r['recipe']} | {' '.join(o.lstrip('-') for o in r['overrides']) or '(today)'} | "
                     f"{r['final_val_nll']:.3f} | {delta} | {r['tokens_per_s'] or ''} | {r['iters']} |")
    table = "\n".join(lines) + "\n"
    series = [(r["recipe"].upper().replace("_", " "), [m for m, _ in r["curve"]], [v for _, v in r["curve"]])
              for r in rows]
    # the first evaluation (untrained, ~6 nats) would squash every later difference: start at the second
    series = [(label, xs[1:], ys[1:]) for label, xs, ys in series]
    image = chart(series, f"VAL NLL ({os.path.basename(os.path.normpath(args.data_dir)).upper()})", "MINUTES",
                  width=900, height=520)
    write_or_fail(atomic_write_bytes, os.path.join(args.out_dir, "ablation.png"), png_bytes(image))
    write_or_fail(atomic_write_text, os.path.join(args.out_dir, "ablation.md"), table)
    write_or_fail(atomic_write_text, os.path.join(args.out_dir, "ablation.json"),
                  json.dumps({"data_dir": args.data_dir, "minutes": args.minutes, "config": args.config,
                              "extra": args.extra, "recipes": rows}, indent=1))
    print(table)
    print(f"wrote {args.out_dir}/ablation.md, ablation.json, ablation.png")


def main(argv=None):
    parser = Parser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="config/remi_cpu_baseline.py", help="the baseline recipe's config file")
    parser.add_argument("--data_dir", default="data/classical")
    parser.add_argument("--out_dir", default="out/ablation")
    parser.add_argument("--recipes", default=",".join(RECIPES), help=f"comma-separated subset of {','.join(RECIPES)}")
    parser.add_argument("--minutes", type=positive_float, default=3.0, help="training wall-clock budget per recipe")
    parser.add_argument("--parallel", type=positive_int, default=1, help="runs at the same time")
    parser.add_argument("--threads", type=int, default=0, help="OMP threads per run (0: torch's default)")
    parser.add_argument("--eval_interval", type=positive_int, default=100)
    parser.add_argument("--report_only", action="store_true", help="only re-read the logs and write the report")
    parser.add_argument("--extra", action="append", default=[], help="one more --key=value for every recipe")
    parser.add_argument("--custom", action="append", default=[], metavar="NAME:OVERRIDES",
                        help='a recipe of your own, e.g. "wide: --n_embd=256 --n_head=4" (or "NAME: config/x.py ...")')
    args = parser.parse_args(argv)
    args.table = dict(RECIPES)
    for text in args.custom:
        name, colon, overrides = text.partition(":")
        if not colon or not name.strip() or not overrides.split():
            fail(parser.prog, f"--custom {text!r}: expected NAME: --key=value ...")
        args.table[name.strip()] = overrides.split()
    names = [n.strip() for n in args.recipes.split(",") if n.strip()]
    unknown = [n for n in names if n not in args.table]
    if unknown:
        fail(parser.prog, f"unknown recipe {unknown[0]!r}; valid recipes: {', '.join(args.table)}")
    if not os.path.isfile(args.config):
        fail(parser.prog, f"config file not found: {args.config}")
    finished = []

    def body():
        if not args.report_only:
            run_jobs([recipe_job(name, args.table[name], args) for name in names], args.parallel, finished,
                     args.threads)
        report(names, args)

    def kept():
        done = ", ".join(finished) or "none"
        return (f"the running recipes were stopped (each keeps the checkpoint train.py saved on the signal); "
                f"complete: {done}; `python ablate.py --report_only --out_dir {args.out_dir}` tabulates what is there")

    run_program(parser.prog, body, kept)


if __name__ == "__main__":
    main()
