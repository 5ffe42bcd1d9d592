"""`mmjax recommend`: top-K items for a user, nearest items, or text search.

  mmjax recommend --workdir runs/demo --user 3 [--k 10] [--png out.png]
  mmjax recommend --workdir runs/demo --similar 42
  mmjax recommend --workdir runs/demo --text "red striped shirt"

Prints the results with their text and scores; `--png` also draws them as
an image grid (the user's history, the query item, ... on the first row).
"""

import argparse

from mmjax.errors import MmjaxError

_HISTORY_SHOWN = 10


def _lines(title: str, results) -> list[str]:
  lines = [title]
  for rank, r in enumerate(results, 1):
    lines.append(f"  {rank:3d}  item {r.item:6d}  score {r.score:8.4f}  {r.text}")
  return lines


def describe(model, args) -> tuple[list[str], list]:
  """(text lines, image-grid rows) for one recommend invocation."""
  images = getattr(model.catalog, "item_images", None)
  cell = lambda i, label: (images[i], f"{label}{i}") if images is not None else None
  if args.user is not None:
    seen = model.seen(args.user)
    results = model.recommend(args.user, args.k)
    shown = seen[-_HISTORY_SHOWN:]
    lines = [f"user {args.user}: {len(seen)} items seen, the last {len(shown)}:"]
    lines += [f"        item {i:6d}  {model.catalog.item_text[i]}" for i in shown]
    lines += _lines(f"top {args.k} for user {args.user} (seen items excluded):", results)
    first = ("history", [cell(i, "item ") for i in shown])
  elif args.similar is not None:
    results = model.similar(args.similar, args.k)
    lines = _lines(f"item {args.similar}: {model.catalog.item_text[args.similar]}\n"
                   f"{args.k} nearest items (cosine of item vectors):", results)
    first = ("query", [cell(args.similar, "item ")])
  else:
    results = model.search(args.text, args.k)
    lines = _lines(f"top {args.k} items for the text {args.text!r}:", results)
    first = None
  rows = [first] if first else []
  rows.append((f"top {args.k}", [cell(r.item, f"{r.score:.2f}  item ") for r in results]))
  return lines, rows


def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(description="Recommend, find similar items, or search by text.")
  p.add_argument("--workdir", required=True, help="A finished run's workdir.")
  what = p.add_mutually_exclusive_group(required=True)
  what.add_argument("--user", type=int, help="Top-K unseen items for this user id.")
  what.add_argument("--similar", type=int, metavar="ITEM", help="Items nearest to this item id.")
  what.add_argument("--text", help="Text -> items through the aligned text tower.")
  p.add_argument("--k", type=int, default=10, help="How many items (default 10).")
  p.add_argument("--png", default=None, help="Also draw the results as an image grid.")
  return p


def run(args) -> None:
  from mmjax.api import load
  from mmjax.report.figures import image_grid_png
  model = load(args.workdir)
  if args.png and not model.has_images:
    raise MmjaxError(f"--png: the catalog of {args.workdir} has no images")
  lines, rows = describe(model, args)
  print("\n".join(lines))
  if args.png:
    try:
      with open(args.png, "wb") as f:
        f.write(image_grid_png(rows))
    except OSError as e:
      raise MmjaxError(f"cannot write {args.png}: {e.strerror}") from None
    print(f"grid: {args.png}")
