"""PDF, DOCX, PPTX and HTML files the document tests make themselves (reportlab, python-docx, python-pptx, text).

Each page or slide carries its own marker word (``PAGEMARK3`` on page 3, ``SLIDEMARK2`` on slide 2), so a test can
tell which page a block's text comes from without trusting the converter's page map; one fact is planted on a
known page or slide (``FACT_PAGE``).
"""

from __future__ import annotations

from pathlib import Path

FACT = "The access code for the east pier storage shed is 58213."
FACT_PAGE = 2  # the PDF page and the PPTX slide that hold FACT
FILLER = "Fishing boats leave the harbour of Arvel before dawn and come back with the tide in the afternoon."


def page_lines(number: int) -> list[str]:
    lines = [f"PAGEMARK{number} opens this page.", FILLER, FILLER]
    if number == FACT_PAGE:
        lines.insert(1, FACT)
    return lines


def make_pdf(path: Path, pages: int = 3) -> Path:
    from reportlab.pdfgen import canvas

    pdf = canvas.Canvas(str(path))
    for number in range(1, pages + 1):
        for row, line in enumerate(page_lines(number)):
            pdf.drawString(40, 760 - 18 * row, line)
        pdf.showPage()
    pdf.save()
    return path


def make_docx(path: Path) -> Path:
    import docx

    document = docx.Document()
    document.add_heading("Harbour notes", level=1)
    document.add_paragraph(FILLER)
    document.add_paragraph(FACT)
    document.add_paragraph(FILLER)
    document.save(str(path))
    return path


def make_pptx(path: Path, slides: int = 3) -> Path:
    from pptx import Presentation

    deck = Presentation()
    for number in range(1, slides + 1):
        slide = deck.slides.add_slide(deck.slide_layouts[1])
        slide.shapes.title.text = f"SLIDEMARK{number}"
        slide.placeholders[1].text = FACT if number == FACT_PAGE else FILLER
    deck.save(str(path))
    return path


def make_html(path: Path) -> Path:
    path.write_text(
        "<!doctype html><html><head><title>Harbour</title><script>var hidden = 'SCRIPTTEXT';</script></head>"
        f"<body><h1>Harbour notes</h1><p>{FILLER}</p><p>{FACT}</p><p>{FILLER}</p></body></html>",
        encoding="utf-8",
    )
    return path


def make_corrupt_pdf(path: Path) -> Path:
    path.write_bytes(b"%PDF-1.7\n1 0 obj << /Type /Catalog >> endobj\nthis is not a PDF body\n%%EOF\n")
    return path


def make_all(directory: Path) -> dict[str, Path]:
    """One file of each format in ``directory``, by format name."""
    return {
        "pdf": make_pdf(directory / "harbour.pdf"),
        "docx": make_docx(directory / "harbour.docx"),
        "pptx": make_pptx(directory / "harbour.pptx"),
        "html": make_html(directory / "harbour.html"),
    }
