"""Request bodies in memory: read with a size limit, then the photo's bytes from a form or the raw body.

Nothing here writes to disk. A framework's form parser spools large files to temporary files; a photo
under --max-bytes fits in memory, so the body is parsed where it already is.
"""

from __future__ import annotations

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

FIELD = "image"  # the multipart field that holds the photo
HOW_TO_SEND = f"send the photo as the multipart field '{FIELD}' (curl -F {FIELD}=@photo.jpg) or as the raw body"


class ApiError(Exception):
    """A request the client can fix: becomes a JSON body {"error": message} with this 4xx status."""

    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status = status
        self.message = " ".join(message.split())  # always one line
        self.headers = headers


async def read_body(request, max_bytes: int) -> bytes:
    """The whole body, refused with 413 as soon as it passes max_bytes (before it is all received)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise ApiError(413, f"upload of {int(declared):,} bytes is over the --max-bytes limit of {max_bytes:,}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise ApiError(413, f"upload is over the --max-bytes limit of {max_bytes:,} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def image_bytes(content_type: str, body: bytes) -> bytes:
    """The photo's bytes: the `image` field of a multipart form, or else the body itself."""
    mime, options = parse_options_header(content_type or "")
    if mime == b"multipart/form-data":
        boundary = options.get(b"boundary")
        if not boundary:
            raise ApiError(400, "multipart body without a boundary in its Content-Type")
        data = form_field(body, boundary, FIELD)
        if data is None:
            raise ApiError(400, f"no '{FIELD}' field in the form: {HOW_TO_SEND}")
    elif mime == b"application/json":
        raise ApiError(415, f"a JSON body holds no photo: {HOW_TO_SEND}")
    else:  # any other type, or none: the body is the photo (curl --data-binary labels it a urlencoded form)
        data = body
    if not data:
        raise ApiError(400, f"empty upload (0 bytes): {HOW_TO_SEND}")
    return data


def form_field(body: bytes, boundary: bytes, name: str) -> bytes | None:
    """The first part named `name` of a multipart/form-data body, or None when there is none."""
    form = _Form()
    parser = MultipartParser(boundary, form.callbacks())
    try:
        parser.write(body)
        parser.finalize()
    except MultipartParseError as err:
        raise ApiError(400, f"malformed multipart body ({err})") from None
    if not form.complete:
        raise ApiError(400, "multipart body ends before its closing boundary (cut off in transit?)")
    return next((bytes(data) for part_name, data in form.parts if part_name == name), None)


class _Form:
    """Collects (field name, bytes) per part from the parser's callbacks."""

    def __init__(self):
        self.parts: list[tuple[str | None, bytearray]] = []
        self.complete = False
        self._header = [b"", b""]

    def callbacks(self) -> dict:
        return {"on_part_begin": self._part_begin, "on_header_field": self._field, "on_header_value": self._value,
                "on_header_end": self._header_end, "on_part_data": self._data, "on_end": self._end}

    def _part_begin(self):
        self.parts.append((None, bytearray()))

    def _field(self, data: bytes, start: int, end: int):
        self._header[0] += data[start:end]

    def _value(self, data: bytes, start: int, end: int):
        self._header[1] += data[start:end]

    def _header_end(self):
        field, value = self._header
        self._header = [b"", b""]
        if field.lower() == b"content-disposition":
            name = parse_options_header(value)[1].get(b"name")
            self.parts[-1] = (name.decode("utf-8", "replace") if name else None, self.parts[-1][1])

    def _data(self, data: bytes, start: int, end: int):
        self.parts[-1][1].extend(data[start:end])

    def _end(self):
        self.complete = True
