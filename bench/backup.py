"""Backup and restore benchmark: how long `python -m sidecar backup`, `verify-backup` and
`restore` take for a node holding K studies, and how long the restored node takes to start and
list them all.

A node (Orthanc with the plugin, the sidecar; tests/support/stack.py, laid out as `make run`
lays one out) receives K studies of N instances (bench/ingest.py's load: 128x128 CT, one dcmtk
association per study), then, with the node still running and idle:
- backup: the command's wall time (a process of its own, as an operator runs it), with the
  manifest's split: sidecar database, Orthanc's index, storage files;
- verify-backup: every checksum read again;
- restore: into a fresh DATA_DIR (and fresh PostgreSQL databases with --postgres-url), then the
  restored node started until GET /api/studies lists every study ("restore to service").
SQLite by default (sidecar database and Orthanc index); --postgres-url puts both on PostgreSQL.

    make bench    # or: .venv/bin/python bench/backup.py --studies 1000 [--postgres-url URL]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "support"))

from ingest import make_load, send  # noqa: E402  (bench/, beside this script)

from backup_traffic import node_environment, node_shaped, sidecar_command  # noqa: E402
from stack import Stack, wait_for  # noqa: E402
from testapp import admin_execute, with_database  # noqa: E402


@contextlib.contextmanager
def databases(server: str, label: str) -> Iterator[tuple[str, str]]:
    """A sidecar database URL and an Orthanc index URL: fresh PostgreSQL databases dropped
    afterwards, or ("", "") for SQLite."""
    if not server:
        yield "", ""
        return
    names = [f"bench_{label}_{kind}_{uuid.uuid4().hex[:8]}" for kind in ("sidecar", "index")]
    for name in names:
        admin_execute(server, f'CREATE DATABASE "{name}"')
    try:
        sidecar, index = (with_database(server, name) for name in names)
        yield sidecar, index.replace("postgresql+psycopg://", "postgresql://", 1)
    finally:
        for name in names:
            admin_execute(server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def node(work: Path, database_url: str, index_url: str) -> Stack:
    return node_shaped(Stack(work, database_url or f"sqlite:///{work / 'sidecar.db'}"), index_url)


def run(command: list[str], env: dict[str, str]) -> tuple[float, str]:
    started = time.perf_counter()
    result = sidecar_command(env, *command)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{command[0]} failed: {result.stderr.strip()}")
    return seconds, result.stdout


def listed_all(stack: Stack, studies: int) -> bool:
    answer = stack.api("GET", "/api/studies", params={"limit": 1})
    return answer.status_code == 200 and answer.json()["total"] >= studies


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--studies", type=int, default=1000)
    parser.add_argument("--instances-per-study", type=int, default=2)
    parser.add_argument("--postgres-url", default="", help="server URL; default: SQLite")
    args = parser.parse_args()
    kind = "PostgreSQL" if args.postgres_url else "SQLite"

    with tempfile.TemporaryDirectory(prefix="bench-backup-") as tmp:
        root = Path(tmp)
        load = make_load(root / "load", args.studies, args.instances_per_study)
        instances = sum(s.instance_count for s in load)
        print(f"load: {args.studies} studies, {instances} instances of 128x128 CT; {kind}")
        with (
            databases(args.postgres_url, "source") as (database_url, index_url),
            databases(args.postgres_url, "target") as (target_url, target_index),
        ):
            source = node(root / "source", database_url, index_url)
            source.start_orthanc(index_database_url=index_url)
            try:
                source.start_sidecar()
                sent, _ = send(load, source.layout.dicom_port)
                wait_for(lambda: listed_all(source, args.studies), timeout=900, what="ingest")
                source.wait_until_synced(timeout=300)
                print(f"ingest (not the figure): {sent:.1f} s of C-STORE")
                env = node_environment(source)
                backup_s, out = run(["backup", str(root / "backups")], env)
                backup = Path(out.strip().splitlines()[-1])
            finally:
                source.close()
            manifest = json.loads((backup / "manifest.json").read_text())
            timings = manifest["timings"]
            split = ", ".join(
                f"{k.removesuffix('Seconds')} {v:.2f} s" for k, v in timings.items() if "Sec" in k
            )
            if "orthancIndexCopies" in timings:
                split += f"; index copied {timings['orthancIndexCopies']} time(s)"
            if timings.get("orthancIndexPasses", 1) > 1:  # files deleted during the backup
                split += f", taken {timings['orthancIndexPasses']} times"
            size = folder_bytes(backup) / 1e6
            files = len(manifest["files"])
            print(f"backup       : {backup_s:6.1f} s wall ({split}); {size:.0f} MB, {files} files")
            verify_s, _ = run(["verify-backup", str(backup)], env)
            print(f"verify-backup: {verify_s:6.1f} s")

            target = node(root / "target", target_url, target_index)
            restore_s, _ = run(["restore", str(backup)], node_environment(target))
            started = time.perf_counter()
            target.start_orthanc(index_database_url=target_index)
            try:
                target.start_sidecar()
                wait_for(
                    lambda: listed_all(target, args.studies), timeout=900, what="restored list"
                )
                up_s = time.perf_counter() - started
            finally:
                target.close()
            print(f"restore      : {restore_s:6.1f} s wall (command)")
            print(f"restored node: {up_s:6.1f} s from start to all {args.studies} studies listed")
            total = restore_s + up_s
            print(
                f"restore to service: {total:.1f} s, {args.studies} studies, {instances} instances"
            )


if __name__ == "__main__":
    main()
