"""llm_rerank: an instruction-following LLM reorders a base model's top-N and explains each pick.

Two backends: an OpenAI-compatible chat-completions endpoint (vLLM, llama.cpp server, Ollama; URL, model
and key from config) or a local Hugging Face causal LM folder. The prompt holds the user's recent history
and the candidates as text; the answer is parsed into candidate ids only (anything else is dropped,
missing candidates keep their base order after the ranked ones). On timeout, error or invalid output the
base order is kept and the fallback is counted. Each item gets a one-sentence reason.
"""

from __future__ import annotations

import concurrent.futures
import functools
import json
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np

from recloop.config.models import ChatEndpoint, LLMRerankConfig
from recloop.data.interactions import Histories, Interactions
from recloop.errors import ConfigError
from recloop.models.base import FitContext, Recommender
from recloop.models.registry import register
from recloop.models.scrub import Scrubber

SYSTEM_PROMPT = (
    "You are a recommendation assistant. Rerank the candidate items for the user, best first, using the "
    "user's recent history. Answer with JSON only, no prose: "
    '{"ranking": [{"id": <candidate id>, "reason": "<one sentence>"}, ...]}. '
    "Use only ids from the candidate list."
)


@dataclass
class RerankResult:
    ids: list[int]
    reasons: dict[int, str]
    fallback: bool
    error: str | None = None


@dataclass
class RerankStats:
    calls: int = 0
    fallbacks: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record(self, result: RerankResult) -> None:
        with self.lock:
            self.calls += 1
            if result.fallback:
                self.fallbacks += 1
                kind = (result.error or "invalid").split(":")[0]
                self.errors[kind] = self.errors.get(kind, 0) + 1


def build_prompt(history: list[str], candidates: list[tuple[int, str]]) -> list[dict[str, str]]:
    lines = ["Recently consumed (oldest first):"]
    lines += [f"- {t}" for t in history] or ["- (nothing yet)"]
    lines.append("Candidates:")
    lines += [f"[{cid}] {text}" for cid, text in candidates]
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": "\n".join(lines)}]


_JSON_OBJECT = re.compile(r"\{.*\}", re.DOTALL)


def parse_answer(answer: str, candidate_ids: list[int], prompt: list[dict[str, str]]) -> RerankResult:
    """Ranked candidate ids (+ reasons) from an LLM answer; anything not a candidate is dropped."""
    allowed = set(candidate_ids)
    if not answer or not answer.strip():
        return RerankResult(candidate_ids, {}, True, "invalid: empty answer")
    if SYSTEM_PROMPT[:60] in answer or prompt[-1]["content"][:80] in answer:
        return RerankResult(candidate_ids, {}, True, "invalid: the answer echoes the prompt")
    ranked: list[int] = []
    reasons: dict[int, str] = {}
    match = _JSON_OBJECT.search(answer)
    entries: list[Any] = []
    if match:
        try:
            parsed = json.loads(match.group(0))
            entries = parsed.get("ranking", []) if isinstance(parsed, dict) else []
        except json.JSONDecodeError:
            entries = []
    for entry in entries if isinstance(entries, list) else []:
        raw_id = entry.get("id") if isinstance(entry, dict) else entry
        try:
            cid = int(str(raw_id).strip("[] "))
        except (TypeError, ValueError):
            continue
        if cid in allowed and cid not in reasons and cid not in ranked:
            ranked.append(cid)
            reason = entry.get("reason") if isinstance(entry, dict) else None
            if isinstance(reason, str) and reason.strip():
                # One sentence, bounded: the text reaches end users.
                reasons[cid] = re.split(r"(?<=[.!?])\s", reason.strip(), maxsplit=1)[0][:240]
    if not ranked:
        # Not JSON: accept "[12] ... [7] ..." style lists of candidate ids.
        for token in re.findall(r"\[(\d+)\]", answer):
            cid = int(token)
            if cid in allowed and cid not in ranked:
                ranked.append(cid)
    if not ranked:
        return RerankResult(candidate_ids, {}, True, "invalid: no candidate ids in the answer")
    rest = [c for c in candidate_ids if c not in set(ranked)]
    return RerankResult(ranked + rest, reasons, False)


class ChatBackend:
    """POST {url}/chat/completions; the whole call must finish within the latency budget."""

    def __init__(self, endpoint: ChatEndpoint, temperature: float, max_new_tokens: int):
        self.endpoint = endpoint
        self.temperature = temperature
        self.max_new_tokens = max_new_tokens

    def complete(self, messages: list[dict[str, str]], timeout_s: float) -> str:
        import httpx

        headers = {"Content-Type": "application/json"}
        if self.endpoint.api_key:
            headers["Authorization"] = f"Bearer {self.endpoint.api_key.get_secret_value()}"
        body = {
            "model": self.endpoint.model,
            "messages": messages,
            "temperature": self.temperature,
            "max_tokens": self.max_new_tokens,
        }
        url = self.endpoint.url.rstrip("/") + "/chat/completions"
        resp = httpx.post(url, json=body, headers=headers, timeout=timeout_s)
        resp.raise_for_status()
        data = resp.json()
        return str(data["choices"][0]["message"]["content"])


class LocalBackend:
    """A local causal LM folder, greedy decoding bounded by `max_time`."""

    def __init__(self, path: str, temperature: float, max_new_tokens: int):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True).eval()
        self.temperature = temperature
        self.max_new_tokens = max_new_tokens
        self._lock = threading.Lock()

    def complete(self, messages: list[dict[str, str]], timeout_s: float) -> str:
        import torch

        tok = self.tokenizer
        if getattr(tok, "chat_template", None):
            text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        else:
            text = "\n\n".join(f"{m['role']}: {m['content']}" for m in messages) + "\n\nassistant:"
        inputs = tok(text, return_tensors="pt")
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        with self._lock, torch.inference_mode():
            out = self.model.generate(
                **inputs,
                max_new_tokens=self.max_new_tokens,
                do_sample=self.temperature > 0,
                temperature=self.temperature or None,
                max_time=timeout_s,
                pad_token_id=pad,
            )
        # One row of ids decodes to one string (a list of strings is only for a batch of rows).
        return cast(str, tok.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True))


_EXECUTOR = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="llm-rerank")


@register(LLMRerankConfig)
class LLMRerank(Recommender):
    """Second stage over any base model; `score_histories` puts the LLM's order on top of the base scores."""

    config: LLMRerankConfig

    def __init__(self, config: LLMRerankConfig):
        super().__init__(config)
        from recloop.models import registry

        base_cfg = config.base_config()
        self.base = registry.get(base_cfg.type)(base_cfg)
        self.item_texts: list[str] = []
        self.stats = RerankStats()
        self._backend: ChatBackend | LocalBackend | None = None
        self.last_reasons: list[dict[int, str]] = []

    # ------------------------------------------------------------------ backend
    @property
    def backend(self) -> ChatBackend | LocalBackend:
        if self._backend is None:
            cfg = self.config
            # LLMRerankConfig's validator requires these; a config built around it may lack them.
            if cfg.backend == "openai":
                if cfg.endpoint is None:
                    raise ConfigError("model", ["llm_rerank backend 'openai' needs `endpoint: {url, model}`"])
                self._backend = ChatBackend(cfg.endpoint, cfg.temperature, cfg.max_new_tokens)
            else:
                if not cfg.model_path:
                    raise ConfigError(
                        "model", ["llm_rerank backend 'local' needs `model_path` (a local causal LM folder)"]
                    )
                self._backend = LocalBackend(cfg.model_path, cfg.temperature, cfg.max_new_tokens)
        return self._backend

    def fit(
        self, train: Interactions, valid: Interactions | None = None, context: FitContext | None = None
    ) -> LLMRerank:
        self._remember(train)
        self.base.fit(train, valid, context)
        texts = context.items.texts if context is not None else None
        self.item_texts = list(texts) if texts is not None else [f"item {i}" for i in range(train.n_items)]
        return self

    @functools.cached_property
    def scrubber(self) -> Scrubber:
        return Scrubber(tuple(re.compile(p) for p in self.config.redact_patterns))

    def rerank(self, history: np.ndarray, candidates: list[int]) -> RerankResult:
        """Ask the LLM to reorder `candidates` for a user with `history`; never exceeds the budget."""
        cfg = self.config
        cut, scrub = cfg.max_text_chars, self.scrubber
        # Scrubbed before the cut, so a cut cannot split an address into something no pattern recognises.
        hist_text = [scrub(self.item_texts[i])[:cut] for i in history[-cfg.history_items :]]
        messages = build_prompt(hist_text, [(c, scrub(self.item_texts[c])[:cut]) for c in candidates])
        started = time.perf_counter()
        try:
            future = _EXECUTOR.submit(self.backend.complete, messages, cfg.timeout_s)
            answer = future.result(timeout=cfg.timeout_s)
            result = parse_answer(answer, candidates, messages)
        except concurrent.futures.TimeoutError:
            result = RerankResult(candidates, {}, True, f"timeout: no answer within {cfg.timeout_s:g} s")
        except Exception as exc:  # network errors, HTTP errors, malformed JSON envelopes
            result = RerankResult(candidates, {}, True, f"error: {type(exc).__name__}: {exc}"[:300])
        if not result.fallback and time.perf_counter() - started > cfg.timeout_s:
            result = RerankResult(candidates, {}, True, f"timeout: answer took over {cfg.timeout_s:g} s")
        self.stats.record(result)
        return result

    def score_histories(self, histories: Histories, users: np.ndarray | None = None) -> np.ndarray:
        scores = np.asarray(self.base.score_histories(histories, users), dtype=np.float32).copy()
        n = self.config.top_n
        seen = histories.to_csr()
        rows = np.repeat(np.arange(len(histories)), np.diff(seen.indptr))
        masked = scores.copy()
        masked[rows, seen.indices] = -np.inf
        from recloop.models.base import top_k

        top_ids, top_scores = top_k(masked, min(n, self.n_items))
        self.last_reasons = []
        for r in range(len(histories)):
            cands = [int(i) for i, s in zip(top_ids[r], top_scores[r]) if np.isfinite(s)]
            if len(cands) < 2:
                self.last_reasons.append({})
                continue
            result = self.rerank(histories.row(r), cands)
            ceiling = float(np.max(scores[r][np.isfinite(scores[r])])) if np.isfinite(scores[r]).any() else 0.0
            for rank, item in enumerate(result.ids):
                scores[r, item] = ceiling + 1.0 + (len(result.ids) - rank)
            self.last_reasons.append(result.reasons)
        return scores

    @property
    def scores_cold_items(self) -> bool:  # type: ignore[override]
        return self.base.scores_cold_items

    def item_vectors(self) -> np.ndarray | None:
        # Which items are alike does not change with reranking. The base's vector space and item weights
        # are not offered: reranked scores are neither inner products nor sums of item weights.
        return self.base.item_vectors()

    # ------------------------------------------------------------------ persistence
    def _state(self) -> dict[str, np.ndarray]:
        encoded = [t.encode("utf-8") for t in self.item_texts]
        offsets = np.concatenate([[0], np.cumsum([len(b) for b in encoded])]).astype(np.int64)
        arrays = {f"base.{k}": v for k, v in self.base._state().items()}
        arrays["texts.bytes"] = np.frombuffer(b"".join(encoded) or b"\0", dtype=np.uint8).copy()
        arrays["texts.offsets"] = offsets
        return arrays

    def _set_state(self, arrays: dict[str, np.ndarray]) -> None:
        raw = arrays["texts.bytes"].tobytes()
        off = arrays["texts.offsets"]
        self.item_texts = [raw[off[i] : off[i + 1]].decode("utf-8") for i in range(len(off) - 1)]
        self.base.n_users, self.base.n_items = self.n_users, self.n_items
        self.base.train_histories = self.train_histories
        self.base.id_map_ref = self.id_map_ref
        self.base._set_state({k[len("base.") :]: v for k, v in arrays.items() if k.startswith("base.")})

    def _extra_manifest(self) -> dict:
        return {"base": self.base._extra_manifest()}

    def _load_extra(self, extra: dict) -> None:
        self.base._load_extra(extra.get("base", {}))
