"""Tests of the Weft Helm chart, with real tools only.

- Helm's own lint: Helm 4.3 through helm-sdkpy (the chart's default values),
  and Helm 4.2 through helm-python-sdk with every values file (strict, for
  Kubernetes 1.33), which also checks values.schema.json.
- Rendering: `helm install --dry-run=client` (what `helm template` runs)
  through helm-python-sdk, with the default values and with each file in
  values/ (together they change every value of values.yaml: a test checks).
- Every rendered object validated against the Kubernetes 1.33 JSON schemas
  (kubernetes-validate, strict: unknown fields are errors), parsed with a
  YAML loader that refuses duplicate keys.
- The properties that matter asserted one by one: replicas, PDB,
  anti-affinity, probes, security contexts, webhook fields, RBAC rules
  exactly, the CRD identical to crds/, the flags the operator knows.

Run: `make chart-test` (installs the tools into .venv/ first).
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
import shutil
import subprocess
import warnings
from pathlib import Path

import helm_python
import helm_sdkpy
import kubernetes_validate
import pytest
import yaml

TESTS = Path(__file__).resolve().parent
CHART = TESTS.parent
REPO = CHART.parent.parent
VALUES_DIR = TESTS / "values"
KUBE_VERSION = "1.33.0"
RELEASE = "weft"

# Flags the chart passes that the operator binary may not have yet (a flag
# being added in the same change as its chart value). Such a flag only
# warns; every other unknown flag fails.
PENDING_FLAGS: set[str] = set()

helm_python.disable_logging()


# --------------------------------------------------------------------------
# YAML that refuses duplicate keys (PyYAML silently keeps the last one; the
# API server and kubectl refuse them).


class UniqueKeyLoader(yaml.SafeLoader):
    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep)


def load_all(text: str) -> list[dict]:
    return [d for d in yaml.load_all(text, Loader=UniqueKeyLoader) if d]


def load_values(name: str) -> dict:
    return yaml.load((VALUES_DIR / name).read_text(), Loader=UniqueKeyLoader) or {}


# --------------------------------------------------------------------------
# The cases: values and the namespace they are installed into.


@pytest.fixture(scope="session")
def trust_anchor(tmp_path_factory) -> dict:
    """A real ECDSA P-256 CA made with openssl, as a user would supply it."""
    if shutil.which("openssl") is None:
        pytest.fail("openssl is needed to make a test trust anchor (apt-get install openssl)")
    d = tmp_path_factory.mktemp("anchor")

    def ca(name: str) -> tuple[str, str]:
        key, crt = d / f"{name}.key", d / f"{name}.crt"
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-nodes", "-days", "30", "-subj", f"/CN={name}", "-keyout", str(key),
             "-out", str(crt), "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign"],
            check=True, capture_output=True,
        )
        return crt.read_text(), key.read_text()

    crt, key = ca("weft-test-anchor")
    old, _ = ca("weft-previous-anchor")
    return {"certificate": crt, "key": key, "extraRoots": old}


CASE_FILES = sorted(p.name for p in VALUES_DIR.glob("*.yaml"))
NAMESPACES = {"defaults": "weft-system", "all-options.yaml": "mesh-control"}


@pytest.fixture(scope="session")
def cases(trust_anchor) -> dict[str, tuple[dict, str]]:
    out = {"defaults": ({}, NAMESPACES["defaults"])}
    for name in CASE_FILES:
        values = load_values(name)
        if name == "all-options.yaml":
            values["trustAnchor"] = trust_anchor
        out[name] = (values, NAMESPACES.get(name, "weft-system"))
    return out


def helm_template(values: dict, namespace: str) -> list[dict]:
    """`helm install --dry-run=client`: the real Helm engine, no cluster."""
    with helm_python.Config() as cfg:
        release = cfg.install(
            str(CHART), RELEASE, values or None, namespace=namespace, dry_run="client"
        )
    return load_all(release["manifest"])


@pytest.fixture(scope="session")
def rendered(cases) -> dict[str, list[dict]]:
    return {name: helm_template(values, ns) for name, (values, ns) in cases.items()}


def objects(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict], kind: str) -> dict:
    found = objects(docs, kind)
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def operator_container(docs: list[dict]) -> dict:
    (container,) = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    return container


def args_of(docs: list[dict]) -> dict[str, str]:
    args = operator_container(docs)["args"]
    assert args[0] == "run"
    out = {}
    for a in args[1:]:
        flag, _, value = a.partition("=")
        assert flag not in out, f"{flag} given twice"
        out[flag] = value
    return out


# --------------------------------------------------------------------------
# Helm lint


def test_helm_lint_helm_sdkpy():
    """Helm 4.3's lint (helm-sdkpy) on the chart with its default values.

    helm-sdkpy returns each message's severity and file but not its text (Go
    errors serialise as {}); the text comes from the lint test below."""
    with helm_sdkpy.Configuration(namespace="weft-system") as cfg:
        report = asyncio.run(helm_sdkpy.Lint(cfg).run(str(CHART)))
    assert report["TotalChartsLinted"] == 1
    problems = [m for m in report["Messages"] if m["Severity"] >= 2]  # 2 warning, 3 error
    assert not problems and not report["Errors"], report
    # Only the "icon is recommended" notice (severity 1, Chart.yaml) is expected.
    assert all(m["Path"] == "Chart.yaml" for m in report["Messages"]), report


@pytest.mark.parametrize("case", ["defaults", *CASE_FILES])
def test_helm_lint_strict_with_values(case, cases):
    """`helm lint --strict --kube-version 1.33.0 -f <values>` (Helm 4.2)."""
    values, ns = cases[case]
    report = helm_python.lint(
        str(CHART), values or None, strict=True, namespace=ns, kube_version=f"v{KUBE_VERSION}"
    )
    assert report["total_charts_linted"] == 1
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert not problems and not report["errors"], problems or report["errors"]
    assert [m["error"] for m in report["messages"]] == ["icon is recommended"]


# --------------------------------------------------------------------------
# Every rendered object against the Kubernetes schemas


EXPECTED_KINDS = {
    "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding",
    "Deployment", "PodDisruptionBudget", "Service", "MutatingWebhookConfiguration",
}
CLUSTER_SCOPED = {"ClusterRole", "ClusterRoleBinding", "MutatingWebhookConfiguration",
                  "CustomResourceDefinition"}


@pytest.mark.parametrize("case", ["defaults", *CASE_FILES])
def test_objects_validate_against_kubernetes_schemas(case, rendered, cases):
    docs = rendered[case]
    for doc in docs:
        what = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        try:
            version = kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            path = ".".join(str(p) for p in e.path)
            pytest.fail(f"{case}: {what} is invalid at {path}: {e.message}")
        assert version == "1.33", f"{what} validated against {version}"


def test_crd_validates_against_kubernetes_schemas():
    for doc in load_all((CHART / "crds" / "meshpolicy.yaml").read_text()):
        assert kubernetes_validate.validate(doc, KUBE_VERSION, strict=True) == "1.33"


@pytest.mark.parametrize("case", ["defaults", *CASE_FILES])
def test_object_set_names_and_labels(case, rendered, cases):
    docs = rendered[case]
    _, ns = cases[case]
    kinds = {d["kind"] for d in docs}
    replicas = one(docs, "Deployment")["spec"]["replicas"]
    pdb_expected = replicas > 1 and case != "custom-affinity.yaml"
    expected = EXPECTED_KINDS - (set() if pdb_expected else {"PodDisruptionBudget"})
    if case == "all-options.yaml":
        expected = expected | {"Secret"}
    assert kinds == expected
    for d in docs:
        meta = d["metadata"]
        if d["kind"] in CLUSTER_SCOPED:
            assert "namespace" not in meta, f"{d['kind']} is cluster-scoped"
        else:
            assert meta["namespace"] == ns, f"{d['kind']}/{meta['name']}"
        labels = meta["labels"]
        # The operator prunes objects labelled managed-by=weft: never ours.
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["app.kubernetes.io/part-of"] == "weft"
        assert labels["app.kubernetes.io/instance"] == RELEASE


# --------------------------------------------------------------------------
# The operator Deployment


def resolve_port(container: dict, port) -> int:
    if isinstance(port, int):
        return port
    (match,) = [p["containerPort"] for p in container["ports"] if p["name"] == port]
    return match


def test_deployment_defaults(rendered):
    docs = rendered["defaults"]
    dep = one(docs, "Deployment")
    spec = dep["spec"]
    pod = spec["template"]["spec"]
    c = operator_container(docs)

    assert spec["replicas"] == 2
    assert spec["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    selector = spec["selector"]["matchLabels"]
    assert selector.items() <= spec["template"]["metadata"]["labels"].items()

    # Soft anti-affinity on the node, selecting exactly the operator pods.
    (term,) = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert term["podAffinityTerm"]["labelSelector"]["matchLabels"] == selector

    # Probes on the admin port 9990.
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["startupProbe"]["httpGet"]["path"] == "/healthz"
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert resolve_port(c, c[probe]["httpGet"]["port"]) == 9990
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"admin": 9990, "webhook": 9443}

    # Non-root, read-only, no capabilities, RuntimeDefault seccomp.
    assert pod["securityContext"] == {
        "runAsNonRoot": True, "runAsUser": 65532, "runAsGroup": 65532,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert c["securityContext"] == {
        "allowPrivilegeEscalation": False, "privileged": False,
        "readOnlyRootFilesystem": True, "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert pod["automountServiceAccountToken"] is True
    assert pod["serviceAccountName"] == "weft-operator"
    assert one(docs, "ServiceAccount")["automountServiceAccountToken"] is True
    assert c["resources"]["requests"] == {"cpu": "50m", "memory": "128Mi"}
    assert c["resources"]["limits"] == {"memory": "512Mi"}

    assert c["image"] == "weft-operator:0.1.0"
    assert c["imagePullPolicy"] == "IfNotPresent"
    env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in c["env"]}
    assert env == {"WEFT_NAMESPACE": "metadata.namespace", "WEFT_POD_NAME": "metadata.name"}
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"}
    annotations = spec["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == "9990"


def test_operator_flags_defaults(rendered):
    assert args_of(rendered["defaults"]) == {
        "--trust-domain": "cluster.local",
        "--default-mtls": "permissive",
        "--cert-lifetime": "24h",
        "--renew-at": "0.5",
        "--admin-addr": "0.0.0.0:9990",
        "--leader-election-id": "weft-operator",
        "--lease-duration": "15s",
        "--lease-renew": "5s",
        "--log": "info",
        "--log-format": "json",
        "--webhook-addr": "0.0.0.0:9443",
        "--webhook-service": "weft-webhook",
        "--webhook-config": "weft-injector",
        "--native-sidecar": "auto",
        "--proxy-image": "weft-proxy:0.1.0",
        "--init-image": "weft-init:0.1.0",
        "--proxy-log-level": "info",
        "--proxy-cpu-request": "10m",
        "--proxy-cpu-limit": "",
        "--proxy-memory-request": "20Mi",
        "--proxy-memory-limit": "128Mi",
    }


def test_pdb_defaults(rendered):
    docs = rendered["defaults"]
    pdb = one(docs, "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    assert pdb["spec"]["selector"]["matchLabels"] == one(docs, "Deployment")["spec"]["selector"]["matchLabels"]


# --------------------------------------------------------------------------
# The webhook


def test_webhook_defaults(rendered):
    docs = rendered["defaults"]
    mwc = one(docs, "MutatingWebhookConfiguration")
    assert mwc["metadata"]["name"] == "weft-injector"
    (hook,) = mwc["webhooks"]
    assert hook["name"] == "inject.weft.dev"
    assert hook["admissionReviewVersions"] == ["v1"]
    assert hook["failurePolicy"] == "Ignore"
    assert hook["sideEffects"] == "NoneOnDryRun"
    assert hook["timeoutSeconds"] == 5
    assert hook["reinvocationPolicy"] == "Never"
    assert hook["matchPolicy"] == "Equivalent"
    assert hook["rules"] == [{
        "apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"],
        "resources": ["pods"], "scope": "Namespaced",
    }]
    # No caBundle: the operator patches it, Helm must never reset it.
    assert hook["clientConfig"] == {"service": {
        "name": "weft-webhook", "namespace": "weft-system", "path": "/inject", "port": 443}}
    assert hook["namespaceSelector"] == {"matchExpressions": [{
        "key": "kubernetes.io/metadata.name", "operator": "NotIn",
        "values": ["weft-system", "kube-system"]}]}
    assert "objectSelector" not in hook

    svc = one(docs, "Service")
    assert svc["metadata"]["name"] == "weft-webhook"
    (port,) = svc["spec"]["ports"]
    assert port["port"] == 443
    c = operator_container(docs)
    assert resolve_port(c, port["targetPort"]) == 9443
    assert svc["spec"]["selector"] == one(docs, "Deployment")["spec"]["selector"]["matchLabels"]


@pytest.mark.parametrize("case", ["defaults", *CASE_FILES])
def test_webhook_never_templates_ca_bundle(case, rendered):
    for hook in one(rendered[case], "MutatingWebhookConfiguration")["webhooks"]:
        assert "caBundle" not in hook["clientConfig"]


@pytest.mark.parametrize("case", ["defaults", *CASE_FILES])
def test_webhook_points_at_the_operator(case, rendered, cases):
    """Service name, namespace and port agree between the webhook config,
    the Service, the container port and the operator's flags."""
    docs = rendered[case]
    _, ns = cases[case]
    args = args_of(docs)
    (hook,) = one(docs, "MutatingWebhookConfiguration")["webhooks"]
    svc = one(docs, "Service")
    service = hook["clientConfig"]["service"]
    assert service["name"] == svc["metadata"]["name"] == args["--webhook-service"]
    assert service["namespace"] == ns
    assert service["port"] == svc["spec"]["ports"][0]["port"]
    c = operator_container(docs)
    assert args["--webhook-addr"] == f"0.0.0.0:{resolve_port(c, svc['spec']['ports'][0]['targetPort'])}"
    assert one(docs, "MutatingWebhookConfiguration")["metadata"]["name"] == args["--webhook-config"]
    excluded = hook["namespaceSelector"]["matchExpressions"][0]
    assert excluded["key"] == "kubernetes.io/metadata.name" and excluded["operator"] == "NotIn"
    assert ns in excluded["values"]


# --------------------------------------------------------------------------
# RBAC, exactly as the operator needs it


EXPECTED_CLUSTER_RULES = [
    {"apiGroups": [""], "resources": ["namespaces", "serviceaccounts", "services", "pods"],
     "verbs": ["get", "list", "watch"]},
    {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"],
     "verbs": ["get", "list", "watch"]},
    {"apiGroups": ["weft.dev"], "resources": ["meshpolicies"], "verbs": ["get", "list", "watch"]},
    {"apiGroups": ["weft.dev"], "resources": ["meshpolicies/status"], "verbs": ["patch"]},
    {"apiGroups": [""], "resources": ["configmaps"],
     "verbs": ["get", "list", "watch", "create", "patch", "delete"]},
    {"apiGroups": [""], "resources": ["secrets"],
     "verbs": ["get", "list", "watch", "create", "patch", "delete"]},
    {"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["roles", "rolebindings"],
     "verbs": ["get", "list", "watch", "create", "patch", "delete"]},
    {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]},
    {"apiGroups": ["admissionregistration.k8s.io"], "resources": ["mutatingwebhookconfigurations"],
     "resourceNames": ["weft-injector"], "verbs": ["get", "list", "watch", "patch"]},
]
EXPECTED_LEASE_RULES = [
    {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
     "resourceNames": ["weft-operator"], "verbs": ["get", "update"]},
    {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
]


def test_rbac_exact(rendered):
    docs = rendered["defaults"]
    assert one(docs, "ClusterRole")["rules"] == EXPECTED_CLUSTER_RULES
    assert one(docs, "Role")["rules"] == EXPECTED_LEASE_RULES
    sa = {"kind": "ServiceAccount", "name": "weft-operator", "namespace": "weft-system"}
    crb, rb = one(docs, "ClusterRoleBinding"), one(docs, "RoleBinding")
    assert crb["subjects"] == [sa] and rb["subjects"] == [sa]
    assert crb["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                              "name": one(docs, "ClusterRole")["metadata"]["name"]}
    assert rb["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                             "name": one(docs, "Role")["metadata"]["name"]}


@pytest.mark.parametrize("case", ["defaults", *CASE_FILES])
def test_rbac_never_broader(case, rendered):
    """No wildcard, no escalate/bind/impersonate, nothing on workloads; the
    names in resourceNames follow the values."""
    docs = rendered[case]
    args = args_of(docs)
    for kind in ("ClusterRole", "Role"):
        for rule in one(docs, kind)["rules"]:
            for field in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule[field], f"{kind}: wildcard in {field}"
            assert not {"escalate", "bind", "impersonate", "deletecollection"} & set(rule["verbs"])
    (mwc_rule,) = [r for r in one(docs, "ClusterRole")["rules"]
                   if r["resources"] == ["mutatingwebhookconfigurations"]]
    assert mwc_rule["resourceNames"] == [args["--webhook-config"]]
    named = [r for r in one(docs, "Role")["rules"] if "resourceNames" in r]
    assert named[0]["resourceNames"] == [args["--leader-election-id"]]


def test_readme_documents_every_rule(rendered):
    """The RBAC table of the chart README names every resource granted."""
    readme = (CHART / "README.md").read_text()
    for kind in ("ClusterRole", "Role"):
        for rule in one(rendered["defaults"], kind)["rules"]:
            for resource in rule["resources"]:
                assert f"`{resource}`" in readme, f"README.md: no row for {resource}"


# --------------------------------------------------------------------------
# The CRD


def test_chart_crd_identical_to_generated():
    """charts/weft/crds/ is a copy of crds/ (made by `weft-operator crdgen`).
    Fix a failure with `make chart-crds`."""
    generated = sorted(p.name for p in (REPO / "crds").glob("*.yaml"))
    in_chart = sorted(p.name for p in (CHART / "crds").glob("*.yaml"))
    assert in_chart == generated, "run `make chart-crds`"
    for name in generated:
        assert (CHART / "crds" / name).read_bytes() == (REPO / "crds" / name).read_bytes(), (
            f"charts/weft/crds/{name} differs from crds/{name}: run `make chart-crds`")


def test_helm_loads_the_crd():
    chart = helm_python.Chart.load(str(CHART))
    names = [c["name"] for c in chart.crds]
    assert names == ["crds/meshpolicy.yaml"], names
    (crd,) = load_all((CHART / "crds" / "meshpolicy.yaml").read_text())
    assert crd["kind"] == "CustomResourceDefinition"
    assert crd["metadata"]["name"] == "meshpolicies.weft.dev"


# --------------------------------------------------------------------------
# Every option toggled


def test_all_options(rendered, cases, trust_anchor):
    docs = rendered["all-options.yaml"]
    dep = one(docs, "Deployment")
    spec = dep["spec"]
    pod = spec["template"]["spec"]
    c = operator_container(docs)
    reg = "registry.example.com/mesh"

    assert spec["replicas"] == 3
    assert c["image"] == f"{reg}/custom-operator:9.9.9-op"
    assert c["imagePullPolicy"] == "Always"
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert c["resources"] == {"requests": {"cpu": "100m", "memory": "256Mi"},
                              "limits": {"cpu": "1", "memory": "1Gi"}}
    # Hard anti-affinity, and rolling updates that need no spare node.
    (term,) = pod["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert term["labelSelector"]["matchLabels"] == spec["selector"]["matchLabels"]
    assert spec["strategy"]["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}
    assert one(docs, "PodDisruptionBudget")["spec"]["minAvailable"] == 2
    assert pod["nodeSelector"]["node-role.example.com/infra"] == "true"
    assert pod["tolerations"][0]["key"] == "node-role.example.com/infra"
    assert pod["topologySpreadConstraints"][0]["topologyKey"] == "topology.kubernetes.io/zone"
    assert pod["priorityClassName"] == "system-cluster-critical"
    meta = spec["template"]["metadata"]
    assert meta["annotations"] == {"example.com/team": "mesh"}  # no prometheus.io/*
    assert meta["labels"]["example.com/tier"] == "control-plane"
    assert {"name": "RUST_BACKTRACE", "value": "1"} in c["env"]
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"admin": 9991, "webhook": 8443}
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert resolve_port(c, c[probe]["httpGet"]["port"]) == 9991
    assert one(docs, "ServiceAccount")["metadata"]["annotations"] == {"example.com/role": "weft"}
    for d in docs:
        assert d["metadata"]["labels"]["example.com/owner"] == "platform"

    assert args_of(docs) == {
        "--trust-domain": "mesh.example.org",
        "--default-mtls": "strict",
        "--cert-lifetime": "12h30m",
        "--renew-at": "0.75",
        "--admin-addr": "0.0.0.0:9991",
        "--leader-election-id": "weft-leader",
        "--lease-duration": "30s",
        "--lease-renew": "10s",
        "--log": "info,weft_operator=debug",
        "--log-format": "plain",
        "--webhook-addr": "0.0.0.0:8443",
        "--webhook-service": "weft-injector-svc",
        "--webhook-config": "weft-injector-custom",
        "--native-sidecar": "false",
        "--proxy-image": f"{reg}/custom-proxy@sha256:{'1' * 64}",
        "--init-image": f"{reg}/custom-init:1.2.3",
        "--proxy-log-level": "debug",
        "--proxy-cpu-request": "20m",
        "--proxy-cpu-limit": "500m",
        "--proxy-memory-request": "32Mi",
        "--proxy-memory-limit": "256Mi",
        "--resync": "30s",
        "--debounce": "100ms",
    }

    (hook,) = one(docs, "MutatingWebhookConfiguration")["webhooks"]
    assert one(docs, "MutatingWebhookConfiguration")["metadata"]["name"] == "weft-injector-custom"
    assert hook["failurePolicy"] == "Fail"
    assert hook["timeoutSeconds"] == 10
    assert hook["reinvocationPolicy"] == "IfNeeded"
    assert hook["namespaceSelector"] == {
        "matchLabels": {"weft.dev/mesh": "true"},
        "matchExpressions": [
            {"key": "kubernetes.io/metadata.name", "operator": "NotIn",
             "values": ["mesh-control", "kube-system", "kube-public", "monitoring"]},
            {"key": "example.com/skip-mesh", "operator": "DoesNotExist"},
        ],
    }
    assert hook["objectSelector"] == {
        "matchExpressions": [{"key": "example.com/no-mesh", "operator": "DoesNotExist"}]}
    assert one(docs, "ClusterRole")["rules"][-1]["resourceNames"] == ["weft-injector-custom"]
    assert one(docs, "Role")["rules"][0]["resourceNames"] == ["weft-leader"]

    # The user-supplied trust anchor.
    secret = one(docs, "Secret")
    assert secret["metadata"]["name"] == "weft-trust-anchor"
    assert secret["metadata"]["namespace"] == "mesh-control"
    assert secret["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    assert secret["type"] == "kubernetes.io/tls"
    data = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert data == {"tls.crt": trust_anchor["certificate"], "tls.key": trust_anchor["key"],
                    "ca-bundle.crt": trust_anchor["extraRoots"]}


def test_minimal(rendered):
    docs = rendered["minimal.yaml"]
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert one(docs, "Deployment")["spec"]["replicas"] == 1
    assert not objects(docs, "PodDisruptionBudget")
    assert "affinity" not in pod and "nodeSelector" not in pod
    assert operator_container(docs)["image"] == f"weft-operator@sha256:{'2' * 64}"
    args = args_of(docs)
    assert args["--init-image"] == f"weft-init@sha256:{'3' * 64}"
    assert args["--proxy-image"] == "weft-proxy:0.1.0"
    assert args["--native-sidecar"] == "true"
    # Empty: the operator leaves that request or limit unset.
    assert {a: v for a, v in args.items() if a.startswith(("--proxy-cpu", "--proxy-memory"))} == {
        "--proxy-cpu-request": "", "--proxy-cpu-limit": "", "--proxy-memory-request": "",
        "--proxy-memory-limit": ""}
    (hook,) = one(docs, "MutatingWebhookConfiguration")["webhooks"]
    assert hook["namespaceSelector"]["matchExpressions"][0]["values"] == ["weft-system"]


def test_custom_affinity(rendered):
    docs = rendered["custom-affinity.yaml"]
    spec = one(docs, "Deployment")["spec"]
    affinity = spec["template"]["spec"]["affinity"]
    assert list(affinity) == ["nodeAffinity"]
    assert spec["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    assert not objects(docs, "PodDisruptionBudget")
    (hook,) = one(docs, "MutatingWebhookConfiguration")["webhooks"]
    assert "matchLabels" not in hook["namespaceSelector"]
    assert hook["namespaceSelector"]["matchExpressions"][1] == {
        "key": "example.com/skip-mesh", "operator": "DoesNotExist"}


def leaves(tree, prefix=()):
    """Paths of values.yaml's settings; an empty map or any list is one."""
    if isinstance(tree, dict) and tree:
        for k, v in tree.items():
            yield from leaves(v, (*prefix, k))
    else:
        yield prefix


MISSING = object()


def lookup(tree, path):
    for k in path:
        if not isinstance(tree, dict) or k not in tree:
            return MISSING
        tree = tree[k]
    return tree


def test_every_value_is_toggled_by_some_case(cases):
    """Each setting of values.yaml differs from its default in the values
    Helm computes (defaults merged with the file) for at least one case."""
    chart = helm_python.Chart.load(str(CHART))
    defaults = chart.merge_values({})
    merged = [chart.merge_values(values) for values, _ in cases.values()]
    untouched = [".".join(path) for path in leaves(defaults)
                 if all(lookup(m, path) == lookup(defaults, path) for m in merged)]
    assert not untouched, f"no values file in tests/values changes: {untouched}"


def test_readme_documents_every_value():
    """Every setting (or the map holding it) has a row in the README."""
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    readme = (CHART / "README.md").read_text()

    def documented(path):
        shortest = min(2, len(path))  # a map's row covers its keys, not a whole section
        return any(f"`{'.'.join(path[:n])}`" in readme for n in range(shortest, len(path) + 1))

    missing = [".".join(p) for p in leaves(defaults) if not documented(p)]
    assert not missing, f"charts/weft/README.md does not document {missing}"


# --------------------------------------------------------------------------
# Bad values are refused before anything reaches a cluster


@pytest.mark.parametrize("values, message", [
    ({"webhook": {"failurePolicy": "Sometimes"}}, "/webhook/failurePolicy"),
    ({"proxy": {"nativeSidecar": "maybe"}}, "/proxy/nativeSidecar"),
    ({"mesh": {"certLifetime": "1d"}}, "/mesh/certLifetime"),
    ({"mesh": {"defaultMtls": "off"}}, "/mesh/defaultMtls"),
    ({"operator": {"replicas": 0}}, "/operator/replicas"),
    ({"operator": {"podAntiAffinity": "maybe"}}, "/operator/podAntiAffinity"),
    ({"proxy": {"resources": {"memoryLimit": "128MB"}}}, "/proxy/resources/memoryLimit"),
    ({"webhook": {"failurePolcy": "Fail"}}, "failurePolcy"),
    ({"trustAnchor": {"certificate": 7}}, "/trustAnchor/certificate"),
])
def test_schema_refuses(values, message):
    with pytest.raises(helm_python.HelmError) as e:
        helm_template(values, "weft-system")
    assert message in str(e.value)


def ec_key_to_sec1(pkcs8: str, tmp_path) -> str:
    src = tmp_path / "k.pem"
    src.write_text(pkcs8)
    return subprocess.run(["openssl", "ec", "-in", str(src)], check=True,
                          capture_output=True, text=True).stdout


@pytest.mark.parametrize("change, message", [
    (lambda a, _: {"certificate": a["certificate"]}, "set both certificate and key"),
    (lambda a, _: {"key": a["key"]}, "set both certificate and key"),
    (lambda a, _: {**a, "certificate": "not a PEM"}, "trustAnchor.certificate: must be exactly one"),
    (lambda a, _: {**a, "certificate": a["certificate"] + a["extraRoots"]},
     "trustAnchor.certificate: must be exactly one"),
    (lambda a, tmp: {**a, "key": ec_key_to_sec1(a["key"], tmp)}, "PKCS#8"),
    (lambda a, _: {**a, "extraRoots": a["key"]}, "trustAnchor.extraRoots"),
])
def test_trust_anchor_refused_as_the_operator_would(change, message, trust_anchor, tmp_path):
    with pytest.raises(helm_python.HelmError) as e:
        helm_template({"trustAnchor": change(trust_anchor, tmp_path)}, "weft-system")
    assert message in str(e.value)


def test_trust_anchor_extra_roots_may_hold_several(trust_anchor):
    anchor = {**trust_anchor, "extraRoots": trust_anchor["extraRoots"] * 2}
    secret = one(helm_template({"trustAnchor": anchor}, "weft-system"), "Secret")
    assert base64.b64decode(secret["data"]["ca-bundle.crt"]).decode() == anchor["extraRoots"]


# --------------------------------------------------------------------------
# NOTES.txt


def test_notes_say_how_to_mesh_a_namespace():
    chart = helm_python.Chart.load(str(CHART))
    notes = chart.render(name=RELEASE, namespace="weft-system")["weft/templates/NOTES.txt"]
    assert "kubectl annotate namespace <NAMESPACE> weft.dev/inject=enabled" in notes
    assert "rollout status deployment/weft-operator" in notes
    assert r"weft\.dev/injected" in notes
    assert "failurePolicy is Ignore" in notes


# --------------------------------------------------------------------------
# The operator binary knows the flags and variables the chart passes


def operator_binary() -> Path | None:
    candidates = [os.environ.get("WEFT_OPERATOR_BIN"),
                  REPO / "target" / "debug" / "weft-operator",
                  REPO / "target" / "release" / "weft-operator"]
    found = [Path(p) for p in candidates if p and Path(p).is_file()]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def operator_help(binary: Path) -> str:
    return subprocess.run([str(binary), "run", "--help"], check=True,
                          capture_output=True, text=True).stdout


def flags_used(rendered) -> set[str]:
    return set().union(*(args_of(docs) for docs in rendered.values()))


def test_operator_knows_the_flags(rendered):
    binary = operator_binary()
    if binary is None:
        pytest.skip("no weft-operator binary (cargo build -p weft-operator) to ask for its flags")
    help_text = operator_help(binary)
    known = set(re.findall(r"--[a-z][a-z0-9-]*", help_text))
    used = flags_used(rendered)
    unknown = used - known - PENDING_FLAGS
    assert not unknown, f"{binary} run does not know {sorted(unknown)}"
    missing = sorted((used & PENDING_FLAGS) - known)
    if missing:
        warnings.warn(f"flags the chart passes that {binary.name} does not have yet: {missing}")
    for env in ("WEFT_NAMESPACE", "WEFT_POD_NAME"):
        assert f"env: {env}=" in help_text, f"{binary} run reads no {env}"


@pytest.mark.parametrize("case", ["defaults", *CASE_FILES])
def test_operator_accepts_the_rendered_command(case, rendered):
    """Runs the built operator with the Deployment's exact arguments and
    environment, and no cluster: it must get past parsing and checking every
    flag and fail only when connecting to the API server."""
    binary = operator_binary()
    if binary is None:
        pytest.skip("no weft-operator binary (cargo build -p weft-operator)")
    known = set(re.findall(r"--[a-z][a-z0-9-]*", operator_help(binary)))
    if flags_used(rendered) - known:
        pytest.skip(f"{binary} lacks flags the chart passes (see test_operator_knows_the_flags)")
    c = operator_container(rendered[case])
    env = {"PATH": "/usr/bin:/bin", "HOME": "/nonexistent",
           "KUBECONFIG": "/nonexistent/kubeconfig"}
    downward = {"metadata.namespace": "weft-system", "metadata.name": "weft-operator-0"}
    for e in c["env"]:
        env[e["name"]] = e["value"] if "value" in e else downward[e["valueFrom"]["fieldRef"]["fieldPath"]]
    result = subprocess.run([str(binary), *c["args"]], env=env, capture_output=True,
                            text=True, timeout=30)
    assert result.returncode != 0
    assert "connecting to the Kubernetes API" in result.stderr, result.stderr


def test_chart_version_is_the_workspace_version():
    """The default image tag (appVersion) is what `make images` tags."""
    cargo = (REPO / "Cargo.toml").read_text()
    (version,) = re.findall(r'(?m)^\[workspace\.package\]\n(?:.*\n)*?version = "([^"]+)"', cargo)
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["appVersion"] == version
