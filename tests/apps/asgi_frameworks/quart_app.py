"""A Quart app (Flask's API on ASGI) for the differential test against uvicorn."""
import asyncio

from quart import Quart, jsonify, make_response, redirect, request, send_file, url_for

app = Quart(__name__)


@app.before_serving
async def startup():
    app.config["GREETING"] = "hello from before_serving"


@app.route("/")
async def index():
    return "index"


@app.route("/hello/<name>")
async def hello(name):
    return jsonify(name=name, q=request.args.get("q"), url=request.url, path=request.path,
                   root_path=request.root_path, for_=url_for("hello", name="x", _external=True))


@app.route("/echo", methods=["POST", "PUT"])
async def echo():
    if request.mimetype == "application/x-www-form-urlencoded":
        return jsonify(form=(await request.form).to_dict())
    if request.is_json:
        return jsonify(json=await request.get_json())
    body = await request.get_data()
    return body[:64], 200, {"x-length": str(len(body)), "content-type": "application/octet-stream"}


@app.route("/redirect")
async def go():
    return redirect(url_for("hello", name="there"))


@app.route("/cookies")
async def cookies():
    response = await make_response(jsonify(dict(request.cookies)))
    response.set_cookie("out", "1")
    response.set_cookie("other", "2", httponly=True)
    return response


@app.route("/teapot")
async def teapot():
    return "short and stout", 418


@app.route("/stream")
async def stream():
    path = request.path

    async def pieces():
        for i in range(5):
            await asyncio.sleep(0)
            yield f"{i} {path}\n".encode()
    return pieces(), 200, {"content-type": "text/plain"}


@app.route("/state")
async def state():
    return app.config["GREETING"]


@app.route("/file")
async def file():
    return await send_file(__file__, mimetype="text/x-python")
