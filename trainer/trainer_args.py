"""Command-line arguments of `scripts/trainer_opensora.py`: what to train (`ModelArguments`) and on
what (`DataArguments`); how to train is paddlenlp's `TrainingArguments` (`--output_dir`,
`--max_steps`, `--learning_rate`, `--per_device_train_batch_size`, `--gradient_accumulation_steps`,
`--max_grad_norm`, `--recompute`, `--sharding stage1`, `--fp16`, `--save_steps`, `--report_to`, ...).

All three are parsed by paddlenlp's `PdArgumentParser`, from the command line or from a JSON file
given as the first argument (`scripts/trainer_opensora.py configs/train/tiny.json --max_steps 4`):
the file's keys are flag names, flags on the command line override them, and relative input paths
in the file (PATH_FIELDS) are resolved against the file's folder.
"""
import json
import logging
import os
from dataclasses import dataclass, field
from typing import List, Optional

SCHEDULER_TYPES = ("iddpm", "rflow")
TEXT_ENCODER_TYPES = ("t5", "minilm")


@dataclass
class ModelArguments:
    """The DiT to train and the frozen components around it."""

    model_type: str = field(
        default="STDiT2",
        metadata={"help": "DiT class (STDiT2, STDiT3) or preset (STDiT2-XL/2, STDiT3-XL/2, STDiT3-3B/2)"},
    )
    model_config: Optional[str] = field(
        default=None,
        metadata={"help": "JSON file of DiT constructor keywords (upstream names), applied over --model_type"},
    )
    pretrained_model_path: Optional[str] = field(
        default=None,
        metadata={"help": "DiT folder (config.json + model.safetensors) to start from; its config decides the architecture"},
    )
    vae_path: Optional[str] = field(default=None, metadata={"help": "VAE folder (diffusers AutoencoderKL format); frozen"})
    vae_micro_batch_size: Optional[int] = field(default=None, metadata={"help": "frames the VAE encodes at once"})
    text_encoder_type: str = field(default="t5", metadata={"help": f"one of {list(TEXT_ENCODER_TYPES)}"})
    text_encoder_path: Optional[str] = field(default=None, metadata={"help": "text encoder folder; frozen"})
    tokenizer_path: Optional[str] = field(
        default=None, metadata={"help": "spiece.model file or folder (default: inside --text_encoder_path)"}
    )
    model_max_length: Optional[int] = field(
        default=None, metadata={"help": "caption tokens (default: the DiT's model_max_length)"}
    )
    text_context_window: int = field(
        default=0,
        metadata={"help": "minilm only: mix each caption token's state with the mean of the states within this many "
                          "tokens (0 = off; see MiniLMEncoder)"},
    )
    text_context_weight: float = field(
        default=0.5, metadata={"help": "minilm only: the share of that mean, in (0, 1]"}
    )
    scheduler: str = field(default="iddpm", metadata={"help": f"diffusion training objective: {list(SCHEDULER_TYPES)}"})
    scheduler_config: Optional[str] = field(
        default=None,
        metadata={"help": "scheduler keywords: a JSON file or an inline JSON object, e.g. '{\"use_timestep_transform\": true}'"},
    )
    caption_dropout: float = field(
        default=0.1, metadata={"help": "probability of replacing a caption by the null caption (classifier-free guidance)"}
    )
    ema_decay: float = field(
        default=0.9999, metadata={"help": "EMA decay of the DiT weights; 0 turns the EMA off"}
    )

    def __post_init__(self):
        if self.scheduler not in SCHEDULER_TYPES:
            raise ValueError(f"--scheduler must be one of {list(SCHEDULER_TYPES)}, got {self.scheduler!r}")
        if self.text_encoder_type not in TEXT_ENCODER_TYPES:
            raise ValueError(f"--text_encoder_type must be one of {list(TEXT_ENCODER_TYPES)}, got {self.text_encoder_type!r}")
        if self.text_context_window < 0 or not 0.0 < self.text_context_weight <= 1.0:
            raise ValueError(
                f"--text_context_window must be >= 0 and --text_context_weight in (0, 1]; got "
                f"{self.text_context_window} and {self.text_context_weight}"
            )
        if self.text_context_window and self.text_encoder_type != "minilm":
            raise ValueError(f"--text_context_window is an option of the minilm text encoder, not {self.text_encoder_type!r}")
        if self.pretrained_model_path and self.model_config:
            raise ValueError("give --pretrained_model_path or --model_config, not both (the folder's config.json is the config)")
        if not 0.0 <= self.caption_dropout <= 1.0:
            raise ValueError(f"--caption_dropout must be in [0, 1], got {self.caption_dropout}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"--ema_decay must be in [0, 1), got {self.ema_decay}")

    def scheduler_kwargs(self):
        """The scheduler's config dict for `schedulers.build_scheduler` ({"type": ..., **kwargs})."""
        kwargs = {}
        if self.scheduler_config:
            text = self.scheduler_config.strip()
            if text.startswith("{"):
                kwargs = json.loads(text)
            else:
                if not os.path.isfile(text):
                    raise FileNotFoundError(f"--scheduler_config file {text!r} not found")
                with open(text) as f:
                    kwargs = json.load(f)
            if not isinstance(kwargs, dict):
                raise ValueError(f"--scheduler_config must be a JSON object, got {kwargs!r}")
            kwargs.pop("type", None)
        return {"type": self.scheduler, **kwargs}

    def dit_config(self):
        """Constructor keywords from --model_config ({} when not given)."""
        if not self.model_config:
            return {}
        if not os.path.isfile(self.model_config):
            raise FileNotFoundError(f"--model_config file {self.model_config!r} not found")
        with open(self.model_config) as f:
            config = json.load(f)
        if not isinstance(config, dict):
            raise ValueError(f"--model_config {self.model_config!r} must hold a JSON object of DiT keywords")
        return config


@dataclass
class DataArguments:
    """The training clips: CSV files and how they are cut (fixed size or buckets) and masked."""

    data_path: List[str] = field(default_factory=list, metadata={"help": "CSV file(s) with path,text columns"})
    num_frames: int = field(
        default=16,
        metadata={"help": "frames per clip (fixed-size mode); with --feature_path, latent frames per sample (a window of each cached clip, 1: single frames)"},
    )
    frame_interval: int = field(default=1, metadata={"help": "stride between the frames read from a video"})
    image_size: List[int] = field(default_factory=lambda: [256, 256], metadata={"help": "height width (fixed-size mode)"})
    bucket_config: Optional[str] = field(
        default=None,
        metadata={"help": "bucket config JSON (configs/buckets/); turns on variable size / length, batch sizes per bucket"},
    )
    mask_ratios: Optional[str] = field(
        default=None, metadata={"help": "mask ratio JSON (configs/masks/); default: no frame masks"}
    )
    feature_path: Optional[str] = field(
        default=None,
        metadata={"help": "train from cached VAE latents and text features (scripts/extract_features.py); "
                          "the VAE and text encoder are then not loaded"},
    )
    sampler_group_size: int = field(
        default=1,
        metadata={"help": "rows 0..g-1, g..2g-1, ... of the data stay together in one batch (2: the swapped pairs of "
                          "make_moving_mnist.py --swapped-pairs); per_device_train_batch_size must be a multiple"},
    )

    def __post_init__(self):
        if self.sampler_group_size < 1:
            raise ValueError(f"--sampler_group_size must be >= 1, got {self.sampler_group_size}")
        if self.sampler_group_size > 1 and self.bucket_config:
            raise ValueError("--sampler_group_size > 1 needs fixed-size clips or --feature_path, not --bucket_config")
        if self.feature_path:
            if self.data_path or self.bucket_config:
                raise ValueError("--feature_path replaces --data_path and --bucket_config (cached clips have one size)")
        elif not self.data_path:
            raise ValueError("missing --data_path (one or more CSV files with path,text columns) or --feature_path")
        if len(self.image_size) != 2:
            raise ValueError(f"--image_size takes two numbers, height and width; got {self.image_size}")


PATH_FIELDS = (
    "model_config",
    "pretrained_model_path",
    "vae_path",
    "text_encoder_path",
    "tokenizer_path",
    "scheduler_config",
    "data_path",
    "bucket_config",
    "mask_ratios",
    "feature_path",
)  # input files; output_dir and resume_from_checkpoint stay relative to the working directory


def read_args_file(path, path_fields=PATH_FIELDS, is_literal=None, what="training config"):
    """A JSON file of flags (keys are flag names) as a flag list for `PdArgumentParser`.

    Relative paths (values of the keys in `path_fields`) are resolved against the file's folder,
    except inline JSON objects and values for which `is_literal(value)` is true (names that are
    not paths). A "description" key is documentation and skipped.

    Raises:
        FileNotFoundError: no such file. ValueError: not JSON, or not a JSON object.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} {path!r} not found")
    with open(path) as f:
        try:
            config = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{what} {path!r} is not valid JSON: {e}") from None
    if not isinstance(config, dict):
        raise ValueError(f"{what} {path!r} must hold a JSON object of flag names and values")
    base = os.path.dirname(os.path.abspath(path))

    def resolve(value):
        if not isinstance(value, str) or not value or os.path.isabs(value) or value.lstrip().startswith("{"):
            return value
        if is_literal is not None and is_literal(value):
            return value
        return os.path.normpath(os.path.join(base, value))

    flags = []
    for key, value in config.items():
        if key == "description":
            continue
        if key in path_fields:
            value = [resolve(v) for v in value] if isinstance(value, list) else resolve(value)
        values = value if isinstance(value, list) else [value]
        flags += [f"--{key}", *[str(v) for v in values]]
    return flags


def parse_args(argv):
    """(ModelArguments, DataArguments, TrainingArguments) from a flag list, whose first item may be
    a JSON file of flags (see the module docstring). Where Paddle has no CUDA, --fp16 / --bf16 are
    turned off with one log line (the CPU build has no half-precision kernels)."""
    import paddle
    from paddlenlp.trainer import PdArgumentParser, TrainingArguments

    argv = list(argv)
    if argv and argv[0].endswith(".json"):
        argv = read_args_file(argv[0]) + argv[1:]
    parser = PdArgumentParser((ModelArguments, DataArguments, TrainingArguments))
    # AMP must be off before TrainingArguments builds the distributed strategy from it
    flags, _ = parser.parse_known_args(argv)
    if (flags.fp16 or flags.bf16) and not paddle.is_compiled_with_cuda():
        from .trainer import amp_unavailable_message

        logging.getLogger(__name__).warning(amp_unavailable_message(flags))
        argv += ["--fp16", "False", "--bf16", "False"]
    return parser.parse_args_into_dataclasses(args=argv, look_for_args_file=False)
