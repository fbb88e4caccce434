"""What a browser sends: multipart/form-data uploads (a video, a title, a caption file) and
raw bodies named by Content-Disposition or ?title=; the guide's title is never "source"."""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.web import test_imports
from tests.web.test_api import error_of
from tests.web.test_imports import App

# The imports tests' fixtures: an app whose jobs run in process, and a test video.
app = test_imports.app
video = test_imports.video

CAPTIONS = b"""1
00:00:00,000 --> 00:00:01,400
Open the settings page.

2
00:00:01,600 --> 00:00:02,900
Choose the second tab.

3
00:00:03,100 --> 00:00:04,800
Save your changes.
"""


def guide_of(app: App, auth: dict[str, str], response: Any) -> dict[str, Any]:
    assert response.status_code == 202, response.text
    job_id = response.json()["job_id"]
    record = app.wait(job_id, auth, "succeeded", "dead")
    assert record["state"] == "succeeded", record
    guide: dict[str, Any] = app.client.get(f"/imports/{job_id}/guide", headers=auth).json()
    return guide


def test_a_form_with_video_title_and_captions(app: App, video: bytes) -> None:
    alice = app.login("alice")
    response = app.client.post(
        "/imports",
        headers=alice,
        files={
            "video": ("screen recording.mp4", video, "video/mp4"),
            "captions": ("narration.srt", CAPTIONS, "application/x-subrip"),
        },
        data={"title": "Changing a setting"},
    )
    guide = guide_of(app, alice, response)
    assert guide["title"] == "Changing a setting"
    assert guide["narration"] == "captions"
    said = " ".join(step["text"] for step in guide["steps"])
    assert "settings page" in said and "Save your changes" in said


def test_a_form_names_the_guide_after_the_video_file(app: App, video: bytes) -> None:
    alice = app.login("alice")
    response = app.client.post(
        "/imports", headers=alice, files={"video": ("C:\\clips\\Onboarding.mp4", video)}
    )
    assert guide_of(app, alice, response)["title"] == "Onboarding"


@pytest.mark.parametrize(
    ("headers", "query", "title"),
    [
        ({"Content-Disposition": 'attachment; filename="Weekly demo.mp4"'}, "", "Weekly demo"),
        ({"Content-Disposition": "attachment; filename*=UTF-8''D%C3%A9mo.mp4"}, "", "Démo"),
        ({"Content-Disposition": 'attachment; filename="x.mp4"'}, "?title=Release%20tour", "Release tour"),
        ({}, "", "Untitled video"),
    ],
)  # fmt: skip
def test_a_raw_body_is_titled_from_its_name(
    app: App, video: bytes, headers: dict[str, str], query: str, title: str
) -> None:
    alice = app.login("alice")
    response = app.client.post(
        f"/imports{query}",
        content=video,
        headers={**alice, "Content-Type": "video/mp4", **headers},
    )
    guide = guide_of(app, alice, response)
    assert guide["title"] == title
    assert guide["title"] != "source"


@pytest.mark.parametrize(
    ("files", "data", "status", "says"),
    [
        ({"captions": ("a.srt", CAPTIONS)}, {}, 422, "no `video`"),
        ({"video": ("a.mp4", b"x" * 100), "captions": ("a.txt", CAPTIONS)}, {}, 422, ".srt or .vtt"),
        ({"video": ("a.mp4", b"x" * 100), "captions": ("a.srt", b"hello")}, {}, 422, "no cues"),
        ({"video": ("a.mp4", b"x" * 100)}, {"color": "red"}, 422, "unknown form field"),
        ({"video": ("a.mp4", b"\x00garbage" * 100)}, {}, 415, "unsupported video"),
        ({"video": ("a.mp4", b"x" * 5_000_001)}, {}, 413, "limit"),
    ],
)  # fmt: skip
def test_bad_forms_are_refused_and_nothing_is_kept(
    app: App, files: dict[str, Any], data: dict[str, str], status: int, says: str
) -> None:
    alice = app.login("alice")
    response = app.client.post("/imports", headers=alice, files=files, data=data)
    assert says.lower() in error_of(response, status)["message"].lower()
    assert app.uploads() == []


def test_a_malformed_multipart_body(app: App) -> None:
    alice = app.login("alice")
    no_boundary = app.client.post(
        "/imports", content=b"--x\r\n", headers={**alice, "Content-Type": "multipart/form-data"}
    )
    assert "boundary" in error_of(no_boundary, 400)["message"]
    assert app.uploads() == []


def test_a_form_parts_headers_are_bounded(app: App) -> None:
    # Only the video's bytes may be large: the multipart parser bounds a part's header.
    alice = app.login("alice")
    body = (
        b'--b\r\nContent-Disposition: form-data; name="video"\r\nX-Pad: '
        + b"a" * 65536
        + b"\r\n\r\nxx\r\n--b--\r\n"
    )
    response = app.client.post(
        "/imports",
        content=body,
        headers={**alice, "Content-Type": "multipart/form-data; boundary=b"},
    )
    assert "header size" in error_of(response, 400)["message"]
    assert app.uploads() == []


def test_the_guide_as_a_page_to_read(app: App, video: bytes) -> None:
    alice = app.login("alice")
    response = app.client.post(
        "/imports",
        headers=alice,
        files={
            "video": ("demo.mp4", video, "video/mp4"),
            "captions": ("demo.vtt", b"WEBVTT\n\n" + CAPTIONS.replace(b",", b"."), "text/vtt"),
        },
        data={"title": "Settings <b>tour</b>"},
    )
    job_id = response.json()["job_id"]
    guide_of(app, alice, response)
    page = app.client.get(f"/imports/{job_id}/guide?format=html", headers=alice)
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in page.headers["content-security-policy"]
    html = page.text
    assert "<title>Settings &lt;b&gt;tour&lt;/b&gt;</title>" in html  # escaped, never markup
    assert "<script" not in html and "<link" not in html
    assert "Open the settings page." in html and "Save your changes." in html
    sources = re.findall(r'<img src="([^"]+)"', html)
    assert len(sources) == 3
    for source in sources:
        url = source.replace("&amp;", "&")
        assert url.startswith("http://testserver/imports/") and "signature=" in url
        picture = app.client.get(url)  # no Authorization header, as an <img> sends
        assert picture.status_code == 200
        assert picture.content[:3] == b"\xff\xd8\xff"
    bad = app.client.get(f"/imports/{job_id}/guide?format=pdf", headers=alice)
    assert "format" in error_of(bad, 422)["message"]
