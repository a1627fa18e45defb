"""The generation engine: prefill, the decode loop, guidance, sampling filters, the grammar hook,
CPU weight packing, and the compiled (CUDA-graph) decode step.

The network (model.py) only knows how to run a forward over a chunk and one decode step into the
KV caches (model.KVCache) it is handed; everything about *how* tokens are produced lives here, as
nanochat keeps its engine apart from its GPT and gpt-fast keeps prefill and decode_one_token as
plain functions. Every program generates through this module's `generate(model, ...)`.
"""
import math
import warnings
import weakref
from contextlib import contextmanager, nullcontext

import torch

from model import new_caches
from pianogpt.devices import first_line
from pianogpt.torch_internals import (PackedLinear, can_pack_linears, cpu_has_native_bf16, mark_static_address,
                                      onednn_off)

# ---------------------------------------------------------------------- CPU matmuls for one-token steps


PREPACK_MIN_FLOAT32 = 1 << 17  # elements: smaller float32 matrices run faster through MKL's plain call


def can_prepack(weight):
    """Packing this weight for oneDNN pays: a CPU tensor in bf16 where the CPU has native bf16
    (a plain bf16 linear goes through oneDNN anyway, reordering every call), or a float32 one of
    at least PREPACK_MIN_FLOAT32 elements (below that MKL's plain call has less overhead than
    oneDNN's packed one: docs/LOG.md, "Sampling speed")."""
    if weight.device.type != "cpu" or not can_pack_linears():
        return False
    if weight.dtype == torch.float32:
        return weight.numel() >= PREPACK_MIN_FLOAT32
    return weight.dtype == torch.bfloat16 and cpu_has_native_bf16()


@contextmanager
def prepacked_weights(model, rows):
    """Inside: every model.Linear (a Linear with an `inference_forward` slot) runs from a weight
    reordered once for oneDNN (torch_internals.PackedLinear; rows: the batch it will mostly see).
    Same results, bit for bit in bf16 (tested); faster CPU decoding steps (docs/LOG.md, "Sampling
    speed"). Packs are dropped on exit, so training never sees stale ones."""
    linears = [m for m in model.modules() if hasattr(m, "inference_forward") and can_prepack(m.weight)]
    for m in linears:
        m.inference_forward = PackedLinear(m, rows)
    try:
        yield
    finally:
        for m in linears:
            m.inference_forward = None


def gemv_pays(rows, weight):
    """One row of bf16 on a CPU: aten's own bf16 matrix-vector kernel (float32 accumulation,
    rounded once, like oneDNN's) reads the weights faster than oneDNN's packed kernel (measured
    at the GPT-2 baseline's shape: docs/LOG.md, "Sampling speed"), so such decoding steps run with oneDNN
    off (see onednn_off). With more rows aten's bf16 path is far slower than oneDNN's."""
    return rows == 1 and weight.device.type == "cpu" and weight.dtype == torch.bfloat16


# ---------------------------------------------------------------------- guidance and sampling filters


def unconditional_like(composer):
    """The unconditional condition (composer 0) in the same form as `composer`."""
    if composer.is_floating_point():
        return torch.nn.functional.one_hot(torch.zeros(composer.size(0), dtype=torch.long, device=composer.device),
                                           composer.size(1)).to(composer.dtype)
    return torch.zeros_like(composer)


def check_sampling_args(temperature, top_k, top_p, guidance):
    if not (isinstance(temperature, (int, float)) and temperature > 0 and math.isfinite(temperature)):
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if top_k is not None and (int(top_k) != top_k or top_k < 0):
        raise ValueError(f"top_k must be a non-negative integer (0 = off), got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if not (guidance >= 0 and math.isfinite(guidance)):
        raise ValueError(f"guidance must be >= 0, got {guidance}")


def guided_logits(logits, guidance, types=None):
    """Classifier-free guidance over a batch whose first half is conditional and second half
    unconditional: uncond + g * (cond - uncond).

    types (a type id per vocabulary entry, e.g. remi.token_types): guidance only chooses within
    a token type (which pitch, duration, position); how likely each type is (another note in
    this chord, or move on in time) stays the conditional model's, so guidance cannot thicken
    or thin the texture by itself. The outside judge rates it level with plain guidance (docs/LOG.md)."""
    cond, uncond = logits.float().chunk(2)
    mixed = uncond + guidance * (cond - uncond)
    if types is None:
        return mixed
    return mixed - type_logsumexp(mixed, types) + type_logsumexp(cond, types)


def type_logsumexp(logits, types):
    """[B, V]: for every vocabulary entry, the logsumexp of the logits of all entries of its type."""
    index = types.expand_as(logits)
    peak = torch.full_like(logits, float("-inf"))  # one slot per type id (< vocabulary size): no host sync
    peak = peak.scatter_reduce(1, index, logits, reduce="amax").clamp_min(torch.finfo(logits.dtype).min)
    shifted = torch.exp(logits - peak.gather(1, index))
    total = torch.zeros_like(peak).scatter_add(1, index, shifted)
    return (peak + total.log()).gather(1, index)


def filter_logits(logits, top_k=None, top_p=None):
    """-inf outside the top_k tokens and outside the smallest set whose probability >= top_p."""
    if top_k:
        k = min(int(top_k), logits.size(-1))
        kth = torch.topk(logits, k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))  # not logits[mask] = ...: that syncs a GPU
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = torch.softmax(sorted_logits, dim=-1)
        # drop a token when the tokens ranked above it already reach top_p
        drop_sorted = probs.cumsum(dim=-1) - probs >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample_next(logits, temperature, top_k, top_p, generator=None):
    probs = torch.softmax(filter_logits(logits / temperature, top_k, top_p), dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator)


# ---------------------------------------------------------------------- the decode loop

_compiled_steps = weakref.WeakKeyDictionary()  # model -> {device type: compiled decode_step}


def compiled_decode_step(model, device_type):
    """model.decode_step through torch.compile, built once per model and device type; CUDA graphs
    ("reduce-overhead") on a GPU. If that build fails, this call and every later one decode eager,
    after one warning (eager_if_it_fails)."""
    steps = _compiled_steps.setdefault(model, {})
    if device_type not in steps:
        mode = "reduce-overhead" if device_type == "cuda" else None
        compiled = torch.compile(model.decode_step, mode=mode, fullgraph=True, dynamic=False)
        steps[device_type] = eager_if_it_fails(compiled, model.decode_step)
    return steps[device_type]


def eager_if_it_fails(compiled, eager):
    """compiled, unless its first call fails: torch.compile builds there, and a build can fail
    where the up-front probe passed (a full disk under inductor's cache, a compiler error on the
    real graph). Then eager, for good, with one warning: the build fails before the step runs, so
    the caches are as they were."""
    chosen = []

    def step(*args):
        if chosen:
            return chosen[0](*args)
        try:
            logits = compiled(*args)
        except Exception as e:  # torch raises several kinds (InductorError, BackendCompilerFailed, ...)
            warnings.warn(f"the compiled decode step failed ({first_line(e)}); decoding eager", stacklevel=2)
            chosen.append(eager)
            return eager(*args)
        chosen.append(compiled)
        return logits

    return step


def prefill(model, seq, keep, conditions, kind, dtype, cache_len, static, role=None):
    """Fresh caches holding the last `keep` tokens of seq (each row twice when conditions holds
    a guidance batch; role [B, len(seq)] with them); (logits of the next token, caches, the
    window's start in seq)."""
    start = max(0, seq.size(1) - keep)
    context = seq[:, start:]
    caches = new_caches(model, conditions.size(0), seq.device, dtype, cache_len)
    copies = conditions.size(0) // context.size(0)  # twice under guidance: cond and uncond rows
    rows = context.repeat(copies, 1)
    role = role[:, start:].repeat(copies, 1) if role is not None else None
    logits, _ = model(rows, conditions, caches=caches, start_pos=0, kind=kind, role=role)
    for cache in caches:
        cache.static = static
        if static and seq.device.type == "cuda":
            # CUDA graphs skip a graph that writes into an ordinary input; a static address may be
            # written (a new cache after a slide only re-records the graph)
            mark_static_address(cache.k)
            mark_static_address(cache.v)
    return logits[:, -1], caches, start


def batched_conditions(composer, kind, batch, use_cfg, device):
    """(composer rows, kind rows or None) of the batched forward: the conditional rows, then with
    guidance the unconditional ones (composer 0); both halves keep the kind."""
    conditions = torch.cat([composer, unconditional_like(composer)]) if use_cfg else composer
    if kind is not None:
        kind = torch.as_tensor(kind, dtype=torch.long, device=device).expand(batch)
        kind = torch.cat([kind, kind]) if use_cfg else kind
    return conditions, kind


@torch.no_grad()  # no autograd graph: each step's would keep every earlier step's keys alive
def generate(model, idx, composer, max_new_tokens, temperature=0.9, top_k=40, top_p=0.95, guidance=1.0,
             generator=None, logits_processor=None, on_step=None, compile=False, guidance_types=None,
             prepack=True, kind=None, stop=None, roles=None):
    """Continue idx [B, T] by max_new_tokens sampled tokens; returns [B, T + max_new_tokens], or
    fewer when stop(seq [B, L]) -> True ends the run early (it reads the tokens, so each call
    waits for the device: only a length in musical units needs it).

    guidance g != 1 runs the conditional rows and unconditional (composer 0) rows in ONE batched
    forward and samples from uncond + g * (cond - uncond); guidance_types (see guided_logits)
    keeps each token type's probability the conditional model's. kind (an int or [B]: 1 score,
    2 performance; a model with n_kinds > 0) chooses the texture; both guidance branches keep it,
    so guidance moves the composer only. The prompt is prefilled in one forward; each new token
    then goes through model.decode_step (static shapes, the position a device tensor; compile=True
    compiles it once). Guidance, the logits processor and the draw stay on the device: the loop
    never waits for a token's value. prepack (eager steps): the Linears run from weights packed
    once for oneDNN, or one bf16 row through aten's matrix-vector kernel (see gemv_pays). When the
    context reaches block_size the window slides: its oldest quarter is dropped and the cache
    refilled from the rest. logits_processor(seq, logits)
    -> logits may mask tokens (grammar constraints); on_step(step, logits, window_start) sees the
    logits each token is drawn from. roles (infilling, a model with n_roles > 0: infill.MiddleRoles)
    gives the prompt's roles [B, T] (.prompt) and each new token's (.next_roles); such a run must
    fit the context, as a slide would drop the music after the gap.
    """
    check_sampling_args(temperature, top_k, top_p, guidance)
    check_request(model, idx, max_new_tokens, roles)
    use_cfg = guidance != 1.0
    if guidance_types is not None:
        guidance_types = guidance_types.to(idx.device)
    decoding = Decoding(model, idx, composer, kind, use_cfg, max_new_tokens, compile, prepack, roles)
    prompt_len = idx.size(1)
    was_training = model.training
    model.eval()
    with decoding.tuned_matmuls:
        out = torch.empty(idx.size(0), prompt_len + max_new_tokens, dtype=idx.dtype, device=idx.device)
        out[:, :prompt_len] = idx
        logits = decoding.first_logits(idx)
        for i in range(max_new_tokens):
            mixed = guided_logits(logits, guidance, guidance_types) if use_cfg else logits.float()
            if logits_processor is not None:
                mixed = logits_processor(out[:, :prompt_len + i], mixed)
            if on_step is not None:
                on_step(i, mixed, decoding.start)
            next_token = sample_next(mixed, temperature, top_k, top_p, generator)
            out[:, prompt_len + i] = next_token[:, 0]
            if stop is not None and stop(out[:, :prompt_len + i + 1]):
                out = out[:, :prompt_len + i + 1]
                break
            if i == max_new_tokens - 1:
                break
            logits = decoding.next_logits(out[:, :prompt_len + i + 1], next_token)
    model.train(was_training)
    return out


def check_request(model, idx, max_new_tokens, roles):
    if idx.dim() != 2 or idx.size(1) == 0:
        raise ValueError("idx must be [batch, >=1 tokens] (start with BOS)")
    block = model.config.block_size
    if roles is not None and idx.size(1) + max_new_tokens > block:
        raise ValueError(f"an infilling prompt of {idx.size(1)} tokens leaves {block - idx.size(1)} of the context's "
                         f"{block} for the middle, not {max_new_tokens}")


class Decoding:
    """One generate call's decoding state: the batched conditions, the KV caches, how the steps
    run (compiled, or eager with tuned matmuls) and where the context window starts."""

    def __init__(self, model, idx, composer, kind, use_cfg, max_new_tokens, compile, prepack, roles):
        self.model, self.use_cfg, self.compile, self.roles = model, use_cfg, compile, roles
        self.block = model.config.block_size
        self.slide = max(1, min(self.block - 1, self.block // 4))  # the oldest quarter goes when the context is full
        self.conditions, self.kind = batched_conditions(composer, kind, idx.size(0), use_cfg, idx.device)
        # the KV cache (and so attention) stays float32 on a CPU even under bf16 weights: one query
        # against thousands of cached keys runs far slower in the CPU's bf16 attention than in float32
        self.dtype = torch.float32 if idx.device.type == "cpu" else next(model.parameters()).dtype
        self.cache_len = min(self.block, idx.size(1) + max_new_tokens)  # static for this call: no slot is wasted
        self.step = compiled_decode_step(model, idx.device.type) if compile else model.decode_step
        self.cuda_graphs = compile and idx.device.type == "cuda"  # compiled_decode_step's mode there
        tuned = prepack and not compile  # eager CPU steps: packed weights, or one bf16 row through GEMV
        self.tuned_matmuls = prepacked_weights(model, self.conditions.size(0)) if tuned else nullcontext()
        self.gemv = tuned and gemv_pays(self.conditions.size(0), next(model.parameters()))

    def first_logits(self, idx):
        """The prompt prefilled in one forward: the logits of the first new token."""
        self.length = min(idx.size(1), self.block)  # cached positions (host int: known without asking the device)
        logits, self.caches, self.start = prefill(self.model, idx, self.block, self.conditions, self.kind,
                                                  self.dtype, self.cache_len, self.compile,
                                                  self.roles.prompt if self.roles is not None else None)
        self.pos = torch.full((1,), self.length, dtype=torch.long, device=idx.device)
        return logits

    def next_logits(self, seq, token):
        """The logits after token, the last of seq: one decode step, or, with the window full, a
        slide and a prefill of what is left."""
        if self.length == self.block:
            logits, self.caches, self.start = prefill(self.model, seq, self.block - self.slide, self.conditions,
                                                      self.kind, self.dtype, self.cache_len, self.compile)
            self.length = self.caches[0].length
            self.pos.fill_(self.length)
            return logits
        rows = torch.cat([token, token]) if self.use_cfg else token
        role = self.roles.next_roles(token[:, 0])[:, None].repeat(rows.size(0) // token.size(0), 1) \
            if self.roles is not None else None
        with onednn_off() if self.gemv else nullcontext():
            logits = self.step(rows, self.conditions, self.caches, self.pos, self.kind, role)
        if self.cuda_graphs:
            logits = logits.clone()  # a CUDA graph overwrites its outputs at its next replay
        self.pos += 1
        self.length += 1
        return logits
