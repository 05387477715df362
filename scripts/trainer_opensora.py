"""Train Open-Sora's DiT with paddlenlp's Trainer (frozen VAE and text encoder).

One process (CPU or one GPU):
    python scripts/trainer_opensora.py configs/train/tiny.json --output_dir ./exp_output
Two processes on the CPU (gloo), optimizer state sharded over them:
    python -m paddle.distributed.launch --nproc_per_node 2 scripts/trainer_opensora.py \\
        configs/train/tiny.json --output_dir ./exp_output --sharding stage1 --fp16 True --fp16_opt_level O1
Four GPUs:
    python -m paddle.distributed.launch --gpus 0,1,2,3 scripts/trainer_opensora.py \\
        configs/train/opensora_v1_1_stage2.json --do_train --output_dir ./exp_output \\
        --sharding stage1 --fp16 True --fp16_opt_level O1

Flags: `ModelArguments` / `DataArguments` in `trainer/trainer_args.py` and paddlenlp's
`TrainingArguments`; a JSON file as the first argument holds flags, the command line overrides it.
With --feature_path (a folder written by scripts/extract_features.py) the DiT trains on cached VAE
latents and text features and the VAE and text encoder are not loaded.
A run started again in an output folder that holds checkpoints resumes from the last complete one
(unless --overwrite_output_dir); --resume_from_checkpoint names one explicitly. Where Paddle has no
CUDA, --fp16 / --bf16 are turned off with one log line and the run is float32.
"""
import logging
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from utils.cpu import configure_cpu_runtime  # noqa: E402

configure_cpu_runtime()
os.environ.setdefault("GLOG_minloglevel", "2")  # Paddle's C++ INFO / WARNING lines


def build_dataset(data_args, seed):
    """(dataset, bucket or None) from the data arguments."""
    from trainer.features import FeatureDataset
    from video_datasets import Bucket, VariableVideoTextDataset, VideoTextDataset

    if data_args.feature_path:
        # --num_frames below the cached frame count trains on windows of the cached clips (1: images)
        return FeatureDataset(data_args.feature_path, num_frames=data_args.num_frames, seed=seed), None
    if data_args.bucket_config:
        bucket = Bucket.from_file(data_args.bucket_config)
        dataset = VariableVideoTextDataset(data_args.data_path, frame_interval=data_args.frame_interval, seed=seed)
        return dataset, bucket
    dataset = VideoTextDataset(
        data_args.data_path,
        num_frames=data_args.num_frames,
        frame_interval=data_args.frame_interval,
        image_size=tuple(data_args.image_size),
        seed=seed,
    )
    return dataset, None


def main(argv):
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(message)s", datefmt="%H:%M:%S")
    from paddle.distributed.fleet.utils.log_util import set_log_level
    from paddlenlp.utils.log import logger as paddlenlp_logger

    paddlenlp_logger.set_level("WARNING")  # the Trainer prints ~150 lines of arguments at INFO

    from paddlenlp.trainer import get_last_checkpoint, set_seed

    from trainer.model import build_train_model
    from trainer.trainer import OpenSoraTrainer
    from trainer.trainer_args import parse_args

    model_args, data_args, training_args = parse_args(argv)  # multi-process: fleet.init happens here
    set_log_level("WARNING")  # fleet's sharding set-up lines (fleet.init resets the level to INFO)
    log = logging.getLogger("trainer_opensora")

    resume = training_args.resume_from_checkpoint
    if resume is None and os.path.isdir(training_args.output_dir) and not training_args.overwrite_output_dir:
        resume = get_last_checkpoint(training_args.output_dir)  # continue a stopped or killed run

    set_seed(training_args.seed)  # the DiT's initial weights
    dataset, bucket = build_dataset(data_args, training_args.seed)
    model = build_train_model(model_args, data_args)
    n_params = sum(int(p.size) for p in model.parameters() if not p.stop_gradient)
    if data_args.feature_path:
        data = f"{len(dataset)} cached clips in {data_args.feature_path} ({dataset.num_frames} of their {dataset.cached_frames} latent frames per sample)"
    else:
        data = f"{len(dataset)} rows in {', '.join(data_args.data_path)}; " + (
            f"buckets from {data_args.bucket_config}" if bucket else
            f"clips of {data_args.num_frames} frames at {data_args.image_size[0]}x{data_args.image_size[1]}")
    log.info("%s with %.2fM trainable parameters; %s", type(model.dit).__name__, n_params / 1e6, data)
    trainer = OpenSoraTrainer(
        model=model, args=training_args, train_dataset=dataset, bucket=bucket, ema_decay=model_args.ema_decay,
        sampler_group_size=data_args.sampler_group_size,
    )
    trainer.train(resume_from_checkpoint=resume)
    report = trainer.skipped_report()
    if training_args.should_save:
        print(report, flush=True)
        print(f"final DiT: {os.path.join(training_args.output_dir, 'dit')}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
