// Reference encoder for the parity tests: Hugging Face tokenizers (pure JS,
// @huggingface/tokenizers) reading a tokenizer.json offline.
// Usage: node hf_encode.mjs MODEL_DIR < lines.jsonl > ids.txt
// Each input line is a JSON string; each output line is the space-separated
// ids of encode(text, add_special_tokens=false), then a tab, then the JSON of
// decode(ids).
import { readFileSync } from "node:fs";
import { createInterface } from "node:readline";
import { Tokenizer } from "@huggingface/tokenizers";

const dir = process.argv[2];
const json = JSON.parse(readFileSync(`${dir}/tokenizer.json`, "utf8"));
let config = {};
try { config = JSON.parse(readFileSync(`${dir}/tokenizer_config.json`, "utf8")); } catch (e) { config = {}; }
const tokenizer = new Tokenizer(json, config);
const out = [];
const rl = createInterface({ input: process.stdin, crlfDelay: Infinity });
for await (const line of rl) {
  if (line.length === 0) continue;
  const text = JSON.parse(line);
  const ids = tokenizer.encode(text, { add_special_tokens: false }).ids;
  const decoded = ids.length ? tokenizer.decode(ids, { skip_special_tokens: false }) : "";
  out.push(ids.join(" ") + "\t" + JSON.stringify(decoded));
}
process.stdout.write(out.join("\n") + (out.length ? "\n" : ""));
