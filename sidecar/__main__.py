"""`python -m sidecar [serve]`: the sidecar alone (Orthanc runs elsewhere, as in docker-compose).
`python -m sidecar backup DIR | restore PATH [--force] | verify-backup PATH`: see
sidecar.operations.commands."""

from __future__ import annotations

import argparse
import contextlib
import os
from pathlib import Path

from sidecar.core.logs import configure_logging
from sidecar.core.settings import SecretFileError, Settings


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m sidecar", description="The radiology sidecar; without a command: serve."
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.add_parser("serve", help="serve the API (the default)")
    backup = commands.add_parser(
        "backup", help="write a new backup folder in DIR (its path is the last line printed)"
    )
    backup.add_argument("directory", type=Path, metavar="DIR")
    backup.add_argument(
        "--index-timeout",
        type=float,
        default=300.0,
        help="seconds to wait for a moment Orthanc's SQLite index is not being written",
    )
    restore = commands.add_parser("restore", help="restore a backup (the service stopped)")
    restore.add_argument("backup", type=Path, metavar="PATH")
    restore.add_argument("--force", action="store_true", help="overwrite existing data")
    verify = commands.add_parser("verify-backup", help="check a backup against its manifest")
    verify.add_argument("backup", type=Path, metavar="PATH")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    arguments = _arguments(argv)
    # First: the database, the worklist files and backups are this user's only.
    os.umask(0o077)
    if arguments.command == "verify-backup":  # needs no environment
        from sidecar.operations import commands

        raise SystemExit(commands.verify_backup(arguments.backup))
    try:
        settings = Settings()
    except SecretFileError as exc:
        raise SystemExit(f"sidecar: {exc}") from None
    configure_logging(settings.log_level, settings.log_format, settings.node_name)
    if arguments.command in ("backup", "restore"):
        from sidecar.operations import commands

        if arguments.command == "backup":
            code = commands.backup(
                settings, arguments.directory, index_timeout=arguments.index_timeout
            )
        else:
            code = commands.restore(settings, arguments.backup, force=arguments.force)
        raise SystemExit(code)
    _serve(settings)


def _serve(settings: Settings) -> None:
    import uvicorn

    from sidecar.events.serving import Server
    from sidecar.main import create_app

    server = Server(
        uvicorn.Config(
            create_app(settings),
            host=settings.sidecar_host,
            port=settings.sidecar_port,
            access_log=False,
            log_config=None,
        )
    )
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C: shut down cleanly, as uvicorn.run
        server.run()


if __name__ == "__main__":
    main()
