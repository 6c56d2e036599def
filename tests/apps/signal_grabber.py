"""Sets handlers for the signals nginx and Apache use, as apps written for running on their own
do (graceful shutdown on SIGTERM, reload on SIGHUP, SIGPIPE back to its default)."""
import signal

caught = []

for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGWINCH):
    signal.signal(sig, lambda signo, frame: caught.append(signo))
signal.signal(signal.SIGPIPE, signal.SIG_DFL)


def application(environ, start_response):
    start_response("200 OK", [("Content-Type", "application/octet-stream")])
    if environ["PATH_INFO"] == "/big":
        # Long enough that a client which leaves early makes the server write to a closed socket.
        return (b"x" * 65536 for _ in range(512))
    return [b"ok"]
