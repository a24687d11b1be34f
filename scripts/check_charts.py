#!/usr/bin/env python3
"""Chart checks for `make test`: lint, render with Helm's own engine, assert on content.

Every chart under charts/ is linted strictly and rendered with its default values and
with test values; the rendered manifests are checked for what operators rely on
(CronJobs with Forbid, nothing running as root, config checksums), and the rendered
provisioner-job config is parsed by the real binary (`--print-config`).

Usage: check_charts.py BIN_DIR
"""

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import helm_python as helm
import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parent.parent
FAILURES: list[str] = []


def check(condition: bool, message: str) -> None:
    if not condition:
        FAILURES.append(message)


# The Kubernetes version the manifests are validated against.
KUBERNETES_VERSION = "1.33.0"
# Custom resources kubernetes-validate has no schema for: checked for their shape here, and
# by the assertions on their content.
CUSTOM_KINDS = {"monitoring.coreos.com/v1": {"ServiceMonitor"}, "argoproj.io/v1alpha1": {"Application", "ApplicationSet"}}
VALIDATED = 0


def validate(doc: dict, origin: str) -> None:
    """Every rendered object against the Kubernetes schemas, strictly (unknown fields fail)."""
    global VALIDATED
    VALIDATED += 1
    kind, api = doc.get("kind"), doc.get("apiVersion")
    if kind in CUSTOM_KINDS.get(api, set()):
        check(isinstance(doc.get("metadata", {}).get("name"), str) and isinstance(doc.get("spec"), dict),
              f"{origin}: {kind} without a name or a spec")
        return
    try:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as err:
        FAILURES.append(f"{origin}: {kind}/{doc.get('metadata', {}).get('name')}: {err.message} at {list(err.path)}")
    except kubernetes_validate.utils.SchemaNotFoundError:
        FAILURES.append(f"{origin}: no schema for {api} {kind}")


def render(chart_dir: Path, values: dict | None = None, namespace: str = "aggregation") -> list[dict]:
    """Renders with Helm's engine (the chart reloaded for each render) and validates."""
    chart = helm.Chart.load(chart_dir)
    manifests = chart.render(values or {}, name="release", namespace=namespace)
    docs = []
    for path, text in sorted(manifests.items()):
        if not path.endswith((".yaml", ".yml")):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                validate(doc, path)
                docs.append(doc)
    return docs


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d.get("kind") == kind]


def check_pod_security(name: str, pod: dict) -> None:
    sc = pod.get("securityContext", {})
    check(sc.get("runAsNonRoot") is True, f"{name}: pod runAsNonRoot is not true")
    check(sc.get("seccompProfile", {}).get("type") == "RuntimeDefault", f"{name}: seccomp is not RuntimeDefault")
    for container in pod.get("containers", []):
        csc = container.get("securityContext", {})
        cname = f"{name}/{container.get('name')}"
        check(csc.get("allowPrivilegeEscalation") is False, f"{cname}: allowPrivilegeEscalation is not false")
        check(csc.get("readOnlyRootFilesystem") is True, f"{cname}: root filesystem is writable")
        check(csc.get("capabilities", {}).get("drop") == ["ALL"], f"{cname}: capabilities not dropped")
        check(csc.get("runAsUser", sc.get("runAsUser")) != 0, f"{cname}: runs as root")
        check("resources" in container, f"{cname}: no resources")


def lint(chart_dir: Path) -> None:
    report = helm.lint(chart_dir, strict=True)
    for message in report.get("messages", []):
        if message.get("severity", 0) >= 2:
            FAILURES.append(f"lint {chart_dir.name}: {message.get('path')}: {message.get('error')}")
    for error in report.get("errors", []):
        FAILURES.append(f"lint {chart_dir.name}: {error}")


def check_provisioner_job(bin_dir: Path) -> None:
    chart_dir = ROOT / "charts" / "provisioner-job"
    check_common("provisioner-job", {}, {"clients": {"a-client": {"aggregatorIdentifier": "A"}}})

    default = render(chart_dir)
    (cronjob,) = by_kind(default, "CronJob")
    spec = cronjob["spec"]
    check(spec["concurrencyPolicy"] == "Forbid", "provisioner-job: concurrencyPolicy is not Forbid")
    check(spec["startingDeadlineSeconds"] > 0, "provisioner-job: no startingDeadlineSeconds")
    job = spec["jobTemplate"]["spec"]
    check(isinstance(job.get("backoffLimit"), int), "provisioner-job: no backoffLimit")
    pod = job["template"]["spec"]
    check_pod_security("provisioner-job", pod)
    env = {e["name"]: e for e in pod["containers"][0]["env"]}
    check(
        env["PROVISIONER__DATABASE__URL"]["valueFrom"]["secretKeyRef"]["name"] == "aggregation-database",
        "provisioner-job: database URL does not come from the Secret",
    )
    check("OTEL_EXPORTER_OTLP_ENDPOINT" not in env, "provisioner-job: OTLP set without an endpoint")

    # Key delivery: into the Secret by default, with RBAC limited to that one Secret.
    args = pod["containers"][0]["args"]
    keys_secret = "aggregation-controller-client-api-keys"
    check("--api-keys-secret" in args and args[args.index("--api-keys-secret") + 1] == f"aggregation/{keys_secret}",
          f"provisioner-job: the CronJob does not deliver keys into the Secret: {args}")
    check(pod.get("automountServiceAccountToken") is True and pod.get("serviceAccountName"),
          "provisioner-job: no ServiceAccount token for the Secret delivery")
    (role,) = by_kind(default, "Role")
    check(role["rules"] == [{"apiGroups": [""], "resources": ["secrets"], "resourceNames": [keys_secret],
                             "verbs": ["get", "patch"]}],
          f"provisioner-job: the Role is not limited to get/patch on the keys Secret: {role['rules']}")
    (binding,) = by_kind(default, "RoleBinding")
    (account,) = by_kind(default, "ServiceAccount")
    check(binding["subjects"][0]["name"] == account["metadata"]["name"] == pod["serviceAccountName"],
          "provisioner-job: the RoleBinding does not bind the job's ServiceAccount")
    (secret,) = by_kind(default, "Secret")
    check(secret["metadata"]["name"] == keys_secret and "data" not in secret and "stringData" not in secret,
          "provisioner-job: the keys Secret must be rendered without data")
    check(secret["metadata"]["annotations"].get("helm.sh/resource-policy") == "keep",
          "provisioner-job: the keys Secret is not kept on uninstall")
    undelivered = render(chart_dir, {"apiKeys": {"delivery": "none"}})
    check(not by_kind(undelivered, "Role") and not by_kind(undelivered, "Secret"),
          "provisioner-job: delivery none still renders RBAC or the Secret")
    (cj_none,) = by_kind(undelivered, "CronJob")
    pod_none = cj_none["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    check("--no-key-delivery" in pod_none["containers"][0]["args"], "provisioner-job: delivery none without --no-key-delivery")
    check(pod_none.get("automountServiceAccountToken") is False, "provisioner-job: a token is mounted with delivery none")

    clients = {
        "company-inc-testing": {"aggregatorIdentifier": "Company Inc AB"},
        "staging-sandbox": {"aggregatorIdentifier": "Staging: Sandbox \"quoted\"", "clusterId": "oxford-staging"},
    }
    values = {"clients": clients, "provisioning": {"enabled": False, "clusterId": "oxford-production"},
              "otlpEndpoint": "http://otel-collector:4317"}
    with_clients = render(chart_dir, values)
    (configmap,) = by_kind(with_clients, "ConfigMap")
    config_text = configmap["data"]["config.yaml"]
    parsed = yaml.safe_load(config_text)
    check(parsed["provisionClientsConfig"]["clients"] == clients, f"provisioner-job: clients not rendered as given: {parsed}")
    check(parsed["provisionClientsConfig"]["enabled"] is False, "provisioner-job: provisioning.enabled not rendered")

    (cronjob2,) = by_kind(with_clients, "CronJob")
    annotations = lambda cj: cj["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["annotations"]
    check(annotations(cronjob)["checksum/config"] != annotations(cronjob2)["checksum/config"],
          "provisioner-job: checksum/config does not change with the clients")
    env2 = {e["name"]: e for e in cronjob2["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["env"]}
    check(env2.get("OTEL_EXPORTER_OTLP_ENDPOINT", {}).get("value") == "http://otel-collector:4317",
          "provisioner-job: otlpEndpoint not passed on")

    # The binary itself must accept what the chart renders.
    binary = bin_dir / "provisioner-job"
    with tempfile.TemporaryDirectory() as tmp:
        for name, text in (("default", by_kind(default, "ConfigMap")[0]["data"]["config.yaml"]), ("clients", config_text)):
            path = Path(tmp) / f"{name}.yaml"
            path.write_text(text)
            out = subprocess.run([str(binary), "--print-config", "--config", str(path)],
                                 capture_output=True, text=True,
                                 env={"PROVISIONER__DATABASE__URL": "postgres://u:pw@db/agg"})
            check(out.returncode == 0, f"provisioner-job rejects the rendered {name} config: {out.stderr.strip()}")
            check("pw@" not in out.stdout, "provisioner-job: --print-config shows the password")

    # The aggregation service's own ConfigMap as the source of the client list.
    shared = render(chart_dir, {"config": {"existingConfigMap": "aggregation-service", "key": "application.yaml"}})
    check(not by_kind(shared, "ConfigMap"), "provisioner-job: a ConfigMap rendered though the service's is named")
    (cj_shared,) = by_kind(shared, "CronJob")
    pod_shared = cj_shared["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (volume,) = [v for v in pod_shared["volumes"] if v["name"] == "config"]
    check(volume["configMap"] == {"name": "aggregation-service", "items": [{"key": "application.yaml", "path": "config.yaml"}]},
          f"provisioner-job: the service's ConfigMap is not mounted as the job's config: {volume}")
    shared_env = {e["name"]: e.get("value") for e in pod_shared["containers"][0]["env"]}
    service_file = yaml.safe_dump({
        "server": {"port": 8080}, "kafka": {"brokers": "kafka:9092"},
        "provisionClientsConfig": {"enabled": True, "clusterId": "oxford-production",
                                   "clients": {"company-inc-testing": {"aggregatorIdentifier": "Company Inc AB"}}}})
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "application.yaml"
        path.write_text(service_file)
        env = {k: v for k, v in shared_env.items() if k.startswith("PROVISIONER__") and v is not None}
        out = subprocess.run([str(bin_dir / "provisioner-job"), "--print-config", "--config", str(path)],
                             capture_output=True, text=True,
                             env={**env, "PROVISIONER__DATABASE__URL": "postgres://u:pw@db/agg"})
        check(out.returncode == 0 and "company-inc-testing" in out.stdout and "lock_wait_secs: 60" in out.stdout,
              f"provisioner-job rejects the service's own file with the chart's settings: {out.stderr.strip()} {out.stdout}")

    # Per-environment values (what Argo CD deploys): staging opts out of provisioning.
    for env, enabled in (("staging", False), ("production", True)):
        env_values = yaml.safe_load((chart_dir / f"values-{env}.yaml").read_text())
        (cm,) = by_kind(render(chart_dir, env_values), "ConfigMap")
        rendered = yaml.safe_load(cm["data"]["config.yaml"])["provisionClientsConfig"]
        check(rendered["enabled"] is enabled, f"provisioner-job {env}: enabled should be {enabled}")

    # The schema rejects what the job would reject.
    try:
        render(chart_dir, {"clients": {"Bad_Name": {"aggregatorIdentifier": "x"}}})
        FAILURES.append("provisioner-job: values.schema.json accepted a bad client name")
    except helm.HelmError:
        pass


DELIVERY = {"domain": "DELIVERY", "replicas": 2, "table": "delivery_events",
            "importPath": "contracts.delivery.delivery_events_v10", "importObject": "DeliveryEventsV10Topic",
            "consumeEnv": "prod", "groupId": "bq-delivery", "ignoreEvents": ["ShippingPricesEstimatedEvent"]}
PAYMENTS = {"domain": "PAYMENTS", "table": "payment_events",
            "importPath": "contracts.payments.payment_events_v2", "importObject": "PaymentEventsV2Topic",
            "consumeEnv": "uat", "groupId": "bq-payments", "imageTag": "contracts-2",
            "resources": {"requests": {"cpu": "50m", "memory": "128Mi"}}}


def dotenv_of(docs: list[dict]) -> str:
    (configmap,) = by_kind(docs, "ConfigMap")
    return configmap["data"][".env"]


def check_generic_consumer(bin_dir: Path) -> None:
    chart_dir = ROOT / "charts" / "generic-consumer"
    check_common("generic-consumer", {"consumers": [DELIVERY]}, {"consumers": [DELIVERY], "writeEnv": "uat"})
    check(not by_kind(render(chart_dir), "Deployment"), "generic-consumer: Deployments without consumers")

    values = {"image": {"registry": "registry.example.com/platform", "name": "generic-consumer", "tag": "shared-1"},
              "consumers": [DELIVERY, PAYMENTS], "metrics": {"serviceMonitor": {"enabled": True}}}
    docs = render(chart_dir, values)
    deployments = {d["metadata"]["name"]: d for d in by_kind(docs, "Deployment")}
    check(sorted(deployments) == ["release-generic-consumer-delivery", "release-generic-consumer-payments"],
          f"generic-consumer: one Deployment per consumer expected: {sorted(deployments)}")
    (configmap,) = by_kind(docs, "ConfigMap")
    for name, consumer in (("delivery", DELIVERY), ("payments", PAYMENTS)):
        deployment = deployments.get(f"release-generic-consumer-{name}")
        if deployment is None:
            continue
        pod = deployment["spec"]["template"]["spec"]
        check_pod_security(f"generic-consumer {name}", pod)
        (container,) = pod["containers"]
        check(container["args"] == [consumer["domain"]], f"generic-consumer {name}: args {container['args']}")
        check(container["image"] == f"registry.example.com/platform/generic-consumer:{consumer.get('imageTag', 'shared-1')}",
              f"generic-consumer {name}: image {container['image']}")
        check(deployment["spec"]["replicas"] == consumer.get("replicas", 1), f"generic-consumer {name}: replicas")
        check(sorted(a["hostnames"][0] for a in pod["hostAliases"]) == ["prod1", "prod2", "prod3", "uat"],
              f"generic-consumer {name}: hostAliases {pod.get('hostAliases')}")
        env = {e["name"]: e.get("value") for e in container["env"]}
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        check(env["GOOGLE_APPLICATION_CREDENTIALS"] == "/var/run/secrets/gcp/credentials.json"
              and mounts["gcp"] == "/var/run/secrets/gcp"
              and volumes["gcp"]["secret"]["secretName"] == "gcp-credentials",
              f"generic-consumer {name}: the GCP credentials are not mounted where the variable points")
        check(mounts["env"] == container["workingDir"]
              and volumes["env"]["configMap"]["name"] == configmap["metadata"]["name"],
              f"generic-consumer {name}: the shared .env is not mounted into the working directory")
        if "resources" in consumer:
            check(container["resources"] == consumer["resources"], f"generic-consumer {name}: own resources not used")
    pdbs = sorted(p["metadata"]["name"] for p in by_kind(docs, "PodDisruptionBudget"))
    check(pdbs == sorted(deployments), f"generic-consumer: a PodDisruptionBudget per consumer expected: {pdbs}")
    check(len(by_kind(docs, "ServiceMonitor")) == 1, "generic-consumer: no ServiceMonitor when enabled")
    check(len(by_kind(docs, "NetworkPolicy")) == 1, "generic-consumer: no NetworkPolicy")

    # Removing one consumer leaves the others, untouched.
    fewer = render(chart_dir, {**values, "consumers": [DELIVERY]})
    check([d["metadata"]["name"] for d in by_kind(fewer, "Deployment")] == ["release-generic-consumer-delivery"],
          "generic-consumer: removing a consumer does not leave exactly the others")
    # A per-consumer tag rolls only that consumer; the .env is the same for both renders
    # of the same list, so the checksum does not roll the rest.
    pinned = render(chart_dir, {**values, "consumers": [DELIVERY, {**PAYMENTS, "imageTag": "contracts-3"}]})
    before = {d["metadata"]["name"]: d["spec"]["template"] for d in by_kind(docs, "Deployment")}
    after = {d["metadata"]["name"]: d["spec"]["template"] for d in by_kind(pinned, "Deployment")}
    check(before["release-generic-consumer-delivery"] == after["release-generic-consumer-delivery"]
          and before["release-generic-consumer-payments"] != after["release-generic-consumer-payments"],
          "generic-consumer: a per-consumer tag must roll that consumer only")
    for bad, what in (({"consumers": [DELIVERY, DELIVERY]}, "a domain listed twice"),
                      ({"consumers": [{**DELIVERY, "domain": "delivery"}]}, "a lower-case domain"),
                      ({"consumers": [{**DELIVERY, "colour": "red"}]}, "an unknown key")):
        try:
            render(chart_dir, bad)
            FAILURES.append(f"generic-consumer: {what} was accepted")
        except helm.HelmError:
            pass

    # The binary accepts the rendered .env for every domain, offline.
    binary = bin_dir / "generic-consumer"
    with tempfile.TemporaryDirectory() as tmp:
        env_file = Path(tmp) / ".env"
        env_file.write_text(dotenv_of(docs))
        credentials = Path(tmp) / "credentials.json"
        credentials.write_text("{}")
        for consumer in (DELIVERY, PAYMENTS):
            out = subprocess.run([str(binary), consumer["domain"], "--print-config", "--env-file", str(env_file)],
                                 capture_output=True, text=True, cwd=tmp,
                                 env={"GOOGLE_APPLICATION_CREDENTIALS": str(credentials)})
            check(out.returncode == 0,
                  f"generic-consumer rejects the rendered .env for {consumer['domain']}: {out.stderr.strip()}")
            if consumer.get("ignoreEvents"):
                check(f"{consumer['ignoreEvents'][0]}: ignored" in out.stdout,
                      f"generic-consumer: the ignore list of {consumer['domain']} did not arrive: {out.stdout}")


RECOMMENDED_LABELS = ("app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/version",
                      "app.kubernetes.io/component", "app.kubernetes.io/part-of", "app.kubernetes.io/managed-by",
                      "helm.sh/chart")


def pods_of(docs: list[dict]) -> list[tuple[str, dict, dict]]:
    """(name, pod template metadata, pod spec) of every workload."""
    pods = []
    for doc in docs:
        if doc["kind"] == "Deployment":
            template = doc["spec"]["template"]
        elif doc["kind"] == "CronJob":
            template = doc["spec"]["jobTemplate"]["spec"]["template"]
        else:
            continue
        pods.append((f"{doc['kind']}/{doc['metadata']['name']}", template.get("metadata", {}), template["spec"]))
    return pods


def check_common(chart: str, values: dict, changed: dict, grpc_probes: bool = False) -> list[dict]:
    """What every chart owes an operator, checked on a render with `values`; `changed` is
    a variant whose configuration differs (its pods must roll). Returns the render."""
    chart_dir = ROOT / "charts" / chart
    lint(chart_dir)
    docs = render(chart_dir, values)
    for doc in docs:
        labels = doc["metadata"].get("labels", {})
        missing = [label for label in RECOMMENDED_LABELS if label not in labels]
        check(not missing, f"{chart}: {doc['kind']}/{doc['metadata']['name']} lacks labels {missing}")
    pods = pods_of(docs)
    check(bool(pods), f"{chart}: no workload rendered")
    for name, _, pod in pods:
        check_pod_security(f"{chart} {name}", pod)
        check(pod.get("automountServiceAccountToken") is not None, f"{chart} {name}: token mount not explicit")
        if not name.startswith("Deployment/"):
            continue
        for container in pod["containers"]:
            for probe in ("livenessProbe", "readinessProbe"):
                check(probe in container, f"{chart} {name}: no {probe}")
            if grpc_probes:
                check("grpc" in container.get("livenessProbe", {}), f"{chart} {name}: liveness is not a gRPC probe")
    check(len(by_kind(docs, "NetworkPolicy")) >= 1, f"{chart}: no NetworkPolicy")
    if any(name.startswith("Deployment/") for name, _, _ in pods):
        check(not by_kind(docs, "ServiceMonitor"), f"{chart}: a ServiceMonitor without metrics.serviceMonitor.enabled")
        monitored = render(chart_dir, {**values, "metrics": {"serviceMonitor": {"enabled": True}}})
        check(len(by_kind(monitored, "ServiceMonitor")) == 1, f"{chart}: no ServiceMonitor when enabled")
    rolled = {name: meta.get("annotations", {}) for name, meta, _ in pods_of(render(chart_dir, changed))}
    for name, meta, _ in pods:
        checksums = {k: v for k, v in meta.get("annotations", {}).items() if k.startswith("checksum/")}
        check(bool(checksums), f"{chart} {name}: no checksum annotation")
        check(any(rolled.get(name, {}).get(k) != v for k, v in checksums.items()),
              f"{chart} {name}: a configuration change does not roll the pods")
    try:
        render(chart_dir, {**values, "noSuchKey": True})
        FAILURES.append(f"{chart}: values.schema.json accepts an unknown key")
    except helm.HelmError:
        pass
    return docs


def print_config(binary: Path, config: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    """Runs `binary --print-config` on the rendered `config`."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_text(config)
        return subprocess.run([str(binary), "--print-config", "--config", str(path)],
                              capture_output=True, text=True, env=env)


def check_gandalf(bin_dir: Path) -> None:
    values = {"logicalName": "aggregator-7", "tenant": "tenant-b",
              "cluster": ["http://gandalf-cluster-a:9100", "http://gandalf-cluster-b:9100"]}
    docs = check_common("gandalf-aggregator", values, {**values, "tenant": "tenant-c"}, grpc_probes=True)
    (configmap,) = by_kind(docs, "ConfigMap")
    config = configmap["data"]["config.yaml"]
    out = print_config(bin_dir / "gandalf-aggregator", config, {"GANDALF_AGGREGATOR__SECRET": "s3cret-not-shown"})
    check(out.returncode == 0, f"gandalf-aggregator rejects the rendered config: {out.stderr.strip()}")
    check("aggregator-7" in out.stdout and "gandalf-cluster-b" in out.stdout and "s3cret" not in out.stdout,
          f"gandalf-aggregator: the rendered config did not arrive as given: {out.stdout}")
    (service,) = by_kind(docs, "Service")
    check(sorted(p["name"] for p in service["spec"]["ports"]) == ["grpc", "ops"], "gandalf-aggregator: Service ports")

    tenants = {"tenant-b": {"secrets": ["connector-secret"], "aggregator_secrets": ["aggregator-secret"],
                            "database": {"url": "postgres://gandalf:pw@postgres:5432/tenant_b"}}}
    values = {"config": {"existingSecret": ""}, "tenants": tenants}
    docs = check_common("gandalf-cluster", values,
                        {**values, "tenants": {**tenants, "tenant-c": {"secrets": ["other"]}}}, grpc_probes=True)
    (secret,) = by_kind(docs, "Secret")
    out = print_config(bin_dir / "gandalf-cluster", secret["stringData"]["config.yaml"], {})
    check(out.returncode == 0, f"gandalf-cluster rejects the rendered config: {out.stderr.strip()}")
    check("tenant-b" in out.stdout and "connector-secret" not in out.stdout and "pw@" not in out.stdout,
          f"gandalf-cluster: the rendered config did not arrive as given, or shows a secret: {out.stdout}")
    production = render(ROOT / "charts" / "gandalf-cluster")
    check(not by_kind(production, "Secret"), "gandalf-cluster: a Secret rendered though an existing one is named")
    (deployment,) = by_kind(production, "Deployment")
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    check(volumes["config"]["secret"]["secretName"] == "gandalf-cluster-config",
          "gandalf-cluster: the existing config Secret is not mounted")


def check_devops_api(bin_dir: Path) -> None:
    values = {"auth": {"trustedProxies": ["10.42.0.0/16"], "tokensSecret": "devops-api-tokens", "tokensKey": "tokens"}}
    docs = check_common("devops-api", values, {**values, "maxBodyBytes": 131072})
    (ingress,) = by_kind(docs, "Ingress")
    annotations = ingress["metadata"]["annotations"]
    check(ingress["spec"]["ingressClassName"] == "nginx"
          and annotations.get("nginx.ingress.kubernetes.io/auth-url", "").startswith("https://")
          and annotations.get("nginx.ingress.kubernetes.io/auth-response-headers") == "X-Auth-Request-User",
          f"devops-api: the Ingress lacks the nginx auth_request annotations: {annotations}")
    check(len(by_kind(docs, "PodDisruptionBudget")) == 1, "devops-api: no PodDisruptionBudget")
    (deployment,) = by_kind(docs, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    env = {e["name"]: e for e in pod["containers"][0]["env"]}
    check(env["DEVOPS_API__DATABASE__URL"]["valueFrom"]["secretKeyRef"]["name"] == "devops-api-database",
          "devops-api: the admin database URL does not come from its Secret")
    volumes = {v["name"]: v for v in pod["volumes"]}
    check(volumes["tokens"]["secret"]["secretName"] == "devops-api-tokens", "devops-api: the tokens Secret is not mounted")
    (policy,) = by_kind(docs, "NetworkPolicy")
    http_rule = next(r for r in policy["spec"]["ingress"] if r["ports"][0]["port"] == "http")
    check(bool(http_rule.get("from")), "devops-api: the HTTP port is open to every pod, around the ingress")
    (configmap,) = by_kind(docs, "ConfigMap")
    out = print_config(bin_dir / "devops-api", configmap["data"]["config.yaml"],
                       {"DEVOPS_API__DATABASE__URL": "postgres://devops_admin:pw@db:5432/postgres"})
    check(out.returncode == 0, f"devops-api rejects the rendered config: {out.stderr.strip()}")
    check("10.42.0.0/16" in out.stdout and "pw@" not in out.stdout,
          f"devops-api: the rendered config did not arrive as given, or shows the password: {out.stdout}")


OC_CONFIG = {
    "compass": {"directorURL": "https://compass.example.com/director/graphql",
                "tenantId": "3e64ebae-38b5-46a0-b1ed-9ccee153a0ae",
                "tokenUrl": "https://oauth2.example.com/oauth2/token", "clientID": "clientid",
                "clientSecret": "client-secret-not-shown", "applicationPrefix": "crm"},
    "openConnectors": {"hostname": "api.openconnectors.example.com", "organizationSecret": "org-not-shown",
                       "userSecret": "user-not-shown", "tags": ["crm"]},
}


def check_oc_sync_job(bin_dir: Path) -> None:
    values = {"configSecret": {"existingSecret": ""}, "config": OC_CONFIG, "schedule": "*/5 * * * *"}
    changed = {**values, "config": {**OC_CONFIG, "maxDeletes": 3}}
    docs = check_common("oc-sync-job", values, changed)
    (cronjob,) = by_kind(docs, "CronJob")
    check(cronjob["spec"]["concurrencyPolicy"] == "Forbid", "oc-sync-job: concurrencyPolicy is not Forbid")
    check(cronjob["spec"]["schedule"] == "*/5 * * * *", "oc-sync-job: schedule not taken from values")
    (secret,) = by_kind(docs, "Secret")
    config = secret["stringData"]["config.json"]
    check(json.loads(config) == OC_CONFIG, "oc-sync-job: config.json not rendered as given")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.json"
        path.write_text(config)
        out = subprocess.run([str(bin_dir / "oc-sync-job"), "--print-config", "--config", str(path)],
                             capture_output=True, text=True, env={})
    check(out.returncode == 0, f"oc-sync-job rejects the rendered config.json: {out.stderr.strip()}")
    check("not-shown" not in out.stdout, f"oc-sync-job: --print-config shows a secret: {out.stdout}")
    production = render(ROOT / "charts" / "oc-sync-job")
    check(not by_kind(production, "Secret"), "oc-sync-job: a Secret rendered though an existing one is named")
    (cj,) = by_kind(production, "CronJob")
    volumes = cj["spec"]["jobTemplate"]["spec"]["template"]["spec"]["volumes"]
    check(volumes[0]["secret"]["secretName"] == "oc-sync-job-config", "oc-sync-job: the existing Secret is not mounted")


SERVICES = ("provisioner-job", "oc-sync-job", "generic-consumer", "devops-api", "gandalf-aggregator", "gandalf-cluster")


def check_umbrella(bin_dir: Path) -> None:
    """The umbrella with each environment's values, as Argo CD renders it: dependencies
    built from ../<service> into a scratch copy (nothing vendored in the checkout)."""
    with tempfile.TemporaryDirectory() as tmp:
        charts = Path(tmp) / "charts"
        shutil.copytree(ROOT / "charts", charts, ignore=shutil.ignore_patterns("charts", "Chart.lock"))
        umbrella = charts / "platform"
        helm.dependency_update(umbrella)
        lint(umbrella)
        chart = yaml.safe_load((umbrella / "Chart.yaml").read_text())
        check(sorted(d["name"] for d in chart["dependencies"]) == sorted(SERVICES),
              "platform: not every service is a dependency")
        for dep in chart["dependencies"]:
            check(dep["repository"] == f"file://../{dep['name']}" and dep["condition"] == f"{dep['name']}.enabled",
                  f"platform: dependency {dep['name']} is not file:// with condition {dep['name']}.enabled")
        envs = sorted(p.stem.removeprefix("values-") for p in umbrella.glob("values-*.yaml"))
        check({"staging", "production"} <= set(envs), f"platform: environments {envs}")
        for env in envs:
            values = yaml.safe_load((umbrella / f"values-{env}.yaml").read_text()) or {}
            docs = render(umbrella, values, namespace=f"platform-{env}")
            where = f"platform {env}"
            for name, _, pod in pods_of(docs):
                check_pod_security(f"{where} {name}", pod)
                for container in pod["containers"]:
                    check(container["image"].startswith("registry.example.com/platform/"),
                          f"{where} {name}: image {container['image']} not from global.imageRegistry")
            for cronjob in by_kind(docs, "CronJob"):
                check(cronjob["spec"]["concurrencyPolicy"] == "Forbid", f"{where}: {cronjob['metadata']['name']} not Forbid")
            consumers = values.get("generic-consumer", {}).get("consumers", [])
            deployments = [d for d in by_kind(docs, "Deployment")
                           if d["metadata"]["labels"]["app.kubernetes.io/name"] == "generic-consumer"]
            check(sorted(d["spec"]["template"]["spec"]["containers"][0]["args"][0] for d in deployments)
                  == sorted(c["domain"] for c in consumers),
                  f"{where}: {len(consumers)} consumers in values, Deployments for "
                  f"{[d['metadata']['name'] for d in deployments]}")
            for deployment in deployments:
                (container,) = deployment["spec"]["template"]["spec"]["containers"]
                env_vars = {e["name"]: e.get("value") for e in container["env"]}
                check(env_vars["GOOGLE_APPLICATION_CREDENTIALS"] == "/var/run/secrets/gcp/credentials.json",
                      f"{where}: {deployment['metadata']['name']} credentials from global.gcp not used")
            cms = [c for c in by_kind(docs, "ConfigMap") if ".env" in c.get("data", {})]
            if consumers:
                (cm,) = cms
                with tempfile.TemporaryDirectory() as work:
                    env_file = Path(work) / ".env"
                    env_file.write_text(cm["data"][".env"])
                    key = Path(work) / "credentials.json"
                    key.write_text("{}")
                    for consumer in consumers:
                        out = subprocess.run([str(bin_dir / "generic-consumer"), consumer["domain"], "--print-config",
                                              "--env-file", str(env_file)], capture_output=True, text=True, cwd=work,
                                             env={"GOOGLE_APPLICATION_CREDENTIALS": str(key)})
                        check(out.returncode == 0, f"{where}: generic-consumer rejects {consumer['domain']}: {out.stderr.strip()}")
            provisioning = [yaml.safe_load(c["data"]["config.yaml"]) for c in by_kind(docs, "ConfigMap")
                            if "provisionClientsConfig" in c.get("data", {}).get("config.yaml", "")]
            if provisioning:
                enabled = provisioning[0]["provisionClientsConfig"]["enabled"]
                check(enabled is (env != "staging"), f"{where}: provisioning enabled is {enabled}")


def check_argocd() -> None:
    """The ApplicationSet deploys the umbrella to every environment it has values for."""
    umbrella_envs = sorted(p.stem.removeprefix("values-") for p in (ROOT / "charts" / "platform").glob("values-*.yaml"))
    docs = [d for p in sorted((ROOT / "argocd").glob("*.yaml")) for d in yaml.safe_load_all(p.read_text()) if d]
    for doc in docs:
        validate(doc, "argocd")
    (appset,) = [d for d in docs if d["kind"] == "ApplicationSet"]
    elements = appset["spec"]["generators"][0]["list"]["elements"]
    check(sorted(e["env"] for e in elements) == umbrella_envs,
          f"argocd: environments {[e['env'] for e in elements]} != values files {umbrella_envs}")
    spec = appset["spec"]["template"]["spec"]
    check(spec["source"]["path"] == "charts/platform", "argocd: does not deploy the umbrella chart")
    check(spec["source"]["helm"]["valueFiles"] == ["values.yaml", "values-{{ .env }}.yaml"],
          "argocd: value files are not values.yaml + values-<env>.yaml")
    policy = spec["syncPolicy"]
    check(policy["automated"] == {"prune": True, "selfHeal": True}, "argocd: sync is not automated with prune and self-heal")
    check("CreateNamespace=true" in policy["syncOptions"], "argocd: namespace not created")


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    check_provisioner_job(Path(sys.argv[1]))
    check_generic_consumer(Path(sys.argv[1]))
    check_gandalf(Path(sys.argv[1]))
    check_devops_api(Path(sys.argv[1]))
    check_oc_sync_job(Path(sys.argv[1]))
    check_umbrella(Path(sys.argv[1]))
    check_argocd()
    charts = sorted(p.parent.name for p in (ROOT / "charts").glob("*/Chart.yaml"))
    if FAILURES:
        print(f"chart checks: {len(FAILURES)} failed", file=sys.stderr)
        for failure in FAILURES:
            print(f"  - {failure}", file=sys.stderr)
        return 1
    print(f"chart checks: {', '.join(charts)}: lint, render and content checks passed; "
          f"{VALIDATED} rendered objects valid for Kubernetes {KUBERNETES_VERSION} (strict)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
