"""`mmjax recommend`: top-K items for a user or for all users, nearest items,
or text search, by the data's own user and item ids.

  mmjax recommend --workdir runs/demo --user user7 [--k 10] [--png out.png]
  mmjax recommend --workdir runs/demo --similar sku-ea7b6656
  mmjax recommend --workdir runs/demo --text "red striped shirt"
  mmjax recommend --workdir runs/demo --all-users --k 10 --out topk.parquet

Prints the results with their ids, scores and text; `--png` also draws them
as an image grid (the user's history, the query item, ... on the first row).
`--all-users` writes one parquet row per (user, rank): user_id, rank (1 =
best), item_id, score, ranking the users in batches (bounded memory).
"""

import argparse
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mmjax.errors import MmjaxError
from mmjax.train.atomic import atomic_write

_HISTORY_SHOWN = 10


def _lines(title: str, results) -> list[str]:
  lines = [title]
  for rank, r in enumerate(results, 1):
    lines.append(f"  {rank:3d}  item {r.id!s:>6}  score {r.score:8.4f}  {r.text}")
  return lines


def describe(model, args) -> tuple[list[str], list]:
  """(text lines, image-grid rows) for one recommend invocation."""
  images = getattr(getattr(model, "catalog", None), "item_images", None)
  raw = model.item_map.raw
  cell = lambda i, label: ((images[i], f"{label}{raw(i)}") if images is not None
                           else None)
  if args.user is not None:
    seen = model.seen(args.user)
    results = model.recommend(args.user, args.k)
    shown = seen[-_HISTORY_SHOWN:]
    lines = [f"user {args.user}: {len(seen)} items seen, the last {len(shown)}:"]
    lines += [f"        item {raw(i)!s:>6}  {model.item_text[i]}" for i in shown]
    lines += _lines(f"top {args.k} for user {args.user} (seen items excluded):", results)
    first = ("history", [cell(i, "item ") for i in shown])
  elif args.similar is not None:
    results = model.similar(args.similar, args.k)
    query = model.item_map.index(args.similar)
    lines = _lines(f"item {args.similar}: {model.item_text[query]}\n"
                   f"{args.k} nearest items (cosine of item vectors):", results)
    first = ("query", [cell(query, "item ")])
  else:
    results = model.search(args.text, args.k)
    lines = _lines(f"top {args.k} items for the text {args.text!r}:", results)
    first = None
  rows = [first] if first else []
  rows.append((f"top {args.k}", [cell(r.item, f"{r.score:.2f}  item ") for r in results]))
  return lines, rows


def _id_type(id_map) -> pa.DataType:
  return pa.int64() if id_map.all_int else pa.string()


def write_all_users(model, k: int, out: str, batch_users: int | None = None) -> int:
  """Writes every user's top-k unseen items to the parquet file `out`
  (columns user_id, rank, item_id, score; own ids); returns the rows. A user
  with fewer than k unseen items gets only those."""
  schema = pa.schema([("user_id", _id_type(model.user_map)), ("rank", pa.int32()),
                      ("item_id", _id_type(model.item_map)), ("score", pa.float32())])
  users, items, written = model.user_map, model.item_map, 0
  ranks = np.arange(1, k + 1, dtype=np.int32)
  try:
    with atomic_write(out, "wb") as f, pq.ParquetWriter(f, schema) as writer:
      block = []
      for user, top, scores in model.recommend_batches(k, batch_users=batch_users):
        keep = top >= 0
        block.append((np.full(keep.sum(), user), ranks[keep], top[keep], scores[keep]))
        if sum(len(b[0]) for b in block) >= 1 << 16:
          written += _write_rows(writer, schema, block, users, items)
      written += _write_rows(writer, schema, block, users, items)
  except OSError as e:
    raise MmjaxError(f"cannot write {out}: {e.strerror or e}") from None
  return written


def _write_rows(writer, schema, block, users, items) -> int:
  """Writes the buffered (users, ranks, items, scores) rows; empties `block`."""
  if not block:
    return 0
  u, r, i, s = (np.concatenate(c) for c in zip(*block))
  block.clear()
  writer.write_table(pa.table({"user_id": users.column(u), "rank": r,
                               "item_id": items.column(i),
                               "score": s.astype(np.float32)}, schema=schema))
  return len(u)


def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(description="Recommend, find similar items, or search by text.")
  p.add_argument("--workdir", required=True, help="A finished run's workdir.")
  what = p.add_mutually_exclusive_group(required=True)
  what.add_argument("--user", help="Top-K unseen items for this user id (the data's own).")
  what.add_argument("--similar", metavar="ITEM", help="Items nearest to this item id.")
  what.add_argument("--text", help="Text -> items through the aligned text tower.")
  what.add_argument("--all-users", action="store_true",
                    help="Top-K unseen items of every user into --out (parquet).")
  p.add_argument("--k", type=int, default=10, help="How many items (default 10).")
  p.add_argument("--png", default=None, help="Also draw the results as an image grid.")
  p.add_argument("--out", default=None, help="--all-users: the parquet file to write.")
  p.add_argument("--batch-users", type=int, default=None,
                 help="--all-users: users ranked at once (default: bounded "
                 "by the catalog size).")
  return p


def run(args) -> None:
  if args.all_users and not args.out:
    raise MmjaxError("--all-users writes a parquet file: give --out FILE.parquet")
  if (args.out or args.batch_users) and not args.all_users:
    raise MmjaxError("--out and --batch-users go with --all-users")
  if args.all_users and args.png:
    raise MmjaxError("--png draws one query's results; not with --all-users")
  if args.batch_users is not None and args.batch_users <= 0:
    raise MmjaxError(f"--batch-users={args.batch_users} must be > 0")
  from mmjax.api import load
  from mmjax.report.figures import image_grid_png
  model = load(args.workdir)
  if args.all_users:
    out = os.path.abspath(args.out)
    rows = write_all_users(model, args.k, out, args.batch_users)
    print(f"top {args.k} of {model.num_users} users: {rows} rows -> {out}")
    return
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
