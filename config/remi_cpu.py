# The shipped CPU recipe for real music: a small model that learns composer style in 20 minutes on a
# 2-core CPU (README, "The real-music path"): python train.py config/remi_cpu.py
# Why each value: docs/LOG.md (every lever's ablation, side by side at the same budget). Its data: prepared
# with --merges 1000 (README; the vocabulary is read from the dataset, so plain REMI data trains too).
data_dir = "data/classical"
out_dir = "out/classical"
block_size = 256
n_layer = 4
n_head = 2
n_embd = 128
dropout = 0.0
batch_size = 16
grad_accum = 1
learning_rate = 4e-3
min_lr = 4e-4
warmup_frac = 0.03
weight_decay = 0.1
label_smoothing = 0.0
composer_balance = 0.3
cond_drop = 0.1
positions = "rope"
norm = "rmsnorm"
mlp = "relu2"
qk_norm = True
tie_head = False
n_kinds = 3
composer_layers = True
n_periods = 6
n_roles = 5
infill_share = 0.25
infill_bars = 4
infill_middle = 0.5
kind_drop = 0.1
rendition_weight = 0.5
optimizer = "muon"
max_minutes = 20
max_iters = 1000000  # the time budget ends the run
eval_interval = 1000
eval_iters = 10
log_interval = 50
save_every_min = 5
device = "cpu"
