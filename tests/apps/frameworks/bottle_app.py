import bottle

app = bottle.Bottle()


@app.route("/")
def index():
    return "Hello from Bottle"


@app.route("/hello/<name>")
def hello(name):
    return {"name": name, "q": bottle.request.query.getunicode("q"), "path": bottle.request.path,
            "url": bottle.request.url}


@app.route("/echo", method=["POST", "PUT"])
def echo():
    return {"form": dict(bottle.request.forms.decode()), "json": bottle.request.json,
            "data": bottle.request.body.read().decode(), "content_type": bottle.request.content_type}


@app.route("/redirect")
def go():
    bottle.redirect("/hello/there")


@app.route("/cookies")
def cookies():
    bottle.response.set_cookie("a", "1")
    bottle.response.set_cookie("b", "2", httponly=True)
    return "cookies set"


@app.route("/teapot")
def teapot():
    bottle.abort(418, "I'm a teapot")


@app.route("/stream")
def stream():
    bottle.response.content_type = "text/plain"
    path = bottle.request.path
    return (f"{i} {path}\n" for i in range(5))


application = app
