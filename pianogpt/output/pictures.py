"""Pictures with numpy and zlib only: a PNG writer, simple line charts (training curves,
ablation plots) labelled with a built-in 3x5 pixel font, and piano rolls. Imports nothing of
this project."""
import struct
import zlib

import numpy as np

FONT = {  # 3 columns x 5 rows, one string of 15 bits per glyph, read row by row
    "0": "111101101101111", "1": "010110010010111", "2": "111001111100111", "3": "111001111001111",
    "4": "101101111001001", "5": "111100111001111", "6": "111100111101111", "7": "111001010010010",
    "8": "111101111101111", "9": "111101111001111", ".": "000000000000010", "-": "000000111000000",
    "e": "000111111100111", " ": "000000000000000", "A": "010101111101101", "C": "111100100100111",
    "D": "110101101101110", "E": "111100110100111", "I": "111010010010111", "L": "100100100100111",
    "M": "101111111101101", "N": "110101101101101", "O": "111101101101111", "P": "111101111100100",
    "R": "110101110101101", "S": "111100111001111", "T": "111010010010010", "U": "101101101101111",
    "V": "101101101101010", "W": "101101111111101", "X": "101101010101101", "Y": "101101010010010",
    "G": "111100101101111", "B": "110101110101110", "F": "111100110100100", "H": "101101111101101",
    "K": "101101110101101", "Q": "111101101110011", "J": "001001001101111", "Z": "111001010100111", "/": "001001010100100", ":": "000010000010000",
    "(": "010100100100010", ")": "010001001001010", "%": "101001010100101", "x": "000101010101000",
}
COLOURS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (255, 127, 14), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207), (0, 0, 0), (120, 60, 0), (0, 90, 90),
           (90, 0, 160)]


def png_bytes(rgb):
    """A PNG file from an [H, W, 3] uint8 array."""
    height, width, _ = rgb.shape
    raw = b"".join(b"\x00" + rgb[row].tobytes() for row in range(height))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")


def draw_text(image, x, y, text, colour=(0, 0, 0), scale=2):
    """Write text (digits, capitals, a few signs) with its top-left corner at (x, y)."""
    for i, char in enumerate(text):
        glyph = FONT.get(char, FONT.get(char.upper(), FONT[" "]))
        for bit, on in enumerate(glyph):
            if on == "1":
                row, col = divmod(bit, 3)
                y0, x0 = y + row * scale, x + (i * 4 + col) * scale
                image[max(0, y0):max(0, y0 + scale), max(0, x0):max(0, x0 + scale)] = colour


def draw_line(image, x0, y0, x1, y1, colour, width=2):
    steps = int(max(abs(x1 - x0), abs(y1 - y0))) + 1
    xs = np.linspace(x0, x1, steps).round().astype(int)
    ys = np.linspace(y0, y1, steps).round().astype(int)
    h, w, _ = image.shape
    for dx in range(width):
        for dy in range(width):
            keep = (xs + dx >= 0) & (xs + dx < w) & (ys + dy >= 0) & (ys + dy < h)
            image[ys[keep] + dy, xs[keep] + dx] = colour


def number(value):
    if value == 0:
        return "0"
    if 1000 <= abs(value) < 1e7:
        return f"{value:.0f}"
    if abs(value) >= 1e7 or abs(value) < 0.01:
        return f"{value:.1e}".replace("e-0", "e-").replace("e+0", "e")
    return f"{value:.3g}"


def usable_points(xs, ys, log_y):
    """The (x, y) pairs that can be drawn: both finite (and y > 0 on a log axis)."""
    xs, ys = np.asarray(xs, float), np.asarray(ys, float)
    keep = np.isfinite(xs) & np.isfinite(ys) & ((ys > 0) if log_y else True)
    return xs[keep], ys[keep]


def chart(series, title, x_label, width=520, height=300, log_y=False):
    """One panel: series is [(label, xs, ys)]; returns an [H, W, 3] uint8 image."""
    image = np.full((height, width, 3), 255, np.uint8)
    left, right, top, bottom = 70, 12, 34, 40
    draw_text(image, left, 8, title)
    series = [(label, *usable_points(xs, ys, log_y)) for label, xs, ys in series]
    xs_all = np.concatenate([x for _, x, _ in series if len(x)] or [np.zeros(1)])
    ys_all = np.concatenate([y for _, _, y in series if len(y)] or [np.ones(1)])
    transform = np.log10 if log_y else (lambda v: np.asarray(v, float))
    x_lo, x_hi = float(xs_all.min()), float(xs_all.max())
    y_lo, y_hi = float(transform(ys_all).min()), float(transform(ys_all).max())
    x_hi, y_hi = (x_hi if x_hi > x_lo else x_lo + 1), (y_hi if y_hi > y_lo else y_lo + 1)
    plot_w, plot_h = width - left - right, height - top - bottom

    def to_pixel(x, y):
        return (left + (np.asarray(x, float) - x_lo) / (x_hi - x_lo) * plot_w,
                top + (1 - (transform(y) - y_lo) / (y_hi - y_lo)) * plot_h)

    image[top:top + plot_h + 1, left] = (120, 120, 120)
    image[top + plot_h, left:left + plot_w + 1] = (120, 120, 120)
    for fraction in (0.0, 0.5, 1.0):
        y_value = y_lo + fraction * (y_hi - y_lo)
        label = number(10 ** y_value if log_y else y_value)
        y_pixel = int(top + (1 - fraction) * plot_h)
        image[y_pixel, left - 4:left] = (120, 120, 120)
        draw_text(image, 4, y_pixel - 5, label)
        x_value = x_lo + fraction * (x_hi - x_lo)
        x_pixel = int(left + fraction * plot_w)
        image[top + plot_h:top + plot_h + 4, x_pixel] = (120, 120, 120)
        draw_text(image, min(x_pixel - 8, width - 8 * len(number(x_value))), top + plot_h + 8, number(x_value))
    draw_text(image, left + plot_w // 2 - 4 * len(x_label), height - 14, x_label)
    for i, (label, xs, ys) in enumerate(series):
        colour = COLOURS[i % len(COLOURS)]
        if not len(xs):
            continue
        px, py = to_pixel(xs, ys)
        for j in range(len(xs) - 1):
            draw_line(image, px[j], py[j], px[j + 1], py[j + 1], colour)
        if len(xs) == 1:
            draw_line(image, px[0] - 2, py[0], px[0] + 2, py[0], colour, width=4)
        draw_text(image, left + plot_w - 8 * max(len(s[0]) for s in series) - 4, top + 6 + 14 * i, label, colour)
    return image


def side_by_side(*images):
    height = max(im.shape[0] for im in images)
    padded = [np.pad(im, ((0, height - im.shape[0]), (0, 0), (0, 0)), constant_values=255) for im in images]
    return np.concatenate(padded, axis=1)


def piano_roll(score, low, high, pixels_per_quarter=8, row_height=3, max_width=4000, marked=None):
    """Pitch (rows low..high, low at the bottom) x time image of a symusic score; brightness is
    velocity, bar-free and DAW-free. marked: a (start, end) tick span drawn on a blue ground, its
    notes in cyan (an infilled passage)."""
    notes = [n for track in score.tracks for n in track.notes]
    end = max((n.time + n.duration for n in notes), default=score.tpq)
    width = int(min(max_width, max(1, end * pixels_per_quarter / score.tpq)))
    n_rows = high - low + 1
    image = np.full((n_rows * row_height, width, 3), 24, dtype=np.uint8)
    for octave_c in range(24, high + 1, 12):  # faint line at every C
        y = (high - octave_c) * row_height + row_height - 1
        image[y, :, :] = 48
    if marked is not None:  # the span's ground, under its notes
        x0, x1 = (int(min(width, tick * pixels_per_quarter / score.tpq)) for tick in marked)
        image[:, x0:x1] += np.array([0, 8, 40], dtype=np.uint8)
    for n in notes:
        x0 = int(n.time * pixels_per_quarter / score.tpq)
        x1 = max(x0 + 1, int((n.time + n.duration) * pixels_per_quarter / score.tpq))
        if x0 >= width or not low <= n.pitch <= high:
            continue
        y = (high - n.pitch) * row_height
        level = 80 + int(175 * n.velocity / 127)
        new = marked is not None and marked[0] <= n.time < marked[1]
        image[y:y + row_height - 1, x0:min(x1, width)] = (60, level, level) if new else (level, int(level * 0.75), 60)
    return image
