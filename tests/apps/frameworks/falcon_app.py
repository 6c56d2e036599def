import falcon


class Index:
    def on_get(self, req, resp):
        resp.content_type = falcon.MEDIA_TEXT
        resp.text = "Hello from Falcon"


class Hello:
    def on_get(self, req, resp, name):
        resp.media = {"name": name, "q": req.get_param("q"), "path": req.path, "url": req.url}


class Echo:
    def on_post(self, req, resp):
        data = req.bounded_stream.read().decode()
        resp.media = {"data": data, "content_type": req.content_type}

    on_put = on_post


class Redirect:
    def on_get(self, req, resp):
        raise falcon.HTTPFound("/hello/there")


class Cookies:
    def on_get(self, req, resp):
        resp.set_cookie("a", "1", secure=False)
        resp.set_cookie("b", "2", secure=False, http_only=True)
        resp.text = "cookies set"


class Teapot:
    def on_get(self, req, resp):
        raise falcon.HTTPError(falcon.HTTP_418)


class Stream:
    def on_get(self, req, resp):
        resp.content_type = falcon.MEDIA_TEXT
        resp.stream = (f"{i} {req.path}\n".encode() for i in range(5))


application = falcon.App()
application.add_route("/", Index())
application.add_route("/hello/{name}", Hello())
application.add_route("/echo", Echo())
application.add_route("/redirect", Redirect())
application.add_route("/cookies", Cookies())
application.add_route("/teapot", Teapot())
application.add_route("/stream", Stream())
