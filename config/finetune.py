# Teach a trained model new composers from a folder of their pieces (README, "Make it yours"):
#   python prepare.py --midi_dir my_midi --out_dir data/mine --val_fraction 0.2   # my_midi/<Composer>/*.mid
#   python train.py config/finetune.py --init_from=out/classical/ckpt.pt --data_dir=data/mine
# The network is the checkpoint's (its options are taken from it); composers it knows keep their
# ids, new ones get new rows. Half of every batch replays the data the checkpoint learned from
# (its data_dir; replay_dir= names another), so the old composers are not forgotten (docs/LOG.md,
# "Fine-tuning a new composer"). The result is an ordinary checkpoint for sample.py and evaluate.py.
init_from = "out/classical/ckpt.pt"
data_dir = "data/mine"
out_dir = "out/mine"
replay_share = 0.5
batch_size = 16
grad_accum = 1
optimizer = "muon"
learning_rate = 1e-3
min_lr = 1e-4
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
