"""Is a model's math answer equal to the reference? `math-verify`, bounded in time.

math-verify (0.9) bounds its own work with ``signal.alarm``: whole seconds, the main
thread only (it raises ValueError in any other thread), and a Python-level handler,
which cannot interrupt a long C call (a huge integer power inside sympy). A reward
function must never hang a training step, whoever calls it and from which thread, so
the comparison runs in a separate process, `python -m perl_cli.math_verifier`, which
answers one JSON line per question. The caller waits at most `timeout` seconds for the
answer; past that the process is killed (SIGKILL: nothing it is doing can delay it)
and the answer counts as wrong; the next question starts a new process.

Cheap checks come first and need no process at all: the answer's length and brace
depth (a 50 KB or deeply nested answer is wrong at once), and exact textual equality
(the common case of a right integer answer costs no sympy).
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from typing import Any

# Longer answers are wrong unparsed: no benchmark answer is anywhere near this long.
MAX_ANSWER_CHARS = 400
MAX_REFERENCE_CHARS = 2000
# Braces nested deeper than this are no plausible final answer and cost sympy dearly.
MAX_BRACE_DEPTH = 12
# Seconds one comparison may take (parsing both sides and comparing them).
DEFAULT_TIMEOUT_S = 2.0
# Seconds the verifier process may take to start (importing sympy on a loaded machine).
STARTUP_TIMEOUT_S = 120.0
READY = "ready"


def brace_depth_ok(text: str, limit: int = MAX_BRACE_DEPTH) -> bool:
    depth = 0
    for ch in text:
        if ch in "{([":
            depth += 1
            if depth > limit:
                return False
        elif ch in "})]":
            depth = max(0, depth - 1)
    return True


def normalise(text: str) -> str:
    """The answer without whitespace and math delimiters: equal texts need no sympy."""
    return "".join(text.split()).strip("$").removeprefix("\\(").removesuffix("\\)")


class MathVerifier:
    """A client of one verifier process (started on first use, restarted after a timeout)."""

    def __init__(self, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        self.timeout = timeout
        self._proc: subprocess.Popen[str] | None = None
        self._lock = threading.Lock()  # one question at a time on the pipe
        self.timeouts = 0  # answers that ran out of time (killed), for the logs

    # -- the process --------------------------------------------------------------

    def _start(self) -> subprocess.Popen[str]:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
        proc = subprocess.Popen(
            [sys.executable, "-m", "perl_cli.math_verifier"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        line = self._read_line(proc, STARTUP_TIMEOUT_S)
        if line != READY:
            self._kill(proc)
            raise RuntimeError(
                "the math-verify process did not start (is math-verify installed? pip install 'math-verify[antlr4_13_2]')"
            )
        return proc

    @staticmethod
    def _read_line(proc: subprocess.Popen[str], timeout: float) -> str | None:
        assert proc.stdout is not None
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            try:
                ready, _, _ = select.select([proc.stdout], [], [], left)
            except InterruptedError:
                continue
            if ready:
                line = proc.stdout.readline()
                return line.strip() if line else None

    @staticmethod
    def _kill(proc: subprocess.Popen[str]) -> None:
        try:
            proc.kill()
        except OSError:
            pass
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass

    def close(self) -> None:
        with self._lock:
            if self._proc is not None:
                self._kill(self._proc)
                self._proc = None

    # -- questions ----------------------------------------------------------------

    def equal(self, answer: str, reference: str) -> bool:
        """True when `answer` is mathematically equal to `reference`. Never raises, never
        takes much longer than `timeout` (plus a first start of the process)."""
        try:
            if not isinstance(answer, str) or not isinstance(reference, str):
                return False
            if not answer.strip() or len(answer) > MAX_ANSWER_CHARS or not brace_depth_ok(answer):
                return False
            if len(reference) > MAX_REFERENCE_CHARS:
                return False
            if normalise(answer) == normalise(reference):
                return True
            return self._ask(answer, reference)
        except Exception:  # the contract is "never raises"
            return False

    def _ask(self, answer: str, reference: str) -> bool:
        request = json.dumps({"answer": answer, "reference": reference}) + "\n"
        with self._lock:
            for _ in range(2):  # a process that died since the last question is restarted once
                if self._proc is None or self._proc.poll() is not None:
                    self._proc = self._start()
                proc = self._proc
                assert proc.stdin is not None
                try:
                    proc.stdin.write(request)
                    proc.stdin.flush()
                except (BrokenPipeError, OSError):
                    self._kill(proc)
                    self._proc = None
                    continue
                line = self._read_line(proc, self.timeout)
                if line is None:  # out of time (or the process died): wrong, and a new process
                    self.timeouts += 1
                    self._kill(proc)
                    self._proc = None
                    return False
                return line == "1"
        return False


_SHARED: MathVerifier | None = None


def shared() -> MathVerifier:
    """This process's verifier (one child process for every reward and evaluation)."""
    global _SHARED
    if _SHARED is None:
        _SHARED = MathVerifier()
    return _SHARED


# --- the verifier process -------------------------------------------------------------


def _serve() -> None:
    # Ctrl+C and the scheduler's SIGTERM go to the whole process group: the worker decides
    # when to stop; this process ends when its stdin closes (the worker is gone).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    import logging

    logging.disable(logging.CRITICAL)  # math-verify logs every timeout and hostile input
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    configs = [LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig()]
    golds: dict[str, Any] = {}

    def answer(request: dict[str, Any]) -> bool:
        ref = str(request["reference"])
        gold = golds.get(ref)
        if gold is None:
            # Timeouts are this process's caller's job (it kills us); math-verify's own
            # SIGALRM timers would only add whole-second granularity.
            gold = parse(f"${ref}$", extraction_config=configs, parsing_timeout=None)
            if not gold:
                gold = parse(ref, extraction_config=configs, parsing_timeout=None)
            if len(golds) > 10_000:
                golds.clear()
            golds[ref] = gold
        pred = parse("\\boxed{" + str(request["answer"]) + "}", extraction_config=configs, parsing_timeout=None)
        return bool(gold and pred and verify(gold, pred, timeout_seconds=None))

    print(READY, flush=True)
    for line in sys.stdin:
        try:
            ok = answer(json.loads(line))
        except BaseException:  # noqa: BLE001 - any failure is a wrong answer, never a dead verifier
            ok = False
        sys.stdout.write("1\n" if ok else "0\n")
        sys.stdout.flush()


if __name__ == "__main__":
    _serve()
