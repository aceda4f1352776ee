"""Math reward: 1.0 when a response's final answer equals the reference answer, else 0.0.

The final answer is pulled out here (`extract_answer`: last ``\\boxed{}``/``\\fbox{}``, else GSM8K's
``#### n``, else a final "The answer is X" phrase) and the comparison is math-verify's
(``parse`` + ``verify``), so ``\\frac{1}{2}`` equals ``0.5`` and ``1,234`` equals ``1234``.

Why a worker process. math-verify 0.9 bounds its own time with ``signal.alarm`` (integer seconds,
``math_verify/utils.py``): ``parse``/``verify`` raise ``ValueError`` when called off the main thread,
the only escape it offers is ``parsing_timeout=None`` / ``timeout_seconds=None`` (no bound at all),
and an alarm cannot interrupt a long C call. A response such as ``\\boxed{9^{9^{9^{9}}}}`` parses in
milliseconds, then ``verify`` runs until killed. So parsing and verifying run in small persistent
worker processes (``python -c`` loading only ``math_worker.py``: stdlib + math-verify, no torch, no re-import
of the caller's ``__main__``) with math-verify's signal timeouts off; the caller waits on a pipe
with a real deadline from any thread and kills and replaces a worker that overruns. Measured on
the shared 2-core dev machine (`engine/bench/math_reward.py`): 0.04-0.25 ms of pipe round trip per
answer, against 1-5 ms for math-verify itself on MATH-500 answers, so the worker path is no slower
than in-process math-verify (which pays a SIGALRM set-up per parse and per comparison); a
replacement worker takes 0.3-0.5 s to start after a timeout. The deadline runs from when an answer
reaches a ready worker, so one answer costs at most ``timeout_s`` plus a replacement's start-up.
Workers cache parses (GRPO groups share one reference) and cap their own address space and
per-answer CPU time (``RLIMIT_AS``/``RLIMIT_CPU``): they cannot eat the machine or outlive a dead
parent by more than one answer.

Never raises on a response: no answer, an over-long answer, a parse failure, a crash or a timeout
all score 0.0 and are counted in `MathRewardStats` (log them as ``reward/timeouts`` etc.); the first
`MAX_LOGGED_PROBLEMS` crashes and timeouts of a verifier are also logged (logger ``engine.rewards.math``)
with the answer, the reference and the reason, so a count is never the only trace of a problem.
Bad references (empty, or a long text with no final answer) raise `ValueError`: that is a data bug.

    from engine.rewards.math import math_reward, math_reward_batch, MathVerifier
    math_reward("... 12-3=9. The answer is 9.", "9")                # 1.0
    with MathVerifier(num_workers=2) as verifier:                    # or the shared default one
        rewards, stats = verifier.score(responses, references, timeout_s=5.0)
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import re
import select
import sys
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass

from engine.rewards.math_worker import Worker as _Worker

_BOX_OPEN = re.compile(r"\\(?:boxed|fbox)\s*\{")
_HASHES = re.compile(r"####[ \t]*([^\n]*)")
_ANSWER_IS = re.compile(r"answer\s+is\s*:?", re.IGNORECASE)
_SENTENCE_END = re.compile(r"\.(?=\s|$)")
_COMMA_NUMBER = re.compile(r"[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
MAX_LOGGED_PROBLEMS = 5  # per verifier: crashes / timeouts logged with their answer text
log = logging.getLogger(__name__)


def _matching_braces(text: str) -> dict[int, int]:
    """Map each '{' index to its matching '}' index in one linear pass (``\\{``/``\\}`` skipped)."""
    match: dict[int, int] = {}
    stack: list[int] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch == "\\":
            i += 2
            continue
        if ch == "{":
            stack.append(i)
        elif ch == "}" and stack:
            match[stack.pop()] = i
        i += 1
    return match


def _clean_phrase(answer: str) -> str:
    """Trim a phrase answer: surrounding ``$``/``**``/``\\(\\)``, a trailing period, number commas."""
    answer = answer.strip()
    for _ in range(3):
        before = answer
        answer = answer.strip().rstrip(".").strip()
        for left, right in (("$", "$"), ("**", "**"), ("\\(", "\\)"), ("\\[", "\\]")):
            if answer.startswith(left):
                answer = answer[len(left) :]
            if answer.endswith(right):
                answer = answer[: -len(right)]
        if answer == before:
            break
    answer = answer.strip()
    if _COMMA_NUMBER.fullmatch(answer):
        answer = answer.replace(",", "")
    return answer


def extract_answer(text: str) -> str | None:
    """The final answer in a response or gold solution, or None.

    Order: the last non-empty ``\\boxed{…}``/``\\fbox{…}`` (balanced, nested braces kept), else the
    last ``#### n`` line, else the text after the last "answer is"/"answer is:" up to the end of
    its sentence or line. Phrase and ``####`` answers lose ``$``, a trailing period and number
    commas (``1,000`` -> ``1000``); boxed content is returned as written. Linear time in the text.
    """
    if not isinstance(text, str) or not text:
        return None
    if "box" in text:
        closing = _matching_braces(text)
        for start in reversed([m.end() - 1 for m in _BOX_OPEN.finditer(text)]):
            if start in closing and text[start + 1 : closing[start]].strip():
                return text[start + 1 : closing[start]].strip()
    hashes = list(_HASHES.finditer(text))
    if hashes:
        answer = _clean_phrase(hashes[-1].group(1))
        return answer or None
    phrases = list(_ANSWER_IS.finditer(text))
    if phrases:
        rest = text[phrases[-1].end() :].split("\n", 1)[0]
        end = _SENTENCE_END.search(rest)
        answer = _clean_phrase(rest[: end.start()] if end else rest)
        return answer or None
    return None


def _reference_answer(reference: str, max_answer_chars: int, index: int) -> str:
    """A bare answer is used as is; a gold solution is reduced to its final answer."""
    answer = extract_answer(reference)
    if answer is None:
        answer = _clean_phrase(reference) if isinstance(reference, str) else ""
    if not answer or len(answer) > max_answer_chars:
        raise ValueError(
            f"reference #{index} has no usable final answer (empty, or {len(answer)} chars > "
            f"max_answer_chars={max_answer_chars} with no \\boxed/####/'answer is'): {str(reference)[:120]!r}"
        )
    return answer


@dataclass
class MathRewardStats:
    """Counts for one scored batch; `as_metrics()` gives the ``reward/*`` keys for metrics.jsonl."""

    total: int = 0
    correct: int = 0
    no_answer: int = 0  # no \boxed / #### / "answer is" in the response
    oversized: int = 0  # extracted answer longer than max_answer_chars; not sent to math-verify
    timeouts: int = 0  # math-verify overran timeout_s; its worker was killed and replaced
    errors: int = 0  # a worker crashed or hit its memory/CPU cap mid-answer
    seconds: float = 0.0

    def merge(self, other: MathRewardStats) -> MathRewardStats:
        return MathRewardStats(**{k: v + getattr(other, k) for k, v in asdict(self).items()})

    def as_metrics(self, prefix: str = "reward/") -> dict[str, float]:
        return {f"{prefix}{k}": float(v) for k, v in asdict(self).items()}


class MathVerifier:
    """A pool of math-verify worker processes, safe to call from any thread.

    Concurrent `score` calls are serialised on one lock; the parallelism is across the
    ``num_workers`` processes (started on first use, restarted after a timeout or crash).
    """

    def __init__(
        self,
        num_workers: int | None = None,
        *,
        max_answer_chars: int = 1000,
        worker_memory_bytes: int = 4 << 30,
        startup_timeout_s: float = 120.0,
    ) -> None:
        if num_workers is None:
            num_workers = max(1, min(8, (os.cpu_count() or 2) // 2))
        if num_workers < 1 or max_answer_chars < 1:
            raise ValueError(f"num_workers={num_workers}, max_answer_chars={max_answer_chars}: need >= 1")
        self.num_workers = num_workers
        self.max_answer_chars = max_answer_chars
        self.worker_memory_bytes = worker_memory_bytes
        self.startup_timeout_s = startup_timeout_s
        self._workers: list[_Worker] = []
        self._logged = 0
        self._pid = os.getpid()
        self._lock = threading.Lock()

    def __enter__(self) -> MathVerifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            if self._pid == os.getpid():
                for worker in self._workers:
                    worker.kill()
            self._workers = []

    def score(
        self, responses: list[str], references: list[str], *, timeout_s: float = 5.0
    ) -> tuple[list[float], MathRewardStats]:
        """Rewards (1.0/0.0) for ``responses[i]`` against ``references[i]`` and the batch's counts.

        ``timeout_s`` bounds math-verify's wall time per answer (parse of both sides + verify).
        """
        if len(responses) != len(references):
            raise ValueError(f"{len(responses)} responses but {len(references)} references")
        if not timeout_s > 0:
            raise ValueError(f"timeout_s={timeout_s}: must be > 0")
        start = time.monotonic()
        stats = MathRewardStats(total=len(responses))
        rewards = [0.0] * len(responses)
        golds = [_reference_answer(ref, self.max_answer_chars, i) for i, ref in enumerate(references)]
        jobs: list[tuple[int, str, str]] = []
        for i, response in enumerate(responses):
            pred = extract_answer(response)
            if pred is None:
                stats.no_answer += 1
            elif len(pred) > self.max_answer_chars:
                stats.oversized += 1
            else:
                jobs.append((i, pred, golds[i]))
        if jobs:
            with self._lock:
                self._run(jobs, rewards, stats, timeout_s)
        stats.correct = int(sum(rewards))
        stats.seconds = time.monotonic() - start
        return rewards, stats

    def _run(
        self, jobs: list[tuple[int, str, str]], rewards: list[float], stats: MathRewardStats, timeout_s: float
    ) -> None:
        if self._pid != os.getpid():  # forked: the parent's workers are not ours to use
            self._workers, self._pid = [], os.getpid()
        while len(self._workers) < min(self.num_workers, len(jobs)):
            self._workers.append(_Worker(self.worker_memory_bytes))
        pending = deque(jobs)
        while pending or any(w.job is not None for w in self._workers):
            for w in self._workers:
                if w.ready and w.job is None and pending:
                    i, pred, gold = pending.popleft()
                    try:
                        w.send(i, pred, gold, timeout_s)
                    except OSError:
                        self._replace(w, stats, "errors")
            waiting = [w for w in self._workers if not w.ready or w.job is not None]
            now = time.monotonic()
            deadlines = [w.deadline if w.ready else w.started + self.startup_timeout_s for w in waiting]
            poller = select.poll()  # not select.select: that fails on fds >= 1024 in busy processes
            for w in waiting:
                poller.register(w.fd, select.POLLIN)
            readable = {fd for fd, _ in poller.poll(max(0.0, min(deadlines) - now) * 1e3 + 1)}
            for w in waiting:
                if w.fd in readable:
                    self._receive(w, rewards, stats)
            now = time.monotonic()
            for w in self._workers:
                if not w.ready and now > w.started + self.startup_timeout_s:
                    w.kill()
                    raise RuntimeError(
                        f"math-verify worker did not start within {self.startup_timeout_s} s "
                        f"({sys.executable} loading {_Worker.script()}); see its stderr above"
                    )
                if w.ready and w.job is not None and now > w.deadline:
                    self._replace(w, stats, "timeouts")

    def _receive(self, w: _Worker, rewards: list[float], stats: MathRewardStats) -> None:
        lines = w.read_lines()
        if lines is None:
            if not w.ready:
                raise RuntimeError(
                    f"math-verify worker exited at start-up (code {w.proc.wait()}); see stderr"
                )
            self._replace(w, stats, "errors")
            return
        for line in lines:
            message = json.loads(line)
            if message == "ready":
                w.ready = True
            elif message[0] == w.job:
                rewards[w.job] = 1.0 if message[1] == "correct" else 0.0
                if message[1] == "error":
                    stats.errors += 1
                    self._log(w, "error", message[2] if len(message) > 2 else "unknown")
                w.job = None

    def _log(self, w: _Worker, kind: str, reason: str) -> None:
        if self._logged < MAX_LOGGED_PROBLEMS:
            self._logged += 1
            pred, gold = w.texts
            log.warning("math-verify %s (%d/%d logged): answer %.200r vs reference %.200r: %s", kind, self._logged,
                        MAX_LOGGED_PROBLEMS, pred, gold, reason)

    def _replace(self, w: _Worker, stats: MathRewardStats, counter: str) -> None:
        """Count the lost answer (it scores 0.0), kill the worker and start a fresh one in its place."""
        setattr(stats, counter, getattr(stats, counter) + 1)
        if w.job is not None:
            self._log(w, counter.rstrip("s"), "the worker overran its deadline or died; killed and replaced")
        w.kill()
        self._workers[self._workers.index(w)] = _Worker(self.worker_memory_bytes)


_default: MathVerifier | None = None
_default_lock = threading.Lock()


def default_verifier() -> MathVerifier:
    """The process-wide pool behind `math_reward`/`math_reward_batch` (closed at exit)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = MathVerifier()
            atexit.register(_default.close)
        return _default


def math_reward_batch(
    responses: list[str],
    references: list[str],
    *,
    timeout_s: float = 5.0,
    verifier: MathVerifier | None = None,
) -> tuple[list[float], MathRewardStats]:
    """The loop's entry point: rewards for ``responses[i]`` vs ``references[i]``, plus counts.

    A reference is a bare answer (``"18"``, ``"\\frac{1}{2}"``) or a gold solution, whose final
    answer is extracted first. Pass ``verifier`` to use your own pool instead of the default one.
    """
    return (verifier or default_verifier()).score(responses, references, timeout_s=timeout_s)


def math_reward(response: str, reference: str, *, timeout_s: float = 5.0) -> float:
    """1.0 if the response's final answer equals the reference's (per math-verify), else 0.0."""
    rewards, _ = math_reward_batch([response], [reference], timeout_s=timeout_s)
    return rewards[0]
