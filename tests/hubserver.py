"""A small Hugging Face hub endpoint on loopback, so tests fill a real hub cache with
``huggingface_hub``'s own downloads (pass ``endpoint=`` or set ``HF_ENDPOINT``).

It answers the routes ``snapshot_download`` and ``hf_hub_download`` call, with the headers
``huggingface_hub/file_download.py`` requires:

- ``GET /api/models/{repo}/revision/{rev}``: the model info (``sha``, ``siblings``);
- ``GET /api/models/{repo}/tree/{rev}``: the recursive file listing (``oid``, ``size``, and
  ``lfs`` for LFS files), which huggingface_hub keeps as ``trees/<commit>.json``;
- ``HEAD``/``GET /{repo}/resolve/{rev}/{path}``: the bytes, with ``X-Repo-Commit``, ``ETag``
  (the git blob sha1, or for LFS files the content's sha256, also as ``X-Linked-Etag`` and
  ``X-Linked-Size``), ``Content-Length``, and ``Range`` for resumed downloads.

Weights (``.safetensors``, ``.gguf``, ``.bin``) are LFS files, as on the hub. ``hold`` makes a
file's body stop after some bytes until ``release()``, to interrupt a download midway.
``gate`` makes a repo answer as a gated one does without an accepted token (401,
``X-Error-Code: GatedRepo``).

``python -m tests.hubserver ROOT [--port N] [--hold REPO:PATH:BYTES]`` serves the repos under
``ROOT/owner/name/`` (one commit each) as a process of its own, until it is killed: it
prints its URL, then one line per request (``GET /path range=bytes=N-``).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
import hashlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
import json
from pathlib import Path
import re
import sys
import threading
from urllib.parse import unquote, urlsplit

LFS_SUFFIXES = (".safetensors", ".gguf", ".bin", ".pt", ".pth", ".onnx")


def git_sha1(data: bytes) -> str:
    """The git blob id of ``data`` (``git hash-object``)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(data: bytes) -> bytes:
    """The git-lfs pointer file that stands for ``data`` in the repository."""
    sha = hashlib.sha256(data).hexdigest()
    return (
        f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha}\nsize {len(data)}\n".encode()
    )


def is_lfs(path: str) -> bool:
    return path.endswith(LFS_SUFFIXES)


def etag(path: str, data: bytes) -> str:
    """The name huggingface_hub gives the file's blob: sha256 for LFS files, else git sha1."""
    return hashlib.sha256(data).hexdigest() if is_lfs(path) else git_sha1(data)


@dataclass
class HubRepo:
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)

    def commit_of(self, revision: str) -> str | None:
        if revision in self.commits:
            return revision
        return self.refs.get(revision)


class HubServer:
    """The hub on ``self.url`` while the ``serve()`` context is open."""

    def __init__(self) -> None:
        self.repos: dict[str, HubRepo] = {}
        #: (repo id, file path) → bytes of its body sent before the response stalls until
        #: release().
        self.holds: dict[tuple[str, str], int] = {}
        self.requests: list[tuple[str, str]] = []
        #: (path, Range header) of every request that sent one.
        self.ranges: list[tuple[str, str]] = []
        #: Gated repos → the token that has accepted their licence.
        self.gated: dict[str, str] = {}
        #: Told of every request: method, path and Range header.
        self.on_request: Callable[[str, str, str], None] = lambda method, path, rng: None
        #: Told when a held body stalls: the file and the bytes of it sent.
        self.on_hold: Callable[[str, int], None] = lambda path, sent: None
        self.url = ""
        self._released = threading.Event()

    def add(self, repo_id: str, files: dict[str, bytes], ref: str | None = "main") -> str:
        """Commit ``files`` as a new revision of ``repo_id``; ``ref`` (unless None) points to
        it. Returns the commit hash."""
        digest = hashlib.sha1(repo_id.encode())
        for name in sorted(files):
            digest.update(name.encode() + b"\0" + hashlib.sha256(files[name]).digest())
        sha = digest.hexdigest()
        repo = self.repos.setdefault(repo_id, HubRepo())
        repo.commits[sha] = dict(files)
        if ref is not None:
            repo.refs[ref] = sha
        return sha

    def hold(self, repo_id: str, path: str, after_bytes: int) -> None:
        """Stall the body of ``path`` after ``after_bytes`` bytes, until :meth:`release`."""
        self.holds[(repo_id, path)] = after_bytes

    def release(self) -> None:
        self._released.set()

    def gate(self, repo_id: str, token: str) -> None:
        self.gated[repo_id] = token

    @contextmanager
    def serve(self, port: int = 0) -> Iterator[HubServer]:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                hub._answer(self, head=False)

            def do_HEAD(self) -> None:
                hub._answer(self, head=True)

        server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        server.daemon_threads = True
        self.url = f"http://127.0.0.1:{server.server_address[1]}"
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self.release()
            server.shutdown()
            server.server_close()
            thread.join(10)

    # -- routes ------------------------------------------------------------------------------

    def _answer(self, h: BaseHTTPRequestHandler, head: bool) -> None:
        path = unquote(urlsplit(h.path).path)
        self.requests.append((h.command, path))
        rng = h.headers.get("Range", "")
        if rng:
            self.ranges.append((path, rng))
        self.on_request(h.command, path, rng)
        api = re.fullmatch(r"/api/models/(.+)/(revision|tree)/([^/]+)", path)
        resolve = re.fullmatch(r"/(.+?/.+?)/resolve/([^/]+)/(.+)", path)
        gated = (api or resolve or [None, None])[1]
        if gated in self.gated and h.headers.get("Authorization") != f"Bearer {self.gated[gated]}":
            message = (
                f"Access to model {gated} is restricted. You must have access to it and be "
                "authenticated to access it. Please log in."
            )
            return _send(h, 401, b"", {"X-Error-Code": "GatedRepo", "X-Error-Message": message})
        if api:
            repo = self.repos.get(api[1])
            sha = repo.commit_of(api[3]) if repo else None
            if repo is None:
                return _send(h, 404, b"", {"X-Error-Code": "RepoNotFound"})
            if sha is None:
                return _send(h, 404, b"", {"X-Error-Code": "RevisionNotFound"})
            files = repo.commits[sha]
            if api[2] == "revision":
                doc: object = {"id": api[1], "sha": sha,
                               "siblings": [_sibling(f, d) for f, d in sorted(files.items())]}  # fmt: skip
            else:
                doc = [_tree_entry(name, data) for name, data in sorted(files.items())]
            return _send(h, 200, json.dumps(doc).encode(), {"Content-Type": "application/json"})
        if resolve:
            repo = self.repos.get(resolve[1])
            sha = repo.commit_of(resolve[2]) if repo else None
            if repo is None or sha is None or resolve[3] not in repo.commits[sha]:
                return _send(
                    h, 404, b"", {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": sha or ""}
                )
            cut = self.holds.get((resolve[1], resolve[3]))
            return self._file(h, head, sha, resolve[3], repo.commits[sha][resolve[3]], cut)
        return _send(h, 404, b"", {})

    def _file(
        self, h: BaseHTTPRequestHandler, head: bool, sha: str, name: str, data: bytes,
        cut: int | None,
    ) -> None:  # fmt: skip
        tag = etag(name, data)
        headers = {"X-Repo-Commit": sha, "ETag": f'"{tag}"', "Accept-Ranges": "bytes"}
        if is_lfs(name):
            headers |= {"X-Linked-Etag": f'"{tag}"', "X-Linked-Size": str(len(data))}
        start, end = 0, len(data) - 1
        ranged = re.fullmatch(r"bytes=(\d+)-(\d*)", h.headers.get("Range", ""))
        if ranged and not head:
            start = min(int(ranged[1]), len(data))
            end = min(int(ranged[2]), end) if ranged[2] else end
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
        body = data[start : end + 1]
        h.send_response(206 if ranged and not head else 200)
        for k, v in headers.items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if head:
            return
        if cut is None or start >= cut or start + len(body) <= cut:
            h.wfile.write(body)
            return
        h.wfile.write(body[: cut - start])
        h.wfile.flush()
        self.on_hold(name, cut)
        self._released.wait(60)
        h.close_connection = True


def _sibling(name: str, data: bytes) -> dict[str, object]:
    """A file as ``/revision`` lists it (with ``blobs=True``: its size, blob id, LFS info)."""
    entry = _tree_entry(name, data)
    lfs = entry.get("lfs")
    # /revision names the LFS hash "sha256" where /tree names it "oid".
    return {"rfilename": name, "size": entry["size"], "blobId": entry["oid"],
            **({"lfs": {"sha256": lfs["oid"], "size": lfs["size"],
                        "pointerSize": lfs["pointerSize"]}} if isinstance(lfs, dict) else {})}  # fmt: skip


def _tree_entry(name: str, data: bytes) -> dict[str, object]:
    if not is_lfs(name):
        return {"type": "file", "path": name, "size": len(data), "oid": git_sha1(data)}
    pointer = lfs_pointer(data)
    return {
        "type": "file",
        "path": name,
        "size": len(data),
        "oid": git_sha1(pointer),
        "lfs": {"oid": hashlib.sha256(data).hexdigest(), "size": len(data),
                "pointerSize": len(pointer)},
    }  # fmt: skip


def _send(h: BaseHTTPRequestHandler, status: int, body: bytes, headers: dict[str, str]) -> None:
    h.send_response(status)
    for k, v in headers.items():
        h.send_header(k, v)
    h.send_header("Content-Length", str(len(body)))
    h.end_headers()
    if h.command != "HEAD":
        h.wfile.write(body)


def main(argv: list[str] | None = None) -> None:
    """Serve the repos under a folder until killed (see the module's docstring)."""
    parser = argparse.ArgumentParser(prog="python -m tests.hubserver")
    parser.add_argument("root", type=Path)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--hold", action="append", default=[], metavar="REPO:PATH:BYTES")
    args = parser.parse_args(argv)
    hub = HubServer()
    for owner in sorted(p for p in args.root.iterdir() if p.is_dir()):
        for repo in sorted(p for p in owner.iterdir() if p.is_dir()):
            paths = [f for f in repo.rglob("*") if f.is_file()]
            files = {str(f.relative_to(repo)): f.read_bytes() for f in paths}
            hub.add(f"{owner.name}/{repo.name}", files)
    for hold in args.hold:
        repo_id, name, after = hold.split(":")
        hub.hold(repo_id, name, int(after))

    def log(method: str, path: str, rng: str) -> None:
        print(f"{method} {path}" + (f" range={rng}" if rng else ""), flush=True)

    hub.on_request = log
    hub.on_hold = lambda path, sent: print(f"held {path} after {sent} bytes", flush=True)
    with hub.serve(args.port):
        print(f"listening {hub.url}", flush=True)
        threading.Event().wait()


if __name__ == "__main__":
    main(sys.argv[1:])
