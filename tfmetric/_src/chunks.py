"""Running a compiled kernel over chunks of queries on every CPU core.

The metrics' and the index's kernels (`tfmetric._src.compile`) process one
fixed-size chunk of queries per call. XLA runs the fused loops of one call on
one thread on the CPU (only large matrix products use more), so consecutive
chunks are run by a small pool of threads instead: a compiled call releases
Python's global lock while it runs, and the chunks are independent. Results
come back in chunk order; memory is bounded by `workers` chunks in flight.
"""

import concurrent.futures
import os

# At most this many chunks in flight (and threads).
MAX_WORKERS = 4


def workers():
    """Number of chunks run at once: the usable CPU cores, at most `MAX_WORKERS`."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(MAX_WORKERS, cores))


def chunk_bounds(total, size):
    """`[(begin, stop), ...]` covering `range(total)` in steps of `size`."""
    return [(begin, min(begin + size, total)) for begin in range(0, total, size)]


def map_chunks(work, total, size, max_workers=None):
    """`[work(begin, stop) for each chunk]`, chunks run concurrently, in order.

    Args:
        work: Called as `work(begin, stop)` for every chunk `[begin, stop)` of
            `range(total)`; must be thread-safe (compiled kernels are).
        total: Number of items (queries).
        size: Chunk size (> 0).
        max_workers: Threads; `None` for `workers()`. `1` runs in this thread.

    Returns:
        The list of the results, in chunk order. The first exception raised by
        a chunk is re-raised (the chunks not yet started are cancelled).
    """
    bounds = chunk_bounds(total, size)
    count = min(len(bounds), max_workers or workers())
    if count <= 1:
        return [work(begin, stop) for begin, stop in bounds]
    with concurrent.futures.ThreadPoolExecutor(count, thread_name_prefix="tfmetric") as pool:
        futures = [pool.submit(work, begin, stop) for begin, stop in bounds]
        try:
            return [future.result() for future in futures]
        except BaseException:
            for future in futures:
                future.cancel()
            raise
