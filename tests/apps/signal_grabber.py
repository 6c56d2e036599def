"""Sets handlers for the signals nginx and Apache use, as apps written for running on their own
do (graceful shutdown on SIGTERM, reload on SIGHUP, SIGPIPE back to its default), and blocks the
shutdown signals in the thread that imports it."""
import signal

caught = []

for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGWINCH):
    signal.signal(sig, lambda signo, frame: caught.append(signo))
signal.signal(signal.SIGPIPE, signal.SIG_DFL)
# Keeps the app's own threads from taking the process's shutdown signals (they inherit the mask).
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGQUIT, signal.SIGTERM})


def application(environ, start_response):
    start_response("200 OK", [("Content-Type", "application/octet-stream")])
    if environ["PATH_INFO"] == "/big":
        # Long enough that a client which leaves early makes the server write to a closed socket.
        return (b"x" * 65536 for _ in range(512))
    return [b"ok"]
