"""Class 3, downloads: a real http.server on 127.0.0.1 that trickles, stalls, overflows the size, redirects, answers
404/500 and drops the connection; a downloader process killed mid-body, then retried; the Hugging Face path through
huggingface_hub's own download against a local endpoint. Every failure names the checkpoint, the URL and what to do."""

import http.server
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import attnzoo
from attnzoo import hub

KEY = "aztest_tinynet.unit"
REVISION = "0123456789abcdef0123456789abcdef01234567"


class _Handler(http.server.BaseHTTPRequestHandler):
    """One behaviour per path; every wait ends when the test's ``stop`` event is set, so the server stops itself."""

    def log_message(self, *args):
        pass

    def _start(self, length=None, status=200):
        self.send_response(status)
        if length is not None:
            self.send_header("Content-Length", str(length))
        self.end_headers()

    def _send(self, data, pause=0.0):
        """Write ``data`` (16 bytes every ``pause`` s if a pause is given); False once the client has gone."""
        step = 16 if pause else max(len(data), 1)
        try:
            for i in range(0, len(data), step):
                if self.server.stop.is_set():
                    return False
                self.wfile.write(data[i:i + step])
                self.wfile.flush()
                time.sleep(pause)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up, as it should
            return False
        return True

    def do_HEAD(self):
        self._hf(head=True)

    def do_GET(self):
        self.server.hits.append(self.path)
        body, route = self.server.body, self.path.strip("/")
        if "/resolve/" in route:
            return self._hf(head=False)
        if route == "ok":
            self._start(len(body))
            self._send(body)
        elif route == "wrong":  # the right size, other bytes
            self._start(len(body))
            self._send(bytes(reversed(body)))
        elif route == "trickle":  # 16 bytes every 50 ms: each read gets data, the whole never ends in time
            self._start(len(body))
            self._send(body, pause=0.05)
        elif route == "silent":
            self._start(len(body))
            self.server.stop.wait(10)
        elif route == "stall":  # half the body, then nothing: the downloader is killed meanwhile
            self._start(len(body))
            self._send(body[: len(body) // 2])
            self.server.stop.wait(30)
        elif route == "endless":  # no Content-Length and no end: a body that would fill the disk
            self._start()
            for _ in range(10_000):
                if not self._send(b"\0" * 4096):
                    break
        elif route == "announce":
            self._start(len(body) + 100)
            self._send(body + b"\0" * 100)
        elif route == "drop":  # half the promised body, then the connection closes
            self._start(len(body))
            self._send(body[: len(body) // 2])
        elif route == "reset":  # the connection closes before any response
            return
        elif route in ("404", "500"):
            self.send_error(int(route))
        elif route.startswith("redirect"):
            target = {"redirect": "/ok", "redirect_file": "file:///etc/passwd", "redirect_loop": "/redirect_loop",
                      "redirect_remote": "http://example.invalid/model.safetensors"}[route]
            self.send_response(302)
            self.send_header("Location", target)
            self.send_header("Content-Length", "0")
            self.end_headers()
        else:
            self.send_error(400)

    def _hf(self, head):
        # the two requests huggingface_hub makes: HEAD for the metadata, then GET /{repo}/resolve/{revision}/{file}
        match = re.fullmatch(r"/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<file>.+)", self.path)
        if head:
            self.server.hits.append(f"HEAD {self.path}")
        if match is None or match["repo"] != "org/repo":
            self.send_error(404)
            return
        body = self.server.body
        self.send_response(200)
        self.send_header("X-Repo-Commit", match["rev"])
        self.send_header("ETag", f'"{self.server.etag}"')
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self._send(body)


@pytest.fixture
def server():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.daemon_threads = True
    srv.stop, srv.hits, srv.body, srv.etag = threading.Event(), [], b"", ""
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}"
    yield srv
    srv.stop.set()
    srv.shutdown()
    srv.server_close()
    thread.join(timeout=5)


@pytest.fixture
def remote(tmp_path, hub_dir, published, server, edit_manifest, monkeypatch):
    """use(route) -> record: the published checkpoint taken out of the hub folder and served at server/route."""
    monkeypatch.setenv("ATTNZOO_OFFLINE", "0")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    server.body = (hub_dir / published.file).read_bytes()
    server.etag = published.sha256
    shutil.rmtree(hub_dir / KEY)

    def use(route=None, **fields):
        url = None if route is None else f"{server.url}/{route}"
        edit_manifest(lambda data: data["checkpoints"][KEY].update(url=url, **fields))
        return hub.find_record("aztest_tinynet", "unit")

    return use


def _cache_folder():
    return hub.cache_root() / KEY


def _leftovers():
    folder = _cache_folder()
    return sorted(p.name for p in folder.iterdir() if not p.name.endswith(".lock")) if folder.is_dir() else []


def test_download_follows_a_redirect_and_leaves_one_verified_file(remote, server, published):
    record = remote("redirect")
    path = hub.resolve_file(record, timeout=5, deadline=10)
    assert path == (_cache_folder() / "model.safetensors").resolve() and hub.sha256_of(path) == published.sha256
    assert server.hits == ["/redirect", "/ok"] and _leftovers() == ["model.safetensors"]
    model = attnzoo.create_model(KEY, pretrained=True)  # from the cache now: no new request
    assert server.hits == ["/redirect", "/ok"] and model.fc.out_features == 10


FAILURES = [
    ("404", hub.DownloadError, "HTTP 404"),
    ("500", hub.DownloadError, "HTTP 500"),
    ("trickle", hub.DownloadError, "did not finish within its 0.3 s deadline"),
    ("silent", hub.DownloadError, "no data for 0.2 s"),
    ("endless", hub.DownloadError, "the server sent more than the record's"),
    ("announce", hub.DownloadError, "the server announces"),
    ("drop", hub.DownloadError, "the connection closed after"),
    ("reset", hub.DownloadError, "Remote end closed connection"),
    ("redirect_file", hub.DownloadError, "Redirection to url 'file:///etc/passwd' is not allowed"),  # urllib's own
    ("redirect_remote", hub.DownloadError, "redirected (302) to a refused URL: URL 'http://example.invalid/"),
    ("redirect_loop", hub.DownloadError, "HTTP 302"),
    ("wrong", hub.ChecksumError, "downloaded from"),
]


@pytest.mark.parametrize("route, error, reason", FAILURES, ids=[f[0] for f in FAILURES])
def test_every_failure_names_checkpoint_url_and_remedy(remote, route, error, reason):
    record = remote(route)
    start = time.monotonic()
    with pytest.raises(error) as info:
        hub.resolve_file(record, timeout=0.2 if route == "silent" else 2, deadline=0.3 if route == "trickle" else 5)
    assert time.monotonic() - start < 4
    message = str(info.value)
    assert reason in message and f"{KEY!r}" in message and record.url in message
    if error is hub.DownloadError:
        assert f"download the file yourself (sha256 {record.sha256}, {record.size} bytes)" in message
        assert f"{hub.cache_root().resolve() / KEY / 'model.safetensors'}" in message
    assert _leftovers() == []  # neither a partial file nor the wrong one is kept


def test_connection_refused(remote):
    with socket.socket() as sock:  # a port nobody listens on any more
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    record = remote()
    record = hub.CheckpointRecord(**{**record.to_manifest(), "url": f"http://127.0.0.1:{port}/m.safetensors"},
                                  hub_dir=record.hub_dir)
    with pytest.raises(hub.DownloadError, match=rf"{KEY!r} from http://127.0.0.1:{port}/m.safetensors: .*refused"):
        hub.resolve_file(record, timeout=2, deadline=5)


def test_url_schemes():
    for url in ("https://example.org/m.safetensors", "http://127.0.0.1:8000/m", "http://localhost/m", "http://[::1]/m"):
        assert hub.check_url(url) == url
    for url in ("http://example.org/m", "file:///etc/passwd", "ftp://example.org/m", "https://", "//example.org/m",
                "HTTP://example.org/m", "http://127.0.0.1.example.org/m", None, 3):
        with pytest.raises(ValueError, match="only https:// URLs"):
            hub.check_url(url)


def test_limits_come_from_the_environment(remote, monkeypatch):
    record = remote("trickle")
    monkeypatch.setenv("ATTNZOO_DOWNLOAD_DEADLINE", "0.2")
    with pytest.raises(hub.DownloadError, match="within its 0.2 s deadline"):
        hub.resolve_file(record)
    monkeypatch.setenv("ATTNZOO_DOWNLOAD_TIMEOUT", "abc")
    with pytest.raises(ValueError, match=r"download timeout \$ATTNZOO_DOWNLOAD_TIMEOUT='abc' must be a positive"):
        hub.resolve_file(record)
    with pytest.raises(ValueError, match="download deadline deadline=-1 must be a positive"):
        hub.resolve_file(record, timeout=1, deadline=-1)


def test_a_killed_downloader_leaves_a_temp_file_that_the_retry_removes(remote, tmp_path):
    record = remote("stall")
    folder = _cache_folder()
    code = "from attnzoo import hub; hub.resolve_file(hub.find_record('aztest_tinynet', 'unit'))"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        part, give_up = None, time.monotonic() + 90
        while part is None and time.monotonic() < give_up and proc.poll() is None:
            parts = list(folder.glob(f".model.safetensors.{proc.pid}.*.part")) if folder.is_dir() else []
            part = next((p for p in parts if p.stat().st_size >= record.size // 2), None)
            time.sleep(0.05)
        assert part is not None, proc.stderr.read().decode()[-2000:] if proc.poll() is not None else "no temp file"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        proc.stderr.close()
    assert part.exists()  # a killed process cleans nothing up
    alive = folder / f".model.safetensors.{os.getpid()}.keep1234.part"
    alive.write_bytes(b"a live process's download")  # this process: alive, so its file must stay
    record = remote("ok")
    path = hub.resolve_file(record, timeout=5, deadline=10)
    assert hub.sha256_of(path) == record.sha256
    assert not part.exists() and alive.exists()
    assert sorted(p.name for p in folder.iterdir() if not p.name.endswith(".lock")) == [alive.name, "model.safetensors"]


@pytest.fixture
def hf_remote(remote, server, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_ENDPOINT", server.url)  # attnzoo passes it to hf_hub_download when the download starts
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # read when huggingface_hub imported
    return lambda repo="org/repo": remote(None, hf_hub_id=repo, hf_revision=REVISION, file="model.safetensors")


def test_hugging_face_source_goes_through_hf_hub_download_at_the_pinned_revision(hf_remote, server, published):
    record = hf_remote()
    model = attnzoo.create_model(KEY, pretrained=True)
    assert hub.sha256_of(_cache_folder() / "model.safetensors") == published.sha256
    assert f"/org/repo/resolve/{REVISION}/model.safetensors" in server.hits
    assert all(REVISION in hit for hit in server.hits) and model.fc.out_features == 10
    assert _leftovers() == ["model.safetensors"] and record.hf_revision == REVISION


def test_hugging_face_failures_name_repo_revision_and_remedy(hf_remote, server):
    record = hf_remote("org/missing")
    with pytest.raises(hub.DownloadError, match=rf"{KEY!r} from .*/org/missing/resolve/{REVISION}/model.safetensors "
                                                rf"\(Hugging Face Hub org/missing@{REVISION}\).*download the file "
                                                "yourself"):
        hub.resolve_file(record, timeout=2)
    record = hf_remote()
    server.body = bytes(reversed(server.body))  # the repo now serves other bytes of the same size
    with pytest.raises(hub.ChecksumError, match=f"checkpoint {KEY!r} downloaded from .*org/repo"):
        hub.resolve_file(record, timeout=2)
    assert _leftovers() == []
    assert json.loads((Path(record.hub_dir) / "manifest.json").read_text())["checkpoints"][KEY]["hf_revision"]
