"""Cache VAE latents and text-encoder features of a video-text CSV, to train the DiT without
running the VAE and T5 at every step.

    python scripts/extract_features.py configs/train/tiny.json --data_path clips.csv --output_dir ./features
    python scripts/trainer_opensora.py configs/train/tiny.json --feature_path ./features --output_dir ./exp_output

Takes the training flags (the same JSON file works): the model flags name the VAE and text encoder,
--num_frames / --image_size / --frame_interval cut the clips (fixed size; bucket configs are not
cached), --output_dir is the feature folder, --per_device_train_batch_size the encoding batch and
--seed the crops and VAE noise. One pass over the CSV: each clip's temporal crop and latent sample
are fixed from then on (see trainer/features.py).

Re-encoding the captions only: with --feature_path (a feature folder or index CSV) instead of
--data_path, the cached latents are copied and only the caption states are computed again, with the
text-encoder flags given (e.g. --text_context_window 2 for the minilm encoder's local context):

    python scripts/extract_features.py configs/train/mnist_default_p2.json --text_context_window 2 \
        --feature_path data/features_mnist --output_dir data/features_mnist_ctx
"""
import logging
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from utils.cpu import configure_cpu_runtime  # noqa: E402

configure_cpu_runtime()
os.environ.setdefault("GLOG_minloglevel", "2")


def main(argv):
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(message)s", datefmt="%H:%M:%S")
    from paddlenlp.utils.log import logger as paddlenlp_logger

    paddlenlp_logger.set_level("WARNING")

    from trainer.features import extract_features
    from trainer.model import build_train_model
    from trainer.trainer_args import parse_args
    from video_datasets import VideoTextDataset

    model_args, data_args, training_args = parse_args(argv)
    if data_args.feature_path:
        reencode(model_args, data_args.feature_path, training_args.output_dir)
        return
    if data_args.bucket_config:
        raise SystemExit("error: extract_features caches fixed-size clips from --data_path; drop --bucket_config")
    dataset = VideoTextDataset(
        data_args.data_path, num_frames=data_args.num_frames, frame_interval=data_args.frame_interval,
        image_size=tuple(data_args.image_size), seed=training_args.seed,
    )
    model = build_train_model(model_args, data_args)
    count, report = extract_features(
        model, dataset, training_args.output_dir, training_args.per_device_train_batch_size, training_args.seed
    )
    print(report)
    print(f"cached {count} clips in {training_args.output_dir}")


def reencode(model_args, feature_path, output_dir):
    """Copy a feature folder with its captions encoded again by the text encoder of `model_args`."""
    from trainer.features import FeatureDataset, reencode_captions
    from trainer.model import text_encoder_spec
    from utils.config import build_text_encoder

    cached_length = int(FeatureDataset(feature_path)[0]["y_mask"].shape[0])  # the cached token length
    text_encoder = build_text_encoder(text_encoder_spec(model_args), model_args.model_max_length or cached_length)
    count = reencode_captions(text_encoder, feature_path, output_dir)
    print(f"re-encoded the captions of {count} cached clips into {output_dir}")


if __name__ == "__main__":
    main(sys.argv[1:])
