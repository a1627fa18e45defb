"""The training config: TrainConfig, its checks, and the loader of config files and --key=value.

TrainConfig holds every key of a config file and of --key=value; load_config fills any config
dataclass from a plain-Python file of assignments plus --key=value, a typo being an error.
"""
import dataclasses
import difflib
import os
from dataclasses import dataclass

from model import ModelConfig, ModelOptions
from pianogpt.cli import CliError
from pianogpt.generation.infill import N_ROLES
from pianogpt.training.optim import OPTIMIZERS
from pianogpt.data.periods import PERIODS

FINETUNES = ("all", "new_rows")


@dataclass
class TrainConfig(ModelOptions):
    """Every key of a config file and of --key=value: the model's options (model.ModelOptions:
    block_size, n_layer, n_head, n_embd, dropout, positions, norm, mlp, qk_norm, tie_head, n_kinds,
    ...) and the run's, below."""
    data_dir: str = "data/piano-midi"
    out_dir: str = "out"
    init_from: str = "scratch"  # scratch | resume (from out_dir/ckpt.pt) | a checkpoint's path (fine-tune it)
    # fine-tuning (init_from=<path>): the model keeps its shape and its composers' ids; data_dir's new
    # composers get new rows. replay_share of every batch comes from replay_dir (default: the dataset
    # the checkpoint learned from), so the old composers are not forgotten (docs/LOG.md, "Fine-tuning")
    replay_dir: str = ""
    replay_share: float = 0.5
    finetune: str = "all"  # all: every weight learns | new_rows: only the new composers' rows, at the input and
    # before every block (model.composer_layers); the rest frozen
    # length of training: max_iters if > 0, else epochs (one random crop per training piece per epoch)
    max_iters: int = 0
    epochs: float = 1.0
    max_minutes: float = 0.0  # > 0: also stop after this much training wall time; the LR schedule then follows time
    save_every_min: float = 0.0  # > 0: also write ckpt.pt at least this often (minutes), whatever eval_interval says
    eval_interval: int = 250
    eval_iters: int = 20
    log_interval: int = 10
    # batch: batch_size windows per micro-step, grad_accum micro-steps per iteration (over all ranks)
    batch_size: int = 2
    grad_accum: int = 8
    optimizer: str = "adamw"  # adamw | muon (Muon on the blocks' matrices, AdamW on the rest)
    # optimisation
    learning_rate: float = 5e-4
    min_lr: float = 5e-5
    warmup_frac: float = 0.05
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    # data
    cond_drop: float = 0.1  # share of windows whose composer becomes 0 (trains the CFG branch)
    kind_drop: float = 0.1  # with n_kinds: share of windows whose kind becomes 0 (a prompt of unknown kind)
    composer_balance: float = 0.0  # 0: every piece equally often; 1: every composer equally often
    rendition_weight: float = 1.0  # how often a performed rendition (prepare --renditions) is drawn, per file drawn
    archive_balance: float = 0.0  # several MIDI folders: 0 draws a composer's archives as their pieces, 1 alike
    infill_share: float = 0.0  # share of windows rearranged to teach infilling (needs n_roles=5; pianogpt/generation/infill.py)
    infill_bars: int = 4  # the longest middle, in bars, of such a window
    infill_middle: float = 0.5  # the longest middle, as a share of the context
    # system
    device: str = "auto"  # auto | cpu | cuda | mps (or cuda:N)
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16
    compile: str = "auto"  # auto: compile the step only where it repays its compile time in this run (measured) | on | off
    seed: int = 1337

    def validate(self):
        positive = ["eval_interval", "eval_iters", "log_interval", "batch_size", "grad_accum", "block_size",
                    "n_layer", "n_head", "n_embd"]
        for key in positive:
            if getattr(self, key) <= 0:
                raise CliError(f"{key} must be > 0, got {getattr(self, key)}")
        if self.max_iters < 0 or self.epochs <= 0 and self.max_iters == 0:
            raise CliError("set max_iters > 0 or epochs > 0")
        if self.init_from not in ("scratch", "resume") and not os.path.isfile(self.init_from):
            raise CliError(f"init_from must be scratch, resume or a checkpoint file; {self.init_from!r} is not a file")
        if self.finetune not in FINETUNES:
            raise CliError(f"finetune must be one of {', '.join(FINETUNES)}; got {self.finetune!r}")
        if not 0 <= self.replay_share < 1:
            raise CliError(f"replay_share must be in [0, 1), got {self.replay_share}")
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise CliError(f"dtype must be one of auto, float32, bfloat16, float16; got {self.dtype!r}")
        if not (self.device in ("auto", "cpu", "cuda", "mps") or self.device.startswith("cuda:")):
            raise CliError(f"device must be one of auto, cpu, cuda, cuda:N, mps; got {self.device!r}")
        for key in ("dropout", "attn_dropout", "cond_drop", "kind_drop", "warmup_frac", "label_smoothing"):
            if not 0 <= getattr(self, key) < 1:
                raise CliError(f"{key} must be in [0, 1), got {getattr(self, key)}")
        for key in ("max_minutes", "save_every_min"):
            if not getattr(self, key) >= 0:
                raise CliError(f"{key} must be >= 0, got {getattr(self, key)}")
        for key in ("learning_rate", "min_lr", "weight_decay", "grad_clip"):
            if getattr(self, key) < 0:
                raise CliError(f"{key} must be >= 0, got {getattr(self, key)}")
        if not 0 <= self.rendition_weight <= 10:
            raise CliError(f"rendition_weight must be in [0, 10], got {self.rendition_weight}")
        for key in ("composer_balance", "archive_balance"):
            if not 0 <= getattr(self, key) <= 1:
                raise CliError(f"{key} must be in [0, 1], got {getattr(self, key)}")
        if not 0 <= self.infill_share < 1:
            raise CliError(f"infill_share must be in [0, 1), got {self.infill_share}")
        if self.n_periods not in (0, len(PERIODS)):
            raise CliError(f"n_periods must be 0 (off) or {len(PERIODS)} (pianogpt/data/periods.py), got {self.n_periods}")
        if self.infill_share and self.n_roles != N_ROLES:
            raise CliError(f"infill_share needs a role embedding: set n_roles={N_ROLES}")
        if not 1 <= self.infill_bars <= 64:
            raise CliError(f"infill_bars must be in 1..64, got {self.infill_bars}")
        if not 0 < self.infill_middle < 1:
            raise CliError(f"infill_middle must be in (0, 1), got {self.infill_middle}")
        if self.compile not in ("auto", "on", "off"):
            raise CliError(f"compile must be one of auto, on, off; got {self.compile!r}")
        if self.optimizer not in OPTIMIZERS:
            raise CliError(f"optimizer must be one of {', '.join(OPTIMIZERS)}; got {self.optimizer!r}")
        try:  # the model's own options (positions, norm, mlp, rope_base, ...) check themselves
            model_config_of(self, {"vocab_size": 1, "n_composers": 1, "pad_id": 0})
        except ValueError as e:
            raise CliError(str(e)) from None


def model_config_of(cfg, meta):
    """The ModelConfig a TrainConfig asks for, on a dataset with this meta.json."""
    shared = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(ModelOptions)}
    return ModelConfig(**shared | dict(vocab_size=meta["vocab_size"], n_composers=meta["n_composers"],
                                       pad_id=meta["pad_id"]))


# ----------------------------------------------------------------------------- loading


def _convert(text, field_type, key):
    """Parse one --key=value string into the type of the dataclass field."""
    type_name = field_type if isinstance(field_type, str) else field_type.__name__
    if type_name == "bool":
        lowered = text.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise CliError(f"--{key} expects true/false, got {text!r}")
    if type_name == "int":
        try:
            return int(text)
        except ValueError:
            raise CliError(f"--{key} expects an integer, got {text!r}") from None
    if type_name == "float":
        try:
            return float(text)
        except ValueError:
            raise CliError(f"--{key} expects a number, got {text!r}") from None
    return text


def _unknown_key_message(key, valid):
    close = difflib.get_close_matches(key, valid, n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    return f"unknown config key {key!r}{hint}; valid keys: {', '.join(valid)}"


def load_config(config_cls, argv):
    """Build a dataclass from `[config_file.py] [--key=value ...]`.

    The config file is plain Python assignments (`n_layer = 8`); only names that are
    fields of config_cls are allowed, so a typo is an error instead of being ignored.
    """
    fields = {f.name: f for f in dataclasses.fields(config_cls)}
    values = {}
    for arg in argv:
        if arg.startswith("--"):
            if "=" not in arg:
                raise CliError(f"expected --key=value, got {arg!r}")
            key, text = arg[2:].split("=", 1)
            if key not in fields:
                raise CliError(_unknown_key_message(key, list(fields)))
            values[key] = _convert(text, fields[key].type, key)
        else:
            values.update(_read_config_file(arg, fields))
    for key, value in values.items():
        expected = fields[key].type if isinstance(fields[key].type, str) else fields[key].type.__name__
        if expected == "float" and isinstance(value, int) and not isinstance(value, bool):
            values[key] = float(value)
        elif type(value).__name__ != expected:
            raise CliError(f"{key} expects {expected}, got {value!r}")
    config = config_cls(**values)
    if hasattr(config, "validate"):
        config.validate()
    return config


def config_file_values(path):
    """{name: value} of a config file's assignments (names starting with _, functions and modules
    left out), unchecked."""
    if not os.path.isfile(path):
        raise CliError(f"config file not found: {path}")
    with open(path) as f:
        source = f.read()
    namespace = {}
    try:
        exec(compile(source, path, "exec"), {}, namespace)
    except Exception as e:  # a config file is user input: report it in one line
        raise CliError(f"cannot run config file {path}: {type(e).__name__}: {e}") from None
    return {key: value for key, value in namespace.items()
            if not (key.startswith("_") or callable(value) or type(value).__name__ == "module")}


def _read_config_file(path, fields):
    values = config_file_values(path)
    for key in values:
        if key not in fields:
            raise CliError(f"{path}: " + _unknown_key_message(key, list(fields)))
    return values
