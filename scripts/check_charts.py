#!/usr/bin/env python3
"""Chart checks for `make test`: lint, render with Helm's own engine, assert on content.

Every chart under charts/ is linted strictly and rendered with its default values and
with test values; the rendered manifests are checked for what operators rely on
(CronJobs with Forbid, nothing running as root, config checksums), and the rendered
provisioner-job config is parsed by the real binary (`--print-config`).

Usage: check_charts.py BIN_DIR
"""

import subprocess
import sys
import tempfile
from pathlib import Path

import helm_python as helm
import yaml

ROOT = Path(__file__).resolve().parent.parent
FAILURES: list[str] = []


def check(condition: bool, message: str) -> None:
    if not condition:
        FAILURES.append(message)


def render(chart_dir: Path, values: dict | None = None) -> list[dict]:
    chart = helm.Chart.load(chart_dir)
    manifests = chart.render(values or {}, name="release", namespace="aggregation")
    docs = []
    for path, text in sorted(manifests.items()):
        if not path.endswith((".yaml", ".yml")):
            continue
        docs.extend(d for d in yaml.safe_load_all(text) if d)
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
    lint(chart_dir)

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


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    check_provisioner_job(Path(sys.argv[1]))
    charts = sorted(p.parent.name for p in (ROOT / "charts").glob("*/Chart.yaml"))
    if FAILURES:
        print(f"chart checks: {len(FAILURES)} failed", file=sys.stderr)
        for failure in FAILURES:
            print(f"  - {failure}", file=sys.stderr)
        return 1
    print(f"chart checks: {', '.join(charts)}: lint, render and content checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
