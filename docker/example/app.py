"""The example app of the Docker image: Flask behind nothing but nginx."""
from flask import Flask, jsonify, request

app = Flask(__name__)


@app.route("/")
def index():
    return jsonify(hello="world", served_by="nginx + ngx_http_wsgi_module", protocol=request.environ["SERVER_PROTOCOL"])
