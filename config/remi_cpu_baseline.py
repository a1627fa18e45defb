# The CPU recipe before the modern levers (the GPT-2 baseline's architecture, AdamW): what
# ablate.py measures every lever against. python train.py config/remi_cpu_baseline.py
# Why each value: docs/LOG.md ("Composer style: levers tried", "Learning more per CPU-minute").
data_dir = "data/classical"
out_dir = "out/classical-baseline"
block_size = 512
n_layer = 4
n_head = 4
n_embd = 128
dropout = 0.0
batch_size = 8
grad_accum = 1
learning_rate = 2e-3
min_lr = 2e-4
warmup_frac = 0.03
weight_decay = 0.1
label_smoothing = 0.0
composer_balance = 0.3
cond_drop = 0.1
max_minutes = 20
max_iters = 1000000  # the time budget ends the run
eval_interval = 1000
eval_iters = 10
log_interval = 50
save_every_min = 5
device = "cpu"
