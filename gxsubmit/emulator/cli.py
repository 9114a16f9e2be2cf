"""``gxsubmit emulator``: run the Gateway emulator in the foreground until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import gc
import os
import signal
import sys
import threading
import time
from pathlib import Path

from gxsubmit.emulator.faults import Faults, parse_latency
from gxsubmit.emulator.server import Emulator, EmulatorError

__all__ = ["add_arguments", "run"]


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text}: a fraction between 0 and 1 is required")
    return value


def _positive(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text}: must be >= 0")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``gxsubmit emulator``."""
    parser.add_argument("--listen", default="127.0.0.1:7051", metavar="HOST:PORT", help="address to serve on")
    parser.add_argument(
        "--wallet",
        required=True,
        type=Path,
        metavar="DIR",
        help="wallet with ca-cert (creators' CA) and, for TLS, server-cert/server-key",
    )
    parser.add_argument("--ledger", required=True, type=Path, metavar="FILE", help="JSON-lines ledger file")
    parser.add_argument(
        "--insecure", action="store_true", help="plain-text gRPC (default: TLS from the wallet)"
    )
    parser.add_argument(
        "--require-client-tls",
        action="store_true",
        help="mutual TLS: require a client certificate signed by the wallet's tlsca-cert and check that "
        "deliver requests are bound to it (tls_cert_hash)",
    )
    parser.add_argument(
        "--block-time", type=float, default=0.25, metavar="S", help="cut a block after S seconds"
    )
    parser.add_argument(
        "--block-size", type=int, default=500, metavar="N", help="cut a block at N transactions"
    )
    parser.add_argument("--fsync", action="store_true", help="fsync the ledger file after every block")
    parser.add_argument(
        "--time-window",
        type=float,
        default=None,
        metavar="S",
        help="reject proposals whose timestamp is off by more than S seconds (Fabric 3: 900)",
    )
    parser.add_argument(
        "--envelope-check",
        choices=("orderer", "committer"),
        default="orderer",
        help="where a bad envelope signature is caught: the orderer (Submit ABORTED FORBIDDEN) "
        "or the committer (BAD_CREATOR_SIGNATURE)",
    )
    parser.add_argument("--seed", type=int, default=None, help="random seed for fault injection")
    g = parser.add_argument_group("faults")
    g.add_argument(
        "--latency",
        action="append",
        default=[],
        metavar="RPC=MIN:MAX",
        help="added latency per RPC (Evaluate, Endorse, Submit, CommitStatus, ChaincodeEvents, "
        "DeliverFiltered (at stream start) or *)",
    )
    g.add_argument("--fail-endorse", type=_fraction, default=0.0, metavar="P", help="Endorse UNAVAILABLE")
    g.add_argument(
        "--endorse-timeout", type=_fraction, default=0.0, metavar="P", help="Endorse hangs past deadline"
    )
    g.add_argument(
        "--fail-submit", type=_fraction, default=0.0, metavar="P", help="Submit UNAVAILABLE, not ordered"
    )
    g.add_argument(
        "--submit-timeout", type=_fraction, default=0.0, metavar="P", help="Submit hangs, not ordered"
    )
    g.add_argument(
        "--lost-ack",
        type=_fraction,
        default=0.0,
        metavar="P",
        help="Submit orders the transaction but answers UNAVAILABLE",
    )
    g.add_argument(
        "--fail-commit-status", type=_fraction, default=0.0, metavar="P", help="CommitStatus UNAVAILABLE"
    )
    g.add_argument("--mvcc", type=_fraction, default=0.0, metavar="P", help="forced MVCC_READ_CONFLICT")
    g.add_argument(
        "--policy-failure", type=_fraction, default=0.0, metavar="P", help="forced ENDORSEMENT_POLICY_FAILURE"
    )
    g.add_argument(
        "--hostile", type=_fraction, default=0.0, metavar="P",
        help="hostile peer: garbled, truncated, oversized or contradictory answers (Endorse, CommitStatus, "
        "blocks), block numbers jumping or going back, duplicate entries, unknown validation codes",
    )
    g.add_argument(
        "--outage-after", type=_positive, default=None, metavar="S", help="start an outage after S s"
    )
    g.add_argument(
        "--outage-for", type=_positive, default=None, metavar="S", help="outage length (all RPCs UNAVAILABLE)"
    )
    parser.add_argument(
        "--ready-file", type=Path, default=None, metavar="PATH", help="write the bound port here once serving"
    )


def faults_from_args(args: argparse.Namespace) -> Faults:
    faults = Faults(
        endorse_unavailable=args.fail_endorse,
        endorse_timeout=args.endorse_timeout,
        submit_unavailable=args.fail_submit,
        submit_timeout=args.submit_timeout,
        submit_lost_ack=args.lost_ack,
        commit_status_unavailable=args.fail_commit_status,
        mvcc=args.mvcc,
        policy_failure=args.policy_failure,
        hostile=args.hostile,
    )
    for spec in args.latency:
        rpc, span = parse_latency(spec)
        faults.latency_s[rpc] = span
    return faults


def _write_ready(path: Path, port: int) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(f"{port}\n")
    os.replace(tmp, path)


def run(args: argparse.Namespace) -> int:
    """Serve until SIGTERM/SIGINT; print the statistics (incl. CPU per committed tx) on the way out."""
    try:
        faults = faults_from_args(args)
        if (args.outage_after is None) != (args.outage_for is None):
            raise ValueError("--outage-after and --outage-for go together")
        emulator = Emulator(
            wallet=args.wallet,
            ledger=args.ledger,
            listen=args.listen,
            insecure=args.insecure,
            block_time=args.block_time,
            block_size=args.block_size,
            faults=faults,
            fsync=args.fsync,
            time_window_s=args.time_window,
            envelope_check=args.envelope_check,
            seed=args.seed,
            client_tls=args.require_client_tls,
        )
    except (ValueError, EmulatorError) as exc:
        print(f"emulator: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()

    def _on_signal(signum: int, _frame: object) -> None:
        stop.set()

    old = {s: signal.signal(s, _on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        try:
            port = emulator.start()
        except EmulatorError as exc:
            print(f"emulator: {exc}", file=sys.stderr)
            return 1
        # Our own process: start-up objects never die, and per-call garbage is acyclic, so the
        # cyclic collector only needs to run rarely (it was ~2% of the CPU under load).
        gc.freeze()
        gc.set_threshold(50_000, 20, 100)
        host = args.listen.rsplit(":", 1)[0]
        print(f"emulator listening on {host}:{port}", flush=True)
        if args.ready_file is not None:
            _write_ready(args.ready_file, port)
        started = time.monotonic()
        outage_at = started + args.outage_after if args.outage_after is not None else None
        while not stop.wait(0.05 if outage_at is not None else 1.0):
            if outage_at is not None and time.monotonic() >= outage_at:
                faults.outage(args.outage_for)
                print(f"emulator: outage for {args.outage_for}s", flush=True)
                outage_at = None
        emulator.stop()
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
    st = emulator.stats()
    per = st.get("cpu_ms_per_committed")
    per_s = f"{per:.3f} ms" if per is not None else "n/a"
    print(
        f"emulator stopped: committed={st['committed']} valid={st['valid']} rejected={st['rejected']} "
        f"blocks={st.get('blocks', 0)} cpu={st['cpu_s']:.3f}s (process; loop thread "
        f"{st.get('loop_cpu_s', 0.0):.3f}s) cpu_per_committed_tx={per_s} "
        f"by_code={st.get('by_code', {})}"
        + (f" hostile={st['hostile']} hostile_by_kind={st['hostile_by_kind']}" if st.get("hostile") else ""),
        flush=True,
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry (``python -m gxsubmit.emulator.cli``) until the lead wires the subcommand."""
    parser = argparse.ArgumentParser(prog="gxsubmit emulator")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
