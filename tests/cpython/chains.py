"""The exception chains CPython gives for the shapes tests/errors.rs checks.

Run by `tests/errors.rs` (`python3 tests/cpython/chains.py`); prints one line
per scenario: `name: link | link | ...`, newest first, where a link is an
exception followed by its explicit causes (`raise New from exc`), joined by
` <- `. A link is what the crate's `Error` holds; its causes are what the
link's `source()` chain holds.
"""
import asyncio
from contextlib import AsyncExitStack


class E(Exception):
    pass


def links(exc):
    out = []
    while exc is not None:
        causes = [str(exc)]
        c = exc
        # `raise New from pending`: the pending error is New's cause, and
        # also its context; it is part of this link, not a link of its own.
        while c.__cause__ is not None and c.__cause__ is c.__context__:
            c = c.__cause__
            causes.append(str(c))
        out.append(" <- ".join(causes))
        exc = c.__context__
    return " | ".join(out)


def raising(msg):
    async def cb():
        raise E(msg)
    return cb


def chaining(msg):
    """An exit that raises a new error from the pending one."""
    async def exit_(typ, exc, tb):
        if exc is not None:
            raise E(msg) from exc
        return False
    return exit_


def reraising():
    """An exit that hands back the pending error it was given."""
    async def exit_(typ, exc, tb):
        if exc is not None:
            raise exc
        return False
    return exit_


async def nested_two():
    async def inner():
        async with AsyncExitStack() as s:
            s.push_async_callback(raising("inner callback"))
            raise E("inner body")

    async with AsyncExitStack() as s:
        s.push_async_callback(raising("outer callback"))
        await inner()


async def nested_three():
    async def level3():
        async with AsyncExitStack() as s:
            s.push_async_exit(chaining("level3 exit"))
            raise E("level3 body")

    async def level2():
        async with AsyncExitStack() as s:
            s.push_async_callback(raising("level2 callback"))
            s.push_async_exit(reraising())
            await level3()

    async with AsyncExitStack() as s:
        s.push_async_exit(chaining("level1 exit"))
        s.push_async_callback(raising("level1 callback"))
        await level2()


async def bpo_20317():
    async with AsyncExitStack() as s:
        for n in (4, 3, 2):
            s.push_async_exit(chaining(f"exc {n}"))
        raise E("exc 1")


async def stack_in_stack():
    async with AsyncExitStack() as outer:
        outer.push_async_callback(raising("outer callback"))
        inner = AsyncExitStack()
        inner.push_async_callback(raising("inner callback 1"))
        inner.push_async_exit(chaining("inner exit"))
        inner.push_async_callback(raising("inner callback 2"))
        await outer.enter_async_context(inner)
        outer.push_async_exit(chaining("outer exit"))
        raise E("body")


async def main():
    scenarios = [
        ("nested_two", nested_two),
        ("nested_three", nested_three),
        ("bpo_20317", bpo_20317),
        ("stack_in_stack", stack_in_stack),
    ]
    for name, scenario in scenarios:
        try:
            await scenario()
        except E as exc:
            print(f"{name}: {links(exc)}")


asyncio.run(main())
