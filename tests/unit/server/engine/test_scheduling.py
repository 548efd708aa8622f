"""Scheduler, request objects and detokenizer without a model (these modules import no torch)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from qadapter.adapters.identity import AdapterId
from qadapter.core.errors import Overloaded
from qadapter.core.settings import Settings
from qadapter.server.engine.detokenize import TextTracker
from qadapter.server.engine.request import GenerationRequest, Sequence
from qadapter.server.engine.scheduler import Scheduler
from qadapter.server.engine.stats import by_adapter_name


def seq(request_id: str, num_prompt_tokens: int = 4, adapter: str | None = None) -> Sequence:
    request = GenerationRequest(request_id, tuple(range(num_prompt_tokens)), adapter)
    key = None if adapter is None else AdapterId(adapter, 1, 0).key
    return Sequence(request, knobs=None, tracker=TextTracker(_chars, stop=()), adapter_key=key)


def test_these_modules_import_no_torch() -> None:
    code = (
        "import sys, qadapter.server.engine.scheduler, qadapter.server.engine.request, qadapter.server.engine.detokenize; "
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_admits_in_arrival_order_up_to_max_running() -> None:
    scheduler = Scheduler(Settings(max_running=2, max_waiting=10))
    for name in "abc":
        scheduler.add(seq(name), retry_after_s=1)
    batch = scheduler.schedule()
    assert [s.request_id for s in batch.prefill] == ["a", "b"]
    assert batch.decode == []
    again = scheduler.schedule()
    assert again.prefill == [] and [s.request_id for s in again.decode] == ["a", "b"]
    scheduler.finish([batch.prefill[0]])
    assert [s.request_id for s in scheduler.schedule().prefill] == ["c"]
    assert (scheduler.num_running, scheduler.num_waiting) == (2, 0)


def test_prefill_budget_limits_a_step_but_never_starves_a_long_prompt() -> None:
    scheduler = Scheduler(Settings(max_prefill_tokens=10))
    scheduler.add(seq("long", 50), retry_after_s=1)
    scheduler.add(seq("short", 3), retry_after_s=1)
    assert [s.request_id for s in scheduler.schedule().prefill] == ["long"]
    assert [s.request_id for s in scheduler.schedule().prefill] == ["short"]


def test_full_waiting_queue_raises_overloaded_with_a_hint() -> None:
    scheduler = Scheduler(Settings(max_waiting=1))
    scheduler.add(seq("a"), retry_after_s=2.5)
    with pytest.raises(Overloaded) as caught:
        scheduler.add(seq("b"), retry_after_s=2.5)
    assert caught.value.retry_after_s == 2.5
    assert scheduler.num_waiting == 1


def test_abort_removes_a_waiting_request_and_marks_a_running_one() -> None:
    scheduler = Scheduler(Settings(max_running=1))
    scheduler.add(seq("run"), retry_after_s=1)
    scheduler.add(seq("wait"), retry_after_s=1)
    (running,) = scheduler.schedule().prefill
    waiting = scheduler.abort("wait")
    assert waiting is not None and waiting.is_aborted and scheduler.num_waiting == 0
    assert scheduler.abort("run") is None and running.is_aborted
    assert scheduler.abort("unknown") is None


def test_counts_running_requests_per_adapter() -> None:
    scheduler = Scheduler(Settings())
    for i, adapter in enumerate(["x", "x", None, "y"]):
        scheduler.add(seq(str(i), adapter=adapter), retry_after_s=1)
    scheduler.schedule()
    assert by_adapter_name(scheduler.running_per_adapter()) == {"x": 2, None: 1, "y": 1}
    assert seq("q", adapter="x").num_rows == 2 and seq("b").num_rows == 1


def _chars(ids: list[int]) -> str:
    return "".join(map(chr, ids))


def test_text_deltas_add_up_to_the_text() -> None:
    tracker = TextTracker(_chars, stop=())
    ids = [ord(c) for c in "hello"]
    assert [tracker.update(ids[: n + 1])[0] for n in range(5)] == list("hello")


def test_a_stop_string_across_tokens_ends_the_text_before_it() -> None:
    tracker = TextTracker(_chars, stop=("END",))
    text, out = "abcEN", []
    for n in range(1, len(text) + 1):
        out.append(tracker.update([ord(c) for c in text[:n]]))
    assert "".join(delta for delta, _ in out) == "abc"  # "EN" is held back: it may become "END"
    delta, stopped = tracker.update([ord(c) for c in "abcENDxyz"])
    assert (delta, stopped) == ("", True)


def test_a_held_back_prefix_is_released_when_it_is_not_a_stop() -> None:
    tracker = TextTracker(_chars, stop=("END",))
    assert tracker.update([ord(c) for c in "abE"]) == ("ab", False)
    assert tracker.update([ord(c) for c in "abEx"]) == ("Ex", False)
    assert tracker.update([ord(c) for c in "abExE"]) == ("", False)
    assert tracker.flush([ord(c) for c in "abExE"]) == "E"


def test_half_a_character_is_not_emitted() -> None:
    tracker = TextTracker(lambda ids: "ok\ufffd" if len(ids) == 1 else "ok€", stop=())
    assert tracker.update([1]) == ("", False)
    assert tracker.update([1, 2]) == ("ok€", False)


def test_prefill_budget_counts_both_rows_of_a_q_adapter_request() -> None:
    scheduler = Scheduler(Settings(max_prefill_tokens=20))
    scheduler.add(seq("base", 8), retry_after_s=1)
    scheduler.add(seq("q", 8, adapter="x"), retry_after_s=1)  # 16 row-tokens: over the 12 left
    assert [s.request_id for s in scheduler.schedule().prefill] == ["base"]
    assert [s.request_id for s in scheduler.schedule().prefill] == ["q"]
