"""Talks to a `largo serve` through the official `openai` client, as a user switching servers
would, and prints what it saw as one JSON object (the Rust test crates/largo-cli/tests/serve.rs
checks it). Usage: python3 tools/openai_client_check.py BASE_URL MODEL
"""
import json
import sys

import openai


def main():
    base, model = sys.argv[1], sys.argv[2]
    client = openai.OpenAI(base_url=base, api_key="unused")
    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": "hello there"}]
    plain = client.chat.completions.create(model=model, messages=messages, temperature=0,
                                           max_tokens=12)
    chunks = client.chat.completions.create(model=model, messages=messages, temperature=0,
                                            max_tokens=12, stream=True,
                                            stream_options={"include_usage": True})
    streamed, finish, usage = "", None, None
    for c in chunks:
        if c.choices:
            streamed += c.choices[0].delta.content or ""
            finish = c.choices[0].finish_reason or finish
        if c.usage:
            usage = c.usage.completion_tokens
    errors = []
    for bad in ({"messages": [{"role": "wizard", "content": "hi"}]},
                {"messages": messages, "n": 2}):
        try:
            client.chat.completions.create(model=model, **bad)
            errors.append(None)
        except openai.BadRequestError as e:
            errors.append({"status": e.status_code, "param": e.body.get("param")})
    try:
        client.chat.completions.create(model="nope", messages=messages)
        missing = None
    except openai.NotFoundError as e:
        missing = e.status_code
    # Structured output and a required tool call: random weights may run out of tokens, so a
    # few seeds are tried; what stops must parse.
    schema = {"type": "object", "additionalProperties": False, "required": ["answer"],
              "properties": {"answer": {"type": "string", "enum": ["yes", "no"]}}}
    structured = None
    for seed in range(6):
        r = client.chat.completions.create(
            model=model, messages=messages, temperature=1.0, seed=seed, max_tokens=48,
            response_format={"type": "json_schema",
                             "json_schema": {"name": "answer", "schema": schema}})
        if r.choices[0].finish_reason == "stop":
            structured = json.loads(r.choices[0].message.content)
            break
    tool = {"type": "function", "function": {
        "name": "get_weather", "parameters": {
            "type": "object", "additionalProperties": False, "required": ["city"],
            "properties": {"city": {"type": "string", "enum": ["Paris", "Rome"]}}}}}
    call = None
    for seed in range(6):
        r = client.chat.completions.create(model=model, messages=messages, temperature=1.0,
                                           seed=seed, max_tokens=64, tools=[tool],
                                           tool_choice="required")
        if r.choices[0].finish_reason == "tool_calls":
            c = r.choices[0].message.tool_calls[0]
            call = {"name": c.function.name, "arguments": json.loads(c.function.arguments)}
            break
    listed = [m.id for m in client.models.list()]
    print(json.dumps({
        "plain": plain.choices[0].message.content,
        "plain_finish": plain.choices[0].finish_reason,
        "plain_tokens": plain.usage.completion_tokens,
        "streamed": streamed, "streamed_finish": finish, "streamed_tokens": usage,
        "errors": errors, "missing_model": missing, "models": listed,
        "structured": structured, "call": call,
    }))


if __name__ == "__main__":
    main()
