"""The `back` target (Unit's default callable name, `application`)."""
import json


def application(environ, start_response):
    body = json.dumps({"target": "back", "script_name": environ["SCRIPT_NAME"],
                       "path_info": environ["PATH_INFO"], "query": environ["QUERY_STRING"],
                       "method": environ["REQUEST_METHOD"],
                       "body": environ["wsgi.input"].read().decode()}).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body]
