"""Render the Templates-panel thumbnails: `<workflow>.jpg` beside each `<workflow>.json`.

ComfyUI's template browser shows `<name>.jpg` from a pack's workflow folder as the card image of
`<name>.json` (a grey placeholder when there is none). Each card here is a small diagram of the
workflow: its number and title, the chain of nodes it runs (MotionClone nodes in the accent colour,
stock ComfyUI nodes in grey) and the schedule it keeps. Run it again after adding or renaming a
workflow (`python bench/make_thumbnails.py`, needs Pillow); it rewrites every thumbnail.
"""

from __future__ import annotations

import os

from PIL import Image, ImageDraw, ImageFont

WORKFLOWS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "workflows")
SIZE = 512  # square: both frontends (1.27, 1.35) crop the card image to a square; 2x for sharp HiDPI cards
FONT_DIRS = ("/usr/share/fonts/truetype/dejavu", "/usr/share/fonts/dejavu", "/Library/Fonts", "C:/Windows/Fonts")

BACKGROUND_TOP, BACKGROUND_BOTTOM = (32, 34, 48), (18, 19, 28)
TEXT, MUTED = (240, 240, 245), (160, 163, 180)
MODE_COLOURS = {"speed": (124, 92, 255), "fidelity": (255, 138, 61)}
BOX_COLOURS = {  # fill, outline
    "clip": ((44, 47, 64), (110, 115, 140)),
    "core": ((52, 55, 70), (90, 94, 112)),
    "out": ((28, 70, 52), (70, 170, 120)),
}

# name -> (title lines, mode, rows of (kind, label); several boxes in a row run side by side, settings)
CARDS = {
    "0-try-it-on-cpu": (
        ["Try it on a CPU", "toy model, no downloads"], "speed",
        [[("mc", "Load Toy Model"), ("mc", "Toy Reference Clip")], [("mc", "Extract Motion")],
         [("core", "KSampler (unguided)"), ("mc", "MotionClone Sampler")], [("out", "side by side → WebP")]],
        "8 × 128² · 20 steps, 8 guided · ~20 s"),
    "1-camera-motion-clone": (
        ["Camera motion", "clone"], "speed",
        [[("clip", "reference clip")], [("mc", "Extract Motion")], [("mc", "MotionClone Sampler")],
         [("out", "VAE Decode → MP4")]],
        "16 × 512² · 100 steps, 50 guided"),
    "2-object-motion-with-lora": (
        ["Object motion", "checkpoint + LoRA"], "speed",
        [[("clip", "reference clip"), ("core", "checkpoint + LoRA")], [("mc", "Extract Motion")],
         [("mc", "MotionClone Sampler")], [("out", "animated WebP")]],
        "16 × 512² · 300 steps, 180 guided"),
    "3-save-and-reuse-motion": (
        ["Extract once,", "reuse the motion"], "speed",
        [[("clip", "reference clip")], [("mc", "Extract Motion"), ("mc", "Save Motion")],
         [("mc", "Sampler"), ("mc", "Sampler"), ("mc", "Sampler")], [("out", "three prompts → MP4")]],
        "one motion · three prompts · 100 steps each"),
    "4-guidance-stock-ksampler": (
        ["Guidance patch,", "stock KSampler"], "speed",
        [[("clip", "reference clip")], [("mc", "Extract Motion")], [("mc", "MotionClone: Guidance")],
         [("core", "KSampler (ddim)"), ("out", "MP4")]],
        "16 × 512² · 100 steps, 30 guided"),
    "5-fidelity-subject-masks": (
        ["Fidelity mode,", "subject masks"], "fidelity",
        [[("clip", "reference clip")], [("mc", "DDIM Inversion"), ("mc", "Extract Motion")],
         [("mc", "subject masks"), ("mc", "Semantic Guidance")], [("mc", "Sampler"), ("out", "WebP")]],
        "inversion 50 · 300 steps, 180 guided"),
    "6-long-video-48-frames": (
        ["Long video,", "48 frames"], "speed",
        [[("clip", "reference clip, 6 s")], [("mc", "Context Windows 16 / 4")],
         [("mc", "Extract Motion"), ("mc", "Sampler")], [("out", "48 frames → MP4")]],
        "4 windows of 16 · 100 steps, 50 guided"),
}


def _font(size: int, bold: bool = False) -> ImageFont.FreeTypeFont:
    name = "DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf"
    for folder in FONT_DIRS:
        if os.path.isfile(os.path.join(folder, name)):
            return ImageFont.truetype(os.path.join(folder, name), size)
    return ImageFont.load_default(size)


def _fitting_font(draw: ImageDraw.ImageDraw, text: str, width: int, size: int) -> ImageFont.FreeTypeFont:
    """The largest bold font up to `size` whose rendering of `text` is at most `width` pixels wide."""
    while size > 12 and draw.textlength(text, font=_font(size, bold=True)) > width:
        size -= 1
    return _font(size, bold=True)


def _background() -> Image.Image:
    image = Image.new("RGB", (SIZE, SIZE))
    draw = ImageDraw.Draw(image)
    for y in range(SIZE):
        mix = y / (SIZE - 1)
        colour = tuple(round(a + (b - a) * mix) for a, b in zip(BACKGROUND_TOP, BACKGROUND_BOTTOM))
        draw.line([(0, y), (SIZE, y)], fill=colour)
    return image


def _arrow(draw: ImageDraw.ImageDraw, x: int, top: int, bottom: int, colour) -> None:
    draw.line([(x, top), (x, bottom - 8)], fill=colour, width=4)
    draw.polygon([(x - 9, bottom - 10), (x + 9, bottom - 10), (x, bottom)], fill=colour)


def render(name: str) -> Image.Image:
    title, mode, rows, settings = CARDS[name]
    number = name.split("-")[0]
    accent = MODE_COLOURS[mode]
    colours = {**BOX_COLOURS, "mc": (tuple(c // 3 + 20 for c in accent), accent)}
    image = _background()
    draw = ImageDraw.Draw(image)
    margin = 28

    # Header: the workflow's number in a badge, its title, the mode.
    draw.ellipse([margin, margin, margin + 76, margin + 76], fill=accent)
    draw.text((margin + 38, margin + 39), number, font=_font(48, bold=True), fill=TEXT, anchor="mm")
    text_left = margin + 96
    for line_index, line in enumerate(title):
        draw.text((text_left, margin + 2 + 38 * line_index), line,
                  font=_fitting_font(draw, line, SIZE - text_left - margin, 34), fill=TEXT)
    draw.text((text_left, margin + 84), f"MotionClone · {mode} mode", font=_font(20), fill=MUTED)

    # The node chain, top to bottom.
    top, bottom = 150, SIZE - 64
    box_height, gap = 52, (bottom - top - 52 * len(rows)) // max(len(rows) - 1, 1)
    box_font_size = 24
    for row_index, row in enumerate(rows):
        y = top + row_index * (box_height + gap)
        spacing = 14
        width = (SIZE - 2 * margin - spacing * (len(row) - 1)) // len(row)
        for box_index, (kind, label) in enumerate(row):
            x = margin + box_index * (width + spacing)
            fill, outline = colours[kind]
            draw.rounded_rectangle([x, y, x + width, y + box_height], radius=12, fill=fill, outline=outline, width=3)
            font = _fitting_font(draw, label, width - 20, box_font_size)
            draw.text((x + width / 2, y + box_height / 2), label, font=font, fill=TEXT, anchor="mm")
        if row_index + 1 < len(rows):
            _arrow(draw, SIZE // 2, y + box_height + 3, y + box_height + gap - 3, MUTED)

    draw.text((SIZE // 2, SIZE - 34), settings, font=_fitting_font(draw, settings, SIZE - 2 * margin, 22),
              fill=MUTED, anchor="mm")
    return image


def main() -> None:
    workflows = sorted(file[:-5] for file in os.listdir(WORKFLOWS) if file.endswith(".json"))
    missing = [name for name in workflows if name not in CARDS]
    if missing:
        raise SystemExit(f"no card for {missing}: add an entry to CARDS in {os.path.basename(__file__)}")
    for name in workflows:
        path = os.path.join(WORKFLOWS, f"{name}.jpg")
        render(name).save(path, quality=88, optimize=True, progressive=True)
        print(f"{path}: {os.path.getsize(path) // 1024} KiB")


if __name__ == "__main__":
    main()
