#!/usr/bin/env bash
# Offline checks of the production deployment files, run by `make lint` (no Docker engine
# needed): docker-compose.yml is valid (`docker-compose config`, Debian's package), the
# nats-server image is the version the tests run, and every jetwasm service runs a host config
# that applies no stream overlay (an overlay such as `dev` would scale the cluster's streams
# down to one replica); at least two hosts share the consumers; Prometheus scrapes the hosts
# and every exporter service; the Grafana dashboard is valid JSON and every jetwasm metric it
# queries is one the host exports (host/src/metrics.rs).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v docker-compose >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "deploy/check.sh: installing docker-compose (Debian package, validates compose files offline; once, ~30s)"
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker-compose >/dev/null
  else
    echo "deploy/check.sh: docker-compose is missing: apt-get install docker-compose" >&2
    exit 1
  fi
fi

compose=deploy/docker-compose.yml
rendered=$(mktemp)
trap 'rm -f "$rendered"' EXIT
docker-compose -f "$compose" config >"$rendered"
nats_version=$(sed -n 's/^NATS_SERVER_VERSION := //p' Makefile)

# Debian's python3 has PyYAML (a docker-compose dependency) and tomllib.
/usr/bin/python3 - "$compose" "$nats_version" "$rendered" <<'PY'
import os, sys, tomllib, yaml

compose_file, nats_version, rendered = sys.argv[1:4]
with open(rendered) as f:
    services = yaml.safe_load(f)["services"]
problems = []

images = {s.get("image") for s in services.values() if str(s.get("image", "")).startswith("nats:")}
for image in images:
    if image.split(":")[1].split("-")[0] != nats_version:
        problems.append(f"image {image}: the tests run nats-server {nats_version}")

hosts = 0
for name, service in services.items():
    command = list(service.get("entrypoint") or []) + list(service.get("command") or [])
    if "jetwasm" not in command[:1] or "run" not in command and "up" not in command:
        continue
    hosts += 1
    if "--config" not in command:
        problems.append(f"service {name}: no --config")
        continue
    inside = command[command.index("--config") + 1]
    local = None
    for volume in service.get("volumes", []):
        source, target = (volume.split(":")[:2] if isinstance(volume, str)
                          else (volume["source"], volume["target"]))
        if inside.startswith(target.rstrip("/") + "/"):
            local = os.path.join(source, inside[len(target.rstrip("/")) + 1:])
    if local is None or not os.path.isfile(local):
        problems.append(f"service {name}: {inside} is not mounted from a file in the repository")
        continue
    with open(local, "rb") as f:
        config = tomllib.load(f)
    if "env" in config:
        problems.append(f"service {name}: {local} applies the stream overlay env = {config['env']!r}; "
                        "a production host must apply none (use deploy/jetwasm.toml)")
    else:
        print(f"deploy/check.sh: service {name} runs {os.path.relpath(local)} (no stream overlay)")

if hosts == 0:
    problems.append("no service runs `jetwasm run`")
for name, service in services.items():
    if name == "jetwasm" and int(service.get("scale", 1)) < 2:
        problems.append("service jetwasm: scale it to at least 2 hosts (the fleet reference)")

import json, re
deploy = os.path.dirname(compose_file)
with open(os.path.join(deploy, "prometheus.yml")) as f:
    prometheus = yaml.safe_load(f)
jobs = {job["job_name"]: job for job in prometheus["scrape_configs"]}
if "jetwasm" not in jobs:
    problems.append("prometheus.yml: no job scrapes jetwasm")
targets = {t for c in jobs.get("nats", {}).get("static_configs", []) for t in c["targets"]}
for name in services:
    if name.startswith("nats-exporter") and f"{name}:7777" not in targets:
        problems.append(f"prometheus.yml: the nats job does not scrape {name}:7777")
with open("host/src/metrics.rs") as f:
    exported = set(re.findall(r'"(jetwasm_[a-z_]+)"', f.read()))
dashboard_file = os.path.join(deploy, "grafana/dashboards/jetwasm.json")
with open(dashboard_file) as f:
    dashboard = json.load(f)
queried = set()
for panel in dashboard["panels"]:
    for target in panel.get("targets", []):
        queried |= set(re.findall(r"\b(jetwasm_[a-z_]+?)(?:_bucket|_count|_sum)?\b", target["expr"]))
for variable in dashboard["templating"]["list"]:
    queried |= set(re.findall(r"\b(jetwasm_[a-z_]+)\b", variable["query"]))
for metric in sorted(queried - exported):
    problems.append(f"{dashboard_file}: queries {metric}, which the host does not export")
print(f"deploy/check.sh: the dashboard queries {len(queried)} jetwasm metrics, all exported")

# Kubernetes: the ConfigMap carries deploy/jetwasm.toml and streams.toml as shipped, and the
# KEDA ScaledObject (a CRD, which the schema validator below does not know) scales the
# Deployment on the consumer the config binds.
kube = os.path.join(deploy, "kubernetes")
def load(name):
    with open(os.path.join(kube, name)) as f:
        return yaml.safe_load(f)
configmap = load("configmap.yaml")
for key in ("jetwasm.toml", "streams.toml"):
    with open(os.path.join(deploy, key)) as f:
        if configmap["data"][key] != f.read():
            problems.append(f"kubernetes/configmap.yaml: {key} differs from deploy/{key}")
deployment = load("deployment.yaml")
scaled = load("scaledobject.yaml")
if (scaled.get("apiVersion"), scaled.get("kind")) != ("keda.sh/v1alpha1", "ScaledObject"):
    problems.append("kubernetes/scaledobject.yaml: not a keda.sh/v1alpha1 ScaledObject")
if scaled["spec"]["scaleTargetRef"]["name"] != deployment["metadata"]["name"]:
    problems.append("kubernetes/scaledobject.yaml: scaleTargetRef is not the jetwasm Deployment")
host = tomllib.loads(configmap["data"]["jetwasm.toml"])
bound = {(h["stream"], h["consumer"]) for h in host.get("handler", [])}
for trigger in scaled["spec"]["triggers"]:
    meta = trigger["metadata"]
    missing = {"natsServerMonitoringEndpoint", "account", "stream", "consumer", "lagThreshold"} - set(meta)
    if trigger["type"] != "nats-jetstream" or missing:
        problems.append(f"kubernetes/scaledobject.yaml: a nats-jetstream trigger needs {sorted(missing)}")
    elif (meta["stream"], meta["consumer"]) not in bound:
        problems.append(f"kubernetes/scaledobject.yaml: {meta['stream']}/{meta['consumer']} is no handler's consumer")
probes = deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["path"]
if probes != "/readyz":
    problems.append("kubernetes/deployment.yaml: readiness must be /readyz")
print("deploy/check.sh: kubernetes/ ConfigMap matches deploy/, the ScaledObject scales the host on its consumer")
if problems:
    print(f"{compose_file}:", *problems, sep="\n  - ", file=sys.stderr)
    sys.exit(1)
print(f"deploy/check.sh: {compose_file} is valid; nats-server {nats_version}")
PY

# The core resources against Kubernetes' own schemas (kubernetes-validate, from PyPI, into
# the tools venv once), strictly: unknown fields are errors.
venv="${TOOLS:-${JETWASM_TOOLS:-$HOME/.cache/jetwasm/tools}}/venv"
if [ ! -x "$venv/bin/kubernetes-validate" ]; then
  echo "deploy/check.sh: installing kubernetes-validate into $venv (once)"
  [ -x "$venv/bin/pip" ] || python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check kubernetes-validate==1.37.0
fi
"$venv/bin/kubernetes-validate" --strict --quiet -k 1.31.0 \
  deploy/kubernetes/{namespace,configmap,secret,deployment,service}.yaml
echo "deploy/check.sh: kubernetes/ core resources valid against Kubernetes 1.31's schemas (strict)"
