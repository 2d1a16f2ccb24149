"""The reward server under abuse, on loopback (issue 19): a decompression bomb, too many images, malformed bodies,
a slow client, 200 half-open connections and clients that hang up mid-request; then it must still answer.

Most tests talk to one `maskfocus serve-reward --reward judge` process, so its memory (VmHWM, VmRSS) and thread
count can be read from /proc. Run with `-s` to see the measured figures."""

import base64
import json
import os
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from maskfocus.rl.reward_server import RemoteReward, RewardServer, encode_images, serve_reward
from maskfocus.toy import world
from maskfocus.toy.rewards import JudgeReward

ROOT = Path(__file__).resolve().parents[1]
POOL, TIMEOUT, MAX_IMAGES = 8, 1.0, 16  # the served command's --max-connections, --timeout, --max-images
MB = 1 << 20
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))

pytestmark = pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads /proc/<pid>/status")


def proc_status(pid: int) -> dict[str, int]:
    "VmHWM and VmRSS (bytes) and Threads of a process, from /proc/<pid>/status."
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        k, _, v = line.partition(":")
        if k in ("VmHWM", "VmRSS"):
            out[k] = int(v.split()[0]) * 1024
        elif k == "Threads":
            out[k] = int(v)
    return out


def png_bomb(side: int = 10000) -> bytes:
    "A valid side x side RGB PNG of zeros: about 300 KB that decode to side*side*3 bytes (300 MB)."

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows, z = bytes((1 + 3 * side) * 100), zlib.compressobj(9)  # 100 rows (filter byte + pixels) at a time
    idat = b"".join(z.compress(rows) for _ in range(side // 100)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def request(url: str, body: bytes | None = None, timeout: float = 30) -> tuple[int, dict]:
    "(status, JSON answer) of a GET (body None) or POST."
    req = urllib.request.Request(url, data=body, method="GET" if body is None else "POST")
    try:
        with OPENER.open(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def raw_exchange(addr, data: bytes, timeout: float = 10) -> bytes:
    "Send raw bytes on a new connection; everything answered until the server closes it."
    with socket.create_connection(addr, timeout=timeout) as s:
        s.sendall(data)
        out = b""
        while chunk := s.recv(1 << 16):
            out += chunk
        return out


def hang_up(s: socket.socket):
    "Close with a reset (SO_LINGER 0), as a killed client does."
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()


@pytest.fixture(scope="module")
def batch():
    O = world.Obj
    metas = [
        world.make_metadata("single_object", ["circle"]),
        world.make_metadata("colors", ["square"], colors=["red"]),
    ]
    images = np.stack([world.render((O("circle", "red", 2, 2),)), world.render((O("square", "blue", 1, 1),))])
    return images, [m["prompt"] for m in metas], metas


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    "`maskfocus serve-reward --reward judge` in its own process, stderr in a file; the module's tests share it."
    err = tmp_path_factory.mktemp("serve") / "stderr.txt"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    args = ["--reward", "judge", "--port", "0", "--timeout", str(TIMEOUT), "--max-connections", str(POOL)]
    cmd = [sys.executable, "-c", "import sys; from maskfocus.cli import main; sys.exit(main())", "serve-reward"]
    with open(err, "w") as f:
        proc = subprocess.Popen(
            cmd + args + ["--max-images", str(MAX_IMAGES)], stdout=subprocess.PIPE, stderr=f, text=True, env=env
        )
    try:
        started = json.loads(proc.stdout.readline() or "null")
        assert started, f"serve-reward did not start: {err.read_text()}"
        host, port = started["url"][len("http://") :].rstrip("/").rsplit(":", 1)
        yield SimpleNamespace(proc=proc, url=started["url"], addr=(host, int(port)), stderr=err, started=started)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_serve_reward_command_answers(served, batch):
    "The command prints its URL and limits, answers /health and scores exactly as the local judge."
    assert served.started["max_images"] == MAX_IMAGES and served.started["max_bytes"] < 100 * MB
    status, health = request(served.url + "health")
    assert status == 200 and health["ok"] is True and health["reward"] == "judge", health
    scores, info = RemoteReward(served.url, timeout=30)(*batch)
    assert scores.tolist() == JudgeReward()(*batch)[0].tolist() == [1.0, 0.0]


def test_decompression_bomb_refused_in_bounded_memory(served, batch):
    "10000x10000 PNGs (300 MB each decoded) are refused from their header: the server's peak memory barely moves."
    RemoteReward(served.url, timeout=30)(*batch)  # warm: every lazy import done
    idle = proc_status(served.proc.pid)
    one = base64.b64encode(png_bomb()).decode()
    for n in (1, 4):
        body = json.dumps({"images": [one] * n, "prompts": ["x"] * n}).encode()
        t = time.perf_counter()
        status, ans = request(served.url, body)
        assert status == 413 and "10000x10000" in ans["error"] and "images[0]" in ans["error"], ans
        print(f"\n{n} bomb(s), {len(body) / 1024:.0f} KB: HTTP {status} in {time.perf_counter() - t:.2f} s")
    after = proc_status(served.proc.pid)
    grew = after["VmHWM"] - idle["VmRSS"]
    print(
        f"server memory: idle RSS {idle['VmRSS'] / MB:.1f} MB, peak before {idle['VmHWM'] / MB:.1f} MB, "
        f"peak after the bombs {after['VmHWM'] / MB:.1f} MB: {grew / MB:.1f} MB above idle (bound 100 MB)"
    )
    assert grew < 100 * MB


def test_too_many_images_refused_before_decoding(served, batch):
    one = encode_images(batch[0][:1])
    body = json.dumps({"images": one * (MAX_IMAGES + 1), "prompts": ["x"] * (MAX_IMAGES + 1)}).encode()
    status, ans = request(served.url, body)
    assert status == 413 and "field 'images'" in ans["error"] and f"limit of {MAX_IMAGES}" in ans["error"], ans


def _bad_bodies(batch) -> list[bytes]:
    one, png = encode_images(batch[0][:1]), base64.b64decode(encode_images(batch[0][:1])[0])
    wide = encode_images(np.zeros((1, 1, 513, 3), np.uint8))  # wider than --max-side 512
    js = lambda d: json.dumps(d).encode()  # noqa: E731
    return [
        b"",
        b"{not json",
        b"\xff\xfe\x00 not utf-8",
        b'"a string"',
        b"[" * 100_000 + b"]" * 100_000,  # deeper than the JSON parser recurses
        b'{"images": ' + b"[" * 100_000 + b"]" * 100_000 + b', "prompts": []}',
        b'{"images": [], "prompts": [' + b"9" * 5000 + b"]}",  # an integer of too many digits
        js({"prompts": ["x"]}),
        js({"images": one}),
        js({"images": {"0": one[0]}, "prompts": ["x"]}),
        js({"images": [1], "prompts": ["x"]}),
        js({"images": ["%%%"], "prompts": ["x"]}),
        js({"images": [base64.b64encode(b"GIF89a" + bytes(40)).decode()], "prompts": ["x"]}),
        js({"images": [base64.b64encode(png[:60]).decode()], "prompts": ["x"]}),  # a PNG header, its data cut
        js({"images": wide, "prompts": ["x"]}),
        js({"images": one + encode_images(np.zeros((1, 4, 4, 3), np.uint8)), "prompts": ["x", "y"]}),
        js({"images": one, "prompts": "x"}),
        js({"images": one, "prompts": [7]}),
        js({"images": one, "prompts": ["x", "y"]}),
        js({"images": one, "prompts": ["x"], "metadata": "m"}),
        js({"images": one, "prompts": ["x"], "metadata": [3]}),
        js({"images": one, "prompts": ["x"], "metadata": [{"tag": "poses"}]}),
        js({"images": one, "prompts": ["x"], "pickle": 1}),
    ]


def test_every_malformed_request_is_4xx(served, batch):
    "Malformed bodies and requests: each a 4xx with a JSON error (400, 411, 413), none a 500, none a hang."
    statuses = []
    for body in _bad_bodies(batch):
        status, ans = request(served.url, body)
        assert 400 <= status < 500 and ans.get("error"), (status, ans, body[:80])
        statuses.append(status)
    for raw in [
        b"POST / HTTP/1.1\r\nHost: x\r\n\r\n",  # no Content-Length
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (served.started["max_bytes"] + 1),
        b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}",
        b"HELLO\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X: y\r\n" * 200 + b"\r\n",  # too many headers
    ]:
        head = raw_exchange(served.addr, raw).split(b"\r\n", 1)[0]
        status = int(head.split()[1])
        assert 400 <= status < 500, (head, raw[:60])
        statuses.append(status)
    print(f"\n{len(statuses)} malformed requests: statuses {sorted(set(statuses))}, all 4xx")


def test_slow_client_is_cut_off_and_others_are_served(served):
    "A client that stops mid-request is closed after the read timeout; meanwhile the server answers others."
    with socket.create_connection(served.addr, timeout=TIMEOUT + 10) as slow:
        slow.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{")
        t = time.perf_counter()
        assert request(served.url + "health", timeout=5)[0] == 200
        assert slow.recv(1 << 16) == b"", "closed without an answer"
        waited = time.perf_counter() - t
    print(f"\nslow client closed after {waited:.2f} s (timeout {TIMEOUT} s)")
    assert 0.5 * TIMEOUT <= waited < TIMEOUT + 5


def test_half_open_connections_hold_bounded_threads(served):
    "200 connections that never send: at most --max-connections threads, 503 for the rest, then it recovers."
    pid, base = served.proc.pid, proc_status(served.proc.pid)["Threads"]
    conns, peak = [], base
    for i in range(200):
        conns.append(socket.create_connection(served.addr, timeout=TIMEOUT + 10))
        if i % 20 == 0:
            peak = max(peak, proc_status(pid)["Threads"])
    peak = max(peak, proc_status(pid)["Threads"])
    while_full = request(served.url + "health", timeout=10)[0]
    answers = []
    for s in conns:
        out = b""
        while chunk := s.recv(1 << 16):
            out += chunk
        answers.append(out.split(b"\r\n", 1)[0])
        s.close()
    busy = sum(a.startswith(b"HTTP/1.1 503") for a in answers)
    t, status = time.perf_counter(), 0
    while status != 200 and time.perf_counter() - t < TIMEOUT + 10:
        status = request(served.url + "health", timeout=10)[0]
    after = proc_status(pid)["Threads"]
    print(
        f"\n200 half-open connections: threads {base} idle, {peak} at most (pool {POOL}); {busy} answered 503, "
        f"{answers.count(b'')} closed by the read timeout; /health while full: {while_full}; "
        f"recovered in {time.perf_counter() - t:.2f} s, threads after {after}"
    )
    assert peak <= base + POOL and while_full in (200, 503) and status == 200
    # each got a 503 at once or a thread until its read timeout (more than POOL of those if connecting took longer)
    assert busy > 0 and busy + answers.count(b"") == 200, set(answers)


@pytest.mark.parametrize("quiet", [True, False])
def test_disconnect_mid_request_logs_no_traceback(capfd, batch, quiet):
    "Clients that hang up (mid-body, before the answer, at once): nothing on stderr when quiet, else one-liners."

    def slow(images, prompts, metadata=None):
        time.sleep(0.3)
        return np.ones(len(images), np.float32), {}

    body = json.dumps({"images": encode_images(batch[0]), "prompts": batch[1]}).encode()
    head = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body)
    with serve_reward(slow, quiet=quiet, timeout=5)[0] as server:
        addr = server.server_address[:2]
        for data in (head + body[:10], head + body, b""):  # mid-body, before the answer, before a request
            s = socket.create_connection(addr, timeout=5)
            s.sendall(data)
            time.sleep(0.05)
            hang_up(s)
        time.sleep(0.8)
        assert request(server.url + "health")[0] == 200, "still serving"
    err = capfd.readouterr().err
    print(f"\nquiet={quiet}: stderr {err!r}")
    assert "Traceback" not in err
    assert err == "" if quiet else "reward server: connection from" in err


def test_default_limits_are_derived_not_a_gigabyte():
    "The body limit follows from max_images and max_side (about 70 MB by default), and Pillow's bomb limit is set."
    from PIL import Image

    with RewardServer(("127.0.0.1", 0), JudgeReward()) as s:
        assert s.max_bytes == 64 * (4 * 512 * 512 + (1 << 16)) + (1 << 20) < 100 * MB
        assert Image.MAX_IMAGE_PIXELS <= 2048 * 2048
    with RewardServer(("127.0.0.1", 0), JudgeReward(), max_images=4, max_side=64) as s:
        assert s.max_bytes == 4 * (4 * 64 * 64 + (1 << 16)) + (1 << 20)


def test_alive_at_the_end_and_stderr_clean(served, batch):
    "After all of the above the served command still scores, exits 0 on SIGTERM and wrote nothing on stderr."
    assert RemoteReward(served.url, timeout=30)(*batch)[0].tolist() == [1.0, 0.0]
    served.proc.terminate()
    assert served.proc.wait(10) == 0
    assert served.stderr.read_text() == "", served.stderr.read_text()[-2000:]
