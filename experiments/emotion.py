"""GoEmotions: baselines, the from-scratch fallback, fine-tuned MiniLM and the blend, through the whole pipeline;
the table goes to BENCHMARKS.md.

    python -m experiments.emotion                    # full splits (about 1 h on 2 free CPU cores)

Runs configs/pipelines/goemotions_emotion.yaml (ingest -> fit every model on train -> blend weight and thresholds
on dev -> test once -> ONNX bundle with its tokenizer, checked label for label against Python), logged to MLflow.
"""

from __future__ import annotations

import argparse

from experiments.report import write_section
from pipelines.emotion import TAGS, format_table, per_label_table
from twins import api

CONFIG = "configs/pipelines/goemotions_emotion.yaml"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=CONFIG, help="pipeline config (emotion pipeline)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="config override key=value")
    args = ap.parse_args()
    catalog = api.run(args.config, args.overrides)
    results, outputs, models, splits = catalog["results"], catalog["outputs"], catalog["models"], catalog["splits"]
    exported = catalog["exported"]
    lines = [f"Protocol: {TAGS['protocol']}. {len(splits['train'].texts):,} train / {len(splits['dev'].texts):,} dev / "
             f"{len(splits['test'].texts):,} test messages; macro-F1 over 28 labels, and over the Ekman (6 + neutral) and "
             "sentiment (3 + neutral) groups of the official mappings, a group's probability being its members' max. "
             "One seed (0).", "", *format_table(results, outputs), ""]
    for name, model in models.items():
        history = getattr(model, "history_", None)
        if history:
            epochs = "; ".join(f"epoch {h['epoch']}: {h['train_seconds'] / 60:.1f} min, dev macro-F1 {h['dev_macro_f1']:.4f}"
                               for h in history)
            lines.append(f"- `{name}` training ({model.get_params()['encoder']}, best epoch {model.best_epoch_}): {epochs}.")
    if "ensemble" in outputs:
        lines.append(f"- `ensemble`: {outputs['ensemble']['weight']:.1f} × fine-tuned MiniLM + "
                     f"{1 - outputs['ensemble']['weight']:.1f} × TF-IDF probabilities (weight tuned on dev).")
    if exported:
        lines.append(f"- ONNX bundle `{exported['model']}`: the torch-free runtime's test labels equal Python's on "
                     f"{exported['label_agreement/labels']:.2%} (28 labels), {exported['label_agreement/ekman']:.2%} (Ekman), "
                     f"{exported['label_agreement/sentiment']:.2%} (sentiment) of messages; max probability difference "
                     f"{exported['max_abs_diff/labels']:.1e}.")
    best = max((n for n in results), key=lambda n: results[n]["macro_f1/labels"])
    lines += ["", f"<details><summary>Per-label test F1 of `{best}`</summary>", "",
              *per_label_table(catalog["space"], results[best]), "", "</details>", "", f"MLflow run `{catalog['run_id']}`."]
    command = "python -m experiments.emotion" + "".join(" --set " + o for o in args.overrides)
    write_section("emotion", "Emotion: GoEmotions 28 labels, Ekman and sentiment", command,
                  "GoEmotions (Demszky et al. 2020), official simplified split, ../shared/data/goemotions", "\n".join(lines))
    print("\n".join(format_table(results, outputs)))


if __name__ == "__main__":
    main()
