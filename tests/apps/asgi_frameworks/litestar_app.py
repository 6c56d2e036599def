"""A Litestar app for the differential test against uvicorn."""
import asyncio
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from litestar import Litestar, Request, Response, get, post, put
from litestar.datastructures import State
from litestar.enums import RequestEncodingType
from litestar.exceptions import NotAuthorizedException
from litestar.params import Body
from litestar.response import File, Redirect, Stream


@asynccontextmanager
async def lifespan(app):
    app.state.greeting = "hello from lifespan"
    yield


@dataclass
class Item:
    name: str
    price: float
    tags: list[str]


@get("/")
async def index() -> str:
    return "index"


@get("/hello/{name:str}")
async def hello(request: Request, name: str, q: str | None = None) -> dict:
    return {"name": name, "q": q, "url": str(request.url), "path": request.url.path,
            "root_path": request.scope.get("root_path", "")}


@post("/items")
async def create_item(data: Item) -> Item:
    return Item(name=data.name.upper(), price=data.price * 2, tags=sorted(data.tags))


@post("/form")
async def form(data: dict = Body(media_type=RequestEncodingType.URL_ENCODED)) -> dict:
    return {"form": data}


@put("/raw")
async def raw(request: Request) -> Response:
    body = await request.body()
    return Response(content=body[:64], media_type="application/octet-stream",
                    headers={"x-length": str(len(body))})


@get("/redirect")
async def redirect() -> Redirect:
    return Redirect(path="/hello/there")


@get("/cookies")
async def cookies(request: Request) -> Response:
    response = Response(content=dict(request.cookies))
    response.set_cookie("out", "1")
    response.set_cookie("other", "2", httponly=True)
    return response


@get("/teapot", status_code=418)
async def teapot() -> str:
    return "short and stout"


@get("/secret")
async def secret(request: Request) -> str:
    if request.headers.get("x-token") != "secret":
        raise NotAuthorizedException("no token")
    return "welcome"


@get("/stream")
async def stream(request: Request) -> Stream:
    async def pieces():
        for i in range(5):
            await asyncio.sleep(0)
            yield f"{i} {request.url.path}\n"
    return Stream(pieces(), media_type="text/plain")


@get("/state")
async def state(state: State) -> str:
    return state.greeting


@get("/file")
async def file() -> File:
    return File(path=Path(__file__), media_type="text/x-python", content_disposition_type="inline")


@get("/sync", sync_to_thread=True)
def sync() -> dict:
    return {"sync": True}


app = Litestar(route_handlers=[index, hello, create_item, form, raw, redirect, cookies, teapot, secret,
                               stream, state, file, sync], lifespan=[lifespan])
