"""A small Flask app for the WSGI integration tests, served through the validator."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from wsgiref.validate import WSGIWarning, validator

from flask import Flask, Response, abort, jsonify, request, stream_with_context, url_for

warnings.simplefilter("error", WSGIWarning)

flask_app = Flask(__name__)


@flask_app.get("/")
def index() -> str:
    return "Hello from Flask"


@flask_app.get("/hello/<name>")
def hello(name: str) -> Response:
    return jsonify(
        name=name,
        args=request.args.to_dict(flat=False),
        url=url_for("hello", name=name, _external=True),
        script_root=request.script_root,
        path=request.path,
        multi=request.headers.get("X-Multi"),
    )


@flask_app.post("/json")
def echo_json() -> Response:
    data = request.get_json()
    return jsonify(received=data, length=request.content_length)


@flask_app.post("/form")
def form() -> Response:
    return jsonify(form=request.form.to_dict(), files=sorted(request.files))


@flask_app.get("/stream")
def stream() -> Response:
    def gen() -> Iterator[str]:
        for i in range(int(request.args.get("n", "5"))):
            yield "line %d\n" % i

    return Response(stream_with_context(gen()), mimetype="text/plain")


@flask_app.get("/missing")
def missing() -> str:
    abort(404)


@flask_app.get("/crash")
def crash() -> str:
    raise RuntimeError("flask view failed")


application = validator(flask_app.wsgi_app)
app = application
