#!/usr/bin/env python3
"""Which images a change needs rebuilt, and how the consumer's instances should roll.

A service's inputs are its own directory, every workspace library it depends on (read
from the Cargo manifests: [dependencies] and [build-dependencies], transitively; test-only
dependencies do not go into the image), what a library's build script reads (libs/contracts
compiles proto/), and what every image shares: Cargo.toml, Cargo.lock,
rust-toolchain.toml, the Dockerfile and .dockerignore.

For generic-consumer it also says which of the seed's two cases the change is:
  consumer_domains=""            its code (or anything but the contracts) changed: bump the
                                 shared tag, every instance rolls;
  consumer_domains="DELIVERY,…"  only proto/contracts/<domain>/ changed: pin the new image
                                 on those domains only.

  changed_services.py --before SHA --after SHA     (git diff between them)
  changed_services.py --files a b c                 (paths given)
  changed_services.py --requested devops-api,...    (by name, validated)
Prints GitHub output lines: services=<JSON list>, consumer_domains=<list>.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = ("Cargo.toml", "Cargo.lock", "rust-toolchain.toml", "Dockerfile", ".dockerignore")
# What a library's build script reads beside its own directory.
BUILD_INPUTS = {"libs/contracts": ("proto/",)}
CONSUMER = "generic-consumer"
CONTRACTS = "proto/contracts/"
# A zero SHA (a new branch) or an empty one: nothing to diff against, build everything.
NO_BASE = {"", "0" * 40}


def workspace_paths(root: Path) -> dict[str, str]:
    """Workspace dependency name -> its path, from the root manifest."""
    manifest = tomllib.loads((root / "Cargo.toml").read_text())
    deps = manifest.get("workspace", {}).get("dependencies", {})
    return {name: spec["path"] for name, spec in deps.items() if isinstance(spec, dict) and "path" in spec}


def local_deps(root: Path, crate_dir: str, paths: dict[str, str]) -> set[str]:
    manifest = tomllib.loads((root / crate_dir / "Cargo.toml").read_text())
    found = set()
    for section in ("dependencies", "build-dependencies"):
        for name, spec in manifest.get(section, {}).items():
            if isinstance(spec, dict) and spec.get("workspace") and name in paths:
                found.add(paths[name])
            elif isinstance(spec, dict) and "path" in spec:
                found.add(str((Path(crate_dir) / spec["path"]).resolve().relative_to(root.resolve())))
    return found


def inputs_of(root: Path, service: str) -> list[str]:
    """Path prefixes whose change rebuilds `service`'s image."""
    paths = workspace_paths(root)
    start = f"services/{service}"
    seen, todo = {start}, [start]
    while todo:
        for dep in local_deps(root, todo.pop(), paths):
            if dep not in seen:
                seen.add(dep)
                todo.append(dep)
    prefixes = [f"{d}/" for d in sorted(seen)]
    for crate in sorted(seen):
        prefixes.extend(BUILD_INPUTS.get(crate, ()))
    return [*SHARED, *prefixes]


def services(root: Path) -> list[str]:
    return sorted(p.parent.name for p in (root / "services").glob("*/Cargo.toml"))


def touches(path: str, prefix: str) -> bool:
    return path == prefix or (prefix.endswith("/") and path.startswith(prefix))


def affected(root: Path, files: list[str] | None) -> tuple[list[str], list[str]]:
    """(services to rebuild, consumer domains to pin: empty = the shared tag)."""
    all_services = services(root)
    if files is None:
        return all_services, []
    rebuilt = [s for s in all_services if any(touches(f, p) for f in files for p in inputs_of(root, s))]
    domains: list[str] = []
    if CONSUMER in rebuilt:
        consumer_files = [f for f in files if any(touches(f, p) for p in inputs_of(root, CONSUMER))]
        if all(f.startswith(CONTRACTS) and f.count("/") >= 3 for f in consumer_files):
            domains = sorted({f.split("/")[2].upper() for f in consumer_files})
    return rebuilt, domains


def changed_files(before: str, after: str) -> list[str] | None:
    if before in NO_BASE:
        return None
    out = subprocess.run(["git", "diff", "--name-only", before, after], capture_output=True, text=True, cwd=ROOT)
    if out.returncode != 0:
        # The base is not in this clone (a force push): rebuild everything, loudly.
        print(f"changed_services: cannot diff {before}..{after}: {out.stderr.strip()}; all services", file=sys.stderr)
        return None
    return [line for line in out.stdout.splitlines() if line]


def main(argv: list[str] | None = None, root: Path = ROOT) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--before", help="the commit before the push")
    group.add_argument("--files", nargs="*", help="changed paths, relative to the repository")
    group.add_argument("--requested", help="services asked for by name, comma-separated (validated)")
    parser.add_argument("--after", default="HEAD")
    args = parser.parse_args(argv)
    if args.requested is not None:
        known = services(root)
        rebuilt = sorted({s.strip() for s in args.requested.split(",") if s.strip()})
        unknown = [s for s in rebuilt if s not in known]
        if unknown or not rebuilt:
            print(f"changed_services: error: unknown services {unknown or args.requested!r} (known: {', '.join(known)})",
                  file=sys.stderr)
            return 1
        domains: list[str] = []
    else:
        files = args.files if args.files is not None else changed_files(args.before, args.after)
        rebuilt, domains = affected(root, files)
    print(f"services={json.dumps(rebuilt)}")
    print(f"consumer_domains={','.join(domains)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
