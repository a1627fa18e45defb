"""Every CLI: a wrong type, negative, zero or out-of-range flag value is one line on stderr, exit 2."""
import importlib

import pytest

BAD_FLAGS = {
    "prepare": [["--val_fraction", "x"], ["--val_fraction", "-0.1"], ["--val_fraction", "0.9"], ["--workers", "0"],
                ["--workers", "-2"], ["--workers", "two"], ["--min_tokens", "-1"], ["--min_tokens", "1.5"],
                ["--layout", "zip"], ["--file_timeout", "0"], ["--file_timeout", "-5"], ["--file_timeout", "soon"],
                ["--max_memory_mb", "0"], ["--max_memory_mb", "lots"], ["--verify", "no/such/dataset"],
                ["--renditions", "-1"], ["--renditions", "x"]],
    "train": [["--batch_size=0"], ["--batch_size=-1"], ["--batch_size=x"], ["--block_size=0"], ["--n_layer=0"],
              ["--learning_rate=fast"], ["--learning_rate=-1"], ["--dropout=1"], ["--dropout=-0.1"],
              ["--cond_drop=1.5"], ["--transpose=2"], ["--infill_bars=0"], ["--infill_bars=x"], ["--max_iters=-1"],
              ["--eval_interval=0"], ["--eval_iters=0"], ["--log_interval=-3"], ["--grad_accum=0"],
              ["--dtype=float8"], ["--device=tpu"], ["--compile=maybe"], ["--grad_clip=-1"], ["--n_head=3"],
              ["--warmup_frac=1"], ["--label_smoothing=-0.1"], ["--init_from=gpt2"], ["--epochs=0", "--max_iters=0"],
              ["--no_such_key=1"], ["--batch_size"], ["--composer_balance=2"],
              ["--n_kinds=1"], ["--n_periods=3"], ["--kind_drop=-0.5"], ["--max_minutes=-5"], ["--max_minutes=x"],
              ["--save_every_min=-1"], ["--positions=alibi"], ["--norm=batch"], ["--mlp=tanh"], ["--qk_norm=maybe"],
              ["--tie_head=x"], ["--mlp=swiglu"], ["--optimizer=sgd"],
              ["--positions=rope", "--n_embd=36", "--n_head=4"]],
    "sample": [["--top_k", "-1"], ["--top_k", "x"], ["--top_p", "0"], ["--top_p", "1.5"], ["--top_p", "x"],
               ["--temperature", "0"], ["--temperature", "-1"], ["--temperature", "hot"], ["--temperature", "inf"],
               ["--guidance", "-1"], ["--guidance", "x"], ["--guidance", "nan"], ["--max_new_tokens", "0"],
               ["--max_new_tokens", "-5"], ["--num_samples", "0"], ["--seed", "-1"], ["--prompt_tokens", "0"],
               ["--device", "tpu"], ["--composer_id", "-1"], ["--composer_id", "x"], ["--guidance", "1,-3"],
               ["--guidance", "1,,3"], ["--render", "no/such.mid"], ["--soundfont", "no/such.sf2", "--composer_id", "1"],
               ["--guidance_mode", "loud"], ["--bars", "0"], ["--bars", "1001"], ["--seconds", "0"],
               ["--seconds", "4000"], ["--bars", "4", "--seconds", "10"]],
    "evaluate": [["--num_windows", "0"], ["--num_windows", "-1"], ["--num_windows", "x"], ["--guidance", "-1"],
                 ["--guidance", "x"], ["--samples_per_composer", "-1"], ["--sample_tokens", "0"], ["--window", "0"],
                 ["--device", "tpu"], ["--max_composers", "0"], ["--min_train_pieces", "0"], ["--max_windows", "0"],
                 ["--judge_excerpts", "0"], ["--dtype", "float8"], ["--real_dir", "no/such/folder"],
                 ["--guidance_mode", "loud"]],
    "bench": [["--device", "tpu"], ["--cases", "nope"], ["--new_tokens", "0"], ["--baseline_block_size", "0"],
              ["--baseline_block_size", "x"]],
    "ablate": [["--recipes", "nope"], ["--minutes", "0"], ["--parallel", "0"], ["--custom", "nocolon"],
               ["--config", "no/such.py"]],
    "pianogpt.data.democorpus": [["--pieces_per_style", "0"], ["--pieces_per_style", "x"], ["--seed", "x"]],
}
CASES = [(script, args) for script, table in BAD_FLAGS.items() for args in table]


@pytest.mark.parametrize("script, args", CASES, ids=[f"{s}:{' '.join(a)}" for s, a in CASES])
def test_bad_flag_is_one_line_exit_2(script, args, capsys):
    module = importlib.import_module(script)
    with pytest.raises(SystemExit) as exit_info:
        module.main(args)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "error" in lines[0], err
    assert "Traceback" not in err


@pytest.mark.parametrize("script", sorted(BAD_FLAGS))
def test_help_works(script, capsys):
    module = importlib.import_module(script)
    try:
        module.main(["--help"])
    except SystemExit as e:
        assert e.code in (0, None)
    out = capsys.readouterr().out
    assert ("--batch_size=2" in out) if script == "train" else ("usage" in out.lower())
