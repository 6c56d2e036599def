"""A request that keeps its thread until the test releases it (as a call stuck in C code would,
for the server): it waits for the file `release` in the directory WSGI_GATE_DIR names, whatever
interrupts it, having made `entered-NAME` there (NAME: its path's last segment)."""
import os
import time


def application(environ, start_response):
    directory = environ["WSGI_GATE_DIR"]
    open(os.path.join(directory, "entered-" + environ["PATH_INFO"].rsplit("/", 1)[-1]), "w").close()
    release = os.path.join(directory, "release")
    while not os.path.exists(release):
        try:
            time.sleep(0.01)
        except TimeoutError:
            pass
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"late"]
