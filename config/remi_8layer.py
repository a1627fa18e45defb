# The GPT-2 baseline's run: 8 layers x 8 heads x 512 dims, an 8192-token context (a GPU job):
# python train.py config/remi_8layer.py   |   torchrun --nproc_per_node=N train.py config/remi_8layer.py
# None of the modern levers (config/remi_cpu.py uses them; docs/LOG.md measures them).
data_dir = "data/piano-midi"
out_dir = "out/remi_8layer"
block_size = 8192
n_layer = 8
n_head = 8
n_embd = 512
dropout = 0.1
batch_size = 2
grad_accum = 8
learning_rate = 5e-4
min_lr = 5e-5
warmup_frac = 0.05
weight_decay = 0.1
grad_clip = 1.0
label_smoothing = 0.1
cond_drop = 0.1
epochs = 500
eval_interval = 500
eval_iters = 20
log_interval = 10
dtype = "auto"  # bf16 autocast where supported, else fp16 + GradScaler
grad_checkpoint = True
compile = "on"
positions, norm, mlp, qk_norm, tie_head, optimizer = "learned", "layernorm", "gelu", False, True, "adamw"
