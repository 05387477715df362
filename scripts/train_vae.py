"""Train a small image VAE (ppdiffusers `AutoencoderKL`) with paddlenlp's Trainer, for the
per-frame `VideoAutoencoderKL`.

    python scripts/train_vae.py configs/vae/mnist_vae.json --output_dir exp_output/vae_mnist

Flags: `VAEArguments` in `trainer/vae_trainer.py` (architecture, loss, data) and paddlenlp's
`TrainingArguments` (`--max_steps`, `--learning_rate`, `--per_device_train_batch_size`, ...). A
JSON file as the first argument holds flags; the command line overrides it. A run started again in
an output folder that holds checkpoints resumes from the last one (unless --overwrite_output_dir).

At the end the VAE is written in diffusers format to `<output_dir>/vae` (config.json +
diffusion_pytorch_model.safetensors; `models.vae.VideoAutoencoderKL.from_pretrained` loads it),
with its latent normalised so that `latent * 0.18215` has unit variance on the training clips, and
`<output_dir>/vae_eval.json` holds the reconstruction PSNR on the held-out clips (--eval_data_path)
and on real videos (--eval_real_videos), and the time per 16-frame encode + decode.
"""
import json
import logging
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from utils.cpu import configure_cpu_runtime  # noqa: E402

configure_cpu_runtime()
os.environ.setdefault("GLOG_minloglevel", "2")  # Paddle's C++ INFO / WARNING lines


def parse_args(argv):
    """(VAEArguments, TrainingArguments); AMP is turned off where Paddle has no CUDA."""
    import paddle
    from paddlenlp.trainer import PdArgumentParser, TrainingArguments

    from trainer.vae_trainer import VAEArguments, read_args_file

    argv = list(argv)
    if argv and argv[0].endswith(".json"):
        argv = read_args_file(argv[0]) + argv[1:]
    parser = PdArgumentParser((VAEArguments, TrainingArguments))
    flags, _ = parser.parse_known_args(argv)
    if (flags.fp16 or flags.bf16) and not paddle.is_compiled_with_cuda():
        logging.getLogger("train_vae").warning(
            "--fp16 / --bf16 need a CUDA build of Paddle (its CPU kernels have no half precision): "
            "AMP is off, this run trains in float32"
        )
        argv += ["--fp16", "False", "--bf16", "False"]
    return parser.parse_args_into_dataclasses(args=argv, look_for_args_file=False)


def build_dataset(args, seed, log):
    from trainer.vae_trainer import FrameDataset, load_clip_frames, load_video_frames, resolve_video

    started = time.time()
    clip_frames = load_clip_frames(args.data_path, args.max_clips, args.frames_per_clip, args.sample_size)
    real_frames = []
    if args.real_fraction > 0:
        for name in args.real_videos:
            real_frames += load_video_frames(resolve_video(name), args.real_short_side)
    dataset = FrameDataset(clip_frames, real_frames, args.real_fraction, args.sample_size, seed=seed)
    log.info(
        "%d frames: %d from %s, %d random crops of %d real-video frames (%.0f s to load)",
        len(dataset), len(clip_frames), ", ".join(args.data_path), dataset.num_real, len(real_frames),
        time.time() - started,
    )
    return dataset


def evaluate(vae, args, log):
    """PSNR on held-out clips and real videos, and the encode + decode time of 16 frames."""
    import numpy as np
    import paddle

    from models.vae import VideoAutoencoderKL
    from trainer.vae_trainer import load_clip_frames, psnr, reconstruct, resolve_video
    from utils.video_io import read_frames, resize_crop

    report = {}
    if args.eval_data_path:
        frames = load_clip_frames([args.eval_data_path], args.eval_max_clips, 10 ** 6, args.sample_size)
        report["heldout_clips_psnr_db"] = round(psnr(frames, reconstruct(vae, frames)), 2)
        report["heldout_clips_frames"] = int(len(frames))
    for name in args.eval_real_videos:
        frames = resize_crop(read_frames(resolve_video(name)), args.sample_size, args.sample_size)
        label = os.path.splitext(os.path.basename(name))[0]  # "carphone", or a file's name
        report[f"{label}_psnr_db"] = round(psnr(frames, reconstruct(vae, frames)), 2)
    video = VideoAutoencoderKL(vae, deterministic=True)
    x = paddle.rand([1, 3, 16, args.sample_size, args.sample_size]) * 2 - 1
    times = []
    with paddle.no_grad():
        for _ in range(3):
            started = time.time()
            video.decode(video.encode(x))
            times.append(time.time() - started)
    report["encode_decode_16_frames_s"] = round(float(np.min(times)), 3)
    for key, value in report.items():
        log.info("%s: %s", key, value)
    return report


def console_callback():
    """A Trainer callback printing one line per logging step (the Trainer's own printing is quieted)."""
    from paddlenlp.trainer import TrainerCallback

    class ConsoleLog(TrainerCallback):
        def __init__(self):
            self.started = time.time()

        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.is_local_process_zero and logs and "loss" in logs:
                print(
                    f"step {state.global_step}/{state.max_steps} loss {logs['loss']:.4f} "
                    f"lr {logs.get('learning_rate', 0):.2e} ({time.time() - self.started:.0f} s)",
                    flush=True,
                )

    return ConsoleLog()


def main(argv):
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(message)s", datefmt="%H:%M:%S")
    from paddlenlp.utils.log import logger as paddlenlp_logger

    paddlenlp_logger.set_level("WARNING")  # the Trainer prints ~150 lines of arguments at INFO
    from paddlenlp.trainer import Trainer, get_last_checkpoint, set_seed
    from ppdiffusers.utils import logging as pd_logging

    from models.vae import VideoAutoencoderKL
    from trainer.vae_trainer import (
        AutoencoderKLWithLoss,
        build_autoencoder,
        collate_frames,
        latent_statistics,
        normalize_latents,
    )

    pd_logging.set_verbosity_error()  # "mid_block_add_attention is ignored" notices
    log = logging.getLogger("train_vae")
    try:
        vae_args, training_args = parse_args(argv)
    except (ValueError, FileNotFoundError) as error:
        print(f"train_vae: error: {error}", file=sys.stderr)
        return 2
    training_args.disable_tqdm = True

    resume = training_args.resume_from_checkpoint
    if resume is None and os.path.isdir(training_args.output_dir) and not training_args.overwrite_output_dir:
        resume = get_last_checkpoint(training_args.output_dir)

    set_seed(training_args.seed)
    dataset = build_dataset(vae_args, training_args.seed, log)
    vae = build_autoencoder(vae_args)
    model = AutoencoderKLWithLoss(vae, vae_args.rec_loss, vae_args.kl_weight)
    log.info("AutoencoderKL %s: %.2fM parameters, spatial factor %d, %d latent channels",
             vae_args.block_out_channels, sum(int(p.size) for p in vae.parameters()) / 1e6,
             2 ** (len(vae_args.block_out_channels) - 1), vae_args.latent_channels)
    trainer = Trainer(model=model, args=training_args, train_dataset=dataset, data_collator=collate_frames,
                      callbacks=[console_callback()])
    started = time.time()
    trainer.train(resume_from_checkpoint=resume)
    train_seconds = time.time() - started
    if not training_args.should_save:
        return 0

    vae.eval()
    channel_mean, std = latent_statistics(vae, dataset.clip_frames)
    scale = normalize_latents(vae, channel_mean, std)
    log.info("latent normalised: channel means %s, std %.4f -> scale %.4f", channel_mean.round(4).tolist(), std, scale)
    save_dir = os.path.join(training_args.output_dir, "vae")
    VideoAutoencoderKL(vae).save_pretrained(save_dir)
    report = {
        "train_seconds_this_run": round(train_seconds, 1),
        "max_steps": training_args.max_steps,
        "parameters": int(sum(int(p.size) for p in vae.parameters())),
        "latent_normalisation": {"channel_mean": channel_mean.round(6).tolist(), "std": round(std, 6)},
        **evaluate(vae, vae_args, log),
    }
    with open(os.path.join(training_args.output_dir, "vae_eval.json"), "w") as f:
        json.dump(report, f, indent=1)
    print(f"final VAE: {save_dir}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
