"""The request spool's protocol (scheduler/requests.py) without processes: a request is
answered or withdrawn, never both and never neither, however the two sides interleave.
The interleavings are forced with events, not sleeps."""

from __future__ import annotations

import threading
from pathlib import Path

from perl_cli.scheduler import requests

SUITE = "t"
WAIT = 20.0


def cancel_handlers(seen: list, before_answer=None) -> requests.Handlers:
    def cancel(patterns: list[str]) -> list[requests.Result]:
        seen.append(patterns)
        if before_answer is not None:
            before_answer()
        return [requests.Result(p, requests.CANCELLED, "it was queued and had not started") for p in patterns]
    return requests.Handlers(add=lambda exps: [], cancel=cancel)


def ask(tmp: Path, alive, timeout_s: float = WAIT) -> tuple[threading.Thread, list, str]:
    rid = requests.submit(tmp, requests.CANCEL, {"suite": SUITE, "patterns": ["a"]}, to=None)
    box: list = []
    thread = threading.Thread(target=lambda: box.append(requests.await_reply(tmp, rid, alive=alive, timeout_s=timeout_s)),
                              daemon=True)
    thread.start()
    return thread, box, rid


def test_a_request_taken_by_the_run_is_answered(tmp_path: Path) -> None:
    seen: list = []
    thread, box, rid = ask(tmp_path, alive=lambda: True)
    assert [r.id for r in requests.serve(tmp_path, SUITE, cancel_handlers(seen))] == [rid]
    thread.join(WAIT)
    assert seen == [["a"]]
    reply = box[0]
    assert reply.exit_code == 0 and [(r.name, r.outcome) for r in reply.results] == [("a", requests.CANCELLED)]
    assert list(requests.spool_dir(tmp_path).iterdir()) == []  # the requester removed its reply


def test_a_request_withdrawn_before_the_run_takes_it_is_never_carried_out(tmp_path: Path) -> None:
    seen: list = []
    thread, box, _ = ask(tmp_path, alive=lambda: False)  # the run is gone: the requester withdraws at once
    thread.join(WAIT)
    assert box == [None]
    assert requests.serve(tmp_path, SUITE, cancel_handlers(seen)) == [] and seen == []


def test_a_request_the_run_took_as_its_requester_gave_up_is_still_answered(tmp_path: Path) -> None:
    """The race: the run renames the request to .taken just as the requester stops waiting.
    The requester's withdrawal then finds no request file and it waits for the reply."""
    gave_up, noticed = threading.Event(), threading.Event()

    def alive() -> bool:
        if gave_up.is_set():
            noticed.set()
            return False
        return True

    def while_answering() -> None:  # the run has taken the request; now the requester gives up
        gave_up.set()
        assert noticed.wait(WAIT)

    seen: list = []
    thread, box, rid = ask(tmp_path, alive=alive)
    server = threading.Thread(target=lambda: requests.serve(tmp_path, SUITE, cancel_handlers(seen, while_answering)),
                              daemon=True)
    server.start()
    server.join(WAIT)
    thread.join(WAIT)
    assert seen == [["a"]]
    assert box[0] is not None and box[0].results[0].outcome == requests.CANCELLED


def test_two_requests_written_at_once_are_two_files_and_both_answered(tmp_path: Path) -> None:
    barrier = threading.Barrier(2, timeout=WAIT)
    ids: list = []

    def submit(pattern: str) -> None:
        barrier.wait()
        ids.append(requests.submit(tmp_path, requests.CANCEL, {"suite": SUITE, "patterns": [pattern]}, to=None))

    threads = [threading.Thread(target=submit, args=(p,)) for p in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT)
    seen: list = []
    answered = requests.serve(tmp_path, SUITE, cancel_handlers(seen))
    assert sorted(r.id for r in answered) == sorted(ids) and len(set(ids)) == 2
    assert sorted(p for ps in seen for p in ps) == ["a", "b"]


def test_a_flood_is_served_a_few_per_tick_oldest_first(tmp_path: Path) -> None:
    ids = [requests.submit(tmp_path, requests.CANCEL, {"suite": SUITE, "patterns": [str(i)]}, to=None)
           for i in range(requests.SERVE_AT_MOST + 3)]
    seen: list = []
    first = requests.serve(tmp_path, SUITE, cancel_handlers(seen))
    assert [r.id for r in first] == ids[: requests.SERVE_AT_MOST]
    assert [r.id for r in requests.serve(tmp_path, SUITE, cancel_handlers(seen))] == ids[requests.SERVE_AT_MOST:]


def test_requests_for_another_suite_or_of_another_kind_are_answered_with_the_reason(tmp_path: Path) -> None:
    handlers = cancel_handlers([])
    assert "for suite 'other'" in requests.answer({"version": 1, "kind": "cancel", "suite": "other", "patterns": ["a"]},
                                                 "x", SUITE, tmp_path, handlers).error
    assert "unknown request kind" in requests.answer({"version": 1, "kind": "rm", "suite": SUITE}, "x", SUITE,
                                                     tmp_path, handlers).error
    assert "needs `patterns`" in requests.answer({"version": 1, "kind": "cancel", "suite": SUITE, "patterns": []}, "x",
                                                 SUITE, tmp_path, handlers).error
    reply = requests.answer({"version": 1, "kind": "add", "suite": SUITE, "overrides": ["training.max_steps=3"],
                             "experiments": []}, "x", SUITE, tmp_path, handlers)
    assert "the run runs with no --set" in reply.error and reply.exit_code == 2
