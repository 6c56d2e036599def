"""A FastAPI app mounted under a prefix, as NGINX Unit's FastAPI how-to runs it."""
import asyncio

from fastapi import FastAPI, Request

app = FastAPI()


@app.get("/items/{item_id}")
async def item(item_id: int, request: Request):
    return {"item": item_id, "path": request.scope["path"], "root_path": request.scope["root_path"],
            "url": str(request.url)}


@app.post("/echo")
async def echo(request: Request):
    return {"body": (await request.body()).decode()}


@app.get("/slow")
async def slow():
    await asyncio.sleep(30)
    return {"slept": True}
