#!/usr/bin/env python3
"""GitOps tag updates: writes image tags into an environment's values file of the umbrella
chart (charts/platform/values-<env>.yaml), which Argo CD deploys. Comments, order and
quoting of the file are kept; the file is written only when something changed, so a
second run with the same arguments changes nothing.

  gitops.py set-tag ENV SERVICE TAG
      <service>.image.tag = TAG. For generic-consumer this is the shared consumer tag:
      every instance that does not pin its own rolls (the consumer's code changed).

  gitops.py set-consumer-tags ENV TAG DOMAIN [DOMAIN...]
      generic-consumer.consumers[domain].imageTag = TAG for the named domains only, so
      only they roll (only the contracts changed). A domain without an entry is added,
      its contract found under proto/contracts/<domain>/ (the one `...Topic` message);
      a domain with neither is an error and the file is left untouched.

  gitops.py unpin-consumers ENV
      Removes every per-consumer imageTag: all instances follow the shared tag again.

Exit codes: 0 done (changed or already so), 1 refused (nothing written), 2 bad usage.
"""

from __future__ import annotations

import argparse
import io
import re
import sys
from pathlib import Path

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq

ROOT = Path(__file__).resolve().parent.parent
SERVICES = ("provisioner-job", "oc-sync-job", "generic-consumer", "devops-api", "gandalf-aggregator", "gandalf-cluster")
CONSUMER = "generic-consumer"
# An image tag (Docker's grammar): a commit SHA, a version.
TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
DOMAIN = re.compile(r"^[A-Z][A-Z0-9_]{0,29}$")
ENV = re.compile(r"^[a-z][a-z0-9-]{0,30}$")


class Refused(Exception):
    """A request that cannot be applied; nothing is written."""


def yaml_rt() -> YAML:
    yaml = YAML(typ="rt")
    yaml.preserve_quotes = True
    yaml.indent(mapping=2, sequence=4, offset=2)
    yaml.width = 4096
    return yaml


class ValuesFile:
    """One environment's values file, loaded round-trip."""

    def __init__(self, root: Path, env: str):
        if not ENV.match(env):
            raise Refused(f"environment {env!r}: lower-case letters, digits and '-' only")
        self.path = root / "charts" / "platform" / f"values-{env}.yaml"
        if not self.path.is_file():
            known = sorted(p.stem.removeprefix("values-") for p in self.path.parent.glob("values-*.yaml"))
            raise Refused(f"no environment {env!r}: {self.path} does not exist (known: {', '.join(known)})")
        self.env = env
        self.root = root
        self.yaml = yaml_rt()
        self.original = self.path.read_text()
        self.data = self.yaml.load(self.original)
        if self.data is None:
            self.data = CommentedMap()
        if not isinstance(self.data, CommentedMap):
            raise Refused(f"{self.path}: not a mapping at the top")
        self.changes: list[str] = []

    def section(self, service: str) -> CommentedMap:
        if service not in self.data or self.data[service] is None:
            self.data[service] = CommentedMap()
        section = self.data[service]
        if not isinstance(section, CommentedMap):
            raise Refused(f"{self.path}: {service} is not a mapping")
        return section

    def set(self, mapping: CommentedMap, key: str, value: str, what: str) -> None:
        before = mapping.get(key)
        if before == value:
            return
        mapping[key] = value
        self.changes.append(f"{what}: {before or '(none)'} -> {value}")

    def consumers(self) -> CommentedSeq:
        section = self.section(CONSUMER)
        if section.get("consumers") is None:
            section["consumers"] = CommentedSeq()
        consumers = section["consumers"]
        if not isinstance(consumers, CommentedSeq):
            raise Refused(f"{self.path}: {CONSUMER}.consumers is not a list")
        return consumers

    def save(self) -> bool:
        """Writes the file when it changed; whether it did."""
        out = io.StringIO()
        self.yaml.dump(self.data, out)
        text = out.getvalue()
        if text == self.original:
            return False
        tmp = self.path.with_suffix(".yaml.tmp")
        tmp.write_text(text)
        tmp.replace(self.path)
        return True


def check_tag(tag: str) -> None:
    if not TAG.match(tag):
        raise Refused(f"image tag {tag!r} is not a valid tag (letters, digits, '_', '.', '-'; at most 128)")


def set_tag(values: ValuesFile, service: str, tag: str) -> None:
    if service not in SERVICES:
        raise Refused(f"unknown service {service!r} (one of: {', '.join(SERVICES)})")
    check_tag(tag)
    section = values.section(service)
    if section.get("image") is None:
        section["image"] = CommentedMap()
    values.set(section["image"], "tag", tag, f"{values.env}: {service} image.tag")


def find_contract(root: Path, domain: str) -> tuple[str, str]:
    """(importPath, importObject) of a domain's contract: the one `...Topic` message in
    proto/contracts/<domain>/."""
    directory = root / "proto" / "contracts" / domain.lower()
    found = []
    for proto in sorted(directory.glob("*.proto")) if directory.is_dir() else []:
        text = proto.read_text()
        package = re.search(r"^package\s+([\w.]+)\s*;", text, re.M)
        for message in re.findall(r"^message\s+(\w+Topic)\s*\{", text, re.M):
            if package:
                found.append((f"{package.group(1)}.{proto.stem}", message))
    if not found:
        raise Refused(f"unknown domain {domain}: no consumer entry in the values file and no contract "
                      f"(a `...Topic` message) under proto/contracts/{domain.lower()}/")
    if len(found) > 1:
        raise Refused(f"domain {domain}: several contracts under proto/contracts/{domain.lower()}/ "
                      f"({', '.join(f'{p}.{m}' for p, m in found)}); add its entry to the values file by hand")
    return found[0]


def set_consumer_tags(values: ValuesFile, tag: str, domains: list[str]) -> None:
    check_tag(tag)
    wanted = []
    for domain in domains:
        if not DOMAIN.match(domain):
            raise Refused(f"domain {domain!r}: upper-case letters, digits and '_' (at most 30)")
        if domain not in wanted:
            wanted.append(domain)
    consumers = values.consumers()
    by_domain = {}
    for entry in consumers:
        if not isinstance(entry, CommentedMap) or "domain" not in entry:
            raise Refused(f"{values.path}: a consumers entry without a domain")
        by_domain[entry["domain"]] = entry
    # Every domain is resolved before anything changes: one unknown refuses them all.
    additions = {d: find_contract(values.root, d) for d in wanted if d not in by_domain}
    if additions:
        envs = [e.get("consumeEnv") for e in consumers if e.get("consumeEnv")]
        if not envs:
            raise Refused(f"cannot add {', '.join(additions)}: no existing consumer to take consumeEnv from; "
                          f"add the first entry to {values.path} by hand")
        consume_env = max(set(envs), key=envs.count)
    for domain in wanted:
        if domain in by_domain:
            values.set(by_domain[domain], "imageTag", tag, f"{values.env}: consumer {domain} imageTag")
            continue
        import_path, import_object = additions[domain]
        entry = CommentedMap()
        entry["domain"] = domain
        entry["replicas"] = 1
        entry["table"] = f"{domain.lower()}_events"
        entry["importPath"] = import_path
        entry["importObject"] = import_object
        entry["consumeEnv"] = consume_env
        entry["groupId"] = f"bq-{domain.lower().replace('_', '-')}"
        entry["imageTag"] = tag
        consumers.append(entry)
        values.changes.append(f"{values.env}: consumer {domain} added ({import_path}.{import_object}, "
                              f"consumeEnv {consume_env}) with imageTag {tag}")


def unpin_consumers(values: ValuesFile) -> None:
    for entry in values.consumers():
        if isinstance(entry, CommentedMap) and "imageTag" in entry:
            before = entry.pop("imageTag")
            values.changes.append(f"{values.env}: consumer {entry.get('domain')} imageTag {before} removed")


def main(argv: list[str] | None = None, root: Path = ROOT) -> int:
    parser = argparse.ArgumentParser(prog="gitops.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("set-tag", help="<service>.image.tag (generic-consumer: the shared tag)")
    p.add_argument("env")
    p.add_argument("service")
    p.add_argument("tag")
    p = commands.add_parser("set-consumer-tags", help="per-consumer imageTag of the named domains (adds missing ones)")
    p.add_argument("env")
    p.add_argument("tag")
    p.add_argument("domains", nargs="+", help="e.g. DELIVERY PAYMENTS (or one comma-separated list)")
    p = commands.add_parser("unpin-consumers", help="remove every per-consumer imageTag")
    p.add_argument("env")
    args = parser.parse_args(argv)
    try:
        values = ValuesFile(root, args.env)
        if args.command == "set-tag":
            set_tag(values, args.service, args.tag)
        elif args.command == "set-consumer-tags":
            domains = [d.strip().upper() for arg in args.domains for d in arg.split(",") if d.strip()]
            set_consumer_tags(values, args.tag, domains)
        else:
            unpin_consumers(values)
        written = values.save()
    except Refused as err:
        print(f"gitops: error: {err}; nothing written", file=sys.stderr)
        return 1
    for change in values.changes:
        print(f"gitops: {change}")
    rel = values.path.relative_to(root) if values.path.is_relative_to(root) else values.path
    print(f"gitops: {rel} {'updated' if written else 'unchanged (already so)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
