"""`multipart/form-data` video uploads (what a browser form sends), streamed: the `video`
part's bytes are yielded as they arrive, never buffered whole; the small parts (`title`, a
`captions` file) are kept in `UploadDetails` as they pass."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from email.message import Message
from pathlib import PurePosixPath, PureWindowsPath

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from ondoki.domain.imports import CAPTION_SUFFIXES, MAX_CAPTION_BYTES, UploadDetails
from ondoki.errors import InvalidInput, TooLarge
from ondoki_adapters.web.http import MalformedBody

#: The form's fields.
VIDEO, CAPTIONS, TITLE = "video", "captions", "title"
MAX_TITLE_BYTES = 1024


def filename_stem(name: str | None) -> str | None:
    """A file name without its folders and extension (browsers may send either path style)."""
    if not name:
        return None
    base = PureWindowsPath(PurePosixPath(name).name).name
    return PurePosixPath(base).stem or None


def disposition_filename(header: str | None) -> str | None:
    """The file name of a `Content-Disposition` header (`filename*` of RFC 6266 included)."""
    if not header:
        return None
    message = Message()
    message["content-disposition"] = header
    return message.get_filename()


def boundary_of(content_type: str) -> bytes:
    _, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if not boundary:
        raise MalformedBody("a multipart/form-data body needs a boundary in its Content-Type")
    return boundary


class _Part:
    def __init__(self) -> None:
        self.header_field = b""
        self.header_value = b""
        self.headers: dict[bytes, bytes] = {}
        self.name = ""
        self.filename: str | None = None
        self.data = bytearray()


class FormUpload:
    """Reads a multipart body: iterate it for the video's bytes; `details` holds the rest
    once the iteration is over."""

    def __init__(self, body: AsyncGenerator[bytes, None], content_type: str) -> None:
        self.body = body
        self.boundary = boundary_of(content_type)
        self.details = UploadDetails()
        self.video_seen = False
        self._part: _Part | None = None
        self._video_chunks: list[bytes] = []

    # -- parser callbacks (synchronous; they only record) -----------------------------------

    def _on_part_begin(self) -> None:
        self._part = _Part()

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        assert self._part is not None
        self._part.header_field += data[start:end]

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        assert self._part is not None
        self._part.header_value += data[start:end]

    def _on_header_end(self) -> None:
        part = self._part
        assert part is not None
        part.headers[part.header_field.lower()] = part.header_value
        part.header_field = part.header_value = b""

    def _on_headers_finished(self) -> None:
        part = self._part
        assert part is not None
        _, options = parse_options_header(part.headers.get(b"content-disposition", b""))
        part.name = options.get(b"name", b"").decode("utf-8", "replace")
        raw_filename = options.get(b"filename")
        part.filename = None if raw_filename is None else raw_filename.decode("utf-8", "replace")
        if part.name not in (VIDEO, CAPTIONS, TITLE):
            raise InvalidInput(
                f"unknown form field {part.name[:64]!r}: expected video, captions and title"
            )
        if part.name == VIDEO:
            if self.video_seen:
                raise InvalidInput("send one video per upload")
            self.video_seen = True

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        part = self._part
        assert part is not None
        if part.name == VIDEO:
            self._video_chunks.append(data[start:end])
            return
        part.data += data[start:end]
        limit = MAX_CAPTION_BYTES if part.name == CAPTIONS else MAX_TITLE_BYTES
        if len(part.data) > limit:
            raise TooLarge(f"the form field {part.name} is over {limit} bytes")

    def _on_part_end(self) -> None:
        part = self._part
        assert part is not None
        self._part = None
        if part.name == VIDEO:
            if self.details.title is None:
                self.details.title = filename_stem(part.filename)
        elif part.name == TITLE:
            self.details.title = bytes(part.data).decode("utf-8", "replace")
        elif part.name == CAPTIONS:
            suffix = PurePosixPath(part.filename or "").suffix.lower()
            if suffix not in CAPTION_SUFFIXES:
                raise InvalidInput(
                    f"the captions file must be .srt or .vtt, got {part.filename or 'no name'!r}"
                )
            self.details.captions = bytes(part.data)
            self.details.captions_suffix = suffix

    # -- reading -------------------------------------------------------------------------

    async def __aiter__(self) -> AsyncIterator[bytes]:
        parser = MultipartParser(
            self.boundary,
            {
                "on_part_begin": self._on_part_begin,
                "on_header_field": self._on_header_field,
                "on_header_value": self._on_header_value,
                "on_header_end": self._on_header_end,
                "on_headers_finished": self._on_headers_finished,
                "on_part_data": self._on_part_data,
                "on_part_end": self._on_part_end,
            },
        )
        # Closed here when a part is refused: trio wants no generator left to the collector.
        async with aclosing(self.body) as stream:
            async for chunk in stream:
                try:
                    parser.write(chunk)
                except MultipartParseError as exc:
                    raise MalformedBody(f"the multipart body is malformed: {exc}") from None
                for piece in self._video_chunks:
                    yield piece
                self._video_chunks.clear()
        try:
            parser.finalize()
        except MultipartParseError as exc:
            raise MalformedBody(f"the multipart body is malformed: {exc}") from None
        if not self.video_seen:
            raise InvalidInput("the form has no `video` file")
