"""Structural checks of deploy/ that need no container engine or cluster.

Parses every YAML file, checks the Kubernetes manifests and the compose file for what the
gateway relies on (probes on /healthz and /readyz, every env:VAR of the configuration
provided, Secret references that exist, selectors that match), and writes the TOML
configurations they carry to the directory given as the first argument, so the caller can
run `sessiongate check-config` on them.
"""
import pathlib
import re
import sys

import yaml

HERE = pathlib.Path(__file__).parent
OUT = pathlib.Path(sys.argv[1])
problems = []


def check(condition, message):
    if not condition:
        problems.append(message)


def env_vars(toml_text):
    return set(re.findall(r'"env:([A-Z0-9_]+)"', toml_text))


docs = {}
for path in sorted(HERE.glob("k8s/*.yaml")):
    for doc in yaml.safe_load_all(path.read_text()):
        check(doc.get("apiVersion") and doc.get("kind"), f"{path.name}: apiVersion and kind")
        if doc.get("kind") != "Kustomization":
            check(doc.get("metadata", {}).get("name"), f"{path.name}: metadata.name")
        docs[doc["kind"]] = doc

deployment = docs["Deployment"]
pod = deployment["spec"]["template"]
labels = pod["metadata"]["labels"]
check(deployment["spec"]["selector"]["matchLabels"].items() <= labels.items(), "Deployment selector matches its pods")
check(docs["Service"]["spec"]["selector"].items() <= labels.items(), "Service selects the pods")
check(docs["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= labels.items(), "PDB selects the pods")
check(deployment["spec"]["replicas"] >= 2, "at least two replicas")
container = pod["spec"]["containers"][0]
check(container["livenessProbe"]["httpGet"]["path"] == "/healthz", "liveness probe on /healthz")
check(container["readinessProbe"]["httpGet"]["path"] == "/readyz", "readiness probe on /readyz")
check(pod["spec"]["securityContext"]["runAsNonRoot"] is True, "pods run as non-root")
secret_keys = set(docs["Secret"]["stringData"])
provided = set()
for env in container["env"]:
    provided.add(env["name"])
    ref = env.get("valueFrom", {}).get("secretKeyRef")
    if ref:
        check(ref["name"] == docs["Secret"]["metadata"]["name"], f"{env['name']}: refers to the Secret")
        check(ref["key"] in secret_keys, f"{env['name']}: key {ref['key']} exists in the Secret")
config_toml = docs["ConfigMap"]["data"]["sessiongate.toml"]
missing = env_vars(config_toml) - provided
check(not missing, f"ConfigMap config needs env vars the Deployment does not set: {missing}")
kustomized = set(docs["Kustomization"]["resources"])
check({"configmap.yaml", "deployment.yaml", "service.yaml", "pdb.yaml"} <= kustomized, "kustomization lists the manifests")
(OUT / "k8s.toml").write_text(config_toml)

compose = yaml.safe_load((HERE / "docker-compose.yml").read_text())
services = compose["services"]
check({"postgres", "gateway-1", "gateway-2", "lb", "receiver"} <= services.keys(), "compose services")
compose_toml = (HERE / "compose/sessiongate.toml").read_text()
for name in ("gateway-1", "gateway-2"):
    environment = services[name]["environment"]
    missing = env_vars(compose_toml) - environment.keys()
    check(not missing, f"{name}: env vars missing for the config: {missing}")
    for volume in services[name]["volumes"]:
        check((HERE / volume.split(":")[0]).exists(), f"{name}: mounted file {volume} exists")
for volume in services["lb"]["volumes"] + services["receiver"]["volumes"]:
    check((HERE / volume.split(":")[0]).exists(), f"mounted file {volume} exists")
(OUT / "compose.toml").write_text(compose_toml)

for line in (HERE / "Dockerfile").read_text().splitlines():
    if line.startswith("COPY") and "--from" not in line:
        for source in line.split()[1:-1]:
            check((HERE.parent / source).exists(), f"Dockerfile: COPY source {source} exists")

if problems:
    print("deploy/ problems:\n  " + "\n  ".join(problems))
    sys.exit(1)
print(f"deploy/: {len(docs)} Kubernetes objects, {len(services)} compose services: structure OK")
