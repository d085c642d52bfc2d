"""Drives the gateway with the official `openai` Python SDK, exactly as a user would.

Usage: python openai_client.py BASE_URL API_KEY
Exits non-zero (with the failing assertion) when the gateway's answers do not fit the SDK.
"""
import json
import sys

import openai

base, key = sys.argv[1], sys.argv[2]
client = openai.OpenAI(base_url=base, api_key=key, max_retries=0)

# Non-streaming.
r = client.chat.completions.create(model="auto:free", messages=[{"role": "user", "content": "hello sdk"}])
assert r.object == "chat.completion", r
assert "hello sdk" in r.choices[0].message.content, r
assert r.choices[0].finish_reason == "stop", r
assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens, r.usage
assert r._request_id.startswith("req_"), r._request_id

# The client's own request id, sent as OpenAI takes it, comes back beside the gateway's.
raw = client.chat.completions.with_raw_response.create(
    model="auto:free", messages=[{"role": "user", "content": "traced"}],
    extra_headers={"X-Client-Request-Id": "sdk-trace-42"})
assert raw.headers["x-client-request-id"] == "sdk-trace-42", dict(raw.headers)
assert raw.request_id.startswith("req_") and "traced" in raw.parse().choices[0].message.content

# Streaming with the final usage chunk.
chunks = list(client.chat.completions.create(
    model="auto:free", messages=[{"role": "user", "content": "stream please"}],
    stream=True, stream_options={"include_usage": True}))
text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
assert "stream please" in text, text
assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0, chunks[-1]
assert any(c.choices and c.choices[0].finish_reason == "stop" for c in chunks)

# Streaming without usage: no usage chunk.
chunks = list(client.chat.completions.create(
    model="auto:free", messages=[{"role": "user", "content": "x"}], stream=True))
assert all(c.usage is None for c in chunks), [c.usage for c in chunks]

# Tool calls, streamed: the deltas reassemble into one call.
tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {}}}}]
calls = {}
finish = None
for c in client.chat.completions.create(model="auto:tools", messages=[{"role": "user", "content": "weather?"}], tools=tools, stream=True):
    if not c.choices:
        continue
    for tc in c.choices[0].delta.tool_calls or []:
        entry = calls.setdefault(tc.index, {"name": "", "arguments": ""})
        if tc.function.name:
            entry["name"] = tc.function.name
        entry["arguments"] += tc.function.arguments or ""
    finish = c.choices[0].finish_reason or finish
assert calls == {0: {"name": "get_weather", "arguments": "{}"}}, calls
assert finish == "tool_calls", finish
json.loads(calls[0]["arguments"])

# Non-streaming tool call.
r = client.chat.completions.create(model="auto:tools", messages=[{"role": "user", "content": "weather?"}], tools=tools)
assert r.choices[0].message.tool_calls[0].function.name == "get_weather", r

# Models.
ids = [m.id for m in client.models.list()]
assert "auto:free" in ids and "mock-small" in ids, ids
m = client.models.retrieve("auto:free")
assert m.id == "auto:free" and m.object == "model", m
assert client.models.retrieve("mock-small").id == "mock-small"
try:
    client.models.retrieve("no-such-model")
    raise AssertionError("expected NotFoundError")
except openai.NotFoundError as e:
    assert e.body["code"] == "model_not_found", e.body

# Errors arrive as the SDK's typed exceptions.
try:
    client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    raise AssertionError("expected NotFoundError")
except openai.NotFoundError as e:
    assert e.body["code"] == "model_not_found", e.body
try:
    openai.OpenAI(base_url=base, api_key="sk-wrong", max_retries=0).models.list()
    raise AssertionError("expected AuthenticationError")
except openai.AuthenticationError:
    pass
try:
    client.chat.completions.create(model="mock-error-503", messages=[{"role": "user", "content": "x"}])
    raise AssertionError("expected an APIStatusError")
except openai.APIStatusError as e:
    assert e.status_code == 502, e.status_code

# Embeddings through a group: the SDK asks for base64 by default and accepts float lists too.
e = client.embeddings.create(model="auto:embed", input=["first text", "second text"])
assert [d.index for d in e.data] == [0, 1], e
assert len(e.data[0].embedding) == 8 and e.data[0].embedding != e.data[1].embedding, e
assert abs(sum(x * x for x in e.data[0].embedding) - 1.0) < 1e-3, e.data[0].embedding
assert e.usage.prompt_tokens > 0, e.usage
e = client.embeddings.create(model="mock-embed", input="one", dimensions=3, encoding_format="float")
assert len(e.data[0].embedding) == 3, e
try:
    client.embeddings.create(model="auto:free", input="x")
    raise AssertionError("expected BadRequestError")
except openai.BadRequestError as e:
    assert "no embeddings models" in e.body["message"], e.body

# Anthropic and Gemini answers, translated by their adapters: plain, streamed, tool calls.
for model in ["mock-claude", "mock-gemini"]:
    r = client.chat.completions.create(model=model, messages=[
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": f"hello {model}"}])
    assert f"hello {model}" in r.choices[0].message.content, (model, r)
    assert r.choices[0].finish_reason == "stop", (model, r)
    assert r.usage.prompt_tokens > 0 and r.usage.completion_tokens > 0, (model, r.usage)
    chunks = list(client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": f"stream {model}"}],
        stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert f"stream {model}" in text, (model, text)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0, (model, chunks[-1])
    r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "weather?"}], tools=tools)
    assert r.choices[0].message.tool_calls[0].function.name == "get_weather", (model, r)
    assert r.choices[0].finish_reason == "tool_calls", (model, r)
    calls = {}
    for c in client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "weather?"}], tools=tools, stream=True):
        for tc in (c.choices[0].delta.tool_calls or []) if c.choices else []:
            entry = calls.setdefault(tc.index, {"name": "", "arguments": ""})
            entry["name"] += tc.function.name or ""
            entry["arguments"] += tc.function.arguments or ""
    assert calls[0]["name"] == "get_weather" and json.loads(calls[0]["arguments"]) == {}, (model, calls)

print("openai-sdk: all checks passed")
