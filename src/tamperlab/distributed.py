"""Multi-process coordination under `accelerate launch` / torchrun: who writes, who waits, how work is shared.

One rule for the whole toolkit: every rank computes (training is DDP; generation and judging are sharded over the
ranks and gathered), and only the main process writes files. A rank that reads what the main process wrote does so
after a barrier. Every decision that changes which collective operations run next (a cache hit, a resumable stage)
is taken from state all ranks see identically: files written before the last barrier, or values broadcast from
rank 0.

Single-process runs (the default) pay nothing: every function here degrades to the obvious local behaviour, and
the process group is never created by tamperlab itself — the Trainer (through accelerate) creates it, or
`ensure_process_group` does when a launch needs collectives before the first Trainer exists.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def launched_world_size() -> int:
    """Processes the launcher started (torchrun/accelerate set WORLD_SIZE), whether or not the group exists yet."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def ensure_process_group() -> None:
    """Create the default process group of a multi-process launch (through accelerate's PartialState, which picks
    gloo on CPU and nccl on GPUs). A no-op for single-process runs and when the group exists."""
    if launched_world_size() <= 1:
        return
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return
    from accelerate import PartialState

    PartialState()


def _dist() -> Any:
    """torch.distributed when a process group with more than one rank exists, else None."""
    if launched_world_size() <= 1:
        return None
    ensure_process_group()
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return dist
    return None


def world_size() -> int:
    d = _dist()
    return d.get_world_size() if d else 1


def rank() -> int:
    d = _dist()
    return d.get_rank() if d else 0


def is_main_process() -> bool:
    """True on rank 0 (and in every single-process run). Decided from the launcher's environment, so it is right
    even before the process group exists."""
    return int(os.environ.get("RANK", "0")) == 0


def barrier() -> None:
    d = _dist()
    if d:
        d.barrier()


@contextmanager
def main_process_first() -> Iterator[None]:
    """The main process runs the body first (e.g. fills a cache); the others run it after it has finished."""
    if not is_main_process():
        barrier()
    try:
        yield
    finally:
        if is_main_process():
            barrier()


def broadcast(value: T) -> T:
    """Rank 0's value on every rank (any picklable object)."""
    d = _dist()
    if not d:
        return value
    box = [value]
    d.broadcast_object_list(box, src=0)
    return box[0]


def all_gather_objects(value: T) -> list[T]:
    d = _dist()
    if not d:
        return [value]
    out: list[Any] = [None] * d.get_world_size()
    d.all_gather_object(out, value)
    return out


def shard_and_gather(items: Sequence[T], fn: Callable[[list[T]], Sequence[R]]) -> list[R]:
    """`fn(items)` computed once in total: each rank applies fn to a contiguous shard (rank r takes the r-th
    block), and every rank receives the concatenated results in the original order. fn must return one result
    per item. Single process: exactly fn(items)."""
    d = _dist()
    items = list(items)
    if not d:
        return list(fn(items))
    n, w, r = len(items), d.get_world_size(), d.get_rank()
    bounds = [n * i // w for i in range(w + 1)]
    mine = items[bounds[r]:bounds[r + 1]]
    local = list(fn(mine)) if mine else []
    if len(local) != len(mine):
        raise RuntimeError(f"shard_and_gather: fn returned {len(local)} results for {len(mine)} items")
    parts = all_gather_objects(local)
    return [x for part in parts for x in part]


def all_reduce_sum(tensor: Any) -> Any:
    """In-place sum over ranks (a tensor); returns it."""
    d = _dist()
    if d:
        d.all_reduce(tensor)
    return tensor


def run_collectively(fn: Callable[[], T]) -> T:
    """Run fn on the main process; if it raises, every rank raises the same error instead of waiting forever at
    the next barrier. The other ranks get the main process's return value, and none returns before fn has
    finished on the main process: so it is also the way to "write on the main process, then let every rank read"."""
    error: BaseException | None = None
    value: Any = None
    if is_main_process():
        try:
            value = fn()
        except Exception as e:  # re-raised below, on every rank
            error = e
    error, value = broadcast((error, value))
    if error is not None:
        raise error
    return value
