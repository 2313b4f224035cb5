"""PDFs made at run time for the demo, the tests and the benchmarks; nothing is downloaded.

- `text_pdf`: real text pages (Helvetica), written by hand: catalog, page tree, content streams,
  cross-reference table. Small and quick, whatever the page count.
- `scanned_pdf`: image-only pages like a scanner's output: one greyscale JPEG per page (paper
  texture, dark "lines of text"), at the given dpi. A few distinct page images are drawn with
  Pillow and encoded once, then reused, so 300 pages take about a second; each page still has
  its own image object, as in a real scan.
- `corrupt_pdf`: starts like a PDF, then breaks off into garbage, with no cross-reference table.
"""

from __future__ import annotations

import io
import random
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter

#: A4 in points (1/72 inch)
A4 = (595, 842)
_DISTINCT_SCANS = 6


class _PdfWriter:
    """Numbered objects in memory, written with an exact xref table."""

    def __init__(self) -> None:
        self.objects: list[bytes | None] = []

    def reserve(self) -> int:
        self.objects.append(None)
        return len(self.objects)

    def put(self, number: int, body: bytes) -> None:
        self.objects[number - 1] = body

    def add(self, body: bytes) -> int:
        number = self.reserve()
        self.put(number, body)
        return number

    def add_stream(self, entries: bytes, data: bytes) -> int:
        return self.add(
            b"<< " + entries + b" /Length %d >>\nstream\n" % len(data) + data + b"\nendstream"
        )

    def write(self, path: Path, root: int, info: int | None = None) -> Path:
        out = io.BytesIO()
        out.write(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")  # binary marker: tools keep the file binary
        offsets: list[int] = []
        for number, body in enumerate(self.objects, start=1):
            if body is None:
                raise ValueError(f"object {number} reserved but never written")
            offsets.append(out.tell())
            out.write(b"%d 0 obj\n" % number + body + b"\nendobj\n")
        xref = out.tell()
        out.write(b"xref\n0 %d\n0000000000 65535 f \n" % (len(offsets) + 1))
        for offset in offsets:
            out.write(b"%010d 00000 n \n" % offset)
        trailer = b"/Size %d /Root %d 0 R" % (len(offsets) + 1, root)
        if info is not None:
            trailer += b" /Info %d 0 R" % info
        out.write(b"trailer\n<< " + trailer + b" >>\nstartxref\n%d\n%%%%EOF\n" % xref)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(out.getvalue())
        return path


def _pdf_string(text: str) -> bytes:
    """A PDF literal string in WinAnsi (Helvetica's encoding); other characters become '?'."""
    raw = text.encode("cp1252", errors="replace")
    return b"(" + raw.replace(b"\\", b"\\\\").replace(b"(", b"\\(").replace(b")", b"\\)") + b")"


def _pages(writer: _PdfWriter, pages: list[bytes], pages_number: int) -> None:
    kids = b" ".join(b"%d 0 R" % number for number in pages)
    writer.put(pages_number, b"<< /Type /Pages /Kids [%s] /Count %d >>" % (kids, len(pages)))


def text_pdf(path: Path, pages: int = 1, *, title: str = "Shelfwork test document") -> Path:
    """A PDF of `pages` text pages (0 gives a valid PDF with no pages, for tests)."""
    if pages < 0:
        raise ValueError(f"pages must be >= 0, got {pages}")
    writer = _PdfWriter()
    catalog = writer.reserve()
    tree = writer.reserve()
    font = writer.add(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    info = writer.add(b"<< /Title " + _pdf_string(title) + b" /Producer (shelfwork sandbox) >>")
    kids: list[int] = []
    for number in range(1, pages + 1):
        lines = [
            b"BT /F1 24 Tf 72 760 Td " + _pdf_string(title) + b" Tj ET",
            b"BT /F1 12 Tf 72 730 Td " + _pdf_string(f"Page {number} of {pages}") + b" Tj ET",
        ]
        for row in range(30):
            y = 700 - row * 20
            text = f"Line {row + 1}: the quick brown fox jumps over the lazy dog."
            lines.append(b"BT /F1 11 Tf 72 %d Td " % y + _pdf_string(text) + b" Tj ET")
        content = writer.add_stream(b"", b"\n".join(lines))
        kids.append(
            writer.add(
                b"<< /Type /Page /Parent %d 0 R /MediaBox [0 0 %d %d] " % (tree, *A4)
                + b"/Resources << /Font << /F1 %d 0 R >> >> /Contents %d 0 R >>" % (font, content)
            )
        )
    _pages(writer, kids, tree)
    writer.put(catalog, b"<< /Type /Catalog /Pages %d 0 R >>" % tree)
    return writer.write(path, catalog, info)


def _scan_image(size: tuple[int, int], rng: random.Random, label: str) -> Image.Image:
    """A greyscale page that looks scanned: uneven paper, dark text lines, a darker margin."""
    width, height = size
    small = (max(1, width // 16), max(1, height // 16))
    paper = Image.frombytes(
        "L", small, bytes(rng.randrange(222, 246) for _ in range(small[0] * small[1]))
    )
    page = paper.resize(size, Image.Resampling.BILINEAR)
    draw = ImageDraw.Draw(page)
    margin = width // 10
    line_height = max(4, height // 60)
    y = margin
    draw.text((margin, y), label, fill=20)
    y += 3 * line_height
    while y < height - margin:
        x = margin
        while x < width - margin:
            word = rng.randrange(width // 40 + 1, width // 10 + 2)
            draw.rectangle(
                (x, y, min(x + word, width - margin), y + line_height // 2),
                fill=rng.randrange(25, 70),
            )
            x += word + max(2, width // 80)
        y += line_height
    edge = max(2, width // 60)
    draw.rectangle((0, 0, edge, height), fill=150)
    return page.filter(ImageFilter.GaussianBlur(0.6))


def scanned_pdf(path: Path, pages: int = 1, *, dpi: int = 150, seed: int = 0) -> Path:
    """A PDF of `pages` image-only A4 pages at `dpi`, JPEG-compressed like a scanner's."""
    if pages < 1:
        raise ValueError(f"pages must be >= 1, got {pages}")
    if not 10 <= dpi <= 1200:
        raise ValueError(f"dpi must be 10..1200, got {dpi}")
    rng = random.Random(seed)
    pixels = (round(A4[0] * dpi / 72), round(A4[1] * dpi / 72))
    scans: list[bytes] = []
    for index in range(min(pages, _DISTINCT_SCANS)):
        image = _scan_image(pixels, rng, f"scan {seed}-{index + 1}")
        out = io.BytesIO()
        image.save(out, format="JPEG", quality=75)
        scans.append(out.getvalue())
    writer = _PdfWriter()
    catalog = writer.reserve()
    tree = writer.reserve()
    kids: list[int] = []
    draw = b"q %d 0 0 %d 0 0 cm /Im0 Do Q" % A4
    for number in range(pages):
        image = writer.add_stream(
            b"/Type /XObject /Subtype /Image /Width %d /Height %d " % pixels
            + b"/ColorSpace /DeviceGray /BitsPerComponent 8 /Filter /DCTDecode",
            scans[number % len(scans)],
        )
        content = writer.add_stream(b"", draw)
        kids.append(
            writer.add(
                b"<< /Type /Page /Parent %d 0 R /MediaBox [0 0 %d %d] " % (tree, *A4)
                + b"/Resources << /XObject << /Im0 %d 0 R >> >> /Contents %d 0 R >>"
                % (image, content)
            )
        )
    _pages(writer, kids, tree)
    writer.put(catalog, b"<< /Type /Catalog /Pages %d 0 R >>" % tree)
    return writer.write(path, catalog)


def corrupt_pdf(path: Path) -> Path:
    """A file with a PDF header and the start of a catalog, then random bytes; no xref, no EOF."""
    rng = random.Random(7)
    body = b"%PDF-1.7\n1 0 obj\n<< /Type /Catalog /Pages 2 0 R"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(body + bytes(rng.randrange(256) for _ in range(2048)))
    return path
