"""Read ahead in a thread: the next block is read and scanned while COPY sends this one.

Reading, decompressing and checking lines is Python's share of an import; running it one block
ahead in the default executor lets it overlap PostgreSQL's share instead of alternating with it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class ReadAhead(Generic[T]):
    """Calls `produce` in a thread, one call ahead of the consumer, until it says it is done.

    `produce()` returns `(item, done)`. It is never called again after `done`, nor after it raised.
    """

    def __init__(self, produce: Callable[[], tuple[T, bool]]) -> None:
        self._produce = produce
        self._loop = asyncio.get_running_loop()
        self._pending: asyncio.Future[tuple[T, bool]] | None = self._loop.run_in_executor(
            None, produce
        )

    @property
    def done(self) -> bool:
        """True once the last item was taken (or producing one failed)."""
        return self._pending is None

    async def next(self) -> T:
        """The next item; the call after it starts at once in the thread."""
        if self._pending is None:
            raise RuntimeError("read past the end")
        pending, self._pending = self._pending, None
        item, done = await pending
        if not done:
            self._pending = self._loop.run_in_executor(None, self._produce)
        return item

    async def close(self) -> None:
        """Wait until the thread is no longer producing (before what it reads is closed)."""
        if self._pending is not None:
            await asyncio.wait([self._pending])
            self._pending = None
