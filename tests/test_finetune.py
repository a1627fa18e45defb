"""Fine-tuning a trained checkpoint on a folder with a new composer: the old composers keep their
ids and rows, the new one gets a row, the batches replay the old data, and the result is an
ordinary checkpoint that samples, evaluates and resumes."""
import json

import numpy as np
import pytest
import torch

from conftest import make_score, tiny_train_config, write_midi
from pianogpt.checkpoints import network_of
from pianogpt.cli import CliError


@pytest.fixture(scope="module")
def new_composer_data(tmp_path_factory):
    """Satie (new to tiny_checkpoint) and "bach" (the checkpoint's Bach, spelled otherwise)."""
    from prepare import prepare

    root = tmp_path_factory.mktemp("mine")
    for i in range(4):
        write_midi(str(root / "midi" / "Satie" / f"g{i}.mid"), make_score(seed=500 + i, n_bars=12))
    write_midi(str(root / "midi" / "bach" / "extra.mid"), make_score(seed=600, n_bars=12))
    prepare(root / "midi", root / "data", workers=1, isolate=False, val_fraction=0.25)
    return root / "data"


def fine_tune(tiny_checkpoint, data, out, **overrides):
    from train import train

    cfg = tiny_train_config(data, out, init_from=str(tiny_checkpoint), max_iters=6, eval_interval=3, **overrides)
    train(cfg)
    return torch.load(out / "ckpt.pt", weights_only=True)


def test_old_composers_keep_their_ids_and_a_new_one_gets_a_row(tiny_checkpoint, new_composer_data, tmp_path):
    base = torch.load(tiny_checkpoint, weights_only=True)
    tuned = fine_tune(tiny_checkpoint, new_composer_data, tmp_path)
    assert tuned["composers"] == {**base["composers"], "Satie": len(base["composers"])}
    assert tuned["new_composers"] == ["Satie"]
    assert tuned["model"]["wce.weight"].shape[0] == len(base["composers"]) + 1
    assert tuned["model_config"] == {**base["model_config"], "n_composers": len(base["composers"]) + 1}


def test_the_new_row_starts_from_the_mean_of_the_old_composers():
    from pianogpt.checkpoints import with_composer_rows

    rows = torch.arange(12, dtype=torch.float32).reshape(4, 3)
    widened = with_composer_rows({"wce.weight": rows}, 6)["wce.weight"]
    assert torch.equal(widened[:4], rows)
    assert torch.equal(widened[4], rows[1:].mean(dim=0)) and torch.equal(widened[5], widened[4])


def test_every_batch_replays_the_checkpoints_own_data(tiny_checkpoint, new_composer_data, tmp_path, monkeypatch):
    import train as train_module

    composers = []
    real_micro_batch = train_module.micro_batch

    def recording(*args):
        batch = real_micro_batch(*args)
        composers.append(batch[2].tolist())
        return batch

    monkeypatch.setattr(train_module, "micro_batch", recording)
    fine_tune(tiny_checkpoint, new_composer_data, tmp_path, cond_drop=0.0)
    satie = 4
    for batch in composers:  # batch_size 4, replay_share 0.5: two windows of each
        assert sum(c == satie or c == 2 for c in batch[:2]) == 2  # data_dir: Satie and bach (= Bach, id 2)
        assert all(c in (1, 2, 3) for c in batch[2:])  # tiny_dataset's Alkan, Bach, Chopin


def test_the_record_of_training_files_adds_the_new_data_to_the_checkpoints(tiny_checkpoint, new_composer_data,
                                                                          tmp_path):
    base = torch.load(tiny_checkpoint, weights_only=True)["composer_train_pieces"]
    for replay_share in (0.0, 0.5):  # replayed data is what the checkpoint learned from: counted once
        tuned = fine_tune(tiny_checkpoint, new_composer_data, tmp_path / str(replay_share), replay_share=replay_share)
        assert tuned["composer_train_pieces"] == {**base, "Satie": 3, "Bach": base["Bach"] + 1}


def test_the_fine_tuned_checkpoint_samples_the_new_composer_and_resumes(tiny_checkpoint, new_composer_data,
                                                                         tmp_path):
    import sample
    from train import train

    fine_tune(tiny_checkpoint, new_composer_data, tmp_path / "run", finetune="new_rows", replay_share=0.0)
    sample.main(["--ckpt", str(tmp_path / "run" / "ckpt.pt"), "--composer", "satie", "--max_new_tokens", "20",
                 "--no-audio", "--out_dir", str(tmp_path / "samples")])
    assert json.load(open(tmp_path / "samples" / "Satie_1337.json"))["composer_id"] == 4
    # the config a user resumes with names no architecture: the run keeps the checkpoint's
    train(tiny_train_config(new_composer_data, tmp_path / "run", init_from="resume", max_iters=9, n_embd=64,
                            finetune="new_rows", replay_share=0.0))
    resumed = torch.load(tmp_path / "run" / "ckpt.pt", weights_only=True)
    assert resumed["iter"] == 9 and resumed["new_composers"] == ["Satie"] and "wcl" in resumed["model"]


def test_two_names_of_one_composer_are_refused_not_merged():
    from pianogpt.data.dataset import merge_composer_tables

    table, ids, matches = merge_composer_tables({"<unconditional>": 0, "Rachmaninoff": 1}, {"<unconditional>": 0,
                                                                                            "Rachmaninov": 1, "Ravel": 2})
    assert table == {"<unconditional>": 0, "Rachmaninoff": 1, "Ravel": 2} and ids.tolist() == [0, 1, 2]
    assert matches == [("Rachmaninov", "Rachmaninoff")]
    with pytest.raises(CliError, match="'Rachmaninoff' and 'Rachmaninov' are one composer"):
        merge_composer_tables({"<unconditional>": 0}, {"<unconditional>": 0, "Rachmaninoff": 1, "Rachmaninov": 2})


def test_a_dataset_of_another_tokenizer_is_a_one_line_error(tiny_checkpoint, new_composer_data, tmp_path):
    from miditok import REMI, TokenizerConfig

    other = REMI(TokenizerConfig(pitch_range=(21, 109), num_velocities=16, special_tokens=["PAD", "BOS"]))
    other.save(tmp_path / "tokenizer.json")
    checkpoint = torch.load(tiny_checkpoint, weights_only=True)
    checkpoint["tokenizer"] = (tmp_path / "tokenizer.json").read_text()
    torch.save(checkpoint, tmp_path / "other.pt")
    with pytest.raises(CliError, match="prepared with another tokenizer"):
        fine_tune(tmp_path / "other.pt", new_composer_data, tmp_path / "run")
    assert not (tmp_path / "run" / "ckpt.pt").exists()


def test_evaluate_reads_a_dataset_by_composer_name_and_checks_the_new_composer_for_copies(
        tiny_checkpoint, new_composer_data, tmp_path, capsys):
    from evaluate import evaluate, EvalOptions
    from pianogpt.measures.report import print_report

    fine_tune(tiny_checkpoint, new_composer_data, tmp_path)
    r = evaluate(str(tmp_path / "ckpt.pt"), EvalOptions(data_dir=str(new_composer_data), num_windows=2, guidances=(1.0,),
                 samples_per_composer=1, sample_tokens=16))
    assert "Satie" in r["comparison_set"]["composers"]  # a fine-tuned composer is always compared
    assert r["comparison_set"]["fine_tuned"] == ["Satie"]
    assert np.isfinite(r["val_pieces"]["identification"]["accuracy"])
    runs = r["samples"]["1.0"]["longest_copied_run_by_composer"]  # against Satie's few training pieces
    assert set(runs) == set(r["comparison_set"]["composers"]) and max(runs.values()) == r["samples"]["1.0"][
        "longest_copied_run"]
    print_report(r)
    assert f"longest copied run of the fine-tuned composers' samples {runs['Satie']}" in capsys.readouterr().out


def test_new_rows_learn_at_every_layer_and_leave_the_network_and_the_old_composers_exactly(
        tiny_checkpoint, new_composer_data, tmp_path):

    base = torch.load(tiny_checkpoint, weights_only=True)
    tuned = fine_tune(tiny_checkpoint, new_composer_data, tmp_path, finetune="new_rows", replay_share=0.0)
    n_old = base["model"]["wce.weight"].shape[0]
    for name, weight in base["model"].items():
        old = tuned["model"][name][:n_old] if name == "wce.weight" else tuned["model"][name]
        assert torch.equal(old, weight), name
    new_row = tuned["model"]["wce.weight"][n_old]
    assert not torch.equal(new_row, base["model"]["wce.weight"][1:].mean(dim=0)), "the new input row learned"
    layer_rows = tuned["model"]["wcl"]
    assert tuned["model_config"]["composer_layers"]
    assert layer_rows.shape[:2] == (n_old + 1, base["model_config"]["n_layer"])
    assert torch.equal(layer_rows[:n_old], torch.zeros_like(layer_rows[:n_old]))
    assert layer_rows[n_old].abs().sum(dim=-1).min() > 0, "every block's row of the new composer learned"
    old_model = network_of(base)
    new_model = network_of(tuned)
    idx = torch.randint(2, 64, (3, 24))
    with torch.no_grad():
        for composer in range(n_old):  # every old composer, and unconditional row 0, predicts as before
            ids = torch.full((3,), composer)
            assert torch.equal(new_model(idx, ids, all_logits=True)[0], old_model(idx, ids, all_logits=True)[0])


def test_each_composer_has_its_period_by_name_and_a_new_composer_joins_its_period(tiny_dataset, new_composer_data,
                                                                                 tmp_path):
    from pianogpt.data.periods import PERIODS, period_ids
    from train import train

    train(tiny_train_config(tiny_dataset, tmp_path / "base", n_periods=len(PERIODS), composer_layers=True))
    base = torch.load(tmp_path / "base" / "ckpt.pt", weights_only=True)
    assert base["model"]["period_of"].tolist() == period_ids(base["composers"])
    assert [PERIODS[p] for p in base["model"]["period_of"].tolist()[1:]] == ["early romantic", "baroque and earlier",
                                                                            "early romantic"]  # Alkan, Bach, Chopin
    tuned = fine_tune(tmp_path / "base" / "ckpt.pt", new_composer_data, tmp_path / "tuned", finetune="new_rows",
                      replay_share=0.0)
    assert PERIODS[tuned["model"]["period_of"][tuned["composers"]["Satie"]]] == "twentieth century"
    for rows in ("wpr.weight", "wpl"):  # frozen with the network: Satie's period rows were learned before him
        assert torch.equal(tuned["model"][rows], base["model"][rows])
