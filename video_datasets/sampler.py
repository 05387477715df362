"""Seeded, resumable, rank-sharded batch samplers.

Both samplers build the epoch's full list of batches from (seed, epoch) alone -- never from global
random state -- so every rank computes the same list; rank `r` of `R` then takes batches
r, r + R, r + 2R, ... The position in the epoch is `batches_consumed`, counted over all ranks, so a
run may resume with another number of ranks (the start rounds down to a multiple of the new R).

    sampler = BucketBatchSampler(dataset, bucket, seed=42)
    loader = paddle.io.DataLoader(dataset, batch_sampler=sampler, collate_fn=collate_samples)
    sampler.set_epoch(epoch)
    ...
    state = sampler.state_dict(consumed_batches=steps_done_in_this_epoch)   # save with the checkpoint
    sampler.load_state_dict(state)                # next iteration yields only the remaining batches

A DataLoader iterates the sampler ahead of training (prefetch), so the number of batches the
sampler has *yielded* is not the number *trained on*: pass `consumed_batches` (this rank's steps in
the epoch) to `state_dict` when a DataLoader sits in between.
"""
import logging
from collections import Counter

import numpy as np

from .datasets import SampleKey

logger = logging.getLogger(__name__)

STATE_KEYS = ("epoch", "seed", "batches_consumed")


def _world():
    import paddle.distributed as dist

    return dist.get_world_size(), dist.get_rank()


class _ShardedBatchSampler:
    """Shared epoch bookkeeping, sharding and state; subclasses build `_global_batches(epoch)`."""

    def __init__(self, dataset, num_replicas=None, rank=None, shuffle=True, seed=0, drop_last=False):
        if num_replicas is None or rank is None:
            world, this_rank = _world()
            num_replicas = world if num_replicas is None else num_replicas
            rank = this_rank if rank is None else rank
        if not (isinstance(num_replicas, int) and num_replicas >= 1):
            raise ValueError(f"num_replicas must be an int >= 1, got {num_replicas!r}")
        if not (isinstance(rank, int) and 0 <= rank < num_replicas):
            raise ValueError(f"rank must be an int in [0, {num_replicas}), got {rank!r}")
        self.dataset = dataset
        self.num_replicas = num_replicas
        self.rank = rank
        self.shuffle = shuffle
        self.seed = int(seed)
        self.drop_last = drop_last
        self.epoch = 0
        self._start = 0  # per-rank step the next iteration starts at (set by load_state_dict)
        self._yielded = 0  # per-rank batches yielded in the current epoch
        self._cache = None  # (seed, epoch, global batches)

    # -- epoch plan --------------------------------------------------------------------------------

    def _global_batches(self, epoch):
        raise NotImplementedError

    def _plan(self):
        """The epoch's global batch list, padded (or trimmed, drop_last) to a multiple of R."""
        if self._cache is None or self._cache[:2] != (self.seed, self.epoch):
            batches = self._global_batches(self.epoch)
            remainder = len(batches) % self.num_replicas
            if remainder and self.drop_last:
                batches = batches[: len(batches) - remainder]
            elif remainder and batches:
                pad = self.num_replicas - remainder
                batches = batches + [batches[i % len(batches)] for i in range(pad)]
            self._cache = (self.seed, self.epoch, batches)
        return self._cache[2]

    def __len__(self):
        """Batches this rank gets in the current epoch (the whole epoch, not what remains)."""
        return len(self._plan()) // self.num_replicas

    def __iter__(self):
        batches = self._plan()
        start, self._start = self._start, 0
        self._yielded = start
        for step in range(start, len(batches) // self.num_replicas):
            self._yielded = step + 1
            yield list(batches[step * self.num_replicas + self.rank])

    # -- epoch and state ---------------------------------------------------------------------------

    def set_epoch(self, epoch):
        """Select the epoch (changes the order). A restored position is kept only for its own epoch."""
        epoch = int(epoch)
        if epoch != self.epoch:
            self._start = 0
            self._yielded = 0
        self.epoch = epoch

    def state_dict(self, consumed_batches=None):
        """{"epoch", "seed", "batches_consumed"} -- the position in the epoch, over all ranks.

        Args:
            consumed_batches: batches this rank has trained on in the current epoch; defaults to
                the number this sampler has yielded (exact only without a prefetching DataLoader).
        """
        steps = self._yielded if consumed_batches is None else int(consumed_batches)
        if steps < 0:
            raise ValueError(f"consumed_batches must be >= 0, got {consumed_batches!r}")
        return {"epoch": self.epoch, "seed": self.seed, "batches_consumed": steps * self.num_replicas}

    def load_state_dict(self, state):
        """Restore epoch, seed and position: the next iteration yields exactly the remaining batches.

        Raises:
            ValueError: `state` lacks a key of STATE_KEYS or has a negative position.
        """
        missing = [k for k in STATE_KEYS if k not in state]
        if missing:
            raise ValueError(f"sampler state lacks keys {missing}; expected {list(STATE_KEYS)}, got {sorted(state)}")
        if int(state["batches_consumed"]) < 0:
            raise ValueError(f"sampler state batches_consumed must be >= 0, got {state['batches_consumed']!r}")
        if int(state["seed"]) != self.seed:
            logger.warning("sampler seed %d replaced by the checkpoint's seed %d", self.seed, int(state["seed"]))
        self.seed = int(state["seed"])
        self.epoch = int(state["epoch"])
        self._start = int(state["batches_consumed"]) // self.num_replicas
        self._yielded = self._start


def _split_into_batches(indices, batch_size, drop_last):
    """Consecutive batches of `batch_size`; the last partial batch is dropped or filled cyclically
    from the start of `indices`."""
    batches = [indices[i : i + batch_size] for i in range(0, len(indices), batch_size)]
    if batches and len(batches[-1]) < batch_size:
        if drop_last:
            batches.pop()
        else:
            last = batches[-1]
            batches[-1] = last + [indices[i % len(indices)] for i in range(batch_size - len(last))]
    return batches


class VideoBatchSampler(_ShardedBatchSampler):
    """Fixed-size batches for `VideoTextDataset`, with the same seeding, sharding and state as
    `BucketBatchSampler`.

    Args:
        dataset: a `VideoTextDataset` (anything with __len__).
        batch_size: samples per batch per rank.
        num_replicas, rank: data-parallel world size and this rank (default: paddle.distributed).
        shuffle: shuffle rows with a generator seeded by (seed, epoch); False keeps CSV order.
        seed: base seed, identical on every rank.
        drop_last: drop the last partial batch (and trailing batches so that every rank gets the
            same count); otherwise fill them by wrapping around.
        group_size: rows 0..g-1, g..2g-1, ... stay together in one batch: the shuffle permutes
            whole groups (e.g. 2 for the swapped pairs of `make_moving_mnist.py --swapped-pairs`).
            1 (default) shuffles single rows. batch_size must be a multiple of it and so must the
            dataset length.

    Yields:
        lists of `SampleKey(index, epoch, None, None, None)`.

    Raises:
        ValueError: batch_size or group_size is not a positive int, batch_size or the dataset
            length is not a multiple of group_size.
    """

    def __init__(self, dataset, batch_size, num_replicas=None, rank=None, shuffle=True, seed=0, drop_last=False,
                 group_size=1):
        if not (isinstance(batch_size, int) and batch_size >= 1):
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        if not (isinstance(group_size, int) and not isinstance(group_size, bool) and group_size >= 1):
            raise ValueError(f"group_size must be an int >= 1, got {group_size!r}")
        if batch_size % group_size:
            raise ValueError(f"batch_size {batch_size} must be a multiple of group_size {group_size}")
        if len(dataset) % group_size:
            raise ValueError(f"the dataset has {len(dataset)} rows, not a multiple of group_size {group_size}")
        self.batch_size = batch_size
        self.group_size = group_size
        super().__init__(dataset, num_replicas, rank, shuffle, seed, drop_last)

    def _global_batches(self, epoch):
        n, g = len(self.dataset), self.group_size
        groups = np.random.default_rng([self.seed, epoch]).permutation(n // g) if self.shuffle else np.arange(n // g)
        order = (groups[:, None] * g + np.arange(g)[None, :]).reshape(-1)
        keys = [SampleKey(int(i), epoch, None, None, None) for i in order]
        return _split_into_batches(keys, self.batch_size, self.drop_last)


class BucketBatchSampler(_ShardedBatchSampler):
    """Batches of one bucket each for `VariableVideoTextDataset` (Open-Sora v1.1 semantics).

    Per epoch: every row is assigned to a bucket (`Bucket.assign`, keep-probability draws from a
    generator seeded by (seed, epoch), one row of draws per dataset row, so a row's draw does not
    depend on the others); rows kept nowhere or unreadable are left out. Each bucket's rows are
    shuffled and cut into batches of the bucket's batch size (a partial last batch is filled from
    the bucket's start, or dropped with drop_last); the order of all batches is then shuffled.

    Args:
        dataset: a `VariableVideoTextDataset` (needs __len__, get_data_info(i), frame_interval).
        bucket: a `Bucket`.
        num_replicas, rank: data-parallel world size and this rank (default: paddle.distributed).
        shuffle: shuffle rows within buckets and the order of batches.
        seed: base seed, identical on every rank.
        drop_last: drop partial batches (and trailing batches so every rank gets the same count).

    Yields:
        lists of `SampleKey(index, epoch, num_frames, height, width)`, all of one bucket.
    """

    def __init__(self, dataset, bucket, num_replicas=None, rank=None, shuffle=True, seed=0, drop_last=False):
        self.bucket = bucket
        self._infos = None
        super().__init__(dataset, num_replicas, rank, shuffle, seed, drop_last)

    def data_infos(self):
        """int64 [N, 3] of (num_frames, height, width) per row, -1 for unreadable rows (cached)."""
        if self._infos is None:
            infos = np.full((len(self.dataset), 3), -1, dtype=np.int64)
            for i in range(len(self.dataset)):
                info = self.dataset.get_data_info(i)
                if info is not None:
                    infos[i] = info
            self._infos = infos
        return self._infos

    def assign_buckets(self, epoch):
        """{BucketId: [row indices]} for an epoch, buckets in `bucket.bucket_ids` order."""
        infos = self.data_infos()
        draws = np.random.default_rng([self.seed, epoch, 0]).random((len(infos), len(self.bucket.resolutions)))
        interval = self.dataset.frame_interval
        groups = {}
        for i, (t, h, w) in enumerate(infos.tolist()):
            bucket_id = self.bucket.assign(t, h, w, interval, draws[i])
            if bucket_id is not None:
                groups.setdefault(bucket_id, []).append(i)
        return {b: groups[b] for b in self.bucket.bucket_ids if b in groups}

    def _global_batches(self, epoch):
        groups = self.assign_buckets(epoch)
        rng = np.random.default_rng([self.seed, epoch, 1])
        batches = []
        for bucket_id, rows in groups.items():
            if self.shuffle:
                rows = [rows[j] for j in rng.permutation(len(rows))]
            t, h, w = self.bucket.target(bucket_id)
            keys = [SampleKey(i, epoch, t, h, w) for i in rows]
            batches.extend(_split_into_batches(keys, self.bucket.batch_size(bucket_id), self.drop_last))
        if self.shuffle:
            batches = [batches[j] for j in rng.permutation(len(batches))]
        return batches

    def bucket_report(self):
        """Rows per bucket and batch count for the current epoch, one line per bucket."""
        groups = self.assign_buckets(self.epoch)
        kept = sum(len(v) for v in groups.values())
        lines = [f"epoch {self.epoch}: {kept} of {len(self.dataset)} rows in {len(groups)} buckets, "
                 f"{len(self)} batches per rank"]
        counts = Counter({b: len(v) for b, v in groups.items()})
        for b, n in counts.most_common():
            lines.append(f"  {b.resolution} x {b.num_frames} frames, ar {b.aspect_ratio} "
                         f"{self.bucket.target(b)[1:]}: {n} rows")
        return "\n".join(lines)
