# Teach a trained model new composers from a folder of their pieces (README, "Make it yours"):
#   python prepare.py --midi_dir my_midi --out_dir data/mine --val_fraction 0.2 --renditions 1
#   python train.py config/finetune.py --init_from=out/classical/ckpt.pt --data_dir=data/mine
# The network is the checkpoint's (its options are taken from it); composers it knows keep their
# ids, new ones get new rows. finetune="new_rows" learns only the new composers' rows: their input
# row and a row added before every block; the network and the old composers stay bit for bit as
# they were, so nothing is forgotten and a few pieces cannot be memorised. Over four folds of 60
# Bartok pieces it named 43 of the 60 held out, the input row alone (the earlier new_rows) 32,
# the input row and then every weight at a fortieth of the rate with half of each batch replayed
# 29; finetune="all" learned its 46 training pieces by heart in 10 minutes and named none of the 14
# held out (docs/LOG.md, 2026-12-02 and 2026-12-03).
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
