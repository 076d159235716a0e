"""Questions from many callers answered together: one batched scan (``ask_many``) per bank view.

A question waits at most ``window`` seconds for others on the same banks and filter; the batch is answered by
one ``ask_many`` call in the dispatcher thread. While a batch runs, new questions gather for the next, so
under load batches grow by themselves and an idle server adds only the window to a lone question.
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

    def __init__(self, answer: BatchFunction, window: float = 0.005, max_batch: int = 16):
        if window < 0 or max_batch < 1:
            raise ValueError("the batching window must be >= 0 seconds and the batch size >= 1")
        self.answer = answer
        self.window = window
        self.max_batch = max_batch
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
            deadline = self._groups[key][0].arrived + self.window
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
            try:
                results = self.answer(key, [waiting.question for waiting in live])
            except BaseException as error:  # the whole batch failed: each caller gets the error
                for waiting in live:
                    waiting.future.set_exception(error)
                continue
            for waiting, result in zip(live, results):
                waiting.future.set_result(result)

    def stop(self, timeout: float = 30.0) -> None:
        """Answer what is queued, then stop."""
        with self._condition:
            self._stopping = True
            self._condition.notify_all()
        self._thread.join(timeout)
