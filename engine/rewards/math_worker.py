"""The math-verify worker process and the parent's handle on it (engine/rewards/math.py's pool).

A worker is `python -c` loading only THIS file (stdlib + math-verify: no torch, no engine import,
no re-import of the caller's `__main__`), so it starts in ~0.3 s and can be killed at any time.
Protocol, JSON lines: the worker prints "ready", then for each `[job, pred, gold, timeout_s]` on
stdin answers `[job, "correct" | "wrong"]` or `[job, "error", "ExcType: message"]` on stdout.
This file must import nothing outside the standard library at module level.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time


class Worker:
    """One math-verify process speaking JSON lines on stdin/stdout (see `_serve`)."""

    def __init__(self, memory_bytes: int) -> None:
        boot = (
            "import importlib.util, sys\n"
            "spec = importlib.util.spec_from_file_location('_semionline_math_worker', sys.argv[1])\n"
            "mod = importlib.util.module_from_spec(spec); sys.modules[spec.name] = mod\n"
            "spec.loader.exec_module(mod); mod._serve(int(sys.argv[2]))\n"
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-c", boot, self.script(), str(memory_bytes)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            bufsize=0,
            start_new_session=True,  # the terminal's Ctrl-C goes to the caller, which reaps us
        )
        self.fd = self.proc.stdout.fileno()
        self.buffer = b""
        self.ready = False
        self.started = time.monotonic()
        self.job: int | None = None
        self.texts = ("", "")  # (answer, reference) of the current job, for logs
        self.deadline = 0.0

    @staticmethod
    def script() -> str:
        """The file a worker process loads: this one."""
        return os.path.abspath(__file__)

    def send(self, job: int, pred: str, gold: str, timeout_s: float) -> None:
        self.job, self.deadline, self.texts = job, time.monotonic() + timeout_s, (pred, gold)
        self.proc.stdin.write((json.dumps([job, pred, gold, timeout_s]) + "\n").encode())

    def read_lines(self) -> list[str] | None:
        """Complete lines now readable, or None at end of file (the process died)."""
        chunk = os.read(self.fd, 1 << 16)
        if not chunk:
            return None
        self.buffer += chunk
        *lines, self.buffer = self.buffer.split(b"\n")
        return [line.decode() for line in lines]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            stream.close()


def _serve(memory_bytes: int) -> None:
    """Worker main loop: ``[job, pred, gold, timeout_s]`` in, ``[job, "correct"|"wrong"|"error"]`` out."""
    import functools
    import logging
    import math
    import resource

    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # anything a library prints goes to stderr, never into the protocol
    if memory_bytes > 0:
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, resource.RLIM_INFINITY))
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    logging.getLogger("math_verify").setLevel(logging.ERROR)  # our caller enforces the time limit
    config = [LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig()]

    @functools.lru_cache(maxsize=4096)
    def parsed(answer: str) -> list:
        return parse("\\boxed{" + answer + "}", extraction_config=config, parsing_timeout=None)

    protocol.write('"ready"\n')
    for line in sys.stdin:
        job, pred, gold, timeout_s = json.loads(line)
        cpu_used = sum(resource.getrusage(resource.RUSAGE_SELF)[:2])
        cpu_cap = int(math.ceil(cpu_used + timeout_s)) + 5  # SIGXCPU ends us if the caller cannot
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_cap, resource.RLIM_INFINITY))
        reason = None
        try:
            gold_parsed, pred_parsed = parsed(gold), parsed(pred)
            ok = bool(pred_parsed) and verify(gold_parsed, pred_parsed, timeout_seconds=None)
            outcome = "correct" if ok else "wrong"
        except Exception as e:  # math-verify catches its own; this is MemoryError/RecursionError-class
            outcome, reason = "error", f"{type(e).__name__}: {e}"[:300]
        protocol.write(json.dumps([job, outcome] if reason is None else [job, outcome, reason]) + "\n")
