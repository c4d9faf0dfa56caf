"""``supersub review``: the web app served by uvicorn, driven in headless Chromium (Playwright) as a person would,
and its checks through FastAPI's test client. Every refused save writes nothing and says why in the page."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from conftest import run_cli
from test_report import CHROMIUM, CHROMIUM_ARGS, _browser_or_skip

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")


@pytest.fixture(scope="module")
def discovered(trained_run: Path, synth_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("review") / "d"
    assert run_cli(["discover", str(trained_run), str(synth_dir / "test_images"), "--out", str(out)]) == 0
    return out


@pytest.fixture()
def labels_copy(discovered: Path, tmp_path: Path) -> Path:
    """Each test edits its own copy of the template."""
    target = tmp_path / "labels.csv"
    target.write_bytes((discovered / "labels.csv").read_bytes())
    return target


@pytest.fixture()
def app(trained_run: Path, discovered: Path, labels_copy: Path) -> Any:
    from supersub import api

    return api.review_app(trained_run, discovered=discovered, labels=labels_copy)


@pytest.fixture()
def client(app: Any) -> Any:
    from fastapi.testclient import TestClient

    return TestClient(app)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture()
def server(app: Any) -> Iterator[str]:
    """The app on a real uvicorn server on 127.0.0.1, in a thread, stopped after the test."""
    port = _free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    for _ in range(200):  # started is set once the socket listens
        if srv.started:
            break
        time.sleep(0.05)
    assert srv.started, "the review server did not start"
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(timeout=10)


def _rows(client: Any) -> list[dict[str, Any]]:
    state = client.get("/api/state").json()
    return [{"image": path, **a} for path, a in state["assignments"].items()], state["version"]  # type: ignore[return-value]


def test_save_checks_every_row_and_writes_nothing_it_refuses(client: Any, labels_copy: Path) -> None:
    rows, version = _rows(client)
    before = labels_copy.read_bytes()

    def refused(bad: list[dict[str, Any]], match: str, status: int = 400) -> None:
        r = client.post("/api/save", json={"version": version, "rows": bad})
        assert r.status_code == status and match in r.json()["error"], r.json()
        assert labels_copy.read_bytes() == before

    refused([*rows, {"image": "/nowhere/x.png", "superclass": "a", "subclass": "b", "cluster": "1"}], "unknown image")
    refused([{**rows[0], "subclass": "  "}, *rows[1:]], "empty subclass name")
    known = client.get("/api/state").json()["known"][0]
    refused([{**rows[0], "subclass": known["subclass"]}, *rows[1:]], "is already a subclass of")
    refused([{**rows[0], "cluster": "", "superclass": "x", "subclass": "y"}, *rows[1:]], "not a known class")
    stale = client.post("/api/save", json={"version": "0000", "rows": rows})
    assert stale.status_code == 409 and "saved by someone else" in stale.json()["error"]
    assert labels_copy.read_bytes() == before
    ok = client.post("/api/save", json={"version": version, "rows": rows[1:]}).json()
    assert ok["rows"] == len(rows) - 1 and "train --extend" in ok["retrain"]
    assert len(pd.read_csv(labels_copy)) == len(rows) - 1


def test_predictions_are_filtered_and_sorted(client: Any) -> None:
    everything = client.get("/api/predictions").json()
    for decision in ("seen", "novel_super", "novel_sub"):
        part = client.get(f"/api/predictions?decision={decision}").json()
        assert {r["decision"] for r in part} <= {decision}
        assert len(part) == sum(r["decision"] == decision for r in everything)
    by_super = client.get("/api/predictions?sort=super_conf&descending=true").json()
    assert [r["super_conf"] for r in by_super] == sorted((r["super_conf"] for r in by_super), reverse=True)
    bad = client.get("/api/predictions?decision=maybe")
    assert bad.status_code == 400 and "maybe" in bad.json()["error"]
    assert client.get(f"/image/{everything[0]['id']}").headers["content-type"] == "image/jpeg"
    assert client.get("/image/99999").status_code == 404


def test_a_person_filters_renames_a_cluster_and_saves(server: str, labels_copy: Path, tmp_path: Path) -> None:
    sync_playwright = _browser_or_skip()
    errors: list[str] = []
    template = pd.read_csv(labels_copy, dtype=str, keep_default_na=False)
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(str(tmp_path / "profile"), executable_path=str(CHROMIUM),
                                                       headless=True, args=CHROMIUM_ARGS)
        try:
            page = context.new_page()
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(server, wait_until="load")
            page.wait_for_selector("#predictions .tile")
            total = page.locator("#predictions .tile").count()
            # filter: only the images flagged as a novel superclass
            page.select_option("#decision", "novel_super")
            page.wait_for_function("[...document.querySelectorAll('#predictions .tile')]"
                                   ".every(t => t.dataset.decision === 'novel_super')")
            shown = page.locator("#predictions .tile").count()
            assert 0 < shown < total
            # rename the first cluster, leave one of its images out, save
            page.click("#tab-clusters")
            first = page.locator("section.cluster").first
            cluster = first.get_attribute("data-cluster")
            first.locator("input.superclass").fill("my super")
            first.locator("input.subclass").fill("my sub")
            left_out = first.locator(".tile").first
            left_out_id = int(left_out.get_attribute("data-id") or -1)
            left_out.locator("select.move").select_option("out")
            page.click("#save")
            page.wait_for_selector("#message.ok")
            assert "train --extend" in page.inner_text("#message")
            saved = pd.read_csv(labels_copy, dtype=str, keep_default_na=False)
            mine = saved[saved["cluster"] == cluster]
            assert len(mine) == (template["cluster"] == cluster).sum() - 1
            assert set(mine["superclass"]) == {"my super"} and set(mine["subclass"]) == {"my sub"}
            others = saved[saved["cluster"] != cluster].sort_values("image").reset_index(drop=True)
            assert others.equals(template[template["cluster"] != cluster].sort_values("image").reset_index(drop=True))
            left_path = page.evaluate(f"items[{left_out_id}].path")
            assert left_path not in set(saved["image"])
            # bad input: an empty name is refused in the page, and the file stays as saved
            after = labels_copy.read_bytes()
            first.locator("input.subclass").fill("")
            page.click("#save")
            page.wait_for_selector("#message.error")
            assert "empty subclass name" in page.inner_text("#message")
            assert labels_copy.read_bytes() == after
            # another save since the page loaded the file: refused, nothing lost
            first.locator("input.subclass").fill("my sub 2")
            other = labels_copy.read_text(encoding="utf-8").replace("my super", "their super")
            labels_copy.write_text(other, encoding="utf-8")
            page.click("#save")
            page.wait_for_function("document.querySelector('#message').textContent.includes('someone else')")
            assert labels_copy.read_text(encoding="utf-8") == other
            assert first.locator("input.subclass").input_value() == "my sub 2"  # the edit is still in the page
        finally:
            context.close()
    assert errors == []


def test_the_command_says_what_is_missing_in_one_line(trained_run: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(["review", str(trained_run)]) == 2
    assert "--images" in capsys.readouterr().err
    assert run_cli(["review", str(trained_run), "--discovered", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no clusters.csv" in err and "Traceback" not in err
