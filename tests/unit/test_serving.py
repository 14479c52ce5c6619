"""The serving API over HTTP: a real uvicorn server on loopback, a model published in a file:// registry.

Expected slates come from the very model that was published (its own `recommend` / `similar_items`),
so each test pins what a client relies on: raw ids, exact scores and order, explanations, fallbacks,
rules, validation and auth.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pyarrow.parquet as pq
import pytest

from recloop.data.interactions import Histories
from recloop.eventlog.pseudonym import Pseudonymizer
from recloop.eventlog.records import feedback_schema, impression_schema
from recloop.serving.catalog import TextIndex
from recloop.serving.security import sha256_hex
from recloop.store import FileStore
from support.serving_helpers import (
    API_KEY,
    HMAC_KEY,
    MODEL_NAME,
    Dataset,
    fit_mf,
    fit_popularity,
    make_dataset,
    publish,
    running,
    serving_config,
)


@pytest.fixture(scope="module")
def data() -> Dataset:
    return make_dataset(cold_items=4)


@pytest.fixture(scope="module")
def mf(data: Dataset):
    return fit_mf(data)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, data: Dataset, mf) -> FileStore:
    tmp = tmp_path_factory.mktemp("serving")
    store = FileStore(f"file://{tmp / 'store'}")
    publish(store, mf, data, tmp, "run-1")
    return store


def ids(response: httpx.Response) -> list[str]:
    return [item["item_id"] for item in response.json()["items"]]


def raw(data: Dataset, idx: np.ndarray) -> list[str]:
    return [data.item_ids[int(i)] for i in idx if i >= 0]


# ---------------------------------------------------------------------------------------------- recommendations


def test_known_user_gets_the_models_top_k_with_scores_version_and_request_id(store, data, mf) -> None:
    expected = mf.recommend(users=[3], k=5)
    with running(store) as server:
        r = httpx.get(
            f"{server.url}/v1/recommendations",
            params={"user_id": "user-3", "k": 5},
            headers={"X-Request-ID": "client-chosen-id-1"},
        )
    assert r.status_code == 200
    body = r.json()
    assert ids(r) == raw(data, expected.ids[0])
    np.testing.assert_allclose([i["score"] for i in body["items"]], expected.scores[0], rtol=1e-6)
    assert body["model"] == {"name": MODEL_NAME, "version": 1, "type": "mf"}
    assert body["request_id"] == "client-chosen-id-1" == r.headers["x-request-id"]
    assert body["fallback"] is None and body["search"] == "exact" and body["policy"] == "greedy"
    assert body["user_known"] is True
    assert [i["rank"] for i in body["items"]] == [1, 2, 3, 4, 5]
    assert all(i["propensity"] == 1.0 for i in body["items"])
    seen = set(raw(data, mf.train_histories.row(3)))
    assert not seen & set(ids(r)), "exclude_seen defaults to true"


def test_exclude_seen_false_may_return_seen_items(store, data, mf) -> None:
    expected = mf.recommend(users=[3], k=5, exclude_seen=False)
    with running(store) as server:
        r = httpx.get(f"{server.url}/v1/recommendations", params={"user_id": "user-3", "k": 5, "exclude_seen": "false"})
    assert ids(r) == raw(data, expected.ids[0])
    assert set(ids(r)) & set(raw(data, mf.train_histories.row(3)))


def test_explanations_name_history_items_and_shared_text_attributes(store, data, mf) -> None:
    with running(store) as server:
        body = httpx.get(f"{server.url}/v1/recommendations", params={"user_id": "user-3", "k": 3}).json()
    history = mf.train_histories.row(3)
    unit = mf.item_factors / np.maximum(np.linalg.norm(mf.item_factors, axis=1, keepdims=True), 1e-12)
    for item in body["items"]:
        idx = data.item_ids.index(item["item_id"])
        sims = unit[history] @ unit[idx]
        order = np.argsort(-sims, kind="stable")[:3]
        expected = [(data.item_ids[history[j]], round(float(sims[j]), 6)) for j in order if sims[j] > 0]
        explanation = item["explanation"]
        assert explanation["method"] == "item_vectors"
        assert [(c["item_id"], c["weight"]) for c in explanation["because"]] == expected
        history_cats = {c for h in history for c in data.items.loc[h, "categories"]}
        assert explanation["shared_categories"] == [
            c for c in explanation["shared_categories"] if c in history_cats and c in item["categories"]
        ]
        assert item["categories"] == list(data.items.loc[idx, "categories"])
    # user-3 is a "Space" user: the Space items shown share words and the category with the history.
    space = [i for i in body["items"] if "Space" in i["categories"]]
    assert space and all("Space" in i["explanation"]["shared_categories"] for i in space)
    assert all({"rocket", "space"} & set(i["explanation"]["shared_terms"]) for i in space)


def test_posted_history_of_an_anonymous_user_uses_raw_ids_and_reports_unknown_ones(store, data, mf) -> None:
    expected = mf.recommend(histories=Histories.from_lists([[20, 21]], mf.n_items), k=4)
    with running(store) as server:
        r = httpx.post(
            f"{server.url}/v1/recommendations",
            json={"history": ["item-20", "not-an-item", "item-21"], "k": 4, "session_id": "sess-1"},
        )
    assert r.status_code == 200, r.text
    body = r.json()
    assert ids(r) == raw(data, expected.ids[0])
    np.testing.assert_allclose([i["score"] for i in body["items"]], expected.scores[0], rtol=1e-5)
    assert body["ignored_history_items"] == ["not-an-item"]
    assert body["user_known"] is False and body["fallback"] is None


def test_posted_history_extends_a_known_users_history(store, data, mf) -> None:
    base = mf.train_histories.row(3).tolist()
    expected = mf.recommend(histories=Histories.from_lists([base + [25]], mf.n_items), users=None, k=4)
    with running(store) as server:
        r = httpx.post(f"{server.url}/v1/recommendations", json={"user_id": "user-3", "history": ["item-25"], "k": 4})
    assert ids(r) == raw(data, expected.ids[0])
    assert "item-25" not in ids(r)


def test_unknown_user_gets_the_popular_fallback(store, data) -> None:
    counts = np.bincount(data.train.item, minlength=len(data.item_ids))
    expected = [data.item_ids[i] for i in np.lexsort((np.arange(len(counts)), -counts))[:5]]
    with running(store) as server:
        r = httpx.get(f"{server.url}/v1/recommendations", params={"user_id": "stranger", "k": 5})
        metrics = httpx.get(f"{server.url}/metrics").text
    body = r.json()
    assert body["fallback"] == "unknown_user" and body["search"] == "fallback:popular"
    assert ids(r) == expected
    assert [i["score"] for i in body["items"]] == [float(counts[data.item_ids.index(i)]) for i in expected]
    assert body["user_known"] is False
    assert 'recloop_fallback_total{policy="popular",reason="unknown_user"} 1.0' in metrics


def test_trending_fallback_decays_old_interactions(store, data) -> None:
    half_life = 3600.0
    ts = data.train.timestamp.astype(np.float64)
    weights = np.exp2(-(ts.max() - ts) / half_life)
    trending = np.bincount(data.train.item, weights=weights, minlength=len(data.item_ids))
    expected = [data.item_ids[i] for i in np.lexsort((np.arange(len(trending)), -trending))[:4]]
    with running(store, serving_config(fallback={"policy": "trending", "trending_half_life": "1h"})) as server:
        r = httpx.post(f"{server.url}/v1/recommendations", json={"history": [], "k": 4})
    assert r.json()["fallback"] == "no_history" and r.json()["search"] == "fallback:trending"
    assert ids(r) == expected
    # The newest users are cooking users: trending differs from all-time popularity here.
    assert ids(r)[0] == "item-15"


def test_text_fallback_for_a_history_the_id_model_never_saw(store, data) -> None:
    cold = ["item-30", "item-31"]  # no training interactions: mf cannot use them
    texts = data.items["text"].tolist()
    index = TextIndex.build(texts)
    assert index is not None
    scores = index.scores(index.profile(np.array([30, 31])))
    scores[[30, 31]] = -np.inf  # seen
    expected = [data.item_ids[i] for i in np.lexsort((np.arange(len(scores)), -scores))[:5]]
    with running(store, serving_config(fallback={"policy": "text"})) as server:
        r = httpx.post(f"{server.url}/v1/recommendations", json={"history": cold, "k": 5})
    body = r.json()
    assert body["fallback"] == "cold_history" and body["search"] == "fallback:text"
    assert ids(r) == expected
    assert all(i["categories"] == ["Cooking"] for i in body["items"])
    assert all(i["explanation"]["method"] == "text" for i in body["items"])
    cooking_words = {"pasta", "recipe", "cooking", "dinner", "kitchen"}
    assert all(
        i["explanation"]["shared_terms"] and set(i["explanation"]["shared_terms"]) <= cooking_words
        for i in body["items"]
    )


def test_similar_items_are_the_models_neighbours(store, data, mf) -> None:
    expected = mf.similar_items([3], k=4)
    with running(store) as server:
        r = httpx.get(f"{server.url}/v1/items/item-3/similar", params={"k": 4})
        missing = httpx.get(f"{server.url}/v1/items/no-such-item/similar")
    assert r.status_code == 200
    assert ids(r) == raw(data, expected.ids[0])
    np.testing.assert_allclose([i["score"] for i in r.json()["items"]], expected.scores[0], rtol=1e-6)
    assert all(i["explanation"]["because"][0]["item_id"] == "item-3" for i in r.json()["items"])
    assert missing.status_code == 404 and "no-such-item" in missing.json()["detail"]


# ---------------------------------------------------------------------------------------------- rules


def test_excluded_items_blocked_categories_and_category_filter(store, data, mf) -> None:
    full = raw(data, mf.recommend(users=[3], k=10).ids[0])
    settings = serving_config(rules={"excluded_items": [full[0]], "blocked_categories": ["Science"]})
    science = {data.item_ids[i] for i in range(len(data.item_ids)) if "Science" in data.items.loc[i, "categories"]}
    expected = [i for i in full if i != full[0] and i not in science][:3]
    with running(store, settings) as server:
        r = httpx.get(f"{server.url}/v1/recommendations", params={"user_id": "user-3", "k": 3})
        cooking = httpx.get(
            f"{server.url}/v1/recommendations", params={"user_id": "user-3", "k": 3, "category": "Cooking"}
        )
        unknown = httpx.get(f"{server.url}/v1/recommendations", params={"user_id": "user-3", "category": "Nope"})
    assert ids(r) == expected
    assert all(i["categories"] == ["Cooking"] for i in cooking.json()["items"]) and len(cooking.json()["items"]) == 3
    assert unknown.status_code == 404 and "Nope" in unknown.json()["detail"] and "Cooking" in unknown.json()["detail"]


def test_max_per_category_caps_each_category(store, data) -> None:
    with running(store, serving_config(rules={"max_per_category": 1})) as server:
        body = httpx.get(f"{server.url}/v1/recommendations", params={"user_id": "user-3", "k": 5}).json()
    cats = [c for i in body["items"] for c in i["categories"]]
    assert len(cats) == len(set(cats)), cats
    # Space/Science items block each other's categories: one of them plus one cooking item fit.
    assert len(body["items"]) == 2


def test_mmr_diversifies_the_slate(store, data, mf) -> None:
    unit = mf.item_factors / np.maximum(np.linalg.norm(mf.item_factors, axis=1, keepdims=True), 1e-12)

    def mean_similarity(items: list[str]) -> float:
        v = unit[[data.item_ids.index(i) for i in items]]
        s = v @ v.T
        return float((s.sum() - np.trace(s)) / (len(items) * (len(items) - 1)))

    with running(store) as server:
        greedy = ids(httpx.get(f"{server.url}/v1/recommendations", params={"user_id": "user-3", "k": 5}))
    with running(store, serving_config(rules={"mmr_lambda": 0.3})) as server:
        diverse = ids(httpx.get(f"{server.url}/v1/recommendations", params={"user_id": "user-3", "k": 5}))
    assert diverse[0] == greedy[0]
    assert diverse != greedy
    assert mean_similarity(diverse) < mean_similarity(greedy)


def test_epsilon_greedy_logs_true_propensities_and_is_reproducible_per_request(store) -> None:
    epsilon, pool = 0.5, 20
    settings = serving_config(exploration={"epsilon": epsilon, "seed": 7}, rules={"candidate_pool": pool})
    with running(store, settings) as server:

        def slate(rid: str) -> dict[str, Any]:
            return httpx.get(
                f"{server.url}/v1/recommendations", params={"user_id": "user-3", "k": 5}, headers={"X-Request-ID": rid}
            ).json()

        first, again = slate("request-0001"), slate("request-0001")
        others = [slate(f"request-{n:04d}") for n in range(2, 12)]
    assert first["policy"] == "epsilon_greedy"
    assert first["items"] == again["items"]
    for body in [first, *others]:
        for slot, item in enumerate(body["items"]):
            uniform = epsilon / (pool - slot)
            assert item["propensity"] in (pytest.approx(1 - epsilon + uniform), pytest.approx(uniform))
    explored = [i for b in others for i in b["items"] if i["propensity"] < 0.5]
    assert explored, "with epsilon 0.5 some of 50 slots explore"


# ---------------------------------------------------------------------------------------------- validation & auth


def test_request_validation_bounds(store) -> None:
    settings = serving_config(limits={"max_k": 20, "max_history": 3, "max_body_bytes": 2048})
    with running(store, settings) as server:
        url = f"{server.url}/v1/recommendations"
        assert httpx.get(url, params={"user_id": "user-1", "k": 0}).status_code == 422
        assert httpx.get(url, params={"user_id": "user-1", "k": 21}).status_code == 422
        assert httpx.get(url, params={"user_id": "user-1", "k": 20}).status_code == 200
        assert httpx.get(url, params={"user_id": "bad id with spaces"}).status_code == 422
        assert httpx.get(url).status_code == 422
        assert httpx.post(url, json={"history": ["item-1"] * 4}).status_code == 422
        assert httpx.post(url, json={"history": [], "surprise": 1}).status_code == 422
        big = httpx.post(
            url,
            content=b'{"history": [' + b'"item-1",' * 400 + b'"item-2"]}',
            headers={"content-type": "application/json"},
        )
        assert big.status_code == 413 and "2048" in big.json()["detail"]
        assert httpx.get(f"{server.url}/v1/items/%20bad/similar").status_code == 422
        feedback = httpx.post(
            f"{server.url}/v1/feedback",
            headers={"X-API-Key": API_KEY},
            json={"events": [{"item_id": "item-1", "event_type": "Click!"}]},
        )
        assert feedback.status_code == 422


def test_feedback_and_admin_need_an_api_key_reads_are_configurable(store) -> None:
    event = {"events": [{"item_id": "item-1", "event_type": "click", "user_id": "user-1"}]}
    with running(store) as server:
        url = server.url
        no_key = httpx.post(f"{url}/v1/feedback", json=event)
        assert no_key.status_code == 401 and "X-API-Key" in no_key.json()["detail"]
        assert (
            httpx.post(f"{url}/v1/feedback", json=event, headers={"X-API-Key": "wrong-key-wrong-key"}).status_code
            == 401
        )
        assert httpx.post(f"{url}/v1/feedback", json=event, headers={"X-API-Key": API_KEY}).status_code == 202
        assert (
            httpx.post(f"{url}/v1/feedback", json=event, headers={"Authorization": f"Bearer {API_KEY}"}).status_code
            == 202
        )
        assert httpx.get(f"{url}/v1/admin/status").status_code == 401
        status = httpx.get(f"{url}/v1/admin/status", headers={"X-API-Key": API_KEY})
        assert status.status_code == 200 and status.json()["model"]["version"] == 1
        assert httpx.get(f"{url}/v1/recommendations", params={"user_id": "user-1"}).status_code == 200
    hashed = f"sha256:{sha256_hex('another-key-0123456789')}"
    with running(store, serving_config(auth={"protect_reads": True}), keys=hashed) as server:
        assert httpx.get(f"{server.url}/v1/recommendations", params={"user_id": "user-1"}).status_code == 401
        ok = httpx.get(
            f"{server.url}/v1/recommendations",
            params={"user_id": "user-1"},
            headers={"X-API-Key": "another-key-0123456789"},
        )
        assert ok.status_code == 200
        assert httpx.get(f"{server.url}/healthz").status_code == 200
    with running(store, keys=None) as server:
        refused = httpx.post(f"{server.url}/v1/feedback", json=event, headers={"X-API-Key": API_KEY})
        assert refused.status_code == 401 and "RECLOOP_API_KEYS" in refused.json()["detail"]


def test_cors_is_off_by_default_and_on_for_configured_origins(store) -> None:
    preflight = {"Origin": "https://shop.example", "Access-Control-Request-Method": "GET"}
    with running(store) as server:
        r = httpx.get(f"{server.url}/healthz", headers={"Origin": "https://shop.example"})
        assert "access-control-allow-origin" not in r.headers
    with running(store, serving_config(cors_origins=["https://shop.example"])) as server:
        r = httpx.options(f"{server.url}/v1/recommendations", headers=preflight)
        assert r.headers["access-control-allow-origin"] == "https://shop.example"


# ---------------------------------------------------------------------------------------------- probes & logs


def test_probes_metrics_and_openapi(store) -> None:
    with running(store) as server:
        assert httpx.get(f"{server.url}/healthz").json() == {"status": "ok"}
        ready = httpx.get(f"{server.url}/readyz").json()
        assert ready["status"] == "ready" and ready["version"] == 1 and ready["model"] == MODEL_NAME
        httpx.get(f"{server.url}/v1/recommendations", params={"user_id": "user-1"})
        httpx.get(f"{server.url}/v1/recommendations", params={"user_id": "user-1", "k": 0})
        metrics = httpx.get(f"{server.url}/metrics")
        spec = httpx.get(f"{server.url}/openapi.json").json()
        docs = httpx.get(f"{server.url}/docs")
    text = metrics.text
    assert metrics.headers["content-type"].startswith("text/plain")
    assert f'recloop_model_version{{model="{MODEL_NAME}"}} 1.0' in text
    assert 'recloop_requests_total{method="GET",route="/v1/recommendations",status="200"} 1.0' in text
    assert 'recloop_requests_total{method="GET",route="/v1/recommendations",status="422"} 1.0' in text
    assert 'recloop_request_duration_seconds_count{method="GET",route="/v1/recommendations"} 2.0' in text
    assert "recloop_fallback_total" in text and "recloop_requests_shed_total 0.0" in text
    assert {
        "/v1/recommendations",
        "/v1/items/{item_id}/similar",
        "/v1/feedback",
        "/healthz",
        "/readyz",
        "/metrics",
    } <= set(spec["paths"])
    assert docs.status_code == 200 and "swagger" in docs.text.lower()


def test_impressions_and_feedback_reach_the_store_pseudonymized(tmp_path: Path, data, mf) -> None:
    store = FileStore(f"file://{tmp_path / 'store'}")
    publish(store, mf, data, tmp_path, "run-1")
    # Only the admin flush below writes: the background flusher's 1 s interval could beat it under load.
    with running(store, serving_config(logs={"flush_interval": "1h"})) as server:
        rec = httpx.get(f"{server.url}/v1/recommendations", params={"user_id": "user-3", "k": 3}).json()
        fb = httpx.post(
            f"{server.url}/v1/feedback",
            headers={"X-API-Key": API_KEY},
            json={
                "events": [
                    {
                        "item_id": rec["items"][0]["item_id"],
                        "event_type": "click",
                        "user_id": "user-3",
                        "request_id": rec["request_id"],
                        "position": 1,
                    },
                    {
                        "item_id": "item-9",
                        "event_type": "rating",
                        "value": 4.5,
                        "session_id": "sess-9",
                        "timestamp": "2026-01-02T03:04:05Z",
                    },
                ]
            },
        ).json()
        flushed = httpx.post(f"{server.url}/v1/admin/flush", headers={"X-API-Key": API_KEY}).json()
    assert flushed["written"] == {"feedback": 2, "impressions": 1}
    keys = store.list("logs")
    assert len([k for k in keys if k.startswith("logs/impressions/")]) == 1
    assert len([k for k in keys if k.startswith("logs/feedback/")]) == 1
    for key in keys:
        assert b"user-3" not in store.get_bytes(key) and b"sess-9" not in store.get_bytes(key)
    pseudo = Pseudonymizer(HMAC_KEY, "test")
    imp = pq.read_table(io.BytesIO(store.get_bytes(next(k for k in keys if "/impressions/" in k))))
    assert imp.schema.equals(impression_schema())
    row = imp.to_pylist()[0]
    assert row["request_id"] == rec["request_id"] and row["user_key"] == pseudo("user-3")
    assert row["item_ids"] == [i["item_id"] for i in rec["items"]]
    assert row["scores"] == pytest.approx([i["score"] for i in rec["items"]])
    assert row["propensities"] == [1.0, 1.0, 1.0]
    assert (row["model_name"], row["model_version"], row["model_type"], row["policy"], row["search"]) == (
        MODEL_NAME,
        1,
        "mf",
        "greedy",
        "exact",
    )
    assert row["fallback_reason"] is None and row["user_known"] is True and row["k"] == 3
    assert row["history_length"] == len(mf.train_histories.row(3)) and row["latency_ms"] > 0
    day = row["served_at"].date().isoformat()
    assert any(k.startswith(f"logs/impressions/{day}/") for k in keys)
    fbt = pq.read_table(io.BytesIO(store.get_bytes(next(k for k in keys if "/feedback/" in k))))
    assert fbt.schema.equals(feedback_schema())
    rows = sorted(fbt.to_pylist(), key=lambda r: r["event_type"])
    assert [r["feedback_id"] for r in sorted(rows, key=lambda r: fb["feedback_ids"].index(r["feedback_id"]))] == fb[
        "feedback_ids"
    ]
    click, rating = rows
    assert (click["user_key"], click["request_id"], click["position"], click["value"]) == (
        pseudo("user-3"),
        rec["request_id"],
        1,
        None,
    )
    assert (rating["session_key"], rating["value"], rating["user_key"]) == (pseudo("sess-9", "session"), 4.5, None)
    assert rating["event_time"].isoformat() == "2026-01-02T03:04:05+00:00"


def test_not_ready_until_a_version_is_promoted_then_picked_up(tmp_path: Path, data) -> None:
    store = FileStore(f"file://{tmp_path / 'store'}")
    with running(store, ready=False) as server:
        r = httpx.get(f"{server.url}/readyz")
        assert r.status_code == 503 and r.json()["status"] == "no_model" and "publish" in r.json()["detail"]
        rec = httpx.get(f"{server.url}/v1/recommendations", params={"user_id": "user-1"})
        assert rec.status_code == 503 and rec.headers["retry-after"] == "5"
        assert httpx.get(f"{server.url}/healthz").status_code == 200
        publish(store, fit_popularity(data), data, tmp_path, "run-1")
        assert server.wait_ready()["version"] == 1
        assert (
            httpx.get(f"{server.url}/v1/recommendations", params={"user_id": "user-1"}).json()["model"]["type"]
            == "popularity"
        )
