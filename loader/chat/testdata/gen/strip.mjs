// strip.mjs FRESH COMMITTED: compares two fixture files case by case, ignoring the Python Jinja2
// annotations ("python", "python_error") that pyref.py adds. Exits 1 and names the first difference.
import { readFileSync } from "node:fs";
const read = (p) =>
  readFileSync(p, "utf8")
    .trimEnd()
    .split("\n")
    .map((l) => {
      const c = JSON.parse(l);
      delete c.python;
      delete c.python_error;
      return JSON.stringify(c);
    });
const [a, b] = [read(process.argv[2]), read(process.argv[3])];
if (a.length !== b.length) {
  console.error(`strip.mjs: ${process.argv[3]} has ${b.length} cases, a fresh render ${a.length}`);
  process.exit(1);
}
for (let i = 0; i < a.length; i++) {
  if (a[i] !== b[i]) {
    console.error(`strip.mjs: ${process.argv[3]} case ${i + 1} differs from a fresh render:\n${a[i].slice(0, 2000)}\n${b[i].slice(0, 2000)}`);
    process.exit(1);
  }
}
