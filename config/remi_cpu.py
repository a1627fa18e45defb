# A small model that learns real structure in ~10 minutes on a 2-core laptop CPU.
# python train.py config/remi_cpu.py
data_dir = "data/piano-midi"
out_dir = "out"
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
max_iters = 1200
eval_interval = 200
eval_iters = 10
log_interval = 20
transpose = 3
device = "cpu"
