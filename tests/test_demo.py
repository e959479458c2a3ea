"""The demo pages and the static client, in-process: views, the staticfiles finder, collectstatic.

The same pages and files through real servers and a real browser: tests/test_js_client.py.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from django.contrib.staticfiles import finders
from django.core.management import call_command
from django.test import Client

from notifier.staticfiles import CLIENT_FILES, JsClientFinder

JS_DIR = Path(__file__).resolve().parent.parent / "clients" / "js"


def test_the_finder_exposes_exactly_the_client_files() -> None:
    for name in CLIENT_FILES:
        assert finders.find(name) == str(JS_DIR / name)
        assert finders.find(name, find_all=True) == [str(JS_DIR / name)]
    for path in [
        "package.json",
        "package-lock.json",
        "build.mjs",
        "README.md",
        "test/build.test.js",
        "e2e/lib.mjs",
        "node_modules/ws/package.json",
        "testing/fake-server.js",
        "js/notifier.js",
        "./notifier.js",
    ]:
        assert JsClientFinder().find(path) == [], path
        assert JsClientFinder().find(path, find_all=True) == [], path
        assert finders.find(path) is None, path
    listed = [(path, storage.path(path)) for path, storage in JsClientFinder().list(None)]
    assert listed == [(name, str(JS_DIR / name)) for name in CLIENT_FILES]
    assert [path for path, _ in JsClientFinder().list(["*.global.js"])] == ["notifier.js", "notifier-sw.js"]
    assert JsClientFinder().check() == []


def test_collectstatic_copies_the_client_and_nothing_else_of_clients_js(tmp_path: Path, settings: Any) -> None:
    settings.STATIC_ROOT = tmp_path
    call_command("collectstatic", interactive=False, verbosity=0)
    for name in CLIENT_FILES:
        assert (tmp_path / name).read_bytes() == (JS_DIR / name).read_bytes()
    top_level = {p.name for p in tmp_path.iterdir()}
    assert not top_level & {"package.json", "package-lock.json", "build.mjs", "test", "e2e", "node_modules", "testing"}
    assert not list(tmp_path.rglob("package.json"))


def test_a_missing_build_is_a_system_check_error(tmp_path: Path, settings: Any) -> None:
    settings.BASE_DIR = tmp_path
    (tmp_path / "clients" / "js").mkdir(parents=True)
    (tmp_path / "clients" / "js" / "notifier.js").write_text("export const a = 1;\n")
    (tmp_path / "clients" / "js" / "notifier-sw.js").write_text("// the service worker\n")
    errors = JsClientFinder().check()
    assert [e.id for e in errors] == ["notifier.E001"]
    assert "notifier.global.js" in errors[0].msg and "npm run build" in str(errors[0].hint)


@pytest.fixture
def web() -> Client:
    return Client()


def test_demo_page_imports_the_client_from_static_and_loads_nothing_external(web: Client) -> None:
    response = web.get("/demo/")
    assert response.status_code == 200 and response["Content-Type"].startswith("text/html")
    html = response.content.decode()
    assert '<script type="module">' in html
    assert 'import { NotifierClient } from "/static/notifier.js";' in html
    for element in ["ws-url", "token", "connect", "disconnect", "channel", "subscriptions", "api-key", "events"]:
        assert f'id="{element}"' in html, element
    assert_self_contained(html)


def test_chat_page_is_on_the_chat_namespace(web: Client) -> None:
    response = web.get("/demo/chat/lobby/")
    assert response.status_code == 200
    html = response.content.decode()
    assert "<code>chat:lobby</code>" in html
    assert '<script id="room-name" type="application/json">"lobby"</script>' in html
    assert 'import { NotifierClient } from "/static/notifier.js";' in html
    assert 'id="name"' in html and 'id="text"' in html
    assert_self_contained(html)


def test_chat_page_lists_who_is_in_the_room_and_uses_the_demo_pages_token(web: Client) -> None:
    chat = web.get("/demo/chat/lobby/").content.decode()
    assert 'id="members"' in chat
    assert "onPresence" in chat
    # The token pasted on /demo/ is kept for the tab under one key, which the chat page reads.
    key = 'const TOKEN_KEY = "notifier-demo:token";'
    assert key in chat
    assert key in web.get("/demo/").content.decode()


def test_chat_room_names_are_channel_names(web: Client) -> None:
    assert web.get("/demo/chat/").status_code == 302
    assert web.get("/demo/chat/")["Location"] == "/demo/chat/lobby/"
    assert web.get("/demo/chat/team-7.eu@x=1/").status_code == 200
    assert web.get("/demo/chat/" + "r" * 123 + "/").status_code == 200  # chat: + 123 = 128
    for bad in ["r" * 124, "a%20b", "a:b", "%3Cscript%3E", "caf%C3%A9"]:
        assert web.get(f"/demo/chat/{bad}/").status_code == 404, bad


def test_room_names_are_escaped_in_the_page(web: Client) -> None:
    # Only channel characters get through the URL pattern, and the template escapes anyway.
    html = web.get("/demo/chat/a=b@c/").content.decode()
    assert "#&#8203;a=b@c" in html


def assert_self_contained(html: str) -> None:
    """No CDN, no external stylesheet, font or script: every URL is the service's own."""
    urls = re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', html) + re.findall(r'from\s+"([^"]*)"', html)
    external = [u for u in urls if re.match(r"^(?:[a-z]+:)?//", u)]
    assert external == [], external
    assert "@import" not in html and "url(http" not in html
