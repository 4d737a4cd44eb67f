"""Downloads against a local HTTP server: checksums, resume with Range, errors, end to end."""

from __future__ import annotations

import gzip
import hashlib
import io
import pickle
import struct
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import torch

from vitscope.data import datasets as ds
from vitscope.data import download_url, load_dataset
from vitscope.errors import DatasetError


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VITSCOPE_CACHE", str(tmp_path / "cache"))


class _Handler(BaseHTTPRequestHandler):
    """Serves ``server.files``; honours ``Range: bytes=N-`` unless ``server.ranges`` is off."""

    def do_GET(self):  # noqa: N802 (http.server's naming)
        srv = self.server
        body = srv.files.get(self.path)
        rng = self.headers.get("Range")
        srv.log.append((self.path, rng))
        if body is None:
            self.send_error(404)
            return
        start = 0
        if rng and srv.ranges:
            start = int(rng.removeprefix("bytes=").split("-")[0])
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        # counted before the write: the client may return before this thread runs on
        srv.sent += len(body) - start
        self.wfile.write(body[start:])

    def log_message(self, *args):  # keep pytest output clean
        pass


@pytest.fixture
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.files, srv.log, srv.sent, srv.ranges = {}, [], 0, True
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}"
    thread = threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def _md5(b: bytes) -> str:
    return hashlib.md5(b).hexdigest()


PAYLOAD = bytes(range(256)) * 40  # 10240 bytes


def test_download_with_md5(server, tmp_path):
    server.files["/f.bin"] = PAYLOAD
    dest = tmp_path / "sub" / "f.bin"
    out = download_url(server.url + "/f.bin", dest, md5=_md5(PAYLOAD), progress=False)
    assert out == dest and dest.read_bytes() == PAYLOAD
    assert not (tmp_path / "sub" / "f.bin.part").exists()


def test_wrong_md5_deletes_download(server, tmp_path):
    server.files["/f.bin"] = PAYLOAD
    dest = tmp_path / "f.bin"
    with pytest.raises(DatasetError) as e:
        download_url(server.url + "/f.bin", dest, md5="0" * 32, progress=False)
    msg = str(e.value)
    assert "\n" not in msg and str(dest) in msg and "0" * 32 in msg and _md5(PAYLOAD) in msg
    assert not dest.exists() and not (tmp_path / "f.bin.part").exists()


def test_resume_requests_only_missing_bytes(server, tmp_path):
    server.files["/f.bin"] = PAYLOAD
    dest = tmp_path / "f.bin"
    (tmp_path / "f.bin.part").write_bytes(PAYLOAD[:4000])
    download_url(server.url + "/f.bin", dest, md5=_md5(PAYLOAD), progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert server.log == [("/f.bin", "bytes=4000-")]
    assert server.sent == len(PAYLOAD) - 4000


def test_resume_restarts_when_server_ignores_range(server, tmp_path):
    server.files["/f.bin"] = PAYLOAD
    server.ranges = False
    (tmp_path / "f.bin.part").write_bytes(b"stale bytes from another file")
    download_url(server.url + "/f.bin", tmp_path / "f.bin", md5=_md5(PAYLOAD), progress=False)
    assert (tmp_path / "f.bin").read_bytes() == PAYLOAD


def test_network_errors_are_one_line(server, tmp_path):
    with pytest.raises(DatasetError) as e:
        download_url(server.url + "/missing", tmp_path / "m.bin", progress=False)
    assert "404" in str(e.value) and "by hand" in str(e.value)
    dead = "http://127.0.0.1:9/x.tar.gz"  # discard port: connection refused
    with pytest.raises(DatasetError) as e:
        download_url(dead, tmp_path / "x.tar.gz", timeout=5, progress=False)
    msg = str(e.value)
    assert "\n" not in msg and dead in msg and str(tmp_path / "x.tar.gz") in msg


def _cifar10_tarball(n: int = 10) -> bytes:
    rng = np.random.default_rng(0)
    files = {"batches.meta": pickle.dumps({b"label_names": [f"c{i}".encode() for i in range(10)]})}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": [1] * n}
        files[name] = pickle.dumps(batch, protocol=2)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, payload in files.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(payload)
            tf.addfile(info, io.BytesIO(payload))
    return buf.getvalue()


def test_cifar10_end_to_end_through_local_server(server, tmp_path, monkeypatch):
    blob = _cifar10_tarball()
    server.files["/mirror/c10.tgz"] = blob
    monkeypatch.setenv("VITSCOPE_CIFAR10_URL", server.url + "/mirror/c10.tgz")
    monkeypatch.setenv("VITSCOPE_CIFAR10_MD5", _md5(blob))
    tr = load_dataset("cifar10", train=True, root=str(tmp_path), download=True)
    assert tr.images.shape == (50, 3, 32, 32) and tr.labels.eq(1).all()
    assert (tmp_path / "cifar-10-python.tar.gz").read_bytes() == blob
    assert (tmp_path / "cifar-10-batches-py").is_dir()
    te = load_dataset("cifar10", train=False, root=str(tmp_path), download=False)
    assert te.images.shape == (10, 3, 32, 32) and len(server.log) == 1  # downloaded once


def test_cifar_download_checksum_mismatch(server, tmp_path, monkeypatch):
    server.files["/c10.tgz"] = _cifar10_tarball()
    monkeypatch.setenv("VITSCOPE_CIFAR10_URL", server.url + "/c10.tgz")  # real md5 kept
    with pytest.raises(DatasetError) as e:
        load_dataset("cifar10", train=True, root=str(tmp_path))
    assert "c58f30108f718f92721af3b95e74349a" in str(e.value)
    assert list(tmp_path.iterdir()) == []


def test_fashion_mnist_download(server, tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (7, 28, 28), dtype=np.uint8)
    labels = np.arange(7, dtype=np.uint8)
    raw = {
        "t10k-images-idx3-ubyte.gz": bytes([0, 0, 8, 3])
        + struct.pack(">3I", 7, 28, 28)
        + images.tobytes(),
        "t10k-labels-idx1-ubyte.gz": bytes([0, 0, 8, 1]) + struct.pack(">I", 7) + labels.tobytes(),
    }
    md5s = {}
    for name, payload in raw.items():
        server.files[f"/fm/{name}"] = blob = gzip.compress(payload)
        md5s[name] = _md5(blob)
    monkeypatch.setattr(ds, "FASHION_MNIST_SYSTEM_DIR", tmp_path / "not-installed")
    monkeypatch.setattr(ds, "FASHION_MNIST_MD5", md5s)
    monkeypatch.setenv("VITSCOPE_FASHION_MNIST_URL", server.url + "/fm/")
    te = load_dataset("fashion-mnist", train=False)  # no root: into $VITSCOPE_CACHE
    assert torch.equal(te.images[:, 0], torch.from_numpy(images)) and te.labels.tolist() == list(
        range(7)
    )
    assert (tmp_path / "cache" / "fashion-mnist" / "t10k-labels-idx1-ubyte.gz").is_file()
