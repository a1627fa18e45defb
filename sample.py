"""Generate piano MIDI in a composer's style from a checkpoint, and hear it.

    python sample.py --composer Chopin --guidance 5 --num_samples 2
    python sample.py --composer chopin --guidance 0,1,5           # the same seed at three guidances
    python sample.py --composer "chopin:0.7,bach:0.3"             # a mix of styles
    python sample.py --composer_id 42 --prompt start.mid --prompt_tokens 256
    python sample.py --infill mine.mid --bars 9-12 --composer chopin --num_samples 3   # rewrite bars 9-12
    python sample.py --render real.mid                            # a real piece through the same voice
    python sample.py --list_composers

Writes samples/<name>.mid, .wav (audio), .png (a piano roll) and .json (settings, seed, token
ids), and rewrites samples/index.html: a page listing every sample in the folder.
The tokenizer and composer names come from the checkpoint itself.
"""
import argparse
import difflib
import json
import math
import os
import sys
import time
from dataclasses import dataclass

import torch

from pianogpt.output.audio import SOUNDFONT_ENV, SOUNDFONT_FOLDERS, find_soundfont
from pianogpt.checkpoints import load_trained
from pianogpt.cli import CliError, Parser, fraction_in, non_negative_int, positive_float, positive_int, run_program
from pianogpt.files import atomic_write_text
from pianogpt.data.dataset import TEXTURES, UNCONDITIONAL
from pianogpt.devices import compile_problem, device_type_of, require_compile, resolve_device, resolve_dtype
from pianogpt.output.outputs import (keep_sample, keep_whole, kept_line, make_out_dir, refresh_gallery, write_gallery,
                              write_score)
from pianogpt.generation.infill import bar_ticks, bars_of_seconds, plan_span, seconds_at, splice, write_middles
from pianogpt.data.remi import (CHORD_LIMIT, GUIDANCE_MODES, RemiGrammar, bar_line_seconds,
                          decode_sample, encode_score, guidance_types, merge_piano_tracks, piece_kind)
from pianogpt.generation.engine import generate


# ----------------------------------------------------------------------------- composers


def resolve_composer(composers, name=None, composer_id=None):
    """(id, name) from an id or a case-insensitive exact / prefix / substring name."""
    by_id = {i: n for n, i in composers.items()}
    if composer_id is not None:
        if composer_id not in by_id:
            raise CliError(f"--composer_id {composer_id} is out of range: valid ids are 0..{max(by_id)} "
                           f"(see --list_composers)")
        return composer_id, by_id[composer_id]
    wanted = name.lower().strip()
    names = [n for n in composers if n != UNCONDITIONAL]
    for rule in (lambda n: n.lower() == wanted, lambda n: n.lower().startswith(wanted), lambda n: wanted in n.lower()):
        matches = [n for n in names if rule(n)]
        if len(matches) == 1:
            return composers[matches[0]], matches[0]
        if len(matches) > 1:
            raise CliError(f"--composer {name!r} is ambiguous: {', '.join(sorted(matches)[:8])}")
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.4) or difflib.get_close_matches(
        wanted, [n.lower() for n in names], n=3, cutoff=0.4)
    hint = f"; closest: {', '.join(close)}" if close else ""
    raise CliError(f"unknown composer {name!r}{hint} (see --list_composers)")


def resolve_mix(composers, text):
    """{id: weight} from "chopin:0.7,bach:0.3" (weights > 0, scaled to sum to 1), and a name
    for it ("Chopin 0.7 + Bach 0.3")."""
    mix = {}
    for part in text.split(","):
        name, _, weight = part.rpartition(":")
        try:
            value = float(weight)
        except ValueError:
            raise CliError(f"--composer {text!r}: {part!r} is not NAME:WEIGHT") from None
        if not value > 0 or not math.isfinite(value):
            raise CliError(f"--composer {text!r}: weights must be > 0, got {weight}")
        composer_id, composer_name = resolve_composer(composers, name)
        mix[composer_id] = mix.get(composer_id, 0.0) + value
    total = sum(mix.values())
    mix = {i: w / total for i, w in mix.items()}
    by_id = {i: n for n, i in composers.items()}
    return mix, " + ".join(f"{by_id[i]} {w:.2g}" for i, w in mix.items())


def condition_tensor(condition, num_samples, n_composers, device):
    """Composer ids [B] for one composer, or weights [B, n_composers] for a mix {id: weight}."""
    if isinstance(condition, dict):
        weights = torch.zeros(num_samples, n_composers, device=device)
        for i, w in condition.items():
            weights[:, i] = w
        return weights
    return torch.full((num_samples,), condition, dtype=torch.long, device=device)


# ----------------------------------------------------------------------------- outputs


def load_prompt(path, tokenizer, prompt_tokens, bos_id):
    from symusic import Score

    try:
        score = Score(path)
    except Exception as e:
        raise CliError(f"cannot read --prompt {path}: {type(e).__name__}: {e}") from None
    ids, reason = encode_score(tokenizer, score)
    if ids is None:
        raise CliError(f"--prompt {path} has nothing to continue ({reason})")
    return [bos_id] + ids[:prompt_tokens].tolist()


# ----------------------------------------------------------------------------- main


def parse_args(argv):
    parser = Parser(description=__doc__.split("\n")[0])
    parser.add_argument("--ckpt", default="out/ckpt.pt", help="checkpoint (ckpt.pt or best.pt)")
    who = parser.add_mutually_exclusive_group()
    who.add_argument("--composer_id", type=non_negative_int, help="composer id (0 = unconditional)")
    who.add_argument("--composer", help="composer name (case-insensitive, unique prefix or substring), or a mix of "
                     "styles: \"chopin:0.7,bach:0.3\"")
    parser.add_argument("--list_composers", action="store_true", help="print the checkpoint's composers and exit")
    parser.add_argument("--guidance", type=guidance_list, default=[5.0],
                        help="classifier-free guidance (1 = off); a list such as 0,1,3 makes one version per value "
                             "from the same seed, to hear what guidance does")
    parser.add_argument("--guidance_mode", default="within_types", choices=GUIDANCE_MODES,
                        help="within_types: guidance picks within each token type (which pitch, duration, position) "
                             "while how often each type comes (another note in the chord, or move on) stays the "
                             "conditional model's; plain: guidance on every logit (thickens textures past real music)")
    parser.add_argument("--temperature", type=positive_float, default=0.9)
    parser.add_argument("--top_k", type=non_negative_int, default=40, help="0 = off")
    parser.add_argument("--top_p", type=fraction_in(0, 1), default=0.95, help="nucleus mass in (0, 1]")
    parser.add_argument("--texture", "--render_as", dest="texture", default="any",
                        choices=("any",) + tuple(TEXTURES),
                        help="the texture of the new piece, for a model trained with a kind condition (n_kinds=3): "
                             "a score (metronomic, as written) or a performance (as played: rubato, pedal, dynamics); "
                             "any: the model's own mix (--render_as: its earlier name)")
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--bars", type=number_or_span(positive_int, MAX_BARS), help="length in bars: stop at the bar "
                        f"line that ends the N-th bar after the prompt (at most {MAX_BARS}); with --infill, the bars "
                        "to rewrite: 9-12 (or 9: one bar)")
    length.add_argument("--seconds", type=number_or_span(positive_float, MAX_SECONDS), help="length in time: stop at "
                        f"the first bar line at least this many seconds into the piece (at most {MAX_SECONDS}); with "
                        "--infill, the time to rewrite: 20-30 (the bars that open in it)")
    parser.add_argument("--max_new_tokens", type=positive_int, default=None,
                        help=f"length in tokens (default {DEFAULT_NEW_TOKENS}); with --bars or --seconds, the most "
                             f"tokens a sample may take to get there (default {MAX_TOKENS_FOR_A_LENGTH})")
    parser.add_argument("--num_samples", type=positive_int, default=1)
    parser.add_argument("--seed", type=non_negative_int, default=1337)
    parser.add_argument("--prompt", help="a .mid to continue (default: start from BOS)")
    parser.add_argument("--infill", metavar="FILE.mid", help="rewrite a span of this piece (--bars 9-12 or --seconds "
                        "20-30) in the composer's style, joining the music after it; every note outside the span is "
                        "kept (a model trained with infill_share > 0)")
    parser.add_argument("--prompt_tokens", type=positive_int, default=128, help="tokens of --prompt to keep")
    parser.add_argument("--constrained", default=True, action=argparse.BooleanOptionalAction,
                        help="mask tokens that break REMI's grammar (default on)")
    add_output_flags(parser)
    return parser, parser.parse_args(argv)


def add_output_flags(parser):
    """Where and how the samples are written, the device they are drawn on, and the other modes."""
    parser.add_argument("--out_dir", default="samples")
    parser.add_argument("--name", default=None, help="file name stem (default: <composer>_<seed>); a name taken by "
                        "an earlier or concurrent run gets -2, -3, ... instead of overwriting it")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"))
    parser.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"),
                        help="weights and KV cache precision while sampling (auto: bf16 on a GPU or CPU that has it "
                             "natively, else float32; float32 for a model of at most 2M parameters on a CPU)")
    parser.add_argument("--compile", default="auto", choices=("auto", "on", "off"),
                        help="torch.compile the one-token decode step (CUDA graphs on a GPU); auto: where the compile "
                             "time pays back within --max_new_tokens on this device (docs/LOG.md, 'Sampling speed')")
    parser.add_argument("--audio", default=True, action=argparse.BooleanOptionalAction,
                        help="write <name>.wav beside every .mid (default on): through --soundfont, else a SoundFont "
                             f"named by ${SOUNDFONT_ENV} or found in {', '.join(SOUNDFONT_FOLDERS)}, else the built-in "
                             "numpy piano voice")
    parser.add_argument("--soundfont", help="a .sf2/.sf3 file for the audio, or 'builtin' for the built-in voice")
    parser.add_argument("--serve", action="store_true", help="start the studio: a local web page to pick composers, "
                        "generate, listen and download (the other flags are its defaults)")
    parser.add_argument("--host", default="127.0.0.1", help="--serve: the address to listen on (default: this "
                        "machine only; 0.0.0.0 opens it to the network)")
    parser.add_argument("--port", type=non_negative_int, default=8000, help="--serve: the port (0: any free one)")
    parser.add_argument("--render", metavar="FILE.mid", help="render a MIDI file (real music, to compare) through the "
                        "same voice into --out_dir, and exit; needs no checkpoint")


DEFAULT_NEW_TOKENS = 2048
MAX_TOKENS_FOR_A_LENGTH = 16384
MAX_BARS, MAX_SECONDS = 1000, 3600


def number_or_span(parse, most):
    """A flag's type: one number (a length), or two joined by '-' (a span of --infill), each at most `most`."""
    def parse_number(text):
        value = parse(text)
        if value > most:
            raise argparse.ArgumentTypeError(f"at most {most}, got {text}")
        return value

    def parse_it(text):
        if "-" not in text.strip("-"):
            return parse_number(text)
        first, last = (parse_number(part) for part in text.split("-", 1))
        if last < first:
            raise argparse.ArgumentTypeError(f"a span runs forward: got {text}")
        return first, last
    return parse_it


def guidance_list(text):
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expects numbers >= 0 separated by commas, got {text!r}") from None
    if not values or any(not (v >= 0 and math.isfinite(v)) for v in values):
        raise argparse.ArgumentTypeError(f"expects numbers >= 0 separated by commas, got {text!r}")
    return values


class StopAtBarLine:
    """Ends every sample at a bar line: once `bars` bars after the prompt are complete, or at the
    first bar line `seconds` or more into the piece. cut[row]: the tokens that row keeps (its
    closing bar line and anything after it are dropped)."""

    def __init__(self, tokenizer, bars=None, seconds=None):
        self.tokenizer, self.bars, self.seconds = tokenizer, bars, seconds
        self.bar_id = tokenizer.vocab["Bar_None"]
        self.bar_lines, self.cut = {}, {}

    def __call__(self, seq):
        for row, token in enumerate(seq[:, -1].tolist()):
            if row in self.cut or token != self.bar_id:
                continue
            self.bar_lines[row] = self.bar_lines.get(row, 0) + 1
            if self.reached(row, seq[row]):
                self.cut[row] = seq.size(1) - 1
        return len(self.cut) == seq.size(0)

    def reached(self, row, ids):
        if self.bars is not None:  # the first bar line opens bar 1 (or closes the prompt's last bar)
            return self.bar_lines[row] > self.bars
        return bar_line_seconds(self.tokenizer, ids.tolist()) >= self.seconds


@dataclass
class Draw:
    """How every token of a spec is drawn: temperature and filters, guidance, the seed, the grammar mask."""
    temperature: float = 0.9
    top_k: int = 40
    top_p: float = 0.95
    guidance: float = 5.0
    seed: int = 1337
    constrained: bool = True
    guidance_mode: str = "within_types"

    @classmethod
    def of(cls, args, guidance):
        """The command line's (or a studio job's) settings, at one of its guidance values."""
        return cls(args.temperature, args.top_k, args.top_p, guidance, args.seed, args.constrained, args.guidance_mode)

    def options(self, tokenizer, device, seed_offset=0):
        """generate's keyword options for these settings."""
        return dict(temperature=self.temperature, top_k=self.top_k or None, top_p=self.top_p, guidance=self.guidance,
                    generator=torch.Generator(device=device).manual_seed(self.seed + seed_offset),
                    guidance_types=guidance_types(tokenizer, self.guidance_mode))


def generate_samples(model, tokenizer, spec, num_samples, draw, device, compile=False, stop=None, on_token=None,
                     progress=True):
    """Token id lists (prompt + continuation, BOS dropped) for num_samples pieces of the spec
    (its condition, prompt, kind and max_new_tokens); with stop (a StopAtBarLine) each ends at its
    bar line, or at max_new_tokens if it got no further. on_token(step, total) follows the progress
    (the studio's progress bar; it may raise to stop)."""
    from tqdm import tqdm

    max_new_tokens = spec["max_new_tokens"]
    idx = torch.tensor([spec["prompt"]] * num_samples, dtype=torch.long, device=device)
    composer = condition_tensor(spec["condition"], num_samples, model.config.n_composers, device)
    bar = tqdm(total=max_new_tokens, desc="sampling", unit="tok", disable=not progress or None, file=sys.stdout)
    out = generate(model, idx, composer, max_new_tokens, **draw.options(tokenizer, device),
                         logits_processor=RemiGrammar(tokenizer, chord_limit=CHORD_LIMIT) if draw.constrained else None,
                         on_step=lambda step, *_: (bar.update(), on_token and on_token(step, max_new_tokens)),
                         compile=compile, kind=spec["kind"], stop=stop)
    bar.close()
    cut = stop.cut if stop is not None else {}
    return [row[1:cut.get(i, len(row))] for i, row in enumerate(out.tolist())]


SMALL_MODEL_PARAMS = 2_000_000  # float32 weights this small stay in a CPU's caches (docs/LOG.md, "Sampling speed")


def sampling_dtype(choice, model, device_type):
    """The weights' precision while sampling. auto: as training's (bf16 where the device has it
    natively), except a small model on a CPU, whose float32 weights stay in the caches: there
    float32 matmuls beat bf16 at the default guidance's two rows and tie at one (docs/LOG.md,
    "Sampling speed")."""
    if choice == "auto" and device_type == "cpu" and model.num_params() <= SMALL_MODEL_PARAMS:
        return "float32"
    return resolve_dtype(choice, device_type)


def compile_pays(choice, model, device, new_tokens):
    """Whether to compile the decode step: on / off as asked (on where torch.compile cannot run
    is a CliError); auto where it pays back and can run. On a GPU a one-token step is bound by
    kernel launches, which CUDA graphs remove (the gpt-fast result; not yet measured here):
    compile from 256 tokens. On a CPU it is bound by memory traffic, and the compiled step
    (static shapes: attention over every cache slot) decoded slower than the eager one with
    prepacked weights (bench.py, docs/LOG.md "Sampling speed"), so auto leaves it eager."""
    if choice == "on":
        require_compile(device, "--compile on", "--compile auto or off decodes eager")
        return True
    return choice == "auto" and str(device).startswith("cuda") and new_tokens >= 256 and not compile_problem(device)


def render_file(args):
    """--render: a real MIDI file through the same voice, listed in the folder's gallery."""
    from symusic import Score

    try:
        score = Score(args.render)
    except Exception as e:
        raise CliError(f"cannot read --render {args.render}: {type(e).__name__}: {e}") from None
    make_out_dir(args.out_dir)
    base = args.name or "real_" + os.path.splitext(os.path.basename(args.render))[0]
    soundfont = find_soundfont(args.soundfont)

    def write(stem):
        summary = write_score(stem, score, True, soundfont)
        atomic_write_text(f"{stem}.json", json.dumps({"rendered": os.path.abspath(args.render),
                                                      "notes": summary["notes"], "seconds": summary["seconds"],
                                                      "voice": summary["voice"]}))
        return summary

    stem, summary = keep_whole(os.path.join(args.out_dir, base), write)
    write_gallery(args.out_dir)
    print(f"  {stem}.wav: {summary['notes']} notes, {summary['seconds']:.1f} s, voice: {summary['voice']} "
          f"(+ .mid, .png, .json; {args.out_dir}/index.html)")


def main(argv=None):
    """One line and exit 2 for a bad flag or a failed write, 130 / 143 for Ctrl-C / SIGTERM: no
    traceback, every finished sample kept and listed, nothing partial on disk."""
    parser, args = parse_args(argv)
    kept = []  # stems of the samples written whole

    def body():
        try:
            run(args, kept)
        except CliError as e:
            refresh_gallery(args.out_dir, kept)
            raise CliError(str(e) + (f"; {kept_line(kept, args.out_dir)}" if kept else "")) from None
        except BaseException:
            refresh_gallery(args.out_dir, kept)
            raise

    run_program(parser.prog, body, kept=lambda: kept_line(kept, args.out_dir))


def resolve_condition(args, composers):
    """(condition: an id or {id: weight}, composer id or None for a mix, display name) of the spec."""
    if args.composer_id is None and args.composer is None:
        raise CliError("choose a composer: --composer NAME or --composer_id N (see --list_composers)")
    if args.composer and ":" in args.composer:
        condition, composer_name = resolve_mix(composers, args.composer)
        return condition, None, composer_name
    composer_id, composer_name = resolve_composer(composers, args.composer, args.composer_id)
    return composer_id, composer_id, composer_name


def run(args, kept):
    """Load, resolve the spec, generate per guidance value, and keep each sample whole."""
    if args.soundfont and args.soundfont != "builtin" and not os.path.isfile(args.soundfont):
        raise CliError(f"--soundfont {args.soundfont} is not a file")
    if args.render:
        return render_file(args)
    device = resolve_device(args.device)
    model, checkpoint, tokenizer = load_trained(args.ckpt, device)
    dtype = sampling_dtype(args.dtype, model, device_type_of(device))
    model.to(getattr(torch, dtype))
    if args.list_composers:
        for name, i in sorted(checkpoint["composers"].items(), key=lambda kv: kv[1]):
            print(f"{i:4d}  {name}")
        return
    soundfont = find_soundfont(args.soundfont) if args.audio else None
    if args.serve:
        compile_pays(args.compile, model, device, 0)  # --compile on where it cannot run: said now, not per piece
        make_out_dir(args.out_dir)
        return serve_studio(args, model, checkpoint, tokenizer, device, soundfont, kept)
    if args.infill:
        return run_infill(args, model, checkpoint, tokenizer, device, soundfont, kept)
    spec = resolve_spec(args, model, checkpoint, tokenizer)
    print_spec(args, spec)
    compiled = compile_pays(args.compile, model, device, spec["max_new_tokens"] * len(args.guidance))
    make_out_dir(args.out_dir)
    print(f"decode step: {'compiled' if compiled else 'eager'} (--compile {args.compile}), {dtype} on {device}")
    tokens, elapsed, summaries = make_samples(args, model, tokenizer, spec, device, compiled, soundfont, kept)
    notes = sum(s["notes"] for s in summaries)
    print(f"{tokens} tokens, {notes} notes in {elapsed:.1f} s ({tokens / elapsed:.0f} tokens/s, {notes / elapsed:.0f} "
          f"notes/s); audio: "
          f"{', '.join(sorted({s['voice'] for s in summaries})) if args.audio else 'off (--no-audio)'}; "
          f"listen: {os.path.join(args.out_dir, 'index.html')}")


def serve_studio(args, model, checkpoint, tokenizer, device, soundfont, kept):
    """--serve: the studio page; each HTTP request from it is sample.py's own arguments with the page's
    choices, checked as the command line is, and generated and kept as the command line does."""
    from pianogpt.output.studio import (STUDIO_MAX_BARS, STUDIO_MAX_SECONDS, STUDIO_MAX_TOKENS, serve,
                                        studio_arguments, uploaded_prompt)

    def check(choices):  # a bad spec is a CliError, answered on the page; nothing runs
        job_args = studio_arguments(args, choices, MAX_BARS)
        fill = choices.get("mode") == "infill"
        with uploaded_prompt(choices) as prompt_path:
            if fill and prompt_path is None:
                raise CliError("choose the MIDI file whose bars to fill")
            flag = "--infill" if fill else "--prompt"
            setattr(job_args, flag[2:], prompt_path)
            try:  # the piece is read here, whole: the temporary file is gone once the job runs
                spec = (infill_spec if fill else resolve_spec)(job_args, model, checkpoint, tokenizer)
            except CliError as e:  # name the upload as the user knows it, not by its temporary path
                raise CliError(str(e).replace(f"{flag} {prompt_path}", str(choices.get("prompt_name")))) from None
        setattr(job_args, flag[2:], choices.get("prompt_name") or ("uploaded.mid" if fill else None))
        return job_args, spec

    def run_job(job, on_token):
        job_args, spec = job
        if job_args.infill:
            return make_fills(job_args, model, tokenizer, spec, device, soundfont, kept, on_token)[0]
        compiled = compile_pays(job_args.compile, model, device, spec["max_new_tokens"])
        return make_samples(job_args, model, tokenizer, spec, device, compiled, soundfont, kept, on_token)[2][0]

    composers = sorted(name for name, i in checkpoint["composers"].items() if i != UNCONDITIONAL_ID)
    info = {"composers": composers, "texture": bool(model.config.n_kinds), "infill": bool(model.config.n_roles),
            "max_bars": STUDIO_MAX_BARS, "max_seconds": STUDIO_MAX_SECONDS, "max_tokens": STUDIO_MAX_TOKENS,
            "guidance": args.guidance[0], "temperature": args.temperature, "checkpoint": args.ckpt}
    write_gallery(args.out_dir)  # the page's list of earlier pieces, also when there are none yet
    serve(args.host, args.port, args.out_dir, info, check, run_job)


UNCONDITIONAL_ID = 0
def make_samples(args, model, tokenizer, spec, device, compiled, soundfont, kept, on_token=None):
    """Generate the spec at each guidance value and keep every sample whole (its stem joins
    `kept` as soon as it is); the listening page lists them. (new tokens, seconds, summaries)."""
    tokens, elapsed, summaries = 0, 0.0, []
    for guidance in args.guidance:
        start = time.time()
        stop = StopAtBarLine(tokenizer, args.bars, args.seconds) if args.bars or args.seconds else None
        samples = generate_samples(model, tokenizer, spec, args.num_samples, Draw.of(args, guidance), device,
                                   compile=compiled, stop=stop, on_token=on_token)
        elapsed += time.time() - start
        tokens += sum(len(ids) for ids in samples) - args.num_samples * (len(spec["prompt"]) - 1)
        if stop is not None and len(stop.cut) < len(samples):
            print(f"  {len(samples) - len(stop.cut)} sample(s) reached {spec['max_new_tokens']} new tokens before "
                  f"their bar line (raise --max_new_tokens)")
        for i, ids in enumerate(samples):
            summary = keep_sample(os.path.join(args.out_dir, sample_name(args, spec, guidance, i)), ids, tokenizer,
                                  sample_settings(args, spec, guidance, i), soundfont, args.audio)
            kept.append(summary["stem"])
            summaries.append(summary)
    write_gallery(args.out_dir)
    return tokens, elapsed, summaries


def resolve_spec(args, model, checkpoint, tokenizer):
    """The spec of a continuation (a dict: what to generate), checked against the checkpoint: condition,
    names, kind, prompt, length."""
    if isinstance(args.bars, tuple) or isinstance(args.seconds, tuple):
        raise CliError(f"--{'bars' if isinstance(args.bars, tuple) else 'seconds'} A-B is a span to rewrite: it needs "
                       "--infill FILE; a length is one number")
    condition, composer_id, composer_name = resolve_condition(args, checkpoint["composers"])
    if args.texture != "any" and not model.config.n_kinds:
        raise CliError(f"--texture {args.texture} needs a model trained with a kind condition (n_kinds=3); "
                       f"{args.ckpt} has none: use --texture any")
    bos = tokenizer.vocab["BOS_None"]
    prompt = load_prompt(args.prompt, tokenizer, args.prompt_tokens, bos) if args.prompt else [bos]
    if len(prompt) >= model.config.block_size:
        prompt = [bos] + prompt[-(model.config.block_size - 1):]
    musical_length = args.bars or args.seconds
    max_new_tokens = args.max_new_tokens or (MAX_TOKENS_FOR_A_LENGTH if musical_length else DEFAULT_NEW_TOKENS)
    return {"condition": condition, "composer_id": composer_id, "composer_name": composer_name,
            "kind": TEXTURES.get(args.texture), "prompt": prompt, "max_new_tokens": max_new_tokens}


# ----------------------------------------------------------------------------- infilling


def run_infill(args, model, checkpoint, tokenizer, device, soundfont, kept):
    """--infill: num_samples takes of the span at each guidance value, each written whole."""
    spec = infill_spec(args, model, checkpoint, tokenizer)
    plan = spec["plan"]
    print(f"{spec['composer_name']}: bars {plan.first}-{plan.last} of {args.infill} ({plan.bar_count} bars, "
          f"{plan.span_tokens} tokens in the span; {len(plan.prompt) - 2} tokens of music around it), "
          f"{args.num_samples} take(s) at guidance {', '.join(f'{g:g}' for g in args.guidance)}")
    make_out_dir(args.out_dir)
    summaries = make_fills(args, model, tokenizer, spec, device, soundfont, kept)
    closed = sum(s["closed"] for s in summaries)
    print(f"{len(summaries)} take(s), {closed} closed at the bar line where the piece resumes; listen: "
          f"{os.path.join(args.out_dir, 'index.html')}")


def infill_spec(args, model, checkpoint, tokenizer):
    """The spec of a fill (a dict: the condition and names, the piece, its Plan, the kind and texture: the
    piece's own unless --texture says), checked, or a CliError naming the valid choices."""
    from symusic import Score

    if not model.config.n_roles:
        raise CliError(f"--infill needs a model trained to fill gaps (infill_share > 0, n_roles=5); {args.ckpt} "
                       "only continues: train one with infill_share > 0, as config/remi_cpu.py does")
    if not (args.bars or args.seconds):
        raise CliError("--infill needs the span to rewrite: --bars 9-12 or --seconds 20-30")
    if args.prompt:
        raise CliError("--infill keeps the piece around the span: it takes no --prompt")
    if args.seconds is not None and not isinstance(args.seconds, tuple):
        raise CliError(f"--infill takes a time span, --seconds START-END (got one number, {args.seconds:g})")
    condition, composer_id, composer_name = resolve_condition(args, checkpoint["composers"])
    try:
        score = Score(args.infill)
    except Exception as e:
        raise CliError(f"cannot read --infill {args.infill}: {type(e).__name__}: {e}") from None
    merged, reason = merge_piano_tracks(score)
    if merged is None:
        raise CliError(f"--infill {args.infill} has no piano notes to keep ({reason})")
    if args.bars is not None:
        first, last = args.bars if isinstance(args.bars, tuple) else (args.bars, args.bars)
    else:
        try:
            first, last = bars_of_seconds(seconds_at(score, bar_ticks(merged)), *args.seconds)
        except ValueError as e:
            raise CliError(f"--infill {args.infill}: {e}") from None
    try:
        plan = plan_span(tokenizer, merged, model.config.block_size, first, last)
    except ValueError as e:
        raise CliError(f"--infill {args.infill}: {e}") from None
    texture = args.texture if args.texture != "any" else ("score" if piece_kind(score)[0] == "sequenced"
                                                          else "performance")
    return {"condition": condition, "composer_id": composer_id, "composer_name": composer_name, "score": score,
            "plan": plan, "kind": TEXTURES[texture] if model.config.n_kinds else None, "texture": texture}


FILL_RETRIES = 2  # a take that has not reached its closing bar line within its tokens is drawn again this often


def fill_takes(model, tokenizer, plan, condition, num_samples, draw, device, kind=None, on_token=None):
    """(middle tokens, closed) per take: the span written between the music before and after it. A
    take that has not reached the bar line where the piece resumes within its tokens is drawn again
    (the next seed), at most FILL_RETRIES times; the last draw is kept either way."""
    from tqdm import tqdm

    conditions = condition_tensor(condition, num_samples, model.config.n_composers, device)
    takes, todo = [None] * num_samples, list(range(num_samples))
    for attempt in range(1 + FILL_RETRIES):
        bar = tqdm(total=plan.max_new_tokens, desc="filling" if not attempt else f"again ({len(todo)})", unit="tok",
                   disable=None, file=sys.stdout)
        drawn = write_middles(model, tokenizer, plan.prompt, plan.roles, plan.last - plan.first + 1,
                              plan.time_signatures, plan.max_new_tokens, conditions[todo], draw.constrained,
                              **draw.options(tokenizer, device, seed_offset=attempt), kind=kind,
                              on_step=lambda step, *_: (bar.update(), on_token and on_token(step, plan.max_new_tokens)))
        bar.close()
        for row, take in zip(todo, drawn):
            takes[row] = take
        todo = [row for row in todo if not takes[row][1]]
        if not todo:
            break
    return takes


def make_fills(args, model, tokenizer, spec, device, soundfont, kept, on_token=None):
    """Every take of the spec at each guidance value, kept whole (its stem joins `kept`)."""
    plan, summaries = spec["plan"], []
    piece = os.path.splitext(os.path.basename(args.infill))[0]
    for guidance in args.guidance:
        takes = fill_takes(model, tokenizer, plan, spec["condition"], args.num_samples, Draw.of(args, guidance),
                           device, spec["kind"], on_token)
        for i, (middle, closed) in enumerate(takes):
            settings = {**sample_settings(args, spec | {"prompt": plan.prompt}, guidance, i),
                        "render_as": spec["texture"]}  # the sidecar's key keeps its earlier name
            name = sample_name(args, spec, guidance, i, prefix=f"{piece}_bars{plan.first}-{plan.last}_")
            summary = keep_fill(os.path.join(args.out_dir, name), spec, middle, closed, tokenizer, settings,
                                soundfont, args.audio)
            kept.append(summary["stem"])
            summaries.append(summary)
    write_gallery(args.out_dir)
    return summaries


def write_fill(stem, spec, middle, closed, tokenizer, settings, soundfont, audio):
    """stem.mid (the piece with its span replaced), .png (the span marked), .wav and .json last; a
    summary dict (keep_whole makes it all or nothing)."""
    plan = spec["plan"]
    _, middle_score, errors = decode_sample(tokenizer, middle)
    score, removed, added = splice(spec["score"], middle_score, plan.start_tick, plan.end_tick)
    summary = write_score(stem, score, audio, soundfont, marked=(plan.start_tick, plan.end_tick))
    atomic_write_text(f"{stem}.json", json.dumps({
        **settings, "infill": {"file": settings["infill_file"], "bars": [plan.first, plan.last],
                               "ticks": [plan.start_tick, plan.end_tick], "closed": closed,
                               "notes_removed": removed, "notes_added": added},
        "grammar_error_rate": errors, "notes": summary["notes"], "seconds": summary["seconds"],
        "voice": summary["voice"], "token_ids": middle}))
    return {**summary, "grammar_error_rate": errors, "notes_removed": removed, "notes_added": added}


def keep_fill(base, spec, middle, closed, tokenizer, settings, soundfont, audio):
    """One take written whole under a free stem, or a CliError with nothing of it left; its summary."""
    plan = spec["plan"]
    stem, summary = keep_whole(base, lambda stem: write_fill(stem, spec, middle, closed, tokenizer, settings,
                                                             soundfont, audio))
    print(f"  {stem}.mid: bars {plan.first}-{plan.last} rewritten ({summary['notes_removed']} notes out, "
          f"{summary['notes_added']} in{'' if closed else ', ran out of tokens before the bar line'}), grammar errors "
          f"{summary['grammar_error_rate']:.2%}")
    return {**summary, "stem": stem, "closed": closed}


def print_spec(args, spec):
    length = (f"{args.bars} bars" if args.bars else f"{args.seconds:g} s" if args.seconds else "") or \
        f"{spec['max_new_tokens']} tokens"
    composer = "a mix" if spec["composer_id"] is None else f"id {spec['composer_id']}"
    print(f"{spec['composer_name']} ({composer}), guidance {', '.join(f'{g:g}' for g in args.guidance)} "
          f"({args.guidance_mode}), temperature {args.temperature}, top_k {args.top_k}, top_p {args.top_p}, "
          f"{args.num_samples} x {length}, {'constrained' if args.constrained else 'unconstrained'}, "
          f"texture {args.texture}, prompt {len(spec['prompt'])} tokens")


def sample_name(args, spec, guidance, i, prefix=""):
    """<prefix><composer>_<seed> (or --name), with the guidance and the sample's index when several."""
    safe = "".join(c if c.isalnum() else "_" for c in spec["composer_name"]).strip("_") or "unconditional"
    tag = f"_g{guidance:g}" if len(args.guidance) > 1 else ""
    return f"{args.name or f'{prefix}{safe}_{args.seed}'}{tag}" + (f"_{i}" if args.num_samples > 1 else "")


def sample_settings(args, spec, guidance, i):
    """What the sample's .json records: everything needed to make it again."""
    condition = spec["condition"]
    return {"composer": spec["composer_name"], "composer_id": spec["composer_id"], "guidance": guidance,
            "guidance_mode": args.guidance_mode, "render_as": args.texture,
            **({"mix": {str(k): w for k, w in condition.items()}} if isinstance(condition, dict) else {}),
            "temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p, "seed": args.seed,
            "sample_index": i, "constrained": args.constrained, "ckpt": args.ckpt, "bars": args.bars,
            "seconds": args.seconds, "prompt": args.prompt, "prompt_tokens": len(spec["prompt"]) - 1,
            "infill_file": args.infill}

if __name__ == "__main__":
    main()
