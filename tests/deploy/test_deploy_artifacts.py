"""The deploy artefacts, validated offline with the pinned tools of ``make deploy-tools``.

* ``deploy/scripts/deploy-check.sh`` passes: helm lint, ``helm template | kubeconform -strict``
  (Kubernetes JSON schemas from the kubernetes-validate wheel), BuildKit's Dockerfile rules,
  the Compose Specification schema (compose-go).
* Each validator rejects a broken input (so a pass means something).
* Structural assertions on the rendered chart and on the normalised compose project; each one
  is also run on a chart or compose file broken on purpose, and must fail there.

The tools are installed by ``make test`` (its ``deploy-tools`` prerequisite): a missing tool
fails these tests, never skips them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.config import Config
from gateway.policy.sidecar import opa_config

ROOT = Path(__file__).resolve().parents[2]
TOOLS = Path(os.environ.get("TOOLS", ROOT / ".tools" / "bin"))
SCHEMAS = ROOT / ".tools" / "k8s-schemas"
CHART = ROOT / "deploy" / "helm" / "mcp-opa-gateway"
CI_VALUES = CHART / "ci" / "test-values.yaml"
COMPOSE = ROOT / "deploy" / "compose.yaml"
OPA_VERSION = os.environ.get("OPA_VERSION") or re.search(
    r"^OPA_VERSION \?= (\S+)$", (ROOT / "Makefile").read_text(), re.M
).group(1)  # type: ignore[union-attr]
SECRET_ENV = re.compile(r"^(DATABASE_URL|.*TOKEN|.*KEK|GATEWAY_BUNDLE_SIGNING_KEY|GATEWAY_SESSION_KEY)$")

Docs = list[dict[str, Any]]


def tool(name: str) -> Path:
    path = TOOLS / name
    if not os.access(path, os.X_OK):
        pytest.fail(f"{path} is missing: `make deploy-tools` (a prerequisite of `make test`) installs it")
    return path


def run(*argv: str | Path, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in argv], input=stdin, capture_output=True, text=True, timeout=300)


def k8s_version() -> str:
    stamp = SCHEMAS / "kubernetes-version"
    if not stamp.is_file():
        pytest.fail(f"{stamp} is missing: `make deploy-tools` unpacks the Kubernetes schemas")
    return stamp.read_text().strip()


def render(chart: Path = CHART, values: Path = CI_VALUES, *extra: str) -> str:
    out = run(
        tool("helm"),
        "template",
        "gw",
        chart,
        "--namespace",
        "gw",
        "--kube-version",
        k8s_version(),
        "-f",
        values,
        *extra,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def parse(manifest: str) -> Docs:
    return [d for d in yaml.safe_load_all(manifest) if d]


@pytest.fixture(scope="module")
def docs() -> Docs:
    return parse(render())


@pytest.fixture
def chart_copy(tmp_path: Path) -> Iterator[Callable[[str, str, str], Docs]]:
    """Copy the chart, replace one string in one of its files (it must occur), render it."""

    def broken(rel: str, old: str, new: str) -> Docs:
        copy = tmp_path / "chart"
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(CHART, copy)
        target = copy / rel
        text = target.read_text()
        assert old in text, f"{old!r} not in {rel}"
        target.write_text(text.replace(old, new, 1))
        return parse(render(copy, copy / "ci" / "test-values.yaml"))

    yield broken


# ---- helpers over rendered manifests ------------------------------------------------------------


def kind(docs: Docs, k: str) -> Docs:
    return [d for d in docs if d["kind"] == k]


def deployment(docs: Docs, plane: str) -> dict[str, Any]:
    found = [d for d in kind(docs, "Deployment") if d["metadata"]["name"].endswith(f"-{plane}")]
    assert len(found) == 1, f"one {plane}-plane Deployment expected, got {len(found)}"
    return found[0]


def container(dep: dict[str, Any], name: str) -> dict[str, Any]:
    found = [c for c in dep["spec"]["template"]["spec"]["containers"] if c["name"] == name]
    assert found, f"no container {name} in {dep['metadata']['name']}"
    return found[0]


def env_of(c: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in c.get("env", [])}


def pod_labels(dep: dict[str, Any]) -> dict[str, str]:
    labels: dict[str, str] = dep["spec"]["template"]["metadata"]["labels"]
    return labels


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def opa_document(docs: Docs) -> tuple[dict[str, Any], dict[str, Any]]:
    (cm,) = [d for d in kind(docs, "ConfigMap") if "opa-config.yaml" in d.get("data", {})]
    return yaml.safe_load(cm["data"]["opa-config.yaml"]), cm


# ---- the structural assertions (each is also run on a broken chart below) -------------------------


def check_hardened(docs: Docs) -> None:
    """Every container: non-root, read-only root, no privilege escalation, ALL capabilities dropped,
    seccomp RuntimeDefault (its own or the pod's)."""
    deps = kind(docs, "Deployment")
    assert len(deps) == 2
    for dep in deps + kind(docs, "Job"):
        pod = dep["spec"]["template"]["spec"]
        psc = pod.get("securityContext", {})
        assert pod.get("automountServiceAccountToken") is False
        for c in pod["containers"] + pod.get("initContainers", []):
            sc = c.get("securityContext", {})
            where = f"{dep['metadata']['name']}/{c['name']}"
            assert sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is True, where
            assert sc.get("runAsUser", psc.get("runAsUser", 0)) != 0, where
            assert sc.get("readOnlyRootFilesystem") is True, where
            assert sc.get("allowPrivilegeEscalation") is False, where
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], where
            assert not sc.get("capabilities", {}).get("add"), where
            seccomp = sc.get("seccompProfile") or psc.get("seccompProfile") or {}
            assert seccomp.get("type") == "RuntimeDefault", where
            writable = {m["mountPath"] for m in c.get("volumeMounts", []) if not m.get("readOnly")}
            assert "/tmp" in writable, f"{where}: no writable /tmp"


def check_opa_sidecar(docs: Docs) -> None:
    """The data plane asks its openpolicyagent/opa sidecar (pinned = OPA_VERSION), configured like the
    sidecar gateway/policy/sidecar.py supervises: the three services, signed bundles, the token as a
    file, and the restricted capabilities shipped beside it."""
    dp = deployment(docs, "data")
    opa = container(dp, "opa")
    assert opa["image"] == f"openpolicyagent/opa:{OPA_VERSION.lstrip('v')}-static"
    args = opa["args"]
    assert args[:2] == ["run", "--server"]
    assert args[args.index("--addr") + 1].startswith("127.0.0.1:")
    assert args[args.index("--config-file") + 1] == "/etc/opa/opa-config.yaml"
    assert "--skip-version-check" in args
    doc, cm = opa_document(docs)
    key_id = next(iter(doc["keys"]))
    assert args[args.index("--set-file") + 1] == f"keys.{key_id}.key=/etc/opa/bundle-verification.pem"
    assert "BEGIN PUBLIC KEY" in cm["data"]["bundle-verification.pem"]
    assert json.loads(cm["data"]["capabilities.json"]) == json.loads(
        (ROOT / "gateway" / "policy" / "capabilities.json").read_text()
    ), "the chart's capabilities.json differs from gateway/policy/capabilities.json"
    # The same document sidecar.py writes, section by section.
    cfg = Config.from_mapping(
        {
            "plane": "data",
            "control_plane": {"internal_token": "t", "url": "http://cp:8080"},
            "jwt": {"issuer": "i", "audience": "a", "jwks_url": "https://i/jwks"},
            "opa": {"manage": False},
        }
    )
    want = opa_config(cfg, "/token", "id")
    for section in ("bundles", "status", "decision_logs"):
        assert doc.get(section) == want[section], section
    assert set(doc["labels"]) == set(want["labels"])
    assert doc["labels"]["gateway_dataplane"] == "${POD_NAME}"
    svc = doc["services"]["control_plane"]
    assert set(svc) == set(want["services"]["control_plane"])
    assert svc["url"].endswith(":8080/v1/opa") and "-control." in svc["url"]
    token_path = svc["credentials"]["bearer"]["token_path"]
    mounts = {m["mountPath"]: m for m in opa["volumeMounts"]}
    assert str(Path(token_path).parent) in mounts, "the OPA token file is not mounted"
    env = env_of(container(dp, "data-plane"))
    assert env["GATEWAY_OPA_MANAGE"]["value"] == "false"
    assert env["GATEWAY_OPA_URL"]["value"] == "http://" + args[args.index("--addr") + 1]
    assert env["GATEWAY_DATAPLANE_ID"]["value"] == "$(POD_NAME)"
    # The data plane names its OPA as OPA labels itself, so the control plane registers it at start.
    assert doc["labels"]["gateway_instance"] == "${POD_NAME}"
    assert env.get("GATEWAY_OPA_INSTANCE_ID", {}).get("value") == "$(POD_NAME)"
    cp_env = env_of(container(deployment(docs, "control"), "control-plane"))
    assert cp_env["GATEWAY_BUNDLE_SIGNING_KEY_ID"]["value"] == key_id
    assert "POD_NAME" in env_of(opa) and set(env_of(opa)) == {"POD_NAME"}, "OPA gets only POD_NAME"


def check_probes(docs: Docs) -> None:
    """Liveness -> /healthz, readiness -> /readyz on both planes (the data plane's with an allowed
    Host); the OPA sidecar's -> OPA's /health (readiness: bundles activated)."""
    for plane, name, port in (("control", "control-plane", "http"), ("data", "data-plane", "mcp")):
        c = container(deployment(docs, plane), name)
        assert c["livenessProbe"]["httpGet"]["path"] == "/healthz", plane
        assert c["readinessProbe"]["httpGet"]["path"] == "/readyz", plane
        assert c["readinessProbe"]["httpGet"]["port"] == port, plane
    dp = container(deployment(docs, "data"), "data-plane")
    for probe in ("livenessProbe", "readinessProbe"):
        headers = {h["name"]: h["value"] for h in dp[probe]["httpGet"].get("httpHeaders", [])}
        assert headers.get("Host", "").startswith("127.0.0.1:"), f"data plane {probe} without an allowed Host"
    opa = container(deployment(docs, "data"), "opa")
    assert opa["livenessProbe"]["httpGet"]["path"] == "/health"
    assert opa["readinessProbe"]["httpGet"]["path"] == "/health?bundles"


def check_secrets(docs: Docs) -> None:
    """Every credential comes from the chart's Secret (secretKeyRef or a Secret volume), never a literal."""
    (secret,) = kind(docs, "Secret")
    name = secret["metadata"]["name"]
    seen = set()
    for dep in kind(docs, "Deployment"):
        pod = dep["spec"]["template"]["spec"]
        secret_volumes = {v["name"] for v in pod["volumes"] if v.get("secret", {}).get("secretName") == name}
        for c in pod["containers"]:
            for e in c.get("env", []):
                if SECRET_ENV.match(e["name"]):
                    ref = e.get("valueFrom", {}).get("secretKeyRef")
                    assert ref and ref["name"] == name and "value" not in e, (
                        f"{c['name']}: {e['name']} is not a secretKeyRef"
                    )
                    seen.add(e["name"])
                if e["name"].endswith("_KEY_FILE"):
                    mount = [m for m in c["volumeMounts"] if e["value"].startswith(m["mountPath"] + "/")]
                    assert mount and mount[0]["name"] in secret_volumes, f"{e['name']} is not in a Secret volume"
                    seen.add(e["name"])
    assert seen >= {
        "DATABASE_URL",
        "GATEWAY_ADMIN_TOKEN",
        "GATEWAY_INTERNAL_TOKEN",
        "GATEWAY_OPA_TOKEN",
        "GATEWAY_CREDENTIALS_KEK",
        "GATEWAY_BUNDLE_SIGNING_KEY_FILE",
        "GATEWAY_AUDIT_SIGNING_KEY_FILE",
    }, seen
    dp_env = env_of(container(deployment(docs, "data"), "data-plane"))
    assert not {"DATABASE_URL", "GATEWAY_ADMIN_TOKEN", "GATEWAY_OPA_TOKEN"} & set(dp_env), (
        "a data plane holds no more than it needs"
    )
    # Without a scrape token /metrics answers loopback peers only: both planes get it, and
    # each ServiceMonitor presents it.
    cp_env = env_of(container(deployment(docs, "control"), "control-plane"))
    for env in (dp_env, cp_env):
        assert "secretKeyRef" in env.get("GATEWAY_METRICS_TOKEN", {}).get("valueFrom", {}), "no metrics token"
    for monitor in kind(docs, "ServiceMonitor"):
        for endpoint in monitor["spec"]["endpoints"]:
            credentials = endpoint.get("authorization", {}).get("credentials", {})
            assert credentials.get("name") == name, f"{monitor['metadata']['name']} scrapes without the token"


def check_network_policies(docs: Docs) -> None:
    """Each plane's pods are selected by a NetworkPolicy restricting ingress and egress; the data plane
    takes traffic on its port only, and may reach the control plane's; the control plane takes only
    the data planes (and the configured admins)."""
    cp, dp = deployment(docs, "control"), deployment(docs, "data")
    policies = kind(docs, "NetworkPolicy")

    def policy_for(dep: dict[str, Any]) -> dict[str, Any]:
        found = [p for p in policies if selects(p["spec"]["podSelector"]["matchLabels"], pod_labels(dep))]
        assert len(found) == 1, f"{dep['metadata']['name']}: {len(found)} NetworkPolicies"
        assert sorted(found[0]["spec"]["policyTypes"]) == ["Egress", "Ingress"]
        return found[0]

    dp_port = container(dp, "data-plane")["ports"][0]["containerPort"]
    cp_port = container(cp, "control-plane")["ports"][0]["containerPort"]
    dpp, cpp = policy_for(dp), policy_for(cp)
    assert [p["port"] for r in dpp["spec"]["ingress"] for p in r["ports"]] == [dp_port]
    to_cp = [
        r
        for r in dpp["spec"]["egress"]
        if any(selects(t.get("podSelector", {}).get("matchLabels", {}), pod_labels(cp)) for t in r.get("to", []))
    ]
    assert to_cp and [p["port"] for p in to_cp[0]["ports"]] == [cp_port]
    assert all(r.get("to") for r in dpp["spec"]["egress"]), "data plane egress to anywhere"
    assert all(r.get("to") for r in cpp["spec"]["egress"]), "control plane egress to anywhere"
    (rule,) = cpp["spec"]["ingress"]
    assert [p["port"] for p in rule["ports"]] == [cp_port]
    assert any(selects(f.get("podSelector", {}).get("matchLabels", {}), pod_labels(dp)) for f in rule["from"])
    dns = [r for r in dpp["spec"]["egress"] if {p["port"] for p in r["ports"]} == {53}]
    assert dns, "no DNS egress"


def check_scaling(docs: Docs) -> None:
    """An autoscaling/v2 HPA scales the data-plane Deployment; a PDB covers each plane."""
    (hpa,) = kind(docs, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    dp, cp = deployment(docs, "data"), deployment(docs, "control")
    ref = hpa["spec"]["scaleTargetRef"]
    assert (ref["kind"], ref["name"]) == ("Deployment", dp["metadata"]["name"])
    assert "replicas" not in dp["spec"], "an HPA-managed Deployment must not set replicas"
    for c in dp["spec"]["template"]["spec"]["containers"]:
        assert c["resources"]["requests"]["cpu"], "CPU utilization needs CPU requests on every container"
    pdbs = kind(docs, "PodDisruptionBudget")
    for dep in (dp, cp):
        covering = [p for p in pdbs if selects(p["spec"]["selector"]["matchLabels"], pod_labels(dep))]
        assert len(covering) == 1, f"{dep['metadata']['name']}: {len(covering)} PDBs"
    assert all(selects(d["spec"]["selector"]["matchLabels"], pod_labels(d)) for d in (dp, cp))
    assert not selects(cp["spec"]["selector"]["matchLabels"], pod_labels(dp)), (
        "the control plane's selector matches data-plane pods"
    )


def check_migrations(docs: Docs) -> None:
    """``gateway migrate`` runs as a pre-upgrade hook Job with the database URL from the Secret,
    and no Service routes to its pod."""
    (job,) = kind(docs, "Job")
    annotations = job["metadata"]["annotations"]
    assert annotations["helm.sh/hook"] == "pre-upgrade"
    (c,) = job["spec"]["template"]["spec"]["containers"]
    assert c["command"] == ["gateway", "migrate"]
    assert "secretKeyRef" in env_of(c)["DATABASE_URL"]["valueFrom"]
    labels = job["spec"]["template"]["metadata"]["labels"]
    for svc in kind(docs, "Service"):
        assert not selects(svc["spec"]["selector"], labels), f"{svc['metadata']['name']} routes to the migrate Job"
    # A default-deny namespace must not leave it without PostgreSQL (every upgrade would hang).
    (policy,) = [p for p in kind(docs, "NetworkPolicy") if selects(p["spec"]["podSelector"]["matchLabels"], labels)]
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"] and "ingress" not in policy["spec"]
    assert policy["spec"]["egress"], "the migrate Job reaches nothing"


CHECKS = [
    check_hardened,
    check_opa_sidecar,
    check_probes,
    check_secrets,
    check_network_policies,
    check_scaling,
    check_migrations,
]


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
def test_rendered_chart(docs: Docs, check: Callable[[Docs], None]) -> None:
    check(docs)


BREAKS = [
    (check_hardened, "values.yaml", "  readOnlyRootFilesystem: true", "  readOnlyRootFilesystem: false"),
    (check_hardened, "values.yaml", "    drop: [ALL]", "    drop: [NET_RAW]"),
    (check_opa_sidecar, "templates/opa-configmap.yaml", "    status:\n      service: control_plane\n", ""),
    (check_opa_sidecar, "templates/opa-configmap.yaml", "persist: false", "persist: true"),
    (check_opa_sidecar, "templates/opa-configmap.yaml", '.Files.Get "files/capabilities.json"', '"{}"'),
    (check_opa_sidecar, "templates/dataplane-deployment.yaml", 'value: "false"', 'value: "true"'),
    (check_opa_sidecar, "templates/dataplane-deployment.yaml", "- name: GATEWAY_OPA_INSTANCE_ID", "- name: X_UNUSED"),
    (check_probes, "templates/dataplane-deployment.yaml", "path: /readyz", "path: /healthz"),
    (check_probes, "templates/dataplane-deployment.yaml", "path: /health?bundles", "path: /health"),
    (check_secrets, "templates/_helpers.tpl", "    secretKeyRef:", "    configMapKeyRef:"),
    (check_secrets, "templates/servicemonitor.yaml", "      authorization:", "      x-authorization:"),
    (check_network_policies, "values.yaml", "networkPolicy:\n  enabled: true", "networkPolicy:\n  enabled: false"),
    (
        check_network_policies,
        "templates/networkpolicy.yaml",
        "  egress:\n    - to:\n",
        "  egress:\n    - {}\n    - to:\n",
    ),
    (
        check_scaling,
        "templates/dataplane-hpa.yaml",
        'name: {{ include "gw.data" . }}\n  minReplicas',
        'name: {{ include "gw.control" . }}\n  minReplicas',
    ),
    (check_scaling, "templates/pdb.yaml", 'list "control" "data" }}', 'list "control" }}'),
    (
        check_migrations,
        "templates/controlplane-migrate-job.yaml",
        "helm.sh/hook: pre-upgrade",
        "helm.sh/hook: post-upgrade",
    ),
    (
        check_migrations,
        "templates/controlplane-migrate-job.yaml",
        "app.kubernetes.io/component: migrate\n    spec:",
        "app.kubernetes.io/component: control-plane\n    spec:",
    ),
]


@pytest.mark.parametrize(
    ("check", "rel", "old", "new"), BREAKS, ids=[f"{b[0].__name__}-{i}" for i, b in enumerate(BREAKS)]
)
def test_each_assertion_fails_on_a_broken_chart(
    chart_copy: Callable[[str, str, str], Docs], check: Callable[[Docs], None], rel: str, old: str, new: str
) -> None:
    broken = chart_copy(rel, old, new)
    with pytest.raises(AssertionError):
        check(broken)


# ---- the validators ------------------------------------------------------------------------------


def test_deploy_check_passes() -> None:
    """What `make deploy-check` runs: helm lint, helm template | kubeconform, Dockerfile lint, compose."""
    for name in ("helm", "kubeconform", "dockerfile-lint", "compose-validate"):
        tool(name)
    out = run("bash", ROOT / "deploy" / "scripts" / "deploy-check.sh")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Invalid: 0, Errors: 0" in out.stdout
    assert "deploy-check: ok" in out.stderr


def kubeconform(manifest: str) -> subprocess.CompletedProcess[str]:
    location = str(
        SCHEMAS
        / "{{ .NormalizedKubernetesVersion }}-local{{ .StrictSuffix }}/{{ .ResourceKind }}{{ .KindSuffix }}.json"
    )
    return run(
        tool("kubeconform"),
        "-strict",
        "-summary",
        "-kubernetes-version",
        k8s_version(),
        "-schema-location",
        location,
        "-",
        stdin=manifest,
    )


def test_kubeconform_rejects_an_unknown_field_and_a_kind_without_schema() -> None:
    # No ServiceMonitor (a CRD without a schema): every kind here must validate.
    manifest = render(CHART, CI_VALUES, "--set", "metrics.serviceMonitor.enabled=false")
    assert kubeconform(manifest).returncode == 0
    bad = manifest.replace(
        "readOnlyRootFilesystem: true", "readOnlyRootFilesystem: true\n            readOnlyRootFs: true", 1
    )
    out = kubeconform(bad)
    assert out.returncode != 0 and "readOnlyRootFs" in out.stdout, out.stdout
    out = kubeconform(manifest + "\n---\napiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w}\n")
    assert out.returncode != 0 and "could not find schema for Widget" in out.stdout, out.stdout


def test_helm_lint_rejects_a_broken_template(tmp_path: Path) -> None:
    copy = tmp_path / "chart"
    shutil.copytree(CHART, copy)
    (copy / "templates" / "pdb.yaml").write_text("{{- if }}\n")
    out = run(tool("helm"), "lint", "--strict", copy, "-f", copy / "ci" / "test-values.yaml")
    assert out.returncode != 0


def test_dockerfile_lint_rejects_root_unpinned_and_shell_form(tmp_path: Path) -> None:
    assert run(tool("dockerfile-lint"), ROOT / "Dockerfile").returncode == 0
    text = (ROOT / "Dockerfile").read_text()
    for old, new, rule in (
        ("USER 10001:10001", "USER 0", "NonRootUser"),
        ("FROM python:3.11.14-slim-bookworm AS final", "FROM python:latest AS final", "PinnedBaseImage"),
        ('ENTRYPOINT ["gateway", "serve"]', "ENTRYPOINT gateway serve", "JSONArgsRecommended"),
        ("AS final", "as final", "FromAsCasing"),
        ("ENV PATH=", "ENV GATEWAY_ADMIN_TOKEN=x PATH=", "SecretsUsedInArgOrEnv"),
    ):
        assert old in text, old
        bad = tmp_path / "Dockerfile"
        bad.write_text(text.replace(old, new, 1))
        out = run(tool("dockerfile-lint"), "-json", bad)
        assert out.returncode == 1, (rule, out.stdout, out.stderr)
        assert rule in {f["rule"] for f in json.loads(out.stdout)}, (rule, out.stdout)


def test_dockerfile_shape() -> None:
    """Multi-stage, pinned slim base, the wheel installed into a venv, numeric non-root, both ports."""
    text = (ROOT / "Dockerfile").read_text()
    froms = re.findall(r"^FROM (\S+) AS (\S+)$", text, re.M)
    assert [stage for _, stage in froms] == ["opa", "build", "final"]
    assert froms[2][0] == froms[1][0] and re.fullmatch(r"python:3\.11\.\d+-slim-bookworm", froms[2][0])
    assert froms[0][0] == f"openpolicyagent/opa:{OPA_VERSION.lstrip('v')}-static"
    final = text.split("AS final", 1)[1]
    assert "pip wheel" in text.split("AS final", 1)[0] and "venv" in final
    assert re.search(r"^USER [1-9][0-9]*:[1-9][0-9]*$", final, re.M)
    assert re.search(r"^EXPOSE 8080 8081$", final, re.M)
    assert re.search(r'^ENTRYPOINT \["gateway", "serve"\]$', final, re.M)
    for build_tool in ("gcc", "build-essential", "apt-get install"):
        assert build_tool not in final


# ---- compose -------------------------------------------------------------------------------------


def compose_project(path: Path = COMPOSE) -> dict[str, Any]:
    out = run(tool("compose-validate"), "-json", path)
    assert out.returncode == 0, out.stderr
    project: dict[str, Any] = json.loads(out.stdout)
    return project


def check_compose(project: dict[str, Any], nginx_conf: str) -> None:
    """PostgreSQL, a control plane with DATABASE_URL, two data planes each with an OPA sidecar in its
    network namespace, nginx naming both, healthchecks, depends_on conditions, unique host ports."""
    services = project["services"]
    assert "postgres" in services and "healthcheck" in services["postgres"]
    needs_db = [n for n, s in services.items() if "--plane" in (s.get("command") or []) and "control" in s["command"]]
    assert needs_db, "no control plane"
    for name in needs_db:
        url = services[name]["environment"].get("DATABASE_URL") or ""
        assert url.startswith("postgresql://") and "@postgres:5432/" in url, name
        assert services[name]["depends_on"]["postgres"]["condition"] == "service_healthy"
    data_planes = sorted(n for n, s in services.items() if (s.get("command") or [])[-2:] == ["--plane", "data"])
    assert len(data_planes) == 2, data_planes
    for dp in data_planes:
        env = services[dp]["environment"]
        assert env["GATEWAY_OPA_MANAGE"] == "false" and env["GATEWAY_OPA_URL"] == "http://127.0.0.1:8181"
        assert "healthcheck" in services[dp]
        assert services[dp]["depends_on"][needs_db[0]]["condition"] == "service_healthy"
        sidecars = [
            n
            for n, s in services.items()
            if s.get("network_mode") == f"service:{dp}" and s["image"].startswith("openpolicyagent/opa:")
        ]
        assert len(sidecars) == 1, f"{dp}: {len(sidecars)} OPA sidecars"
        sidecar = services[sidecars[0]]
        assert sidecar["image"] == f"openpolicyagent/opa:{OPA_VERSION.lstrip('v')}-static"
        assert "--addr=127.0.0.1:8181" in sidecar["command"]
        assert sidecar["environment"]["DATAPLANE_ID"] == env["GATEWAY_DATAPLANE_ID"]
        # deploy/compose/opa/config.yaml labels OPA gateway_instance "${DATAPLANE_ID}/opa".
        assert env.get("GATEWAY_OPA_INSTANCE_ID") == f"{env['GATEWAY_DATAPLANE_ID']}/opa"
        assert sidecar["environment"]["OPA_TOKEN"] == services[needs_db[0]]["environment"]["GATEWAY_OPA_TOKEN"]
        assert env["GATEWAY_INTERNAL_TOKEN"] == services[needs_db[0]]["environment"]["GATEWAY_INTERNAL_TOKEN"]
    upstream = re.search(r"upstream\s+\w+\s*\{(.*?)\}", nginx_conf, re.S)
    assert upstream, "no nginx upstream block"
    assert sorted(re.findall(r"server\s+([\w-]+):8081", upstream.group(1))) == data_planes
    assert any(s["image"].startswith("nginx:") for s in services.values())
    published = [(p.get("host_ip", ""), p["published"]) for s in services.values() for p in s.get("ports", [])]
    assert len(published) == len(set(published)), f"a host port is published twice: {published}"
    for s in services.values():
        for v in s.get("volumes", []):
            if v["type"] == "bind":
                assert Path(v["source"]).exists(), f"{v['source']} is mounted but missing"


def test_compose_structure() -> None:
    check_compose(compose_project(), (ROOT / "deploy" / "compose" / "nginx" / "nginx.conf").read_text())


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("network_mode: service:data-plane-2", "network_mode: service:data-plane-1"),
        ("DATABASE_URL: postgresql://", "DATABASE_URI: postgresql://"),
        ("    server data-plane-2:8081", "    server data-plane-1:8081"),
        ('"127.0.0.1:8000:8000"', '"127.0.0.1:8080:8000"'),
    ],
)
def test_compose_checks_fail_on_a_broken_file(tmp_path: Path, old: str, new: str) -> None:
    shutil.copytree(ROOT / "deploy" / "compose", tmp_path / "compose")
    compose_text = COMPOSE.read_text()
    conf = (tmp_path / "compose" / "nginx" / "nginx.conf").read_text()
    if old in conf:
        conf = conf.replace(old, new, 1)
    else:
        assert old in compose_text, old
        compose_text = compose_text.replace(old, new, 1)
    (tmp_path / "compose.yaml").write_text(compose_text)
    with pytest.raises(AssertionError):
        check_compose(compose_project(tmp_path / "compose.yaml"), conf)


def test_compose_validate_rejects_a_schema_violation(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "deploy" / "compose", tmp_path / "compose")
    (tmp_path / "compose.yaml").write_text(COMPOSE.read_text().replace("  nginx:\n", "  nginx:\n    bogus_key: 1\n", 1))
    out = run(tool("compose-validate"), tmp_path / "compose.yaml")
    assert out.returncode == 1 and "bogus_key" in out.stderr, out.stderr
