"""The typed artifact kinds the pipeline's steps exchange, each declared once with its files.

A kind is to an artifact folder what KFP's `Dataset`/`Model` types are to a path: the step graph
(`recloop.steps.graph`) types every step input and output with one, `recloop step NAME --help` and the
Airflow task docs list the files from it, and each kind's class names its files as constants, so no
module spells a file name of another step's artifact. `Kind.open(store, prefix)` opens a committed
artifact as that kind (a hash-checked `core.Artifact` underneath). `RegisteredModel` is the registry's
version folder: publish writes it; serving, feedback and the champion's evaluation read it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, TypeVar

from recloop.artifacts.core import Artifact
from recloop.errors import ArtifactError

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

    from recloop.artifacts.core import ArtifactWriter
    from recloop.store import ArtifactStore

K = TypeVar("K", bound="ArtifactKind")


class ArtifactKind:
    """A typed view of one committed artifact folder. Subclasses declare what the folder holds."""

    title: ClassVar[str] = ""
    description: ClassVar[str] = ""
    # file (or folder, ending in '/') -> what it holds; optional ones say "(optional)"
    files: ClassVar[Mapping[str, str]] = {}

    def __init__(self, artifact: Artifact):
        self.artifact = artifact

    @classmethod
    def open(cls: type[K], store: ArtifactStore, prefix: str) -> K:
        return cls(Artifact.open(store, prefix))

    @property
    def uri(self) -> str:
        return self.artifact.uri

    @property
    def summary(self) -> dict[str, Any]:
        return self.artifact.manifest.summary

    @property
    def created_at(self) -> str:
        return self.artifact.manifest.created_at

    def has(self, name: str) -> bool:
        return name in self.artifact.manifest.files

    def require(self, *names: str) -> None:
        """ArtifactError unless every named file is committed (the artifact is of this kind)."""
        missing = [n for n in names if not self.has(n)]
        if missing:
            raise ArtifactError(
                f"{self.uri} is not a {self.title} artifact: it lacks {', '.join(missing)}; point "
                "this step at the output of the step that writes it"
            )

    @classmethod
    def describe_files(cls) -> str:
        return ", ".join(f"`{name}`" for name in cls.files)

    def _optional_parquet(self, name: str, columns: list[str] | None = None) -> pd.DataFrame | None:
        return self.artifact.read_parquet(name, columns=columns) if self.has(name) else None

    def _optional_json(self, name: str) -> Any:
        return self.artifact.read_json(name) if self.has(name) else None

    def _table(self, name: str) -> pa.Table:
        import pyarrow.parquet as pq

        with self.artifact.path(name) as p:
            return pq.read_table(p)


def _put_table(writer: ArtifactWriter, name: str, table: pa.Table) -> None:
    """Commit an Arrow table as Parquet, recording its rows and Arrow schema in the manifest."""
    import pyarrow.parquet as pq

    path = writer.local(name)
    pq.write_table(table, path)
    writer.add_file(name, path, rows=table.num_rows, schema={f.name: str(f.type) for f in table.schema})


class RawEvents(ArtifactKind):
    title = "raw events"
    description = "Ingested interactions, item catalog and users as Parquet; unparseable rows kept and flagged."
    INTERACTIONS = "interactions.parquet"
    ITEMS = "items.parquet"
    USERS = "users.parquet"
    files = {
        INTERACTIONS: "every event row, with `ingest_issue` where a value did not parse",
        ITEMS: "the item catalog with tags (optional)",
        USERS: "user attributes (optional)",
    }

    def interactions(self) -> pd.DataFrame:
        return self.artifact.read_parquet(self.INTERACTIONS)

    def interactions_table(self) -> pa.Table:
        return self._table(self.INTERACTIONS)

    def items(self) -> pd.DataFrame | None:
        """The item catalog, None when ingest had no `data.items`."""
        return self._optional_parquet(self.ITEMS)

    def users(self) -> pd.DataFrame | None:
        """The user table (user_id and its other columns as text), None when ingest had no `data.users`."""
        return self._optional_parquet(self.USERS)


class ValidationReport(ArtifactKind):
    title = "validation report"
    description = "The great-expectations result, and the valid rows when rows were quarantined."
    RESULT = "result.json"
    DATA_DOCS = "data_docs"
    INTERACTIONS = RawEvents.INTERACTIONS
    QUARANTINE = "quarantine/interactions.parquet"
    files = {
        RESULT: "checks, counts and the decision",
        f"{DATA_DOCS}/": "great-expectations Data Docs (optional)",
        INTERACTIONS: "the valid rows, only when some were quarantined",
        QUARANTINE: "the quarantined rows with the failed checks (optional)",
    }
    DATA_DOCS_INDEX = f"{DATA_DOCS}/index.html"

    @classmethod
    def write(
        cls,
        writer: ArtifactWriter,
        result: Mapping[str, Any],
        docs_dir: Path | None,
        valid_rows: pa.Table | None = None,
        quarantined: pa.Table | None = None,
    ) -> None:
        """Commit the result, the Data Docs folder when it was rendered, and the rows when some were set aside."""
        writer.put_json(cls.RESULT, dict(result))
        if docs_dir is not None and docs_dir.is_dir():
            writer.add_dir(cls.DATA_DOCS, docs_dir)
        if valid_rows is not None:
            _put_table(writer, cls.INTERACTIONS, valid_rows)
        if quarantined is not None:
            _put_table(writer, cls.QUARANTINE, quarantined)

    def result(self) -> dict[str, Any]:
        return self.artifact.read_json(self.RESULT)

    @property
    def has_valid_rows(self) -> bool:
        """Whether validate set rows aside and wrote the valid ones (else its input's rows are the valid ones)."""
        return self.has(self.INTERACTIONS)

    def interactions(self) -> pd.DataFrame:
        """The valid rows; only when `has_valid_rows`."""
        return self.artifact.read_parquet(self.INTERACTIONS)


class Dataset(ArtifactKind):
    title = "dataset"
    description = "Implicit-feedback interactions with contiguous ids, split by time into train/valid/test."
    TRAIN = "train.parquet"
    VALID = "valid.parquet"
    TEST = "test.parquet"
    SPLIT_FILES: ClassVar[Mapping[str, str]] = {"train": TRAIN, "valid": VALID, "test": TEST}
    SPLITS = (TRAIN, VALID, TEST)
    ID_MAPS = "id_maps"
    # The id maps' names inside `ID_MAPS/`, also where a downloaded copy of that folder holds them.
    USER_MAP = "users.parquet"
    ITEM_MAP = "items.parquet"
    USER_IDS = f"{ID_MAPS}/{USER_MAP}"
    ITEM_IDS = f"{ID_MAPS}/{ITEM_MAP}"
    ITEMS = "items.parquet"
    USERS = "users.parquet"
    COLD_ITEMS = "cold_items.parquet"
    STATS = "stats.json"
    files = {
        TRAIN: "train events (user_idx, item_idx, timestamp, weight)",
        VALID: "validation events",
        TEST: "test events",
        USER_IDS: "user_idx -> user_id",
        ITEM_IDS: "item_idx -> item_id",
        ITEMS: "item side information by item_idx (text, categories)",
        USERS: "user attributes by user_idx, typed as data.users.attributes says, and `profile` (optional)",
        COLD_ITEMS: "items held out of training (optional, evaluation.cold_start)",
        STATS: "what each stage kept and dropped",
    }

    def split(self, name: Literal["train", "valid", "test"], columns: list[str] | None = None) -> pd.DataFrame:
        return self.artifact.read_parquet(self.SPLIT_FILES[name], columns=columns)

    def user_ids(self) -> pd.DataFrame:
        return self.artifact.read_parquet(self.USER_IDS)

    def item_ids(self) -> pd.DataFrame:
        return self.artifact.read_parquet(self.ITEM_IDS)

    def items(self) -> pd.DataFrame | None:
        """Item side information (item_idx, item_id, text, categories), None when preprocess had none."""
        return self._optional_parquet(self.ITEMS)

    def users(self) -> pd.DataFrame | None:
        """User attributes by user_idx, None without configured `data.users.attributes`."""
        return self._optional_parquet(self.USERS)

    def cold_items(self) -> Any:
        """int64 item_idx of the items held out of training, None without a cold-start hold-out."""
        import numpy as np

        if not self.has(self.COLD_ITEMS):
            return None
        return self.artifact.read_parquet(self.COLD_ITEMS)["item_idx"].to_numpy(np.int64)

    def stats(self) -> dict[str, Any]:
        return self.artifact.read_json(self.STATS)


class TrainedModel(ArtifactKind):
    """One candidate's saved Recommender bundle; the train step writes one per candidate."""

    title = "trained model"
    description = "One candidate's Recommender bundle (model.json + safetensors) and its training report."
    MODEL = "model.json"
    ARRAYS = "arrays.safetensors"
    REPORT = "train_report.json"
    files = {
        MODEL: "type, config, recloop version, id-map reference",
        ARRAYS: "the learned arrays",
        REPORT: "seconds, epochs, validation NDCG@10 and the per-epoch metrics",
    }
    SUMMARY_KEYS = ("type", "train_seconds", "epochs", "best_valid_metric", "valid_metric")

    @classmethod
    def write(cls, writer: ArtifactWriter, bundle_dir: Path, report: Mapping[str, Any]) -> None:
        """Commit a saved bundle folder and its report; the report's headline facts go to the summary."""
        for path in sorted(p for p in Path(bundle_dir).rglob("*") if p.is_file()):
            writer.add_file(path.relative_to(bundle_dir).as_posix(), path)
        writer.put_json(cls.REPORT, dict(report))
        writer.summary.update({k: report.get(k) for k in cls.SUMMARY_KEYS})

    @property
    def model_type(self) -> str | None:
        return self.summary.get("type")


class TuningStudy(ArtifactKind):
    """One candidate's hyper-parameter search: every trial, the best parameters, the Optuna journal, and the
    best trial's model, which train reuses instead of fitting the same parameters again."""

    title = "tuning study"
    description = "One candidate's hyper-parameter search on validation NDCG@10: trials, best parameters."
    STUDY = "study.json"
    TRIALS = "trials.parquet"
    JOURNAL = "journal.log"
    BEST_MODEL = "best_model"
    BEST_FIT = "best_fit.json"
    files = {
        STUDY: "whether it was tuned, budget, seed, space, best parameters and value, parameter importances",
        TRIALS: "every trial: number, state, value, seconds, parameters, validation curve",
        JOURNAL: "the Optuna journal the study replays from (optional)",
        f"{BEST_MODEL}/": "the best trial's Recommender bundle (optional: absent when that trial ran in an "
        "earlier, interrupted attempt)",
        BEST_FIT: "the best trial's number, fit seconds, per-epoch metrics, model config and data digest "
        "(optional, with the bundle)",
    }
    SUMMARY_KEYS = ("tuned", "best_value", "n_trials", "seconds")

    @classmethod
    def write(
        cls,
        writer: ArtifactWriter,
        study: Mapping[str, Any],
        trials: pd.DataFrame,
        journal: Path | None,
        best_fit: Path | None = None,
    ) -> None:
        """`best_fit`: a folder with the best trial's `fit.json` and its bundle under `bundle/`."""
        writer.put_json(cls.STUDY, dict(study))
        writer.put_parquet(cls.TRIALS, trials)
        if journal is not None and journal.exists():
            writer.add_file(cls.JOURNAL, journal)
        if best_fit is not None:
            writer.add_dir(cls.BEST_MODEL, best_fit / "bundle")
            writer.add_file(cls.BEST_FIT, best_fit / "fit.json")
        writer.summary.update({k: study.get(k) for k in cls.SUMMARY_KEYS})

    def study(self) -> dict[str, Any]:
        return self.artifact.read_json(self.STUDY)

    def trials(self) -> pd.DataFrame:
        return self.artifact.read_parquet(self.TRIALS)

    def best_params(self) -> dict[str, Any]:
        """The parameters train applies over the configured ones ({} when the candidate was not tuned)."""
        return dict(self.study().get("best_params") or {})

    def best_fit(self) -> dict[str, Any] | None:
        """The kept best trial's facts (None when the study kept no model)."""
        fit = self._optional_json(self.BEST_FIT)
        return None if fit is None else dict(fit)

    def download_best_model(self, dest: Path) -> Path:
        return self.artifact.download_dir(self.BEST_MODEL, dest)


class Evaluation(ArtifactKind):
    title = "evaluation"
    description = "Metrics of every candidate and the production champion on one leakage-free split."
    METRICS = "metrics.json"
    PER_USER = "per_user.parquet"
    REPORT = "report.html"
    files = {
        METRICS: "metrics with bootstrap CIs, segments, comparisons with the champion",
        PER_USER: "per-user metric values of every model",
        REPORT: "a self-contained report for people",
    }


class Blessing(ArtifactKind):
    title = "blessing"
    description = "The gate's decision (blessed or rejected), the chosen candidate and every reason."
    BLESSING = "blessing.json"
    files = {BLESSING: "decision, candidate, thresholds with values, champion version, reasons"}


class Publication(ArtifactKind):
    title = "publication"
    description = "Which model version publish registered and whether the production alias moved."
    PUBLISH = "publish.json"
    files = {PUBLISH: "version, candidate, promoted, previous version"}


class FeedbackBatch(ArtifactKind):
    title = "feedback batch"
    description = "Served slates joined with feedback events into interactions and bandit logs."
    INTERACTIONS = "interactions.parquet"
    BANDIT_LOG = "bandit_log.parquet"
    QUARANTINE = "quarantine/feedback.parquet"
    REPORT = "report.json"
    SUMMARY = "report.md"
    POLICY = "policy"
    POLICY_REPORT = "policy_report.json"
    files = {
        INTERACTIONS: "labelled interactions for the next training run",
        BANDIT_LOG: "logged bandit slots",
        QUARANTINE: "events quarantined by the abuse rules (optional)",
        REPORT: "counts and windows",
        SUMMARY: "the report for people",
        f"{POLICY}/": "the bandit policy bundle (optional)",
        POLICY_REPORT: "the bandit policy's training (optional)",
    }


class RegisteredModel(ArtifactKind):
    """One immutable registry version (`models/{name}/v{N}/`); publish writes it, serving and feedback read it."""

    title = "registered model version"
    description = "A published model bundle with the id maps and item information it serves with."
    BUNDLE = "model"
    ID_MAPS = Dataset.ID_MAPS
    USER_MAP = Dataset.USER_MAP
    ITEM_MAP = Dataset.ITEM_MAP
    USER_IDS = Dataset.USER_IDS
    ITEM_IDS = Dataset.ITEM_IDS
    ITEMS = Dataset.ITEMS
    CONFIG = "config.json"
    METRICS = Evaluation.METRICS
    BLESSING = Blessing.BLESSING
    VERSION = "version.json"
    files = {
        f"{BUNDLE}/": "the Recommender bundle (model.json, arrays.safetensors, optional ANN index)",
        f"{ID_MAPS}/": "user_idx -> user_id and item_idx -> item_id of the model's id space (optional)",
        ITEMS: "item side information by item_idx (optional)",
        CONFIG: "the pipeline config that trained it, secrets masked (optional)",
        METRICS: "the evaluation that blessed it (optional)",
        BLESSING: "the gate's decision (optional)",
        VERSION: "version number, candidate, run, lineage, primary metric",
    }

    def bundle_hashes(self) -> dict[str, str]:
        """sha256 of each bundle file by its path inside the bundle folder."""
        folder = self.BUNDLE + "/"
        files = self.artifact.manifest.files
        return {name[len(folder) :]: entry.sha256 for name, entry in files.items() if name.startswith(folder)}

    def download_bundle(self, dest: Path) -> Path:
        """The verified model bundle copied into folder `dest`, for `Recommender.load`."""
        return self.artifact.download_dir(self.BUNDLE, dest)

    def download_id_maps(self, dest: Path) -> Path | None:
        """The verified id maps copied into folder `dest` (as `USER_MAP`, `ITEM_MAP`); None without id maps."""
        if not any(name.startswith(self.ID_MAPS + "/") for name in self.artifact.manifest.files):
            return None
        return self.artifact.download_dir(self.ID_MAPS, dest)

    def download_items(self, dest: Path) -> Path | None:
        """The verified item side information copied to file `dest`; None when the version has none."""
        import shutil

        if not self.has(self.ITEMS):
            return None
        with self.artifact.path(self.ITEMS) as src:
            shutil.copyfile(src, dest)
        return dest

    def user_ids(self, columns: list[str] | None = None) -> pd.DataFrame | None:
        return self._optional_parquet(self.USER_IDS, columns)

    def item_ids(self) -> pd.DataFrame | None:
        return self._optional_parquet(self.ITEM_IDS)

    def items(self) -> pd.DataFrame | None:
        return self._optional_parquet(self.ITEMS)

    def config(self) -> dict[str, Any] | None:
        return self._optional_json(self.CONFIG)

    def metrics(self) -> dict[str, Any] | None:
        return self._optional_json(self.METRICS)

    def blessing(self) -> dict[str, Any] | None:
        return self._optional_json(self.BLESSING)
