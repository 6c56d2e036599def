"""Requests that record their runs: /hold/NAME waits until the file `release` exists in the
directory WSGI_GATE_DIR names (the test's), /run/NAME returns at once; each appends its NAME to
`ran` in that directory as it starts."""

import os
import time


def application(environ, start_response):
    directory = environ["WSGI_GATE_DIR"]
    _, kind, name = environ["PATH_INFO"].split("/", 2)
    with open(os.path.join(directory, "ran"), "a") as f:
        f.write(name + "\n")
    if kind == "hold":
        while not os.path.exists(os.path.join(directory, "release")):
            time.sleep(0.01)
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [name.encode()]
