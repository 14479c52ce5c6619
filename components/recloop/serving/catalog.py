"""What the server knows about items and users of one model version: raw id <-> contiguous id maps,
categories (as a CSR item -> category table), item texts and a TF-IDF index over them.

TF-IDF (not the neural text encoder) backs the `text` fallback and the "shared terms" of explanations:
it needs no model weights, loads in a second for 100k items, and its terms are words a person can read.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from recloop.errors import ArtifactError

if TYPE_CHECKING:
    import scipy.sparse as sp

_TOKEN_RE = re.compile(r"[^\W\d_][\w'-]*[^\W_]|[^\W\d_]", re.UNICODE)
# Words that carry no topic: a short list is enough, since idf already discounts what is everywhere.
_MAX_CACHED_MASKS = 1024
_MAX_DOC_SHARE = 0.8
_STOPWORDS = frozenset(
    """a an and are as at be by for from has have in is it its of on or that the this to was
were will with not no but into about than then there their they them these those you your our we he she
his her i me my so if out up do does did can could would should may might also just more most""".split()
)


def tokens(text: str) -> list[str]:
    return [t for t in (m.lower() for m in _TOKEN_RE.findall(text)) if len(t) > 1 and t not in _STOPWORDS]


def _row_entries(indptr: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Positions of all entries of `rows` in a CSR layout's data/indices arrays, vectorized."""
    starts, ends = indptr[rows], indptr[rows + 1]
    lengths = ends - starts
    if len(rows) == 0 or lengths.sum() == 0:
        return np.zeros(0, np.int64)
    offsets = np.repeat(starts - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)
    return np.arange(int(lengths.sum()), dtype=np.int64) + offsets


@dataclass
class TextIndex:
    """L2-normalized TF-IDF rows per item (sublinear tf) and the vocabulary."""

    matrix: sp.csr_matrix  # (n_items, n_terms)
    terms: list[str]

    @classmethod
    def build(cls, texts: list[str]) -> TextIndex | None:
        import scipy.sparse as sp

        vocab: dict[str, int] = {}
        indptr = [0]
        indices: list[int] = []
        data: list[float] = []
        for text in texts:
            counts = Counter(tokens(text or ""))
            for term, count in counts.items():
                indices.append(vocab.setdefault(term, len(vocab)))
                data.append(1.0 + np.log(count))
            indptr.append(len(indices))
        if not vocab:
            return None
        m = sp.csr_matrix(
            (np.asarray(data, np.float32), np.asarray(indices, np.int32), np.asarray(indptr, np.int64)),
            shape=(len(texts), len(vocab)),
        )
        df = np.bincount(m.indices, minlength=len(vocab)).astype(np.float32)
        idf = np.log((1.0 + len(texts)) / (1.0 + df)) + 1.0
        # Words in most texts are template boilerplate ("Genres:", "Tags:"), not content.
        idf[df > _MAX_DOC_SHARE * len(texts)] = 0.0
        m = (m @ sp.diags(idf.astype(np.float32))).tocsr()
        norms = np.sqrt(np.asarray(m.multiply(m).sum(axis=1)).ravel())
        m = (sp.diags((1.0 / np.maximum(norms, 1e-12)).astype(np.float32)) @ m).tocsr()
        terms = [""] * len(vocab)
        for term, j in vocab.items():
            terms[j] = term
        return cls(m, terms)

    def profile(self, items: np.ndarray) -> np.ndarray:
        """Dense (n_terms,) sum of the items' rows: what a history is about."""
        m = self.matrix
        entries = _row_entries(m.indptr, np.asarray(items, np.int64))
        return np.bincount(m.indices[entries], weights=m.data[entries], minlength=len(self.terms)).astype(np.float32)

    def scores(self, profile: np.ndarray) -> np.ndarray:
        """Cosine-like similarity of every item to a profile."""
        norm = float(np.linalg.norm(profile))
        out = self.matrix @ (profile / max(norm, 1e-12)).astype(np.float32)
        return np.asarray(out, dtype=np.float32).ravel()

    def shared_terms(self, item: int, profile: np.ndarray, n: int) -> list[str]:
        """The item's terms weighing most in the profile (what in its text matches the history)."""
        start, end = self.matrix.indptr[item], self.matrix.indptr[item + 1]
        cols = self.matrix.indices[start:end]
        weight = self.matrix.data[start:end] * profile[cols]
        order = np.argsort(-weight, kind="stable")[:n]
        return [self.terms[cols[j]] for j in order if weight[j] > 0]


@dataclass
class Catalog:
    """Items of one model version, indexed by contiguous id."""

    item_ids: list[str]
    index_of: dict[str, int]
    texts: list[str] | None
    category_names: list[str]
    cat_indptr: np.ndarray  # int64 (n_items + 1,)
    cat_ids: np.ndarray  # int32: category ids of item i are cat_ids[cat_indptr[i]:cat_indptr[i+1]]
    category_index: dict[str, int] = field(default_factory=dict)
    text_index: TextIndex | None = None
    _masks: dict[int, np.ndarray] = field(default_factory=dict, repr=False)
    _entry_item: np.ndarray | None = field(default=None, repr=False)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def categories_of(self, item: int) -> list[str]:
        return [self.category_names[c] for c in self.cat_ids[self.cat_indptr[item] : self.cat_indptr[item + 1]]]

    def category_ids_of(self, item: int) -> np.ndarray:
        return self.cat_ids[self.cat_indptr[item] : self.cat_indptr[item + 1]]

    def items_in_category(self, category: int) -> np.ndarray:
        """Boolean (n_items,) mask of items carrying the category (read-only, cached)."""
        mask = self._masks.get(category)
        if mask is None:
            if self._entry_item is None:
                self._entry_item = np.repeat(np.arange(self.n_items), np.diff(self.cat_indptr))
            mask = np.zeros(self.n_items, bool)
            mask[self._entry_item[self.cat_ids == category]] = True
            mask.setflags(write=False)
            if len(self._masks) < _MAX_CACHED_MASKS:
                self._masks[category] = mask
        return mask

    def category_counts(self, items: np.ndarray) -> np.ndarray:
        """(n_categories,) how many of `items` carry each category."""
        entries = _row_entries(self.cat_indptr, np.asarray(items, np.int64))
        return np.bincount(self.cat_ids[entries], minlength=len(self.category_names))

    @classmethod
    def load(cls, n_items: int, id_map: Path | None, items_file: Path | None, where: str) -> Catalog:
        """From a version's `id_maps/items.parquet` and `items.parquet` (either may be absent: then raw
        ids are the contiguous ids as strings, and there are no texts or categories)."""
        import pyarrow.parquet as pq

        item_ids = [str(i) for i in range(n_items)]
        texts: list[str] | None = None
        categories: list[list[str]] = [[] for _ in range(n_items)]
        for path, needs_text in ((id_map, False), (items_file, True)):
            if path is None or not path.is_file():
                continue
            table = pq.read_table(path)
            if "item_idx" not in table.column_names or "item_id" not in table.column_names:
                raise ArtifactError(f"{where}: {path.name} lacks item_idx / item_id columns; re-publish the model")
            idx = np.asarray(table.column("item_idx").to_numpy(), dtype=np.int64)
            if len(idx) != n_items or (len(idx) and (idx.min() < 0 or idx.max() >= n_items)):
                raise ArtifactError(
                    f"{where}: {path.name} maps {len(idx)} items but the model has {n_items}; "
                    "the version is inconsistent: re-publish it"
                )
            raw = table.column("item_id").to_pylist()
            for i, value in zip(idx.tolist(), raw):
                item_ids[i] = str(value)
            if needs_text:
                if "text" in table.column_names:
                    texts = [""] * n_items
                    for i, value in zip(idx.tolist(), table.column("text").to_pylist()):
                        texts[i] = value or ""
                if "categories" in table.column_names:
                    for i, value in zip(idx.tolist(), table.column("categories").to_pylist()):
                        categories[i] = [str(c) for c in (value or []) if c is not None and str(c) != ""]
        index_of = {raw_id: i for i, raw_id in enumerate(item_ids)}
        if len(index_of) != n_items:
            raise ArtifactError(f"{where}: item ids are not unique; re-run preprocess and publish")
        category_index: dict[str, int] = {}
        cat_ids: list[int] = []
        indptr = [0]
        for cats in categories:
            for c in dict.fromkeys(cats):  # de-duplicated, order kept
                cat_ids.append(category_index.setdefault(c, len(category_index)))
            indptr.append(len(cat_ids))
        names = [""] * len(category_index)
        for name, j in category_index.items():
            names[j] = name
        # Texts that only repeat the item id (no catalog configured) say nothing.
        if texts is not None and all(t == item_ids[i] for i, t in enumerate(texts)):
            texts = None
        catalog = cls(
            item_ids,
            index_of,
            texts,
            names,
            np.asarray(indptr, np.int64),
            np.asarray(cat_ids, np.int32),
            category_index,
        )
        if texts is not None:
            catalog.text_index = TextIndex.build(texts)
        return catalog


@dataclass
class UserIndex:
    """Raw user id -> contiguous id for users the model was trained on."""

    index_of: dict[str, int]

    @classmethod
    def load(cls, n_users: int, id_map: Path | None, where: str) -> UserIndex:
        import pyarrow.parquet as pq

        if id_map is None or not id_map.is_file():
            return cls({str(u): u for u in range(n_users)})
        table = pq.read_table(id_map, columns=["user_idx", "user_id"])
        idx = table.column("user_idx").to_pylist()
        raw = table.column("user_id").to_pylist()
        if len(idx) != n_users:
            raise ArtifactError(
                f"{where}: {id_map.name} maps {len(idx)} users but the model has {n_users}; re-publish the model"
            )
        return cls({str(r): int(i) for i, r in zip(idx, raw)})

    def get(self, user_id: str) -> int | None:
        return self.index_of.get(user_id)
