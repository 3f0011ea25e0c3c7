"""The read model (perl_cli.experiments_view): one bad experiment never blinds the suite.

Every reproduction of issue 9 §1, §2 and §4 (readers' part): malformed, hostile or huge
files in one experiment directory make that experiment `unreadable` (naming the file and
the problem) or are refused, while status, diagnose, report and `perl run`'s planning
go on reporting the rest of the suite. Reads are bounded: checked by bytes read, with a
generous timeout only as a guard against hangs.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hyp
from suite_fixtures import CUDA_OOM, ReadCounter, build_mixed_suite, this_host
from typer.testing import CliRunner

from perl_cli import config as configlib
from perl_cli import diagnose as dg
from perl_cli import experiments_view as views
from perl_cli import logtail
from perl_cli import report as reportlib
from perl_cli import state as st
from perl_cli.cli import app

HANG_GUARD_S = 30.0  # a reader that blocks fails the test instead of hanging the run


def run_cli(*args: str) -> tuple[int, str]:
    """Exit code and output of a `perl` command run in-process; it must never raise."""
    result = CliRunner().invoke(app, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), (args, result.exception)
    return result.exit_code, result.output


def within(seconds: float, func: Callable[[], Any]) -> Any:
    """func() in a daemon thread; fails (instead of hanging forever) if it does not return in time."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = func()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test thread
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"{func} did not return within {seconds}s"
    if "error" in box:
        raise box["error"]
    return box.get("value")


@pytest.fixture
def mixed(tmp_path: Path):
    return build_mixed_suite(tmp_path)


def victim(out: Path) -> Path:
    """The completed experiment lora_r16_s42 of the mixed suite: the one each test damages."""
    return out / "core" / "lora_r16_s42"


def every_reader(cfg_path: Path, out: Path) -> dict[str, tuple[int, str]]:
    """status (text and JSON), diagnose (text and JSON), report --stdout: exit code and output."""
    common = ("--config", str(cfg_path), "--output", str(out))
    return {
        "status": run_cli("status", "core", "--verbose", *common),
        "status --json": run_cli("status", "core", "--json", *common),
        "overview": run_cli("status", *common),
        "diagnose": run_cli("diagnose", "core", *common),
        "diagnose --json": run_cli("diagnose", "core", "--json", *common),
        "report": run_cli("report", "core", "--stdout", *common),
    }


def assert_rest_of_suite_reported(results: dict[str, tuple[int, str]]) -> None:
    for command, (code, text) in results.items():
        assert code in (0, 1), (command, text)
        if command != "overview":
            assert "adalora_r16_s42" in text, command  # the rest of the suite is still there
    data = json.loads(results["status --json"][1])
    states = {e["name"]: e["state"] for e in data["experiments"]}
    assert states["lora_r16_s123"] == "completed" and states["dora_r16_s42"] == "running"


# --- A: malformed fields make one experiment unreadable --------------------------------


@pytest.mark.parametrize("field, value", [
    ("pid", "abc"), ("pid_start_time", "x"), ("exit_code", [1]), ("error", 5), ("attempt", "x"),
    ("heartbeat", "soon"), ("state", "exploded"), ("step", -3), ("gpu", {"index": 0}),
])
def test_a_mistyped_status_field_makes_only_that_experiment_unreadable(mixed, field: str, value: Any) -> None:
    cfg_path, out, _ = mixed
    d = victim(out)
    status = st.read_json(d / st.STATUS_FILE)
    status.update({"state": "running", "host": this_host(), "heartbeat": time.time(), field: value})
    st.atomic_write_json(d / st.STATUS_FILE, status)
    results = every_reader(cfg_path, out)
    assert_rest_of_suite_reported(results)
    data = json.loads(results["status --json"][1])
    bad = next(e for e in data["experiments"] if e["name"] == "lora_r16_s42")
    assert bad["state"] == "unreadable" and data["counts"]["unreadable"] == 1
    assert bad["problem"].startswith(f'status.json: "{field}" is ')
    assert f'"{field}"' in results["status"][1] and "unreadable" in results["status"][1]
    diagnosis = next(e for e in json.loads(results["diagnose --json"][1])["experiments"] if e["name"] == "lora_r16_s42")
    assert diagnosis["cause"] == "unreadable" and "status.json" in diagnosis["summary"]
    assert "--fresh" in diagnosis["fix"]["commands"][0] and "Restore the file" in diagnosis["fix"]["text"]
    assert results["diagnose"][0] == 1  # needs attention


def test_deeply_nested_and_non_object_status_files(mixed) -> None:
    cfg_path, out, _ = mixed
    (victim(out) / st.STATUS_FILE).write_text("[" * 100_000)
    (out / "core" / "lora_r16_s123" / st.CONFIG_FILE).write_text("[1, 2]")
    results = every_reader(cfg_path, out)
    for command, (code, text) in results.items():
        assert code in (0, 1), (command, text)
    views_ = {e.name: e for e in views.load_suite(out, "core", configlib.load(cfg_path)).experiments}
    assert views_["lora_r16_s42"].state == "unreadable" and "nested too deeply" in views_["lora_r16_s42"].problem
    assert views_["lora_r16_s123"].state == "unreadable" and "config.json holds list" in views_["lora_r16_s123"].problem
    assert views_["dora_r16_s42"].state == "running"


def test_truncated_status_of_a_completed_experiment_is_unreadable_not_pending(mixed) -> None:
    cfg_path, out, _ = mixed
    path = victim(out) / st.STATUS_FILE
    path.write_text(path.read_text()[:40])
    results = every_reader(cfg_path, out)
    assert_rest_of_suite_reported(results)
    data = json.loads(results["status --json"][1])
    assert next(e for e in data["experiments"] if e["name"] == "lora_r16_s42")["state"] == "unreadable"
    assert "lora_r16_s42" in results["diagnose"][1] and "status.json is not valid JSON" in results["diagnose"][1]
    # A missing status.json (with a config.json) is pending: a scheduler may be about to write it.
    path.unlink()
    assert views.read_experiment("lora_r16_s42", victim(out)).state == "pending"


def test_random_bytes_in_metrics_do_not_break_report(mixed) -> None:
    cfg_path, out, _ = mixed
    (victim(out) / st.METRICS_FILE).write_bytes(os.urandom(5000) + b"\n\xff\xfe{\"step\": 1}\n" + b"[" * 50_000 + b"\n")
    results = every_reader(cfg_path, out)
    assert_rest_of_suite_reported(results)
    assert "| `lora_r16_s42` | lora | completed |" in results["report"][1]


# --- A: `perl run` refuses to redo an unreadable experiment without --fresh --------------


def test_run_refuses_an_unreadable_experiment_without_fresh(mixed, tmp_path: Path) -> None:
    from perl_cli.scheduler import RunOptions, run_suite
    from perl_cli.scheduler.jobs import RunError

    cfg_path, out, exps = mixed
    (victim(out) / st.STATUS_FILE).write_text('{"state": "completed", "fing')
    status = st.read_json(out / "core" / "lora_r16_s123" / st.STATUS_FILE)
    st.atomic_write_json(out / "core" / "lora_r16_s123" / st.STATUS_FILE, {**status, "attempt": "x"})
    chosen = [e for e in exps if e.name in ("lora_r16_s42", "lora_r16_s123", "pissa_r16_s42")]
    opts = dict(suite="core", experiments=chosen, output=out, dry_run=True, environ={"PERL_FAKE_GPUS": "[]"}, cpu=True)
    with pytest.raises(RunError) as refused:
        run_suite(RunOptions(**opts))
    message = str(refused.value)
    assert "2 unreadable" not in message  # one line per distinct problem, each naming the file
    assert "status.json is not valid JSON" in message and '"attempt" is \'x\'' in message
    assert "restore or delete the file" in message and "--fresh" in message
    assert message.count("lora_r16_s42") == 2  # once in its reason, once in the --only of the fix
    assert run_suite(RunOptions(**opts, fresh=True)) == 0  # --fresh plans it (keeps the old directory)


# --- B: bounded, safe reads ------------------------------------------------------------------


def test_fifo_log_and_metrics_linked_to_dev_zero_do_not_block(mixed) -> None:
    cfg_path, out, _ = mixed
    failed = out / "core" / "adalora_r16_s42"
    (failed / st.LOG_FILE).unlink()
    os.mkfifo(failed / st.LOG_FILE)
    (failed / st.METRICS_FILE).unlink()
    os.symlink("/dev/zero", failed / st.METRICS_FILE)
    (failed / "spectral_history.json").symlink_to("/dev/zero")
    cfg = configlib.load(cfg_path)
    view = within(HANG_GUARD_S, lambda: views.load_suite(out, "core", cfg))
    diagnoses = within(HANG_GUARD_S, lambda: dg.diagnose_suite(view))
    assert any(d.name == "adalora_r16_s42" for d in diagnoses)
    text, _ = within(HANG_GUARD_S, lambda: reportlib.build(view, draw=False, config_path=cfg_path, output=out))
    assert "adalora_r16_s42" in text
    with pytest.raises(logtail.UnsafeFile, match="FIFO"):
        logtail.open_safe(failed / st.LOG_FILE)
    with pytest.raises(logtail.UnsafeFile, match="outside"):
        logtail.open_safe(failed / st.METRICS_FILE)


def test_a_log_linked_outside_the_experiment_is_not_shown(mixed, tmp_path: Path) -> None:
    cfg_path, out, _ = mixed
    secret = tmp_path / "shadow"
    secret.write_text("root:$6$SECRETHASH:19000:0:99999:7:::\n")
    failed = out / "core" / "adalora_r16_s42"
    (failed / st.LOG_FILE).unlink()
    (failed / st.LOG_FILE).symlink_to(secret)
    code, text = run_cli("diagnose", "core", "--verbose", "--config", str(cfg_path), "--output", str(out))
    assert code == 1 and "adalora_r16_s42" in text and "SECRETHASH" not in text
    # A link that stays inside the experiment directory is fine.
    (failed / "real.log").write_text(CUDA_OOM)
    (failed / st.LOG_FILE).unlink()
    (failed / st.LOG_FILE).symlink_to("real.log")
    assert "CUDA out of memory" in run_cli("diagnose", "core", "--config", str(cfg_path), "--output", str(out))[1]


def test_huge_error_and_huge_log_line_are_read_and_shown_bounded(mixed, monkeypatch) -> None:
    cfg_path, out, _ = mixed
    failed = out / "core" / "adalora_r16_s42"
    status = st.read_json(failed / st.STATUS_FILE)
    st.atomic_write_json(failed / st.STATUS_FILE, {**status, "error": "RuntimeError: " + "x" * 60_000_000})
    other = out / "core" / "adalora_r16_s123"
    (other / st.LOG_FILE).write_text("Traceback (most recent call last):\nRuntimeError: " + "y" * 4_000_000 + "\n")
    reads = ReadCounter().install(monkeypatch)
    cfg = configlib.load(cfg_path)
    view = within(HANG_GUARD_S, lambda: views.load_suite(out, "core", cfg, with_size=False))
    status_bytes = reads.bytes
    diagnoses = {d.name: d for d in within(HANG_GUARD_S, lambda: dg.diagnose_suite(view, tail=dg.VERBOSE_LINES))}
    # The 60 MB status file is refused after its byte budget: unreadable, naming why.
    bad = next(e for e in view.experiments if e.name == "adalora_r16_s42")
    assert bad.state == "unreadable" and "larger than" in bad.problem
    assert status_bytes < 13 * (st.MAX_JSON_BYTES + 2 * logtail.BLOCK_BYTES)
    # The 4 MB line is read within the tail budget and shown capped.
    assert reads.bytes - status_bytes <= 12 * logtail.MAX_TAIL_BYTES
    d = diagnoses["adalora_r16_s123"]
    assert d.traceback is not None and max(len(line) for line in d.traceback.splitlines()) <= logtail.MAX_LINE_CHARS
    assert len(d.summary) <= 300


# --- C: user text is never Rich markup -------------------------------------------------------


def test_markup_in_names_errors_and_logs_is_shown_literally(tmp_path: Path) -> None:
    out = tmp_path / "out"
    # "[core]" cannot be a suite name PeRL writes (names.py), but a directory someone copied
    # in is still listed by the overview, literally.
    for suite, name, state, error in (("core", "[bold]lost", "failed", "rank sweep [/r16] failed: [core] gone"),
                                      ("core", "fine", "completed", None), ("[core]", "fine", "completed", None)):
        d = out / suite / name
        d.mkdir(parents=True)
        st.atomic_write_json(d / st.STATUS_FILE, {"state": state, "error": error, "exit_code": 1 if error else 0,
                                                  "started": 1.0, "ended": 2.0, "step": 3, "total_steps": 3})
        (d / st.LOG_FILE).write_text("Traceback (most recent call last):\nValueError: bad [/r16] [red]x\n" if error else "")
    common = ("--output", str(out), "--config", str(write_toml(tmp_path)))
    for args in (("status", "core", "--verbose"), ("status",), ("diagnose", "core", "--verbose"), ("report", "core")):
        code, text = run_cli(*args, *common)
        assert code in (0, 1), (args, text)
        if args[0] != "report" and args[1:]:  # the overview lists suites, not experiments
            assert "[bold]lost" in text, (args, text)
        if args == ("status",):
            assert "[core]" in text, (args, text)
    code, text = run_cli("diagnose", "core", "--verbose", *common)
    assert "ValueError: bad [/r16] [red]x" in text
    assert "`[bold]lost`" in (out / "core" / reportlib.SUMMARY_FILE).read_text()


def write_toml(tmp_path: Path) -> Path:
    path = tmp_path / "experiments.toml"
    path.write_text('[suites.other]\ndescription = "rank sweep [/r16]"\n[suites.other.matrix]\nmethod = ["lora"]\n')
    return path


# --- E: a run with --set is a completed run --------------------------------------------------


def ran_with_overrides(out: Path, cfg: configlib.ConfigFile, sets: list[str], names: list[str]) -> None:
    """Experiments completed by `perl run core --set ...`: config.json records the overrides."""
    from suite_fixtures import write_experiment

    for exp in configlib.expand(cfg, "core", sets=sets):
        if exp.name in names:
            d = write_experiment(out / "core", exp)
            config = st.read_json(d / st.CONFIG_FILE)
            st.atomic_write_json(d / st.CONFIG_FILE, {**config, views.OVERRIDES_KEY: sets})


def test_experiments_completed_with_set_are_completed_until_the_config_changes(tmp_path: Path) -> None:
    from suite_fixtures import write_config

    cfg_path = write_config(tmp_path)
    out = tmp_path / "out"
    ran_with_overrides(out, configlib.load(cfg_path), ["training.max_steps=20"], ["lora_r16_s42", "dora_r16_s42"])
    view = views.load_suite(out, "core", configlib.load(cfg_path))
    done = {e.name: e for e in view.experiments if e.dir is not None}
    assert {e.state for e in done.values()} == {"completed"}
    assert done["lora_r16_s42"].overrides == ["training.max_steps=20"] and done["lora_r16_s42"].total_steps == 20
    code, text = run_cli("report", "core", "--stdout", "--config", str(cfg_path), "--output", str(out))
    assert "2/12 experiments completed" in text and "(--set training.max_steps=20)" in text
    code, text = run_cli("status", "core", "--config", str(cfg_path), "--output", str(out))
    assert "stale" not in text and "2 ran with --set training.max_steps=20" in text
    # Edit experiments.toml: the settings they ran with are no longer what it resolves to.
    cfg_path.write_text(cfg_path.read_text().replace("learning_rate = 1e-5", "learning_rate = 2e-5"))
    view = views.load_suite(out, "core", configlib.load(cfg_path))
    assert {e.state for e in view.experiments if e.dir is not None} == {"stale"}


def test_progress_and_eta_cover_the_run_in_progress(tmp_path: Path) -> None:
    """A one-minute run with --set training.max_steps=20 must not count the config's 100 steps elsewhere."""
    from suite_fixtures import write_config, write_experiment

    cfg_path = write_config(tmp_path)
    cfg = configlib.load(cfg_path)
    out = tmp_path / "out"
    sets = ["training.max_steps=20"]
    ran_with_overrides(out, cfg, sets, ["lora_r16_s42"])
    exps = {e.name: e for e in configlib.expand(cfg, "core", sets=sets)}
    d = write_experiment(out / "core", exps["lora_r16_s123"], state=st.RUNNING, step=10, step_seconds=1.0,
                         host=this_host(), pid=os.getpid(), status_extra={"pid_start_time": st.process_start_time(os.getpid())})
    st.atomic_write_json(d / st.CONFIG_FILE, {**exps["lora_r16_s123"].resolved(), views.OVERRIDES_KEY: sets})
    run = ["lora_r16_s42", "lora_r16_s123", "dora_r16_s42"]  # dora_r16_s42 queued, no directory yet
    st.atomic_write_json(out / "core" / st.RUN_STATUS_FILE, {"updated": time.time(), "scheduler": {
        "pid": os.getpid(), "host": this_host(), "state": "running", "run": run, views.OVERRIDES_KEY: sets}})
    view = views.load_suite(out, "core", cfg)
    by_name = {e.name: e for e in view.experiments}
    assert by_name["dora_r16_s42"].total_steps == 20 and by_name["dora_r16_s42"].overrides == sets
    assert by_name["pissa_r16_s42"].total_steps == 100  # not in the run
    assert view.progress == pytest.approx((20 + 10) / 60)
    # 10 steps left at 1 s, then 20 queued steps at the mean step time (1 s, 2 s) on one slot.
    assert view.eta_s == pytest.approx(10 + 20 * 1.5)
    # Once the scheduler is gone, the whole suite counts again.
    st.atomic_write_json(out / "core" / st.RUN_STATUS_FILE, {"updated": time.time(), "scheduler": {
        "pid": 999_999_999, "host": this_host(), "state": "running", "run": run}})
    assert views.load_suite(out, "core", cfg).run is None


# --- D: whatever is in one experiment directory, the readers answer about the suite ----------

STATUS_KEYS = list(views.STATUS_FIELDS)
json_scalars = (
    hyp.none() | hyp.booleans() | hyp.integers(-(2**70), 2**70) | hyp.floats() | hyp.text(max_size=12)
    | hyp.sampled_from([*st.STATES, "cpu", this_host()])
)
json_values = hyp.recursive(
    json_scalars,
    lambda inner: hyp.lists(inner, max_size=4) | hyp.dictionaries(hyp.sampled_from(STATUS_KEYS) | hyp.text(max_size=6), inner, max_size=6),
    max_leaves=12,
)
status_like = hyp.fixed_dictionaries({"state": hyp.sampled_from(st.STATES) | json_scalars}, optional={
    key: json_scalars | json_values for key in STATUS_KEYS if key != "state"
})
file_kinds = hyp.one_of(
    hyp.tuples(hyp.just("json"), status_like | json_values),
    hyp.tuples(hyp.just("bytes"), hyp.binary(max_size=300)),
    hyp.tuples(hyp.sampled_from(["missing", "fifo", "dir", "link-out", "dev-zero", "deep", "empty"]), hyp.none()),
)
config_like = hyp.fixed_dictionaries({}, optional={
    "fingerprint": json_scalars, views.OVERRIDES_KEY: json_values | hyp.just(["training.max_steps=5"]),
    st.RUNTIME_KEY: json_values, **{section: hyp.dictionaries(
        hyp.sampled_from(["type", "r", "max_steps", "data_size", "model_name_or_path", "dataset_name_or_path"]),
        json_scalars | json_values, max_size=4) for section in ("peft", "training", "dataset", "model")},
})
EXPERIMENT_FILES = (st.STATUS_FILE, st.CONFIG_FILE, st.METRICS_FILE, st.EVAL_FILE, st.LOG_FILE,
                    "spectral_history.json", "gradient_flow.json")
# Half of the status and config files look like ours with some fields wrong; the rest is anything.
FILE_STRATEGIES = {name: file_kinds for name in EXPERIMENT_FILES} | {
    st.STATUS_FILE: hyp.tuples(hyp.just("json"), status_like) | file_kinds,
    st.CONFIG_FILE: hyp.tuples(hyp.just("json"), config_like) | file_kinds,
}
ANSWER_S = 5.0  # the issue asks for < 1 s; a loaded shared CI machine gets slack, a hang still fails


@pytest.fixture(scope="module")
def shared_suite(tmp_path_factory) -> tuple[Path, Path, configlib.ConfigFile]:
    cfg_path, out, _ = build_mixed_suite(tmp_path_factory.mktemp("prop"))
    secret = out.parent / "outside.txt"
    secret.write_text("SECRET outside the experiment\n")
    return cfg_path, out, configlib.load(cfg_path)


def write_kind(path: Path, kind: str, value: Any) -> None:
    if kind == "json":
        path.write_text(json.dumps(value))
    elif kind == "bytes":
        path.write_bytes(value)
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "dir":
        path.mkdir()
    elif kind == "link-out":
        path.symlink_to(path.parent.parent.parent.parent / "outside.txt")
    elif kind == "dev-zero":
        path.symlink_to("/dev/zero")
    elif kind == "deep":
        path.write_text("[" * 100_000)
    elif kind == "empty":
        path.write_bytes(b"")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(files=hyp.fixed_dictionaries(FILE_STRATEGIES))
def test_any_files_in_one_experiment_never_break_the_readers(shared_suite, files: dict[str, tuple[str, Any]]) -> None:
    import io

    from rich.console import Console

    from perl_cli import status as statuslib

    cfg_path, out, cfg = shared_suite
    d = out / "core" / "lora_r16_s42"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir()
    for name, (kind, value) in files.items():
        write_kind(d / name, kind, value)
    view = within(ANSWER_S, lambda: views.load_suite(out, "core", cfg))
    states = {e.name: e.state for e in view.experiments}
    assert len(states) == 12 and states["lora_r16_s42"] in st.STATES
    assert states["lora_r16_s123"] == "completed" and states["adalora_r16_s42"] == "failed"
    json.dumps(view.to_json())
    diagnoses = within(ANSWER_S, lambda: dg.diagnose_suite(view, tail=dg.VERBOSE_LINES))
    assert {"adalora_r16_s42", "milora_r16_s42"} <= {x.name for x in diagnoses}
    json.dumps(dg.to_json(view, diagnoses))
    text, _ = within(ANSWER_S, lambda: reportlib.build(view, draw=False, config_path=cfg_path, output=out))
    assert "`adalora_r16_s42`" in text
    screen = io.StringIO()
    console = Console(file=screen, width=200)
    console.print(statuslib.render_suite(view, verbose=True))
    console.print(dg.render(view, diagnoses, verbose=True))
    assert "SECRET" not in screen.getvalue() + text


def test_watch_shows_markup_names_and_unreadable_experiments_literally(tmp_path: Path) -> None:
    import asyncio

    from rich.text import Text
    from textual.widgets import DataTable, Log, Static

    from perl_cli.scheduler.gpus import load_inventory
    from perl_cli.tui.app import WatchApp

    suite_dir = tmp_path / "out" / "[core]"
    for name, status in (("[bold]lost", {"state": "running", "step": 2, "total_steps": 10, "gpu": "[red]0",
                                         "heartbeat": time.time(), "started": time.time() - 5}),
                         ("broken", {"state": "completed", "pid": "abc"})):
        (suite_dir / name).mkdir(parents=True)
        st.atomic_write_json(suite_dir / name / st.STATUS_FILE, status)
        (suite_dir / name / st.LOG_FILE).write_text("step [/r16] [bold]x\n")

    async def scenario() -> None:
        app = WatchApp(suite_dir.parent, "[core]", interval=5, inventory=load_inventory({"PERL_FAKE_GPUS": "[]"}))
        async with app.run_test(size=(160, 40)) as pilot:
            await app.workers.wait_for_complete()
            await pilot.pause()
            table = app.query_one(DataTable)
            # A str cell would be rendered as markup ("lost"); a Text cell is shown as it is.
            name, gpu = table.get_cell("[bold]lost", "experiment"), table.get_cell("[bold]lost", "gpu")
            assert isinstance(name, Text) and name.plain == "[bold]lost" and isinstance(gpu, Text) and gpu.plain == "[red]0"
            assert str(table.get_cell("broken", "state")) == "unreadable"
            assert "1 unreadable" in str(app.query_one("#summary", Static).render())
            assert list(app.query_one(Log).lines)[-1] == "step [/r16] [bold]x"
            assert "[bold]lost" in str(app.query_one("#log-title", Static).render())

    asyncio.run(scenario())
