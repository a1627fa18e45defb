"""model.py: causality, KV cache, guidance, tying, sampling filters, learning, checkpoints."""
import pickle

import pytest
import torch

from conftest import tiny_model
from model import ModelConfig, MusicTransformer, new_caches
from pianogpt.checkpoints import load_checkpoint, network_of
from pianogpt.generation.engine import filter_logits, generate, sample_next
from pianogpt.training.optim import configure_optimizers


LEVERS = {  # the modern recipe's architecture options (tests/test_recipe.py tests what each promises)
    "gpt2": {},
    "rope": dict(positions="rope"),
    "rmsnorm": dict(norm="rmsnorm"),
    "relu2": dict(mlp="relu2"),
    "qk_norm": dict(qk_norm=True),
    "untied": dict(tie_head=False),
    "kinds": dict(n_kinds=3),
    "all": dict(positions="rope", norm="rmsnorm", mlp="relu2", qk_norm=True, tie_head=False, n_kinds=3),
}


@pytest.mark.parametrize("lever", LEVERS)
def test_future_tokens_never_change_past_logits(lever):
    model = tiny_model(**LEVERS[lever])
    idx = torch.randint(2, 64, (2, 20))
    composer = torch.tensor([1, 2])
    base, _ = model(idx, composer, all_logits=True)
    for t in (0, 7, 19):
        changed = idx.clone()
        changed[:, t] = (changed[:, t] + 5) % 64
        logits, _ = model(changed, composer, all_logits=True)
        assert torch.equal(logits[:, :t], base[:, :t]), f"position < {t} saw token {t}"
        assert not torch.allclose(logits[:, t], base[:, t])


@pytest.mark.parametrize("lever", ["gpt2", "rope", "all", "kinds"])
def test_kv_cache_logits_equal_full_forward_at_every_step_and_across_slides(lever):
    model = tiny_model(block_size=16, **LEVERS[lever])
    prompt = torch.randint(2, 64, (2, 5))
    composer = torch.tensor([1, 3])
    seen = []
    out = generate(model, prompt, composer, 40, guidance=1.0, generator=torch.Generator().manual_seed(0),
                         on_step=lambda step, logits, start: seen.append((step, logits.clone(), start)))
    starts = {start for _, _, start in seen}
    assert len(starts) >= 3, "40 tokens through a 16-token window must slide several times"
    for step, logits, start in seen:
        context = out[:, start:prompt.size(1) + step]
        assert context.size(1) <= 16
        full, _ = model(context, composer)
        torch.testing.assert_close(logits, full[:, -1], atol=1e-4, rtol=0)


@pytest.mark.parametrize("lever", LEVERS)
def test_cache_filled_in_chunks_equals_full_forward(lever):
    model = tiny_model(**LEVERS[lever])
    idx = torch.randint(2, 64, (2, 20))
    composer = torch.tensor([1, 2])
    full, _ = model(idx, composer, all_logits=True)
    caches = new_caches(model, 2, idx.device, torch.float32)
    pieces = [model(idx[:, a:b], composer, caches=caches, start_pos=a, all_logits=True)[0]
              for a, b in ((0, 7), (7, 8), (8, 20))]
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=0)


def test_generation_builds_no_autograd_graph_so_memory_stays_flat():
    model = tiny_model(block_size=16)  # parameters that require grad, as a loaded model's do
    seen = []
    generate(model, torch.ones(2, 1, dtype=torch.long), torch.tensor([1, 2]), 20, guidance=3.0,
                   on_step=lambda step, logits, start: seen.append(logits))
    assert all(p.requires_grad for p in model.parameters())
    assert not any(logits.requires_grad for logits in seen), "each step's graph would hold every earlier key"


def test_guidance_one_is_exactly_the_conditional_model():
    model = tiny_model()
    prompt = torch.ones(3, 1, dtype=torch.long)
    composer = torch.tensor([1, 2, 3])
    out = generate(model, prompt, composer, 12, temperature=0.8, top_k=10, top_p=0.9, guidance=1.0,
                         generator=torch.Generator().manual_seed(7))
    # the same draws by hand, from full forwards of the conditional model
    gen, seq = torch.Generator().manual_seed(7), prompt
    for _ in range(12):
        logits, _ = model(seq, composer)
        seq = torch.cat([seq, sample_next(logits[:, -1], 0.8, 10, 0.9, gen)], dim=1)
    assert torch.equal(out, seq)


@pytest.mark.parametrize("guidance", [0.0, 3.0])
def test_guidance_mixes_conditional_and_unconditional_logits(guidance):
    model = tiny_model()
    prompt = torch.randint(2, 64, (2, 4))
    composer = torch.tensor([2, 3])
    seen = []
    out = generate(model, prompt, composer, 6, guidance=guidance, on_step=lambda s, logits, start: seen.append(logits))
    for step, logits in enumerate(seen):
        seq = out[:, :4 + step]
        cond, _ = model(seq, composer)
        uncond, _ = model(seq, torch.zeros_like(composer))
        expected = uncond[:, -1] + guidance * (cond[:, -1] - uncond[:, -1])
        torch.testing.assert_close(logits, expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("guidance", [0.0, 3.0])
def test_guidance_within_kinds_keeps_the_conditional_kind_odds_and_guides_inside_each_kind(guidance):
    from pianogpt.generation.engine import guided_logits
    torch.manual_seed(0)
    logits = torch.randn(4, 12) * 3  # rows 0-1 conditional, rows 2-3 unconditional
    logits[0, 5] = -80.0  # a token the guided mix pushes far down must not break the sums
    kinds = torch.tensor([0, 0, 1, 1, 1, 2, 2, 2, 2, 3, 0, 1])
    plain = torch.softmax(guided_logits(logits, guidance), -1)
    within = torch.softmax(guided_logits(logits, guidance, kinds), -1)
    cond = torch.softmax(logits[:2], -1)
    assert torch.isfinite(within).all()
    for kind in range(4):
        members = kinds == kind
        torch.testing.assert_close(within[:, members].sum(-1), cond[:, members].sum(-1))  # the kind's odds
        torch.testing.assert_close(within[:, members] / within[:, members].sum(-1, keepdim=True),
                                   plain[:, members] / plain[:, members].sum(-1, keepdim=True))  # guided inside
    torch.testing.assert_close(guided_logits(logits, 1.0, kinds).log_softmax(-1), logits[:2].log_softmax(-1))
    assert not torch.allclose(within, plain), "the mode must change something"


def test_composer_changes_logits_and_row_zero_is_trained():
    model = tiny_model().train()
    idx = torch.randint(2, 64, (2, 10))
    a, _ = model(idx, torch.tensor([1, 1]))
    b, _ = model(idx, torch.tensor([2, 2]))
    assert not torch.allclose(a, b)
    _, loss = model(idx, torch.tensor([0, 0]), targets=torch.randint(2, 64, (2, 10)))
    loss.backward()
    assert model.wce.weight.grad[0].abs().sum() > 0
    assert model.wce.weight.grad[1:].abs().sum() == 0


def test_composer_layer_rows_reach_every_block_alike_in_cache_and_full_forward():
    plain = tiny_model(block_size=16, n_layer=3)
    model = tiny_model(block_size=16, n_layer=3, composer_layers=True)
    idx, composer = torch.randint(2, 64, (2, 12)), torch.tensor([1, 3])
    assert torch.equal(model(idx, composer)[0], plain(idx, composer)[0])  # zero layer rows: exactly as without
    with torch.no_grad():
        model.wcl[3].normal_(0, 0.5)  # composer 3 only, one row per block
    for block in range(3):
        one_block = tiny_model(block_size=16, n_layer=3, composer_layers=True)
        with torch.no_grad():
            one_block.wcl[3, block] = model.wcl[3, block]
        changed = one_block(idx, composer, all_logits=True)[0]
        unchanged = plain(idx, composer, all_logits=True)[0]
        assert torch.equal(changed[0], unchanged[0]) and not torch.allclose(changed[1], unchanged[1]), block
    mix = torch.nn.functional.one_hot(composer, 4).float()  # a one-hot mix is the composer itself
    torch.testing.assert_close(model(idx, mix)[0], model(idx, composer)[0], atol=1e-5, rtol=0)
    seen = []
    out = generate(model, idx[:, :5], composer, 30, guidance=1.0, generator=torch.Generator().manual_seed(0),
                         on_step=lambda step, logits, start: seen.append((step, logits.clone(), start)))
    for step, logits, start in seen:
        full, _ = model(out[:, start:5 + step], composer)
        torch.testing.assert_close(logits, full[:, -1], atol=1e-4, rtol=0)


def test_head_is_tied_to_token_embedding_and_param_count_matches_formula():
    model = tiny_model()
    assert model.lm_head.weight is model.wte.weight
    assert model.lm_head.weight.data_ptr() == model.wte.weight.data_ptr()
    V, K, T, L, C = 64, 4, 32, 2, 32
    per_block = 2 * 2 * C + (3 * C * C + 3 * C) + (C * C + C) + (4 * C * C + 4 * C) + (4 * C * C + C)
    assert model.num_params() == V * C + K * C + T * C + L * per_block + 2 * C


def test_top_k_keeps_exactly_k_tokens():
    logits = torch.tensor([[1.0, 5.0, 3.0, 4.0, 2.0]])
    kept = filter_logits(logits, top_k=2)
    assert torch.isfinite(kept).tolist() == [[False, True, False, True, False]]
    probs = torch.softmax(kept, -1)
    assert probs[0, [0, 2, 4]].sum() == 0


def test_top_p_keeps_the_smallest_set_reaching_p():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    kept = filter_logits(probs.log(), top_p=0.75)
    assert torch.isfinite(kept).tolist() == [[True, True, False, False]]
    kept = filter_logits(probs.log(), top_p=0.8)  # 0.5 + 0.3 reaches 0.8: third token not needed
    assert torch.isfinite(kept).tolist() == [[True, True, False, False]]
    kept = filter_logits(probs.log(), top_p=0.81)
    assert torch.isfinite(kept).tolist() == [[True, True, True, False]]
    kept = filter_logits(probs.log(), top_p=0.01)  # the top token always survives
    assert torch.isfinite(kept).tolist() == [[True, False, False, False]]
    draws = torch.cat([sample_next(probs.log(), 1.0, None, 0.75, torch.Generator().manual_seed(i)) for i in range(200)])
    assert set(draws.flatten().tolist()) <= {0, 1}


@pytest.mark.parametrize("kwargs, message", [
    ({"temperature": 0.0}, "temperature"), ({"temperature": -1.0}, "temperature"),
    ({"top_k": -1}, "top_k"), ({"top_p": 0.0}, "top_p"), ({"top_p": 1.5}, "top_p"),
    ({"guidance": -2.0}, "guidance"),
])
def test_bad_sampling_arguments_are_rejected(kwargs, message):
    model = tiny_model()
    with pytest.raises(ValueError, match=message):
        generate(model, torch.ones(1, 1, dtype=torch.long), torch.tensor([1]), 3, **kwargs)


def test_tiny_model_overfits_one_sequence():
    torch.manual_seed(0)
    model = tiny_model(label_smoothing=0.0).train()
    seq = torch.randint(2, 64, (1, 33))
    composer = torch.tensor([1])
    optimizer = configure_optimizers(model, 0.0, 3e-3)
    for _ in range(300):
        _, loss = model(seq[:, :-1], composer, targets=seq[:, 1:])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.05


def test_pad_targets_do_not_count_in_the_loss():
    model = tiny_model()
    idx = torch.randint(2, 64, (1, 10))
    targets = torch.randint(2, 64, (1, 10))
    _, loss_short = model(idx[:, :6], torch.tensor([1]), targets=targets[:, :6])
    padded = targets.clone()
    padded[:, 6:] = 0
    _, loss_padded = model(idx, torch.tensor([1]), targets=padded)
    torch.testing.assert_close(loss_short, loss_padded)


def test_gradient_checkpointing_gives_the_same_gradients():
    grads = []
    for flag in (False, True):
        model = tiny_model(grad_checkpoint=flag).train()
        idx = torch.randint(2, 64, (2, 16))
        torch.manual_seed(1)
        idx = torch.randint(2, 64, (2, 16))
        _, loss = model(idx, torch.tensor([1, 2]), targets=idx)
        loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(grads[0], grads[1])


def test_checkpoint_round_trip_and_refusals(tmp_path):
    from dataclasses import asdict

    model = tiny_model()
    path = tmp_path / "ckpt.pt"
    torch.save({"model": model.state_dict(), "model_config": asdict(model.config)}, path)
    loaded = network_of(load_checkpoint(path))
    idx = torch.randint(2, 64, (1, 8))
    torch.testing.assert_close(loaded(idx, torch.tensor([1]))[0], model(idx, torch.tensor([1]))[0])

    class Payload:
        def __reduce__(self):
            return (print, ("pwned",))

    evil = tmp_path / "evil.pt"
    with open(evil, "wb") as f:
        pickle.dump({"model": Payload(), "model_config": {}}, f)
    with pytest.raises(ValueError, match="refusing to load"):
        load_checkpoint(evil)
    other = tmp_path / "other.pt"
    config = asdict(model.config) | {"vocab_size": 99}
    torch.save({"model": MusicTransformer(ModelConfig(**config)).state_dict(), "model_config": asdict(model.config)}, other)
    with pytest.raises(ValueError, match=r"wte.weight: checkpoint \(99, 32\) vs model \(64, 32\)"):
        network_of(load_checkpoint(other))
    with pytest.raises(FileNotFoundError):
        network_of(load_checkpoint(tmp_path / "missing.pt"))


def test_compiled_decode_step_matches_eager_logits_and_greedy_tokens_with_the_grammar():
    """The compiled one-token step (static shapes, device position) is the same function."""
    from pianogpt.data.remi import RemiGrammar, build_tokenizer, grammar_error_rate

    tok = build_tokenizer()
    torch.manual_seed(0)
    model = MusicTransformer(ModelConfig(block_size=48, vocab_size=419, n_composers=3, n_layer=2, n_head=2, n_embd=32,
                                         dropout=0.0, positions="rope", qk_norm=True)).eval()
    prompt, composer = torch.ones(2, 1, dtype=torch.long), torch.tensor([1, 2])
    runs = {}
    for compiled in (False, True):
        seen = []
        out = generate(model, prompt, composer, 60, top_k=1, guidance=3.0, compile=compiled,
                             logits_processor=RemiGrammar(tok), on_step=lambda s, logits, start: seen.append(logits))
        runs[compiled] = out, torch.stack(seen)
    assert torch.equal(runs[False][0], runs[True][0]), "greedy decoding gives the same tokens"
    finite = torch.isfinite(runs[False][1])
    assert torch.equal(finite, torch.isfinite(runs[True][1]))
    torch.testing.assert_close(runs[True][1][finite], runs[False][1][finite], atol=1e-4, rtol=0)
    assert all(grammar_error_rate(tok, row[1:]) == 0 for row in runs[True][0].tolist())


def test_a_compiled_decode_step_that_fails_to_build_decodes_eager_with_one_warning(monkeypatch):
    import warnings

    def fails_to_build(function, **options):  # what torch.compile gives where its build fails at the first call
        def step(*args):
            raise RuntimeError("InductorError: OSError: [Errno 28] No space left on device\n\nSet TORCHDYNAMO_VERBOSE=1")
        return step

    model = tiny_model(**LEVERS["all"])
    prompt, composer = torch.ones(2, 1, dtype=torch.long), torch.tensor([1, 2])
    eager = generate(model, prompt, composer, 20, guidance=3.0, generator=torch.Generator().manual_seed(0))
    monkeypatch.setattr(torch, "compile", fails_to_build)
    with pytest.warns(UserWarning) as warned:
        fell_back = generate(model, prompt, composer, 20, guidance=3.0, generator=torch.Generator().manual_seed(0),
                                   compile=True)
    said = [str(w.message) for w in warned if w.category is UserWarning]
    assert said == ["the compiled decode step failed (InductorError: OSError: [Errno 28] No space left on device); "
                    "decoding eager"]
    assert torch.equal(fell_back, eager), "the same tokens: nothing was lost to the failed build"
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # the failure is remembered: no second build, no warning
        again = generate(model, prompt, composer, 20, guidance=3.0, generator=torch.Generator().manual_seed(0),
                               compile=True)
    assert torch.equal(again, eager)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_prepacked_weights_give_the_same_logits_and_are_dropped_on_exit(dtype):
    from pianogpt.generation.engine import can_prepack, prepacked_weights
    from model import Linear
    torch.manual_seed(0)
    cfg = ModelConfig(block_size=32, vocab_size=64, n_composers=4, n_layer=2, n_head=4, n_embd=256, dropout=0.0,
                      **LEVERS["all"])
    model = MusicTransformer(cfg).eval().to(dtype)
    if not can_prepack(model.blocks[0].mlp.c_fc.weight):
        pytest.skip(f"oneDNN cannot prepack {dtype} weights on this CPU")
    linears = [m for m in model.modules() if isinstance(m, Linear)]
    packable = [m for m in linears if can_prepack(m.weight)]
    assert dtype == torch.float32 or packable == linears  # float32: only matrices big enough to pay
    idx = torch.randint(2, 64, (2, 12))
    composer = torch.tensor([1, 2])
    with torch.no_grad():
        plain, _ = model(idx, composer, all_logits=True)
        with prepacked_weights(model, rows=2):
            assert all(m.inference_forward is not None for m in packable)
            packed, _ = model(idx, composer, all_logits=True)
    assert all(m.inference_forward is None for m in linears)
    if dtype == torch.bfloat16:
        assert torch.equal(packed, plain), "bf16 through the packed weights must be bit-identical"
    else:
        torch.testing.assert_close(packed, plain, atol=1e-5, rtol=0)
    with prepacked_weights(model, rows=2):  # with gradients wanted the packs stand aside
        _, loss = model(idx, composer, targets=idx)
        loss.backward()
    assert model.lm_head.weight.grad is not None


def test_one_bf16_row_decodes_through_aten_gemv_with_onednns_numbers():
    from pianogpt.generation.engine import gemv_pays
    from pianogpt.torch_internals import onednn_enabled, onednn_off
    torch.manual_seed(0)
    cfg = ModelConfig(block_size=64, vocab_size=64, n_composers=4, n_layer=2, n_head=4, n_embd=256, dropout=0.0)
    model = MusicTransformer(cfg).eval().to(torch.bfloat16)
    weight = model.lm_head.weight
    assert gemv_pays(1, weight) and not gemv_pays(2, weight) and not gemv_pays(1, weight.float())
    prompt = torch.randint(2, 64, (1, 10))
    prompt[:, 0] = 1
    composer = torch.tensor([2])
    runs = {}
    for prepack in (True, False):  # True: one-row steps run with oneDNN off (aten's gemv); False: oneDNN
        seen = []
        out = generate(model, prompt, composer, 30, top_k=1, prepack=prepack,
                             on_step=lambda step, logits, start: seen.append(logits))
        runs[prepack] = out, torch.stack(seen)
    assert torch.equal(runs[True][0], runs[False][0]), "greedy decoding gives the same tokens"
    torch.testing.assert_close(runs[True][1], runs[False][1], atol=2e-2, rtol=0)  # one bf16 rounding apart
    assert onednn_enabled(), "generate restores oneDNN"
    with pytest.raises(RuntimeError), onednn_off():
        assert not onednn_enabled()
        raise RuntimeError("a failing step")
    assert onednn_enabled(), "restored after an exception too"


def test_a_period_row_moves_every_composer_of_its_period_and_no_other():
    model = tiny_model(n_composers=5, n_periods=3, composer_layers=True)
    model.period_of.copy_(torch.tensor([0, 1, 1, 2, 0]))  # row 0 unconditional; composer 4 of no known period
    idx = torch.randint(2, 64, (5, 8))
    composers = torch.arange(5)
    before = model(idx, composers, all_logits=True)[0]
    with torch.no_grad():
        model.wpr.weight[1].normal_()
        model.wpl[1].normal_()
        model.wpr.weight[0].normal_()  # period 0 (unknown) adds nothing, whatever its row holds
    after = model(idx, composers, all_logits=True)[0]
    moved = [not torch.allclose(before[i], after[i]) for i in range(5)]
    assert moved == [False, True, True, False, False]


def test_the_network_imports_torch_and_the_standard_library_alone():
    """model.py is the network: the package depends on it, never the other way."""
    import ast
    import sys
    from pathlib import Path

    tree = ast.parse((Path(__file__).resolve().parents[1] / "model.py").read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert imported - {"torch"} <= set(sys.stdlib_module_names), imported
