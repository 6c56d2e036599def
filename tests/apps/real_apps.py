"""What real applications do besides answering: start child processes (in a request, at import,
in threads of their own), keep long-lived streams open, block on gates the test opens.

/child/KIND?CODE runs a child that exits with CODE (or, for a negative CODE, kills itself with
that signal) the KIND way and answers with the status Python reports; /import_child and
/thread_child answer for the children started at import time and in an app thread;
/zombies counts this process's zombie children."""
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time

_lock = threading.Lock()
_gates = {}
_stats = {"streams_started": 0, "streams_closed": 0, "lines": 0}


def _gate(name):
    with _lock:
        return _gates.setdefault(name, threading.Event())


def _shell_for(code):
    return f"kill -{-code} $$" if code < 0 else f"exit {code}"


def _exit_with(code):
    if code < 0:
        os.kill(os.getpid(), -code)
    os._exit(code)


def _returns_after_its_thread(path):
    # A worker's job that leaves a thread of its own and returns (a ProcessPoolExecutor's or
    # Pool's worker does): the child's exit waits for that thread, then says 0.
    def finish():
        time.sleep(0.2)
        with open(path, "w") as f:
            f.write("done")
    threading.Thread(target=finish).start()


def child_after_thread(kind):
    """A multiprocessing child that returns normally: its exit status and its thread's work."""
    import tempfile
    fd, path = tempfile.mkstemp()
    os.close(fd)
    try:
        p = multiprocessing.get_context(kind).Process(target=_returns_after_its_thread, args=(path,))
        p.start()
        p.join()
        with open(path) as f:
            return f"{p.exitcode} {f.read() or 'nothing'}"
    finally:
        os.unlink(path)


def child_status(kind, code):
    """The child's status as Python reports it: a returncode (negative for a signal)."""
    script = _shell_for(code)
    if kind == "run":
        return subprocess.run(["sh", "-c", script]).returncode
    if kind == "shell":
        return subprocess.run(script, shell=True).returncode
    if kind == "check_call":
        try:
            subprocess.check_call(["sh", "-c", script])
            return 0
        except subprocess.CalledProcessError as e:
            return e.returncode
    if kind == "popen_wait":
        return subprocess.Popen(["sh", "-c", script]).wait()
    if kind == "communicate":
        p = subprocess.Popen(["sh", "-c", f"echo out; {script}"], stdout=subprocess.PIPE)
        out, _ = p.communicate()
        assert out == b"out\n", out
        return p.returncode
    if kind == "system":
        status = os.system(script)
        return os.waitstatus_to_exitcode(status)
    if kind == "fork":
        pid = os.fork()
        if pid == 0:
            _exit_with(code)
        _, status = os.waitpid(pid, 0)
        return os.waitstatus_to_exitcode(status)
    if kind in ("mp_fork", "mp_spawn"):
        ctx = multiprocessing.get_context(kind[3:])
        p = ctx.Process(target=_exit_with, args=(code,))
        p.start()
        p.join()
        return p.exitcode
    raise ValueError(kind)


# A child started while the module imports the app (a migration check, say).
IMPORT_STATUS = subprocess.run(["sh", "-c", "exit 7"]).returncode

if os.environ.get("NGX_WSGI_TEST_MARKS"):
    # A directory made at import (a cache, an upload area), in the check as in the workers.
    os.makedirs(os.path.join(os.environ["NGX_WSGI_TEST_MARKS"], f"made-at-import-{os.getpid()}"))
# The title `ps` shows for the process now, which a child forked now (a multiprocessing pool's
# worker) keeps.
with open("/proc/self/cmdline", "rb") as _f:
    IMPORT_TITLE = _f.read().split(b"\0")[0].decode(errors="replace")

_thread_result = {}


def _thread_child():
    _thread_result["status"] = subprocess.run(["sh", "-c", "exit 9"]).returncode


_t = threading.Thread(target=_thread_child, name="child-starter")
_t.start()
_t.join()


def zombies():
    me = os.getpid()
    count = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] == "Z" and int(fields[1]) == me:
            count += 1
    return count


def _text(start_response, body, status="200 OK"):
    start_response(status, [("Content-Type", "text/plain")])
    return [body.encode()]


def stream(environ, start_response):
    """A server-sent event stream: a line, then one per gate tick, until the client goes."""
    name = environ["QUERY_STRING"] or "stream"
    start_response("200 OK", [("Content-Type", "text/event-stream")])

    def body():
        with _lock:
            _stats["streams_started"] += 1
        try:
            n = 0
            while True:
                yield f"data: {n}\n\n".encode()
                with _lock:
                    _stats["lines"] += 1
                n += 1
                # Blocked between lines the way SSE apps are (a queue, a pub/sub wait).
                _gate(name).wait(1.0)
        finally:
            with _lock:
                _stats["streams_closed"] += 1

    return body()


def application(environ, start_response):
    path = environ["PATH_INFO"]
    if path.startswith("/child/"):
        code = int(environ["QUERY_STRING"] or "0")
        return _text(start_response, str(child_status(path[len("/child/"):], code)))
    if path.startswith("/child_after_thread/"):
        return _text(start_response, child_after_thread(path[len("/child_after_thread/"):]))
    if path == "/import_child":
        return _text(start_response, str(IMPORT_STATUS))
    if path == "/umask":
        mask = os.umask(0)
        os.umask(mask)
        return _text(start_response, oct(mask))
    if path == "/import_title":
        return _text(start_response, IMPORT_TITLE)
    if path == "/thread_child":
        return _text(start_response, str(_thread_result.get("status")))
    if path == "/zombies":
        return _text(start_response, str(zombies()))
    if path == "/stream":
        return stream(environ, start_response)
    if path == "/block":
        # Holds its thread until the test opens the gate (or 60 s pass).
        _gate(environ["QUERY_STRING"]).wait(60)
        return _text(start_response, "unblocked")
    if path == "/open":
        _gate(environ["QUERY_STRING"]).set()
        return _text(start_response, "opened")
    if path == "/stats":
        with _lock:
            return _text(start_response, json.dumps(_stats))
    if path == "/system_background":
        # A program started without fork (os.system: posix_spawn) that outlives the request: the
        # pid of its background job, whose descriptors the test looks at.
        import tempfile
        fd, pid_file = tempfile.mkstemp()
        os.close(fd)
        try:
            os.system(f"sleep 60 > /dev/null 2>&1 < /dev/null & echo $! > {pid_file}")
            with open(pid_file) as f:
                return _text(start_response, f.read().strip())
        finally:
            os.unlink(pid_file)
    if path == "/spawn_masks":
        # The signal mask of a program started without fork (os.system, os.posix_spawnp).
        import tempfile
        masks = []
        for how in ("system", "posix_spawnp"):
            fd, out = tempfile.mkstemp()
            os.close(fd)
            try:
                if how == "system":
                    os.system(f"exec grep SigBlk /proc/self/status > {out}")
                else:
                    pid = os.posix_spawnp("grep", ["grep", "SigBlk", "/proc/self/status"], os.environ,
                                          file_actions=[(os.POSIX_SPAWN_OPEN, 1, out, os.O_WRONLY, 0)])
                    os.waitpid(pid, 0)
                with open(out) as f:
                    masks.append(f.read().split()[1])
            finally:
                os.unlink(out)
        return _text(start_response, " ".join(masks))
    if path == "/terminate_at_once":
        # Process.terminate() right after start(): the child may not have run a single
        # instruction of its own yet. From a thread where SIGTERM is unblocked, as
        # multiprocessing's resource tracker leaves the thread that started it.
        ctx = multiprocessing.get_context("fork")
        codes = []
        before = signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGINT, signal.SIGTERM])
        try:
            for _ in range(10):
                p = ctx.Process(target=time.sleep, args=(5,))
                p.start()
                p.terminate()
                p.join()
                codes.append(p.exitcode)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, before)
        return _text(start_response, json.dumps(codes))
    if path == "/system_env":
        # os.system's shell has the process's environment, os.putenv's changes included.
        import tempfile
        fd, out = tempfile.mkstemp()
        os.close(fd)
        try:
            os.putenv("NGX_WSGI_PUTENV", "seen")
            status = os.system(f'echo "$NGX_WSGI_PUTENV" > {out}; exit 3')
            with open(out) as f:
                return _text(start_response, f"{f.read().strip()} {os.waitstatus_to_exitcode(status)}")
        finally:
            os.unsetenv("NGX_WSGI_PUTENV")
            os.unlink(out)
    if path == "/unblock_sigterm":
        # What multiprocessing's resource tracker leaves in the thread that started it.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGINT, signal.SIGTERM])
        release = environ.get("QUERY_STRING")
        while release and not os.path.exists(release):
            time.sleep(0.01)
        return _text(start_response, str(threading.get_native_id()))
    if path == "/thread_sigblk":
        with open("/proc/thread-self/status") as f:
            blocked = next(line.split()[1] for line in f if line.startswith("SigBlk:"))
        return _text(start_response, f"{threading.get_native_id()} {blocked}")
    if path == "/fork_with_tempfile_lock_held":
        # Another thread is in tempfile's first lookup of its directory as this one forks.
        import tempfile
        tempfile.tempdir = None
        held, release = threading.Event(), threading.Event()

        def holder():
            with tempfile._once_lock:
                held.set()
                release.wait()

        t = threading.Thread(target=holder)
        t.start()
        held.wait()
        pid = os.fork()
        if pid == 0:
            tempfile.gettempdir()
            os._exit(0)
        release.set()
        t.join()
        for _ in range(1000):
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return _text(start_response, str(os.waitstatus_to_exitcode(status)))
            time.sleep(0.01)
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        return _text(start_response, "hung")
    if path == "/pid":
        return _text(start_response, str(os.getpid()))
    return _text(start_response, "ok")
