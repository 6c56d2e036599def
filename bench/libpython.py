#!/usr/bin/env python3
"""Python's own speed inside an embedding server (not a test): the same in-process work run by
the python executable and by a small C program that embeds the shared libpython, the library the
module (like mod_wsgi, uWSGI or NGINX Unit) loads into the server's process.

    bench/setup && bench/.venv/bin/python bench/libpython.py [--rounds 5] [--python /usr/bin/python3]
        [--workloads fastapi,flask,pure]

No server and no socket: each workload calls the bench's own app directly (the FastAPI route of
bench/asgi_apps.py through its ASGI callable on an asyncio loop, the Flask route of bench/apps.py
through its WSGI callable) or runs plain Python (function calls, json, str). What differs between
the two sides is only how the interpreter's code was compiled and linked: Debian builds
/usr/bin/python3 from non-PIC objects with profile-guided optimisation and LTO, and
libpython3.X.so from position-independent objects that calls between its own exported functions go
through (semantic interposition: no inlining across them). Every server that embeds Python runs
the second; uvicorn, gunicorn and Granian run the first. See bench/README.md, "libpython".

The embedding host is built here with the C compiler against `--python`'s shared library (its
sysconfig: INCLUDEPY, LIBDIR, LDVERSION) and runs this file like the python command does
(`Py_RunMain`). Both sides see the same sys.path: the bench venv's site-packages are added by the
work itself. Each round runs every workload once on each side, in turn; a side's figure is the
process CPU time of its timed loop (after a warm-up), and the ratio embedded/executable is the
median (min-max) of the rounds' own ratios.
"""
import argparse
import json
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time

BENCH = pathlib.Path(__file__).resolve().parent

HOST_C = r"""
#include <Python.h>

int main(int argc, char **argv) {
    PyConfig config;
    PyConfig_InitPythonConfig(&config);
    PyStatus status = PyConfig_SetBytesArgv(&config, argc, argv);
    if (!PyStatus_Exception(status)) {
        status = Py_InitializeFromConfig(&config);
    }
    PyConfig_Clear(&config);
    if (PyStatus_Exception(status)) {
        Py_ExitStatusException(status);
    }
    return Py_RunMain();
}
"""

# Iterations of each workload's timed loop (about a second of CPU on this machine).
ITERATIONS = {"fastapi": 4000, "flask": 8000, "pure": 30}


# ---------------------------------------------------------------------------------------------
# The work (runs in the child, on either side).

def work_fastapi(n):
    import asyncio

    import asgi_apps

    body = asgi_apps.FASTAPI_REQUEST
    path, _, query = asgi_apps.FASTAPI_PATH.partition("?")
    scope = {
        "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
        "method": "POST", "scheme": "http", "path": path, "raw_path": path.encode(),
        "query_string": query.encode(), "root_path": "",
        "headers": [(b"host", b"bench"), (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode())],
        "client": ("127.0.0.1", 40000), "server": ("127.0.0.1", 8080), "state": {},
    }
    expected = json.dumps(asgi_apps.FASTAPI_ANSWER, separators=(",", ":")).encode()

    async def one():
        sent = []

        async def receive():
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message):
            sent.append(message)

        await asgi_apps.app(dict(scope), receive, send)
        return sent[-1]["body"]

    async def loop(count):
        for _ in range(count):
            answer = await one()
        return answer

    return lambda count: asyncio.run(loop(count)), expected, n


def work_flask(n):
    import apps

    environ = {
        "REQUEST_METHOD": "GET", "SCRIPT_NAME": "", "PATH_INFO": "/flask", "QUERY_STRING": "name=bench",
        "SERVER_NAME": "bench", "SERVER_PORT": "8080", "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1", "HTTP_HOST": "bench", "wsgi.version": (1, 0), "wsgi.url_scheme": "http",
        "wsgi.errors": sys.stderr, "wsgi.multithread": True, "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }
    expected = json.dumps({"items": list(range(10)), "message": "Hello, bench!"}, separators=(",", ":"))

    def loop(count):
        import io
        for _ in range(count):
            env = dict(environ, **{"wsgi.input": io.BytesIO()})
            result = apps.dispatch(env, lambda status, headers, exc_info=None: None)
            answer = b"".join(result)
            getattr(result, "close", lambda: None)()
        return json.dumps(json.loads(answer), separators=(",", ":"), sort_keys=True)

    return loop, expected, n


def work_pure(n):
    def fib(k):
        return k if k < 2 else fib(k - 1) + fib(k - 2)

    record = {"a": [1, 2, 3], "b": {"c": "x" * 20}, "d": 1.5}

    def loop(count):
        total = 0
        for _ in range(count):
            total += fib(18)
            for i in range(300):
                parts = f"{i}-{record['b']['c']}".upper().split("-")
                total += len(json.loads(json.dumps(record))["a"]) + len(parts)
        return total

    return loop, loop(1) * n, n


WORK = {"fastapi": work_fastapi, "flask": work_flask, "pure": work_pure}


def child(name, sites):
    import site
    for s in sites:
        site.addsitedir(s)
    sys.path.insert(0, str(BENCH))
    run, expected, n = WORK[name](ITERATIONS[name])
    answer = run(max(1, n // 10))        # warm-up: imports, caches, specialisation
    if name != "pure" and answer != expected:
        raise SystemExit(f"{name}: unexpected answer {answer!r}")
    start = time.process_time()
    answer = run(n)
    spent = time.process_time() - start
    if name == "pure" and answer != expected:
        raise SystemExit(f"pure: unexpected answer {answer!r}")
    print(json.dumps({"cpu": spent, "n": n, "libpython": sys_libpython()}))


def sys_libpython():
    """Which libpython this process runs (None: the interpreter is in the executable)."""
    try:
        for line in pathlib.Path("/proc/self/maps").read_text().splitlines():
            if "/libpython" in line:
                return line.split()[-1]
    except OSError:
        pass
    return None


# ---------------------------------------------------------------------------------------------
# The driver.

def python_facts(python):
    code = ("import sysconfig, sys, json; v = sysconfig.get_config_vars(); print(json.dumps({k: v.get(k) for k in "
            "('INCLUDEPY', 'LIBDIR', 'LDVERSION', 'Py_ENABLE_SHARED', 'CONFIG_ARGS')} | {'version': sys.version.split()[0]}))")
    return json.loads(subprocess.run([python, "-c", code], check=True, capture_output=True, text=True).stdout)


def build_host(facts, directory):
    cc = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if cc is None:
        raise SystemExit("libpython.py: no C compiler (apt install build-essential)")
    source = directory / "host.c"
    source.write_text(HOST_C)
    host = directory / "python-embedded"
    libdir = facts["LIBDIR"]
    subprocess.run([cc, "-O2", f"-I{facts['INCLUDEPY']}", str(source), "-o", str(host), f"-L{libdir}",
                    f"-lpython{facts['LDVERSION']}", f"-Wl,-rpath,{libdir}", "-lm"], check=True)
    return host


def module_libpython():
    """The libpython the built nginx module links, if it is built."""
    for so in sorted((BENCH.parent / "target" / "release").glob("libngx_http_wsgi_module.so")):
        out = subprocess.run(["ldd", str(so)], capture_output=True, text=True).stdout
        for line in out.splitlines():
            if "libpython" in line:
                return line.split("=>")[-1].split("(")[0].strip()
    return None


def measure(argv, name, sites):
    env = dict(os.environ, PYTHONNOUSERSITE="1")
    env.pop("PYTHONHOME", None)
    env.pop("PYTHONPATH", None)
    out = subprocess.run([*argv, str(BENCH / "libpython.py"), "--child", name, "--sites", os.pathsep.join(sites)],
                         check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--python", default=getattr(sys, "_base_executable", sys.executable),
                        help="the Python whose executable and shared library are compared (default: this venv's base)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workloads", default="fastapi,flask,pure")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--sites", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child, [s for s in args.sites.split(os.pathsep) if s])

    python = os.path.realpath(args.python)
    facts = python_facts(python)
    if str(facts.get("Py_ENABLE_SHARED")) != "1":
        raise SystemExit(f"libpython.py: {python} has no shared libpython (built without --enable-shared)")
    names = [w for w in args.workloads.split(",") if w]
    for w in names:
        if w not in WORK:
            raise SystemExit(f"libpython.py: unknown workload {w!r} (known: {', '.join(WORK)})")
    sites = [p for p in sys.path if p.endswith("site-packages") and pathlib.Path(p).is_dir()]

    with tempfile.TemporaryDirectory(prefix="ngx-wsgi-libpython-") as tmp:
        host = build_host(facts, pathlib.Path(tmp))
        lib = f"{facts['LIBDIR']}/libpython{facts['LDVERSION']}.so"
        print(f"Python {facts['version']}: executable {python} against {os.path.realpath(lib)} embedded "
              f"({args.rounds} rounds, load average {os.getloadavg()[0]:.1f} before)")
        linked = module_libpython()
        if linked:
            print(f"the built module links {linked}")
        print()
        results = {w: {"exe": [], "embedded": [], "ratio": []} for w in names}
        for r in range(args.rounds):
            for w in names:
                sides = [("exe", [python]), ("embedded", [str(host)])]
                if r % 2:
                    sides.reverse()     # neither side always runs first
                got = {}
                for side, argv in sides:
                    m = measure(argv, w, sites)
                    if side == "embedded" and not m["libpython"]:
                        raise SystemExit("libpython.py: the embedding host did not load a libpython")
                    got[side] = m["cpu"] / m["n"]
                    results[w][side].append(got[side])
                results[w]["ratio"].append(got["embedded"] / got["exe"])
            print(f"round {r + 1}: " + ", ".join(f"{w} {results[w]['ratio'][-1]:.2f}" for w in names), flush=True)

        print()
        print("| workload | executable, us CPU per iteration | embedded libpython | embedded / executable |")
        print("|---|---|---|---|")
        for w in names:
            res = results[w]
            ratios = res["ratio"]
            print(f"| {w} | {statistics.median(res['exe']) * 1e6:.1f} | {statistics.median(res['embedded']) * 1e6:.1f} "
                  f"| {statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f}) |")


if __name__ == "__main__":
    main()
