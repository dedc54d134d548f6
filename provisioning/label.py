"""The sticker for the box and the work order: pole, device, date, and a QR code that says the same.

The QR holds a short JSON document (not a URL to a server that may move), so a phone app, a scanner
at the depot or a person with any QR reader gets the ids offline. PNG for the label printer, PDF for
the work order; both drawn with Pillow's built-in font, so nothing depends on fonts installed on the
technician's laptop.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import segno
from PIL import Image, ImageDraw, ImageFont

# 62 mm x 29 mm at 300 dpi: the common continuous-tape label size.
WIDTH, HEIGHT = 732, 342
MARGIN = 18


@dataclass(frozen=True)
class LabelFacts:
    pole_id: str
    device_id: str
    site: str | None
    enrolled_on: str
    server: str

    def qr_payload(self) -> str:
        return json.dumps(
            {
                "polewatch": 1,
                "pole": self.pole_id,
                "device": self.device_id,
                "site": self.site,
                "enrolled": self.enrolled_on,
            },
            separators=(",", ":"),
        )


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def render(facts: LabelFacts) -> Image.Image:
    image = Image.new("RGB", (WIDTH, HEIGHT), "white")
    qr = segno.make(facts.qr_payload(), error="m")
    qr_side = HEIGHT - 2 * MARGIN
    scale = max(1, qr_side // qr.symbol_size(border=1)[0])
    buffer = io.BytesIO()
    qr.save(buffer, kind="png", scale=scale, border=1)
    buffer.seek(0)
    qr_image = Image.open(buffer).convert("RGB")
    image.paste(qr_image, (MARGIN, (HEIGHT - qr_image.height) // 2))
    draw = ImageDraw.Draw(image)
    x = MARGIN * 2 + qr_image.width
    y = MARGIN
    lines = [
        ("POLEWATCH", 26),
        (f"Pole {facts.pole_id}", 40),
        (f"Device {facts.device_id}", 28),
        (facts.site or "", 24),
        (f"Enrolled {facts.enrolled_on}", 22),
    ]
    for text, size in lines:
        if text:
            draw.text((x, y), text, fill="black", font=_font(size))
            y += size + 14
    return image


def write_label(facts: LabelFacts, directory: Path) -> tuple[Path, Path]:
    """Write `<device>-label.png` and `<device>-label.pdf` in `directory`; return both paths."""
    directory.mkdir(parents=True, exist_ok=True)
    image = render(facts)
    png = directory / f"{facts.device_id}-label.png"
    pdf = directory / f"{facts.device_id}-label.pdf"
    image.save(png, dpi=(300, 300))
    image.save(pdf, "PDF", resolution=300.0)
    return png, pdf
