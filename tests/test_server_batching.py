"""QueryBatcher: questions from many threads answered in batches by group, fairly, with errors kept per batch."""

from __future__ import annotations

import threading
import time

import pytest
from lychee_memory.integrations.server.batching import QueryBatcher


class Recorder:
    """A batch function that records each batch and answers ``question.upper()`` after ``seconds``."""

    def __init__(self, seconds: float = 0.0, fail_on: str | None = None):
        self.batches: list[tuple[object, list[str]]] = []
        self.seconds = seconds
        self.fail_on = fail_on
        self.guard = threading.Lock()

    def __call__(self, key, questions):
        with self.guard:
            self.batches.append((key, list(questions)))
        time.sleep(self.seconds)
        if self.fail_on in questions:
            raise RuntimeError(f"cannot answer {self.fail_on}")
        return [question.upper() for question in questions]


def test_questions_arriving_within_the_window_share_one_batch_per_key():
    recorder = Recorder()
    batcher = QueryBatcher(recorder, window=0.2, max_batch=16)
    futures = [batcher.submit("a", f"q{n}") for n in range(5)] + [batcher.submit("b", "other")]
    assert [future.result(5) for future in futures] == ["Q0", "Q1", "Q2", "Q3", "Q4", "OTHER"]
    assert sorted(recorder.batches) == [("a", ["q0", "q1", "q2", "q3", "q4"]), ("b", ["other"])]
    batcher.stop()


def test_a_full_batch_goes_at_once_and_the_rest_waits_for_the_next():
    recorder = Recorder()
    batcher = QueryBatcher(recorder, window=5.0, max_batch=3)  # a window no test would wait out
    started = time.monotonic()
    futures = [batcher.submit("a", f"q{n}") for n in range(3)]
    assert [future.result(2) for future in futures] == ["Q0", "Q1", "Q2"]
    assert time.monotonic() - started < 2, "a full batch does not wait for the window"
    later = batcher.submit("a", "q3")
    batcher.stop()  # stopping answers what is queued at once
    assert later.result(2) == "Q3"
    assert [questions for _, questions in recorder.batches] == [["q0", "q1", "q2"], ["q3"]]


def test_questions_arriving_during_a_batch_form_the_next_one():
    recorder = Recorder(seconds=0.3)
    batcher = QueryBatcher(recorder, window=0.0, max_batch=16)
    first = batcher.submit("a", "first")
    time.sleep(0.1)  # the first batch is running
    rest = [batcher.submit("a", f"q{n}") for n in range(4)]
    assert first.result(5) == "FIRST" and [f.result(5) for f in rest] == ["Q0", "Q1", "Q2", "Q3"]
    assert [questions for _, questions in recorder.batches] == [["first"], ["q0", "q1", "q2", "q3"]]
    batcher.stop()


def test_callers_answered_together_come_back_into_one_batch():
    """Closed-loop callers ask again 0-30 ms after their answer, longer than the 5 ms window: the settle time
    after a batch (a tenth of it, here 100 ms) gathers them again."""
    recorder = Recorder(seconds=1.0)
    batcher = QueryBatcher(recorder, window=0.005, max_batch=16, max_settle=0.1)
    together = threading.Barrier(4)

    def caller(number: int) -> None:
        together.wait()
        for round_ in range(3):
            batcher.submit("a", f"c{number}r{round_}").result(10)
            time.sleep(0.01 * number)  # reading the answer takes each caller a different time

    threads = [threading.Thread(target=caller, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    sizes = [len(questions) for _, questions in recorder.batches]
    assert sizes == [4, 4, 4], f"every round's four questions share a batch: {sizes}"
    batcher.stop()


def test_a_failed_batch_fails_its_callers_only():
    recorder = Recorder(fail_on="bad")
    batcher = QueryBatcher(recorder, window=0.1)
    bad = [batcher.submit("a", "bad"), batcher.submit("a", "fine")]
    other = batcher.submit("b", "elsewhere")
    for future in bad:
        with pytest.raises(RuntimeError, match="cannot answer bad"):
            future.result(5)
    assert other.result(5) == "ELSEWHERE"
    assert batcher.submit("a", "again").result(5) == "AGAIN", "the dispatcher survives a failed batch"
    batcher.stop()


def test_after_stop_no_question_is_taken():
    batcher = QueryBatcher(Recorder())
    batcher.stop()
    with pytest.raises(RuntimeError, match="shutting down"):
        batcher.submit("a", "late")
    with pytest.raises(ValueError):
        QueryBatcher(Recorder(), window=-1)
