"""Work an app leaves for after its response, as Flask and Django apps send mail or call
webhooks: a thread started by the request, and a ThreadPoolExecutor made at import."""
import concurrent.futures
import os
import threading
import time

MARKS = os.environ["NGX_WSGI_TEST_MARKS"]
# Made at import: once idle, its workers must not hold the process's exit.
POOL = concurrent.futures.ThreadPoolExecutor(2)


def _deliver(kind):
    time.sleep(1)
    open(os.path.join(MARKS, f"{kind}-{os.getpid()}"), "w").close()


def application(environ, start_response):
    kind = environ["PATH_INFO"].strip("/")
    if kind == "thread":
        started = threading.Thread(target=_deliver, args=(kind,))
        started.start()
        body = f"daemon={started.daemon}"
    else:
        POOL.submit(_deliver, kind)
        body = "queued"
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [body.encode()]
