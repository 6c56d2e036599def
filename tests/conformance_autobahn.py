"""Autobahn|Testsuite's fuzzingclient against an echo app under `asgi_app`: every case of the
suite, none FAILED. Not part of `pytest tests` (Python 2.7 and the suite are needed):
scripts/test-autobahn installs them and runs this file. The summary (cases per behavior, and
the NON-STRICT and INFORMATIONAL ones by name) is printed and left in reports/summary.txt of
the run's directory."""
import collections
import json
import os
import pathlib
import subprocess
import tempfile

from conftest import APPS, asgi_location as asgi

WSTEST = os.environ.get("AUTOBAHN_WSTEST", "")


def test_autobahn_fuzzingclient_finds_no_failed_case(nginx_factory):
    assert WSTEST, "AUTOBAHN_WSTEST (the wstest command) is not set: run scripts/test-autobahn"
    # Cases 9.* send messages of up to 16 MiB, echoed whole.
    server = nginx_factory(asgi("/", APPS / "asgi_ws_echo.py", "client_max_body_size 32m;")).start()
    work = pathlib.Path(os.environ.get("AUTOBAHN_OUTDIR") or tempfile.mkdtemp(prefix="autobahn-"))
    work.mkdir(parents=True, exist_ok=True)
    reports = work / "reports"
    spec = work / "fuzzingclient.json"
    spec.write_text(json.dumps({
        "outdir": str(reports),
        "servers": [{"agent": "ngx-wsgi", "url": f"ws://127.0.0.1:{server.port}/echo"}],
        "cases": os.environ.get("AUTOBAHN_CASES", "*").split(","),
        "exclude-cases": [],
        "exclude-agent-cases": {},
    }))
    run = subprocess.run(WSTEST.split() + ["--mode", "fuzzingclient", "--spec", str(spec)],
                         cwd=work, capture_output=True, text=True, timeout=1800)
    (work / "wstest.log").write_text(run.stdout + run.stderr)
    assert run.returncode == 0, f"wstest exited {run.returncode}:\n{run.stdout[-3000:]}{run.stderr[-3000:]}"
    results = json.loads((reports / "index.json").read_text())["ngx-wsgi"]
    assert results, "the report has no case"
    by_behavior = collections.defaultdict(list)
    for case, result in results.items():
        by_behavior[result["behavior"]].append(case)
        if result["behaviorClose"] not in ("OK", "INFORMATIONAL", "UNIMPLEMENTED"):
            by_behavior[f"close {result['behaviorClose']}"].append(case)

    def key(case):
        return [int(p) for p in case.split(".")]

    lines = [f"{len(results)} cases: " + ", ".join(
        f"{behavior} {len(cases)}" for behavior, cases in sorted(by_behavior.items()))]
    for behavior in ("NON-STRICT", "INFORMATIONAL", "FAILED", "close FAILED", "close WRONG CODE"):
        if by_behavior.get(behavior):
            lines.append(f"{behavior}: " + " ".join(sorted(by_behavior[behavior], key=key)))
    summary = "\n".join(lines)
    (reports / "summary.txt").write_text(summary + "\n")
    print("\nautobahn:", summary, f"\n(reports in {reports})")
    failed = sorted(by_behavior.get("FAILED", []), key=key)
    assert not failed, f"FAILED cases: {failed}\n{summary}"
    server.stop()
    log = server.error_log()
    assert "exited on signal" not in log and "panicked" not in log, log[-3000:]
    # The echo app lets the ClientDisconnected of a send after a failed connection propagate:
    # not an error of the app's.
    assert "raised on an open WebSocket" not in log, log[-3000:]
