"""Prints, as JSON, what tests/deploy.rs checks in one deploy/kubernetes
variant: the files kustomize lists, the manifest in the ConfigMap, the
ports (container, Service, NetworkPolicy ingress), the probes' port, the
stop's timings, and the number of egress rules."""
import json
import pathlib
import sys

import yaml

folder = pathlib.Path(sys.argv[1])
docs = {}
for path in folder.glob("*.yaml"):
    for doc in yaml.safe_load_all(path.read_text()):
        docs.setdefault(doc["kind"], []).append(doc)

workload = (docs.get("Deployment") or docs.get("StatefulSet"))[0]
pod = workload["spec"]["template"]["spec"]
container = pod["containers"][0]
named = {p["name"]: p["containerPort"] for p in container["ports"]}
probe = container["readinessProbe"]["httpGet"]["port"]
policy = docs["NetworkPolicy"][0]["spec"]
print(json.dumps({
    "kustomization": docs["Kustomization"][0]["resources"],
    "manifest": docs["ConfigMap"][0]["data"]["portcullis.toml"],
    "container_ports": sorted(named.values()),
    "service_ports": sorted(p["port"] for p in docs["Service"][0]["spec"]["ports"]),
    "ingress_ports": sorted(p["port"] for rule in policy.get("ingress", []) for p in rule.get("ports", [])),
    "probe_port": named.get(probe, probe),
    "termination_grace": pod["terminationGracePeriodSeconds"],
    "pre_stop_sleep": container.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds"),
    "egress_rules": len(policy.get("egress", [])),
}))
