# The quick start: the synthetic demo corpus (python prepare.py with no --midi_dir), a small
# model, a few minutes on a 2-core CPU: python train.py config/demo_cpu.py
# Its figures: docs/LOG.md.
data_dir = "data/demo"
out_dir = "out/demo"
block_size = 256
n_layer = 4
n_head = 4
n_embd = 128
dropout = 0.0
batch_size = 16
grad_accum = 1
learning_rate = 2e-3
min_lr = 2e-4
warmup_frac = 0.05
max_iters = 500
eval_interval = 100
eval_iters = 8
log_interval = 20
cond_drop = 0.1
device = "cpu"
dtype = "float32"
