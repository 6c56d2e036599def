"""An app that forks (os.fork()) as some do, without ending the child with os._exit(): what the
child holds of the server's, and what becomes of a child that returns into it."""
import asyncio
import fcntl
import json
import logging
import os
import socket
import sys
import tempfile
import termios
import threading
import time


def sockets_held():
    """The TCP sockets this process has, listening and connected (asyncio's own self-pipe is
    a unix socket pair)."""
    held = {"listening": 0, "connected": 0}
    for fd in map(int, os.listdir("/proc/self/fd")):
        try:
            with socket.socket(fileno=os.dup(fd)) as s:  # its family read from the socket
                if s.family in (socket.AF_INET, socket.AF_INET6):
                    listening = s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
                    held["listening" if listening else "connected"] += 1
        except OSError:
            pass
    return held


def socket_links():
    """What this process's sockets of every kind name (`socket:[INODE]`)."""
    links = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            link = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:"):
            links.append(link)
    return links


def fork_and_report(way):
    """`held`: the child reports how many sockets it has, then _exits. `returns`: the child
    returns into the server. Either way the parent waits for it and says how it ended."""
    release = stdout_held_by_a_thread() if way == "stuck" else None
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        os.write(write, json.dumps(socket_links() if way == "links" else sockets_held()).encode())
        os.close(write)
        if way in ("held", "links"):
            os._exit(0)
        child_ends(way)
        return None
    os.close(write)
    held = json.loads(os.read(read, 1000) or b"null")
    os.close(read)
    _, status = os.waitpid(pid, 0)
    if release:
        release()
    return {"sockets_in_child": held, "child_exit": os.waitstatus_to_exitcode(status), **printed(way, pid)}


def stdout_held_by_a_thread():
    """sys.stdout with a write in flight in another thread, blocked on a full pipe: the
    buffer's lock is held at the fork, and nobody releases it in the child. Gives what puts
    sys.stdout back once the fork is over."""
    read, write = os.pipe()
    saved, sys.stdout = sys.stdout, open(write, "w", buffering=1 << 16)
    held = sys.stdout
    writer = threading.Thread(target=lambda: (held.write("x" * (1 << 20)), held.flush()))
    writer.start()
    full = fcntl.fcntl(read, 1032)  # F_GETPIPE_SZ
    while int.from_bytes(fcntl.ioctl(read, termios.FIONREAD, b"\0" * 4), "little") < full:
        time.sleep(0.01)

    def release():
        while writer.is_alive():
            os.read(read, 1 << 16)
            writer.join(0.01)
        sys.stdout = saved
        held.close()
        os.close(read)
    return release


def printed_path(pid):
    return os.path.join(tempfile.gettempdir(), f"ngx-wsgi-forked-{pid}.out")


def printed(way, pid):
    """What a `prints` child left in its (buffered) stdout by the time it ended."""
    if way != "prints":
        return {}
    try:
        with open(printed_path(pid)) as f:
            return {"printed": f.read()}
    finally:
        os.unlink(printed_path(pid))


def child_ends(way):
    """How a child that does not _exit comes back into the server: it returns, raises, or
    calls sys.exit() (having logged or printed, for some)."""
    if way == "raises":
        raise RuntimeError("raised in the forked child")
    if way == "exits":
        sys.exit(3)
    if way == "interrupted":
        raise KeyboardInterrupt
    if way == "logs":
        logging.getLogger("forked").warning("logged by the forked child")
    if way == "prints":
        # Buffered, unflushed when the child returns: Python's exit would write it out.
        sys.stdout = open(printed_path(os.getpid()), "w")
        print("printed by the child")


def application(environ, start_response):
    result = fork_and_report(environ["QUERY_STRING"])
    start_response("200 OK", [("Content-Type", "application/json")])
    return [json.dumps(result).encode() if result else b"the child's answer"]


async def asgi_app(scope, receive, send):
    if scope["type"] != "http":
        return
    way = scope["query_string"].decode()
    if way == "held":
        # The fork on the event loop's thread, as an app's blocking call would make it.
        body = json.dumps(fork_and_report(way)).encode()
    else:
        pid = os.fork()
        if pid == 0:
            if way == "sends":
                # More than the server's room for a response: without a server to take it,
                # the child's send() would wait forever.
                await send({"type": "http.response.start", "status": 200, "headers": []})
                for _ in range(64):
                    await send({"type": "http.response.body", "body": b"c" * (1 << 20), "more_body": True})
            child_ends(way)
            return
        _, status = await asyncio.get_running_loop().run_in_executor(None, os.waitpid, pid, 0)
        body = json.dumps({"child_exit": os.waitstatus_to_exitcode(status), **printed(way, pid)}).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})
