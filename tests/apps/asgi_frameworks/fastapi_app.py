"""A FastAPI app for the differential test against uvicorn."""
import contextlib

from fastapi import FastAPI, Form, Header, HTTPException, Request
from fastapi.responses import PlainTextResponse, RedirectResponse, StreamingResponse
from pydantic import BaseModel


@contextlib.asynccontextmanager
async def lifespan(app):
    app.state.started = True
    yield


app = FastAPI(lifespan=lifespan)


class Item(BaseModel):
    name: str
    price: float
    tags: list[str] = []


@app.get("/")
async def index():
    return {"hello": "world"}


@app.get("/hello/{name}")
async def hello(name: str, request: Request, q: str | None = None):
    return {"name": name, "q": q, "url": str(request.url), "for": str(request.url_for("hello", name="x"))}


@app.post("/items")
async def create(item: Item):
    return {"item": item.model_dump(), "total": item.price * 2}


@app.post("/form")
async def form(a: str = Form(), b: str = Form()):
    return {"a": a, "b": b}


@app.put("/raw")
async def raw(request: Request):
    body = await request.body()
    return PlainTextResponse(str(len(body)))


@app.get("/header")
async def header(x_token: str = Header()):
    return {"token": x_token}


@app.get("/missing")
async def missing():
    raise HTTPException(status_code=404, detail="no such thing")


@app.get("/redirect")
async def redirect():
    return RedirectResponse("/hello/there")


@app.get("/stream")
async def stream():
    async def pieces():
        for i in range(5):
            yield f"{i}\n"
    return StreamingResponse(pieces(), media_type="text/plain")


@app.get("/started")
async def started(request: Request):
    return {"started": request.app.state.started}


@app.get("/sync")
def sync_route():
    return {"ran": "in a thread"}
