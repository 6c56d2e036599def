"""A Starlette app for the differential test against uvicorn."""
import asyncio
import contextlib
import json

from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route

DONE = []
ENDED = {}


@contextlib.asynccontextmanager
async def lifespan(app):
    yield {"greeting": "hello from lifespan"}


async def index(request):
    return PlainTextResponse("index")


async def hello(request):
    return JSONResponse({"name": request.path_params["name"], "q": request.query_params.get("q"),
                         "url": str(request.url), "for": str(request.url_for("hello", name="x")),
                         "root_path": request.scope["root_path"]})


async def echo(request):
    ctype = request.headers.get("content-type", "")
    if ctype.startswith("application/x-www-form-urlencoded"):
        form = await request.form()
        return JSONResponse(dict(form))
    if ctype == "application/json":
        return JSONResponse({"json": await request.json()})
    body = await request.body()
    return Response(body, media_type="application/octet-stream", headers={"x-length": str(len(body))})


async def redirect(request):
    return RedirectResponse(url="/hello/there")


async def cookies(request):
    response = JSONResponse(dict(request.cookies))
    response.set_cookie("out", "1")
    response.set_cookie("other", "2", httponly=True)
    return response


async def teapot(request):
    return PlainTextResponse("short and stout", status_code=418)


async def stream(request):
    async def pieces():
        for i in range(5):
            yield b"%d %s\n" % (i, request.url.path.encode())
    return StreamingResponse(pieces(), media_type="text/plain")


async def feed(request):
    # An event stream that waits long between events (a pub/sub subscription): the generator
    # must end when its client goes, not at the next event.
    key = request.query_params["key"]

    async def events():
        try:
            yield b"data: first\n\n"
            await asyncio.sleep(3600)
            yield b"data: late\n\n"
        finally:
            ENDED[key] = True
    return StreamingResponse(events(), media_type="text/event-stream")


async def ended(request):
    return JSONResponse(ENDED.get(request.query_params["key"], False))


async def state(request):
    return PlainTextResponse(request.state.greeting)


async def background(request):
    return PlainTextResponse("queued", background=BackgroundTask(DONE.append, 1))


async def file(request):
    # Under the module FileResponse uses http.response.pathsend (nginx sends the file); uvicorn
    # offers no such extension, so Starlette streams it there: the same bytes either way.
    return FileResponse(__file__, media_type="text/x-python")


async def empty(request):
    return Response(status_code=204)


sub = Starlette(routes=[Route("/where", lambda r: PlainTextResponse(r.url.path + " " + r.scope["root_path"]))])

app = Starlette(
    routes=[
        Route("/", index),
        Route("/hello/{name}", hello, name="hello"),
        Route("/echo", echo, methods=["POST", "PUT"]),
        Route("/redirect", redirect),
        Route("/cookies", cookies),
        Route("/teapot", teapot),
        Route("/stream", stream),
        Route("/state", state),
        Route("/feed", feed),
        Route("/ended", ended),
        Route("/background", background),
        Route("/empty", empty),
        Route("/file", file),
        Mount("/sub", app=sub),
    ],
    lifespan=lifespan,
)
