"""A process pool started by a request, in a file whose name is not a Python identifier: the
pool's children (spawn, forkserver) import the app's module again, by its name, to find the
function they are sent."""
import multiprocessing


def square(n):
    return n * n


def application(environ, start_response):
    method = environ.get("QUERY_STRING") or "spawn"
    if method == "former":
        import pool_of_children
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [f"{pool_of_children.__name__} {pool_of_children.square is square}".encode()]
    with multiprocessing.get_context(method).Pool(1) as pool:
        result = pool.apply_async(square, (7,)).get(timeout=30)
    body = f"{__name__} {result}".encode()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [body]
