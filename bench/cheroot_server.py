"""cheroot (single-process) as a multi-process server for the bench: the parent imports the app,
forks N children, each child binds the same port with SO_REUSEPORT (cheroot's `reuse_port`) and
serves with its own thread pool. SIGTERM/SIGINT to the parent stops the children."""
import argparse
import os
import signal
import sys

from cheroot import wsgi

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import apps  # noqa: E402


def child(args):
    server = wsgi.Server(("127.0.0.1", args.port), apps.dispatch, numthreads=args.threads,
                         request_queue_size=1024, timeout=60, reuse_port=True)
    # The bench needs no graceful stop: SIGTERM (forwarded by the parent) ends the child at once.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        server.safe_start()
    finally:
        os._exit(0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--threads", type=int, default=10)
    args = ap.parse_args()
    kids = []
    for _ in range(args.processes):
        pid = os.fork()
        if pid == 0:
            child(args)
        kids.append(pid)

    def stop(*_):
        for k in kids:
            try:
                os.kill(k, signal.SIGTERM)
            except ProcessLookupError:
                pass
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for k in kids:
        while True:
            try:
                os.waitpid(k, 0)
                break
            except InterruptedError:
                continue
            except ChildProcessError:
                break


if __name__ == "__main__":
    main()
