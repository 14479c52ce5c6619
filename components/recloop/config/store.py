"""`store:`: where artifacts, the model registry and serving logs live (local folder or S3)."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, SecretStr, field_validator

from recloop.config.base import StrictModel


class RetryConfig(StrictModel):
    """Bounded exponential back-off with full jitter for transient store errors."""

    max_attempts: int = Field(5, ge=1, le=20, description="Attempts per operation, the first included.")
    base_delay_s: float = Field(0.2, gt=0, description="Delay before the first retry; doubles each retry.")
    max_delay_s: float = Field(5.0, gt=0, description="Cap on a single delay.")
    connect_timeout_s: float = Field(5.0, gt=0, description="Seconds to wait for a connection to the S3 endpoint.")
    read_timeout_s: float = Field(
        10.0, gt=0, description="Seconds to wait for the S3 endpoint's next bytes before the attempt counts as failed."
    )
    deadline_s: float = Field(
        60.0,
        gt=0,
        description="Overall limit for one store operation, retries and back-off included: an endpoint that accepts "
        "connections and never answers fails within this time with an error naming it.",
    )


class StoreConfig(StrictModel):
    """Where artifacts live: a local folder (file://) or an S3 bucket and prefix (s3://)."""

    root: str = Field(
        "file://.recloop/store",
        description="Root URI of the artifact store: file:///abs/path, file://relative/path or s3://bucket/prefix.",
    )
    endpoint_url: str | None = Field(None, description="S3 endpoint (SeaweedFS, MinIO, ...); None = AWS.")
    region: str | None = Field(None, description="S3 region name.")
    addressing_style: Literal["auto", "path", "virtual"] = Field(
        "path",
        description="S3 URL style: path (bucket in the path; SeaweedFS, MinIO), virtual (bucket in the host "
        "name, AWS) or auto.",
    )
    access_key_id: SecretStr | None = Field(None, description="S3 key id; None = the standard AWS chain.")
    secret_access_key: SecretStr | None = Field(
        None, description="S3 secret key paired with access_key_id; write ${ENV_VAR}, never the key itself."
    )
    server_side_encryption: Literal["AES256", "aws:kms"] | None = Field(
        None, description="Ask S3 to encrypt objects at rest."
    )
    multipart_threshold_mb: int = Field(64, ge=5, description="Uploads above this size use multipart.")
    retry: RetryConfig = Field(
        RetryConfig(), description="Back-off for transient store errors (timeouts, throttling, 5xx)."
    )

    @field_validator("root")
    @classmethod
    def _check_root(cls, v: str) -> str:
        if not re.match(r"^(file|s3)://.+", v):
            raise ValueError(f"must start with file:// or s3:// and name a location (got {v!r})")
        if v.startswith("s3://") and not re.match(r"^s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9](/.*)?$", v):
            raise ValueError(f"S3 bucket name is not valid (got {v!r})")
        return v.rstrip("/")
