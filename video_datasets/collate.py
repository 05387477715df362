"""Batch collation in numpy (paddle tensors must not be created in DataLoader worker processes:
`paddle.to_tensor` there segfaults; the DataLoader turns the numpy arrays into tensors itself)."""
import numpy as np

INT_KEYS = ("num_frames", "height", "width", "index")
FLOAT_KEYS = ("ar", "fps")


def collate_samples(samples):
    """Stack same-size samples (one bucket) into a batch.

    Args:
        samples: list of sample dicts from `VideoTextDataset` / `VariableVideoTextDataset`.

    Returns:
        dict with
            video       float32 [B, 3, T, H, W]
            text        list of B str
            num_frames, height, width, index   int64 [B]
            ar, fps     float32 [B]
            skipped     list of [index, path, reason] for the rows that failed while this batch
                        was built (feed it to `dataset.record_skips`; its length is the batch's
                        skipped count)

    Raises:
        ValueError: the batch is empty or its videos differ in shape (naming rows and shapes).
    """
    if not samples:
        raise ValueError("collate_samples got an empty batch")
    shapes = {tuple(s["video"].shape) for s in samples}
    if len(shapes) != 1:
        detail = ", ".join(f"row {s['index']}: {list(s['video'].shape)}" for s in samples)
        raise ValueError(f"cannot stack videos of different shapes into one batch ({detail}); "
                         "samples of one batch must come from one bucket")
    batch = {
        "video": np.stack([s["video"] for s in samples]).astype(np.float32, copy=False),
        "text": [str(s["text"]) for s in samples],
    }
    for key in INT_KEYS:
        batch[key] = np.asarray([s[key] for s in samples], dtype=np.int64)
    for key in FLOAT_KEYS:
        batch[key] = np.asarray([s[key] for s in samples], dtype=np.float32)
    batch["skipped"] = [list(entry) for s in samples for entry in s.get("skipped", ())]
    return batch
