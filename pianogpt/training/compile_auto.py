"""compile=auto: whether torch.compile pays for one training run on this device, measured, not assumed."""
import math
import statistics

import torch

from pianogpt.devices import compile_problem, first_line, recall, remember
from pianogpt.training.lifecycle import rank0_value


class CompileTrial:
    """The loop times a few eager steps; where the time left could repay a compile (and
    torch.compile can run here at all: devices.compile_problem), the step is compiled, then compiled
    and eager steps alternate (a shared VM's speed drifts for seconds at a time: alternating puts
    both under the same drift) and the faster is kept (compiling already spent is spent). What
    compiling cost and saved is remembered for this machine and step shape (memory_key;
    devices.remember), so the next such run decides by it; with nothing remembered the guess is a
    COMPILE_GUESS_S compile for a step REPAY_SPEEDUP faster. Short runs, tests and quick tries never
    pay for a compile. Under DDP rank 0's measurement decides for every rank.

    .model is the model the next step calls; say(line) tells the user, log(record) the run's log.
    The loop asks for .model, takes the step, and reports its time to step_done."""

    STEPS = 3  # steps timed each way
    COMPILE_GUESS_S = 60.0  # a first compile of this project's step, as measured (docs/LOG.md)
    REPAY_SPEEDUP = 0.1  # try only where a 10 % faster step would repay that in the time left
    MEMORY = "compile.json"

    def __init__(self, eager_model, memory_key, device, ddp=False, master=True, say=print, log=lambda record: None):
        self.eager_model = self.model = eager_model
        self.memory_key, self.device, self.ddp, self.master, self.say, self.log = memory_key, device, ddp, master, say, log
        self.phase, self.times = "warm-up", {"eager": [], "compiled": []}

    @property
    def compiling(self):
        """The next step is the first compiled one: torch.compile builds there, and may fail."""
        return self.phase == "compiling"

    def compile_failed(self, it, error):
        """The first compiled step failed to build (a full disk under inductor's cache, a compiler
        error): the loop takes that step again eager, and the run stays eager."""
        self.model = self.eager_model
        self.decided(it, f"eager (the compiled step failed: {first_line(error)})")

    def step_done(self, it, seconds, iters_left, budget_left_s=math.inf):
        """After each step until decided: record its time, choose the model of the next step.
        iters_left, budget_left_s: the iterations and the seconds of the time budget the run has left."""
        if self.phase == "warm-up":  # first-step allocations and kernel choices
            self.phase = "eager"
        elif self.phase == "eager":
            self.times["eager"].append(seconds)
            if len(self.times["eager"]) == self.STEPS:
                self.try_compiling(it, iters_left, budget_left_s)
        elif self.phase == "compiling":
            self.compile_s = seconds - statistics.median(self.times["eager"])
            self.times, self.phase = {"eager": [], "compiled": []}, "alternating"
            self.model = self.eager_model
        elif self.phase == "alternating":
            ran = "eager" if self.model is self.eager_model else "compiled"
            self.times[ran].append(seconds)
            if len(self.times["compiled"]) == self.STEPS:
                self.keep_the_faster(it)
            else:
                self.model = self.compiled if ran == "eager" else self.eager_model

    def try_compiling(self, it, iters_left, budget_left_s):
        step_s = statistics.median(self.times["eager"])
        left = min(iters_left * step_s, budget_left_s)
        compile_s, saving, source = self.expected()
        pays = saving > 0 and left * saving >= compile_s
        problem = compile_problem(self.device) if pays else None
        if rank0_value(pays and not problem, self.ddp):  # timings differ by rank
            self.compiled = self.model = torch.compile(self.eager_model)
            self.phase = "compiling"
            if self.master:  # the next step stalls while it compiles: say why
                self.say(f"compile=auto: compiling the step, ~{compile_s:.0f} s {source}; then compiled and eager "
                         f"steps alternate and the faster is kept")
        elif problem:
            self.decided(it, f"eager ({step_s:.3f} s/step; torch.compile cannot run here: {problem})")
        elif saving <= 0:
            self.decided(it, f"eager ({step_s:.3f} s/step; the compiled step was no faster {source})")
        else:
            self.decided(it, f"eager ({step_s:.3f} s/step; the {left / 60:.1f} min left would not repay "
                             f"compiling, ~{compile_s:.0f} s {source})")

    def expected(self):
        """(compile seconds, share of a step saved, where those come from): this machine's earlier
        measurement for this step shape where there is one, else the guess."""
        known = recall(self.MEMORY, self.memory_key) if self.memory_key else None
        if isinstance(known, dict) and all(isinstance(known.get(k), (int, float)) and math.isfinite(known[k])
                                           for k in ("compile_s", "speedup")) and known["speedup"] > 0:
            return max(known["compile_s"], 0.0), 1 - 1 / known["speedup"], "(measured here before)"
        return self.COMPILE_GUESS_S, self.REPAY_SPEEDUP, "(a guess)"

    def keep_the_faster(self, it):
        eager_s, compiled_s = statistics.median(self.times["eager"]), statistics.median(self.times["compiled"])
        keep = bool(rank0_value(compiled_s < eager_s, self.ddp))
        self.model = self.compiled if keep else self.eager_model
        if self.memory_key and self.master:
            remember(self.MEMORY, self.memory_key, {"compile_s": self.compile_s, "speedup": eager_s / compiled_s})
        self.decided(it, f"{'compiled' if keep else 'eager'} (compiled {compiled_s:.3f} s/step after "
                         f"{self.compile_s:.0f} s of compiling, eager {eager_s:.3f} s/step, alternating)")

    def decided(self, it, verdict):
        self.phase = "decided"
        self.log({"iter": it, "compile": verdict})
        if self.master:
            self.say(f"compile=auto: {verdict}")


def memory_key(machine, model_cfg, block_size, batch_size, optimizer):
    """What compiling a step costs and saves depends on the machine and on the step's shape: the key
    under which an earlier run's measurement is remembered. A fine-tune of a model shares the key of
    its training on this machine (a short fine-tune could not afford to measure for itself; its own
    trial still checks the compiled step is faster)."""
    return (f"{machine} | {model_cfg.n_layer} layers x {model_cfg.n_embd}, context {block_size}, "
            f"batch {batch_size}, {optimizer}")
