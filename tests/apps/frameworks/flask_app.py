from flask import Flask, Response, abort, jsonify, make_response, redirect, request, stream_with_context

app = Flask(__name__)


@app.route("/")
def index():
    return "Hello from Flask"


@app.route("/hello/<name>")
def hello(name):
    return jsonify(name=name, q=request.args.get("q"), path=request.path, url=request.url,
                   remote=request.remote_addr, scheme=request.scheme)


@app.route("/echo", methods=["POST", "PUT"])
def echo():
    return jsonify(form=request.form.to_dict(), json=request.get_json(silent=True),
                   data=request.get_data(as_text=True), content_type=request.content_type)


@app.route("/redirect")
def go():
    return redirect("/hello/there")


@app.route("/cookies")
def cookies():
    resp = make_response("cookies set")
    resp.set_cookie("a", "1")
    resp.set_cookie("b", "2", httponly=True)
    return resp


@app.route("/teapot")
def teapot():
    abort(418)


@app.route("/stream")
def stream():
    def generate():
        for i in range(5):
            yield f"{i} {request.path}\n"
    return Response(stream_with_context(generate()), mimetype="text/plain")


application = app
