"""Cover benchmark: page 1 of a PDF → 600 px JPEG, pypdfium2 against pdf2image, in one run.

The integrator's design (the seed) renders covers with pdf2image (poppler's pdftoppm, one
process per call, after a pdfinfo call for the page count); shelfwork renders them in-process
with PDFium (`shelfwork.pipelines.koha_dspace.pdf.render_cover`). Both produce the bytes of a
JPEG ready to upload:

- ``pypdfium2``: ``render_cover(path, width=600)`` (render, Pillow JPEG, quality 85).
- ``pdf2image``: ``convert_from_path(path, first_page=1, last_page=1, size=(600, None),
  fmt="jpeg")`` then the PIL image saved as JPEG (quality 85) to bytes, as an upload needs;
  the "call only" column is the ``convert_from_path`` call alone.

PDFs, generated at run time by ``shelfwork.sandbox.pdfs`` (nothing downloaded): a 1-page text
PDF, a 300-page scanned-like PDF (one greyscale JPEG per A4 page at 150 dpi), a 500-page text
PDF. Each (PDF, renderer) pair runs once to warm up, then ``--repeat`` times; the median is
shown. Target: pypdfium2 at least 5x faster on every PDF.

Prints a Markdown section and appends it to bench/RESULTS.md (``--no-save`` to skip).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import io
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pypdfium2 as pdfium
from pdf2image import convert_from_path, pdfinfo_from_path

from shelfwork.pipelines.koha_dspace.pdf import PDFIUM_LOCK, render_cover
from shelfwork.sandbox.pdfs import scanned_pdf, text_pdf

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
RESULTS = BENCH_DIR / "RESULTS.md"
WIDTH = 600
QUALITY = 85
TARGET = 5.0


@dataclass
class Row:
    name: str
    pages: int
    size: int
    pdfium: list[float]
    pdfium_render: list[float]
    poppler: list[float]
    poppler_call: list[float]

    @property
    def ratio(self) -> float:
        return statistics.median(self.poppler) / statistics.median(self.pdfium)


def pdfium_cover(path: Path) -> bytes:
    return render_cover(path, width=WIDTH, quality=QUALITY)


def pdfium_render_only(path: Path) -> None:
    """Open, render page 1 at 600 px, close: the part of `render_cover` that is PDFium's."""
    with PDFIUM_LOCK:
        document = pdfium.PdfDocument(path)
        page = document[0]
        bitmap = page.render(scale=WIDTH / page.get_width(), prefer_bgrx=True, rev_byteorder=True)
        bitmap.close()
        page.close()
        document.close()


def poppler_cover(path: Path) -> bytes:
    (image,) = convert_from_path(path, first_page=1, last_page=1, size=(WIDTH, None), fmt="jpeg")
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=QUALITY)
    return out.getvalue()


def poppler_call(path: Path) -> None:
    convert_from_path(path, first_page=1, last_page=1, size=(WIDTH, None), fmt="jpeg")


def timed(action: Callable[[Path], object], path: Path, repeat: int) -> list[float]:
    action(path)  # warm-up: page cache, imports, PDFium initialisation
    runs = []
    for _ in range(repeat):
        start = time.perf_counter()
        action(path)
        runs.append(time.perf_counter() - start)
    return runs


def measure(workdir: Path, repeat: int) -> tuple[list[Row], list[float]]:
    """The rows, and the runs of one pdfinfo call on the 1-page PDF (a poppler process's cost)."""
    documents = [
        ("text, 1 page", 1, text_pdf(workdir / "text-1.pdf", 1)),
        ("scanned, 300 pages", 300, scanned_pdf(workdir / "scan-300.pdf", 300, dpi=150)),
        ("text, 500 pages", 500, text_pdf(workdir / "text-500.pdf", 500)),
    ]
    rows = []
    process_cost = timed(pdfinfo_from_path, documents[0][2], repeat)
    for name, pages, path in documents:
        print(f"{name}: {path.stat().st_size / 1e6:.1f} MB", file=sys.stderr)
        rows.append(
            Row(
                name=name,
                pages=pages,
                size=path.stat().st_size,
                pdfium=timed(pdfium_cover, path, repeat),
                pdfium_render=timed(pdfium_render_only, path, repeat),
                poppler=timed(poppler_cover, path, repeat),
                poppler_call=timed(poppler_call, path, repeat),
            )
        )
    return rows, process_cost


def _run(*command: str) -> str:
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=10, cwd=REPO_DIR, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"({exc})"
    return (done.stdout or done.stderr).strip()


def machine(argv: list[str], load_before: float) -> list[str]:
    """Facts that make this result comparable with a later one."""
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    commit = _run("git", "rev-parse", "--short", "HEAD")
    if _run("git", "status", "--porcelain", "--untracked-files=no"):
        commit += " + uncommitted changes"
    packages = []
    for name in ("pypdfium2", "pdf2image", "pillow"):
        try:
            packages.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            packages.append(f"{name} (not installed)")
    import pypdfium2

    poppler = _run("pdftoppm", "-v").splitlines()[0]
    return [
        f"- date: {_run('date', '-u')}",
        f"- command: `{' '.join(['python', 'bench/cover.py', *argv])}`",
        f"- machine: {os.cpu_count()} CPUs ({cpu}), {platform.system()} {platform.release()}; "
        f"load average before the run {load_before:.2f}, after {os.getloadavg()[0]:.2f}",
        f"- python {platform.python_version()}; {', '.join(packages)}; "
        f"PDFium {pypdfium2.PDFIUM_INFO}; {poppler}",
        f"- git commit: {commit}",
    ]


def report(rows: list[Row], process_cost: list[float], repeat: int, facts: list[str]) -> str:
    def ms(values: list[float]) -> str:
        return f"{statistics.median(values) * 1000:.1f}"

    lines = [
        f"## {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: "
        "PDF cover rendering (`bench/cover.py`)",
        "",
        *facts,
        f"- cover: page 1 → JPEG {WIDTH} px wide, quality {QUALITY}; median of {repeat} runs "
        "after one warm-up run, one thread",
        "",
        "| PDF | pages | size MB | pypdfium2 ms | of which PDFium render ms | pdf2image ms "
        f"| pdf2image call only ms | pdf2image / pypdfium2 | target ≥ {TARGET:g}x |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        verdict = "PASS" if row.ratio >= TARGET else "FAIL"
        lines.append(
            f"| {row.name} | {row.pages} | {row.size / 1e6:.1f} | {ms(row.pdfium)} "
            f"| {ms(row.pdfium_render)} | {ms(row.poppler)} | {ms(row.poppler_call)} | {row.ratio:.1f}x | {verdict} |"
        )
    passed = all(row.ratio >= TARGET for row in rows)
    worst = min(rows, key=lambda row: row.ratio)
    lines += [
        "",
        f"Verdict: {'PASS' if passed else 'FAIL'}: pypdfium2 is at least {worst.ratio:.1f}x "
        f"faster than pdf2image (worst case: {worst.name}; target {TARGET:g}x on every PDF).",
        "",
        f"pdf2image starts two poppler processes per cover (pdfinfo for the page count, then "
        f"pdftoppm); one pdfinfo call on the 1-page PDF takes {ms(process_cost)} ms here.",
        "",
        "All runs, ms (sorted):",
    ]
    for row in rows:
        for label, values in (("pypdfium2", row.pdfium), ("pdf2image", row.poppler)):
            shown = ", ".join(f"{v * 1000:.1f}" for v in sorted(values))
            lines.append(f"- {row.name}, {label}: {shown}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=7, help="timed runs per measurement")
    parser.add_argument("--no-save", action="store_true", help="do not append to RESULTS.md")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="shelfwork-cover-bench-") as workdir:
        rows, process_cost = measure(Path(workdir), args.repeat)
    text = report(rows, process_cost, args.repeat, machine(argv, load_before))
    print(text)
    if not args.no_save:
        with RESULTS.open("a", encoding="utf-8") as out:
            out.write("\n" + text)
        print(f"appended to {RESULTS.relative_to(REPO_DIR)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
