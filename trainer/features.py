"""Pre-extracted features: VAE latents and text-encoder states cached on disk, so that training
runs the DiT only (the speed trick of Open-Sora 1.2's `stage1_feat` and the MiniSora community).

    CSV ──VideoTextDataset──> clips ──VAE / T5 (once)──> feature folder ──FeatureDataset──> Trainer

Feature folder (written by `extract_features`, read by `FeatureDataset`):
    features.csv        path,text,num_frames,height,width,fps -- one row per cached clip; written
                        last (atomically), so a folder without it is incomplete
    000000.npz ...      latent float32 [C, T, h, w], y float32 [L, C_txt], y_mask int64 [L]

An index's `path` column is relative to the index's own folder, so one CSV can join several feature
folders (e.g. `data/features_both.csv` with rows `features_mnist/000000.npz`, `features_mnist_seed1/...`)
and be passed as `--feature_path`; the clips of all of them must share one size.

What is fixed at extraction time: the temporal crop (epoch 0's), the VAE posterior sample (drawn
with a seed) and the clip size; training from the cache sees the same latent for a clip in every
epoch. Only fixed-size clips (`VideoTextDataset`) are cached.

Shorter clips from the same cache: `FeatureDataset(path, num_frames=k)` hands out a window of k
latent frames of each cached clip, its start drawn from (seed, epoch, row), so every epoch sees
other windows and a resumed run the same ones. `num_frames=1` trains on single frames: the image
stage that Open-Sora runs before (and beside) video training, 16x cheaper per sample for 16-frame
clips (the VAE is per frame: latent frames = pixel frames).
"""
import csv
import logging
import os

import numpy as np
import paddle

from video_datasets import SampleKey, SkipLog, VideoBatchSampler, collate_samples, temporal_crop_start

INDEX_NAME = "features.csv"
COLUMNS = ("path", "text", "num_frames", "height", "width", "fps")

logger = logging.getLogger(__name__)


def _write_index(out_dir, rows):
    """Write `out_dir/features.csv` (COLUMNS, then `rows`) atomically: a folder without it is incomplete."""
    tmp = os.path.join(out_dir, INDEX_NAME + ".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(COLUMNS)
        writer.writerows(rows)
    os.replace(tmp, os.path.join(out_dir, INDEX_NAME))


@paddle.no_grad()
def extract_features(model, dataset, out_dir, batch_size=1, seed=0):
    """Encode every row of a fixed-size dataset once and write the feature folder.

    Args:
        model: an `OpenSoraTrainModel` with its VAE and text encoder (the DiT is not run).
        dataset: a `VideoTextDataset`; unreadable rows are skipped (their replacement is not cached
            twice).
        out_dir: the feature folder (created; an existing index is replaced at the end).
        batch_size: clips encoded together.
        seed: VAE posterior noise of batch k is drawn with seed + k.

    Returns:
        (number of cached clips, the dataset's skipped-row report).
    """
    os.makedirs(out_dir, exist_ok=True)
    sampler = VideoBatchSampler(dataset, batch_size, num_replicas=1, rank=0, shuffle=False, seed=seed)
    loader = paddle.io.DataLoader(dataset, batch_sampler=sampler, collate_fn=collate_samples)
    rows, done = [], set()
    for k, batch in enumerate(loader):
        dataset.record_skips(batch["skipped"])
        latent = model.vae.encode(batch["video"], seed=seed + k).numpy()  # [B, C, T, h, w]
        out = model.text_encoder.encode(batch["text"])
        y, y_mask = out["y"].numpy()[:, 0], out["mask"].numpy()  # [B, L, C_txt], [B, L]
        for i, index in enumerate(batch["index"].numpy().tolist()):
            if index in done:  # a replacement for a skipped row: already cached under its own row
                continue
            done.add(index)
            name = f"{index:06d}.npz"
            np.savez(os.path.join(out_dir, name), latent=latent[i], y=y[i], y_mask=y_mask[i])
            rows.append([name, batch["text"][i], int(batch["num_frames"][i]), int(batch["height"][i]),
                         int(batch["width"][i]), float(batch["fps"][i])])
        if (k + 1) % 50 == 0:
            logger.info("encoded %d clips", len(done))
    rows.sort()
    _write_index(out_dir, rows)
    return len(rows), dataset.skipped_report()


@paddle.no_grad()
def reencode_captions(text_encoder, feature_path, out_dir, batch_size=64):
    """Write a copy of a feature folder whose caption states come from another text encoder (or other
    text-encoder options), keeping every cached latent: the VAE is not run again.

    Args:
        text_encoder: an encoder with `encode(texts) -> {"y": [B, 1, L, C], "mask": [B, L]}`.
        feature_path: a feature folder or index CSV (as `FeatureDataset`'s `path`).
        out_dir: the new feature folder (created); files `000000.npz ...` in the index's row order,
            the index written last (atomically). It must not be the folder being read.
        batch_size: captions encoded together.

    Returns:
        number of clips written.

    Raises:
        FileNotFoundError: no index at `feature_path`. ValueError: `out_dir` is the folder read.
    """
    source = FeatureDataset(feature_path)
    if os.path.abspath(out_dir) == source.folder:
        raise ValueError(f"out_dir {out_dir!r} is the feature folder being read; write the re-encoded copy elsewhere")
    os.makedirs(out_dir, exist_ok=True)
    rows = []
    for start in range(0, len(source.rows), batch_size):
        chunk = source.rows[start:start + batch_size]
        out = text_encoder.encode([row["text"] for row in chunk])
        y, y_mask = out["y"].numpy()[:, 0], out["mask"].numpy()  # [B, L, C_txt], [B, L]
        for i, row in enumerate(chunk):
            name = f"{start + i:06d}.npz"
            latent = np.load(os.path.join(source.folder, row["path"]))["latent"]
            np.savez(os.path.join(out_dir, name), latent=latent, y=y[i], y_mask=y_mask[i])
            rows.append([name] + [row[key] for key in COLUMNS[1:]])
        logger.info("re-encoded %d of %d captions", len(rows), len(source.rows))
    _write_index(out_dir, rows)
    return len(rows)


class FeatureDataset(paddle.io.Dataset):
    """Clips cached by `extract_features`; keys are row ints or `SampleKey`s (as `VideoTextDataset`'s,
    so `VideoBatchSampler` and the trainer's loader work unchanged).

    Args:
        path: the feature folder, its `features.csv`, or another index CSV of the same columns (its
            `path`s relative to the CSV's folder; see the module docstring).
        num_frames: latent frames per sample; None (default) = the cached clips whole, fewer = a
            window of that many consecutive frames per sample (see the module docstring).
        seed: seeds the window starts (with the epoch and the row).

    Raises:
        FileNotFoundError: no index (extraction did not finish). ValueError: the cached clips differ
        in size (only one size is supported), or `num_frames` is not in 1..the cached frame count.
    """

    def __init__(self, path, num_frames=None, seed=0):
        index = path if path.endswith(".csv") else os.path.join(path, INDEX_NAME)
        if not os.path.isfile(index):
            raise FileNotFoundError(f"feature index {index!r} not found: run scripts/extract_features.py first")
        self.folder = os.path.dirname(os.path.abspath(index))
        with open(index, newline="", encoding="utf-8") as f:
            self.rows = list(csv.DictReader(f))
        if not self.rows:
            raise ValueError(f"feature index {index!r} has no rows")
        sizes = {(r["num_frames"], r["height"], r["width"]) for r in self.rows}
        if len(sizes) != 1:
            raise ValueError(f"feature index {index!r} mixes clip sizes {sorted(sizes)}; cache one size per folder")
        self.skip_log = SkipLog()  # cached features are never skipped; kept for the trainer's report
        self.cached_frames = int(self.rows[0]["num_frames"])
        if num_frames is not None and not 1 <= int(num_frames) <= self.cached_frames:
            raise ValueError(
                f"num_frames={num_frames} does not fit the cached clips of {index!r}: "
                f"accepted 1..{self.cached_frames} (their frame count)"
            )
        self.num_frames = self.cached_frames if num_frames is None else int(num_frames)
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch):
        """Epoch used for integer keys (SampleKeys carry their own); seeds the window starts."""
        self.epoch = int(epoch)

    def window_start(self, index, epoch):
        """First latent frame of row `index`'s window in `epoch` (0 when clips are used whole)."""
        return temporal_crop_start(self.seed, epoch, index, self.cached_frames - self.num_frames, 2)

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, key):
        if isinstance(key, (int, np.integer)):
            index, epoch = int(key), self.epoch
        else:
            key = SampleKey(*key)
            index, epoch = int(key.index), int(key.epoch)
        row = self.rows[index]
        data = np.load(os.path.join(self.folder, row["path"]))
        height, width = int(row["height"]), int(row["width"])
        start = self.window_start(index, epoch)
        return {
            "latent": data["latent"][:, start:start + self.num_frames],  # [C, num_frames, h, w]
            "y": data["y"][None],  # [1, L, C_txt]
            "y_mask": data["y_mask"],
            "num_frames": self.num_frames,
            "height": height,
            "width": width,
            "ar": height / width,
            "fps": float(row["fps"]),
            "index": index,
        }

    @property
    def skipped(self):
        return len(self.skip_log)

    def record_skips(self, entries):
        self.skip_log.update(entries)

    def skipped_report(self, limit=20):
        return self.skip_log.report(limit)


def collate_features(samples):
    """Stack cached samples: latent [B, C, T, h, w], y [B, 1, L, C_txt], y_mask [B, L], and the clip
    info arrays [B]; numpy only (safe in DataLoader workers)."""
    batch = {key: np.stack([s[key] for s in samples]) for key in ("latent", "y", "y_mask")}
    for key in ("num_frames", "height", "width", "index"):
        batch[key] = np.asarray([s[key] for s in samples], dtype=np.int64)
    for key in ("ar", "fps"):
        batch[key] = np.asarray([s[key] for s in samples], dtype=np.float32)
    return batch
