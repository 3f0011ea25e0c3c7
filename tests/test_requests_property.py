"""Arbitrary request files fed to a run session (issue 22): nothing runs outside the suite,
nothing queued is lost, every request is answered and every answer is true.

A real run session (`RunSession`) whose local backend has a queue and a running job serves a spool
full of whatever Hypothesis writes: bytes, any JSON, hand-offs built from valid experiments
with hostile names, forged fingerprints, wrong settings or suites, cancel patterns.
"""

from __future__ import annotations

import copy
import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as hs
from test_scheduler import SUITE, write_config

from perl_cli import config, state
from perl_cli.names import name_problem
from perl_cli.scheduler import requests
from perl_cli.scheduler.jobs import RunOptions
from perl_cli.scheduler.progress import make_reporter
from perl_cli.scheduler.session import RunSession

HOSTILE_NAMES = ["../escaped", "../other-suite/x", "/abs", "a/b", ".hidden", "-flag", "..", "x.old-1", "", "a" * 300,
                 "lora_s1", "dora_s2", "new_one", "ünï", "nul\0byte"]


@pytest.fixture(scope="module")
def cfg(tmp_path_factory: pytest.TempPathFactory) -> config.ConfigFile:
    root = tmp_path_factory.mktemp("cfg")
    return config.load(write_config(root, methods=("lora", "dora", "vera"), seeds=(1, 2)))


json_values = hs.recursive(
    hs.none() | hs.booleans() | hs.integers() | hs.floats(allow_nan=False) | hs.text(max_size=20),
    lambda children: hs.lists(children, max_size=4) | hs.dictionaries(hs.text(max_size=10), children, max_size=4),
    max_leaves=12,
)


@hs.composite
def hand_off_entry(draw, valid: list[dict]) -> dict:
    entry = copy.deepcopy(draw(hs.sampled_from(valid)))
    mutation = draw(hs.sampled_from(["none", "none", "none", "name", "name", "fingerprint", "setting", "suite", "section", "drop"]))
    if mutation == "name":
        entry["name"] = draw(hs.sampled_from(HOSTILE_NAMES) | hs.text(max_size=30))
    elif mutation == "fingerprint":
        entry["fingerprint"] = draw(hs.text(max_size=12) | hs.none())
    elif mutation == "setting":
        section = draw(hs.sampled_from(["training", "peft", "model", "dataset"]))
        key = draw(hs.sampled_from(sorted(entry[section])))
        entry[section][key] = draw(json_values)
    elif mutation == "suite":
        entry["suite"] = draw(hs.sampled_from(["other-suite", "", None, "../t"]))
    elif mutation == "section":
        entry[draw(hs.text(min_size=1, max_size=8))] = draw(json_values)
    elif mutation == "drop":
        entry.pop(draw(hs.sampled_from(sorted(entry))))
    return entry


@hs.composite
def request_file(draw, valid: list[dict]) -> bytes:
    kind = draw(hs.sampled_from(["bytes", "json", "add", "add", "add", "add", "cancel", "cancel"]))
    if kind == "bytes":
        return draw(hs.binary(max_size=200))
    if kind == "json":
        return json.dumps(draw(json_values)).encode()
    body = {"version": draw(hs.sampled_from([1] * 6 + [2, None])), "suite": draw(hs.sampled_from([SUITE] * 6 + ["x"]))}
    if kind == "add":
        body.update(kind="add", overrides=draw(hs.sampled_from([[]] * 6 + [["training.max_steps=3"]])),
                    experiments=draw(hs.lists(hand_off_entry(valid), max_size=4)))
    else:
        body.update(kind="cancel", patterns=draw(hs.lists(
            hs.sampled_from(["lora_s1", "lora_*", "*", "dora_s2", "nosuch", "vera_s1", "../x"]) | hs.text(max_size=10),
            max_size=4)))
    return json.dumps(body).encode()


def session(cfg: config.ConfigFile, root: Path) -> RunSession:
    """A run session mid-run: lora_s1 and lora_s2 queued, vera_s1 running (stopping)."""
    whole = config.expand(cfg, SUITE)
    opts = RunOptions(suite=SUITE, experiments=[e for e in whole if e.name in ("lora_s1", "lora_s2", "vera_s1")],
                      suite_experiments=whole, output=root / "out", config_file=cfg, tty=False, environ={})
    runner = RunSession(opts)
    runner.reporter = make_reporter(3, tty=False)
    jobs, refusals = runner.planner.classify({})
    assert not refusals
    for job in jobs:
        if job.name == "vera_s1":
            job.stop_sent = True
            runner.backend.running[job.name] = job
        else:
            runner.backend.queue.append(job)
    runner.run_names = [j.name for j in jobs]
    runner.run_experiments = {j.name: j.exp for j in jobs}
    runner.suite_dir.mkdir(parents=True)
    return runner


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(data=hs.data())
def test_arbitrary_request_files_never_run_outside_the_suite_nor_lose_the_queue(cfg: config.ConfigFile, data) -> None:
    valid = [e.resolved() for e in config.expand(cfg, SUITE)]
    files = data.draw(hs.lists(request_file(valid), min_size=1, max_size=4))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        runner = session(cfg, root)
        spool = requests.spool_dir(runner.suite_dir)
        spool.mkdir()
        ids = [f"{i:03d}-req" for i in range(len(files))]
        for rid, content in zip(ids, files, strict=True):
            (spool / f"{rid}{requests.REQUEST_SUFFIX}").write_bytes(content)
        runner.backend.serve_requests()

        # Every request answered, none left behind.
        assert sorted(p.name for p in spool.iterdir()) == [f"{rid}{requests.REPLY_SUFFIX}" for rid in ids]
        replies = [json.loads((spool / f"{rid}{requests.REPLY_SUFFIX}").read_text()) for rid in ids]
        results = [r for reply in replies for r in reply["results"]]
        # Nothing queued is lost: still queued, or its cancellation is in an answer.
        cancelled = {r["name"] for r in results if r["outcome"] == requests.CANCELLED}
        queued = [j.name for j in runner.backend.queue]
        for name in ("lora_s1", "lora_s2"):
            assert name in queued or name in cancelled
        assert "vera_s1" in runner.backend.running
        # Nothing outside the suite: every job's directory is a child of the suite directory,
        # its name a valid one, its fingerprint that of its settings.
        for job in [*runner.backend.queue, *runner.backend.running.values()]:
            assert name_problem(job.name) is None
            assert job.dir.parent == runner.suite_dir and job.exp.suite == SUITE
            assert job.exp.fingerprint == config.fingerprint(job.exp.config)
        assert sorted(p.name for p in root.iterdir()) == ["out"]
        assert sorted(p.name for p in (root / "out").iterdir()) == [SUITE]
        assert {p.name for p in runner.suite_dir.iterdir()} <= {requests.SPOOL_DIR}  # serving runs nothing
        # The answers are true, in the order they were given (requests are served oldest first,
        # and the ids sort so): a name is in the queue, exactly once, when its last answer said
        # queued (or already queued), and not at all when its last answer said cancelled. Only a
        # LATER cancel excuses a `queued` answer, so a hand-off dropped after an earlier cancel of
        # the same name (add, cancel, add) still fails here.
        said_queued = [r["name"] for r in results if r["outcome"] == requests.QUEUED]
        in_queue = {"lora_s1": True, "lora_s2": True}  # the session's queue before serving
        for reply in replies:
            for r in reply["results"]:
                if r["outcome"] in (requests.QUEUED, requests.WAITING):
                    in_queue[r["name"]] = True
                elif r["outcome"] == requests.CANCELLED:
                    in_queue[r["name"]] = False
        assert sorted(queued) == sorted(name for name, there in in_queue.items() if there), (in_queue, queued)
        event(f"queued by a request: {bool(said_queued)}; cancelled: {bool(cancelled)}; "
              f"refused: {any(r['outcome'] == requests.REFUSED for r in results)}")
        assert all(state.read_status(runner.suite_dir / n) is None for n in queued)


def test_a_hand_off_then_a_cancel_of_everything_in_one_batch_answers_both_truly(cfg: config.ConfigFile,
                                                                                  tmp_path: Path) -> None:
    """The case Hypothesis found: a request queues dora_s1, the next one (served in the same tick)
    cancels `*`. The first answer says queued, the second says cancelled, and the queue is empty."""
    valid = {e["name"]: e for e in (e.resolved() for e in config.expand(cfg, SUITE))}
    runner = session(cfg, tmp_path)
    spool = requests.spool_dir(runner.suite_dir)
    spool.mkdir()
    bodies = [{"version": 1, "suite": SUITE, "kind": "add", "overrides": [], "experiments": [valid["dora_s1"]]},
              {"version": 1, "suite": SUITE, "kind": "cancel", "patterns": ["*"]}]
    for i, body in enumerate(bodies):
        (spool / f"{i:03d}-req{requests.REQUEST_SUFFIX}").write_text(json.dumps(body))
    runner.backend.serve_requests()
    added, cancelled = (json.loads((spool / f"{i:03d}-req{requests.REPLY_SUFFIX}").read_text())["results"]
                        for i in range(2))
    assert [(r["name"], r["outcome"]) for r in added] == [("dora_s1", requests.QUEUED)]
    assert {r["name"]: r["outcome"] for r in cancelled} == {n: requests.CANCELLED for n in
                                                            ("vera_s1", "lora_s1", "lora_s2", "dora_s1")}
    assert not runner.backend.queue and "vera_s1" in runner.backend.running
    assert "dora_s1" in runner.run_experiments  # the run still answers for it (interrupted)


def test_a_hand_off_cancelled_then_handed_over_again_in_one_batch_is_queued_once(cfg: config.ConfigFile,
                                                                                  tmp_path: Path) -> None:
    """Add dora_s1, cancel it, add it again, all served in one tick: the last answer says queued
    (it had been interrupted in this run) and it is in the queue exactly once. The case the loosened
    property ("allowed when cancelled") would have let through had the second hand-off been dropped."""
    valid = {e["name"]: e for e in (e.resolved() for e in config.expand(cfg, SUITE))}
    runner = session(cfg, tmp_path)
    spool = requests.spool_dir(runner.suite_dir)
    spool.mkdir()
    add = {"version": 1, "suite": SUITE, "kind": "add", "overrides": [], "experiments": [valid["dora_s1"]]}
    bodies = [add, {"version": 1, "suite": SUITE, "kind": "cancel", "patterns": ["dora_s1"]}, add]
    for i, body in enumerate(bodies):
        (spool / f"{i:03d}-req{requests.REQUEST_SUFFIX}").write_text(json.dumps(body))
    runner.backend.serve_requests()
    answers = [json.loads((spool / f"{i:03d}-req{requests.REPLY_SUFFIX}").read_text())["results"] for i in range(3)]
    assert [[(r["name"], r["outcome"]) for r in a] for a in answers] == [
        [("dora_s1", requests.QUEUED)], [("dora_s1", requests.CANCELLED)], [("dora_s1", requests.QUEUED)]]
    assert "it had been interrupted in this run" in answers[2][0]["reason"]
    assert [j.name for j in runner.backend.queue].count("dora_s1") == 1
