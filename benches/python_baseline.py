"""Python's contextlib.AsyncExitStack doing the work of benches/stack.rs.

Prints JSON: {"callbacks": {n: ns_per_entry}, "resources": {n: ns_per_entry}}
for n in 1, 10, 100, 1000: register n entries, then `await stack.aclose()`.
Each figure is the best of 5 timed batches (the least disturbed by a noisy
machine), the same statistic for every size.

Run directly (`python3 benches/python_baseline.py`) or through
`python3 benches/compare.py`, which prints it beside the Rust figures.
"""

import asyncio
import json
import sys
import time
from contextlib import AsyncExitStack

SIZES = (1, 10, 100, 1000)


async def cleanup(i):
    return None


class Resource:
    """An async context manager whose exit does as little as the Rust one."""

    __slots__ = ("i",)

    def __init__(self, i):
        self.i = i

    async def __aenter__(self):
        return self

    async def __aexit__(self, exc_type, exc, tb):
        return False


async def callbacks(n):
    stack = AsyncExitStack()
    for i in range(n):
        stack.push_async_callback(cleanup, i)
    await stack.aclose()


async def resources(n):
    stack = AsyncExitStack()
    for i in range(n):
        await stack.enter_async_context(Resource(i))
    await stack.aclose()


async def measure(work, n):
    # Size each batch to about 50 ms, then keep the best of 5 batches.
    rounds = 1
    while True:
        start = time.perf_counter_ns()
        for _ in range(rounds):
            await work(n)
        elapsed = time.perf_counter_ns() - start
        if elapsed > 50_000_000:
            break
        rounds *= 2
    best = elapsed
    for _ in range(4):
        start = time.perf_counter_ns()
        for _ in range(rounds):
            await work(n)
        best = min(best, time.perf_counter_ns() - start)
    return best / (rounds * n)


async def main():
    out = {"python": sys.version.split()[0], "callbacks": {}, "resources": {}}
    for n in SIZES:
        out["callbacks"][n] = await measure(callbacks, n)
        out["resources"][n] = await measure(resources, n)
    print(json.dumps(out))


if __name__ == "__main__":
    asyncio.run(main())
