"""A burst's memory: each /hold request fills some MB with objects too large for Python's own
allocator (glibc's malloc has them), waits while the burst's other requests hold theirs, and
frees them; /arenas counts the heaps (arenas) glibc's malloc has made in the worker."""

import ctypes
import time

libc = ctypes.CDLL(None)
libc.open_memstream.restype = ctypes.c_void_p
libc.open_memstream.argtypes = [ctypes.POINTER(ctypes.c_char_p), ctypes.POINTER(ctypes.c_size_t)]
libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
libc.fclose.argtypes = [ctypes.c_void_p]
libc.free.argtypes = [ctypes.c_void_p]


def resident_kib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def heaps():
    text = ctypes.c_char_p()
    size = ctypes.c_size_t()
    stream = libc.open_memstream(ctypes.byref(text), ctypes.byref(size))
    libc.malloc_info(0, stream)
    libc.fclose(stream)
    xml = ctypes.string_at(text, size.value)
    libc.free(text)
    return xml.count(b"<heap nr=")


def application(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/hold":
        # 4 MB in 2 KiB pieces, each written (so resident).
        held = [b"%d" % i * 512 for i in range(2000)]
        time.sleep(float(environ.get("QUERY_STRING") or "0.5"))
        body = b"%d %d" % (resident_kib(), len(held))
    elif path == "/arenas":
        body = b"%d" % heaps()
    else:
        body = b"%d" % resident_kib()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [body]
