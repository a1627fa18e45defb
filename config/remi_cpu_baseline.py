# The CPU recipe as it was before the modern levers (the seed's architecture, AdamW): the baseline
# that ablate.py measures every lever against. The shipped recipe is config/remi_cpu.py.
#   python prepare.py --midi_dir ../shared/midi/piano-midi --midi_dir ../shared/midi/classical-keyboard \
#                     --midi_dir ../shared/midi/asap-performed --out_dir data/classical
#   python train.py config/remi_cpu_baseline.py
# Chosen by the experiments in docs/LOG.md ("Composer style: levers tried"): no label smoothing,
# no transposition (a composer's keys are part of the style), composer-balanced sampling 0.3,
# the seed's additive composer embedding; a time budget, so every CPU ends its schedule.
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
transpose = 0
composer_balance = 0.3
cond_drop = 0.1
max_minutes = 20
max_iters = 1000000  # the time budget ends the run
eval_interval = 1000
eval_iters = 10
log_interval = 50
save_every_min = 5
device = "cpu"
