"""The whole model: a GPT-2-style causal transformer over REMI tokens, conditioned on a composer.

token embedding + composer embedding (every position) + position embedding -> dropout ->
n_layer pre-LN blocks (SDPA attention, GELU MLP) -> LayerNorm -> head tied to the token
embedding. `generate` decodes with a KV cache and classifier-free guidance in one batch.
"""
import math
import os
import pickle
import warnings
from dataclasses import dataclass, fields

import torch
import torch.nn as nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint


COMPOSER_MODES = ("add", "block")


@dataclass
class ModelConfig:
    block_size: int = 1024  # longest context, in tokens
    vocab_size: int = 419
    n_composers: int = 1  # rows of the composer embedding; row 0 is "unconditional"
    n_layer: int = 8
    n_head: int = 8
    n_embd: int = 512
    dropout: float = 0.1  # embedding and residual dropout (cheap)
    attn_dropout: float = 0.0  # attention-probability dropout: makes CPU SDPA leave its fused kernel (~4x slower)
    bias: bool = True
    label_smoothing: float = 0.1
    pad_id: int = 0
    grad_checkpoint: bool = False  # recompute each block's activations in backward (long contexts)
    composer_mode: str = "add"  # add: the seed's composer embedding added at the input; block: also one per block

    def __post_init__(self):
        if self.composer_mode not in COMPOSER_MODES:
            raise ValueError(f"composer_mode must be one of {', '.join(COMPOSER_MODES)}, got {self.composer_mode!r}")

    @classmethod
    def from_dict(cls, d):
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


class KVCache:
    """Keys and values of one attention layer for positions [0, length), preallocated."""

    def __init__(self, batch, n_head, max_len, head_dim, dtype, device):
        self.k = torch.zeros(batch, n_head, max_len, head_dim, dtype=dtype, device=device)
        self.v = torch.zeros_like(self.k)
        self.length = 0

    def append(self, k, v):
        start, end = self.length, self.length + k.size(2)
        self.k[:, :, start:end] = k
        self.v[:, :, start:end] = v
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end]


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        assert cfg.n_embd % cfg.n_head == 0, "n_embd must be divisible by n_head"
        self.n_head = cfg.n_head
        self.attn_dropout = cfg.attn_dropout
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)  # fused q, k, v
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(self, x, cache=None):
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        dropout_p = self.attn_dropout if self.training else 0.0
        past = 0
        if cache is not None:
            past = cache.length
            k, v = cache.append(k, v)
        if past == 0:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout_p)
        elif T == 1:  # one new token sees every cached position: no mask needed
            y = F.scaled_dot_product_attention(q, k, v)
        else:  # a chunk after `past` cached tokens: causal, offset by past
            mask = torch.ones(T, past + T, dtype=torch.bool, device=x.device).tril(diagonal=past)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=cfg.bias)
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.mlp = MLP(cfg)

    def forward(self, x, cache=None):
        x = x + self.attn(self.ln_1(x), cache)
        return x + self.mlp(self.ln_2(x))


class MusicTransformer(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.config = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wce = nn.Embedding(cfg.n_composers, cfg.n_embd)
        if cfg.composer_mode == "block":  # a composer vector added to the residual stream before every block
            self.wce_blocks = nn.Embedding(cfg.n_composers, cfg.n_layer * cfg.n_embd)
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
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

    def forward(self, idx, composer, targets=None, caches=None, start_pos=0, all_logits=False):
        """idx [B, T] token ids, composer [B] ids -> (logits, loss).

        With targets: logits at every position and the label-smoothed cross-entropy that
        ignores PAD targets. Without: logits of the last position only (unless all_logits),
        as generation needs. caches/start_pos: incremental decoding (see generate).
        """
        B, T = idx.shape
        if start_pos + T > self.config.block_size:
            raise ValueError(f"sequence of {start_pos + T} tokens exceeds block_size {self.config.block_size}")
        pos = torch.arange(start_pos, start_pos + T, device=idx.device)
        x = self.drop(self.wte(idx) + composer_vectors(self.wce, composer)[:, None, :] + self.wpe(pos))
        per_block = None
        if self.config.composer_mode == "block":
            per_block = composer_vectors(self.wce_blocks, composer).view(B, self.config.n_layer, 1, self.config.n_embd)
        for i, block in enumerate(self.blocks):
            if per_block is not None:
                x = x + per_block[:, i]
            if caches is not None:
                x = block(x, caches[i])
            elif self.config.grad_checkpoint and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        x = self.ln_f(x)
        if targets is None:
            return self.lm_head(x if all_logits else x[:, -1:, :]), None
        logits = self.lm_head(x)
        loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1),
                               ignore_index=self.config.pad_id, label_smoothing=self.config.label_smoothing)
        return logits, loss

    def token_log_probs(self, idx, composer, targets):
        """log p(target_t | idx_<=t, composer) for every position [B, T], no smoothing."""
        logits, _ = self(idx, composer, all_logits=True)
        return torch.log_softmax(logits.float(), dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)

    # ------------------------------------------------------------------ generation

    def new_caches(self, batch, device, dtype):
        cfg = self.config
        return [KVCache(batch, cfg.n_head, cfg.block_size, cfg.n_embd // cfg.n_head, dtype, device) for _ in self.blocks]

    @torch.no_grad()
    def generate(self, idx, composer, max_new_tokens, temperature=0.9, top_k=40, top_p=0.95, guidance=1.0,
                 generator=None, logits_processor=None, on_step=None, slide=None):
        """Continue idx [B, T] by max_new_tokens sampled tokens; returns [B, T + max_new_tokens].

        guidance g != 1 runs the conditional rows and unconditional (composer 0) rows in ONE
        batched forward and samples from uncond + g * (cond - uncond). When the context
        reaches block_size, the window slides: the cache is refilled from the last
        block_size - slide tokens (slide defaults to block_size // 4).
        logits_processor(seq, logits) -> logits may mask tokens (grammar constraints);
        on_step(step, logits, window_start) is called with the logits each token is drawn from.
        """
        check_sampling_args(temperature, top_k, top_p, guidance)
        if idx.dim() != 2 or idx.size(1) == 0:
            raise ValueError("idx must be [batch, >=1 tokens] (start with BOS)")
        block = self.config.block_size
        slide = max(1, min(block - 1, slide or block // 4))
        use_cfg = guidance != 1.0
        conditions = torch.cat([composer, unconditional_like(composer)]) if use_cfg else composer
        dtype = next(self.parameters()).dtype

        def prefill(seq, keep):
            """Fresh caches holding the last `keep` tokens; logits for the next token."""
            start = max(0, seq.size(1) - keep)
            context = seq[:, start:]
            caches = self.new_caches(conditions.size(0), seq.device, dtype)
            rows = torch.cat([context, context]) if use_cfg else context
            logits, _ = self(rows, conditions, caches=caches, start_pos=0)
            return logits[:, -1], caches, start

        was_training = self.training
        self.eval()
        seq = idx
        logits, caches, start = prefill(seq, block)
        for step in range(max_new_tokens):
            mixed = guided_logits(logits, guidance) if use_cfg else logits.float()
            if logits_processor is not None:
                mixed = logits_processor(seq, mixed)
            if on_step is not None:
                on_step(step, mixed, start)
            next_token = sample_next(mixed, temperature, top_k, top_p, generator)
            seq = torch.cat([seq, next_token], dim=1)
            if step == max_new_tokens - 1:
                break
            if caches[0].length == block:  # window full: slide and re-prefill
                logits, caches, start = prefill(seq, block - slide)
            else:
                rows = torch.cat([next_token, next_token]) if use_cfg else next_token
                logits, _ = self(rows, conditions, caches=caches, start_pos=caches[0].length)
                logits = logits[:, -1]
        self.train(was_training)
        return seq

    # ------------------------------------------------------------------ training helpers

    def configure_optimizers(self, weight_decay, learning_rate, betas=(0.9, 0.95), device_type="cpu",
                             composer_decay=True, composer_lr_scale=1.0):
        """AdamW; weight decay on 2-D weights (matmuls, embeddings) only; fused on CUDA.

        composer_decay=False / composer_lr_scale != 1 put the composer tables in a group of
        their own: no weight decay, and a learning rate scaled by composer_lr_scale (a
        group's "lr_scale"; the training loop multiplies its scheduled LR by it).
        """
        named = [(n, p) for n, p in self.named_parameters() if p.requires_grad]
        own_group = not composer_decay or composer_lr_scale != 1.0
        composer = [p for n, p in named if own_group and n.startswith("wce")]
        rest = [(n, p) for n, p in named if not (own_group and n.startswith("wce"))]
        groups = [
            {"params": [p for _, p in rest if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for _, p in rest if p.dim() < 2], "weight_decay": 0.0},
        ]
        if composer:
            groups.append({"params": composer, "weight_decay": weight_decay if composer_decay else 0.0,
                           "lr_scale": composer_lr_scale})
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, fused=device_type == "cuda")

    def flops_per_token(self, seq_len):
        """Training (forward + backward) FLOPs per token, PaLM appendix B."""
        cfg = self.config
        non_embedding = self.num_params() - self.wpe.weight.numel() - sum(
            p.numel() for name, p in self.named_parameters() if name.startswith("wce"))
        return 6 * non_embedding + 12 * cfg.n_layer * cfg.n_embd * seq_len

    def estimate_mfu(self, tokens_per_second, seq_len, peak_flops):
        """Model FLOPs utilisation: achieved training FLOP/s as a share of peak_flops."""
        return self.flops_per_token(seq_len) * tokens_per_second / peak_flops

    @classmethod
    def from_checkpoint(cls, path, device="cpu"):
        return cls.from_checkpoint_dict(load_checkpoint(path, device), device)

    @classmethod
    def from_checkpoint_dict(cls, checkpoint, device="cpu"):
        model = cls(ModelConfig.from_dict(checkpoint["model_config"]))
        load_state(model, checkpoint["model"])
        return model.to(device).eval()


# ---------------------------------------------------------------------- composers


def composer_vectors(table, composer):
    """Rows of an embedding table for composer ids [B], or their weighted sums for a mix of
    composers given as weights [B, n_composers] (a style mix: 0.7 Chopin + 0.3 Bach)."""
    if composer.is_floating_point():
        return composer.to(table.weight.dtype) @ table.weight
    return table(composer)


def unconditional_like(composer):
    """The unconditional condition (composer 0) in the same form as `composer`."""
    if composer.is_floating_point():
        return torch.nn.functional.one_hot(torch.zeros(composer.size(0), dtype=torch.long, device=composer.device),
                                           composer.size(1)).to(composer.dtype)
    return torch.zeros_like(composer)


# ---------------------------------------------------------------------- sampling


def check_sampling_args(temperature, top_k, top_p, guidance):
    if not (isinstance(temperature, (int, float)) and temperature > 0 and math.isfinite(temperature)):
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if top_k is not None and (int(top_k) != top_k or top_k < 0):
        raise ValueError(f"top_k must be a non-negative integer (0 = off), got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if not (guidance >= 0 and math.isfinite(guidance)):
        raise ValueError(f"guidance must be >= 0, got {guidance}")


def guided_logits(logits, guidance):
    """Classifier-free guidance over a batch whose first half is conditional and second half
    unconditional: uncond + g * (cond - uncond)."""
    cond, uncond = logits.float().chunk(2)
    return uncond + guidance * (cond - uncond)


def filter_logits(logits, top_k=None, top_p=None):
    """-inf outside the top_k tokens and outside the smallest set whose probability >= top_p."""
    logits = logits.clone()
    if top_k:
        k = min(int(top_k), logits.size(-1))
        kth = torch.topk(logits, k, dim=-1).values[..., -1:]
        logits[logits < kth] = float("-inf")
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = torch.softmax(sorted_logits, dim=-1)
        # drop a token when the tokens ranked above it already reach top_p
        drop_sorted = probs.cumsum(dim=-1) - probs >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits[drop] = float("-inf")
    return logits


def sample_next(logits, temperature, top_k, top_p, generator=None):
    probs = torch.softmax(filter_logits(logits / temperature, top_k, top_p), dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator)


# ---------------------------------------------------------------------- checkpoints


def load_checkpoint(path, device="cpu"):
    """torch.load with weights_only=True: a checkpoint carrying code is refused."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        with warnings.catch_warnings():  # torch warns about foreign pickle protocols; our error says more
            warnings.simplefilter("ignore", UserWarning)
            checkpoint = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as e:
        culprit = next((line.strip() for line in str(e).splitlines() if "Unsupported" in line or "GLOBAL" in line),
                       "objects other than tensors")
        raise ValueError(f"refusing to load {path}: it is not a plain-tensor checkpoint and may run code "
                         f"({culprit}); only load checkpoints from sources you trust") from None
    except Exception as e:
        raise ValueError(f"cannot read checkpoint {path}: {type(e).__name__}: {str(e).splitlines()[0]}") from None
    missing = [k for k in ("model", "model_config") if k not in checkpoint]
    if missing:
        raise ValueError(f"{path} is not a checkpoint of this project (missing {', '.join(missing)})")
    return checkpoint


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
