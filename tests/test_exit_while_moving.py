"""A worker's exit past its default bound (no worker_shutdown_timeout) while its requests inside
Python move bytes: a file of its own, as it waits past the bound (over a minute), so that the
suite's parallel runs and the other Pythons' runs of test_lifecycle.py do not wait for it."""
import signal
import threading

import requests

from conftest import APPS, METRICS, location, wait_for, wait_inside_python


def test_past_the_default_exit_bound_a_worker_waits_while_its_requests_move_bytes(nginx_factory):
    # A download from the app that outlasts the default bound (60 s) at a reload is not a
    # request that never returns: it was cut at 60 s (a 3 GiB upload or download, whose
    # client then had a part), where nginx waits for a proxied one as long as it moves.
    server = nginx_factory(METRICS + location("/", APPS / "sleepy.py")).start()
    worker = server.worker_pids()[0]
    seconds = 75
    results = []

    def download():
        try:
            r = requests.get(server.url(f"/trickle?{seconds}"), timeout=120)
            results.append(len(r.content))
        except requests.RequestException as e:
            results.append(repr(e))

    t = threading.Thread(target=download)
    t.start()
    wait_inside_python(server)
    server.send_signal(signal.SIGHUP)
    wait_for(lambda: "wsgi: waiting for 1 request(s) inside Python before exiting" in server.error_log(),
             what="the old worker's exit")
    wait_for(lambda: "are moving bytes; the worker waits on while they do" in server.error_log(), timeout=90,
             what="the default bound (60 s)")
    t.join(timeout=60)
    assert results == [seconds * 10 * 4096], results
    wait_for(lambda: f"worker process {worker} exited with code 0" in server.error_log(), timeout=30,
             what="the old worker's normal end")
    assert "exiting without finalizing Python" not in server.error_log()
