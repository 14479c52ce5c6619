"""llm_rerank: answer parsing, an OpenAI-compatible HTTP server on loopback, and a tiny local causal LM."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from recloop.config.models import LLMRerankConfig
from recloop.data.interactions import Histories, Interactions
from recloop.models.base import FitContext, ItemSide, Recommender
from recloop.models.llm_rerank import LLMRerank, build_prompt, parse_answer

N_ITEMS = 8
TEXTS = [f"Item {i}: a film about topic {i % 3}" for i in range(N_ITEMS)]


def _train() -> Interactions:
    # Popularity order: item 0 most popular, then 1, 2, ...
    users, items = [], []
    for item in range(N_ITEMS):
        for u in range(N_ITEMS - item):
            users.append(u)
            items.append(item)
    return Interactions.from_arrays(users, items, n_users=N_ITEMS, n_items=N_ITEMS)


# ------------------------------------------------------------------ parsing


def test_parse_keeps_only_candidates_and_appends_missing_in_base_order():
    prompt = build_prompt(["a"], [(3, "x"), (5, "y"), (7, "z")])
    answer = json.dumps(
        {
            "ranking": [
                {"id": 7, "reason": "Fits the history. Second sentence."},
                {"id": 99, "reason": "hallucinated"},
                {"id": "5"},
            ]
        }
    )
    result = parse_answer(answer, [3, 5, 7], prompt)
    assert result.ids == [7, 5, 3]
    assert result.reasons == {7: "Fits the history."}
    assert not result.fallback


def test_parse_bracket_list_without_json():
    prompt = build_prompt([], [(1, "x"), (2, "y")])
    assert parse_answer("I suggest [2] then [1] and [42].", [1, 2], prompt).ids == [2, 1]


@pytest.mark.parametrize(
    "answer,why",
    [
        ("", "empty"),
        ("no ids here at all", "no candidate ids"),
        (json.dumps({"ranking": [{"id": 42}]}), "no candidate ids"),
    ],
)
def test_parse_invalid_answers_fall_back(answer, why):
    prompt = build_prompt([], [(1, "x"), (2, "y")])
    result = parse_answer(answer, [1, 2], prompt)
    assert result.fallback and result.ids == [1, 2] and why in result.error


def test_parse_prompt_echo_is_rejected():
    prompt = build_prompt(["seen film"], [(1, "x"), (2, "y")])
    echo = prompt[0]["content"] + "\n" + prompt[1]["content"]
    result = parse_answer(echo, [1, 2], prompt)
    assert result.fallback and "echo" in result.error


# ------------------------------------------------------------------ OpenAI-compatible server


class ChatServer:
    """A chat-completions server on loopback whose behaviour the test sets per request."""

    def __init__(self):
        self.mode = "good"
        self.requests: list[dict] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
                content = body["messages"][-1]["content"]
                cands = [int(x) for x in __import__("re").findall(r"^\[(\d+)\]", content, flags=8)]
                if server.mode == "slow":
                    time.sleep(1.5)
                if server.mode == "http_error":
                    self.send_response(500)
                    self.end_headers()
                    return
                if server.mode == "malformed":
                    payload = b"{not json"
                else:
                    if server.mode == "identity":
                        text = json.dumps({"ranking": [{"id": c, "reason": "Same order."} for c in cands]})
                    elif server.mode == "good":
                        text = json.dumps({"ranking": [{"id": c, "reason": f"Because {c}."} for c in reversed(cands)]})
                    elif server.mode == "hostile":
                        text = json.dumps({"ranking": [{"id": 1000}, {"id": -1}, {"id": "DROP TABLE"}]})
                    else:  # echo
                        text = body["messages"][0]["content"] + content
                    payload = json.dumps({"choices": [{"message": {"role": "assistant", "content": text}}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def chat_server():
    server = ChatServer()
    yield server
    server.close()


def _reranker(**overrides) -> LLMRerank:
    cfg = {"type": "llm_rerank", "base": {"type": "popularity"}, "top_n": 4, "timeout_s": 0.5, **overrides}
    model = LLMRerank(LLMRerankConfig.model_validate(cfg))
    return model.fit(_train(), None, FitContext(items=ItemSide(texts=TEXTS)))


def test_openai_backend_reorders_top_n_and_gives_reasons(chat_server):
    model = _reranker(endpoint={"url": chat_server.url, "model": "tiny", "api_key": "s3cret"})
    hist = Histories.from_lists([[0]], N_ITEMS)  # item 0 seen → base top-4 is 1, 2, 3, 4
    recs = model.recommend(histories=hist, k=5)
    # The server reverses the candidates; the item below the top-N keeps its base place after them.
    assert recs.ids[0].tolist() == [4, 3, 2, 1, 5]
    assert model.last_reasons[0] == {4: "Because 4.", 3: "Because 3.", 2: "Because 2.", 1: "Because 1."}
    req = chat_server.requests[-1]
    assert req["path"] == "/v1/chat/completions" and req["auth"] == "Bearer s3cret"
    assert req["body"]["model"] == "tiny" and "Item 0" in req["body"]["messages"][-1]["content"]
    assert model.stats.calls == 1 and model.stats.fallbacks == 0


def test_personal_data_never_leaves_in_a_prompt(chat_server):
    planted = list(TEXTS)
    planted[0] = "Item 0 by jane.doe@example.com, call +44 20 7946 0958"
    planted[1] = "Item 1 paid with 4111 1111 1111 1111; staff id EMP-778812"
    planted[2] = "Item 2 (1999), 2001: A Space Odyssey"
    cfg = {
        "type": "llm_rerank",
        "base": {"type": "popularity"},
        "top_n": 4,
        "timeout_s": 0.5,
        "endpoint": {"url": chat_server.url, "model": "tiny"},
        "redact_patterns": [r"EMP-\d+"],
    }
    model = LLMRerank(LLMRerankConfig.model_validate(cfg))
    model.fit(_train(), None, FitContext(items=ItemSide(texts=planted)))
    model.recommend(histories=Histories.from_lists([[0, 1]], N_ITEMS), k=4)
    sent = json.dumps(chat_server.requests[-1]["body"])
    for secret in ("jane.doe@example.com", "7946", "4111", "EMP-778812"):
        assert secret not in sent, secret
    prompt = chat_server.requests[-1]["body"]["messages"][-1]["content"]
    assert "- Item 0 by [email], call [phone]" in prompt
    assert "- Item 1 paid with [card]; staff id [redacted]" in prompt
    assert "Item 2 (1999), 2001: A Space Odyssey" in prompt  # years and titles are not personal data


def test_a_bad_redact_pattern_is_a_config_error():
    with pytest.raises(ValueError, match=r"redact_patterns: '\(unclosed' is not a regular expression"):
        LLMRerankConfig.model_validate(
            {
                "type": "llm_rerank",
                "base": {"type": "popularity"},
                "endpoint": {"url": "http://x", "model": "m"},
                "redact_patterns": ["(unclosed"],
            }
        )


@pytest.mark.parametrize(
    "mode,kind",
    [("slow", "timeout"), ("malformed", "error"), ("http_error", "error"), ("hostile", "invalid"), ("echo", "invalid")],
)
def test_openai_backend_failures_keep_base_order(chat_server, mode, kind):
    chat_server.mode = mode
    model = _reranker(endpoint={"url": chat_server.url, "model": "tiny"})
    started = time.perf_counter()
    recs = model.recommend(histories=Histories.from_lists([[0]], N_ITEMS), k=4)
    assert time.perf_counter() - started < 1.4  # the 0.5 s budget holds even when the server is slow
    assert recs.ids[0].tolist() == [1, 2, 3, 4]
    assert model.stats.fallbacks == 1 and model.stats.errors == {kind: 1}


def test_config_errors_name_the_key():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="backend 'openai' needs"):
        LLMRerankConfig.model_validate({"type": "llm_rerank", "base": {"type": "popularity"}})
    with pytest.raises(ValidationError, match="base.type: unknown model type 'nope'"):
        LLMRerankConfig.model_validate(
            {"type": "llm_rerank", "base": {"type": "nope"}, "endpoint": {"url": "http://x", "model": "m"}}
        )


def test_save_load_round_trip(tmp_path, chat_server):
    model = _reranker(endpoint={"url": chat_server.url, "model": "tiny"})
    model.save(tmp_path / "m")
    loaded = Recommender.load(tmp_path / "m")
    assert loaded.item_texts == TEXTS
    hist = Histories.from_lists([[0]], N_ITEMS)
    np.testing.assert_array_equal(loaded.recommend(histories=hist, k=5).ids, model.recommend(histories=hist, k=5).ids)


# ------------------------------------------------------------------ local causal LM


@pytest.fixture(scope="module")
def tiny_causal_lm(tmp_path_factory):
    """A random-weight GPT-2-style model with a word-level tokenizer, built here (no hub)."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    torch.manual_seed(0)
    vocab = {"[UNK]": 0, "[PAD]": 1, "[EOS]": 2}
    for w in "the a film about topic item you user system assistant candidates json id reason 1 2 3 4 5 6 7 [ ] { } :".split():
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", eos_token="[EOS]")
    model = GPT2LMHeadModel(
        GPT2Config(
            vocab_size=len(vocab), n_positions=1024, n_embd=32, n_layer=1, n_head=2, eos_token_id=2, pad_token_id=1
        )
    )
    path = tmp_path_factory.mktemp("tiny-lm")
    model.save_pretrained(path)
    fast.save_pretrained(path)
    return str(path)


def test_local_backend_generates_and_falls_back_on_nonsense(tiny_causal_lm):
    model = _reranker(backend="local", model_path=tiny_causal_lm, max_new_tokens=24, timeout_s=20)
    recs = model.recommend(histories=Histories.from_lists([[0]], N_ITEMS), k=4)
    # A random model answers with random words: whatever it says, only candidates can come out.
    assert sorted(recs.ids[0].tolist()) == [1, 2, 3, 4]
    assert model.stats.calls == 1


def test_local_backend_respects_latency_budget(tiny_causal_lm):
    model = _reranker(backend="local", model_path=tiny_causal_lm, max_new_tokens=100_000, timeout_s=0.3)
    started = time.perf_counter()
    recs = model.recommend(histories=Histories.from_lists([[0]], N_ITEMS), k=4)
    assert time.perf_counter() - started < 3.0  # generation is cut at the budget, not after 100k tokens
    assert sorted(recs.ids[0].tolist()) == [1, 2, 3, 4] and model.stats.calls == 1


# ------------------------------------------------------------------ the shared model contract

from support.model_contract import ModelContract  # noqa: E402


class TestLLMRerankContract(ModelContract):
    """llm_rerank over EASE, against a loopback server that keeps the candidates' order."""

    model_type = "llm_rerank"
    capabilities = frozenset({"item_vectors"})
    params: dict = {}

    @pytest.fixture(scope="class", autouse=True)
    def identity_server(self):
        server = ChatServer()
        server.mode = "identity"
        type(self).params = {
            "base": {"type": "ease", "lambda": 1.0},
            "top_n": 5,
            "timeout_s": 5.0,
            "endpoint": {"url": server.url, "model": "identity"},
        }
        yield server
        server.close()
