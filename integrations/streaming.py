"""Streaming answer text out of the engine: pieces trimmed like the final answer, sync or async.

The engine holds its lock one decoding step at a time, so a stream never blocks other callers while its
consumer handles a piece (or abandons the stream). One stream is always iterated on one thread: the
caller's (sync) or a dedicated worker thread that hands pieces to the event loop through an asyncio queue
(async), so a slow generation never blocks the loop.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import AsyncIterator, Iterable, Iterator


def trimmed(pieces: Iterable[str]) -> Iterator[str]:
    """The pieces without leading and trailing whitespace, so joined they equal the final answer text."""
    started = False
    pending = ""
    iterator = iter(pieces)
    try:
        for piece in iterator:
            if not started:
                piece = piece.lstrip()
                if not piece:
                    continue
                started = True
            body = piece.rstrip()
            if body:
                yield pending + body
                pending = piece[len(body) :]
            else:
                pending += piece
    finally:
        _close(iterator)


def _close(iterator: Iterator[str]) -> None:
    """Close a generator (runs its cleanup) on the thread that iterated it."""
    close = getattr(iterator, "close", None)
    if close is not None:
        close()


_PIECES_AHEAD = 4  # pieces a streaming worker may produce before the consumer takes them
_PIECE, _DONE, _FAILED = "piece", "done", "failed"


async def iterate_async(pieces: Iterable[str]) -> AsyncIterator[str]:
    """Iterate ``pieces`` in a worker thread and yield them on the event loop as they arrive.

    Leaving the loop early (``break``, cancellation) tells the worker to stop after its current piece; the
    worker never runs more than a few pieces ahead of the consumer, so it cannot race to the end unread.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[str, object]] = asyncio.Queue()
    stop = threading.Event()
    room = threading.Semaphore(_PIECES_AHEAD)

    def wait_for_room() -> bool:
        while not room.acquire(timeout=0.05):
            if stop.is_set():
                return False
        return not stop.is_set()

    def hand_over(kind: str, value: object) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, (kind, value))
        except RuntimeError:  # the loop closed while the worker was still generating
            stop.set()

    def produce() -> None:
        iterator = iter(pieces)
        try:
            for piece in iterator:
                if not wait_for_room():
                    break
                hand_over(_PIECE, piece)
        except BaseException as error:  # handed to the consumer, which raises it
            hand_over(_FAILED, error)
        else:
            hand_over(_DONE, None)
        finally:
            _close(iterator)

    context = contextvars.copy_context()
    worker = threading.Thread(target=context.run, args=(produce,), name="lychee-answer-stream", daemon=True)
    worker.start()
    try:
        while True:
            kind, value = await queue.get()
            if kind == _DONE:
                return
            if kind == _FAILED:
                assert isinstance(value, BaseException)
                raise value
            assert isinstance(value, str)
            room.release()
            yield value
    finally:
        stop.set()
