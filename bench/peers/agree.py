#!/usr/bin/env python3
"""Agreement of `agentid check --output json` and `conftest test -o json` (bench/peers/rego) on the
manifests of bench/peers/gen.py, per workload manifest, over the rules both implement; also against what
the generator says each manifest holds (expected.tsv).

    python3 bench/peers/agree.py agentid.json conftest.json expected.tsv

Exit 1 on any disagreement (the first ones are listed).
"""
import json
import re
import sys

COMMON = {"static-secret-env", "static-secret-envfrom", "static-secret-volume", "default-service-account",
          "hardcoded-credential"}
agentid_path, conftest_path, expected_path = sys.argv[1:4]

expected = {}
for line in open(expected_path):
    kind, name, rules = line.rstrip("\n").split("\t")
    expected[(kind, name)] = set() if rules == "-" else set(rules.split(","))

agentid = {k: set() for k in expected}
only_agentid = {}
for r in json.load(open(agentid_path))["results"]:
    key = (r["kind"], f"{r['namespace']}/{r['name']}")
    if key not in agentid:
        continue  # AgentIdentities and ToolGrants: not workloads
    for v in r["violations"]:
        (agentid[key] if v["rule"] in COMMON else only_agentid.setdefault(v["rule"], set())).add(v["rule"])

conftest = {k: set() for k in expected}
msg = re.compile(r"^\[([a-z-]+)\] (\S+) (\S+):")
for f in json.load(open(conftest_path)):
    for failure in f.get("failures") or []:
        m = msg.match(failure["msg"])
        if not m or (m.group(2), m.group(3)) not in conftest:
            print(f"unparsed conftest message: {failure['msg']}")
            sys.exit(1)
        conftest[(m.group(2), m.group(3))].add(m.group(1))

bad = [(k, sorted(expected[k]), sorted(agentid[k]), sorted(conftest[k]))
       for k in expected if not (expected[k] == agentid[k] == conftest[k])]
denied = sum(1 for k in expected if expected[k])
print(f"agreement: {len(expected) - len(bad)} of {len(expected)} workload manifests judged alike by agentid, "
      f"conftest and the generator ({denied} with a violation, {len(expected) - denied} clean; rules compared: "
      f"{', '.join(sorted(COMMON))})")
if only_agentid:
    print(f"rules only agentid judged on this input (not compared): {', '.join(sorted(only_agentid))}")
for k, e, a, c in bad[:10]:
    print(f"  DISAGREE {k[0]} {k[1]}: expected {e}, agentid {a}, conftest {c}")
sys.exit(1 if bad else 0)
