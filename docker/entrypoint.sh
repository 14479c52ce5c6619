#!/bin/sh
# Container entrypoint: runs `recloop` with the container arguments, e.g.
#   docker run IMAGE serve --config /etc/recloop/config.yaml
#   docker run IMAGE step ingest --config s3://... --run-id r1
# A few programs pass straight through so the same image also runs Airflow components of the official
# Airflow chart (`bash -c "exec airflow scheduler"`, KubernetesExecutor's `python -m ...`) and shells.
set -eu

case "${1:-}" in
    airflow | bash | sh | python | python3 | pip)
        exec "$@"
        ;;
    recloop)
        shift
        ;;
esac

exec recloop "$@"
