"""FastAPI's own tutorial tests, replayed over HTTP against `asgi_app`.

FastAPI's source distribution (the installed version's, fetched with pip) carries its tests and
the tutorial apps they test (`docs_src/`). They call each app in the test process through
`TestClient`. This runs them twice: as they are, recording every app they build a client for;
then with tests/fastapi_replay_plugin.py's TestClient, which sends the same requests and
WebSockets over HTTP to one nginx that serves each of those apps with `asgi_app` on a port of
its own (the app's `root_path` as the location's prefix). Every test that passes in the test
process must pass over nginx, unless it is one of KNOWN_DIFFERENCES below: there, what the test
observes exists only in the test process (each with its reason).
"""
import json
import os
import pathlib
import subprocess
import sys
import tarfile
import xml.etree.ElementTree as ET

import pytest

from conftest import ROOT

TUTORIALS_LEFT_OUT = {
    # They need packages the test environment does not install (OpenTelemetry, Logfire, Sentry,
    # Strawberry, SQLModel, Jinja2 templates, the generated clients' tooling) or test WSGI
    # mounting (a2wsgi), not ASGI.
    "test_opentelemetry", "test_logfire", "test_sentry", "test_graphql", "test_sql_databases",
    "test_templates", "test_generate_clients", "test_wsgi",
}

# Tests that pass in the test process and cannot pass over HTTP, by what they observe. Each was
# read: none is a difference of the module's (those were fixed: a relative path in
# `http.response.pathsend`, the workers' directory in the check).
KNOWN_DIFFERENCES = {
    # TestClient's made-up peer: scope["client"] is ("testclient", 50000) in the test process,
    # the real 127.0.0.1 and port over HTTP.
    "client address": [
        "test_using_request_directly.test_tutorial001::test_path_operation",
    ],
    # base_url="https://...": TestClient fakes the scheme; over plain HTTP to nginx it is http
    # (HTTPSRedirectMiddleware redirects for ever, a redirect says http://). On a TLS listener
    # the scope says https, as tests/test_asgi.py checks.
    "faked https": [
        "test_advanced_middleware.test_tutorial001::test_middleware",
        "test_behind_a_proxy.test_tutorial001_01::test_redirect",
    ],
    # In the test process TestClient re-raises the app's exception into the test (an error
    # raised after the response, a WebSocket handler that raises WebSocketDisconnect when the
    # client leaves); over HTTP the client has its response or its close, and the traceback is
    # in nginx's error log.
    "the app's exception raised into the test": [
        "test_dependencies.test_tutorial008c::test_fastapi_error[tutorial008c]",
        "test_dependencies.test_tutorial008c::test_fastapi_error[tutorial008c_non_an]",
        "test_dependencies.test_tutorial008d::test_internal_error[tutorial008d]",
        "test_dependencies.test_tutorial008d::test_internal_error[tutorial008d_non_an]",
        "test_websockets.test_tutorial001::test_websocket",
        "test_websockets.test_tutorial002::test_websocket_with_header[tutorial002]",
        "test_websockets.test_tutorial002::test_websocket_with_header[tutorial002_non_an]",
        "test_websockets.test_tutorial002::test_websocket_with_header_and_query[tutorial002]",
        "test_websockets.test_tutorial002::test_websocket_with_header_and_query[tutorial002_non_an]",
    ],
    # The test changes the app in its own process after nginx imported it: adds a route,
    # patches `json.loads`, points a module's file path elsewhere, clears the dependency
    # overrides the module set at import.
    "the app changed in the test process": [
        "test_advanced_middleware.test_tutorial003::test_middleware",
        "test_body.test_tutorial001::test_other_exceptions[tutorial001]",
        "test_custom_request_and_route.test_tutorial001::test_request_class[tutorial001]",
        "test_custom_request_and_route.test_tutorial001::test_request_class[tutorial001_non_an]",
        "test_custom_response.test_tutorial008::test_get",
        "test_custom_response.test_tutorial009::test_get",
        "test_custom_response.test_tutorial009b::test_get",
        "test_testing_dependencies.test_tutorial001::test_normal_app[tutorial001]",
        "test_testing_dependencies.test_tutorial001::test_normal_app[tutorial001_non_an]",
    ],
    # The test reads what the app left in the test process: a dict the lifespan or a route
    # filled, a log file a background task or the shutdown wrote in the test's own directory.
    "state of the test process": [
        "test_background_tasks.test_tutorial001::test",
        "test_background_tasks.test_tutorial002::test[tutorial002]",
        "test_background_tasks.test_tutorial002::test[tutorial002_non_an]",
        "test_encoder.test_tutorial001::test_put[tutorial001]",
        "test_events.test_tutorial002::test_events",
        "test_events.test_tutorial003::test_events",
        "test_testing.test_tutorial004::test_main",
        "test_testing.test_tutorial004::test_read_items",
    ],
}
KNOWN_DIFFERENCES = {why: [f"tests.test_tutorial.{t}" for t in tests] for why, tests in KNOWN_DIFFERENCES.items()}


def fastapi_sources():
    """The installed FastAPI's sdist (tests/ and docs_src/), unpacked once into target/."""
    import fastapi

    version = fastapi.__version__
    cache = ROOT / "target" / "test-cache"
    tree = cache / f"fastapi-{version}"
    if (tree / "docs_src").is_dir():
        return tree
    cache.mkdir(parents=True, exist_ok=True)
    fetch = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                            "--no-binary", ":all:", "--dest", str(cache), f"fastapi=={version}"],
                           capture_output=True, text=True, timeout=300)
    archive = cache / f"fastapi-{version}.tar.gz"
    if fetch.returncode != 0 or not archive.exists():
        pytest.skip(f"FastAPI {version}'s source distribution could not be fetched: {fetch.stderr[-500:]}")
    with tarfile.open(archive) as tar:
        # Debian 12's Python has no extraction filters: only plain files and folders, below the
        # cache.
        members = [m for m in tar.getmembers() if (m.isfile() or m.isdir()) and not m.name.startswith(("/", ".."))
                   and ".." not in pathlib.PurePosixPath(m.name).parts]
        tar.extractall(cache, members=members)
    return tree


def run_tutorials(tree, mode, state, report, tmp_path):
    ini = tmp_path / "pytest.ini"
    # FastAPI's own pytest settings turn every warning into an error and ask for plugins this
    # environment does not have: only what the tests need.
    ini.write_text("[pytest]\naddopts = --ignore=docs_src -p no:cacheprovider\n")
    dirs = sorted(str(d.relative_to(tree)) for d in (tree / "tests" / "test_tutorial").iterdir()
                  if d.is_dir() and d.name.startswith("test_") and d.name not in TUTORIALS_LEFT_OUT)
    env = dict(os.environ, NGX_WSGI_REPLAY=f"{mode}:{state}",
               PYTHONPATH=os.pathsep.join([str(ROOT / "tests"), str(tree)]))
    proc = subprocess.run([sys.executable, "-m", "pytest", "-c", str(ini), "--rootdir", str(tree), "-q",
                           "-p", "fastapi_replay_plugin", f"--junitxml={report}", "-o", "junit_family=xunit1",
                           *dirs], cwd=tree, env=env, capture_output=True, text=True, timeout=1200)
    if not report.exists():
        raise AssertionError(f"pytest did not run ({mode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return outcomes(report), proc.stdout


def outcomes(report):
    """test id -> passed / failed / skipped (with the reason) from a JUnit XML report."""
    result = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        test_id = f"{case.get('classname')}::{case.get('name')}"
        if case.find("failure") is not None or case.find("error") is not None:
            node = case.find("failure") if case.find("failure") is not None else case.find("error")
            result[test_id] = ("failed", (node.get("message") or "")[:300])
        elif case.find("skipped") is not None:
            result[test_id] = ("skipped", case.find("skipped").get("message") or "")
        else:
            result[test_id] = ("passed", "")
    return result


def serving_config(apps, tree):
    """One nginx server per recorded app, each on its own port, the app under its root_path."""
    from conftest import free_port

    ports, servers = {}, []
    for key in apps:
        spec, _, root_path = key.partition("|")
        port = free_port()
        ports[key] = port
        servers.append(f" server {{\n  listen 127.0.0.1:{port};\n"
                       f"  location {root_path or ''}/ {{\n   asgi_app {spec};\n  }}\n }}\n")
    # What the tutorials' tests send and uvicorn takes as it is, which nginx refuses or
    # normalises by default: headers with underscores (`convert_underscores=False`), `//` in a
    # path parameter (`/files//home/...`), bodies over 1 MiB (the body-limit tutorials).
    settings = "underscores_in_headers on;\nmerge_slashes off;\nclient_max_body_size 64m;\n"
    return ports, f"wsgi_python_path {tree};\n{settings}" + "".join(servers)


def test_fastapi_tutorial_tests_pass_over_nginx(nginx_factory, tmp_path):
    tree = fastapi_sources()
    recorded = tmp_path / "apps.json"
    base, _ = run_tutorials(tree, "record", recorded, tmp_path / "base.xml", tmp_path)
    apps = json.loads(recorded.read_text())
    passed_in_process = {t for t, (outcome, _) in base.items() if outcome == "passed"}
    assert len(apps) > 100 and len(passed_in_process) > 500, (len(apps), len(passed_in_process))

    ports, servers = serving_config(apps, tree)
    # The tests run from the source tree and some apps mount `static/` relative to it (the test
    # makes it before importing them): the workers import from the same directory.
    (tree / "static").mkdir(exist_ok=True)
    # With pathsend, so that the tutorials' FileResponse goes through nginx's own file sending.
    nginx = nginx_factory("  location / { return 404; }\n", http_extra="asgi_pathsend on;\n" + servers,
                          main_extra=f"worker_rlimit_nofile 8192;\nworking_directory {tree};\n").start()
    state = tmp_path / "ports.json"
    state.write_text(json.dumps(ports))
    replayed, summary = run_tutorials(tree, "replay", state, tmp_path / "replay.xml", tmp_path)

    known = {t for tests in KNOWN_DIFFERENCES.values() for t in tests}
    skipped = {t: why for t, (outcome, why) in replayed.items()
               if t in passed_in_process and outcome == "skipped"}
    broken = {t: why for t, (outcome, why) in replayed.items()
              if t in passed_in_process and outcome == "failed" and t not in known}
    same = sum(1 for t in passed_in_process if replayed.get(t, ("",))[0] == "passed")
    print(f"\nFastAPI tutorial tests: {len(passed_in_process)} pass in the test process, {same} of them "
          f"over nginx, {len(skipped)} not replayable (app built or overridden in the test process), "
          f"{len(known)} known differences; {len(apps)} apps served")
    if os.environ.get("NGX_WSGI_REPLAY_REPORT"):
        pathlib.Path(os.environ["NGX_WSGI_REPLAY_REPORT"]).write_text(
            json.dumps({"broken": broken, "skipped": skipped}, indent=1))
    assert not broken, "\n".join(f"{t}: {why}" for t, why in sorted(broken.items()))
    for why, tests in KNOWN_DIFFERENCES.items():
        print(f"  {why}: {sum(1 for t in tests if replayed.get(t, ('',))[0] == 'failed')} of {len(tests)} differ")
    assert "signal 11" not in nginx.error_log() and "exited on signal" not in nginx.error_log()
