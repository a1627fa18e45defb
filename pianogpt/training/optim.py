"""The optimizers (AdamW; Muon for the hidden matrices, AdamW for the rest) and the learning rate.

Muon (Keller Jordan's MomentUm Orthogonalized by Newton-schulz) replaces each hidden matrix's
momentum by its nearest semi-orthogonal matrix before the step. The orthogonalisation is five
quintic Newton-Schulz iterations; they tolerate bf16, which halves their cost on a GPU or a CPU
with native bf16. On a CPU without native bf16 (AVX2) bf16 products are emulated and crawl, so
there the iterations run in float32: `orthogonalization_dtype` picks by device.
"""
import math

import torch

from pianogpt.torch_internals import cpu_has_native_bf16

OPTIMIZERS = ("adamw", "muon")

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)  # the quintic of torch.optim.Muon / Keller Jordan's reference
NS_STEPS = 5


def orthogonalization_dtype(device):
    """bf16 where it runs natively (any GPU, a CPU with AVX512-BF16 or AMX), float32 elsewhere."""
    device = torch.device(device)
    if device.type == "cpu":
        return torch.bfloat16 if cpu_has_native_bf16() else torch.float32
    return torch.bfloat16


def newton_schulz(grad, dtype, steps=NS_STEPS, eps=1e-7):
    """Approximately U V^T for grad = U S V^T (singular values land in about [0.7, 1.2]),
    computed in dtype; the same operations, in the same order, as torch.optim.Muon's."""
    a, b, c = NS_COEFFICIENTS
    x = grad.to(dtype)
    tall = grad.size(0) > grad.size(1)
    if tall:
        x = x.T  # iterate on the wide side: the Gram matrix is the smaller one
    x = x / x.norm().clamp(min=eps)  # spectral norm <= Frobenius norm <= 1 (not in place: x may be the momentum)
    for _ in range(steps):
        gram = x @ x.T
        poly = torch.addmm(gram, gram, gram, beta=b, alpha=c)
        x = torch.addmm(x, poly, x, beta=a)
    return x.T if tall else x


class Muon(torch.optim.Optimizer):
    """Muon with Nesterov momentum and decoupled weight decay, its update scaled to AdamW's RMS
    (0.2 * sqrt(max(rows, cols))) so that an AdamW learning rate carries over. State and
    param-group keys are torch.optim.Muon's, so checkpoints of either load into the other."""

    def __init__(self, params, lr=1e-3, weight_decay=0.1, momentum=0.95, ns_dtype=torch.bfloat16):
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=True,
                        ns_coefficients=NS_COEFFICIENTS, eps=1e-7, ns_steps=NS_STEPS, adjust_lr_fn="match_rms_adamw")
        super().__init__(params, defaults)
        for group in self.param_groups:
            if any(p.dim() != 2 for p in group["params"]):
                raise ValueError("Muon only takes 2-D matrices")
        self.ns_dtype = ns_dtype  # not a group key: a checkpoint's groups replace ours on load

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            lr, momentum = group["lr"], group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                buf = self.state[p].setdefault("momentum_buffer", torch.zeros_like(p.grad))
                buf.lerp_(p.grad, 1 - momentum)
                update = p.grad.lerp(buf, momentum) if group["nesterov"] else buf
                update = newton_schulz(update, self.ns_dtype, group["ns_steps"], group["eps"])
                p.mul_(1 - lr * group["weight_decay"])
                p.add_(update, alpha=-lr * (0.2 * math.sqrt(max(p.shape))))


class MuonWithAdamW:
    """Two optimizers stepped as one: Muon for the hidden matrices, AdamW for everything else.

    param_groups is both optimizers' groups (the same dicts), so a loop that sets each
    group's "lr" schedules both; the state dict holds both under their names.
    """

    def __init__(self, muon, adamw):
        self.muon, self.adamw = muon, adamw
        self.state = {}  # GradScaler looks for it; each optimizer keeps its own

    @property
    def param_groups(self):  # read anew: load_state_dict replaces each optimizer's group dicts
        return self.muon.param_groups + self.adamw.param_groups

    def step(self):
        self.muon.step()
        self.adamw.step()

    def zero_grad(self, set_to_none=True):
        self.muon.zero_grad(set_to_none=set_to_none)
        self.adamw.zero_grad(set_to_none=set_to_none)

    def state_dict(self):
        return {"muon": self.muon.state_dict(), "adamw": self.adamw.state_dict()}

    def load_state_dict(self, state):
        if set(state) != {"muon", "adamw"}:
            raise ValueError("the checkpoint's optimizer state is not Muon + AdamW")
        self.muon.load_state_dict(state["muon"])
        self.adamw.load_state_dict(state["adamw"])


def configure_optimizers(model, weight_decay, learning_rate, betas=(0.9, 0.95), device_type="cpu",
                         optimizer="adamw"):
    """AdamW (fused: one kernel for all tensors); weight decay on 2-D weights (matmuls,
    embeddings) only. optimizer="muon": Muon on the blocks' 2-D matrices, AdamW on the
    rest (embeddings, composer and kind tables, head, gains, biases); see MuonWithAdamW."""
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {optimizer!r}")
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    hidden = [p for n, p in named if optimizer == "muon" and n.startswith("blocks.") and p.dim() == 2]
    rest = [p for n, p in named if not any(p is h for h in hidden)]
    groups = [{"params": [p for p in rest if p.dim() >= 2], "weight_decay": weight_decay},
              {"params": [p for p in rest if p.dim() < 2], "weight_decay": 0.0}]
    adamw = torch.optim.AdamW(groups, lr=learning_rate, betas=betas, fused=device_type in ("cuda", "cpu"))
    if optimizer == "adamw" or not hidden:  # nothing for Muon (every block frozen): AdamW alone
        return adamw
    # match_rms_adamw scales each update to AdamW's RMS, so the AdamW learning rate carries over
    muon = Muon(hidden, lr=learning_rate, weight_decay=weight_decay, momentum=0.95,
                ns_dtype=orthogonalization_dtype(hidden[0].device))
    return MuonWithAdamW(muon, adamw)


# ----------------------------------------------------------------------------- the learning rate


def lr_at(it, cfg, max_iters, time_progress=0.0):
    """Linear warmup for warmup_frac of the run, then cosine decay to min_lr.

    time_progress (share of max_minutes used): with a time budget, the run's progress is
    the larger of the iteration share and the time share, so the schedule ends when
    either runs out.
    """
    if time_progress > 0:
        progress = min(1.0, max(it / max_iters, time_progress))
        if progress < cfg.warmup_frac:
            return cfg.learning_rate * progress / cfg.warmup_frac
        return cosine_decay(cfg, (progress - cfg.warmup_frac) / max(1e-9, 1 - cfg.warmup_frac))
    warmup = int(cfg.warmup_frac * max_iters)
    if it < warmup:
        return cfg.learning_rate * (it + 1) / (warmup + 1)
    return cosine_decay(cfg, min(1.0, (it - warmup) / max(1, max_iters - warmup)))


def cosine_decay(cfg, progress):
    """learning_rate at progress 0, min_lr at 1, along half a cosine."""
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.learning_rate - cfg.min_lr)
