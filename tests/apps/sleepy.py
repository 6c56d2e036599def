"""/slow sleeps 2 s in Python, /sleep?SECONDS that long, /forever an hour, /spin loops forever,
/swallow spins in a loop that catches every Exception (for 30 s), /sleep-then-clean-up?SECONDS
cleans up for 1.5 s after its sleep's TimeoutError, /spin-until?FILE loops until
FILE exists (writing the worker's pid to FILE.pid first), /told-apart?SECONDS sleeps, then
runs on after its TimeoutError, telling the server's exceptions apart by their `ngx_wsgi` names,
/wait-for-ever?KIND waits in a threading.Condition that nobody notifies (event, queue, future,
async-to-sync), /subprocess-run?FILE waits for an hour-long child (its pid in FILE), /grow keeps 64 MiB, /crash
segfaults the worker, /hold-gil?FIFO holds the GIL until a byte arrives on FIFO (creating FIFO.held
first), /trickle?SECONDS streams 4 KiB every tenth of a second for SECONDS; the rest answers at
once."""
import concurrent.futures
import queue
import sys
import threading
import time

import ngx_wsgi  # at import: in the configuration check's child too

_kept = []


def busy_until(until):
    # In a function of its own: an interrupt lands in it, inside the caller's try (Python 3.13
    # may raise one in a loop's own jump, outside a try around the loop's body).
    while time.monotonic() < until:
        pass


def swallow_every_exception(seconds):
    # A retry loop that takes every Exception, its deadline's TimeoutError among them (`seconds`
    # at most, so that a server that cannot stop it is not held for ever).
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        try:
            busy_until(until)
        except Exception:
            pass


def application(environ, start_response):
    if environ["PATH_INFO"] == "/slow":
        time.sleep(2)
    if environ["PATH_INFO"] == "/sleep":
        time.sleep(float(environ["QUERY_STRING"]))
    if environ["PATH_INFO"] == "/sleep-then-clean-up":
        # A long C call, then the app's own clean-up of its TimeoutError (1.5 s of Python).
        try:
            time.sleep(float(environ["QUERY_STRING"]))
        except TimeoutError:
            busy_until(time.monotonic() + 1.5)
            print(f"clean-up done after {environ['QUERY_STRING']} s", file=sys.stderr)
            raise
    if environ["PATH_INFO"] == "/swallow":
        swallow_every_exception(30)
    if environ["PATH_INFO"] == "/told-apart":
        try:
            time.sleep(float(environ["QUERY_STRING"]))
        except ngx_wsgi.TimeoutError as e:
            print(f"told apart: {type(e).__module__}.{type(e).__qualname__}", file=sys.stderr)
        try:
            swallow_every_exception(30)
        except ngx_wsgi.TimeoutExit as e:
            print(f"told apart: {type(e).__module__}.{type(e).__qualname__}", file=sys.stderr)
            raise
    if environ["PATH_INFO"] == "/wait-for-ever":
        # A wait with no timeout that no other thread ends: Condition.wait under each.
        kind = environ["QUERY_STRING"]
        if kind == "event":
            threading.Event().wait()
        elif kind == "queue":
            queue.Queue().get()
        elif kind == "future":
            concurrent.futures.Future().result()
        elif kind == "async-to-sync":
            # A Django async view under WSGI: asgiref runs the coroutine on a loop in another
            # thread while this one waits for it.
            import asyncio
            from asgiref.sync import async_to_sync

            async def view():
                try:
                    await asyncio.sleep(3600)
                except asyncio.CancelledError:
                    print("the async view was cancelled", file=sys.stderr)
                    raise
            async_to_sync(view)()
    if environ["PATH_INFO"] == "/subprocess-run":
        # A child that runs for an hour, its pid written to the file the query string names.
        import subprocess
        subprocess.run(["sh", "-c", f'echo $$ > {environ["QUERY_STRING"]}; exec sleep 3600'])
    if environ["PATH_INFO"] == "/forever":
        time.sleep(3600)
    if environ["PATH_INFO"] == "/spin":
        n = 0
        while True:
            n += 1
    if environ["PATH_INFO"] == "/spin-until":
        import os
        stop = environ["QUERY_STRING"]
        with open(stop + ".pid.tmp", "w") as f:
            f.write(str(os.getpid()))
        os.rename(stop + ".pid.tmp", stop + ".pid")  # whole when it appears
        while not os.path.exists(stop):
            for _ in range(100_000):
                pass
    if environ["PATH_INFO"] == "/crash":
        import ctypes
        ctypes.string_at(0)  # a segfault, as a broken C extension would cause
    if environ["PATH_INFO"] == "/hold-gil":
        import ctypes
        import os
        fifo = environ["QUERY_STRING"]
        fd = os.open(fifo, os.O_RDWR)
        open(fifo + ".held", "w").close()
        # A C call through PyDLL keeps the GIL: no other Python thread runs until it returns.
        ctypes.PyDLL(None).read(fd, ctypes.create_string_buffer(1), 1)
        os.close(fd)
    if environ["PATH_INFO"] == "/trickle":
        # A long download from the app (a report, an export), moving bytes all along.
        pieces = int(float(environ["QUERY_STRING"]) * 10)

        def trickle():
            for i in range(pieces):
                time.sleep(0.1)
                yield b"%06d" % i + b"." * 4090

        start_response("200 OK", [("Content-Type", "application/octet-stream"),
                                  ("Content-Length", str(pieces * 4096))])
        return trickle()
    if environ["PATH_INFO"] == "/grow":
        _kept.append(b"x" * (64 << 20))
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [environ["PATH_INFO"].encode()]
