#!/usr/bin/env node
// A sales system's next-basket scorer without Python: loads a twins next-basket bundle (model.onnx +
// manifest.json) with onnxruntime-node and answers as twins.runtime.NextBasketBundle.recommend does.
//
//   node next_basket.mjs BUNDLE_DIR [K] < histories.json     # [[["milk","bread"],["milk"]], ...] (baskets oldest first)
//   -> [[["milk", 2.97], ["bread", 1.93], ...], ...]          # top-K (item, score) per history, best first
//
// Preprocessing (from the manifest): item ids map to vocabulary index + 1 (unknown ids are dropped), each basket
// is deduplicated, baskets are flattened oldest first, the last max_history_items entries are kept, rows are
// padded with 0. The bundle is verified as the Python runtime does: task, opset >= 17 and sha256 of model.onnx.
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import ort from "onnxruntime-node";

const MIN_OPSET = 17;

export async function loadBundle(dir) {
  const manifest = JSON.parse(readFileSync(join(dir, "manifest.json"), "utf8"));
  if (manifest.task !== "next_basket") throw new Error(`${dir}: task ${manifest.task}, not next_basket`);
  if (!(manifest.opset >= MIN_OPSET)) throw new Error(`${dir}: opset ${manifest.opset} < ${MIN_OPSET}; re-export the bundle`);
  const bytes = readFileSync(join(dir, "model.onnx"));
  const sha = createHash("sha256").update(bytes).digest("hex");
  if (sha !== manifest.model_sha256) throw new Error(`${dir}/model.onnx: sha256 ${sha} does not match the manifest; re-export`);
  const session = await ort.InferenceSession.create(bytes, { executionProviders: ["cpu"] });
  const index = new Map(manifest.vocabulary.map((item, i) => [String(item), i + 1]));
  return { manifest, session, index, topK: manifest.outputs[0].shape[1], maxItems: manifest.preprocessing.max_history_items };
}

function encode(bundle, history) {
  if (!Array.isArray(history) || history.some((basket) => !Array.isArray(basket))) {
    throw new TypeError("a history is a list of baskets and a basket a list of item ids");
  }
  const out = [];
  for (const basket of history) {
    for (const item of new Set(basket.map(String))) {
      const i = bundle.index.get(item);
      if (i !== undefined) out.push(i);
    }
  }
  return out.slice(-bundle.maxItems);
}

export async function recommend(bundle, histories, k = 10) {
  if (!(k >= 1 && k <= bundle.topK)) throw new RangeError(`k must be in [1, ${bundle.topK}], got ${k}`);
  if (histories.length === 0) return [];
  const rows = histories.map((h) => encode(bundle, h));
  const width = Math.max(1, ...rows.map((r) => r.length));
  const data = new BigInt64Array(rows.length * width);
  rows.forEach((row, b) => row.forEach((v, j) => { data[b * width + j] = BigInt(v); }));
  const out = await bundle.session.run({ history: new ort.Tensor("int64", data, [rows.length, width]) });
  const { scores, indices } = out;
  return rows.map((_, b) => Array.from({ length: k }, (_, j) => [
    bundle.manifest.vocabulary[Number(indices.data[b * bundle.topK + j]) - 1],
    Number(scores.data[b * bundle.topK + j]),
  ]));
}

async function main() {
  const [dir, k = "10"] = process.argv.slice(2);
  if (!dir) {
    console.error("usage: node next_basket.mjs BUNDLE_DIR [K] < histories.json");
    process.exit(2);
  }
  const bundle = await loadBundle(dir);
  const histories = JSON.parse(readFileSync(0, "utf8"));
  process.stdout.write(JSON.stringify(await recommend(bundle, histories, Number(k))) + "\n");
}

if (import.meta.url === `file://${process.argv[1]}`) {
  main().catch((error) => {
    console.error(`error: ${error.message}`);
    process.exit(1);
  });
}
