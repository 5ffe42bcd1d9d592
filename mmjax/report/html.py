"""`mmjax report`: one self-contained HTML page about a finished run.

  mmjax report --workdir runs/demo [--out report.html] [--peers peers.json]
               [--query "red striped shirt" ...]

Sections: training curves (metrics.jsonl), the metrics table against the
oracle, popularity and peers, text -> image retrieval examples, and the
alignment diagnostics before (the model at initialization, rebuilt from the
config and seed) and after training, with a 2-D PCA of the aligned
embeddings. Images are inlined as base64 PNG; the page has no scripts.

A peers file is JSON: {"name": {"recall@20": 0.1, "ndcg@20": 0.05, ...}};
summary.json may carry the same under "peers".
"""

import argparse
import html
import json
import os

from mmjax.errors import MmjaxError
from mmjax.train.atomic import atomic_write
from mmjax.report import diagnostics, figures

_METRICS = ("recall@10", "recall@20", "recall@50", "ndcg@10", "ndcg@20", "ndcg@50")
_STYLE = """
body { font-family: sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 0.5em 0 1em; }
td, th { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
td:first-child, th:first-child { text-align: left; }
.query { margin: 1em 0; } .hits { display: flex; gap: 8px; flex-wrap: wrap; }
.hit { width: 110px; font-size: 11px; text-align: center; }
.hit img { border: 3px solid transparent; } .hit.match img { border-color: #2a2; }
.note { color: #777; font-style: italic; } img.wide { max-width: 100%; }
"""


def load_peers(path: str) -> dict:
  """{name: {metric: value}} from a JSON file; MmjaxError naming the file."""
  try:
    with open(path) as f:
      peers = json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise MmjaxError(f"cannot read peers file {path}: {e}") from None
  if not isinstance(peers, dict) or not all(
      isinstance(m, dict) and all(isinstance(v, (int, float)) for v in m.values())
      for m in peers.values()):
    raise MmjaxError(f"{path}: expected {{\"name\": {{\"recall@20\": 0.1, ...}}}}")
  return peers


def metric_rows(summary: dict, peers: dict | None = None) -> list[tuple[str, dict]]:
  """(name, metrics) rows: the model's splits, then the baselines it has
  (no oracle for real data), then peers from summary.json and `peers`."""
  rows = [(name, summary[name]) for name in ("test", "valid", "oracle", "popularity")
          if isinstance(summary.get(name), dict)]
  rows += list({**summary.get("peers", {}), **(peers or {})}.items())
  return rows


def _table(header: list[str], rows: list[list[str]]) -> str:
  th = "".join(f"<th>{html.escape(h)}</th>" for h in header)
  body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
  return f"<table><tr>{th}</tr>{body}</table>"


def _fmt(value) -> str:
  return f"{value:.4f}" if isinstance(value, (int, float)) else "&ndash;"


def _metrics_section(summary: dict, peers: dict | None) -> str:
  rows = metric_rows(summary, peers)
  keys = [k for k in _METRICS if any(k in m for _, m in rows)]
  out = ["<h2>Metrics (full ranking, train items masked)</h2>",
         _table(["", *keys], [[html.escape(n), *(_fmt(m.get(k)) for k in keys)]
                              for n, m in rows])]
  retrieval = summary.get("retrieval")
  if retrieval:
    out.append(_table(list(retrieval), [[_fmt(v) for v in retrieval.values()]]))
  rep = summary.get("representation")
  if rep:   # Effective rank (RankMe) per modality, and the modality gap.
    out.append(_table(
        ["aligned vectors", "effective rank", "of dim", "modality gap"],
        [["text", _fmt(rep["text"]["effective_rank"]), str(rep.get("dim", "")),
          _fmt(rep["modality_gap"])],
         ["image", _fmt(rep["image"]["effective_rank"]), str(rep.get("dim", "")), ""]]))
  if summary.get("zero_shot"):
    out.append(_zero_shot_tables(summary["zero_shot"]))
  best = summary.get("best")
  if best:
    out.append(f'<p class="note">tested state: step {best["step"]}, the best valid '
               f'{html.escape(best["metric"])}</p>')
  return "\n".join(out)


def _zero_shot_tables(zs: dict) -> str:
  """Zero-shot classification (mmjax.eval.zero_shot): totals, then per class."""
  keys = ["top1", "top5", "chance_top1", "chance_top5", "majority_top1"]
  head = (f"<p>Zero-shot classification of {zs.get('num_images', '')} images "
          f"among {zs.get('num_classes', '')} classes:</p>")
  rows = [[html.escape(c), str(m["count"]), _fmt(m["top1"])]
          for c, m in sorted(zs.get("per_class", {}).items(),
                             key=lambda cm: -cm[1]["count"])]
  return "\n".join([head, _table(keys, [[_fmt(zs.get(k)) for k in keys]]),
                    _table(["class", "images", "top1"], rows)])


def _served_section(summary: dict) -> str:
  """A feature-graph run: each seed's best valid epoch and test recall@20
  (at the chosen grid point), and which run serves."""
  served = summary.get("served_run")
  if not served:
    return ""
  tests = summary.get("seeds") or [summary["test"]]
  rows = [[str(seed), str(epoch), _fmt(test.get("recall@20")),
           "served" if seed == served["seed"] else ""]
          for seed, epoch, test in zip(summary["seed_list"], summary["best_epochs"],
                                       tests)]
  return ("<h2>Runs: best valid epoch and test recall@20 per seed</h2>\n"
          + _table(["seed", "best epoch", "test recall@20", ""], rows))


def _search_section(summary: dict) -> str:
  """A feature-graph search: every point's valid and test recall@20 and
  best epoch; the chosen one marked."""
  grid = summary.get("grid")
  if not grid or "axes" not in grid:
    return ""
  metric = grid["selected_by"]
  rows = [[html.escape(", ".join(f"{k}={v}" for k, v in r["point"].items())),
           _fmt(r["valid"][metric]), _fmt(r["test"][metric]),
           ", ".join(map(str, r["best_epochs"])),
           "chosen" if r["point"] == grid["best"] else ""]
          for r in grid["results"]]
  return (f"<h2>Search ({html.escape(grid['axes'])}), picked on valid {metric}</h2>\n"
          + _table(["point", f"valid {metric}", f"test {metric}", "best epoch", ""], rows))


def _curves_section(workdir: str) -> str:
  png = figures.curves_png(os.path.join(workdir, "metrics.jsonl"))
  body = (f'<img class="wide" alt="training curves" src="{figures.data_uri(png)}">'
          if png else '<p class="note">no metrics.jsonl in the workdir</p>')
  return "<h2>Training curves</h2>\n" + body


def default_queries(model, count: int = 4) -> list[tuple[str, int | None]]:
  """(text, its item) for `count` evenly spaced catalog items."""
  step = max(1, model.num_items // count)
  return [(model.catalog.item_text[i], i) for i in range(0, model.num_items, step)][:count]


def _retrieval_section(model, queries, k: int = 5) -> str:
  out = ["<h2>Retrieval examples: query text &rarr; top items</h2>"]
  if not model.has_images:
    out.append('<p class="note">this catalog has no images: items are ranked '
               'by their aligned text vectors</p>')
  for text, source in queries:
    hits = []
    for hit in model.search(text, k):
      match = " match" if hit.item == source else ""
      picture = (f'<img alt="item {hit.item}" src="'
                 f'{figures.data_uri(figures.image_png(model.catalog.item_images[hit.item]))}">'
                 if model.has_images else "")
      hits.append(f'<div class="hit{match}">{picture}<br>item {hit.item} '
                  f'({hit.score:.2f})<br>{html.escape(hit.text)}</div>')
    note = f" (the text of item {source}; green: that item)" if source is not None else ""
    out.append(f'<div class="query"><b>{html.escape(text)}</b>{note}'
               f'<div class="hits">{"".join(hits)}</div></div>')
  return "\n".join(out)


def _alignment_section(model) -> str:
  out = ["<h2>Alignment diagnostics</h2>"]
  if not model.has_images:
    out.append('<p class="note">no images: there is no text/image pair to diagnose</p>')
    return "\n".join(out)
  stages = [("initialization", model.at_init()), (f"trained (step {model.step})", model)]
  stats, panels = [], []
  for name, m in stages:
    z = m.item_embeddings
    stats.append((name, diagnostics.alignment_diagnostics(z["z_text"], z["z_image"])))
    panels.append((name, *diagnostics.pca_2d(z["z_text"], z["z_image"])))
  keys = list(stats[0][1])
  out.append(_table(["", *keys], [[html.escape(n), *(_fmt(s[k]) for k in keys)]
                                  for n, s in stats]))
  out.append('<p>Aligned text and image vectors of the same items, projected on '
             'the top two principal axes of their union:</p>')
  out.append(f'<img class="wide" alt="PCA of aligned embeddings" src="'
             f'{figures.data_uri(figures.projection_png(panels))}">')
  return "\n".join(out)


def build_report(model, out_path: str, *, peers: dict | None = None,
                 queries: list[str] | None = None) -> str:
  """Writes the page for a `mmjax.api.TrainedModel` or `FeatureGraphModel`
  (no towers: its curves, metrics and served run); returns its path."""
  data = model.summary.get("data", {})
  towers = hasattr(model, "catalog")
  interactions = data.get("num_interactions") or sum(
      data.get(f"num_{s}", 0) for s in ("train", "valid", "test"))
  title = f"mmjax run {os.path.basename(model.workdir)}"
  parts = [
      f"<!DOCTYPE html><html><head><meta charset=\"utf-8\">"
      f'<link rel="icon" href="data:,"><title>{html.escape(title)}</title>'
      f"<style>{_STYLE}</style></head><body>",
      f"<h1>{html.escape(title)}</h1>",
      f"<p>{html.escape(model.workdir)} &middot; step {model.step} &middot; "
      f"{model.num_items} items, {model.num_users} users, "
      f"{interactions} interactions &middot; data "
      f"{html.escape(str(data.get('dir', '')))}</p>",
      _curves_section(model.workdir),
      _metrics_section(model.summary, peers),
  ]
  if towers:
    parts += [_retrieval_section(model, [(q, None) for q in queries] if queries
                                 else default_queries(model)),
              _alignment_section(model)]
  else:
    parts.append(_search_section(model.summary))
    parts.append(_served_section(model.summary))
  parts.append("</body></html>")
  try:
    with atomic_write(out_path, encoding="utf-8") as f:
      f.write("\n".join(parts))
  except OSError as e:
    raise MmjaxError(f"cannot write report {out_path}: {e.strerror}") from None
  return out_path


def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(description="One self-contained HTML report of a run.")
  p.add_argument("--workdir", required=True, help="A finished run's workdir.")
  p.add_argument("--out", default=None, help="HTML file (default <workdir>/report.html).")
  p.add_argument("--peers", default=None, help="JSON {name: {metric: value}} to compare.")
  p.add_argument("--query", action="append", default=None,
                 help="A retrieval example query (repeatable; default: catalog texts).")
  return p


def run(args) -> None:
  from mmjax.api import load
  peers = load_peers(args.peers) if args.peers else None
  model = load(args.workdir)
  out = os.path.abspath(args.out or os.path.join(model.workdir, "report.html"))
  build_report(model, out, peers=peers, queries=args.query)
  print(f"report: {out} ({os.path.getsize(out) / 1024:.0f} KiB)")
