"""``labctl bench --record``: when a result goes to the lab, and what a failure does."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from labctl.cli import lab
from labctl.cli.benchrecord import lab_url, record, same_server
from labctl.errors import UsageError


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        ("http://127.0.0.1:8080", "http://127.0.0.1:8080", True),
        ("http://localhost:8080/v1", "http://127.0.0.1:8080", True),
        ("HTTP://LocalHost:8080/vla/arm", "http://127.0.0.1:8080/", True),
        ("http://lab.lan", "http://lab.lan:80", True),
        ("https://127.0.0.1:8080", "http://127.0.0.1:8080", False),
        ("http://127.0.0.1:8000", "http://127.0.0.1:8080", False),
        ("http://10.0.0.2:8080", "http://127.0.0.1:8080", False),
        ("http://127.0.0.1:port", "http://127.0.0.1:8080", False),
    ],
)  # fmt: skip
def test_same_server_compares_scheme_host_and_port(a: str, b: str, same: bool) -> None:
    assert same_server(a, b) is same


def test_lab_url_is_labctl_url_else_the_running_labs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LABCTL_HOME", str(tmp_path))
    monkeypatch.delenv("LABCTL_URL", raising=False)
    assert lab_url() is None
    (tmp_path / "url").write_text("http://127.0.0.1:9123\n")
    assert lab_url() == "http://127.0.0.1:9123"
    monkeypatch.setenv("LABCTL_URL", "http://lab.lan:8080")
    assert lab_url() == "http://lab.lan:8080"


class Posts:
    def __init__(self, answer: Any = None) -> None:
        self.sent: list[tuple[str, str, Any]] = []
        self.answer = answer

    def __call__(self, url: str, method: str, path: str, body: Any, timeout: float) -> Any:
        self.sent.append((url, path, body))
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


RUN = {"completed": 20, "model_id": "chat", "path": Path("/x")}


@pytest.mark.parametrize(
    ("asked", "base", "posted"),
    [(None, "http://localhost:9123/v1", True), (None, "http://127.0.0.1:8000", False),
     (False, "http://127.0.0.1:9123", False), (True, "http://127.0.0.1:8000", True)],
)  # fmt: skip
def test_record_posts_to_the_lab_by_default_only_when_the_bench_ran_against_it(
    asked: bool | None, base: str, posted: bool, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    monkeypatch.setenv("LABCTL_URL", "http://127.0.0.1:9123")
    posts = Posts({"id": 7})
    monkeypatch.setattr(lab, "call", posts)
    record({"record": asked, "base_url": base}, [RUN], RUN, interrupted=False)
    err = capsys.readouterr().err
    if not posted:
        assert posts.sent == [] and err == ""
        return
    ((url, path, body),) = posts.sent
    assert (url, path, body) == ("http://127.0.0.1:9123", "/api/bench", {**RUN, "path": "/x"})
    assert "recorded in the lab as bench #7" in err
    assert ("although the bench ran against" in err) is (base.endswith(":8000"))


def test_record_failing_is_a_warning_and_an_interrupted_run_is_not_kept(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LABCTL_URL", "http://127.0.0.1:9123")
    monkeypatch.setattr(lab, "call", Posts(UsageError("admin token refused")))
    kw = {"record": None, "base_url": "http://127.0.0.1:9123"}
    record(kw, [RUN], RUN, interrupted=False)
    assert "warning: the result was not recorded in the lab" in capsys.readouterr().err
    posts = Posts({"id": 1})
    monkeypatch.setattr(lab, "call", posts)
    record(kw, [RUN], RUN, interrupted=True)
    record(kw, [{**RUN, "completed": 0}], RUN, interrupted=False)
    assert posts.sent == [] and capsys.readouterr().err == ""
    record({**kw, "record": True}, [RUN], RUN, interrupted=True)
    assert "interrupted or failed" in capsys.readouterr().err
