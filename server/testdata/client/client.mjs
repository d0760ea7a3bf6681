// Drives a running `qvl serve` (the built-in demo model and catalog) with the official openai
// npm package, as a real client would: chat and text completions, streaming and not, an image
// by id, logprobs, n with seeds, and the errors the client maps from HTTP statuses.
//
//   QVL_URL=http://127.0.0.1:8000 node client.mjs          # the checks
//   QVL_URL=http://127.0.0.1:8000 node client.mjs drain    # one long stream (run.sh sends SIGTERM meanwhile)
import assert from "node:assert/strict";
import OpenAI from "openai";

const base = process.env.QVL_URL;
if (!base) {
  console.error("set QVL_URL to the server's address");
  process.exit(2);
}
const client = new OpenAI({ baseURL: `${base}/v1`, apiKey: process.env.QVL_API_KEY ?? "unused", maxRetries: 0, timeout: 60_000 });
const model = process.env.QVL_MODEL ?? "qvl-demo";
const image = { type: "image_ref", image_ref: { id: "demo-7" } };
const ask = (text, parts = []) => [{ role: "user", content: [...parts, { type: "text", text }] }];

async function drain() {
  // One long stream: run.sh sends SIGTERM after the first chunk; the drain must let it finish.
  const stream = await client.chat.completions.create({
    model, messages: ask("Tell me everything.", [image]), max_tokens: 64, temperature: 0, ignore_eos: true, stream: true,
  });
  let chunks = 0;
  let finish = null;
  for await (const chunk of stream) {
    if (chunks++ === 1) console.log("started");
    for (const c of chunk.choices) finish = c.finish_reason ?? finish;
  }
  assert.equal(finish, "length");
  console.log(`drained: ${chunks} chunks, finish_reason ${finish}`);
}

const checks = [];
const check = (name, fn) => checks.push([name, fn]);

check("models", async () => {
  const list = await client.models.list();
  const ids = list.data.map((m) => m.id);
  assert.deepEqual(ids, [model]);
  assert.equal(list.data[0].object, "model");
});

check("chat, not streaming, with an image by id", async () => {
  const r = await client.chat.completions.create({ model, messages: ask("Describe this item.", [image]), max_tokens: 16, temperature: 0 });
  assert.match(r.id, /^chatcmpl-/);
  assert.equal(r.object, "chat.completion");
  assert.equal(r.model, model);
  assert.equal(r.choices.length, 1);
  const c = r.choices[0];
  assert.equal(c.index, 0);
  assert.equal(c.message.role, "assistant");
  assert.equal(typeof c.message.content, "string");
  assert.ok(["stop", "length"].includes(c.finish_reason));
  assert.ok(r.usage.prompt_tokens > 4, "the image adds its tokens to the prompt");
  assert.equal(r.usage.total_tokens, r.usage.prompt_tokens + r.usage.completion_tokens);
  // Another item makes another prompt.
  const other = await client.chat.completions.create({
    model, messages: ask("Describe this item.", [{ type: "image_ref", image_ref: { id: "demo-8" } }]), max_tokens: 16, temperature: 0, ignore_eos: true,
  });
  const same = await client.chat.completions.create({ model, messages: ask("Describe this item.", [image]), max_tokens: 16, temperature: 0, ignore_eos: true });
  assert.notEqual(other.choices[0].message.content, same.choices[0].message.content);
});

check("chat streaming equals not streaming", async () => {
  const body = { model, messages: ask("Count to ten.", [image]), max_tokens: 20, temperature: 0, ignore_eos: true };
  const whole = await client.chat.completions.create(body);
  const stream = await client.chat.completions.create({ ...body, stream: true, stream_options: { include_usage: true } });
  let text = "";
  let finish = null;
  let usage = null;
  let first = true;
  for await (const chunk of stream) {
    assert.equal(chunk.object, "chat.completion.chunk");
    if (chunk.usage) usage = chunk.usage;
    for (const c of chunk.choices) {
      if (first) {
        assert.equal(c.delta.role, "assistant");
        first = false;
      }
      text += c.delta.content ?? "";
      finish = c.finish_reason ?? finish;
    }
  }
  assert.equal(text, whole.choices[0].message.content);
  assert.equal(finish, "length");
  assert.equal(usage.completion_tokens, 20);
  assert.equal(usage.prompt_tokens, whole.usage.prompt_tokens);
});

check("chat logprobs", async () => {
  const r = await client.chat.completions.create({
    model, messages: ask("Logprobs?"), max_tokens: 5, temperature: 0, ignore_eos: true, logprobs: true, top_logprobs: 3,
  });
  const lp = r.choices[0].logprobs.content;
  assert.equal(lp.length, 5);
  for (const t of lp) {
    assert.equal(typeof t.token, "string");
    assert.ok(t.logprob <= 0);
    assert.ok(Array.isArray(t.bytes));
    assert.equal(t.top_logprobs.length, 3);
    assert.equal(t.top_logprobs[0].token, t.token, "greedy picks the most likely token");
  }
});

check("n with a seed", async () => {
  const body = { model, messages: ask("Pick a word."), max_tokens: 6, temperature: 1, top_p: 1, top_k: -1, seed: 11 };
  const r = await client.chat.completions.create({ ...body, n: 2 });
  assert.equal(r.choices.length, 2);
  const first = await client.chat.completions.create(body);
  const second = await client.chat.completions.create({ ...body, seed: 12 });
  assert.equal(r.choices[0].message.content, first.choices[0].message.content);
  assert.equal(r.choices[1].message.content, second.choices[0].message.content);
});

check("completions, streaming and not, with logprobs", async () => {
  const body = { model, prompt: "The demo model says", max_tokens: 8, temperature: 0, ignore_eos: true };
  const r = await client.completions.create({ ...body, logprobs: 2 });
  assert.match(r.id, /^cmpl-/);
  assert.equal(r.object, "text_completion");
  assert.equal(r.choices[0].logprobs.tokens.length, 8);
  assert.equal(r.choices[0].logprobs.tokens.join(""), r.choices[0].text);
  const stream = await client.completions.create({ ...body, stream: true });
  let text = "";
  for await (const chunk of stream) for (const c of chunk.choices) text += c.text;
  assert.equal(text, r.choices[0].text);
  // Token-id prompts.
  const ids = await client.completions.create({ model, prompt: [9707, 11, 1879], max_tokens: 3, temperature: 0 });
  assert.equal(ids.usage.prompt_tokens, 3);
});

check("errors map to the client's error classes", async () => {
  await assert.rejects(
    client.chat.completions.create({ model, messages: ask("x", [{ type: "image_ref", image_ref: { id: "no-such-item" } }]) }),
    (e) => e instanceof OpenAI.NotFoundError && /no-such-item/.test(e.message),
  );
  await assert.rejects(
    client.chat.completions.create({ model, messages: ask("x"), max_tokens: 0 }),
    (e) => e instanceof OpenAI.BadRequestError && e.param === "max_tokens",
  );
  await assert.rejects(
    client.chat.completions.create({ model, messages: ask("x", [{ type: "embedding", embedding: { values: [1, 2, 3] } }]) }),
    (e) => e instanceof OpenAI.UnprocessableEntityError,
  );
  await assert.rejects(client.chat.completions.create({ model: "gpt-4o", messages: ask("x") }), (e) => e instanceof OpenAI.NotFoundError);
});

if (process.argv[2] === "drain") {
  await drain();
} else {
  let failed = 0;
  for (const [name, fn] of checks) {
    try {
      await fn();
      console.log(`ok   ${name}`);
    } catch (e) {
      failed++;
      console.log(`FAIL ${name}: ${e.stack ?? e}`);
    }
  }
  console.log(failed ? `${failed} of ${checks.length} checks failed` : `all ${checks.length} checks pass`);
  process.exit(failed ? 1 : 0);
}
