"""The libraries the programs share (prepare.py, train.py, sample.py, evaluate.py, bench.py, ablate.py,
leave_one_out.py), grouped the way the data flows:

    data/        MIDI in: the tokens (remi, merges), renditions, the dataset on disk, the encode cache
    training/    the config, the optimizers and schedule, resuming and fine-tuning, the run's life
    generation/  the engine (prefill, decode loop, guidance, filters) and infilling
    measures/    what evaluate.py measures: scoring, identification, the outside judge, copies, probes
    output/      files out: a sample's MIDI, audio and listening page, pictures, the studio

and, beside them, what every part uses: cli (errors, flags, stopping), files (atomic writes, locks),
devices (device, dtype, autocast), checkpoints (the one place a checkpoint is read and written),
jobs (child programs side by side) and torch_internals (every private torch API, with its fallback).
The network itself is model.py, which imports none of this.
"""
