"""Questions from many callers answered together: one batched scan (``ask_many``) per bank view.

A question waits at most ``window`` seconds for others on the same banks and filter; the batch is answered by
one ``ask_many`` call in the dispatcher thread. While a batch runs, new questions gather for the next, so
under load batches grow by themselves and an idle server adds only the window to a lone question.

Callers that were just answered often ask again at once (an agent's next step, a load test's next question),
but each needs a few milliseconds to read its answer and send the next question; so right after a batch the
next one also waits up to ``settle`` (a tenth of the last batch's time, at most ``max_settle``) for them, or
the batch after a large one would start with whoever came back first.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Waiting:
    question: str
    arrived: float = field(default_factory=time.monotonic)
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)


# Answers a batch: (group key, questions) -> one result per question, or raises for the whole batch.
BatchFunction = Callable[[Hashable, list[str]], list[Any]]


class QueryBatcher:
    """Gathers questions by group key and hands each group to ``answer`` as one batch."""

    def __init__(self, answer: BatchFunction, window: float = 0.005, max_batch: int = 16, max_settle: float = 0.1):
        if window < 0 or max_batch < 1 or max_settle < 0:
            raise ValueError("the batching window and settle time must be >= 0 seconds and the batch size >= 1")
        self.answer = answer
        self.window = window
        self.max_batch = max_batch
        self.max_settle = max_settle
        self._last_end = float("-inf")  # when the last batch was answered, and how long it took
        self._last_seconds = 0.0
        self._groups: dict[Hashable, list[Waiting]] = {}
        self._condition = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="lychee-batcher", daemon=True)
        self._thread.start()

    def submit(self, key: Hashable, question: str) -> concurrent.futures.Future:
        """A future for the answer to ``question`` over the group ``key``."""
        waiting = Waiting(question)
        with self._condition:
            if self._stopping:
                raise RuntimeError("the server is shutting down")
            self._groups.setdefault(key, []).append(waiting)
            self._condition.notify()
        return waiting.future

    def _next_batch(self) -> tuple[Hashable, list[Waiting]] | None:
        with self._condition:
            while not self._groups and not self._stopping:
                self._condition.wait()
            if not self._groups:
                return None
            # The group whose oldest question has waited longest goes first (fair across banks).
            key = min(self._groups, key=lambda group: self._groups[group][0].arrived)
            settle = min(self.max_settle, 0.1 * self._last_seconds)
            deadline = max(self._groups[key][0].arrived + self.window, self._last_end + settle)
            while len(self._groups[key]) < self.max_batch and not self._stopping:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._condition.wait(left)
            members = self._groups[key]
            batch, rest = members[: self.max_batch], members[self.max_batch :]
            if rest:
                self._groups[key] = rest
            else:
                del self._groups[key]
            return key, batch

    def _run(self) -> None:
        while (item := self._next_batch()) is not None:
            key, batch = item
            live = [waiting for waiting in batch if waiting.future.set_running_or_notify_cancel()]
            if not live:
                continue
            started = time.monotonic()
            try:
                results = self.answer(key, [waiting.question for waiting in live])
            except BaseException as error:  # the whole batch failed: each caller gets the error
                for waiting in live:
                    waiting.future.set_exception(error)
                continue
            finally:
                self._last_end = time.monotonic()
                self._last_seconds = self._last_end - started
            for waiting, result in zip(live, results):
                waiting.future.set_result(result)

    def stop(self, timeout: float = 30.0) -> None:
        """Answer what is queued, then stop."""
        with self._condition:
            self._stopping = True
            self._condition.notify_all()
        self._thread.join(timeout)
