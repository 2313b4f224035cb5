"""check_pdf (with retries for files still being copied) and render_cover, on PDFs made here."""

from __future__ import annotations

import hashlib
import io
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pypdf
import pypdfium2 as pdfium
import pypdfium2.raw as pdfium_c
import pytest
from PIL import Image, ImageChops

from shelfwork.pipelines.koha_dspace import pdf
from shelfwork.pipelines.koha_dspace.pdf import (
    MAX_COVER_RATIO,
    PDFIUM_LOCK,
    BadPdf,
    PdfInfo,
    check_pdf,
    render_cover,
)
from shelfwork.sandbox.pdfs import corrupt_pdf, scanned_pdf, text_pdf


class FakeSleep:
    """Records the delays asked for; `on_sleep(n)` runs during the n-th "sleep"."""

    def __init__(self, on_sleep: Callable[[int], object] | None = None) -> None:
        self.calls: list[float] = []
        self.on_sleep = on_sleep

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)
        if self.on_sleep is not None:
            self.on_sleep(len(self.calls))


def encrypted_pdf(path: Path, source: Path) -> Path:
    writer = pypdf.PdfWriter(clone_from=pypdf.PdfReader(source))
    writer.encrypt(user_password="secret", owner_password="owner", algorithm="RC4-128")
    with open(path, "wb") as out:
        writer.write(out)
    return path


def empty_file(path: Path) -> Path:
    path.write_bytes(b"")
    return path


def info_of(data: bytes, pages: int) -> PdfInfo:
    """What check_pdf should report for a PDF of these bytes."""
    return PdfInfo(
        pages=pages,
        size=len(data),
        md5=hashlib.md5(data).hexdigest(),
        sha256=hashlib.sha256(data).hexdigest(),
    )


def jpeg_bytes() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(out, format="JPEG")
    return out.getvalue()


# --- check_pdf ---------------------------------------------------------------------------------


def test_good_pdfs(tmp_path: Path) -> None:
    text = text_pdf(tmp_path / "text.pdf", pages=3)
    assert check_pdf(text, sleep=FakeSleep()) == info_of(text.read_bytes(), 3)
    scan = scanned_pdf(tmp_path / "скан 1.pdf", pages=4)  # a Cyrillic file name
    assert check_pdf(scan, sleep=FakeSleep()).pages == 4


def test_zero_byte_file_is_retried_then_reported_empty(tmp_path: Path) -> None:
    path = tmp_path / "empty.pdf"
    path.write_bytes(b"")
    sleep = FakeSleep()
    with pytest.raises(BadPdf) as caught:
        check_pdf(path, tries=3, delay=1.5, sleep=sleep)
    assert caught.value.reason == "empty file (0 bytes)"
    assert caught.value.path == path
    assert str(caught.value) == "empty.pdf: empty file (0 bytes)"  # no server path: 956$z shows it
    assert sleep.calls == [1.5, 1.5]


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (jpeg_bytes(), "a JPEG image"),
        (b"PK\x03\x04 word document", "a ZIP archive"),
        (b"<!DOCTYPE html><html>Login</html>", "HTML or XML"),
        (b"just some text", "b'just som'"),
    ],
)
def test_not_a_pdf(tmp_path: Path, data: bytes, expected: str) -> None:
    path = tmp_path / "scan.pdf"
    path.write_bytes(data)
    with pytest.raises(BadPdf) as caught:
        check_pdf(path, tries=2, sleep=FakeSleep())
    assert caught.value.reason.startswith("not a PDF (starts with ")
    assert expected in caught.value.reason


def test_corrupt_pdf(tmp_path: Path) -> None:
    path = corrupt_pdf(tmp_path / "corrupt.pdf")
    with pytest.raises(BadPdf, match="corrupt PDF"):
        check_pdf(path, tries=1)
    # with an end marker the file gets as far as PDFium, which refuses it
    fixed_tail = tmp_path / "corrupt_eof.pdf"
    fixed_tail.write_bytes(path.read_bytes() + b"\n%%EOF\n")
    with pytest.raises(BadPdf, match=r"corrupt PDF: PDFium cannot load it"):
        check_pdf(fixed_tail, tries=1)


def test_encrypted_pdf_is_reported_at_once(tmp_path: Path) -> None:
    path = encrypted_pdf(tmp_path / "locked.pdf", text_pdf(tmp_path / "plain.pdf"))
    sleep = FakeSleep()
    with pytest.raises(BadPdf) as caught:
        check_pdf(path, tries=3, sleep=sleep)
    assert caught.value.reason == "encrypted PDF (password required)"
    assert sleep.calls == []  # a password does not appear by waiting


def test_no_pages(tmp_path: Path) -> None:
    with pytest.raises(BadPdf, match="no pages"):
        check_pdf(text_pdf(tmp_path / "none.pdf", pages=0), tries=1)


def test_a_stale_pdfium_error_does_not_make_a_file_encrypted(tmp_path: Path) -> None:
    """PDFium's last-error code survives into failures that do not set it: after an encrypted
    file, an empty page tree or a broken file must not be reported as encrypted."""
    locked = encrypted_pdf(tmp_path / "locked.pdf", text_pdf(tmp_path / "plain.pdf"))
    empty = text_pdf(tmp_path / "none.pdf", pages=0)
    broken = tmp_path / "broken.pdf"
    broken.write_bytes(corrupt_pdf(tmp_path / "c.pdf").read_bytes() + b"\n%%EOF\n")
    for path, reason in ((empty, "no pages"), (broken, "corrupt PDF")):
        with pytest.raises(BadPdf, match="encrypted"):
            check_pdf(locked, tries=1)
        with pytest.raises(BadPdf) as caught:
            check_pdf(path, tries=1)
        assert caught.value.reason.startswith(reason)


def test_missing_file_is_reported_at_once(tmp_path: Path) -> None:
    sleep = FakeSleep()
    with pytest.raises(BadPdf, match="file not found"):
        check_pdf(tmp_path / "nothing.pdf", sleep=sleep)
    assert sleep.calls == []


def test_truncated_file_that_stays_truncated(tmp_path: Path) -> None:
    whole = text_pdf(tmp_path / "whole.pdf", pages=5).read_bytes()
    path = tmp_path / "half.pdf"
    path.write_bytes(whole[: len(whole) // 2])
    sleep = FakeSleep()
    with pytest.raises(BadPdf, match="truncated"):
        check_pdf(path, tries=3, delay=0.25, sleep=sleep)
    assert sleep.calls == [0.25, 0.25]


def test_file_completed_by_a_copier_during_the_retries(tmp_path: Path) -> None:
    """The scan is still being copied: the first check fails, a copier thread writes the rest
    while the checker sleeps, and the second check passes."""
    whole = text_pdf(tmp_path / "whole.pdf", pages=20).read_bytes()
    path = tmp_path / "arriving.pdf"
    path.write_bytes(whole[:1000])
    go, done = threading.Event(), threading.Event()

    def copier() -> None:
        go.wait(10)
        with open(path, "ab") as out:
            out.write(whole[1000:])
        done.set()

    thread = threading.Thread(target=copier)
    thread.start()

    def while_sleeping(call: int) -> None:
        go.set()
        assert done.wait(10)

    sleep = FakeSleep(while_sleeping)
    info = check_pdf(path, tries=3, delay=1.0, sleep=sleep)
    thread.join()
    assert sleep.calls == [1.0]
    assert info == info_of(whole, 20)


def test_a_file_that_grows_during_one_inspection_is_checked_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The size is taken first and the checksum last: a file that grows in between (a copier
    appending while PDFium reads it) must not pass with the old size and the new checksum."""
    path = text_pdf(tmp_path / "growing.pdf", pages=2)
    real_open = pdf._open
    grow = [True]

    def open_while_a_copier_appends(*args: object) -> pdfium.PdfDocument:
        if grow[0]:
            grow[0] = False
            with open(path, "ab") as out:
                out.write(b"\n% the rest of the copy\n%%EOF\n")
        return real_open(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(pdf, "_open", open_while_a_copier_appends)
    before = path.stat().st_size
    with pytest.raises(BadPdf) as caught:
        check_pdf(path, tries=1)
    after = path.stat().st_size
    assert caught.value.reason == f"still being written (size went from {before} to {after} bytes)"
    # with a second try the grown file is checked as a whole
    grow[0] = True
    sleep = FakeSleep()
    info = check_pdf(path, tries=2, delay=0.5, sleep=sleep)
    assert sleep.calls == [0.5]
    assert info == info_of(path.read_bytes(), 2)


def test_pdfium_reads_the_opened_file_not_what_its_name_names_later(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The name is swapped for a symlink to another PDF just as PDFium opens the file: the
    check and the cover are still of the file opened (and hashed). Given a path, pypdfium2
    resolves it and PDFium opens that name again, so it read the other file (a cover of a PDF
    from anywhere on the server)."""
    inside = text_pdf(tmp_path / "scan_v01.pdf", pages=2, title="inside")
    copy = tmp_path / "copy.pdf"
    copy.write_bytes(inside.read_bytes())
    expected_cover = render_cover(copy)
    outside = scanned_pdf(tmp_path / "outside.pdf", pages=7)
    loads: list[str] = []

    def swapping_before(load: str) -> Callable[..., object]:
        real = getattr(pdfium_c, load)

        def swap_then_load(*args: object) -> object:
            loads.append(load)
            if not inside.is_symlink():
                inside.rename(tmp_path / "renamed.pdf")
                inside.symlink_to(outside)
            return real(*args)

        return swap_then_load

    for load in ("FPDF_LoadDocument", "FPDF_LoadCustomDocument"):  # by name, or by stream
        monkeypatch.setattr(pdfium_c, load, swapping_before(load))
    assert check_pdf(inside, tries=1) == info_of(copy.read_bytes(), 2)
    (tmp_path / "renamed.pdf").rename(inside)  # replaces the symlink
    assert render_cover(inside) == expected_cover
    assert loads, "PDFium loaded the file some other way: the swap was not tried"


def test_a_file_whose_name_is_removed_once_opened_is_still_checked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A name removed (moved on, deleted) after the open does not matter: the open file is read.
    Before, PDFium was handed '/…/scan.pdf (deleted)' and the check died with a
    FileNotFoundError naming the server path."""
    path = text_pdf(tmp_path / "scan.pdf", pages=2)
    data = path.read_bytes()
    real_open = os.open

    def open_then_remove(name: object, flags: int, *args: object, **kwargs: object) -> int:
        fd = real_open(name, flags, *args, **kwargs)  # type: ignore[arg-type]
        if name == path and path.exists():
            path.unlink()
        return fd

    monkeypatch.setattr(pdf.os, "open", open_then_remove)
    assert check_pdf(path, tries=1) == info_of(data, 2)
    path.write_bytes(data)
    assert open_jpeg(render_cover(path)).width == 600


def test_a_symlink_or_a_fifo_is_not_checked(tmp_path: Path) -> None:
    target = text_pdf(tmp_path / "real.pdf")
    (tmp_path / "link.pdf").symlink_to(target)
    os.mkfifo(tmp_path / "pipe.pdf")
    sleep = FakeSleep()
    for name, reason in (
        ("link.pdf", "a symbolic link, not a file"),
        ("pipe.pdf", "not a regular file"),
    ):
        with pytest.raises(BadPdf) as caught:
            check_pdf(tmp_path / name, sleep=sleep)
        assert caught.value.reason == reason
        with pytest.raises(BadPdf, match=reason):
            render_cover(tmp_path / name)
    assert sleep.calls == []


def test_zero_byte_file_that_arrives(tmp_path: Path) -> None:
    path = tmp_path / "late.pdf"
    path.write_bytes(b"")
    source = text_pdf(tmp_path / "source.pdf")
    sleep = FakeSleep(lambda call: path.write_bytes(source.read_bytes()) if call == 2 else None)
    assert check_pdf(path, tries=3, sleep=sleep).pages == 1
    assert len(sleep.calls) == 2


def test_tries_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="tries"):
        check_pdf(text_pdf(tmp_path / "a.pdf"), tries=0)


# --- render_cover ------------------------------------------------------------------------------


def open_jpeg(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    assert image.format == "JPEG"
    image.load()
    return image


def test_cover_of_a_text_pdf(tmp_path: Path) -> None:
    image = open_jpeg(render_cover(text_pdf(tmp_path / "t.pdf", pages=2)))
    assert image.mode == "RGB"
    assert image.width == 600
    assert abs(image.height - round(600 * 842 / 595)) <= 1
    darkest = image.convert("L").getextrema()[0]
    assert darkest < 100  # the text was drawn, not a blank page
    assert image.getpixel((5, 5)) >= (240, 240, 240)  # white background, not black


def test_cover_of_a_scan_at_another_width(tmp_path: Path) -> None:
    """A scan is decoded at JPEG's nearest reduced size: at least as wide as asked, < 2x."""
    image = open_jpeg(render_cover(scanned_pdf(tmp_path / "s.pdf", pages=3), width=300))
    assert 300 <= image.size[0] < 600
    assert image.mode == "RGB"


def _difference(a: Image.Image, b: Image.Image) -> float:
    b = b.resize(a.size, Image.Resampling.LANCZOS)
    diff = ImageChops.difference(a.convert("L"), b.convert("L"))
    return sum(i * n for i, n in enumerate(diff.histogram())) / (a.width * a.height)


def test_a_scan_cover_from_its_jpeg_looks_like_the_rendered_page(tmp_path: Path) -> None:
    scan = scanned_pdf(tmp_path / "s.pdf", pages=2, seed=7)
    fast = open_jpeg(render_cover(scan))
    with PDFIUM_LOCK:
        document = pdfium.PdfDocument(str(scan))
        try:
            page = document[0]
            bitmap = page.render(scale=600 / page.get_size()[0])
            rendered = bitmap.to_pil().convert("RGB")
            bitmap.close()
            page.close()
        finally:
            document.close()
    assert fast.width == 620  # a 1240 px (150 dpi) scan decoded at 1/2: not rendered
    assert abs(fast.height / fast.width - rendered.height / rendered.width) < 0.01
    assert _difference(rendered, fast) < 6  # mean grey-level difference out of 255


def _scan_with(tmp_path: Path, *, rotate: int = 0, text: bool = False) -> Path:
    """A one-page scan as pypdf writes it, rotated or with text over the image."""
    source = scanned_pdf(tmp_path / "base.pdf", pages=1, seed=3)
    reader = pypdf.PdfReader(source)
    writer = pypdf.PdfWriter()
    page = writer.add_page(reader.pages[0])
    if rotate:
        page.rotate(rotate)
    if text:
        overlay = pypdf.PdfReader(text_pdf(tmp_path / "text.pdf", pages=1)).pages[0]
        page.merge_page(overlay)
    path = tmp_path / f"scan-{rotate}-{text}.pdf"
    with open(path, "wb") as out:
        writer.write(out)
    return path


@pytest.mark.parametrize(("rotate", "text"), [(90, False), (0, True)])
def test_a_page_that_is_not_a_plain_scan_is_rendered(
    tmp_path: Path, rotate: int, text: bool
) -> None:
    """Rotated, or text over the image: PDFium draws it, at exactly the width asked."""
    image = open_jpeg(render_cover(_scan_with(tmp_path, rotate=rotate, text=text)))
    assert image.width == 600
    if rotate:
        assert image.width > image.height  # the page is landscape once turned


def test_a_very_tall_page_is_cut(tmp_path: Path) -> None:
    writer = pypdf.PdfWriter()
    writer.add_blank_page(width=100, height=5000)
    path = tmp_path / "scroll.pdf"
    with open(path, "wb") as out:
        writer.write(out)
    image = open_jpeg(render_cover(path, width=200))
    assert image.size == (200, int(200 * MAX_COVER_RATIO))


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda d: corrupt_pdf(d / "c.pdf"), "corrupt PDF"),
        (lambda d: empty_file(d / "e.pdf"), "empty file"),
        (lambda d: encrypted_pdf(d / "x.pdf", text_pdf(d / "p.pdf")), "encrypted PDF"),
        (lambda d: text_pdf(d / "n.pdf", pages=0), "no pages"),
    ],
)
def test_cover_of_a_bad_pdf(tmp_path: Path, make: Callable[[Path], Path], reason: str) -> None:
    path = make(tmp_path)
    with pytest.raises(BadPdf, match=reason):
        render_cover(path)


def test_cover_arguments_are_checked(tmp_path: Path) -> None:
    path = text_pdf(tmp_path / "a.pdf")
    with pytest.raises(ValueError, match="width"):
        render_cover(path, width=0)
    with pytest.raises(ValueError, match="quality"):
        render_cover(path, quality=0)


def test_pdfium_calls_wait_for_the_lock(tmp_path: Path) -> None:
    """PDFium is not thread-safe: a render must not start while another thread holds the lock."""
    path = text_pdf(tmp_path / "a.pdf")
    finished = threading.Event()
    PDFIUM_LOCK.acquire()
    try:
        worker = threading.Thread(target=lambda: (render_cover(path), finished.set()))
        worker.start()
        assert not finished.wait(0.3)
    finally:
        PDFIUM_LOCK.release()
    worker.join(10)
    assert finished.is_set()


def test_covers_and_checks_from_many_threads(tmp_path: Path) -> None:
    paths = [text_pdf(tmp_path / f"t{n}.pdf", pages=n + 1) for n in range(4)]
    paths += [scanned_pdf(tmp_path / f"s{n}.pdf", pages=2, seed=n) for n in range(4)]
    errors: list[BaseException] = []
    sizes: list[tuple[int, int]] = []

    def work(path: Path) -> None:
        try:
            for _ in range(5):
                sizes.append(open_jpeg(render_cover(path)).size)
                check_pdf(path, tries=1)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(path,)) for path in paths]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert len(sizes) == 40 and {w for w, _ in sizes} <= {600, 620}  # scans: 1240 px / 2


# --- the sandbox generator ---------------------------------------------------------------------


def test_generated_pdfs(tmp_path: Path) -> None:
    start = time.perf_counter()
    big = scanned_pdf(tmp_path / "big.pdf", pages=300)
    assert time.perf_counter() - start < 10
    assert check_pdf(big, tries=1).pages == 300
    again = scanned_pdf(tmp_path / "again.pdf", pages=300)
    assert again.read_bytes() == big.read_bytes()  # same seed, same file
    other = scanned_pdf(tmp_path / "other.pdf", pages=3, seed=1)
    assert other.read_bytes() != scanned_pdf(tmp_path / "o0.pdf", pages=3).read_bytes()
    reader = pypdf.PdfReader(text_pdf(tmp_path / "t.pdf", pages=2, title="Кобзар (1840)"))
    assert len(reader.pages) == 2
    assert "Page 2 of 2" in reader.pages[1].extract_text()
    assert "(1840)" in reader.pages[0].extract_text()
    assert corrupt_pdf(tmp_path / "c.pdf").read_bytes().startswith(b"%PDF-")
    with pytest.raises(ValueError):
        scanned_pdf(tmp_path / "x.pdf", pages=0)
