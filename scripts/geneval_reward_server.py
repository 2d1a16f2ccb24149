#!/usr/bin/env python
"""Serve GenEval rewards over maskfocus's loopback JSON protocol from GenEval's own (old) environment.

The official GenEval evaluator needs Python 3.8, mmcv and mmdet 2.x, an environment where maskfocus (Python >= 3.10,
torch >= 2) cannot be installed. This launcher needs only the standard library, NumPy and Pillow (Python 3.8 syntax),
and speaks the protocol of `maskfocus.rl.reward_server`, so training reaches it with `RemoteReward(url)`:

    POST /   {"images": [base64 PNG, ...], "prompts": [str, ...], "metadata": [GenEval record, ...]}
          -> 200 {"scores": [float, ...], "info": {"mean", "per_tag", "accuracy", "images", "correct"}}
          -> 400 / 404 / 411 / 413 / 500 {"error": "..."}
    GET /health -> 200 {"ok": true, "status": "ok", "reward": NAME, "max_images", "max_side", "max_bytes"}

The evaluator is `--evaluator module:function`, a callable (image uint8 HxWx3, metadata dict) -> GenEval result
record (a dict with at least `correct`; `--kind partial` reads `score`, `--kind strict` reads `strict_correct`).
A ValueError it raises is the client's fault (400); anything else is 500. nbs/explanations/geneval_hf.md shows the
adapter for GenEval's evaluation/evaluate_images.py. It binds to loopback only: there is no authentication.

    python scripts/geneval_reward_server.py --evaluator geneval_adapter:judge --port 18086
"""

from __future__ import annotations

import argparse
import base64
import binascii
import importlib
import io
import ipaddress
import json
import math
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np

FIELDS = {"binary": "correct", "partial": "score", "strict": "strict_correct"}


class BadRequest(ValueError):
    "A malformed request (answered 400, or `status`)."

    def __init__(self, msg, status=400):
        super().__init__(msg)
        self.status = status


def is_loopback(host):
    "True for localhost and loopback addresses."
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def load_evaluator(spec):
    "The callable that `module:function` names."
    mod, sep, attr = spec.partition(":")
    if not sep or not mod or not attr:
        raise SystemExit("--evaluator must be module:function, got {!r}".format(spec))
    fn = importlib.import_module(mod)
    for part in attr.split("."):
        fn = getattr(fn, part)
    return fn


def decode_image(s, i, max_side):
    "uint8 HxWx3 from a base64 PNG; errors name images[i]."
    from PIL import Image

    try:
        raw = base64.b64decode(s, validate=True)
    except (binascii.Error, ValueError, TypeError) as e:
        raise BadRequest("images[{}]: not valid base64 ({})".format(i, e))
    if len(raw) < 24 or raw[:8] != b"\x89PNG\r\n\x1a\n" or raw[12:16] != b"IHDR":
        raise BadRequest("images[{}]: not a PNG image (no PNG header)".format(i))
    w, h = int.from_bytes(raw[16:20], "big"), int.from_bytes(raw[20:24], "big")
    if max(w, h) > max_side:
        raise BadRequest("images[{}]: {}x{} is larger than the limit of {} a side".format(i, w, h, max_side), 413)
    try:
        with Image.open(io.BytesIO(raw), formats=["PNG"]) as im:
            return np.asarray(im.convert("RGB"))
    except Exception as e:
        raise BadRequest("images[{}]: not a PNG image ({}: {})".format(i, type(e).__name__, e))


def parse_request(body, max_images, max_side):
    "(images, prompts, metadata) of a request body."
    try:
        d = json.loads(body)
    except (ValueError, RecursionError) as e:
        raise BadRequest("body: not valid JSON ({})".format(str(e)[:200]))
    if not isinstance(d, dict):
        raise BadRequest("body: expected a JSON object")
    unknown = sorted(set(d) - {"images", "prompts", "metadata"})
    if unknown:
        raise BadRequest("{}: unknown key; expected images, prompts, metadata".format(unknown[0]))
    ims, prompts, metas = d.get("images"), d.get("prompts"), d.get("metadata")
    if not isinstance(ims, list) or not all(isinstance(s, str) for s in ims):
        raise BadRequest("images: expected a list of base64 PNG strings")
    if len(ims) > max_images:
        raise BadRequest("images: {} images, more than the limit of {}".format(len(ims), max_images), 413)
    if not isinstance(prompts, list) or len(prompts) != len(ims) or not all(isinstance(p, str) for p in prompts):
        raise BadRequest("prompts: expected one string per image")
    if not isinstance(metas, list) or len(metas) != len(ims) or not all(isinstance(m, dict) for m in metas):
        raise BadRequest("metadata: GenEval needs one metadata object per image")
    return [decode_image(s, i, max_side) for i, s in enumerate(ims)], prompts, metas


def score_batch(evaluator, field, images, metas):
    "(scores, info) of a batch, as maskfocus's rewards report them."
    recs = []
    for i, (x, m) in enumerate(zip(images, metas)):
        try:
            r = evaluator(x, m)
        except ValueError as e:
            raise BadRequest("metadata[{}]: {}".format(i, e))
        if not isinstance(r, dict) or field not in r:
            raise RuntimeError("the evaluator's record has no {!r} field".format(field))
        recs.append(r)
    scores = [float(r[field]) for r in recs]
    correct = [float(bool(r.get("correct"))) for r in recs]
    tags = {}
    for s, m in zip(scores, metas):
        tags.setdefault(str(m.get("tag")), []).append(s)
    info = {
        "mean": sum(scores) / len(scores) if scores else None,
        "per_tag": {t: sum(v) / len(v) for t, v in tags.items()},
        "accuracy": sum(correct) / len(correct) if correct else None,
        "images": len(recs),
        "correct": int(sum(correct)),
    }
    return scores, info


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "geneval-reward/1"

    def send_json(self, status, obj):
        body = json.dumps(obj, allow_nan=False).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):
        if self.server.verbose:
            BaseHTTPRequestHandler.log_message(self, fmt, *args)

    def do_GET(self):
        s = self.server
        if self.path.split("?")[0].rstrip("/") == "/health":
            lim = {"max_images": s.max_images, "max_side": s.max_side, "max_bytes": s.max_bytes}
            self.send_json(200, dict(ok=True, status="ok", reward=s.name, **lim))
        else:
            self.send_json(404, {"error": "unknown path {!r}: POST / to score, GET /health".format(self.path)})

    def do_POST(self):
        s, n = self.server, self.headers.get("Content-Length")
        if n is None or not n.isdigit():
            self.close_connection = True
            return self.send_json(411, {"error": "a Content-Length header is required"})
        n = int(n)
        if self.path not in ("/", "") or n > s.max_bytes:
            self.close_connection = True
            if n <= 64 << 20:
                self.rfile.read(n)  # drop the body: closing on unread data resets the connection
            if self.path not in ("/", ""):
                return self.send_json(404, {"error": "unknown path {!r}: POST / to score".format(self.path)})
            return self.send_json(413, {"error": "request of {} bytes exceeds the limit of {}".format(n, s.max_bytes)})
        body = self.rfile.read(n)
        try:
            with s.lock:  # one batch at a time on the evaluator's device
                images, _, metas = parse_request(body, s.max_images, s.max_side)
                scores, info = score_batch(s.evaluator, s.field, images, metas)
            if not all(math.isfinite(v) for v in scores):
                raise RuntimeError("the evaluator returned non-finite scores")
        except BadRequest as e:
            return self.send_json(e.status, {"error": str(e)})
        except Exception as e:
            return self.send_json(500, {"error": "{}: {}".format(type(e).__name__, e)})
        self.send_json(200, {"scores": scores, "info": info})


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def server_bind(self):  # no reverse DNS lookup of the host
        import socketserver

        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), self.server_address[1]


def make_server(evaluator, host="127.0.0.1", port=0, kind="binary", max_images=64, max_side=1024, name=None):
    "A loopback server for `evaluator` (not yet serving); its URL is `server.url`."
    import socket

    if not is_loopback(host):
        raise SystemExit("refusing to serve on non-loopback address {!r}: there is no authentication".format(host))
    if kind not in FIELDS:
        raise SystemExit("--kind must be one of {}".format(", ".join(FIELDS)))
    if ":" in host:
        Server.address_family = socket.AF_INET6
    s = Server((host, port), Handler)
    s.evaluator, s.field, s.lock, s.verbose = evaluator, FIELDS[kind], threading.Lock(), False
    s.max_images, s.max_side, s.name = int(max_images), int(max_side), name or "geneval"
    s.max_bytes = s.max_images * (4 * s.max_side**2 + (1 << 16)) + (1 << 20)
    h, p = s.server_address[:2]
    s.url = "http://{}:{}/".format("[{}]".format(h) if ":" in h else h, p)
    return s


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--evaluator", required=True, help="module:function, (image HxWx3 uint8, metadata) -> record")
    p.add_argument("--host", default="127.0.0.1", help="loopback address to bind")
    p.add_argument("--port", type=int, default=0, help="port (0: a free one)")
    p.add_argument("--kind", default="binary", choices=sorted(FIELDS), help="record field that is the score")
    p.add_argument("--max-images", type=int, default=64, help="most images in one request")
    p.add_argument("--max-side", type=int, default=1024, help="largest image width or height")
    p.add_argument("--name", default="geneval", help="what /health calls the reward")
    p.add_argument("--verbose", action="store_true", help="log every request on stderr")
    a = p.parse_args(argv)
    s = make_server(load_evaluator(a.evaluator), a.host, a.port, a.kind, a.max_images, a.max_side, a.name)
    s.verbose = a.verbose
    lim = {"max_images": s.max_images, "max_side": s.max_side, "max_bytes": s.max_bytes}
    print(json.dumps(dict(url=s.url, reward=s.name, kind=a.kind, **lim)), flush=True)
    try:
        s.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        s.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
