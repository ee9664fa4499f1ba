"""A served model behind the one runner interface: `stl-bench eval http://HOST:PORT ...`.

The harness hands every runner the same normalised float batches; this runner sends
them, as float32 `.npy` bodies, to the server's `POST /v1/predict?logits=1` and reads the
class logits back (JSON floats round-trip float32 exactly). The served model therefore
scores exactly the tensors an in-process evaluation scores, through the deployment's
backend, precision and batching: a deployment's accuracy is measured as served.
"""
from __future__ import annotations

import http.client
import json
import logging
from typing import Any
from urllib.parse import urlsplit

import torch

from stl_bench.deploy.runner import Prediction, Runner, RunnerInfo
from stl_bench.errors import StlBenchError
from stl_bench.serve.protocol import MODEL, NPY, PREDICT, error_from_json, to_npy

log = logging.getLogger(__name__)


class HttpRunner(Runner):
    """Talks to one `stl-bench serve` endpoint over a kept-alive HTTP connection."""

    def __init__(self, url: str, timeout_s: float = 600.0) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        parts = urlsplit(self.url)
        self._conn_args = (parts.hostname or "127.0.0.1", parts.port or (443 if parts.scheme == "https" else 80))
        self._https = parts.scheme == "https"
        self._conn: http.client.HTTPConnection | None = None
        self.device = torch.device("cpu")

    @classmethod
    def open(cls, url: str, head: str = "auto", timeout_s: float = 600.0) -> "HttpRunner":
        """Connect and read `GET /v1/model`; the served head must be the one asked for."""
        runner = cls(url, timeout_s)
        status, text = runner._request("GET", MODEL)
        if status != 200:
            raise StlBenchError(f"{url}{MODEL} answered HTTP {status}: {error_from_json(status, text)}")
        card = json.loads(text)
        if head not in ("auto", card["head"]):
            raise StlBenchError(f"{url} serves the {card['head']} head, not {head}; evaluate with --head auto or "
                                f"restart stl-bench serve with --head {head}")
        runner._adopt(card)
        return runner

    def _adopt(self, card: dict[str, Any]) -> None:
        """The served model's description as this runner's `info`."""
        self.card = card
        self.max_batch = int(card.get("max_batch") or 32)
        data_config = dict(card["data_config"])
        data_config["input_size"] = tuple(data_config["input_size"])
        self.info = RunnerInfo(
            name=card["name"],
            backend=f"served:{card['backend']}",
            num_classes=int(card["num_classes"]),
            data_config=data_config,
            has_tokens=bool(card["has_tokens"]),
            head=card["head"],
            weights=f"{card.get('weights') or 'n/a'} served at {self.url}",
            class_names=card.get("class_names"),
            extra={"url": self.url, "checkpoint_sha256": card.get("checkpoint_sha256", ""),
                   "precision": card.get("precision"), "params": card.get("params")},
        )

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            kind = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
            self._conn = kind(*self._conn_args, timeout=self.timeout_s)
        return self._conn

    def _request(self, method: str, path: str, body: bytes | None = None,
                 headers: dict[str, str] | None = None) -> tuple[int, str]:
        """One request, retried once on a dropped keep-alive connection."""
        for attempt in (1, 2):
            conn = self._connection()
            try:
                conn.request(method, path, body=body, headers=headers or {})
                resp = conn.getresponse()
                return resp.status, resp.read().decode("utf-8", "replace")
            except (ConnectionError, http.client.HTTPException, OSError) as exc:
                conn.close()
                self._conn = None
                if attempt == 2:
                    raise StlBenchError(f"cannot reach {self.url} ({type(exc).__name__}: {exc}); is "
                                        "`stl-bench serve` running there?") from None
        raise AssertionError("unreachable")

    def predict(self, images: torch.Tensor) -> Prediction:
        chunks = [self._predict_chunk(part) for part in images.split(self.max_batch)]
        return Prediction(torch.cat(chunks) if len(chunks) > 1 else chunks[0])

    def _predict_chunk(self, images: torch.Tensor) -> torch.Tensor:
        status, text = self._request("POST", f"{PREDICT}?logits=1&top_k=1", to_npy(images),
                                     {"Content-Type": NPY})
        if status != 200:
            raise StlBenchError(f"{self.url}{PREDICT} answered HTTP {status}: {error_from_json(status, text)}")
        body = json.loads(text)
        return torch.tensor([p["logits"] for p in body["predictions"]], dtype=torch.float32)
