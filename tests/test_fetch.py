"""`nlora data fetch` against a local HTTP server on 127.0.0.1, and `nlora data check` on local folders."""

import functools
import http.server
import json
import threading
from pathlib import Path

import pytest
from conftest import CL_BENCHMARK

from nlora.cli import main
from nlora.fetch import LAYOUT, check_dir, expected_files, servable_presets


def write_tree(root: Path, skip=()) -> None:
    """A complete, valid fixture tree (all 15 tasks x 4 files), minus the relative paths in ``skip``."""
    for rel in expected_files():
        if rel in skip:
            continue
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        data = (
            ["yes", "no"]
            if path.name == "labels.json"
            else [{"label": "yes", "sentence": f"{rel} {i}"} for i in range(3)]
        )
        path.write_text(json.dumps(data))


class Server:
    """Serves a folder; records the paths asked for."""

    def __init__(self, root: Path):
        self.requests: list[str] = []
        outer = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def do_GET(self):
                outer.requests.append(self.path)
                super().do_GET()

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/CL_Benchmark"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def served(tmp_path):
    root = tmp_path / "served"
    server = Server(root)
    yield root / "CL_Benchmark", server
    server.close()


def test_fetch_downloads_every_file_and_reports_what_is_missing(served, tmp_path, capsys):
    tree, server = served
    write_tree(tree, skip={"TC/yahoo/train.json", "SC/yelp/test.json"})
    (tree / "NLI/CB/dev.json").write_text("version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 9\n")
    dest = tmp_path / "got"
    assert main(["data", "fetch", "--dest", str(dest), "--url", server.url]) == 1
    out = capsys.readouterr().out
    assert "57 of 60 expected files present and valid" in out
    assert "missing: TC/yahoo/train.json" in out and "missing: SC/yelp/test.json" in out
    assert "invalid: NLI/CB/dev.json: a Git LFS pointer" in out
    for rel in expected_files():
        if rel not in {"TC/yahoo/train.json", "SC/yelp/test.json"}:
            assert (dest / rel).read_bytes() == (tree / rel).read_bytes(), rel
    assert not list(dest.rglob("*.part"))
    # t5-order1 needs yahoo (train missing); order 4 and the LLaMA orders use yelp (test missing)
    assert "t5-order1: lacks yahoo" in out and "presets it can serve: " in out

    # the server gains the missing files: a second fetch asks only for the three not yet valid
    write_tree(tree)
    server.requests.clear()
    assert main(["data", "fetch", "--dest", str(dest), "--url", server.url]) == 0
    assert sorted(server.requests) == sorted(
        f"/CL_Benchmark/{r}" for r in ["TC/yahoo/train.json", "SC/yelp/test.json", "NLI/CB/dev.json"]
    )
    assert "60 of 60 expected files present and valid" in capsys.readouterr().out


def test_fetch_unreachable_server_is_one_line_error(tmp_path, capsys):
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens on this port now
    assert (
        main(["data", "fetch", "--dest", str(tmp_path / "d"), "--url", f"http://127.0.0.1:{port}/x", "--timeout", "5"])
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress bar
    assert err.startswith("nlora: error: cannot download http://127.0.0.1:") and "Connection refused" in err
    assert not ((tmp_path / "d").exists() and list((tmp_path / "d").rglob("*.json*")))


def test_check_complete_tree_serves_every_preset(tmp_path, capsys):
    write_tree(tmp_path / "cl")
    assert main(["data", "check", str(tmp_path / "cl")]) == 0
    out = capsys.readouterr().out
    assert "60 of 60" in out and "(15 of 15)" in out and "lacks" not in out
    result = check_dir(tmp_path / "cl")
    assert all(not lacking for lacking in servable_presets(result).values())


def test_check_names_bad_files(tmp_path, capsys):
    write_tree(tmp_path / "cl", skip={"QQP/QQP/labels.json"})
    (tmp_path / "cl/WiC/WiC/train.json").write_text('[{"label": "yes"}]')
    (tmp_path / "cl/COPA/COPA/test.json").write_text('[{"label": "A", "sentence": ')
    assert main(["data", "check", str(tmp_path / "cl")]) == 1
    out = capsys.readouterr().out
    assert "missing: QQP/QQP/labels.json" in out
    assert "invalid: WiC/WiC/train.json: example 0 needs string fields" in out
    assert "invalid: COPA/COPA/test.json: not valid JSON" in out
    usable = check_dir(tmp_path / "cl").usable_tasks()
    assert "QQP" not in usable and "WiC" not in usable and "COPA" not in usable and len(usable) == 12


def test_check_missing_dir_is_error(tmp_path, capsys):
    assert main(["data", "check", str(tmp_path / "nope")]) == 2
    assert "data directory not found" in capsys.readouterr().err


@pytest.mark.skipif(not CL_BENCHMARK.is_dir(), reason="needs ../shared/CL_Benchmark")
def test_check_shared_copy(capsys):
    """The shared copy lacks the files REFERENCE.md lists; its 10 complete tasks are listed."""
    main(["data", "check", str(CL_BENCHMARK)])
    out = capsys.readouterr().out
    assert "missing: TC/dbpedia/train.json" in out and "missing: TC/yahoo/labels.json" not in out
    usable = check_dir(CL_BENCHMARK).usable_tasks()
    assert sorted(usable) == sorted(["agnews", "amazon", "MNLI", "CB", "RTE", "QQP", "BoolQA", "COPA", "WiC", "SST-2"])
    assert sum(len(v) for v in LAYOUT.values()) == 15
