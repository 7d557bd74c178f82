"""A Flask app built by an application factory, the layout Flask's docs recommend."""

from __future__ import annotations

from typing import Any

from flask import Flask, request


def create_app(name: str = "factory") -> Flask:
    app = Flask(__name__)

    @app.route("/")
    def index() -> dict[str, Any]:
        return {"made_by": name, "args": request.args.to_dict()}

    return app
