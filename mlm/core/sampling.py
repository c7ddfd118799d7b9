"""Data order, ours and not accelerate's: one seeded permutation per epoch cut into global batches, rank r
taking slice r (so 1 x 2B and 2 x B see the same examples at every step, and a checkpoint's data position is
(epoch, batch index)); the endless micro-batch stream; contiguous shards for evaluation."""
from __future__ import annotations

import math
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset


class ShardedBatchSampler:
    """This rank's share of each global batch, from one seeded permutation per epoch.

    With `lengths`, examples of similar length are grouped (within windows of 50 global batches) so that
    dynamic padding wastes little, and the order of the global batches is then shuffled.
    """

    def __init__(self, num_examples, per_device_batch, rank=0, world=1, seed=0, shuffle=True, lengths=None):
        self.n, self.per_device, self.rank, self.world = num_examples, per_device_batch, rank, world
        self.seed, self.shuffle = seed, shuffle
        self.lengths = None if lengths is None else np.asarray(lengths)

    @property
    def global_batch(self) -> int:
        return self.per_device * self.world

    def global_batches(self, epoch: int) -> list[np.ndarray]:
        order = np.arange(self.n)
        rng = np.random.default_rng([self.seed, epoch])
        if self.shuffle:
            order = rng.permutation(self.n)
        if self.lengths is not None:
            window = self.global_batch * 50
            chunks = [order[i : i + window] for i in range(0, self.n, window)]
            order = np.concatenate([c[np.argsort(-self.lengths[c], kind="stable")] for c in chunks])
        batches = [order[i : i + self.global_batch] for i in range(0, self.n, self.global_batch)]
        if len(batches[-1]) < self.world:  # a rank would get nothing: drop the scrap
            batches.pop()
        if self.lengths is not None and self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return batches

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """This rank's slice of every global batch of the epoch (a short last batch is split evenly)."""
        out = []
        for batch in self.global_batches(epoch):
            if len(batch) == self.global_batch:
                part = batch[self.rank * self.per_device : (self.rank + 1) * self.per_device]
            else:
                part = np.array_split(batch, self.world)[self.rank]
            out.append(part.tolist())
        return out

    def __len__(self) -> int:
        full, rest = divmod(self.n, self.global_batch)
        return full + (1 if rest >= self.world else 0)


class KeyedDataset(Dataset):
    """Adds `example_id = epoch * len + index` to dict items: a key for per-example randomness (masks)."""

    def __init__(self, data, epoch: int):
        self.data, self.epoch = data, epoch

    def __len__(self):
        return len(self.data)

    def __getitem__(self, index):
        item = self.data[index]
        if isinstance(item, dict):
            item = {**item, "example_id": self.epoch * len(self.data) + index}
        return item


# Collating in workers while the GPU computes hides it; on CPUs the workers would take the cores the step uses.
GPU_LOADER_WORKERS = 2


def loader_settings(num_workers, device) -> dict:
    """DataLoader workers and pinned memory for the device: batches in page-locked memory move to a GPU with
    non_blocking=True while it computes (to_device); on CPUs neither pays."""
    on_gpu = device.type == "cuda"
    workers = (GPU_LOADER_WORKERS if on_gpu else 0) if num_workers is None else num_workers
    return {"num_workers": workers, "pin_memory": on_gpu}


def micro_batches(sampler, data, collate_fn, epoch: int, position: int, num_workers: int = 0,
                  pin_memory: bool = False):
    """Endless stream of (epoch, position after this batch, batch), starting at a data position."""
    while True:
        batches = sampler.epoch_batches(epoch)[position:]
        # Its own generator: a DataLoader draws a base seed, which must not consume the global RNG
        # (dropout) differently in a resumed run.
        generator = torch.Generator().manual_seed(sampler.seed + epoch)
        loader = DataLoader(KeyedDataset(data, epoch), batch_sampler=batches, collate_fn=collate_fn,
                            num_workers=num_workers, pin_memory=pin_memory, generator=generator)
        for batch in loader:
            position += 1
            yield epoch, position, batch
        epoch, position = epoch + 1, 0


def shard_range(n: int, rank: int, world: int) -> range:
    """Contiguous, near-equal shard of range(n) for evaluation (no padding, no duplicates)."""
    bounds = np.linspace(0, n, world + 1).round().astype(int)
    return range(bounds[rank], bounds[rank + 1])


def rank_batches(n: int, batch_size: int, rank: int, world: int) -> list[range]:
    """This rank's evaluation batches: its shard of range(n) cut into near-equal contiguous ranges.

    Every rank gets the same number of batches (shards differ by at most one item), some of them empty where a
    shard is shorter than the others' batch count (fewer items than ranks, batch size 1): under FSDP each forward
    is a collective, and a rank with one forward less would leave the others waiting forever. Run an empty one
    through `lockstep`.
    """
    shard = shard_range(n, rank, world)
    count = math.ceil(math.ceil(n / world) / batch_size)
    bounds = np.linspace(shard.start, shard.stop, count + 1).round().astype(int)
    return [range(a, b) for a, b in zip(bounds[:-1], bounds[1:])]


def lockstep(rows: range) -> tuple[range, bool]:
    """(rows to run, whether their results count): an empty batch runs item 0 and drops it, so that every rank
    takes part in every forward (the collectives of FSDP)."""
    return (rows, True) if len(rows) else (range(0, 1), False)


def eval_batches(data, collate_fn, batch_size: int, accelerator):
    """(batch on the device, whether it counts) for this rank's evaluation batches; gather results in rank order."""
    for rows in rank_batches(len(data), batch_size, accelerator.process_index, accelerator.num_processes):
        rows, counts = lockstep(rows)
        yield to_device(collate_fn([data[i] for i in rows]), accelerator.device), counts


def to_device(batch: dict, device) -> dict:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
