"""Training data: CSV datasets, buckets, the resumable batch samplers, the numpy collator, skip
reporting, and a paddle DataLoader with worker processes."""
import json
import logging
import os

import numpy as np
import pytest

from utils import assets
from utils.video_io import save_image, save_video
from video_datasets import (
    IMG_FPS,
    Bucket,
    BucketBatchSampler,
    BucketId,
    SampleKey,
    VariableVideoTextDataset,
    VideoBatchSampler,
    VideoTextDataset,
    aspect_ratio,
    collate_samples,
    read_csv_files,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "configs", "buckets", "tiny.json")
UPSTREAM = os.path.join(ROOT, "configs", "buckets", "opensora_v1_1_stage2.json")


def write_csv(path, rows, header=("path", "text")):
    with open(path, "w") as f:
        f.write(",".join(header) + "\n")
        for row in rows:
            f.write(",".join(str(v) for v in row) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    """Small files: a 24-frame grey ramp (frame k has value 10k), a 3-frame clip, an image, a
    corrupt mp4; and a CSV listing them plus a missing file (relative paths)."""
    d = tmp_path_factory.mktemp("media")
    ramp = np.zeros((24, 36, 64, 3), np.uint8)
    for k in range(24):
        ramp[k] = 10 * k
    save_video(ramp, d / "ramp.mp4", fps=24)
    save_video(np.full((3, 32, 32, 3), 128, np.uint8), d / "short.mp4", fps=24)
    img = np.zeros((40, 40, 3), np.uint8)
    img[:, :20] = 255
    save_image(img, d / "still.png")
    (d / "bad.mp4").write_bytes(b"this is not a video" * 64)
    return d


# ------------------------------------------------------------------------------------------ CSV


def test_csv_relative_paths_multiple_files_and_optional_columns(tmp_path):
    (tmp_path / "sub").mkdir()
    a = write_csv(tmp_path / "a.csv", [("x.mp4", "one"), ("/abs/y.mp4", '"two, with comma"')])
    b = write_csv(tmp_path / "sub" / "b.csv", [("z.png", "three", 1, 10, 20, "", "")],
                  header=("path", "text", "num_frames", "height", "width", "fps", "extra"))
    paths, texts, info = read_csv_files([a, b])
    assert paths == [str(tmp_path / "x.mp4"), "/abs/y.mp4", str(tmp_path / "sub" / "z.png")]
    assert texts == ["one", "two, with comma", "three"]
    assert info["size"].tolist() == [[-1, -1, -1], [-1, -1, -1], [1, 10, 20]]
    assert np.isnan(info["fps"]).all()


@pytest.mark.parametrize(
    "content, message",
    [
        ("path,caption\nx.mp4,hi\n", "lacks columns ['text']"),
        ("", "is empty"),
        ("path,text\n", "no rows"),
        ("path,text,num_frames\nx.mp4,hi,many\n", "'num_frames' = 'many' is not a number"),
    ],
)
def test_bad_csv_is_a_value_error_naming_file_and_columns(tmp_path, content, message):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(ValueError, match="bad.csv") as err:
        VideoTextDataset(str(path))
    assert message in str(err.value)
    if "lacks" in message or "empty" in message:
        assert "['path', 'text']" in str(err.value) and "num_frames" in str(err.value)
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        VideoTextDataset(str(tmp_path / "nope.csv"))


# -------------------------------------------------------------------------------------- buckets


def test_bucket_configs_load_and_sizes_follow_area_and_ratio():
    upstream = Bucket.from_file(UPSTREAM)
    assert upstream.resolutions[0] == "1080p" and upstream.resolutions[-1] == "144p"  # largest first
    assert upstream.size("144p", "9:16") == (144, 256)
    assert upstream.size("720p", "16:9") == (1280, 720)  # ratios are H:W
    for b in upstream.bucket_ids:
        t, h, w = upstream.target(b)
        assert h % 16 == 0 and w % 16 == 0
        assert upstream.batch_size(b) >= 1
    tiny = Bucket.from_file(TINY)
    assert len(tiny) == 6 * 3 and tiny.batch_size(BucketId("64px", 16, "1:1")) == 1
    assert aspect_ratio(720, 1280) == 720 / 1280
    assert tiny.closest_ratio(720, 1280) == "9:16" and tiny.closest_ratio(1280, 720) == "16:9"


def test_bucket_assignment_rules():
    bucket = Bucket.from_config({
        "resolutions": {"big": 4096, "small": 1024},
        "aspect_ratios": ["1:1", "9:16"],
        "size_multiple": 8,
        "buckets": {"big": {"1": [1.0, 2], "8": [1.0, 2], "16": [0.0, None]},
                    "small": {"1": [1.0, 4], "4": [0.5, 2], "16": [1.0, 1]}},
    })
    assert bucket.assign(1, 64, 64) == BucketId("big", 1, "1:1")  # an image goes to a 1-frame bucket
    assert bucket.assign(10, 64, 64) == BucketId("big", 8, "1:1")  # longest length that fits
    # 20 frames fit "big"/16 whose keep prob is 0: the sample drops to the next resolution
    assert bucket.assign(20, 64, 64) == BucketId("small", 16, "1:1")
    assert bucket.assign(20, 64, 64, frame_interval=2) == BucketId("big", 8, "1:1")  # 8*2 <= 20 < 16*2
    assert bucket.assign(5, 36, 64) == BucketId("small", 4, "9:16")  # 2304 < 0.8 * 4096
    assert bucket.assign(3, 36, 64) is None  # shorter than every length
    assert bucket.assign(1, 10, 10) is None  # smaller than every resolution
    # keep probability: draw per resolution, kept where draw < keep_prob
    assert bucket.assign(5, 40, 40, draws=[0.0, 0.49]) == BucketId("small", 4, "1:1")
    assert bucket.assign(5, 40, 40, draws=[0.0, 0.51]) is None


@pytest.mark.parametrize(
    "cfg, message",
    [
        ({"resolutions": {}, "aspect_ratios": ["1:1"], "buckets": {"x": {"1": [1.0, 2]}}}, "'x' has no area"),
        ({"resolutions": {"x": 64}, "aspect_ratios": ["1:1"], "buckets": {"x": {"1": [0.5, None]}}}, "batch_size"),
        ({"resolutions": {"x": 64}, "aspect_ratios": ["1:1"], "buckets": {"x": {"1": [1.5, 2]}}}, "keep_prob"),
        ({"resolutions": {"x": 64}, "aspect_ratios": ["1:1"], "buckets": {"x": {"a": [1, 2]}}}, "num_frames"),
        ({"resolutions": {"x": 64}, "aspect_ratios": ["16x9"], "buckets": {"x": {"1": [1, 2]}}}, "'16x9'"),
        ({"resolutions": {"x": 64}, "aspect_ratios": ["1:1"], "buckets": {}, "bs": 1}, "unknown keys"),
    ],
)
def test_bad_bucket_config_errors(cfg, message):
    with pytest.raises(ValueError, match=message):
        Bucket.from_config(cfg)


# ------------------------------------------------------------------------------------- datasets


def test_video_sample_contract_frame_stride_and_seeded_crop(media):
    csv = write_csv(media / "one.csv", [("ramp.mp4", "a grey ramp")])
    ds = VideoTextDataset(csv, num_frames=4, frame_interval=3, image_size=(32, 48), seed=7)
    s = ds[0]
    assert s["video"].dtype == np.float32 and s["video"].shape == (3, 4, 32, 48)
    assert -1.0 <= s["video"].min() and s["video"].max() <= 1.0
    assert (s["text"], s["num_frames"], s["height"], s["width"], s["index"]) == ("a grey ramp", 4, 32, 48, 0)
    assert s["ar"] == pytest.approx(32 / 48) and s["fps"] == pytest.approx(24 / 3) and s["skipped"] == []
    levels = (s["video"].mean(axis=(0, 2, 3)) + 1) * 127.5  # frame k of the source has value 10k
    assert np.allclose(np.diff(levels), 30, atol=3)  # every 3rd frame
    start = round(levels[0] / 10)
    assert 0 <= start <= 24 - 12
    # the crop is seeded by (seed, epoch, row): the same key gives the same clip, epochs differ
    again = ds[SampleKey(0, 0, None, None, None)]["video"]
    np.testing.assert_array_equal(again, s["video"])
    starts = {round((ds[SampleKey(0, e, None, None, None)]["video"][:, 0].mean() + 1) * 12.75) for e in range(8)}
    assert len(starts) > 1


def test_images_are_one_frame_clips(media):
    csv = write_csv(media / "img.csv", [("still.png", "half white")])
    s = VariableVideoTextDataset(csv)[SampleKey(0, 0, 1, 16, 16)]
    assert s["video"].shape == (3, 1, 16, 16) and s["fps"] == IMG_FPS and s["ar"] == 1.0
    # the fixed-size dataset repeats the image to num_frames (upstream behaviour)
    f = VideoTextDataset(csv, num_frames=3, image_size=(16, 16))[0]
    assert f["video"].shape == (3, 3, 16, 16)
    np.testing.assert_array_equal(f["video"][:, 0], f["video"][:, 2])
    with pytest.raises(TypeError, match="SampleKey"):
        VariableVideoTextDataset(csv)[0]


def test_unreadable_rows_are_skipped_replaced_counted_and_warned(media, caplog):
    rows = [("ramp.mp4", "good"), ("missing.mp4", "m"), ("bad.mp4", "b"), ("short.mp4", "s")]
    ds = VideoTextDataset(write_csv(media / "mixed.csv", rows), num_frames=4, frame_interval=2, image_size=(16, 16))
    with caplog.at_level(logging.WARNING, logger="video_datasets.datasets"):
        samples = [ds[i] for i in range(len(ds))]
    assert [s["index"] for s in samples] == [0, 0, 0, 0]  # only row 0 is usable: the others are replaced
    assert [len(s["skipped"]) for s in samples] == [0, 1, 1, 1]
    assert ds.skipped == 3
    report = ds.skipped_report()
    assert "skipped samples: 3" in report
    assert "missing.mp4: FileNotFoundError" in report and "bad.mp4: ValueError" in report
    assert "short.mp4: UnusableSample: 3 frames, need 8" in report
    assert sum("skipping data row" in r.message for r in caplog.records) == 3
    ds[1]  # a known bad row is reported again with its batch, but logged and counted once
    assert ds.skipped == 3 and sum("skipping data row" in r.message for r in caplog.records) == 3
    # a dataset with no usable row at all is a clear error, not an endless search
    hopeless = VideoTextDataset(write_csv(media / "hopeless.csv", rows[1:]), num_frames=4, image_size=(16, 16))
    with pytest.raises(RuntimeError, match="16 replacements could not be read"):
        hopeless[0]


def test_collator_stacks_numpy_and_rejects_mixed_shapes(media):
    ds = VariableVideoTextDataset(write_csv(media / "c.csv", [("ramp.mp4", "a"), ("missing.mp4", "b")]))
    a, b = ds[SampleKey(0, 0, 2, 16, 24)], ds[SampleKey(1, 0, 2, 16, 24)]
    batch = collate_samples([a, b])
    assert batch["video"].shape == (2, 3, 2, 16, 24) and batch["video"].dtype == np.float32
    assert batch["index"].tolist() == [0, 0] and batch["text"] == ["a", "a"]
    assert batch["num_frames"].dtype == np.int64 and batch["ar"].dtype == np.float32
    assert [e[0] for e in batch["skipped"]] == [1]
    with pytest.raises(ValueError, match="different shapes"):
        collate_samples([a, ds[SampleKey(0, 0, 1, 16, 24)]])


# ------------------------------------------------------------------------------------- samplers


@pytest.fixture(scope="module")
def sized_dataset(tmp_path_factory):
    """40 rows with sizes in the CSV (files need not exist for bucketing)."""
    d = tmp_path_factory.mktemp("sized")
    rng = np.random.default_rng(0)
    rows = []
    for i in range(40):
        t = 1 if i % 4 == 0 else int(rng.integers(4, 40))
        h, w = [(64, 64), (36, 64), (72, 128), (40, 40)][i % 4]
        rows.append((f"v{i}.mp4", f"clip {i}", t, h, w))
    csv = write_csv(d / "sized.csv", rows, header=("path", "text", "num_frames", "height", "width"))
    return VariableVideoTextDataset(csv)


def take(sampler, k=None):
    it = iter(sampler)
    return [next(it) for _ in range(k)] if k is not None else list(it)


def test_bucket_sampler_is_seeded_single_bucket_and_rank_identical(sized_dataset):
    bucket = Bucket.from_file(TINY)
    make = lambda **kw: BucketBatchSampler(sized_dataset, bucket, seed=3, **kw)  # noqa: E731
    one = make(num_replicas=1, rank=0)
    batches = take(one)
    assert batches == take(make(num_replicas=1, rank=0))  # same seed and epoch, same order
    for batch in batches:
        assert len({(k.num_frames, k.height, k.width) for k in batch}) == 1  # one bucket per batch
        target = (batch[0].num_frames, batch[0].height, batch[0].width)
        bucket_id = next(b for b in bucket.bucket_ids if bucket.target(b) == target)
        assert len(batch) == bucket.batch_size(bucket_id)
    one.set_epoch(1)
    assert take(one) != batches
    # two ranks: each takes every other batch of the same global list
    r0, r1 = make(num_replicas=2, rank=0), make(num_replicas=2, rank=1)
    b0, b1 = take(r0), take(r1)
    assert len(b0) == len(b1) == len(r0)
    padded = batches + batches[: len(batches) % 2]
    assert [b for pair in zip(b0, b1) for b in pair] == padded
    assert all(k.epoch == 0 for b in b0 for k in b)


def test_bucket_sampler_resume_yields_exactly_the_remaining_batches(sized_dataset):
    bucket = Bucket.from_file(TINY)
    full = take(BucketBatchSampler(sized_dataset, bucket, num_replicas=1, rank=0, seed=5))
    first = BucketBatchSampler(sized_dataset, bucket, num_replicas=1, rank=0, seed=5)
    first.set_epoch(0)
    consumed = take(first, 4)
    state = first.state_dict()
    assert state == {"epoch": 0, "seed": 5, "batches_consumed": 4}
    json.dumps(state)  # saved beside the checkpoint
    resumed = BucketBatchSampler(sized_dataset, bucket, num_replicas=1, rank=0, seed=999)
    resumed.load_state_dict(state)
    assert consumed + take(resumed) == full
    assert take(resumed) == full  # the restored position applies to one iteration only
    # with a prefetching DataLoader the caller passes the trained step count
    assert first.state_dict(consumed_batches=2)["batches_consumed"] == 2
    resumed.load_state_dict(first.state_dict(consumed_batches=2))
    assert take(resumed) == full[2:]
    # two ranks that consumed 2 steps each resume on one rank after the 4 global batches
    r0 = BucketBatchSampler(sized_dataset, bucket, num_replicas=2, rank=0, seed=5)
    resumed.load_state_dict(r0.state_dict(consumed_batches=2))
    assert take(resumed) == full[4:]
    resumed.set_epoch(1)  # another epoch starts from its beginning
    assert len(take(resumed)) == len(resumed)
    with pytest.raises(ValueError, match="batches_consumed"):
        resumed.load_state_dict({"epoch": 0, "seed": 5})


def test_video_batch_sampler_shards_and_resumes(sized_dataset):
    full = take(VideoBatchSampler(sized_dataset, batch_size=3, num_replicas=1, rank=0, seed=1))
    assert len(full) == 14 and all(len(b) == 3 for b in full)  # 40 rows -> 13 full + 1 filled
    assert sorted({k.index for b in full for k in b}) == list(range(40))
    dropped = take(VideoBatchSampler(sized_dataset, 3, num_replicas=4, rank=3, seed=1, drop_last=True))
    assert dropped == full[3:12:4]  # 13 full batches, trimmed to 12 for 4 ranks
    s = VideoBatchSampler(sized_dataset, batch_size=3, num_replicas=1, rank=0, seed=1)
    head = take(s, 5)
    t = VideoBatchSampler(sized_dataset, batch_size=3, num_replicas=1, rank=0, seed=1)
    t.load_state_dict(s.state_dict())
    assert head + take(t) == full


def test_video_batch_sampler_keeps_groups_together(sized_dataset):
    ones = take(VideoBatchSampler(sized_dataset, batch_size=4, num_replicas=1, rank=0, seed=1))
    same = take(VideoBatchSampler(sized_dataset, batch_size=4, num_replicas=1, rank=0, seed=1, group_size=1))
    assert same == ones  # group_size 1 is the plain row shuffle
    pairs = take(VideoBatchSampler(sized_dataset, batch_size=4, num_replicas=1, rank=0, seed=1, group_size=2))
    assert len(pairs) == 10 and sorted(k.index for b in pairs for k in b) == list(range(40))
    for batch in pairs:
        rows = [k.index for k in batch]
        assert all(rows[j] % 2 == 0 and rows[j + 1] == rows[j] + 1 for j in (0, 2))  # rows 2k, 2k+1 side by side
    assert [k.index for k in pairs[0]] != [0, 1, 2, 3]  # still shuffled, by groups
    two_ranks = [take(VideoBatchSampler(sized_dataset, 2, num_replicas=2, rank=r, seed=1, group_size=2)) for r in (0, 1)]
    assert all(b[1].index == b[0].index + 1 and b[0].index % 2 == 0 for r in two_ranks for b in r)
    with pytest.raises(ValueError, match="batch_size 3 must be a multiple of group_size 2"):
        VideoBatchSampler(sized_dataset, 3, num_replicas=1, rank=0, group_size=2)
    with pytest.raises(ValueError, match="40 rows, not a multiple of group_size 3"):
        VideoBatchSampler(sized_dataset, 3, num_replicas=1, rank=0, group_size=3)
    with pytest.raises(ValueError, match="group_size must be an int >= 1"):
        VideoBatchSampler(sized_dataset, 2, num_replicas=1, rank=0, group_size=0)


# ------------------------------------------------------------------------- DataLoader, real files


def test_dataloader_with_workers_reports_skips_through_batches(media):
    import paddle

    rows = [("ramp.mp4", "a"), ("missing.mp4", "b"), ("ramp.mp4", "c"), ("bad.mp4", "d")]
    ds = VideoTextDataset(write_csv(media / "dl.csv", rows), num_frames=2, image_size=(16, 16))
    sampler = VideoBatchSampler(ds, batch_size=2, num_replicas=1, rank=0, shuffle=False)
    loader = paddle.io.DataLoader(ds, batch_sampler=sampler, collate_fn=collate_samples, num_workers=2)
    batches = list(loader)
    assert len(batches) == 2
    for batch in batches:
        assert isinstance(batch["video"], paddle.Tensor) and batch["video"].shape == [2, 3, 2, 16, 16]
        ds.record_skips(batch["skipped"])
    assert ds.skipped == 2  # the failures happened in the workers; the batches carried them here
    assert "missing.mp4" in ds.skipped_report() and "bad.mp4" in ds.skipped_report()


def test_real_inputs_three_good_two_skipped(tmp_path):
    bad = tmp_path / "corrupt.mp4"
    bad.write_bytes(open(assets.bigbuckbunny_mp4(), "rb").read()[:4000])  # truncated real video
    rows = [(assets.bigbuckbunny_mp4(), "bunny"), (assets.city_mpg(), "city"),
            (assets.skimage_image("astronaut"), "astronaut"), (tmp_path / "missing.mp4", "gone"), (bad, "cut")]
    csv = write_csv(tmp_path / "real.csv", rows)

    # bucketed: the two bad rows are found (and counted) when the sampler probes their sizes
    ds = VariableVideoTextDataset(csv, frame_interval=2)
    sampler = BucketBatchSampler(ds, Bucket.from_file(TINY), num_replicas=1, rank=0, seed=0)
    batches = [collate_samples([ds[k] for k in keys]) for keys in sampler]
    loaded = sorted({i for b in batches for i in b["index"].tolist()})
    assert loaded == [0, 1, 2]
    for b in batches:
        assert b["video"].shape[2:] == (b["num_frames"][0], b["height"][0], b["width"][0])
        assert b["skipped"] == []
    image = next(b for b in batches if b["index"][0] == 2)
    assert image["num_frames"][0] == 1 and image["fps"][0] == IMG_FPS
    assert ds.skipped == 2
    assert "missing.mp4" in ds.skipped_report() and "corrupt.mp4" in ds.skipped_report()

    # fixed size: every row yields a sample; the two bad rows are replaced by good ones
    fixed = VideoTextDataset(csv, num_frames=4, frame_interval=2, image_size=(32, 56))
    samples = [fixed[i] for i in range(5)]
    assert all(s["video"].shape == (3, 4, 32, 56) for s in samples)
    assert [s["index"] for s in samples[:3]] == [0, 1, 2] and {s["index"] for s in samples[3:]} <= {0, 1, 2}
    assert samples[0]["fps"] == pytest.approx(25 / 2) and samples[1]["fps"] == pytest.approx(25 / 2)
    assert fixed.skipped == 2 and sum(len(s["skipped"]) for s in samples) == 2
