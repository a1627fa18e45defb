# The CPU recipe for real music: a small model that learns composer style in 20 minutes on a
# 2-core CPU, on the three shared folders, scores and performances (README, the real-music path):
#   python prepare.py --midi_dir ../shared/midi/piano-midi --midi_dir ../shared/midi/classical-keyboard \
#                     --midi_dir ../shared/midi/asap-performed --out_dir data/classical --renditions 1
#   python train.py config/remi_cpu.py
# config/remi_cpu_baseline.py is the same data recipe (no label smoothing, no transposition,
# composer-balanced sampling 0.3, the additive composer embedding, a time budget) with the seed's
# architecture and AdamW; this one adds the levers that won `python ablate.py` (docs/LOG.md,
# "Learning more per CPU-minute"): Muon at twice the AdamW learning rate, rotary positions,
# RMSNorm, ReLU², QK-norm, an untied head, heads of 64 (zero-init and the soft-cap did not pay here),
# and a 256-token context in batches of 16 (the same 4,096 tokens a step): the CPU's attention costs
# per token in proportion to the context, so 256 reads 1.28x the tokens of 512 in the same minutes
# and ends lower on the same held-out tokens (docs/LOG.md, "A shorter context"). The kind condition
# (n_kinds=3: score or performance, beside the composer) together with a performed rendition of
# every sequenced training piece (prepare.py --renditions 1) won the A/B of docs/LOG.md, 2026-12-02
# ("Renditions"): every composer is then seen in both textures, so the composer carries style and
# the kind carries texture; sample.py --render_as chooses it. A rendition is drawn half as often as
# a file (rendition_weight=0.5): at the 20-minute budget that named held-out scores and ASAP's
# performances more often than drawing them as often as files (docs/LOG.md, 2026-12-02 evening).
# Every composer also has a row before every block (composer_layers): it named more pieces of
# sources the model never trained on, side by side (docs/LOG.md, 2026-12-03 evening).
# A quarter of the windows teach infilling (sample.py --infill): the continuation val loss moved by
# +0.006 side by side (docs/LOG.md, 2026-12-03 night).
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
transpose = 0
composer_balance = 0.3
cond_drop = 0.1
positions = "rope"
norm = "rmsnorm"
mlp = "relu2"
qk_norm = True
tie_head = False
n_kinds = 3
composer_layers = True
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
