"""Is the scan a readable PDF, and its first page as a JPEG cover, with PDFium (pypdfium2).

PDFium renders the first page of a 300-page scan without touching the other 299, in-process,
where pdf2image starts a poppler process per call (see bench/cover.py for the numbers).

Thread safety: PDFium is not thread-safe, not even for different documents, and pypdfium2 5.x
adds no lock of its own (its documentation, "Incompatibility with Threading": calls must be
serialised, e.g. by a mutex, or crash the process). The integrator renders covers in a thread
pool next to other jobs, so every PDFium call here, including the closing of documents, pages
and bitmaps, happens under `PDFIUM_LOCK`. Objects are closed explicitly inside the lock rather
than left to garbage collection, which could run their finalizers on any thread at any time.
Other code in the process that uses pypdfium2 must take the same lock. The JPEG encoding
(Pillow, thread-safe) runs outside it.

Each check or render opens the file once (not following a symlink at its name) and reads
everything, PDFium included, from that one descriptor: the checksums then describe the very
bytes that were checked, whatever happens to the name meanwhile.
"""

from __future__ import annotations

import errno
import io
import os
import re
import stat
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pypdfium2 as pdfium
import pypdfium2.raw as pdfium_c
from PIL import Image

from ...errors import ShelfworkError
from .files import content_hashes

#: serialises every PDFium call in this process (see the module docstring)
PDFIUM_LOCK = threading.RLock()

#: a cover is cut at this height-to-width ratio: a scroll-like page must not become a huge bitmap
MAX_COVER_RATIO = 4.0

_ENCRYPT = re.compile(rb"/Encrypt\b")
# a page tree dictionary (no nested dictionaries) whose /Count is 0
_EMPTY_PAGE_TREE = re.compile(rb"<<(?=[^<>]*/Type\s*/Pages\b)(?=[^<>]*/Count\s+0\b)[^<>]*>>")
_CHUNK = 1024 * 1024
_OPEN = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC  # NONBLOCK: a FIFO won't hang
_HEAD = 1024  # PDF readers accept the %PDF- header anywhere in the first 1024 bytes
_TAIL = 1024  # and look for %%EOF near the end
_MAGIC = (
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"\x89PNG", "a PNG image"),
    (b"II*\x00", "a TIFF image"),
    (b"MM\x00*", "a TIFF image"),
    (b"PK\x03\x04", "a ZIP archive (.docx, .odt, .zip)"),
    (b"\xd0\xcf\x11\xe0", "an old Microsoft Office file (.doc)"),
    (b"AT&TFORM", "a DjVu document"),
    (b"{\\rtf", "an RTF document"),
)


class BadPdf(ShelfworkError):
    """The file is not a PDF that can be deposited; `reason` says what is wrong with it.

    The message names the file, not its folder: it reaches Koha's 956$z and the task status."""

    def __init__(self, path: Path, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{path.name}: {reason}")


@dataclass(frozen=True)
class PdfInfo:
    """What was checked: the page count, and the size and checksums of those very bytes."""

    pages: int
    size: int
    md5: str
    sha256: str


class _Unreadable(Exception):
    def __init__(self, reason: str, *, lasting: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.lasting = lasting  # trying again will not help (encrypted, missing)


def check_pdf(
    path: Path,
    *,
    tries: int = 3,
    delay: float = 1.0,
    sleep: Callable[[float], None] = time.sleep,
) -> PdfInfo:
    """Pages, size, MD5 and SHA-256 of a readable PDF; BadPdf with the last reason otherwise.

    A scan may still be being copied into place (a network share, a slow scanner), so an empty,
    truncated or changing file is tried again `tries` times, `delay` seconds apart. An encrypted
    or missing file is reported at once: waiting will not change it.
    """
    if tries < 1:
        raise ValueError(f"tries must be at least 1, got {tries}")
    last = "not checked"
    for attempt in range(tries):
        try:
            return _inspect(path)
        except _Unreadable as exc:
            last = exc.reason
            if exc.lasting:
                break
        if attempt < tries - 1:
            sleep(delay)
    raise BadPdf(path, last)


def _inspect(path: Path) -> PdfInfo:
    with _opened(path) as file:
        size = _size_and_header(file)
        tail = os.pread(file.fileno(), _TAIL, max(0, size - _TAIL))
        if b"%%EOF" not in tail:
            raise _Unreadable("corrupt PDF: truncated, no %%EOF at the end (still being copied?)")
        with PDFIUM_LOCK:
            document = _open(file)
            try:
                pages = len(document)
                if pages == 0:
                    raise _Unreadable("no pages")
                try:
                    document[0].close()
                except pdfium.PdfiumError as exc:
                    raise _Unreadable(f"corrupt PDF: page 1 cannot be read ({exc})") from None
            finally:
                document.close()
        read, sha256, md5 = content_hashes(file.fileno())
        after = max(read, os.fstat(file.fileno()).st_size)
    if after != size:
        raise _Unreadable(f"still being written (size went from {size} to {after} bytes)")
    return PdfInfo(pages=pages, size=size, md5=md5, sha256=sha256)


@contextmanager
def _opened(path: Path) -> Iterator[io.FileIO]:
    """`path` opened once for reading, its name not followed, as an unbuffered file object
    (PDFium reads it through its own callbacks)."""
    try:
        fd = os.open(path, _OPEN)
    except FileNotFoundError:
        raise _Unreadable("file not found", lasting=True) from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _Unreadable("a symbolic link, not a file", lasting=True) from None
        raise _Unreadable(f"cannot be read: {exc.strerror or exc}") from None
    with io.FileIO(fd, "rb", closefd=True) as file:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise _Unreadable("a directory, not a file", lasting=True)
        if not stat.S_ISREG(mode):
            raise _Unreadable("not a regular file", lasting=True)
        yield file


def _size_and_header(file: io.FileIO) -> int:
    try:
        size = os.fstat(file.fileno()).st_size
        head = os.pread(file.fileno(), _HEAD, 0)
    except OSError as exc:
        raise _Unreadable(f"cannot be read: {exc.strerror or exc}") from None
    if size == 0 or not head:
        raise _Unreadable("empty file (0 bytes)")
    if b"%PDF-" not in head:
        raise _Unreadable(f"not a PDF (starts with {_describe_start(head)})")
    return size


def _describe_start(head: bytes) -> str:
    shown = repr(head[:8])
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return f"{shown}: {kind}"
    if head.lstrip()[:1] == b"<":
        return f"{shown}: HTML or XML, perhaps an error page saved as .pdf"
    return shown


def _open(file: io.FileIO) -> pdfium.PdfDocument:
    """Call with PDFIUM_LOCK held; `file` must stay open until the document is closed.

    PDFium reads the open file through pypdfium2's stream callbacks, so what it checks or
    renders is the very file that was opened (and hashed), whatever happens to its name. Never
    a path, not even /proc/self/fd/N: pypdfium2 resolves a path to the file's current name and
    PDFium opens that name again. Reading natively gains nothing measurable (a 70 MB scan's
    cover: 7.3 ms either way; opening it and page 1: 0.35 ms against 0.39 ms)."""
    try:
        return pdfium.PdfDocument(file, autoclose=False)
    except pdfium.PdfiumError as exc:
        raise _load_failure(file.fileno(), exc.err_code) from None


def _load_failure(fd: int, code: int | None) -> _Unreadable:
    """Why PDFium refused the file.

    PDFium's error code is a process-wide "last error" that some failures do not set (a PDF
    with an empty page tree fails with whatever the previous failure left, "Success" in a fresh
    process), so the code alone could call such a file encrypted. An encryption verdict needs
    the file's own /Encrypt entry as well; an empty page tree is recognised in the file.
    """
    if code in (pdfium_c.FPDF_ERR_PASSWORD, pdfium_c.FPDF_ERR_SECURITY) and _file_has(fd, _ENCRYPT):
        if code == pdfium_c.FPDF_ERR_SECURITY:
            return _Unreadable("encrypted PDF (unsupported security scheme)", lasting=True)
        return _Unreadable("encrypted PDF (password required)", lasting=True)
    if _file_has(fd, _EMPTY_PAGE_TREE):
        return _Unreadable("no pages")
    if code == pdfium_c.FPDF_ERR_FORMAT:
        return _Unreadable("corrupt PDF: PDFium cannot load it (data format error)")
    if code == pdfium_c.FPDF_ERR_FILE:
        return _Unreadable("corrupt PDF: PDFium cannot load it (file access error)")
    return _Unreadable("corrupt PDF: PDFium cannot load it")


def _file_has(fd: int, pattern: re.Pattern[bytes]) -> bool:
    """Search the whole file in chunks (only on the failure path, so the cost does not matter)."""
    overlap = 4096
    previous = b""
    offset = 0
    try:
        while chunk := os.pread(fd, _CHUNK, offset):
            if pattern.search(previous + chunk):
                return True
            previous = chunk[-overlap:]
            offset += len(chunk)
    except OSError:
        return False
    return False


def render_cover(path: Path, *, width: int = 600, quality: int = 85) -> bytes:
    """Page 1 as an RGB JPEG `width` pixels wide (a very tall page is cut at the top
    MAX_COVER_RATIO × width pixels).

    A scanned page (one JPEG drawn over the whole page, nothing else) is not rendered: its JPEG
    is decoded at the smallest of JPEG's built-in reduced sizes (1/2, 1/4, 1/8) that is still at
    least `width` wide, which skips most of the decoding. That cover is up to twice as wide as
    asked (Koha scales covers to its own size on upload); everything else is exactly `width`.
    """
    if not 16 <= width <= 10_000:
        raise ValueError(f"width must be 16..10000 pixels, got {width}")
    if not 1 <= quality <= 100:
        raise ValueError(f"quality must be 1..100, got {quality}")
    try:
        with _opened(path) as file:
            _size_and_header(file)
            first = _render_first_page(file, width, scans=True)
            image = _decode_scan(first, width) if isinstance(first, bytes) else first
            if image is None:  # not a JPEG Pillow decodes as plain L/RGB: let PDFium draw it
                image = _render_first_page(file, width, scans=False)
                assert isinstance(image, Image.Image)
    except _Unreadable as exc:
        raise BadPdf(path, exc.reason) from None
    if image.width != width and not isinstance(first, bytes):
        # the renderer rounds the page size up to whole pixels
        height = max(1, round(image.height * width / image.width))
        image = image.resize((width, height), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=quality)
    return out.getvalue()


def _render_first_page(file: io.FileIO, width: int, *, scans: bool) -> Image.Image | bytes:
    """Page 1 rendered, or (with `scans`) the JPEG bytes of a scanned page."""
    with PDFIUM_LOCK:
        document = _open(file)
        try:
            if len(document) == 0:
                raise _Unreadable("no pages")
            if scans:
                scan = _scan_jpeg(document)
                if scan is not None:
                    return scan
            return _render_page(document, width)
        except pdfium.PdfiumError as exc:
            raise _Unreadable(f"corrupt PDF: page 1 cannot be rendered ({exc})") from None
        finally:
            document.close()


def _scan_jpeg(document: pdfium.PdfDocument) -> bytes | None:
    """The JPEG of page 1 when the page is exactly one upright JPEG image covering the page
    (what scanners write), else None. Call with PDFIUM_LOCK held."""
    page = document[0]
    try:
        if page.get_rotation() != 0:
            return None
        objects = list(page.get_objects(max_depth=1))
        if len(objects) != 1 or objects[0].type != pdfium_c.FPDF_PAGEOBJ_IMAGE:
            return None
        image = objects[0]
        assert isinstance(image, pdfium.PdfImage)
        if image.get_filters() != ["DCTDecode"]:
            return None
        a, b, c, d, _e, _f = image.get_matrix().get()
        if b or c or a <= 0 or d <= 0:  # rotated, skewed or mirrored on the page
            return None
        page_width, page_height = page.get_size()
        left, bottom, right, top = image.get_bounds()
        if max(abs(left), abs(bottom), abs(right - page_width), abs(top - page_height)) > 1:
            return None
        return bytes(image.get_data(decode_simple=False))
    finally:
        page.close()


def _decode_scan(data: bytes, width: int) -> Image.Image | None:
    """Decode a scan's JPEG at the smallest built-in reduction still `width` wide (Pillow's
    draft mode), cut like a rendered page; None for a JPEG that is not plain grey or RGB (CMYK
    scans come out inverted without their Adobe markers: PDFium handles those)."""
    try:
        picture = Image.open(io.BytesIO(data))
        if picture.format != "JPEG" or picture.mode not in ("L", "RGB"):
            return None
        picture.draft("RGB", (width, max(1, width * picture.height // picture.width)))
        picture = picture.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
    limit = int(picture.width * MAX_COVER_RATIO)
    return picture.crop((0, 0, picture.width, limit)) if picture.height > limit else picture


def _render_page(document: pdfium.PdfDocument, width: int) -> Image.Image:
    """Call with PDFIUM_LOCK held."""
    page = document[0]
    try:
        page_width, page_height = page.get_size()
        if page_width <= 0 or page_height <= 0:
            raise _Unreadable(f"page 1 has no size ({page_width} x {page_height} pt)")
        scale = width / page_width
        cut = max(0.0, page_height - MAX_COVER_RATIO * width / scale)
        # RGBX: PIL wraps that buffer without a copy, and convert() makes the one RGB copy
        # Pillow owns (the other formats cost a BGR->RGB conversion and a second copy).
        bitmap = page.render(
            scale=scale,
            crop=(0, cut, 0, 0),
            fill_color=(255, 255, 255, 255),
            prefer_bgrx=True,
            rev_byteorder=True,
        )
        try:
            return bitmap.to_pil().convert("RGB")
        finally:
            bitmap.close()
    finally:
        page.close()
