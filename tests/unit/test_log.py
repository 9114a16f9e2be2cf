"""JSON log lines: one object per line, never interleaved between processes, keys never leaked."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

_WRITER = textwrap.dedent(
    """
    import logging, sys
    from gxsubmit.log import setup_logging
    setup_logging("info", process="worker", identity=sys.argv[1])
    log = logging.getLogger("gxsubmit.test")
    for i in range(400):
        log.info("Processing command", extra={"command_id": f"{sys.argv[1]}-{i}", "blob": "x" * (i * 37)})
    """
)


def test_lines_from_several_processes_never_interleave() -> None:
    # Three processes write long lines into one pipe at the same time, as workers do under the supervisor.
    script = "import subprocess, sys\n" + "\n".join([
        "procs = [subprocess.Popen([sys.executable, '-c', sys.argv[1], name]) for name in ('a', 'b', 'c')]",
        "sys.exit(max(p.wait() for p in procs))",
    ])
    out = subprocess.run([sys.executable, "-c", script, _WRITER], capture_output=True, text=True, check=True)
    lines = out.stdout.splitlines()
    assert len(lines) == 1200
    seen = set()
    for line in lines:
        doc = json.loads(line)  # a torn line would not parse
        assert doc["message"] == "Processing command"
        assert doc["level"] == "info" and doc["process"] == "worker"
        assert doc["command_id"].startswith(doc["identity"] + "-")
        assert len(line.encode()) <= 4000
        seen.add(doc["command_id"])
    assert len(seen) == 1200


def test_exception_is_one_line() -> None:
    code = textwrap.dedent(
        """
        import logging
        from gxsubmit.log import setup_logging
        setup_logging("info", process="supervisor")
        try:
            raise RuntimeError("gateway said no\\nsecond line")
        except RuntimeError:
            logging.getLogger("x").exception("Command failed")
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.count("\n") == 1
    doc = json.loads(out)
    assert doc["error"].startswith("RuntimeError: gateway said no")
