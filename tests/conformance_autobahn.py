"""Autobahn|Testsuite's fuzzingclient against an echo app under `asgi_app`: every case of the
suite, none FAILED. Not part of `pytest tests` (Python 2.7 and the suite are needed):
scripts/test-autobahn installs them and runs this file. The summary (cases per behavior, and
the NON-STRICT and INFORMATIONAL ones by name) is printed and left in reports/summary.txt of
the run's directory (each client's own reports in a subdirectory of reports/)."""
import collections
import json
import os
import pathlib
import subprocess
import tempfile

from conftest import APPS, asgi_location as asgi

WSTEST = os.environ.get("AUTOBAHN_WSTEST", "")


def shards():
    """(name, cases, excluded cases) per wstest client. The suite's Python 2.7 client, not the
    server, is the slow side (one core for it against a fifth of one for nginx), and the
    compression cases 12.* and 13.* are nine tenths of its time: two clients run at once, one
    with 13.*, one with the rest, which halves the run on two cores and adds nothing to what is
    checked (every case still runs once). AUTOBAHN_CASES=1.*,2.* runs those cases in one client.
    AUTOBAHN_SHORT=1 (CI's run) leaves out the largest compressed messages (the cases 10 and 14
    to 18 of 12.1 to 12.5 and 13.1 to 13.7: 70 of 517, two thirds of the clients' time) but the
    largest of all under the default parameters (12.1.18 and 13.1.18); every group runs its
    smaller ones."""
    chosen = os.environ.get("AUTOBAHN_CASES")
    if chosen:
        return [("chosen", chosen.split(","), [])]
    largest = []
    if os.environ.get("AUTOBAHN_SHORT") == "1":
        largest = [f"{group}.{case}" for group in [f"12.{n}" for n in range(1, 6)] + [f"13.{n}" for n in range(1, 8)]
                   for case in (10, 14, 15, 16, 17, 18) if f"{group}.{case}" not in ("12.1.18", "13.1.18")]
    return [("all-but-13", ["*"], ["13.*"] + [c for c in largest if c.startswith("12.")]),
            ("13", ["13.*"], [c for c in largest if c.startswith("13.")])]


def test_autobahn_fuzzingclient_finds_no_failed_case(nginx_factory):
    assert WSTEST, "AUTOBAHN_WSTEST (the wstest command) is not set: run scripts/test-autobahn"
    # Cases 9.* send messages of up to 16 MiB, echoed whole.
    server = nginx_factory(asgi("/", APPS / "asgi_ws_echo.py", "client_max_body_size 32m;")).start()
    work = pathlib.Path(os.environ.get("AUTOBAHN_OUTDIR") or tempfile.mkdtemp(prefix="autobahn-"))
    work.mkdir(parents=True, exist_ok=True)
    reports = work / "reports"
    runs = []
    for name, cases, exclude in shards():
        outdir = reports / name
        spec = work / f"fuzzingclient-{name}.json"
        spec.write_text(json.dumps({
            "outdir": str(outdir),
            "servers": [{"agent": "ngx-wsgi", "url": f"ws://127.0.0.1:{server.port}/echo"}],
            "cases": cases,
            "exclude-cases": exclude,
            "exclude-agent-cases": {},
        }))
        log = open(work / f"wstest-{name}.log", "w")
        command = WSTEST.split() + ["--mode", "fuzzingclient", "--spec", str(spec)]
        runs.append((name, outdir, log, subprocess.Popen(
            command, cwd=work, stdout=log, stderr=subprocess.STDOUT)))
    results = {}
    try:
        for name, outdir, log, process in runs:
            code = process.wait(timeout=1800)
            log.close()
            tail = (work / f"wstest-{name}.log").read_text()[-3000:]
            assert code == 0, f"wstest ({name}) exited {code}:\n{tail}"
            results.update(json.loads((outdir / "index.json").read_text())["ngx-wsgi"])
    finally:
        for _, _, _, process in runs:
            if process.poll() is None:
                process.kill()
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
