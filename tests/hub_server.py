"""A small Hugging Face Hub stand-in on 127.0.0.1 for upload and download tests.

It speaks the part of the hub HTTP API that huggingface_hub 2.4 and datasets 5.2 use to create a
repo, commit files (`upload_folder`: preupload, then an NDJSON commit with base64 files and
deletions), list a tree, read repo info and paths-info, and download files (`resolve`). Every
file is answered as a "regular" (non-LFS) upload, so the client never takes the Xet/LFS path.
Writes need `Authorization: Bearer <token>`; every request is recorded for assertions.

    with LocalHub(token="hf_test") as hub:   # hub.endpoint -> set HF_ENDPOINT to it
        ...
        hub.files("someone/x", "dataset")     # {path: bytes} of the latest commit
"""
from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

API = re.compile(r"^/api/(models|datasets|spaces)/([^/]+/[^/]+?)(?:/(tree|preupload|commit|paths-info|revision)"
                 r"/([^/]+)(/.*)?)?$")
RESOLVE = re.compile(r"^/(?:(datasets|spaces)/)?([^/]+/[^/]+)/resolve/([^/]+)/(.+)$")


def git_blob_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Repo:
    private: bool
    files: dict[str, bytes] = field(default_factory=dict)
    commits: list[str] = field(default_factory=list)

    @property
    def sha(self) -> str:
        return self.commits[-1] if self.commits else "0" * 40


@dataclass
class Seen:
    method: str
    path: str
    authorized: bool


class LocalHub:
    def __init__(self, token: str) -> None:
        self.token = token
        self.repos: dict[tuple[str, str], Repo] = {}
        self.requests: list[Seen] = []
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> "LocalHub":
        threading.Thread(target=self.server.serve_forever, daemon=True, name="local-hub").start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def files(self, repo_id: str, repo_type: str = "dataset") -> dict[str, bytes]:
        return dict(self.repos[(repo_type, repo_id)].files)

    # ---------------------------------------------------------------- the API, one method each
    def create_repo(self, body: dict) -> tuple[int, dict]:
        repo_type = body.get("type") or "model"
        repo_id = f"{body['organization']}/{body['name']}" if body.get("organization") else body["name"]
        url = f"{self.endpoint}/{'' if repo_type == 'model' else repo_type + 's/'}{repo_id}"
        if (repo_type, repo_id) in self.repos:
            return 409, {"error": "You already created this repo", "url": url}
        private = body.get("visibility", "private" if body.get("private") else "public") != "public"
        self.repos[(repo_type, repo_id)] = Repo(private=private)
        return 200, {"url": url, "name": repo_id}

    def preupload(self, repo: Repo, body: dict) -> tuple[int, dict]:
        files = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False,
                  "oid": git_blob_oid(repo.files[f["path"]]) if f["path"] in repo.files else None}
                 for f in body["files"]]
        return 200, {"files": files}

    def commit(self, repo: Repo, repo_type: str, repo_id: str, ndjson: bytes) -> tuple[int, dict]:
        lines = [json.loads(line) for line in ndjson.splitlines() if line.strip()]
        for item in lines:
            key, value = item["key"], item["value"]
            if key == "file":
                if value.get("encoding") != "base64":
                    return 400, {"error": f"unsupported encoding {value.get('encoding')}"}
                repo.files[value["path"]] = base64.b64decode(value["content"])
            elif key == "deletedFile":
                repo.files.pop(value["path"], None)
            elif key == "deletedFolder":
                prefix = value["path"].rstrip("/") + "/"
                for path in [p for p in repo.files if p.startswith(prefix)]:
                    del repo.files[path]
            elif key != "header":
                return 400, {"error": f"this stand-in does not support {key!r} operations"}
        oid = hashlib.sha1(f"{repo.sha}{time.time_ns()}{len(lines)}".encode()).hexdigest()
        repo.commits.append(oid)
        prefix = "" if repo_type == "model" else f"{repo_type}s/"
        return 200, {"commitUrl": f"{self.endpoint}/{prefix}{repo_id}/commit/{oid}", "commitOid": oid,
                     "pullRequestUrl": None}

    def tree(self, repo: Repo, under: str, recursive: bool) -> list[dict]:
        under = under.strip("/")
        prefix = f"{under}/" if under else ""
        entries: dict[str, dict] = {}
        for path, data in sorted(repo.files.items()):
            if not path.startswith(prefix):
                continue
            parts = path[len(prefix):].split("/")
            depth = len(parts) if recursive else 1
            for i in range(1, min(depth, len(parts) - 1) + 1):  # the folders on the way
                folder = prefix + "/".join(parts[:i])
                entries.setdefault(folder, self.entry(repo, folder))
            if recursive or len(parts) == 1:
                entries[path] = self.entry(repo, path)
        return list(entries.values())

    def entry(self, repo: Repo, path: str) -> dict:
        commit = {"id": repo.sha, "title": "synthpost upload", "date": "2026-01-01T00:00:00.000Z"}
        if path in repo.files:
            return {"type": "file", "path": path, "size": len(repo.files[path]),
                    "oid": git_blob_oid(repo.files[path]), "lastCommit": commit}
        return {"type": "directory", "path": path, "oid": hashlib.sha1(path.encode()).hexdigest(),
                "lastCommit": commit}

    def info(self, repo: Repo, repo_id: str) -> dict:
        return {"id": repo_id, "author": repo_id.split("/")[0], "sha": repo.sha, "private": repo.private,
                "gated": False, "disabled": False, "lastModified": "2026-01-01T00:00:00.000Z",
                "siblings": [{"rfilename": p, "size": len(d)} for p, d in sorted(repo.files.items())],
                "tags": [], "cardData": {}}


def _handler(hub: LocalHub):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # quiet: tests read hub.requests instead
            pass

        def do_GET(self) -> None:
            self.route()

        def do_HEAD(self) -> None:
            self.route()

        def do_POST(self) -> None:
            self.route()

        def route(self) -> None:
            url = urlsplit(self.path)
            authorized = self.headers.get("Authorization") == f"Bearer {hub.token}"
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            with hub.lock:
                hub.requests.append(Seen(self.command, url.path, authorized))
                status, payload = self.dispatch(url.path, parse_qs(url.query), body, authorized)
            if isinstance(payload, Download):
                self.send_file(status, payload)
            else:
                self.send(status, json.dumps(payload).encode(), "application/json")

        def dispatch(self, path: str, query: dict, body: bytes, authorized: bool):
            if self.command == "POST" and path == "/api/repos/create":
                return hub.create_repo(json.loads(body)) if authorized else (401, {"error": "Invalid token"})
            if self.command == "POST" and path == "/api/validate-yaml":
                return 200, {"errors": [], "warnings": []}
            if m := API.match(path):
                return self.api(m, query, body, authorized)
            if m := RESOLVE.match(path):
                repo_type, repo_id, _, file_path = m.groups()
                repo = self.readable(repo_type[:-1] if repo_type else "model", repo_id, authorized)
                if repo is None or unquote(file_path) not in repo.files:
                    return 404, {"error": "Entry not found"}
                return 200, Download(repo, repo.files[unquote(file_path)])
            return 404, {"error": f"the stand-in hub has no route for {self.command} {path}"}

        def api(self, m: re.Match, query: dict, body: bytes, authorized: bool):
            repo_type, repo_id, action, _revision, rest = m.groups()
            repo_type = repo_type[:-1]
            repo = self.readable(repo_type, repo_id, authorized)
            if repo is None:
                return 404, {"error": "Repository not found"}
            if action in ("preupload", "commit") and not authorized:
                return 401, {"error": "Invalid credentials"}
            if action == "preupload":
                return hub.preupload(repo, json.loads(body))
            if action == "commit":
                return hub.commit(repo, repo_type, repo_id, body)
            if action == "tree":
                recursive = query.get("recursive", ["False"])[0].lower() == "true"
                entries = hub.tree(repo, unquote(rest or ""), recursive)
                return (200, entries) if entries or not rest else (404, {"error": "Entry not found"})
            if action == "paths-info":
                form = parse_qs(body.decode())
                entries = [hub.entry(repo, p) for p in form.get("paths", [])
                           if p in repo.files or any(f.startswith(p.rstrip("/") + "/") for f in repo.files)]
                return 200, entries
            return 200, hub.info(repo, repo_id)  # repo info, at a revision or not

        def readable(self, repo_type: str, repo_id: str, authorized: bool) -> Repo | None:
            repo = hub.repos.get((repo_type, repo_id))
            return repo if repo is not None and (authorized or not repo.private) else None

        def send(self, status: int, data: bytes, content_type: str, extra: dict | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            for key, value in (extra or {}).items():
                self.send_header(key, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        def send_file(self, status: int, download: "Download") -> None:
            data, headers = download.data, {"X-Repo-Commit": download.repo.sha,
                                            "ETag": f'"{git_blob_oid(download.data)}"', "Accept-Ranges": "bytes"}
            if (ranged := re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))) and data:
                start = int(ranged.group(1))
                end = min(int(ranged.group(2) or len(data) - 1), len(data) - 1)
                headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
                data, status = data[start:end + 1], 206
            self.send(status, data, "application/octet-stream", headers)

    return Handler


@dataclass
class Download:
    repo: Repo
    data: bytes
