# Teach a trained model new composers from a folder of their pieces (README, "Make it yours"):
# python train.py config/finetune.py --init_from=out/classical/ckpt.pt --data_dir=data/mine
# Why new_rows: docs/LOG.md (2026-12-02 and 2026-12-03, Bartók over four folds).
init_from = "out/classical/ckpt.pt"
data_dir = "data/mine"
out_dir = "out/mine"
finetune = "new_rows"
replay_share = 0.0  # no use while the network is frozen
batch_size = 16
grad_accum = 1
optimizer = "muon"
learning_rate = 4e-3  # the composer table's rate in config/remi_cpu.py
min_lr = 4e-4
warmup_frac = 0.05
weight_decay = 0.1
cond_drop = 0.1
composer_balance = 0.3
max_minutes = 10
max_iters = 1000000  # the time budget ends the run
eval_interval = 100
eval_iters = 10
log_interval = 25
save_every_min = 5
device = "cpu"
