"""Synthetic recommendation data with known structure, for demos and tests.

The world: a catalog whose items each belong to one topic ("space opera", "cooking", "jazz", ...) and
whose title and description are composed from that topic's own vocabulary, so item text predicts who
will like it. Users have Dirichlet topic tastes that drift from a starting mix to an ending mix over
their active period (recent behaviour predicts the future better than old). Items have a few "next
item" affinities (series, follow-ups), so with some probability a user's next item continues from the
previous one: order matters and sequence models can learn it. Item popularity is Zipf-skewed. Ratings
are higher for items of topics the user likes. All timestamps fall in a fixed period that ends before
today, and everything is a pure function of the seed: the same seed gives byte-identical files.

Users and context can shift tastes (both off by default, which leaves the files as they were):
- `user_effect`: each age group and each region has its own topic preferences (standard normal per
  topic); a user's start and end tastes are reweighted by `exp(user_effect * (age prefs + region prefs))`,
  so the attributes in users.csv tell something about what the user will like.
- `context_effect`: each event gets a `device` (mobile, desktop, tv; a column of interactions.csv) and has
  a part of day from its timestamp (night, morning, afternoon, evening, UTC); the taste at that event is
  reweighted by `exp(context_effect * (device prefs + part-of-day prefs))`, so the same user picks other
  topics on the TV in the evening than on the phone in the morning.
The preferences are drawn from a stream of their own (`SynthTruth.attribute_prefs`, `context_prefs`).

`generate(...)` returns a `SynthData`; `SynthData.write(dir)` writes `interactions.csv`
(user_id,item_id,timestamp,rating), `items.csv` (item_id,title,category,description) and `users.csv`.
`SynthData.truth` holds the ground truth (each item's topic, each user's start and end tastes).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

# Each topic: (category label, title nouns, title adjectives, description words). Vocabularies do not
# overlap, so an item's words identify its topic.
TOPICS: dict[str, tuple[str, tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = {
    "space opera": (
        "Space Opera",
        ("Starship", "Nebula", "Empire", "Galaxy", "Armada", "Comet", "Orbit", "Frontier"),
        ("Stellar", "Galactic", "Cosmic", "Interstellar", "Astral"),
        (
            "starships",
            "warp",
            "admiral",
            "rebellion",
            "planets",
            "alien",
            "fleet",
            "hyperspace",
            "captain",
            "asteroid",
            "empire",
            "cosmos",
        ),
    ),
    "cooking": (
        "Cooking",
        ("Kitchen", "Recipe", "Feast", "Bakery", "Skillet", "Harvest", "Pantry", "Bistro"),
        ("Savory", "Rustic", "Spicy", "Homemade", "Golden"),
        (
            "recipes",
            "chef",
            "garlic",
            "simmer",
            "pastry",
            "spices",
            "oven",
            "flavors",
            "dough",
            "braise",
            "sauce",
            "butter",
        ),
    ),
    "jazz": (
        "Jazz",
        ("Saxophone", "Groove", "Bebop", "Trumpet", "Lounge", "Swing", "Ballad", "Quartet"),
        ("Smoky", "Blue", "Midnight", "Cool", "Velvet"),
        (
            "improvisation",
            "saxophone",
            "rhythm",
            "swing",
            "trumpet",
            "piano",
            "club",
            "melody",
            "bassline",
            "solo",
            "chords",
            "brass",
        ),
    ),
    "true crime": (
        "True Crime",
        ("Detective", "Alibi", "Verdict", "Witness", "Suspect", "Evidence", "Case", "Motive"),
        ("Cold", "Hidden", "Deadly", "Silent", "Unsolved"),
        (
            "murder",
            "investigation",
            "forensic",
            "detective",
            "trial",
            "jury",
            "suspect",
            "confession",
            "evidence",
            "police",
            "crime",
            "verdict",
        ),
    ),
    "gardening": (
        "Gardening",
        ("Garden", "Greenhouse", "Orchard", "Seedling", "Meadow", "Blossom", "Trellis", "Grove"),
        ("Green", "Blooming", "Wild", "Lush", "Sunny"),
        (
            "soil",
            "compost",
            "roses",
            "pruning",
            "seeds",
            "vegetables",
            "watering",
            "perennials",
            "mulch",
            "flowers",
            "harvest",
            "shrubs",
        ),
    ),
    "mountaineering": (
        "Mountaineering",
        ("Summit", "Ridge", "Glacier", "Peak", "Ascent", "Crevasse", "Basecamp", "Traverse"),
        ("High", "Frozen", "Vertical", "Alpine", "Steep"),
        (
            "climbing",
            "ropes",
            "altitude",
            "oxygen",
            "ice",
            "expedition",
            "sherpa",
            "avalanche",
            "crampons",
            "storm",
            "cliffs",
            "trail",
        ),
    ),
    "romance": (
        "Romance",
        ("Heart", "Kiss", "Promise", "Wedding", "Letter", "Embrace", "Sweetheart", "Vow"),
        ("Tender", "Secret", "Forever", "Sweet", "Passionate"),
        (
            "love",
            "romance",
            "longing",
            "wedding",
            "heartbreak",
            "couple",
            "desire",
            "soulmate",
            "affair",
            "engagement",
            "devotion",
            "flirting",
        ),
    ),
    "programming": (
        "Programming",
        ("Compiler", "Algorithm", "Kernel", "Function", "Debugger", "Protocol", "Runtime", "Refactor"),
        ("Clean", "Concurrent", "Functional", "Typed", "Distributed"),
        (
            "code",
            "software",
            "python",
            "testing",
            "databases",
            "recursion",
            "latency",
            "api",
            "deployment",
            "bugs",
            "memory",
            "threads",
        ),
    ),
    "history": (
        "History",
        ("Dynasty", "Crown", "Revolution", "Empire", "Chronicle", "Legion", "Treaty", "Castle"),
        ("Ancient", "Medieval", "Forgotten", "Royal", "Imperial"),
        (
            "kings",
            "battle",
            "century",
            "dynasty",
            "archives",
            "conquest",
            "monarchy",
            "treaty",
            "rebellion",
            "siege",
            "pharaoh",
            "knights",
        ),
    ),
    "wildlife": (
        "Wildlife",
        ("Savanna", "Predator", "Migration", "Reef", "Jungle", "Tundra", "Pack", "Nest"),
        ("Untamed", "Roaming", "Endangered", "Feral", "Majestic"),
        (
            "lions",
            "elephants",
            "habitat",
            "wolves",
            "birds",
            "ocean",
            "species",
            "safari",
            "predators",
            "herd",
            "whales",
            "conservation",
        ),
    ),
}
# Description sentences; {0}..{4} are topic words, so only the topic vocabulary carries signal.
_SENTENCES = (
    "A tale of {0} and {1}, where {2} meets {3}. Features {4}.",
    "An essential guide to {0}, {1} and {2}, with notes on {3} and {4}.",
    "{0} and {1} take centre stage in this story of {2}, {3} and {4}.",
    "Everything about {0}: {1}, {2}, {3} and a little {4}.",
    "From {0} to {1}: a journey through {2} and {3}, ending with {4}.",
)
DEFAULT_END = datetime(2025, 1, 1, tzinfo=UTC)
_CANDIDATES = 6
AGE_GROUPS = ("18-24", "25-34", "35-44", "45-54", "55+")
REGIONS = ("north", "south", "east", "west")
DEVICES = ("mobile", "desktop", "tv")
DAY_PARTS = ("night", "morning", "afternoon", "evening")  # UTC hours 0-5, 6-11, 12-17, 18-23


@dataclass(frozen=True)
class SynthTruth:
    """What generated the data: lets tests check that models and text recover real structure."""

    topic_names: list[str]
    item_topic: dict[str, str]  # item_id -> topic name
    user_taste_start: np.ndarray  # n_users x n_topics, rows sum to 1
    user_taste_end: np.ndarray
    next_items: dict[str, list[str]]  # item_id -> its follow-up items
    # attribute or context name -> value -> topic preferences (n_topics,); empty when the effect is off
    attribute_prefs: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    context_prefs: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)

    def user_favorite_topic(self, user_index: int, at: str = "end") -> str:
        taste = self.user_taste_end if at == "end" else self.user_taste_start
        return self.topic_names[int(taste[user_index].argmax())]


@dataclass(frozen=True)
class SynthData:
    interactions: pd.DataFrame  # user_id, item_id, timestamp (epoch s), rating[, device]
    items: pd.DataFrame  # item_id, title, category, description
    users: pd.DataFrame  # user_id, age_group, region, signup_date
    truth: SynthTruth

    def write(self, out_dir: str | Path) -> dict[str, Path]:
        """Write the three CSV files into `out_dir` (created if missing); returns name -> path."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {}
        for name, frame in (("interactions", self.interactions), ("items", self.items), ("users", self.users)):
            path = out / f"{name}.csv"
            tmp = path.with_name(f".{path.name}.tmp")
            frame.to_csv(tmp, index=False, lineterminator="\n", float_format="%.1f")
            tmp.replace(path)
            paths[name] = path
        return paths


def ground_truth_topics(data: SynthData) -> dict[str, str]:
    """item_id -> the topic that generated the item (its category is that topic's label)."""
    return dict(data.truth.item_topic)


def generate(
    n_users: int = 1000,
    n_items: int = 500,
    seed: int = 0,
    *,
    n_topics: int = 10,
    events_per_user: float = 50.0,
    days: int = 365,
    end: datetime = DEFAULT_END,
    taste_concentration: float = 0.3,
    drift: float = 1.0,
    sequence_prob: float = 0.35,
    popularity_exponent: float = 0.9,
    user_effect: float = 0.0,
    context_effect: float = 0.0,
) -> SynthData:
    """A synthetic world of `n_users` x `n_items` with about `n_users * events_per_user` events.

    drift: 0 keeps each user's taste fixed, 1 moves it all the way to an independent end taste.
    sequence_prob: chance that an event follows on from the previous item's follow-ups.
    user_effect, context_effect: how strongly user attributes and event context shift tastes (module
    docstring); 0 = not at all, 1 = a preference one standard deviation up multiplies a topic's weight by e.
    """
    import numpy as np
    import pandas as pd

    if n_users < 1 or n_items < 2:
        raise ValueError(f"need at least 1 user and 2 items (got {n_users} users, {n_items} items)")
    if not 1 <= n_topics <= len(TOPICS):
        raise ValueError(f"n_topics must be between 1 and {len(TOPICS)} (got {n_topics})")
    if not 0 <= drift <= 1 or not 0 <= sequence_prob < 1:
        raise ValueError(f"drift must lie in [0, 1] and sequence_prob in [0, 1) (got {drift}, {sequence_prob})")
    if user_effect < 0 or context_effect < 0:
        raise ValueError(f"user_effect and context_effect must be >= 0 (got {user_effect}, {context_effect})")
    rng = np.random.default_rng(seed)
    # Attributes, context and their effects come from a stream of their own: with both effects off the
    # interactions and items are exactly what they were before these existed.
    side = np.random.default_rng([seed, 1])
    topic_names = list(TOPICS)[:n_topics]
    age = side.integers(0, len(AGE_GROUPS), n_users)
    region = side.integers(0, len(REGIONS), n_users)
    attribute_prefs = _preferences(side, {"age_group": AGE_GROUPS, "region": REGIONS}, n_topics, user_effect)
    context_prefs = _preferences(side, {"device": DEVICES, "day_part": DAY_PARTS}, n_topics, context_effect)

    # ---- catalog: topic, popularity, text
    item_topic = np.sort(rng.integers(0, n_topics, n_items))
    rng.shuffle(item_topic)
    item_ids = [f"i{j:05d}" for j in range(n_items)]
    popularity = 1.0 / np.arange(1, n_items + 1) ** popularity_exponent
    popularity = popularity[rng.permutation(n_items)]
    titles, descriptions, categories = [], [], []
    used_titles: dict[str, int] = {}
    for j in range(n_items):
        label, nouns, adjectives, words = TOPICS[topic_names[item_topic[j]]]
        title = f"{adjectives[rng.integers(len(adjectives))]} {nouns[rng.integers(len(nouns))]}"
        used_titles[title] = used_titles.get(title, 0) + 1
        if used_titles[title] > 1:  # same name again: a sequel, as catalogs have
            title = f"{title} {_roman(used_titles[title])}"
        picked = rng.choice(len(words), size=5, replace=False)
        sentence = _SENTENCES[rng.integers(len(_SENTENCES))].format(*(words[k] for k in picked))
        description = sentence[0].upper() + sentence[1:]
        titles.append(title)
        descriptions.append(description)
        categories.append(label)

    # ---- follow-ups: mostly same-topic items, weighted towards popular ones
    by_topic = [np.flatnonzero(item_topic == t) for t in range(n_topics)]
    next_items: list[np.ndarray] = []
    for j in range(n_items):
        pool = by_topic[item_topic[j]]
        pool = pool[pool != j] if len(pool) > 1 else np.flatnonzero(np.arange(n_items) != j)
        k = min(3, len(pool))
        weights = popularity[pool] / popularity[pool].sum()
        next_items.append(rng.choice(pool, size=k, replace=False, p=weights))

    # ---- users: drifting tastes, activity, attributes
    alpha = np.full(n_topics, taste_concentration)
    taste_start = rng.dirichlet(alpha, n_users)
    taste_end = (1 - drift) * taste_start + drift * rng.dirichlet(alpha, n_users)
    if attribute_prefs:
        shift = np.exp(
            user_effect
            * (
                _prefs_matrix(attribute_prefs["age_group"], AGE_GROUPS)[age]
                + _prefs_matrix(attribute_prefs["region"], REGIONS)[region]
            )
        )
        taste_start = _renormalized(taste_start * shift)
        taste_end = _renormalized(taste_end * shift)
    device_prefs = _prefs_matrix(context_prefs["device"], DEVICES) if context_prefs else None
    day_part_prefs = _prefs_matrix(context_prefs["day_part"], DAY_PARTS) if context_prefs else None
    devices_col = []
    n_events = np.clip(rng.lognormal(np.log(events_per_user) - 0.18, 0.6, n_users).astype(int), 5, n_items // 2 + 5)
    n_events = np.minimum(n_events, n_items)  # no re-consumption, so nobody can see more than the catalog
    end_s = int(end.timestamp())
    start_s = end_s - days * 86400
    # Cumulative distributions, sampled with searchsorted: much faster than rng.choice(p=...) per event.
    in_topic_cdf = [np.cumsum(popularity[idx]) / popularity[idx].sum() for idx in by_topic]
    topic_share = np.bincount(item_topic, minlength=n_topics) > 0

    next_lists = [[int(x) for x in nxt] for nxt in next_items]
    users_col, items_col, times_col, ratings_col = [], [], [], []
    for u in range(n_users):
        count = int(n_events[u])
        first = start_s + rng.integers(0, int(days * 86400 * 0.7))
        gaps = rng.exponential(1.0, count)
        span = rng.uniform(0.2, 1.0) * (end_s - first - 3600)
        times = first + np.floor(np.cumsum(gaps) / gaps.sum() * span).astype(np.int64)
        # Taste at each event, drifting linearly from start to end over the user's history.
        progress = np.arange(count) / max(1, count - 1)
        tastes = (1 - progress)[:, None] * taste_start[u] + progress[:, None] * taste_end[u]
        if device_prefs is not None and day_part_prefs is not None:
            device = side.integers(0, len(DEVICES), count)
            day_part = (times // 3600 % 24) // 6
            tastes = _renormalized(tastes * np.exp(context_effect * (device_prefs[device] + day_part_prefs[day_part])))
            devices_col.append(device)
        masked = tastes * topic_share
        topic_cdf = np.cumsum(masked / masked.sum(axis=1, keepdims=True), axis=1)
        # Pre-draw a few taste-driven candidates per event (vectorised); the loop takes the first unseen.
        topics = np.minimum((rng.random((count, _CANDIDATES, 1)) > topic_cdf[:, None, :]).sum(-1), n_topics - 1)
        draws = rng.random((count, _CANDIDATES))
        candidates = np.empty((count, _CANDIDATES), dtype=np.int64)
        for t in range(n_topics):
            hit = topics == t
            if hit.any():
                pos = np.minimum(np.searchsorted(in_topic_cdf[t], draws[hit], side="right"), len(by_topic[t]) - 1)
                candidates[hit] = by_topic[t][pos]
        follow = (rng.random(count) < sequence_prob).tolist()
        follow_pick = rng.integers(0, 1 << 30, count).tolist()
        seen: set[int] = set()
        previous = -1
        chosen = np.empty(count, dtype=np.int64)
        for e, row in enumerate(candidates.tolist()):
            choice = -1
            if previous >= 0 and follow[e]:
                options = [x for x in next_lists[previous] if x not in seen]
                if options:
                    choice = options[follow_pick[e] % len(options)]
            if choice < 0:
                choice = next((c for c in row if c not in seen), -1)
            tries = 0
            while choice < 0 or choice in seen:
                t = min(int(np.searchsorted(topic_cdf[e], rng.random(), side="right")), n_topics - 1)
                pos = int(np.searchsorted(in_topic_cdf[t], rng.random(), side="right"))
                choice = int(by_topic[t][min(pos, len(by_topic[t]) - 1)])
                tries += 1
                if tries > 50:  # the user's topics are exhausted: any unseen item
                    unseen = np.setdiff1d(np.arange(n_items), np.fromiter(seen, np.int64, len(seen)))
                    choice = int(unseen[rng.integers(len(unseen))])
            seen.add(choice)
            previous = choice
            chosen[e] = choice
        affinity = tastes[np.arange(count), item_topic[chosen]] * n_topics  # 1.0 = average interest
        score = 2.6 + 0.9 * np.log1p(affinity) + rng.normal(0, 0.6, count)
        users_col.append(np.full(count, u))
        items_col.append(chosen)
        times_col.append(times)
        ratings_col.append(np.clip(np.round(score * 2) / 2, 0.5, 5.0))

    user_ids = [f"u{u:05d}" for u in range(n_users)]
    interactions = pd.DataFrame(
        {
            "user_id": np.asarray(user_ids, dtype=object)[np.concatenate(users_col)],
            "item_id": np.asarray(item_ids, dtype=object)[np.concatenate(items_col)],
            "timestamp": np.concatenate(times_col).astype(np.int64),
            "rating": np.concatenate(ratings_col).astype(np.float64),
        }
    )
    if devices_col:
        interactions["device"] = np.asarray(DEVICES, dtype=object)[np.concatenate(devices_col)]
    interactions = interactions.sort_values(["timestamp", "user_id"], kind="stable").reset_index(drop=True)
    items = pd.DataFrame({"item_id": item_ids, "title": titles, "category": categories, "description": descriptions})
    first_seen = interactions.groupby("user_id", sort=True)["timestamp"].min()
    signup = [
        datetime.fromtimestamp(int(first_seen.get(uid, end_s)) - int(rng.integers(0, 30 * 86400)), tz=UTC)
        .date()
        .isoformat()
        for uid in user_ids
    ]
    users = pd.DataFrame(
        {
            "user_id": user_ids,
            "age_group": np.asarray(AGE_GROUPS, dtype=object)[age],
            "region": np.asarray(REGIONS, dtype=object)[region],
            "signup_date": signup,
        }
    )
    truth = SynthTruth(
        topic_names=topic_names,
        item_topic={item_ids[j]: topic_names[item_topic[j]] for j in range(n_items)},
        user_taste_start=taste_start,
        user_taste_end=taste_end,
        next_items={item_ids[j]: [item_ids[int(x)] for x in next_items[j]] for j in range(n_items)},
        attribute_prefs=attribute_prefs,
        context_prefs=context_prefs,
    )
    return SynthData(interactions, items, users, truth)


def _preferences(
    side: np.random.Generator, names: dict[str, tuple[str, ...]], n_topics: int, effect: float
) -> dict[str, dict[str, np.ndarray]]:
    """Topic preferences (standard normal) of every value of every named attribute; {} when `effect` is 0."""
    if effect == 0:
        return {}
    return {name: {value: side.standard_normal(n_topics) for value in values} for name, values in names.items()}


def _prefs_matrix(prefs: dict[str, np.ndarray], values: tuple[str, ...]) -> np.ndarray:
    import numpy as np

    return np.stack([prefs[v] for v in values])


def _renormalized(weights: np.ndarray) -> np.ndarray:
    return weights / weights.sum(axis=-1, keepdims=True)


def _masked(taste: np.ndarray, present: np.ndarray) -> np.ndarray:
    """Taste restricted to topics that have items (tiny catalogs may miss some), renormalised."""
    p = taste * present
    total = p.sum()
    return p / total if total > 0 else present / present.sum()


def _roman(n: int) -> str:
    numerals = ((10, "X"), (9, "IX"), (5, "V"), (4, "IV"), (1, "I"))
    out = ""
    for value, symbol in numerals:
        while n >= value:
            out += symbol
            n -= value
    return out


def period(days: int = 365, end: datetime = DEFAULT_END) -> tuple[datetime, datetime]:
    """The (start, end) interval that `generate` spreads timestamps over."""
    return end - timedelta(days=days), end
