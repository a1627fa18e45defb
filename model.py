"""The network: a GPT-2-style causal transformer over REMI tokens, conditioned on a composer
(and, optionally, on the kind of MIDI: score or performance).

token embedding + composer embedding (every position) + position embedding -> dropout ->
n_layer pre-LN blocks (SDPA attention, GELU MLP) -> LayerNorm -> head tied to the token
embedding (composer_layers: the composer also adds a row before every block, which a fine-tune
gives new composers). Its forward runs a chunk (into a KV cache when given one) and decode_step
one token into the KVCache kept here beside it (as gpt-fast keeps its cache beside its model);
how tokens are produced (prefill, the decode loop, guidance, filters) is
pianogpt/generation/engine.py's, the optimizers are pianogpt/training/optim.py's, checkpoint files
are pianogpt/checkpoints.py's. This file imports torch and the standard library only: the package
depends on the network, never the other way.

The modern recipe's levers are ModelConfig options, each off by default so that the GPT-2 baseline's
architecture is the default: rotary positions, RMSNorm, ReLU² MLPs, QK-norm, an untied head.
(Levers that lost their ablation are gone; docs/LOG.md keeps their results.)
"""
import math
from dataclasses import dataclass, fields

import torch
import torch.nn as nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

POSITIONS = ("learned", "rope")
NORMS = ("layernorm", "rmsnorm")
MLPS = ("gelu", "relu2")


@dataclass
class ModelOptions:
    """The model's shape and levers: what a config chooses. train.py's TrainConfig inherits these
    fields, so each option is declared once."""
    block_size: int = 1024  # longest context, in tokens
    n_layer: int = 8
    n_head: int = 8
    n_embd: int = 512
    dropout: float = 0.1  # embedding and residual dropout (cheap)
    attn_dropout: float = 0.0  # attention-probability dropout: makes CPU SDPA leave its fused kernel (docs/LOG.md)
    bias: bool = True
    label_smoothing: float = 0.1
    grad_checkpoint: bool = False  # recompute each block's activations in backward (long contexts)
    positions: str = "learned"  # learned: the GPT-2 baseline's table of block_size vectors; rope: rotary q/k (no table)
    rope_base: float = 10000.0
    norm: str = "layernorm"  # layernorm (the GPT-2 baseline's) | rmsnorm (no mean, no bias)
    mlp: str = "gelu"  # gelu (the GPT-2 baseline's) | relu2 (relu(x)^2), both 4x wide
    qk_norm: bool = False  # RMS-normalise queries and keys per head (learned gains) before attention
    tie_head: bool = True  # the head shares the token embedding (the GPT-2 baseline); False: its own matrix
    n_kinds: int = 0  # 3: a learned kind embedding beside the composer's (row 0 unknown, 1 score, 2 performance)
    composer_layers: bool = False  # each composer also has a row added before every block (a fine-tune's new
    # composers: the frozen network gives one input row little to say; the other rows stay zero)
    n_periods: int = 0  # 6: a row per period (pianogpt/data/periods.py) that every composer's rows add to
    n_roles: int = 0  # 5: a learned role embedding per token for infilling (pianogpt/generation/infill.py: plain, before,
    # after, middle, the middle's last bar), so a window can hold the music after a gap before the gap itself


@dataclass
class ModelConfig(ModelOptions):
    """ModelOptions plus what the dataset fixes."""
    vocab_size: int = 419
    n_composers: int = 1  # rows of the composer embedding; row 0 is "unconditional"
    pad_id: int = 0

    def __post_init__(self):
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if self.n_kinds not in (0, 3):
            raise ValueError(f"n_kinds must be 0 (off) or 3 (unknown, score, performance); got {self.n_kinds}")
        if self.n_periods < 0:
            raise ValueError(f"n_periods must be >= 0, got {self.n_periods}")
        if self.n_roles not in (0, 5):
            raise ValueError(f"n_roles must be 0 (off) or 5 (infilling: plain, before, after, middle, last bar); "
                             f"got {self.n_roles}")
        for key, choices in (("positions", POSITIONS), ("norm", NORMS), ("mlp", MLPS)):
            if getattr(self, key) not in choices:
                raise ValueError(f"{key} must be one of {', '.join(choices)}, got {getattr(self, key)!r}")
        if self.positions == "rope" and (self.n_embd // max(1, self.n_head)) % 2:
            raise ValueError(f"rope needs an even head size, got n_embd/n_head = {self.n_embd // self.n_head}")
        if not self.rope_base > 1:
            raise ValueError(f"rope_base must be > 1, got {self.rope_base}")

    @classmethod
    def from_dict(cls, d):
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


class RMSNorm(nn.RMSNorm):
    """nn.RMSNorm computed in float32, as autocast does for LayerNorm: under bf16 autocast the
    plain module sees a bf16 input beside float32 gains and leaves its fused kernel."""

    def forward(self, x):
        weight = self.weight
        if weight is not None and weight.dtype != torch.float32:  # a model cast to bf16 for sampling
            weight = weight.float()
        return F.rms_norm(x.float(), self.normalized_shape, weight, self.eps).to(x.dtype)


def norm_layer(cfg, size=None):
    size = size or cfg.n_embd
    return RMSNorm(size) if cfg.norm == "rmsnorm" else nn.LayerNorm(size, bias=cfg.bias)


class Linear(nn.Linear):
    """nn.Linear with a slot for a faster forward of the same function while no gradient is wanted:
    the engine sets inference_forward (a weight prepacked for the CPU's oneDNN:
    pianogpt/torch_internals.PackedLinear) for the length of a generate call. Never with gradients:
    such a forward has no backward."""

    inference_forward = None

    def forward(self, x):
        if self.inference_forward is not None and not torch.is_grad_enabled():
            return self.inference_forward(x)
        return super().forward(x)


# ---------------------------------------------------------------------- the KV cache


class KVCache:
    """Keys and values of one attention layer, preallocated for max_len positions.

    Two ways in: append (a chunk after the `length` cached positions: the prefill) and write_at
    (one token at a position given as a device tensor). With static=True a one-token step then
    attends over all max_len slots under a mask (the static shapes a compiled step needs);
    otherwise over the filled slots only, which reads less memory in eager mode.
    """

    def __init__(self, batch, n_head, max_len, head_dim, dtype, device):
        self.k = torch.zeros(batch, n_head, max_len, head_dim, dtype=dtype, device=device)
        self.v = torch.zeros_like(self.k)
        self.length = 0  # filled slots, as the eager paths count them
        self.static = False  # True: one-token steps attend over every slot under a mask (compiled decoding)

    def append(self, k, v):
        start, end = self.length, self.length + k.size(2)
        self.k[:, :, start:end] = k
        self.v[:, :, start:end] = v
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end]

    def write_at(self, pos, k, v):
        """Store one token's k, v at pos; (keys, values, mask) for its attention: the filled
        slots and no mask (eager), or every slot masked beyond pos (static)."""
        self.k.index_copy_(2, pos, k.to(self.k.dtype))
        self.v.index_copy_(2, pos, v.to(self.v.dtype))
        if self.static:
            return self.k, self.v, (torch.arange(self.k.size(2), device=pos.device) <= pos)[None, :]
        self.length += 1
        return self.k[:, :, :self.length], self.v[:, :, :self.length], None


def new_caches(model, batch, device, dtype, max_len=None):
    """One empty KVCache per block, for `batch` rows and max_len positions (default: the context)."""
    cfg = model.config
    return [KVCache(batch, cfg.n_head, max_len or cfg.block_size, cfg.n_embd // cfg.n_head, dtype, device)
            for _ in model.blocks]


# ---------------------------------------------------------------------- the network


def rotary_tables(head_dim, length, base):
    """cos and sin [length, head_dim / 2] of the rotary angles position * base^(-2i / head_dim)."""
    inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angles = torch.outer(torch.arange(length, dtype=torch.float64), inv_freq)
    return angles.cos().float(), angles.sin().float()


def apply_rotary(x, cos, sin):
    """Rotate each (first half, second half) pair of x [B, H, T, D] by the angles of its position."""
    a, b = x.float().chunk(2, dim=-1)
    return torch.cat([a * cos - b * sin, a * sin + b * cos], dim=-1).to(x.dtype)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.n_head = cfg.n_head
        self.attn_dropout = cfg.attn_dropout
        self.c_attn = Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)  # fused q, k, v
        self.c_proj = Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.resid_dropout = nn.Dropout(cfg.dropout)
        if cfg.qk_norm:
            self.q_norm = RMSNorm(cfg.n_embd // cfg.n_head)
            self.k_norm = RMSNorm(cfg.n_embd // cfg.n_head)

    def forward(self, x, cache=None, rotary=None, step_pos=None):
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        if hasattr(self, "q_norm"):
            q, k = self.q_norm(q), self.k_norm(k)
        if rotary is not None:
            q, k = apply_rotary(q, *rotary), apply_rotary(k, *rotary)
        dropout_p = self.attn_dropout if self.training else 0.0
        if step_pos is not None:  # one token at a device position
            k, v, visible = cache.write_at(step_pos, k, v)
            y = F.scaled_dot_product_attention(q.to(k.dtype), k, v, attn_mask=visible)
            return self.resid_dropout(self.c_proj(y.transpose(1, 2).reshape(B, T, C).to(x.dtype)))
        past = 0
        if cache is not None:  # attention runs in the cache's precision (the engine chooses it)
            past = cache.length
            k, v = cache.append(k, v)
            q = q.to(k.dtype)
        if past == 0:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout_p)
        elif T == 1:  # one new token sees every cached position: no mask needed
            y = F.scaled_dot_product_attention(q, k, v)
        else:  # a chunk after `past` cached tokens: causal, offset by past
            mask = torch.ones(T, past + T, dtype=torch.bool, device=x.device).tril(diagonal=past)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        y = y.transpose(1, 2).contiguous().view(B, T, C).to(x.dtype)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.activation = cfg.mlp
        self.c_fc = Linear(cfg.n_embd, 4 * cfg.n_embd, bias=cfg.bias)
        self.c_proj = Linear(4 * cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x):
        h = self.c_fc(x)
        h = F.relu(h).square() if self.activation == "relu2" else F.gelu(h)
        return self.dropout(self.c_proj(h))


class Block(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.ln_1 = norm_layer(cfg)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = norm_layer(cfg)
        self.mlp = MLP(cfg)

    def forward(self, x, cache=None, rotary=None, step_pos=None):
        x = x + self.attn(self.ln_1(x), cache, rotary, step_pos)
        return x + self.mlp(self.ln_2(x))


class MusicTransformer(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.config = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wce = nn.Embedding(cfg.n_composers, cfg.n_embd)
        if cfg.n_kinds:  # which kind of MIDI a piece is (score or performance), so the composer need not say it
            self.wke = nn.Embedding(cfg.n_kinds, cfg.n_embd)
        if cfg.n_roles:  # where a token stands in an infilling window (pianogpt/generation/infill.py); row 0: plain music
            self.wre = nn.Embedding(cfg.n_roles, cfg.n_embd)
        if cfg.composer_layers:  # zero: a composer without learned layer rows is exactly as without them
            self.wcl = nn.Parameter(torch.zeros(cfg.n_composers, cfg.n_layer, cfg.n_embd))
        if cfg.n_periods:  # the composer's period (0: unknown, adds nothing), set from the composer names
            self.wpr = nn.Embedding(cfg.n_periods, cfg.n_embd)
            self.register_buffer("period_of", torch.zeros(cfg.n_composers, dtype=torch.long))
            if cfg.composer_layers:
                self.wpl = nn.Parameter(torch.zeros(cfg.n_periods, cfg.n_layer, cfg.n_embd))
        if cfg.positions == "learned":
            self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd)
        else:  # not in the state dict: a function of the config
            cos, sin = rotary_tables(cfg.n_embd // cfg.n_head, cfg.block_size, cfg.rope_base)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = norm_layer(cfg)
        self.lm_head = Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        if cfg.tie_head:
            self.lm_head.weight = self.wte.weight  # tied: one Parameter
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):  # GPT-2: scale residual projections by depth
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(module):
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self):
        """Unique parameters (the tied head counts once)."""
        return sum(p.numel() for p in self.parameters())

    def forward(self, idx, composer, targets=None, caches=None, start_pos=0, all_logits=False, kind=None, role=None):
        """idx [B, T] token ids, composer [B] ids -> (logits, loss). kind [B] (0 unknown, 1 score,
        2 performance; None = unknown) is read only by a model with n_kinds > 0, role [B, T] (each
        token's place in an infilling window; None = plain music) only by one with n_roles > 0.

        With targets: logits at every position and the label-smoothed cross-entropy that
        ignores PAD targets. Without: logits of the last position only (unless all_logits),
        as generation needs. caches/start_pos: incremental decoding (a list of KVCache, one per block).
        """
        B, T = idx.shape
        if start_pos + T > self.config.block_size:
            raise ValueError(f"sequence of {start_pos + T} tokens exceeds block_size {self.config.block_size}")
        x, rotary = self.embed(idx, composer, torch.arange(start_pos, start_pos + T, device=idx.device), kind, role)
        layer_rows = self.composer_layer_rows(composer)
        for i, block in enumerate(self.blocks):
            if layer_rows is not None:
                x = x + layer_rows[:, i, None, :]
            if caches is not None:
                x = block(x, caches[i], rotary)
            elif self.config.grad_checkpoint and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, None, rotary, use_reentrant=False)
            else:
                x = block(x, None, rotary)
        x = self.ln_f(x)
        if targets is None:
            return self.head(x if all_logits else x[:, -1:, :]), None
        logits = self.head(x)
        loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1),
                               ignore_index=self.config.pad_id, label_smoothing=self.config.label_smoothing)
        return logits, loss

    def embed(self, idx, composer, positions, kind=None, role=None):
        """The residual stream's input for tokens idx [B, T] at positions [T] (a device tensor), and
        the rotary angles of those positions (None with learned positions)."""
        x = self.wte(idx) + composer_vectors(self.with_periods(self.wce.weight, "wpr"), composer)[:, None, :]
        if self.config.n_kinds:
            kind = torch.zeros(idx.size(0), dtype=torch.long, device=idx.device) if kind is None else kind
            x = x + self.wke(kind)[:, None, :]
        if self.config.n_roles:
            x = x + (self.wre.weight[0] if role is None else self.wre(role))
        rotary = None
        if self.config.positions == "learned":
            x = x + self.wpe(positions)
        else:
            rotary = (self.rope_cos[positions], self.rope_sin[positions])
        return self.drop(x), rotary

    def composer_layer_rows(self, composer):
        """[B, n_layer, n_embd]: what composer_layers adds before each block, or None without it."""
        return composer_vectors(self.with_periods(self.wcl, "wpl"), composer) if self.config.composer_layers else None

    def with_periods(self, rows, name):
        """A composer table [n_composers, ...] with each composer's period row added (none for period 0)."""
        if not self.config.n_periods:
            return rows
        table = getattr(self, name)
        table = table.weight if isinstance(table, nn.Embedding) else table
        known = (self.period_of > 0).to(rows.dtype).view(-1, *[1] * (rows.dim() - 1))
        return rows + table[self.period_of] * known

    def head(self, x):
        return self.lm_head(x)

    def token_log_probs(self, idx, composer, targets, kind=None, role=None):
        """log p(target_t | idx_<=t, composer, kind) for every position [B, T], no smoothing."""
        logits, _ = self(idx, composer, all_logits=True, kind=kind, role=role)
        return torch.log_softmax(logits.float(), dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)

    def target_nll(self, idx, composer, targets, kind=None):
        """(NLL of every non-PAD target, 0 at PAD [B, T]; 1 where a target is real [B, T]): no label
        smoothing, whatever the model trains with, so runs with and without it compare on one scale."""
        real = (targets != self.config.pad_id).float()
        return -self.token_log_probs(idx, composer, targets, kind) * real, real

    # ------------------------------------------------------------------ decoding

    def decode_step(self, token, composer, caches, pos, kind=None, role=None):
        """Logits [B, vocab] of the next token after `token` [B, 1] placed at position `pos`
        (a one-element long tensor on the device); role [B, 1] its infilling role. Every shape is
        static and nothing is read back to the host, so torch.compile can compile it once (CUDA
        graphs on a GPU)."""
        x, rotary = self.embed(token, composer, pos, kind, role)
        layer_rows = self.composer_layer_rows(composer)
        for i, (block, cache) in enumerate(zip(self.blocks, caches)):
            if layer_rows is not None:
                x = x + layer_rows[:, i, None, :]
            x = block(x, cache, rotary, step_pos=pos)
        return self.head(self.ln_f(x))[:, -1]

    # ------------------------------------------------------------------ cost

    def flops_per_token(self, seq_len):
        """Training (forward + backward) FLOPs per token, PaLM appendix B."""
        cfg = self.config
        lookups = [p for name, p in self.named_parameters() if name.startswith(("wpe", "wce", "wpr"))
                   or name == "wte.weight" and not cfg.tie_head]  # tables read, not multiplied
        non_embedding = self.num_params() - sum(p.numel() for p in lookups)
        return 6 * non_embedding + 12 * cfg.n_layer * cfg.n_embd * seq_len

    def estimate_mfu(self, tokens_per_second, seq_len, peak_flops):
        """Model FLOPs utilisation: achieved training FLOP/s as a share of peak_flops."""
        return self.flops_per_token(seq_len) * tokens_per_second / peak_flops


# ---------------------------------------------------------------------- composers


def composer_vectors(rows, composer):
    """rows [n_composers, ...] of composer ids [B], or their weighted sums for a mix of composers
    given as weights [B, n_composers] (a style mix: 0.7 Chopin + 0.3 Bach)."""
    flat = rows.flatten(1)  # [n_composers, every other axis]
    picked = composer.to(rows.dtype) @ flat if composer.is_floating_point() else F.embedding(composer, flat)
    return picked.view(len(composer), *rows.shape[1:])


# ---------------------------------------------------------------------- loading weights


def load_state(model, state):
    """load_state_dict that names what differs instead of dumping a tensor-size traceback."""
    state = {k.removeprefix("_orig_mod.").removeprefix("module."): v for k, v in state.items()}
    own = model.state_dict()
    problems = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                for k in own if k in state and state[k].shape != own[k].shape]
    problems += [f"missing {k}" for k in own if k not in state]
    problems += [f"unexpected {k}" for k in state if k not in own]
    if problems:
        raise ValueError("checkpoint does not match the model: " + "; ".join(problems[:6]))
    model.load_state_dict(state)
