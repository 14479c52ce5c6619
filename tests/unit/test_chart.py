"""The recloop Helm chart rendered by a real Helm v4 engine (helm-python-sdk, offline), every manifest
checked against the Kubernetes 1.33 schemas in strict mode (kubernetes-validate), plus the values-file
contract (values.yaml <-> values.schema.json) and the values for the official Airflow chart.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Iterator
from importlib.metadata import version as installed_version
from pathlib import Path
from typing import Any

import pytest
import yaml

from support.paths import REPO

CHART = REPO / "charts" / "recloop"
AIRFLOW_VALUES = REPO / "charts" / "airflow-values.yaml"
KUBE_VERSION = "1.33.0"
RELEASE, NAMESPACE = "rl", "ml"
FULLNAME = "rl-recloop"
SELECTOR = {
    "app.kubernetes.io/name": "recloop",
    "app.kubernetes.io/instance": RELEASE,
    "app.kubernetes.io/component": "serve",
}


@pytest.fixture(scope="module")
def chart() -> Iterator[Any]:
    import helm_python as helm

    with helm.Chart.load(CHART) as loaded:
        yield loaded


def render(chart: Any, values: dict[str, Any] | None = None) -> dict[tuple[str, str], dict[str, Any]]:
    """Render like `helm template`, validate each object against Kubernetes, index by (kind, name)."""
    import kubernetes_validate

    manifests = chart.render(values or {}, name=RELEASE, namespace=NAMESPACE)
    objects: dict[tuple[str, str], dict[str, Any]] = {}
    for template, text in manifests.items():
        if not template.endswith(".yaml"):
            continue
        for obj in yaml.safe_load_all(text):
            if not obj:
                continue
            try:
                kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
            except kubernetes_validate.ValidationError as exc:
                path = ".".join(str(p) for p in exc.path)
                pytest.fail(f"{template}: {obj['kind']} is not valid Kubernetes {KUBE_VERSION}: {path}: {exc.message}")
            key = (obj["kind"], obj["metadata"]["name"])
            assert key not in objects, f"{key} rendered twice"
            objects[key] = obj
    return objects


def values_file(text: str) -> dict[str, Any]:
    """Parse a values file exactly as `helm install -f FILE` does."""
    import helm_python as helm

    return helm.values_from_yaml(text)


def container(objects: dict[tuple[str, str], dict[str, Any]]) -> dict[str, Any]:
    containers = objects[("Deployment", FULLNAME)]["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["serve"]
    return containers[0]


def pod_spec(objects: dict[tuple[str, str], dict[str, Any]]) -> dict[str, Any]:
    return objects[("Deployment", FULLNAME)]["spec"]["template"]["spec"]


# ---------------------------------------------------------------------------------------------- lint


def test_helm_lint_strict_is_clean() -> None:
    import helm_python as helm

    report = helm.lint(CHART, strict=True, namespace=NAMESPACE, kube_version=f"v{KUBE_VERSION}")
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert report["errors"] == [] and problems == [], problems


# ---------------------------------------------------------------------------------------------- defaults


def test_default_render_objects(chart: Any) -> None:
    objects = render(chart)
    assert sorted(objects) == sorted(
        [
            ("ConfigMap", f"{FULLNAME}-config"),
            ("Deployment", FULLNAME),
            ("HorizontalPodAutoscaler", FULLNAME),
            ("PodDisruptionBudget", FULLNAME),
            ("Service", FULLNAME),
            ("ServiceAccount", FULLNAME),
        ]
    )
    for obj in objects.values():
        labels = obj["metadata"]["labels"]
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["app.kubernetes.io/version"] == "0.1.0"
        assert labels["helm.sh/chart"] == "recloop-0.1.0"


def test_default_deployment_serves_with_probes_and_config(chart: Any) -> None:
    objects = render(chart)
    deployment = objects[("Deployment", FULLNAME)]
    assert "replicas" not in deployment["spec"]  # the HPA owns the count
    assert deployment["spec"]["selector"]["matchLabels"] == SELECTOR
    assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxUnavailable": 0, "maxSurge": "25%"}
    serve = container(objects)
    assert serve["image"] == "recloop:0.1.0"
    assert serve["args"] == ["serve", "--config", "/etc/recloop/config.yaml", "--host", "0.0.0.0", "--port", "8000"]
    assert serve["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]
    assert serve["livenessProbe"] == {
        "httpGet": {"path": "/healthz", "port": "http"},
        "initialDelaySeconds": 0,
        "periodSeconds": 10,
        "timeoutSeconds": 3,
        "failureThreshold": 3,
    }
    assert serve["readinessProbe"] == {
        "httpGet": {"path": "/readyz", "port": "http"},
        "initialDelaySeconds": 0,
        "periodSeconds": 5,
        "timeoutSeconds": 3,
        "failureThreshold": 3,
    }
    assert serve["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert serve["startupProbe"]["failureThreshold"] * serve["startupProbe"]["periodSeconds"] == 300
    assert serve["resources"] == {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"memory": "2Gi"}}
    assert "env" not in serve and "envFrom" not in serve  # no secrets unless configured

    # Config: the ConfigMap is mounted read-only where --config points.
    assert {"name": "config", "mountPath": "/etc/recloop", "readOnly": True} in serve["volumeMounts"]
    volumes = {v["name"]: v for v in pod_spec(objects)["volumes"]}
    assert volumes["config"]["configMap"] == {
        "name": f"{FULLNAME}-config",
        "items": [{"key": "config.yaml", "path": "config.yaml"}],
    }
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert len(annotations["checksum/config"]) == 64


def test_default_pod_is_locked_down(chart: Any) -> None:
    objects = render(chart)
    spec = pod_spec(objects)
    assert spec["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 10001,
        "runAsGroup": 10001,
        "fsGroup": 10001,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert container(objects)["securityContext"] == {
        "runAsNonRoot": True,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    # The only writable path on the read-only root filesystem: an emptyDir at /tmp.
    assert {"name": "tmp", "mountPath": "/tmp"} in container(objects)["volumeMounts"]
    assert {v["name"]: v for v in spec["volumes"]}["tmp"] == {"name": "tmp", "emptyDir": {"sizeLimit": "2Gi"}}
    assert spec["serviceAccountName"] == FULLNAME
    assert spec["automountServiceAccountToken"] is False
    assert objects[("ServiceAccount", FULLNAME)]["automountServiceAccountToken"] is False


def test_default_service_hpa_and_pdb(chart: Any) -> None:
    objects = render(chart)
    service = objects[("Service", FULLNAME)]["spec"]
    assert service["type"] == "ClusterIP"
    assert service["selector"] == SELECTOR
    assert service["ports"] == [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]
    hpa = objects[("HorizontalPodAutoscaler", FULLNAME)]["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": FULLNAME}
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (2, 10)
    assert hpa["metrics"] == [
        {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}}}
    ]
    assert objects[("PodDisruptionBudget", FULLNAME)]["spec"] == {
        "minAvailable": 1,
        "selector": {"matchLabels": SELECTOR},
    }


def test_configmap_holds_a_pipeline_config_recloop_accepts(chart: Any, tmp_path: Path) -> None:
    from recloop import config

    # What `--set-file config.inline=movielens.yaml` passes: the file's text, comments and all.
    pipeline = (
        "# MovieLens on the cluster's S3\n"
        "name: movielens\n"
        "store:\n"
        "  root: s3://recloop/movielens\n"
        "  endpoint_url: http://seaweedfs.storage:8333\n"
        "  secret_access_key: ${RECLOOP_S3_SECRET}\n"
        "data:\n"
        "  interactions:\n"
        "    path: s3://recloop/raw/ratings.csv\n"
        "    columns: {user: userId, item: movieId, rating: rating}\n"
        "evaluation: {k: [10, 20], primary: ndcg@10}\n"
    )
    objects = render(chart, {"config": {"inline": pipeline}})
    text = objects[("ConfigMap", f"{FULLNAME}-config")]["data"]["config.yaml"]
    assert text == pipeline  # replaced whole: nothing of the default example config leaks in
    path = tmp_path / "config.yaml"
    path.write_text(text)
    loaded = config.load(path, env={"RECLOOP_S3_SECRET": "from-a-secret"})
    assert (loaded.name, loaded.store.root, loaded.store.endpoint_url) == (
        "movielens",
        "s3://recloop/movielens",
        "http://seaweedfs.storage:8333",
    )
    assert loaded.store.secret_access_key.get_secret_value() == "from-a-secret"
    assert loaded.data.interactions.columns.user == "userId"
    assert loaded.data.interactions.format == "auto"
    assert loaded.evaluation.primary == "ndcg@10"

    default_text = render(chart)[("ConfigMap", f"{FULLNAME}-config")]["data"]["config.yaml"]
    default = config.from_dict(yaml.safe_load(default_text))
    assert (default.name, default.store.root) == ("recloop", "s3://recloop/default")


def test_config_change_rolls_the_pods(chart: Any) -> None:
    def checksum(values: dict[str, Any]) -> str:
        deployment = render(chart, values)[("Deployment", FULLNAME)]
        return deployment["spec"]["template"]["metadata"]["annotations"]["checksum/config"]

    assert checksum({}) == checksum({})
    assert checksum({}) != checksum({"config": {"inline": "name: other\ndata: {interactions: {path: x.csv}}\n"}})


# ---------------------------------------------------------------------------------------------- options


def test_autoscaling_off_uses_replica_count(chart: Any) -> None:
    objects = render(chart, {"autoscaling": {"enabled": False}, "replicaCount": 3})
    assert not any(kind == "HorizontalPodAutoscaler" for kind, _ in objects)
    assert objects[("Deployment", FULLNAME)]["spec"]["replicas"] == 3


def test_autoscaling_on_memory_too(chart: Any) -> None:
    objects = render(
        chart, {"autoscaling": {"minReplicas": 3, "maxReplicas": 6, "targetMemoryUtilizationPercentage": 80}}
    )
    hpa = objects[("HorizontalPodAutoscaler", FULLNAME)]["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (3, 6)
    assert [(m["resource"]["name"], m["resource"]["target"]["averageUtilization"]) for m in hpa["metrics"]] == [
        ("cpu", 70),
        ("memory", 80),
    ]


def test_autoscaling_bounds_are_checked(chart: Any) -> None:
    import helm_python as helm

    with pytest.raises(helm.HelmError, match="minReplicas must not exceed maxReplicas"):
        chart.render({"autoscaling": {"minReplicas": 5, "maxReplicas": 2}}, name=RELEASE, namespace=NAMESPACE)


def test_pdb_options(chart: Any) -> None:
    import helm_python as helm

    objects = render(chart, {"podDisruptionBudget": {"enabled": False}})
    assert not any(kind == "PodDisruptionBudget" for kind, _ in objects)
    objects = render(chart, {"podDisruptionBudget": {"minAvailable": None, "maxUnavailable": "25%"}})
    assert objects[("PodDisruptionBudget", FULLNAME)]["spec"] == {
        "maxUnavailable": "25%",
        "selector": {"matchLabels": SELECTOR},
    }
    with pytest.raises(helm.HelmError, match="set either minAvailable or maxUnavailable, not both"):
        chart.render({"podDisruptionBudget": {"maxUnavailable": 1}}, name=RELEASE, namespace=NAMESPACE)


def test_rbac_for_pod_based_steps(chart: Any) -> None:
    airflow_worker = {"kind": "ServiceAccount", "name": "airflow-worker", "namespace": "airflow"}
    exec_rule = {"apiGroups": [""], "resources": ["pods/exec"], "verbs": ["create", "get"]}
    objects = render(chart, {"rbac": {"create": True, "extraSubjects": [airflow_worker], "extraRules": [exec_rule]}})
    role = objects[("Role", f"{FULLNAME}-pipeline")]
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["create", "get", "list", "watch", "delete"]},
        {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]},
        exec_rule,
    ]
    binding = objects[("RoleBinding", f"{FULLNAME}-pipeline")]
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": f"{FULLNAME}-pipeline",
    }
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": FULLNAME, "namespace": NAMESPACE}, airflow_worker]
    assert not any(kind in ("Role", "RoleBinding") for kind, _ in render(chart))  # off by default


def test_existing_service_account(chart: Any) -> None:
    objects = render(chart, {"serviceAccount": {"create": False, "name": "ml-runner"}, "rbac": {"create": True}})
    assert not any(kind == "ServiceAccount" for kind, _ in objects)
    assert pod_spec(objects)["serviceAccountName"] == "ml-runner"
    assert objects[("RoleBinding", f"{FULLNAME}-pipeline")]["subjects"] == [
        {"kind": "ServiceAccount", "name": "ml-runner", "namespace": NAMESPACE}
    ]
    objects = render(
        chart, {"serviceAccount": {"annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::1:role/r"}}}
    )
    assert objects[("ServiceAccount", FULLNAME)]["metadata"]["annotations"] == {
        "eks.amazonaws.com/role-arn": "arn:aws:iam::1:role/r"
    }


def test_existing_secrets_for_s3_api_keys_and_hmac_key(chart: Any) -> None:
    objects = render(
        chart,
        {
            "s3": {"existingSecret": "recloop-s3"},
            "apiKeys": {"existingSecret": "recloop-api", "secretKey": "keys"},
            "userHmacKey": {"existingSecret": "recloop-hmac"},
        },
    )
    assert container(objects)["env"] == [
        {
            "name": "AWS_ACCESS_KEY_ID",
            "valueFrom": {"secretKeyRef": {"name": "recloop-s3", "key": "AWS_ACCESS_KEY_ID"}},
        },
        {
            "name": "AWS_SECRET_ACCESS_KEY",
            "valueFrom": {"secretKeyRef": {"name": "recloop-s3", "key": "AWS_SECRET_ACCESS_KEY"}},
        },
        {"name": "RECLOOP_API_KEYS", "valueFrom": {"secretKeyRef": {"name": "recloop-api", "key": "keys"}}},
        # recloop serve refuses to start without the pseudonymization key: the chart must be able to pass it.
        {"name": "RECLOOP_USER_HMAC_KEY", "valueFrom": {"secretKeyRef": {"name": "recloop-hmac", "key": "hmac-key"}}},
    ]
    # Secret values never end up in rendered objects: the chart only references the Secrets.
    assert not any(kind == "Secret" for kind, _ in objects)


def test_resources_and_extra_env(chart: Any) -> None:
    resources = {"requests": {"cpu": "2", "memory": "4Gi"}, "limits": {"memory": "4Gi", "nvidia.com/gpu": 1}}
    extra_env = [
        {"name": "RECLOOP_LOG_LEVEL", "value": "debug"},
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
    ]
    extra_env_from = [{"configMapRef": {"name": "recloop-tuning"}}]
    objects = render(
        chart,
        {
            "resources": resources,
            "extraEnv": extra_env,
            "extraEnvFrom": extra_env_from,
            "s3": {"existingSecret": "recloop-s3"},
            "serve": {"extraArgs": ["--workers", "2"]},
        },
    )
    serve = container(objects)
    assert serve["resources"] == resources
    assert [e["name"] for e in serve["env"]] == [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "RECLOOP_LOG_LEVEL",
        "POD_NAME",
    ]
    assert serve["env"][2:] == extra_env
    assert serve["envFrom"] == extra_env_from
    assert serve["args"][-2:] == ["--workers", "2"]


def test_ingress(chart: Any) -> None:
    objects = render(
        chart,
        {
            "ingress": {
                "enabled": True,
                "className": "nginx",
                "host": "reco.example.org",
                "tlsSecretName": "reco-tls",
                "annotations": {"cert-manager.io/cluster-issuer": "letsencrypt"},
            }
        },
    )
    ingress = objects[("Ingress", FULLNAME)]
    assert ingress["metadata"]["annotations"] == {"cert-manager.io/cluster-issuer": "letsencrypt"}
    assert ingress["spec"] == {
        "ingressClassName": "nginx",
        "tls": [{"hosts": ["reco.example.org"], "secretName": "reco-tls"}],
        "rules": [
            {
                "host": "reco.example.org",
                "http": {
                    "paths": [
                        {
                            "path": "/",
                            "pathType": "Prefix",
                            "backend": {"service": {"name": FULLNAME, "port": {"name": "http"}}},
                        }
                    ]
                },
            }
        ],
    }
    assert not any(kind == "Ingress" for kind, _ in render(chart))


def test_existing_configmap_and_custom_mount(chart: Any) -> None:
    objects = render(
        chart,
        {"config": {"existingConfigMap": "movielens-pipeline", "fileName": "movielens.yaml", "mountPath": "/config"}},
    )
    assert not any(kind == "ConfigMap" for kind, _ in objects)
    serve = container(objects)
    assert serve["args"][:3] == ["serve", "--config", "/config/movielens.yaml"]
    assert {"name": "config", "mountPath": "/config", "readOnly": True} in serve["volumeMounts"]
    volumes = {v["name"]: v for v in pod_spec(objects)["volumes"]}
    assert volumes["config"]["configMap"]["name"] == "movielens-pipeline"
    assert "annotations" not in objects[("Deployment", FULLNAME)]["spec"]["template"]["metadata"]


def test_image_tag_and_digest(chart: Any) -> None:
    assert (
        container(render(chart, {"image": {"repository": "registry.example.org/ml/recloop", "tag": "0.2.0"}}))["image"]
        == "registry.example.org/ml/recloop:0.2.0"
    )
    digest = "sha256:" + "ab" * 32
    objects = render(
        chart,
        {
            "image": {"tag": "0.2.0", "digest": digest, "pullPolicy": "Always"},
            "imagePullSecrets": [{"name": "regcred"}],
        },
    )
    assert (container(objects)["image"], container(objects)["imagePullPolicy"]) == (f"recloop@{digest}", "Always")
    assert pod_spec(objects)["imagePullSecrets"] == [{"name": "regcred"}]


def test_scheduling_options(chart: Any) -> None:
    toleration = {"key": "ml", "operator": "Equal", "value": "serve", "effect": "NoSchedule"}
    affinity = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": [{"key": "pool", "operator": "In", "values": ["cpu"]}]}]
            }
        }
    }
    spread = {"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "ScheduleAnyway"}
    objects = render(
        chart,
        {
            "nodeSelector": {"pool": "cpu"},
            "tolerations": [toleration],
            "affinity": affinity,
            "topologySpreadConstraints": [spread],
            "priorityClassName": "serving",
            "podAnnotations": {"prometheus.io/scrape": "true"},
            "podLabels": {"team": "reco"},
            "tmpDir": {"medium": "Memory", "sizeLimit": "512Mi"},
        },
    )
    spec = pod_spec(objects)
    assert spec["nodeSelector"] == {"pool": "cpu"}
    assert spec["tolerations"] == [toleration]
    assert spec["affinity"] == affinity
    # Without a labelSelector the constraint spreads this release's serving pods.
    assert spec["topologySpreadConstraints"] == [{**spread, "labelSelector": {"matchLabels": SELECTOR}}]
    assert spec["priorityClassName"] == "serving"
    template_meta = objects[("Deployment", FULLNAME)]["spec"]["template"]["metadata"]
    assert template_meta["annotations"]["prometheus.io/scrape"] == "true"
    assert template_meta["labels"]["team"] == "reco"
    assert {v["name"]: v for v in spec["volumes"]}["tmp"]["emptyDir"] == {"sizeLimit": "512Mi", "medium": "Memory"}


# ---------------------------------------------------------------------------------------------- schema


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("replicas: 3\n", "additional properties 'replicas' not allowed"),
        ("image:\n  repository: recloop\n  pullpolicy: Always\n", "additional properties 'pullpolicy' not allowed"),
        ("probes:\n  liveness:\n    path: /healthz\n    delay: 5\n", "additional properties 'delay' not allowed"),
        ("autoscaling:\n  targetCPU: 50\n", "additional properties 'targetCPU' not allowed"),
        ("extraEnv:\n  - name: A\n    vaule: b\n", "additional properties 'vaule' not allowed"),
        ("securityContext:\n  privileged: true\n", "additional properties 'privileged' not allowed"),
        (
            "rbac:\n  extraSubjects:\n    - {kind: ServiceAccount, name: w, namspace: airflow}\n",
            "additional properties 'namspace' not allowed",
        ),
    ],
)
def test_values_file_with_unknown_key_fails_rendering(chart: Any, text: str, message: str) -> None:
    import helm_python as helm

    with pytest.raises(helm.HelmValuesError) as failure:
        chart.render(values_file(text), name=RELEASE, namespace=NAMESPACE)
    assert message in str(failure.value)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"replicaCount": "two"}, "/replicaCount"),
        ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
        ({"serve": {"port": 80}}, "/serve/port"),  # a non-root process cannot bind below 1024
        ({"image": {"digest": "latest"}}, "/image/digest"),
        ({"resources": {"requests": {"memory": "lots"}}}, "/resources/requests/memory"),
        ({"podDisruptionBudget": {"minAvailable": "half"}}, "/podDisruptionBudget/minAvailable"),
        ({"config": {"inline": {"name": "movielens"}}}, "/config/inline"),  # the file's text, not a map
    ],
)
def test_values_with_wrong_types_fail_rendering(chart: Any, values: dict[str, Any], message: str) -> None:
    import helm_python as helm

    with pytest.raises(helm.HelmValuesError) as failure:
        chart.render(values, name=RELEASE, namespace=NAMESPACE)
    assert message in str(failure.value)


# Kubernetes structures passed through verbatim (their keys are checked by the API server, and by the
# Kubernetes schema validation of every render here).
FREE_FORM = {
    "affinity.nodeAffinity",
    "affinity.podAffinity",
    "affinity.podAntiAffinity",
    "$defs.topologySpreadConstraint.labelSelector",
}


def walk_schema(node: dict[str, Any], path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, node
    for name, child in node.get("properties", {}).items():
        yield from walk_schema(child, f"{path}.{name}" if path else name)
    for name, child in node.get("$defs", {}).items():
        yield from walk_schema(child, f"$defs.{name}")
    if isinstance(node.get("items"), dict):
        yield from walk_schema(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from walk_schema(node["additionalProperties"], f"{path}.*")


def test_schema_closes_every_object() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    open_objects = []
    for path, node in walk_schema(schema, ""):
        if node.get("type") == "object" or "properties" in node:
            closed = node.get("additionalProperties") is False or isinstance(node.get("additionalProperties"), dict)
            if not closed and path not in FREE_FORM:
                open_objects.append(path or "<root>")
    assert open_objects == [], f"objects that accept unknown keys: {open_objects}"


def test_values_yaml_and_schema_are_one_contract() -> None:
    """Every key in values.yaml is in the schema with a description and the same default, and every
    schema property is in values.yaml (so `helm show values` documents the whole surface)."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    problems: list[str] = []

    def check(value: Any, node: dict[str, Any], path: str) -> None:
        if not node.get("description"):
            problems.append(f"{path}: no description")
        if "default" not in node:
            problems.append(f"{path}: no default")
        elif node["default"] != value:
            problems.append(f"{path}: schema default {node['default']!r} != values.yaml {value!r}")
        if isinstance(value, dict) and "properties" in node:
            for key in node["properties"]:
                if key not in value and f"{path}.{key}" not in FREE_FORM:
                    problems.append(f"{path}.{key}: in the schema, missing from values.yaml")
            for key, child in value.items():
                if key not in node["properties"]:
                    problems.append(f"{path}.{key}: in values.yaml, missing from the schema")
                else:
                    check(child, node["properties"][key], f"{path}.{key}")

    for key in schema["properties"]:
        if key not in values:
            problems.append(f"{key}: in the schema, missing from values.yaml")
    for key, value in values.items():
        if key not in schema["properties"]:
            problems.append(f"{key}: in values.yaml, missing from the schema")
        else:
            check(value, schema["properties"][key], key)
    assert problems == []


def test_chart_app_version_matches_the_package() -> None:
    chart_meta = yaml.safe_load((CHART / "Chart.yaml").read_text())
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert chart_meta["appVersion"] == project["version"]


# ---------------------------------------------------------------------------------------------- Airflow


def test_airflow_values_run_the_dags_with_the_recloop_image() -> None:
    values = yaml.safe_load(AIRFLOW_VALUES.read_text())
    assert values["executor"] == "KubernetesExecutor"
    images = values["images"]
    image = (values["defaultAirflowRepository"], values["defaultAirflowTag"])
    assert image == ("recloop", "0.1.0")
    assert (images["airflow"]["repository"], images["airflow"]["tag"]) == image
    assert (images["pod_template"]["repository"], images["pod_template"]["tag"]) == image  # executor's task pods
    assert images["useDefaultImageForMigration"] is False
    # The chart adapts commands to the Airflow version; it must match the Airflow the image installs.
    assert values["airflowVersion"].split(".")[0] == installed_version("apache-airflow").split(".")[0] == "3"
    assert (values["uid"], values["gid"]) == (10001, 0)


def test_airflow_values_dags_from_image_or_git_sync() -> None:
    dags = yaml.safe_load(AIRFLOW_VALUES.read_text())["dags"]
    assert dags["persistence"]["enabled"] is False
    git_sync = dags["gitSync"]
    assert git_sync["enabled"] is False  # default: the DAGs baked into the image
    assert git_sync["subPath"] == "dags"  # the repository's dags/ folder once enabled
    assert {"repo", "branch", "ref", "depth", "period"} <= set(git_sync)


def test_airflow_values_take_s3_credentials_from_a_secret() -> None:
    values = yaml.safe_load(AIRFLOW_VALUES.read_text())
    secret_env = {entry["envName"]: (entry["secretName"], entry["secretKey"]) for entry in values["secret"]}
    assert secret_env == {
        "AWS_ACCESS_KEY_ID": ("recloop-s3", "AWS_ACCESS_KEY_ID"),
        "AWS_SECRET_ACCESS_KEY": ("recloop-s3", "AWS_SECRET_ACCESS_KEY"),
        "AIRFLOW_CONN_RECLOOP_S3": ("recloop-s3", "AIRFLOW_CONN_RECLOOP_S3"),
    }
    plain_env = {entry["name"] for entry in values["env"]}
    assert not plain_env & {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}, "credentials only through the Secret"
    # Components of the official image that the recloop image does not carry are switched off.
    assert values["createUserJob"]["enabled"] is False
    for component in ("scheduler", "triggerer", "dagProcessor", "workers"):
        assert values[component]["logGroomerSidecar"]["enabled"] is False
    assert values["config"]["core"]["auth_manager"].endswith("SimpleAuthManager")
