"""The bare stack: a FastAPI app on the same uvicorn, answering galmet's routes with a fixed
prediction JSON and doing nothing else. What a cached answer costs at best; run by
``bench/serve.py``:

    python bench/bare_app.py --port P --body ANSWER.json

Each route parses its request as galmet's does (query strings, a JSON body through a
pydantic model, a multipart upload read whole) and returns the stored answer as a dict,
which FastAPI encodes.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import uvicorn
from fastapi import FastAPI, UploadFile
from pydantic import BaseModel


class Coordinates(BaseModel):
    ra: float | str
    dec: float | str


def create_app(answer: dict) -> FastAPI:
    app = FastAPI()

    @app.get("/api/v1/predict")
    async def predict_get(ra: str, dec: str) -> dict:
        return answer

    @app.post("/api/v1/predict")
    async def predict_post(body: Coordinates) -> dict:
        return answer

    @app.post("/api/v1/predict/image")
    async def predict_image(file: UploadFile) -> dict:
        await file.read()
        return answer

    @app.get("/api/v1/healthz")
    async def healthz() -> dict:
        return {"status": "ok"}

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--body", type=Path, required=True, help="the answer to return (JSON)")
    args = parser.parse_args()
    app = create_app(json.loads(args.body.read_text()))
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
