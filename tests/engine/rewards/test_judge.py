"""The LLM judge client against real HTTP servers on loopback.

A small stdlib server with scripted behaviour (failures, slow replies, garbage) checks retries,
timeouts, the concurrency bound and the API-key handling. A real vLLM OpenAI server on the seed model
checks the protocol end to end, and that a server dying mid-run is counted, not fatal.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from engine.rewards.judge import Judge, JudgeConfig, JudgeError, parse_preference, parse_score


def test_parsers():
    assert parse_score("Fine. Rating: [[8]]") == 8.0
    assert parse_score("[[3]] no wait [[ 7.5 ]]") == 7.5  # the last verdict counts
    assert parse_score("[[11]]") is None and parse_score("eight") is None and parse_score("[8]") is None
    assert parse_score("[[0]]", (0.0, 1.0)) == 0.0
    assert parse_preference("A is better. [[A]]") == 1.0
    assert parse_preference("[[A]] ... on reflection [[B]]") == 0.0
    assert parse_preference("[[C]]") == 0.5 and parse_preference("A") is None


class _Script:
    """What the scripted server does: per request, pick a behaviour from the message text."""

    def __init__(self):
        self.lock = threading.Lock()
        self.active = 0
        self.max_active = 0
        self.calls: dict[str, int] = {}
        self.auth: list[str | None] = []


def _serve(script: _Script):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            msg = body["messages"][0]["content"]
            with script.lock:
                n = script.calls[msg] = script.calls.get(msg, 0) + 1
            if "slow" in msg and n == 1:  # outlives the client's timeout; not counted as active, as
                time.sleep(1.5)  # the client has given up on it and may send its retry meanwhile
            with script.lock:
                script.active += 1
                script.max_active = max(script.max_active, script.active)
                script.auth.append(self.headers.get("Authorization"))
            try:
                time.sleep(0.05)
                if "flaky" in msg and n <= 2:
                    return self._reply(503, {"error": "overloaded"})
                if "bad-request" in msg:
                    return self._reply(400, {"error": "bad"})
                if "unauthorized" in msg:  # what OpenAI-compatible servers answer (the key is echoed masked)
                    return self._reply(401, {"error": {"message": "Incorrect API key provided: sk-secret-123",
                                                       "type": "invalid_request_error"}})
                if "forbidden" in msg:
                    return self._reply(403, {"detail": "project has no access"})
                if "no-model" in msg:
                    return self._reply(404, {"error": {"message": "The model `m` does not exist."}})
                if "schema" in msg:
                    return self._reply(200, {"result": "[[7]]"})
                if "cut-off" in msg and n == 1:  # promise a body, send half of it, hang up
                    self.send_response(200)
                    self.send_header("Content-Length", "500")
                    self.end_headers()
                    self.wfile.write(b'{"choices": [')
                    self.wfile.flush()
                    self.close_connection = True
                    return None
                text = "no verdict here" if "garbage" in msg else "Looks fine. [[7]]"
                self._reply(200, {"choices": [{"message": {"role": "assistant", "content": text}}]})
            finally:
                with script.lock:
                    script.active -= 1

        def _reply(self, code, obj):
            data = json.dumps(obj).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def scripted():
    script = _Script()
    server = _serve(script)
    yield script, f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()


def test_retries_timeouts_concurrency_and_failures(scripted, monkeypatch):
    script, url = scripted
    monkeypatch.setenv("JUDGE_TEST_KEY", "sk-secret-123")
    judge = Judge(JudgeConfig(base_url=url, model="m", api_key_env="JUDGE_TEST_KEY", max_concurrency=3,
                              timeout_s=0.5, max_retries=2, backoff_s=0.01,
                              pointwise_template="{prompt}|{response}"))
    prompts = [f"p{i}" for i in range(12)]
    responses = ["ok"] * 7 + ["cut-off", "flaky", "slow", "garbage", "bad-request"]
    result = judge.score(prompts, responses)
    assert result.scores[:8] == [7.0] * 8
    assert script.calls["p7|cut-off"] == 2  # a reply cut off mid-body is retried, not raised
    assert result.scores[8] == 7.0 and script.calls["p8|flaky"] == 3  # two 503s, then success
    assert result.scores[9] == 7.0 and script.calls["p9|slow"] == 2  # timed out once, then success
    assert result.scores[10] is None and script.calls["p10|garbage"] == 3  # unparseable: retried, dropped
    assert result.scores[11] is None and script.calls["p11|bad-request"] == 1  # 4xx: not retried
    assert result.failures == 2 and result.retries == 1 + 2 + 1 + 2
    assert result.errors == {"unparseable verdict": 1, "HTTP 400": 1}
    assert script.max_active <= 3
    assert set(script.auth) == {"Bearer sk-secret-123"}
    assert "sk-secret" not in repr(judge) + repr(result) + repr(judge.cfg)


@pytest.mark.parametrize("kind, why", [
    ("unauthorized", "HTTP 401 Unauthorized: Incorrect API key provided: ***"),
    ("forbidden", 'HTTP 403 Forbidden: {"detail": "project has no access"}'),
    ("no-model", "HTTP 404 Not Found: The model `m` does not exist."),
    ("schema", 'a reply without choices[0].message.content (not an OpenAI chat-completions reply): {"result": "[[7]]"}'),
])  # fmt: skip
def test_answers_no_retry_can_fix_stop_the_call(scripted, monkeypatch, kind, why):
    script, url = scripted
    monkeypatch.setenv("JUDGE_TEST_KEY", "sk-secret-123")
    judge = Judge(JudgeConfig(base_url=url, model="m", api_key_env="JUDGE_TEST_KEY", max_concurrency=2,
                              max_retries=3, backoff_s=0.01, pointwise_template="{prompt}|{response}"))
    with pytest.raises(JudgeError) as err:
        judge.score([f"p{i}" for i in range(8)], [kind] * 8)
    assert str(err.value) == (f"judge {url} (model 'm'): {why}; not retried, as no retry can fix it: check "
                              "judge.base_url, judge.model and judge.api_key_env")
    assert all(n == 1 for n in script.calls.values()) and len(script.calls) <= 8  # no retries
    assert "sk-secret" not in str(err.value)


def test_config_is_validated_at_load_time():
    from pydantic import ValidationError

    cfg = JudgeConfig.model_validate({"base_url": "http://x/v1", "model": "m", "temperature": 0.7,
                                      "score_range": [0, 5], "extra_body": {"top_k": 5}})
    assert (cfg.temperature, cfg.score_range, cfg.extra_body) == (0.7, (0.0, 5.0), {"top_k": 5})
    for bad, why in (({"score_range": [5, 1]}, "needs low < high"), ({"max_concurrency": 0}, "max_concurrency"),
                     ({"pointwise_template": "Rate {response}"}, r"fields \['response'\], expected exactly"),
                     ({"temprature": 1.0}, "temprature")):
        with pytest.raises(ValidationError, match=why):
            JudgeConfig.model_validate({"base_url": "http://x/v1", "model": "m", **bad})


def test_missing_key_variable_is_a_clear_error():
    with pytest.raises(ValueError, match="NO_SUCH_JUDGE_KEY"):
        Judge(JudgeConfig(base_url="http://127.0.0.1:9/v1", model="m", api_key_env="NO_SUCH_JUDGE_KEY"))


def test_unreachable_server_counts_failures():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    judge = Judge(JudgeConfig(base_url=f"http://127.0.0.1:{port}/v1", model="m", max_retries=1, backoff_s=0.01))
    result = judge.compare(["p"] * 3, ["a"] * 3, ["b"] * 3)
    assert result.scores == [None] * 3 and result.failures == 3 and result.retries == 3


# -- a real vLLM OpenAI-compatible server on the seed model ---------------------------------------

CHAT_TEMPLATE = "{{ bos_token }}{% for m in messages %}{{ m['content'] }}{% endfor %}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def vllm_server(seed_model, tmp_path_factory):
    template = tmp_path_factory.mktemp("judge") / "template.jinja"
    template.write_text(CHAT_TEMPLATE)
    port = _free_port()
    env = {**os.environ, "VLLM_LOGGING_LEVEL": "ERROR", "VLLM_CPU_KVCACHE_SPACE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(seed_model),
         "--served-model-name", "judge", "--host", "127.0.0.1", "--port", str(port), "--max-model-len", "512",
         "--chat-template", str(template), "--dtype", "float32", "--no-enable-chunked-prefill",
         "--max-num-seqs", "16"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 240
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"vLLM server exited: {proc.stderr.read().decode()[-3000:]}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            time.sleep(1)
    else:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("vLLM server did not become healthy in 240 s")
    yield proc, url + "/v1"
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _vllm_judge(url: str, **kw) -> Judge:
    # The seed model is no judge: vLLM's structured outputs force its reply into the verdict form,
    # so what is under test is the protocol, parsing and concurrency, not the verdicts.
    return Judge(JudgeConfig(base_url=url, model="judge", max_tokens=8, max_concurrency=4,
                             extra_body={"structured_outputs": {"regex": r"\[\[[1-9]\]\]"}},
                             pointwise_template="Q: {prompt}\nA:{response}\nRating: ", **kw))


@pytest.mark.slow
def test_real_vllm_server_pointwise_and_death_mid_run(vllm_server):
    proc, url = vllm_server
    judge = _vllm_judge(url)
    result = judge.score(["Ann has 2 apples."] * 6, [" 2+1=3. The answer is 3."] * 6)
    assert result.failures == 0 and all(s is not None and 1.0 <= s <= 9.0 for s in result.scores)

    # Kill the server while a run is in flight (after its 5th answer): the judgements after its
    # death fail after their retries, are counted, and the call returns normally.
    class KillsServer(Judge):
        answered = 0

        def _request(self, message):
            text = super()._request(message)
            with self._lock:
                KillsServer.answered += 1
                if KillsServer.answered == 5:
                    os.killpg(proc.pid, signal.SIGKILL)
            return text

    dying = KillsServer(JudgeConfig(**{**judge.cfg.__dict__, "max_concurrency": 2, "max_retries": 1,
                                       "backoff_s": 0.05, "timeout_s": 10.0}))
    result = dying.score([f"Q{i}" for i in range(40)], ["x"] * 40)
    proc.wait(timeout=30)
    assert 5 <= 40 - result.failures < 40
    assert result.failures == sum(s is None for s in result.scores)
    assert all(s is None or 1.0 <= s <= 9.0 for s in result.scores)
    assert sum(result.errors.values()) == result.failures
