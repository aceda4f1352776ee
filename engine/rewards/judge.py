"""LLM-as-a-judge reward through any OpenAI-compatible chat-completions endpoint.

    judge = Judge(JudgeConfig(base_url="http://127.0.0.1:8000/v1", model="judge"))
    result = judge.score(prompts, responses)          # pointwise: "[[8]]" -> 8.0
    result.scores        # list[float | None]: None where the judgement failed after retries
    result.failures      # how many failed (log as reward/failures); they are dropped, never scored 0
    prefs = judge.compare(prompts, responses_a, responses_b)   # pairwise: "[[A]]" -> 1.0, "[[B]]" -> 0.0

`vllm serve JUDGE_MODEL` is such an endpoint, and so is any hosted API. The request is a plain
`POST {base_url}/chat/completions` with one user message rendered from a template. The client is
stdlib only (urllib and a thread pool), so it adds no dependency and runs from any thread.

Failure handling. A request that times out, cannot connect, is cut off mid-reply, gets HTTP 429 or 5xx, or gets a reply
with no parseable verdict is retried up to `max_retries` times, with exponential backoff and
jitter. A judgement that still fails is `None` and counted in `failures`: the trainer drops those
samples instead of scoring them 0, which would teach the policy that the judge's outage was its
fault. Answers that no retry can fix stop the call with `JudgeError` carrying the server's own
message: HTTP 401/403 (the key), 404 (the URL or model name), and a reply that is JSON but not a
chat completion (not an OpenAI-compatible endpoint). Otherwise a misconfigured judge would make a
run drop every sample and train on nothing for as long as it runs. Other 4xx answers (e.g. 400
for one over-long request) fail that judgement only, without retries.

`JudgeConfig` is the one judge configuration: a pydantic model that engine/config.py uses as the
`judge:` section of a task, so every field below is settable from YAML and checked at load time.

The API key is read from the environment variable named by `api_key_env` when the request is
sent. It is never stored on the object, never put in an error message, and never logged.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from string import Formatter
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

POINTWISE_TEMPLATE = (
    "Please act as an impartial judge and rate the response to the user's request below on a scale "
    "of 1 to 10. Give a short explanation, then your rating in the form [[rating]], e.g. [[5]].\n\n"
    "[Request]\n{prompt}\n\n[Response]\n{response}"
)
PAIRWISE_TEMPLATE = (
    "Please act as an impartial judge and decide which of two responses answers the user's request "
    "better. Give a short explanation, then your verdict: [[A]] if A is better, [[B]] if B is better, "
    "[[C]] for a tie.\n\n[Request]\n{prompt}\n\n[Response A]\n{response_a}\n\n[Response B]\n{response_b}"
)
_SCORE = re.compile(r"\[\[\s*(-?\d+(?:\.\d+)?)\s*\]\]")
_VERDICT = re.compile(r"\[\[\s*([ABC])\s*\]\]")
_RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


_FATAL_STATUS = {401: "Unauthorized", 403: "Forbidden", 404: "Not Found"}


def _fields(template: str) -> set[str]:
    return {name for _, name, _, _ in Formatter().parse(template) if name is not None}


class JudgeConfig(BaseModel):
    """An OpenAI-compatible judge endpoint and how it is asked (YAML: a task's `judge:` section)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    base_url: str  # e.g. "http://127.0.0.1:8000/v1"
    model: str
    api_key_env: str | None = None  # name of the environment variable holding the key (never the key)
    pointwise_template: str = POINTWISE_TEMPLATE  # fields: {prompt}, {response}
    pairwise_template: str = PAIRWISE_TEMPLATE  # fields: {prompt}, {response_a}, {response_b}
    score_range: tuple[float, float] = (1.0, 10.0)  # a parsed score outside it is a parse failure
    max_concurrency: int = Field(8, ge=1)
    timeout_s: float = Field(60.0, gt=0.0)
    max_retries: int = Field(3, ge=0)
    backoff_s: float = Field(0.5, ge=0.0)  # first retry waits ~backoff_s, then doubles (with jitter)
    max_tokens: int = Field(512, ge=1)
    temperature: float = Field(0.0, ge=0.0)
    extra_body: dict[str, Any] = {}  # merged into every request, e.g. vLLM's {"structured_outputs": {...}}

    @model_validator(mode="after")
    def _check(self) -> JudgeConfig:
        lo, hi = self.score_range
        if not lo < hi:
            raise ValueError(f"score_range {list(self.score_range)}: needs low < high")
        for key, allowed in (("pointwise_template", {"prompt", "response"}),
                             ("pairwise_template", {"prompt", "response_a", "response_b"})):
            found = _fields(getattr(self, key))
            if found != allowed:
                raise ValueError(f"{key}: fields {sorted(found)}, expected exactly {sorted(allowed)} "
                                 "(literal braces are doubled: {{ }})")
        return self


class JudgeError(RuntimeError):
    """The judge endpoint answered in a way no retry can fix; carries the server's message."""


@dataclass
class JudgeResult:
    scores: list[float | None]  # None: failed after retries (dropped, counted)
    failures: int = 0
    retries: int = 0
    errors: dict[str, int] = field(default_factory=dict)  # failure kind -> count (for logs)


class _Retryable(Exception):
    pass


class _Fatal(Exception):
    pass


def parse_score(text: str, score_range: tuple[float, float] = (1.0, 10.0)) -> float | None:
    """The last `[[x]]` in a pointwise verdict, if it lies in `score_range`."""
    found = _SCORE.findall(text)
    if not found:
        return None
    value = float(found[-1])
    return value if score_range[0] <= value <= score_range[1] else None


def parse_preference(text: str) -> float | None:
    """Pairwise verdict: [[A]] -> 1.0, [[B]] -> 0.0, [[C]] (tie) -> 0.5; the last one counts."""
    found = _VERDICT.findall(text)
    return {"A": 1.0, "B": 0.0, "C": 0.5}[found[-1]] if found else None


class _Stop(Exception):  # becomes JudgeError in the caller's thread
    pass


class Judge:
    def __init__(self, cfg: JudgeConfig):
        if cfg.api_key_env is not None and not os.environ.get(cfg.api_key_env):
            raise ValueError(f"judge api_key_env={cfg.api_key_env!r}: that environment variable is not set")
        self.cfg = cfg
        self._lock = threading.Lock()

    def __repr__(self) -> str:  # the config holds no secret, but keep the repr short
        return f"Judge(base_url={self.cfg.base_url!r}, model={self.cfg.model!r})"

    # -- public ------------------------------------------------------------------------------

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> JudgeResult:
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        messages = [self.cfg.pointwise_template.format(prompt=p, response=r) for p, r in zip(prompts, responses, strict=True)]
        return self._run(messages, lambda text: parse_score(text, self.cfg.score_range))

    def compare(self, prompts: Sequence[str], responses_a: Sequence[str], responses_b: Sequence[str]) -> JudgeResult:
        if not len(prompts) == len(responses_a) == len(responses_b):
            raise ValueError("compare needs as many responses A and B as prompts")
        messages = [self.cfg.pairwise_template.format(prompt=p, response_a=a, response_b=b)
                    for p, a, b in zip(prompts, responses_a, responses_b, strict=True)]
        return self._run(messages, parse_preference)

    # -- internals ---------------------------------------------------------------------------

    def _run(self, messages: list[str], parse) -> JudgeResult:
        result = JudgeResult(scores=[None] * len(messages))
        if not messages:
            return result
        pool = ThreadPoolExecutor(max_workers=min(self.cfg.max_concurrency, len(messages)))
        try:
            futures = [pool.submit(self._judge_one, m, parse, result) for m in messages]
            for i, f in enumerate(futures):
                result.scores[i] = f.result()
        except _Stop as e:
            pool.shutdown(wait=True, cancel_futures=True)
            raise JudgeError(f"judge {self.cfg.base_url} (model {self.cfg.model!r}): {e}; not retried, as no retry "
                             "can fix it: check judge.base_url, judge.model and judge.api_key_env") from None
        finally:
            pool.shutdown(wait=True)
        result.failures = sum(s is None for s in result.scores)
        return result

    def _count(self, result: JudgeResult, key: str, retry: bool) -> None:
        with self._lock:
            if retry:
                result.retries += 1
            else:
                result.errors[key] = result.errors.get(key, 0) + 1

    def _judge_one(self, message: str, parse, result: JudgeResult) -> float | None:
        cfg = self.cfg
        last = "unknown"
        for attempt in range(cfg.max_retries + 1):
            if attempt:
                self._count(result, last, retry=True)
                time.sleep(cfg.backoff_s * 2 ** (attempt - 1) * (0.5 + random.random()))
            try:
                text = self._request(message)
            except _Fatal as e:
                self._count(result, str(e), retry=False)
                return None
            except _Retryable as e:
                last = str(e)
                continue
            value = parse(text)
            if value is not None:
                return value
            last = "unparseable verdict"
        self._count(result, last, retry=False)
        return None

    def _request(self, message: str) -> str:
        cfg = self.cfg
        body = {"model": cfg.model, "messages": [{"role": "user", "content": message}],
                "max_tokens": cfg.max_tokens, "temperature": cfg.temperature, **cfg.extra_body}
        headers = {"Content-Type": "application/json"}
        if cfg.api_key_env is not None:
            headers["Authorization"] = "Bearer " + os.environ.get(cfg.api_key_env, "")
        req = urllib.request.Request(cfg.base_url.rstrip("/") + "/chat/completions", data=json.dumps(body).encode(),
                                     headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=cfg.timeout_s) as resp:
                payload = json.loads(resp.read())
        except urllib.error.HTTPError as e:  # the message names the status only, never the headers
            if e.code in _RETRY_STATUS:
                raise _Retryable(f"HTTP {e.code}") from None
            if e.code in _FATAL_STATUS:
                raise _Stop(f"HTTP {e.code} {_FATAL_STATUS[e.code]}: {self._server_message(e)}") from None
            raise _Fatal(f"HTTP {e.code}") from None
        except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise _Retryable(f"connection: {type(reason).__name__}") from None
        except http.client.HTTPException as e:  # e.g. IncompleteRead: the server died mid-reply
            raise _Retryable(f"connection: {type(e).__name__}") from None
        except ValueError:  # JSONDecodeError, or bytes that are not UTF-8
            raise _Retryable("invalid JSON reply") from None
        try:
            return payload["choices"][0]["message"]["content"] or ""
        except (KeyError, IndexError, TypeError):
            raise _Stop(f"a reply without choices[0].message.content (not an OpenAI chat-completions reply): "
                        f"{self._redact(json.dumps(payload)[:300])}") from None

    def _redact(self, text: str) -> str:
        key = os.environ.get(self.cfg.api_key_env, "") if self.cfg.api_key_env else ""
        return text.replace(key, "***") if key else text

    def _server_message(self, e: urllib.error.HTTPError) -> str:
        """The server's own explanation: OpenAI-style {"error": {"message"}} or the body's start."""
        try:
            body = e.read().decode("utf-8", "replace")
        except OSError:
            return "(no body)"
        try:
            err = json.loads(body).get("error", body)
            text = err.get("message", json.dumps(err)) if isinstance(err, dict) else str(err)
        except (ValueError, AttributeError):
            text = body
        return self._redact(" ".join(text.split())[:300]) or "(empty body)"


