"""The modern recipe's levers (model.py, train.py, remi.py): each does what it promises, the
GPT-2 baseline's architecture stays the default, and caching, causality and resume hold for all."""
import numpy as np
import pytest
import torch

from conftest import tiny_model
from model import ModelConfig, MusicTransformer
from pianogpt.training.optim import MuonWithAdamW
from pianogpt.training.optim import configure_optimizers


def tiny(**options):
    """tiny_model with every weight non-zero: zero-initialised weights would hide differences."""
    model = tiny_model(**options)
    with torch.no_grad():  # zero-initialised weights would hide differences: give every weight a value
        for p in model.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.02)
    return model


def test_rope_sees_only_relative_positions_and_has_no_position_table():
    idx, composer = torch.randint(2, 64, (2, 12)), torch.tensor([1, 2])
    rope = tiny(positions="rope")
    assert not hasattr(rope, "wpe") and not any("wpe" in k or "rope" in k for k in rope.state_dict())
    at_zero, _ = rope(idx, composer, all_logits=True)
    shifted, _ = rope(idx, composer, start_pos=9, all_logits=True)
    torch.testing.assert_close(shifted, at_zero, atol=1e-5, rtol=0)
    learned = tiny()
    at_zero, _ = learned(idx, composer, all_logits=True)
    shifted, _ = learned(idx, composer, start_pos=9, all_logits=True)
    assert not torch.allclose(shifted, at_zero, atol=1e-3)


def test_rmsnorm_replaces_every_layernorm_and_has_no_bias():
    model = tiny(norm="rmsnorm")
    assert not any(isinstance(m, torch.nn.LayerNorm) for m in model.modules())
    norms = [m for m in model.modules() if isinstance(m, torch.nn.RMSNorm)]
    assert len(norms) == 2 * 2 + 1  # two per block and the final one
    assert not any(name.endswith(("ln_1.bias", "ln_2.bias", "ln_f.bias")) for name, _ in model.named_parameters())


def test_mlp_kinds_compute_their_activation():
    x = torch.randn(3, 5, 32)
    relu2 = tiny(mlp="relu2").blocks[0].mlp
    torch.testing.assert_close(relu2(x), relu2.c_proj(torch.relu(relu2.c_fc(x)) ** 2))
    gelu = tiny().blocks[0].mlp
    torch.testing.assert_close(gelu(x), gelu.c_proj(torch.nn.functional.gelu(gelu.c_fc(x))))


@pytest.mark.parametrize("qk_norm", [True, False])
def test_qk_norm_makes_attention_blind_to_the_scale_of_queries_and_keys(qk_norm):
    model = tiny(qk_norm=qk_norm)
    idx, composer = torch.randint(2, 64, (2, 12)), torch.tensor([1, 2])
    before, _ = model(idx, composer, all_logits=True)
    with torch.no_grad():
        for block in model.blocks:  # q and k rows of the fused projection x 10
            block.attn.c_attn.weight[:64] *= 10
            block.attn.c_attn.bias[:64] *= 10
    after, _ = model(idx, composer, all_logits=True)
    assert torch.allclose(after, before, atol=1e-4) == qk_norm


def test_an_untied_head_has_its_own_matrix():
    untied, tied = tiny(tie_head=False), tiny()
    assert untied.lm_head.weight is not untied.wte.weight
    assert tied.lm_head.weight is tied.wte.weight


def test_untied_head_counts_as_a_matmul_and_the_embedding_as_a_lookup():
    tied, untied = tiny(), tiny(tie_head=False)
    assert untied.num_params() == tied.num_params() + 64 * 32
    assert untied.flops_per_token(16) == tied.flops_per_token(16)


def test_seed_architecture_is_the_default_and_old_configs_load_as_it():
    old_dict = dict(block_size=32, vocab_size=64, n_composers=4, n_layer=2, n_head=2, n_embd=32, dropout=0.0,
                    attn_dropout=0.0, bias=True, label_smoothing=0.1, pad_id=0, grad_checkpoint=False)
    cfg = ModelConfig.from_dict(old_dict)
    assert (cfg.positions, cfg.norm, cfg.mlp, cfg.qk_norm, cfg.tie_head, cfg.n_kinds) == \
        ("learned", "layernorm", "gelu", False, True, 0)
    model = MusicTransformer(cfg)
    assert "wpe.weight" in model.state_dict() and model.lm_head.weight is model.wte.weight
    assert all(isinstance(b.ln_1, torch.nn.LayerNorm) for b in model.blocks)


@pytest.mark.parametrize("bad", [dict(positions="alibi"), dict(norm="batch"), dict(mlp="tanh"),
                                 dict(mlp="swiglu"), dict(rope_base=1.0), dict(positions="rope", n_head=32)])
def test_bad_lever_values_are_clear_errors(bad):
    values = dict(block_size=16, vocab_size=64, n_composers=3, n_layer=1, n_head=2, n_embd=32) | bad
    with pytest.raises(ValueError, match=next(iter(bad)) if "n_head" not in bad else "even head size"):
        ModelConfig(**values)


def test_muon_takes_the_hidden_matrices_and_adamw_everything_else():
    model = tiny(positions="rope", norm="rmsnorm", tie_head=False)
    optimizer = configure_optimizers(model, 0.1, 1e-3, optimizer="muon")
    assert isinstance(optimizer, MuonWithAdamW)
    muon = {id(p) for g in optimizer.muon.param_groups for p in g["params"]}
    adamw = {id(p) for g in optimizer.adamw.param_groups for p in g["params"]}
    hidden = {id(p) for n, p in model.named_parameters() if n.startswith("blocks.") and p.dim() == 2}
    assert muon == hidden and not muon & adamw
    assert muon | adamw == {id(p) for p in model.parameters()}
    assert {id(model.wte.weight), id(model.wce.weight), id(model.lm_head.weight)} <= adamw
    assert len(optimizer.param_groups) == len(optimizer.muon.param_groups) + len(optimizer.adamw.param_groups)
    with pytest.raises(ValueError, match="adamw, muon"):
        configure_optimizers(model, 0.1, 1e-3, optimizer="sgd")


def test_muon_learns_and_its_state_round_trips():
    model = tiny(positions="rope", mlp="relu2").train()
    optimizer = configure_optimizers(model, 0.0, 3e-3, optimizer="muon")
    idx, composer = torch.randint(2, 64, (4, 17)), torch.tensor([1, 2, 3, 1])
    losses = []
    for _ in range(40):
        _, loss = model(idx[:, :-1], composer, targets=idx[:, 1:])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 1.0
    state = optimizer.state_dict()
    again = configure_optimizers(model, 0.0, 3e-3, optimizer="muon")
    again.load_state_dict(state)
    for a, b in ((optimizer.muon, again.muon), (optimizer.adamw, again.adamw)):
        for key, value in a.state_dict()["state"].items():
            for name, tensor in value.items():
                assert torch.equal(tensor, b.state_dict()["state"][key][name])
    for group in again.param_groups:  # the training loop's schedule must still reach both optimizers
        group["lr"] = 1.25e-4
    assert {g["lr"] for g in again.muon.param_groups + again.adamw.param_groups} == {1.25e-4}
    with pytest.raises(ValueError, match="Muon"):
        again.load_state_dict(configure_optimizers(model, 0.0, 1e-3).state_dict())


# ----------------------------------------------------------------------------- the GPT-2 baseline's run


def test_the_seed_run_builds_and_takes_one_step_at_8192_tokens_with_gradient_checkpointing():
    """config/remi_8layer.py is the GPT-2 baseline's architecture exactly, and its full context fits a CPU step."""
    from pianogpt.training.config import load_config
    from conftest import ROOT
    from pianogpt.training.config import TrainConfig, model_config_of

    cfg = load_config(TrainConfig, [f"{ROOT}/config/remi_8layer.py"])
    model_cfg = model_config_of(cfg, {"vocab_size": 419, "n_composers": 27, "pad_id": 0})
    assert (model_cfg.n_layer, model_cfg.n_head, model_cfg.n_embd, model_cfg.block_size) == (8, 8, 512, 8192)
    assert (model_cfg.positions, model_cfg.norm, model_cfg.mlp, model_cfg.tie_head) == ("learned", "layernorm",
                                                                                          "gelu", True)
    assert model_cfg.grad_checkpoint and cfg.optimizer == "adamw"
    torch.manual_seed(0)
    model = MusicTransformer(model_cfg).train()
    idx = torch.randint(2, 419, (1, 8193))
    _, loss = model(idx[:, :-1], torch.tensor([3]), targets=idx[:, 1:])
    loss.backward()
    assert torch.isfinite(loss) and abs(loss.item() - np.log(419)) < 1.0
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.wpe.weight.grad[8191].abs().sum() > 0, "the last position was trained"


# ----------------------------------------------------------------------------- ablate.py


def test_ablation_runs_each_recipe_for_the_same_budget_and_writes_table_and_plot(tiny_dataset, tmp_path):
    import json
    import subprocess
    import sys

    from conftest import ROOT

    config = tmp_path / "tiny.py"
    config.write_text("block_size = 32\nn_layer = 1\nn_head = 2\nn_embd = 32\nbatch_size = 4\ngrad_accum = 1\n"
                      "eval_iters = 2\nlog_interval = 2\ndevice = 'cpu'\ndtype = 'float32'\nlearning_rate = 3e-3\n")
    out = tmp_path / "ablation"
    result = subprocess.run([sys.executable, f"{ROOT}/ablate.py", "--config", str(config), "--data_dir",
                             str(tiny_dataset), "--out_dir", str(out), "--recipes", "baseline,muon,mine",
                             "--custom", "mine: --positions=rope --mlp=relu2", "--minutes", "0.05",
                             "--eval_interval", "5", "--parallel", "2", "--threads", "1"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    report = json.loads((out / "ablation.json").read_text())
    assert [r["recipe"] for r in report["recipes"]] == ["baseline", "muon", "mine"]
    for row in report["recipes"]:
        assert 0 < row["final_val_nll"] < 10 and row["minutes"] <= 0.05 + 0.05
        assert len(row["curve"]) >= 2, "the plot needs several evaluations per recipe"
    saved = torch.load(out / "mine" / "ckpt.pt", weights_only=True)["train_config"]
    assert saved["positions"] == "rope" and saved["mlp"] == "relu2" and saved["max_minutes"] == 0.05
    assert torch.load(out / "muon" / "ckpt.pt", weights_only=True)["train_config"]["optimizer"] == "muon"
    table = (out / "ablation.md").read_text().splitlines()
    assert len(table) == 2 + 3 and "positions=rope mlp=relu2" in table[-1]
    assert (out / "ablation.png").read_bytes().startswith(b"\x89PNG")


def test_bench_times_the_shipped_cpu_model_exactly_as_train_builds_it(capsys):
    import json
    import os

    import bench
    from pianogpt.training.config import load_config
    from conftest import ROOT
    from pianogpt.training.config import TrainConfig

    bench.main(["--quick", "--cases", "train"])
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    shipped = next(r for r in records if r.get("model") == "remi_cpu")
    cfg = load_config(TrainConfig, [os.path.join(ROOT, "config", "remi_cpu.py")])
    for key in ("positions", "norm", "mlp", "qk_norm", "tie_head", "optimizer"):
        assert shipped[key] == getattr(cfg, key), key
    import dataclasses

    from pianogpt.training.config import model_config_of

    model_cfg, batch, optimizer = bench.shipped_recipe("remi_cpu")  # read without importing train.py
    expected = model_config_of(cfg, {"vocab_size": 419, "n_composers": 27, "pad_id": 0})
    assert model_cfg == dataclasses.replace(expected, dropout=0.0)
    assert (batch, optimizer) == (cfg.batch_size * cfg.grad_accum, cfg.optimizer)
    assert {r["model"] for r in records if r["case"] == "train"} == {"gpt2_baseline", "remi_cpu_before", "remi_cpu"}
