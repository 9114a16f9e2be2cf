"""Command line: ``python -m gxsubmit COMMAND`` (also the ``gxsubmit`` console script).

Only the chosen command's module is imported, so ``worker`` and ``supervise`` start fast
and ``--help`` works for every command. Errors a user can fix are printed as one line on
stderr, never as a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from gxsubmit import __version__
from gxsubmit.config import ConfigError, add_config_arguments, load_config
from gxsubmit.exitcodes import RET_CONFIG, RET_USAGE
from gxsubmit.secrets import no_core_dumps

__all__ = ["main"]

#: Settings that only matter to commands talking to the database.
_DB_SETTINGS = ("database_url", "database_ca", "schema", "connect_timeout", "log_level", "catalog")


@dataclass(frozen=True)
class Command:
    """A subcommand: where its code lives and which settings it accepts."""

    help: str
    module: str
    #: function adding command-specific arguments, or "" for none
    add_args: str
    #: function run(cfg, args) or run(args); see ``wants_config``
    run: str
    #: None: no config flags; () : all settings; else: the subset
    settings: tuple[str, ...] | None
    wants_config: bool = True


COMMANDS: dict[str, Command] = {
    "supervise": Command("run the service: one worker process per identity, metrics and health on one port",
                         "gxsubmit.supervisor", "", "run", ()),
    "worker": Command("run one identity's worker in the foreground (started by supervise)",
                      "gxsubmit.worker", "", "run", ()),
    "migrate": Command("create or upgrade the outbox schema (safe to run from several replicas)",
                       "gxsubmit.admin", "add_migrate_arguments", "run_migrate", _DB_SETTINGS),
    "enqueue": Command("add one command to the outbox", "gxsubmit.admin", "add_enqueue_arguments",
                       "run_enqueue", _DB_SETTINGS),
    "status": Command("rows per status and type, oldest pending age, failures by error code",
                      "gxsubmit.admin", "add_status_arguments", "run_status", _DB_SETTINGS),
    "requeue": Command("send FAILED rows back to PENDING", "gxsubmit.admin", "add_requeue_arguments",
                       "run_requeue", _DB_SETTINGS),
    "cancel": Command("end unfinished rows as FAILED (CANCELLED); a row that may be on the ledger is "
                      "resolved through the gateway first, or left with a reason", "gxsubmit.cancel",
                      "add_arguments", "run", ()),
    "record-expiry": Command("record a rotated-out certificate's expiry on unfinished rows it signed",
                             "gxsubmit.admin", "add_record_expiry_arguments", "run_record_expiry",
                             _DB_SETTINGS),
    "prune": Command("delete COMMITTED rows older than a retention (FAILED and unfinished rows stay)",
                     "gxsubmit.admin", "add_prune_arguments", "run_prune", _DB_SETTINGS),
    "fleet": Command("the replicas registered in the database: node, version, catalogue, identities' state",
                     "gxsubmit.fleet", "add_arguments", "run", _DB_SETTINGS),
    "verify": Command("post-deployment checklist from the database: replicas, nodes, identities, version, "
                      "flow, errors; exit 0 only when all pass", "gxsubmit.verify", "add_arguments", "run",
                      _DB_SETTINGS),
    "check": Command("preflight: configuration, catalogue, wallet, database and gateway, one line each",
                     "gxsubmit.check", "add_arguments", "run", ()),
    "emulator": Command("run the Fabric Gateway emulator (a strict test peer for the GX chaincode)",
                        "gxsubmit.emulator.cli", "add_arguments", "run", None, wants_config=False),
    "dev-wallet": Command("create a development CA, the identities and TLS certificates in DIR",
                          "gxsubmit.devwallet", "add_arguments", "run", None, wants_config=False),
    "demo": Command("everything on an embedded PostgreSQL and the emulator, with a sample workload",
                    "gxsubmit.demo", "add_arguments", "run", (), wants_config=False),
}


def _top_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gxsubmit",
        description="Exactly-once relay of outbox commands to Hyperledger Fabric through the Fabric Gateway.",
        epilog="Run 'gxsubmit COMMAND --help' for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"gxsubmit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, cmd in COMMANDS.items():
        sub.add_parser(name, help=cmd.help)
    return parser


def _command_parser(name: str, cmd: Command) -> tuple[argparse.ArgumentParser, object]:
    module = importlib.import_module(cmd.module)
    parser = argparse.ArgumentParser(prog=f"gxsubmit {name}", description=cmd.help)
    if name == "worker":
        parser.add_argument("--identity", required=True, help="the Fabric identity this worker submits as")
    if cmd.add_args and hasattr(module, cmd.add_args):
        add: Callable[[argparse.ArgumentParser], None] = getattr(module, cmd.add_args)
        add(parser)
    if cmd.settings is not None:
        add_config_arguments(parser, only=cmd.settings or None)
    return parser, module


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line, build the config once and run the command."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    if not args_list or args_list[0].startswith("-") or args_list[0] not in COMMANDS:
        top = _top_parser()
        if args_list and not args_list[0].startswith("-"):
            top.print_usage(sys.stderr)
            print(f"gxsubmit: unknown command {args_list[0]!r}; choose from {', '.join(COMMANDS)}",
                  file=sys.stderr)
            return RET_USAGE
        top.parse_args(args_list)  # handles --help / --version and exits
        top.print_help(sys.stderr)
        return RET_USAGE
    name = args_list[0]
    cmd = COMMANDS[name]
    # Every command reads the database URL, a wallet's keys or both: no core file may hold them.
    no_core_dumps()
    try:
        parser, module = _command_parser(name, cmd)
        args = parser.parse_args(args_list[1:])
        run: Callable[..., int] = getattr(module, cmd.run)
        if not cmd.wants_config:
            return int(run(args))
        cfg = load_config(args)
        if name == "worker":
            return int(run(cfg, args.identity))
        if name == "supervise":
            return int(run(cfg))
        return int(run(cfg, args))
    except ConfigError as exc:
        print(f"gxsubmit {name}: configuration error: {exc}", file=sys.stderr)
        return RET_CONFIG
    except KeyboardInterrupt:
        return 130
