"""Embedding throughput: recloop's TextEncoder against sentence_transformers.encode, same model and texts.

Also measures the incremental case: after 1 % of the item texts change, a retrain re-embeds through the
store-backed EmbeddingCache. Prints a table; ratios are measured in the same run (absolute times on shared
machines are noisy).

    .venv/bin/python bench/embed.py [--items 2000] [--batch-size 64]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

MOVIES = Path(__file__).resolve().parents[1] / ".." / "shared" / "datasets" / "ml-latest-small" / "movies.csv"


def item_texts(n: int) -> list[str]:
    """MovieLens titles and genres when available, else synthetic catalog texts."""
    if MOVIES.is_file():
        import pandas as pd

        movies = pd.read_csv(MOVIES)
        texts = (movies["title"] + ". Genres: " + movies["genres"].str.replace("|", ", ")).tolist()
        while len(texts) < n:
            texts += [t + " (director's cut)" for t in texts]
        return texts[:n]
    from recloop.data import synth

    data = synth.generate(n_users=10, n_items=n, seed=0)
    return [f"{r.title}. {r.description}" for r in data.items.itertuples()]


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args(argv)

    import torch
    from sentence_transformers import SentenceTransformer

    from recloop.models.text_encoder import EmbeddingCache, EncoderConfig, TextEncoder, resolve_model_dir
    from recloop.store import FileStore

    torch.manual_seed(0)
    texts = item_texts(args.items)
    cfg = EncoderConfig(batch_size=args.batch_size)
    encoder = TextEncoder(cfg)
    reference = SentenceTransformer(str(resolve_model_dir(cfg)), device="cpu")
    reference.max_seq_length = encoder.max_length

    # Warm both up so one-off allocation costs are not counted.
    encoder.encode(texts[:32])
    reference.encode(texts[:32], batch_size=args.batch_size)

    ours, t_ours = timed(lambda: encoder.encode(texts))
    ref, t_ref = timed(lambda: reference.encode(texts, batch_size=args.batch_size, convert_to_numpy=True,
                                                normalize_embeddings=False))
    max_diff = float(np.abs(ours - ref).max())

    with tempfile.TemporaryDirectory() as tmp:
        cache = EmbeddingCache(FileStore(f"file://{tmp}"), encoder.model_id)
        _, t_first = timed(lambda: cache.embed(texts, encoder))
        changed = list(texts)
        n_changed = max(1, len(texts) // 100)
        for i in range(0, len(texts), len(texts) // n_changed)[:n_changed]:
            changed[i] = changed[i] + " (remastered)"
        cache2 = EmbeddingCache(FileStore(f"file://{tmp}"), encoder.model_id)  # a fresh process's view
        (incremental, n_new), t_incr = timed(lambda: cache2.embed(changed, encoder))

    rows = [
        ("sentence_transformers.encode", t_ref, len(texts) / t_ref, 1.0),
        ("recloop TextEncoder.encode", t_ours, len(texts) / t_ours, t_ref / t_ours),
        ("recloop cache, first run", t_first, len(texts) / t_first, t_ref / t_first),
        (f"recloop cache, 1% changed ({n_new} new)", t_incr, len(texts) / t_incr, t_first / t_incr),
    ]
    print(f"\n{len(texts)} item texts, batch {args.batch_size}, max_length {encoder.max_length}, "
          f"torch threads {torch.get_num_threads()}; max |ours - reference| = {max_diff:.2e}\n")
    print(f"{'what':44s} {'seconds':>9s} {'items/s':>10s} {'speed-up':>9s}")
    for name, secs, rate, ratio in rows:
        print(f"{name:44s} {secs:9.2f} {rate:10.0f} {ratio:8.1f}x")
    print("\nspeed-up: encoders vs sentence_transformers; incremental vs the cache's first run")
    ok_first = t_ref / t_ours >= 1.0
    ok_incr = t_first / t_incr >= 50
    print(f"target >= 1.0x reference on first run: {'met' if ok_first else 'MISSED'} ({t_ref / t_ours:.2f}x)")
    print(f"target >= 50x faster incremental:      {'met' if ok_incr else 'MISSED'} ({t_first / t_incr:.0f}x)")
    return 0 if max_diff < 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main())
