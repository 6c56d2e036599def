"""A stream whose close() does clean-up that must run (a database connection given back, a lock
released): it yields 64 KiB pieces for ever; close() takes a moment, then writes `closed` into
the file that WSGI_MARK names."""

import time


class Endless:
    def __init__(self, mark):
        self.mark = mark

    def __iter__(self):
        while True:
            yield b"x" * 65536

    def close(self):
        time.sleep(0.3)
        with open(self.mark, "w") as f:
            f.write("closed")


def application(environ, start_response):
    start_response("200 OK", [("Content-Type", "application/octet-stream")])
    return Endless(environ["WSGI_MARK"])
