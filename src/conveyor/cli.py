"""The ``conveyor`` command line.

Exit codes: 0 success (``run``: a clean drain after SIGTERM/SIGINT), 1 a fatal error,
2 an invalid config (or, for ``check --connect``, an instance or flow that will fail).
"""

from __future__ import annotations

import argparse
import gc
import sys
from pathlib import Path
from typing import Any

from conveyor import __version__
from conveyor.config_path import default_config


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="conveyor",
        description="Move files and messages from SFTP, FTP(S), RabbitMQ, Pub/Sub and local folders into flows, "
        "losing nothing.",
        epilog="Without -c, ./conveyor.yaml is used, else the example in config/. "
        "Exit codes: 0 ok, 1 fatal error, 2 invalid config or unreachable instance.",
    )
    p.add_argument("--version", action="version", version=f"conveyor {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def cfg(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("-c", "--config", type=Path, help="config file (.yaml, .yml or .toml)")

    def api_url(sp: argparse.ArgumentParser) -> None:
        sp.add_argument(
            "--url",
            default=None,
            help="health endpoint (default: from the config, else 127.0.0.1:8470); "
            "the API token is read through -c, or from $CONVEYOR_TOKEN",
        )

    r = sub.add_parser("run", help="run the daemon (stops cleanly on SIGTERM/SIGINT, reloads on SIGHUP)")
    cfg(r)
    r.add_argument(
        "--once",
        action="store_true",
        help="poll every file flow once and drain every queue or subscription, deliver everything, then exit: "
        "0 all delivered, 1 an item failed, 2 invalid config",
    )
    r.add_argument(
        "--idle",
        default=None,
        metavar="DURATION",
        help="with --once: a queue or subscription is done once nothing came for this long (default 5s)",
    )
    c = sub.add_parser("check", help="validate a config; with --connect also log in and check every flow")
    cfg(c)
    c.add_argument(
        "--connect",
        action="store_true",
        help="log in to every instance and check each flow's source and target, changing nothing",
    )
    c.add_argument(
        "--skip-files",
        action="store_true",
        help="do not read the certificate and key files instances name (a config checked away from its machine)",
    )
    f = sub.add_parser("fingerprint", help="print every host key an SSH server offers, in every accepted form")
    f.add_argument("target", metavar="HOST[:PORT]")
    ls = sub.add_parser("ls", help="list a folder of a file instance as the daemon sees it")
    cfg(ls)
    ls.add_argument("instance")
    ls.add_argument("path", nargs="?", default="")
    ls.add_argument("-r", "--recursive", action="store_true")
    st = sub.add_parser("status", help="show a running daemon's instances and flows")
    st.add_argument("--url", default=None, help="health endpoint (default: from the config, else 127.0.0.1:8470)")
    cfg(st)
    lg = sub.add_parser("ledger", help="list or act on a flow's items in a running daemon")
    lg.add_argument("flow")
    api_url(lg)
    lg.add_argument("--state", choices=["pending", "in_flight", "delivered", "failed"])
    lg.add_argument("--retry", metavar="ID", help="deliver a failed item again")
    lg.add_argument("--forget", metavar="ID", help="forget a delivered item so its file is taken again")
    lg.add_argument("--limit", type=int, default=100)
    cfg(lg)
    pl = sub.add_parser("poll", help="have a running daemon's file flow list its folder now")
    pl.add_argument("flow")
    api_url(pl)
    cfg(pl)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    # Loading a config imports the libraries and builds its models: many long-lived objects and
    # next to no cycles, so the cyclic collector's passes over them (a tenth of the start-up)
    # find nothing. Off until loaded; ``run`` turns it back on before the daemon starts.
    collecting = gc.isenabled()
    gc.disable()
    try:
        args = _parser().parse_args(argv)
        handler = _COMMANDS[args.command]
        return int(handler(args))
    except KeyboardInterrupt:
        return 130
    finally:
        if collecting:
            gc.enable()


def _load(args: argparse.Namespace, *, libraries: bool = False, files: bool = False) -> Any:
    """The config, or None after printing every problem; with ``libraries``, also the client
    libraries its instances and state store need must import (``run`` and ``check`` fail on a
    missing one at once, not at a flow's first start); with ``files``, the local files its
    instances read (certificates) must be usable (for ``check``: at run time a bad one fails
    only its instance, when it connects)."""
    from conveyor.config import load_config
    from conveyor.errors import ConfigError

    path = args.config or default_config()
    try:
        config = load_config(path)
        if libraries or files:
            from conveyor.libraries import missing_libraries, unusable_files

            problems = (missing_libraries(config) if libraries else []) + (unusable_files(config) if files else [])
            if problems:
                raise ConfigError(problems, str(path))
        return config
    except ConfigError as e:
        print(str(e), file=sys.stderr)
        return None


def cmd_run(args: argparse.Namespace) -> int:
    """``conveyor run``."""
    once = _once(args)
    if once is False:
        return 2
    config = _load(args, libraries=True)
    if config is None:
        return 2
    gc.enable()  # the daemon allocates as it runs: collected, with thresholds it sets itself
    from conveyor.daemon import run_daemon
    from conveyor.logs import setup_logging

    setup_logging(config.log.level, config.log.format)
    import faulthandler

    faulthandler.enable(all_threads=True)  # a crash writes every thread's stack to stderr (the journal)
    try:
        return run_daemon(config, once=once)
    except Exception as e:
        import logging

        from conveyor.errors import ConveyorError, describe
        from conveyor.redact import redact

        leaves = list(_leaves(e))
        # conveyor's own errors already say what is wrong; a traceback is for the unexpected.
        expected = all(isinstance(x, ConveyorError) for x in leaves)
        text = "; ".join(describe(x) for x in leaves)
        logging.getLogger("conveyor").critical("fatal: %s", redact(text), exc_info=not expected)
        return 1


def _once(args: argparse.Namespace) -> float | bool | None:
    """``--once``'s idle seconds, None without it, False (after saying why) for a bad ``--idle``."""
    if args.idle is not None and not args.once:
        print("--idle is for --once", file=sys.stderr)
        return False
    if not args.once:
        return None
    from conveyor.config.types import parse_duration

    try:
        return parse_duration(args.idle if args.idle is not None else "5s")
    except ValueError as e:
        print(f"--idle: {e}", file=sys.stderr)
        return False


def _leaves(e: BaseException) -> list[BaseException]:
    """The errors inside (nested) exception groups, or ``e`` itself."""
    if isinstance(e, BaseExceptionGroup):
        return [leaf for sub in e.exceptions for leaf in _leaves(sub)]
    return [e]


def cmd_check(args: argparse.Namespace) -> int:
    """``conveyor check``."""
    config = _load(args, libraries=True, files=not args.skip_files)
    if config is None:
        return 2
    print(f"{config.path}: OK ({len(config.instances)} instances, {len(config.flows)} flows)")
    from conveyor.transport_warnings import transport_warnings

    for w in transport_warnings(config):
        print(f"warning: weak transport: {w}")
    if not args.connect:
        return 0
    import asyncio  # here, not at the top: --version and a plain check start faster without it

    return asyncio.run(_connect_all(config))


async def _connect_all(config: Any) -> int:
    from conveyor.preflight import preflight

    return await preflight(config)


def cmd_ls(args: argparse.Namespace) -> int:
    """``conveyor ls``."""
    config = _load(args)
    if config is None:
        return 2
    if args.instance not in config.instances:
        print(f"no instance named '{args.instance}'", file=sys.stderr)
        return 2
    import asyncio

    return asyncio.run(_ls(config, args.instance, args.path, args.recursive))


async def _ls(config: Any, name: str, path: str, recursive: bool) -> int:
    import time

    from conveyor.interfaces import Context, FileSystem, Resolves
    from conveyor.names import normal_path
    from conveyor.payload.spool import Spool
    from conveyor.redact import redact, register_secrets
    from conveyor.registry import get as spec_of
    from conveyor.status import StatusBoard

    try:
        path = normal_path(path)  # '.', './' and '/' list the root, as in a flow source
    except ValueError as e:
        print(f"{name}: path {e}", file=sys.stderr)
        return 2
    register_secrets(config.secrets())
    icfg = config.instances[name]
    spec = spec_of(icfg.type)
    if spec.kind != "file":
        print(f"'{name}' is a {icfg.type} instance; ls lists file instances", file=sys.stderr)
        return 2
    rt = spec.load_factory()(name, icfg, Context(spool=Spool(Path(config.spool_dir)), status=StatusBoard()))
    try:
        assert isinstance(rt, FileSystem)  # a file instance
        if isinstance(rt, Resolves):  # the server folder the path stands for, e.g. below the login folder
            print(f"{name}: {await rt.resolve(path)}", file=sys.stderr)
        single = await rt.stat(path) if path else None
        listed = [single] if single else [f async for f in rt.list(path, recursive)]
        files = [f for f in listed if not f.refused]
        for f in files:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(f.mtime))
            # repr() for names with control characters, so a hostile name cannot rewrite the terminal
            shown = f.path if f.path.isprintable() else repr(f.path)
            print(f"{f.size:>14,}  {stamp}Z  {shown}")
        skipped = len(listed) - len(files)
        more = f", {skipped} skipped (symlinks or special files, never read)" if skipped else ""
        print(f"{len(files)} files{more}", file=sys.stderr)
        return 0
    except Exception as e:
        print(f"{name}: {redact(str(e))}", file=sys.stderr)
        return 1
    finally:
        await rt.close()


def cmd_fingerprint(args: argparse.Namespace) -> int:
    """``conveyor fingerprint HOST[:PORT]``."""
    from conveyor.transfer.sftp.hostkeys import fingerprint_main

    return int(fingerprint_main(args.target))


def cmd_status(args: argparse.Namespace) -> int:
    """``conveyor status``."""
    from conveyor.remote import status_main

    return status_main(args)


def cmd_ledger(args: argparse.Namespace) -> int:
    """``conveyor ledger``."""
    from conveyor.remote import ledger_main

    return ledger_main(args)


def cmd_poll(args: argparse.Namespace) -> int:
    """``conveyor poll``."""
    from conveyor.remote import poll_main

    return poll_main(args)


_COMMANDS = {
    "run": cmd_run,
    "check": cmd_check,
    "ls": cmd_ls,
    "fingerprint": cmd_fingerprint,
    "status": cmd_status,
    "ledger": cmd_ledger,
    "poll": cmd_poll,
}

if __name__ == "__main__":
    sys.exit(main())
