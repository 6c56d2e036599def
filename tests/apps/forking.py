"""An app that forks (os.fork()) as some do, without ending the child with os._exit(): what the
child holds of the server's, and what becomes of a child that returns into it."""
import asyncio
import json
import os
import socket
import sys


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


def fork_and_report(way):
    """`held`: the child reports how many sockets it has, then _exits. `returns`: the child
    returns into the server. Either way the parent waits for it and says how it ended."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        os.write(write, json.dumps(sockets_held()).encode())
        os.close(write)
        if way == "held":
            os._exit(0)
        child_ends(way)
        return None
    os.close(write)
    held = json.loads(os.read(read, 1000) or b"null")
    os.close(read)
    _, status = os.waitpid(pid, 0)
    return {"sockets_in_child": held, "child_exit": os.waitstatus_to_exitcode(status)}


def child_ends(way):
    """How a child that does not _exit comes back into the server: it returns, raises, or
    calls sys.exit()."""
    if way == "raises":
        raise RuntimeError("raised in the forked child")
    if way == "exits":
        sys.exit(3)


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
        body = json.dumps({"child_exit": os.waitstatus_to_exitcode(status)}).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})
