#!/usr/bin/env python3
"""pyref.py: a second reference for the chat-template fixtures, Python Jinja2 set up as Hugging Face
transformers' apply_chat_template sets it up (ImmutableSandboxedEnvironment, trim_blocks, lstrip_blocks,
loopcontrols, tojson = json.dumps(ensure_ascii=False), raise_exception, strftime_now).

For every fixture line it renders the same normalized conversation and, where Python's output differs
from @huggingface/jinja's "expected", adds "python": <Python's output> to the line (or "python_error").
Lines where both agree are left unchanged, so the fixtures stay small.

Usage: python3 pyref.py FIXTURE.jsonl TEMPLATE.json [--check]
  without --check: rewrites FIXTURE.jsonl in place;
  with --check: exits 1 if the file would change.
"""
import json
import sys
from datetime import datetime

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

IMAGE_KINDS = {"image", "image_url", "image_ref", "image_embeds", "embedding"}


def raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def strftime_now(fmt):
    return datetime.now().strftime(fmt)


def environment():
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env


def normalize(messages):
    """Mirror of gen.mjs normalize(): what the template sees."""
    out = []
    for m in messages:
        o = {"role": m["role"]}
        c = m.get("content")
        if isinstance(c, str):
            o["content"] = c
        else:
            o["content"] = [
                {"type": "image"} if p["type"] in IMAGE_KINDS else {"type": "text", "text": p.get("text", "")}
                for p in (c or [])
            ]
        for k in ("name", "tool_call_id"):
            if m.get(k):
                o[k] = m[k]
        if "reasoning_content" in m:
            o["reasoning_content"] = m["reasoning_content"]
        if m.get("tool_calls"):
            o["tool_calls"] = [
                {"id": t["id"], "type": t["type"], "function": {"name": t["function"]["name"], "arguments": t["function"]["arguments"]}}
                for t in m["tool_calls"]
            ]
        out.append(o)
    return out


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    fixture, template_path = sys.argv[1], sys.argv[2]
    check = "--check" in sys.argv[3:]
    with open(template_path, encoding="utf-8") as f:
        src = json.load(f)["chat_template"]
    tmpl = environment().from_string(src)
    lines_in = open(fixture, encoding="utf-8").read().rstrip("\n").split("\n")
    lines_out = []
    differ = 0
    for line in lines_in:
        case = json.loads(line)
        case.pop("python", None)
        case.pop("python_error", None)
        opts = case["options"]
        ctx = {
            "messages": normalize(case["messages"]),
            "tools": opts.get("tools"),
            "add_generation_prompt": opts["add_generation_prompt"],
            "add_vision_id": opts.get("add_vision_id", False),
        }
        ctx.update(opts.get("vars", {}))
        try:
            got = tmpl.render(**ctx)
            if got != case.get("expected"):
                case["python"] = got
                differ += 1
        except Exception as e:  # noqa: BLE001 - any template failure is recorded, not raised
            if "error" not in case:
                case["python_error"] = str(e)
                differ += 1
        lines_out.append(json.dumps(case, ensure_ascii=False, separators=(",", ":")) if ("python" in case or "python_error" in case) else line)
    text = "\n".join(lines_out) + "\n"
    if check:
        if open(fixture, encoding="utf-8").read() != text:
            print(f"{fixture}: Python reference annotations are stale", file=sys.stderr)
            sys.exit(1)
    else:
        with open(fixture, "w", encoding="utf-8") as f:
            f.write(text)
    print(f"{fixture}: {len(lines_in)} cases, {differ} where Python Jinja2 {jinja2.__version__} differs from @huggingface/jinja")


if __name__ == "__main__":
    main()
