"""Training data: CSV video-text datasets, resolution/length buckets, resumable batch samplers and
a numpy collator.

(Named `video_datasets`, not `datasets`, so that Hugging Face `datasets`, which paddlenlp.trainer
imports, is not shadowed.)
"""
from .bucket import Bucket, BucketId, aspect_ratio, load_bucket_config, parse_ratio, size_for_ratio
from .collate import collate_samples
from .datasets import (
    IMG_FPS,
    SampleKey,
    SkipLog,
    VariableVideoTextDataset,
    VideoTextDataset,
    read_csv_files,
    temporal_crop_start,
)
from .sampler import BucketBatchSampler, VideoBatchSampler

__all__ = [
    "Bucket",
    "BucketId",
    "BucketBatchSampler",
    "IMG_FPS",
    "SampleKey",
    "SkipLog",
    "VariableVideoTextDataset",
    "VideoBatchSampler",
    "VideoTextDataset",
    "aspect_ratio",
    "collate_samples",
    "temporal_crop_start",
    "load_bucket_config",
    "parse_ratio",
    "read_csv_files",
    "size_for_ratio",
]
