"""Token logprobs through the OpenAI-compatible client (the shape vLLM's server returns), against a
stand-in server on 127.0.0.1; requests without logprobs keep their earlier cache keys."""
from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from datagen.inference.base import Request, SamplingParams
from datagen.inference.openai_client import OpenAIEndpointLLM


class LogprobServer(BaseHTTPRequestHandler):
    bodies: list = []

    def do_POST(self):  # noqa: N802 - http.server API
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).bodies.append(body)
        usage = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
        if self.path.endswith("/chat/completions"):
            logprobs = {"content": [{"token": " 3", "logprob": -0.1, "bytes": None,
                                     "top_logprobs": [{"token": " 3", "logprob": -0.1, "bytes": None},
                                                      {"token": " 4", "logprob": -2.4, "bytes": None}]}]}
            choice = {"index": 0, "finish_reason": "stop", "logprobs": logprobs if body.get("logprobs") else None,
                      "message": {"role": "assistant", "content": " 3"}}
            reply = {"id": "x", "object": "chat.completion", "created": 0, "model": "m", "choices": [choice],
                     "usage": usage}
        else:
            logprobs = {"tokens": [" ", "3"], "token_logprobs": [-0.01, -0.2], "text_offset": [0, 1],
                        "top_logprobs": [{" ": -0.01}, {"3": -0.2, "2": -1.8}]}
            choice = {"index": 0, "finish_reason": "stop", "text": " 3",
                      "logprobs": logprobs if body.get("logprobs") else None}
            reply = {"id": "x", "object": "text_completion", "created": 0, "model": "m", "choices": [choice],
                     "usage": usage}
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def client():
    LogprobServer.bodies = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), LogprobServer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    llm = OpenAIEndpointLLM(f"http://127.0.0.1:{server.server_port}/v1", "m")
    yield llm
    llm.close()
    server.shutdown()


def test_completion_and_chat_logprobs_are_read(client):
    completion, chat, plain = client.generate([
        Request(prompt="Accuracy:", params=SamplingParams(logprobs=5)),
        Request.chat("grade it", params=SamplingParams(logprobs=5)),
        Request(prompt="Accuracy:")])
    assert completion.logprobs == [[{"token": " ", "logprob": -0.01, "top": {" ": -0.01}},
                                    {"token": "3", "logprob": -0.2, "top": {"3": -0.2, "2": -1.8}}]]
    assert chat.logprobs == [[{"token": " 3", "logprob": -0.1, "top": {" 3": -0.1, " 4": -2.4}}]]
    assert plain.logprobs is None
    prompts = sorted((b for b in LogprobServer.bodies if "prompt" in b), key=lambda b: "logprobs" in b)
    chats = [b for b in LogprobServer.bodies if "messages" in b]
    assert "logprobs" not in prompts[0] and prompts[1]["logprobs"] == 5  # completions API: an int
    assert (chats[0]["logprobs"], chats[0]["top_logprobs"]) == (True, 5)  # chat API: a flag and a count


def test_requests_without_logprobs_keep_their_cache_keys():
    params = SamplingParams(n=2, seed=3)
    assert set(params.to_dict()) == {"n", "max_tokens", "temperature", "top_p", "seed", "stop"}
    assert SamplingParams(logprobs=8).to_dict()["logprobs"] == 8
    payload = json.dumps(["m", (("user", "q"),), None, params.to_dict()], ensure_ascii=False, sort_keys=True)
    assert Request.chat("q", params=params).cache_key("m") == hashlib.sha256(payload.encode()).hexdigest()
