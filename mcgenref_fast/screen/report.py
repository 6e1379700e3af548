"""`OUT/report.html`: a one-page static report of a screening run, opened straight from disk (no server).

One table, flagged images first and then by max cluster score (descending); every column header sorts
the table (a few lines of inline JavaScript, no library). Each row shows a thumbnail of the image's
overlay (`OUT/thumbs/<key>.jpg`, linked to the full `OUT/<key>/overlay.png`) and its findings; failed
inputs are listed below it by file name, error type and message.

Privacy: the page names images by their key only (SOPInstanceUID for DICOM, file stem otherwise), exams
by StudyInstanceUID; it shows no DICOM patient or institution attribute (the summary rows it is built
from hold none), and no input folder path: failed inputs appear by file name, with their folder
stripped from the error message. The thumbnails are downscaled copies of overlay.png (pixels only).
"""
from __future__ import annotations

import contextlib
import html
import os
import secrets
from pathlib import Path
from typing import Any, Mapping, Sequence
from urllib.parse import quote

from mcgenref_fast import __version__
from mcgenref_fast.atomic import write_text_atomic
from mcgenref_fast.output_layout import OVERLAY_PNG

REPORT_NAME = "report.html"
THUMBS_DIR = "thumbs"
THUMB_MAX_SIDE_PX = 256
THUMB_JPEG_QUALITY = 85


def thumbnail_path(out_dir: str | Path, key: str) -> Path:
    return Path(out_dir) / THUMBS_DIR / f"{key}.jpg"


def make_thumbnail(overlay_png: str | Path, thumb_path: str | Path, max_side_px: int = THUMB_MAX_SIDE_PX) -> Path:
    """A JPEG copy of `overlay_png` whose longest side is at most `max_side_px` (written atomically)."""
    from PIL import Image

    with Image.open(overlay_png) as im:
        im = im.convert("RGB")
        scale = max_side_px / max(im.size)
        if scale < 1:
            size = (max(1, round(im.width * scale)), max(1, round(im.height * scale)))
            im = im.resize(size, Image.Resampling.BOX)   # area average: MC rings stay visible as tints
        return _write_replace(Path(thumb_path), lambda fh: im.save(fh, format="JPEG", quality=THUMB_JPEG_QUALITY))


def _write_replace(path: Path, writer: Any) -> Path:
    """Atomic (temporary sibling + rename) but not fsync'ed: a thumbnail is remade from overlay.png
    whenever it is missing or older, so it does not need to survive a power loss - and skipping two
    disk flushes per image is measurable."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    try:
        with open(tmp, "wb") as fh:
            writer(fh)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return path


def ensure_thumbnail(out_dir: str | Path, key: str) -> Path | None:
    """The key's thumbnail, made when missing or older than its overlay; None when there is no overlay."""
    overlay = Path(out_dir) / key / OVERLAY_PNG
    thumb = thumbnail_path(out_dir, key)
    try:
        overlay_mtime = overlay.stat().st_mtime_ns
    except OSError:
        return None
    try:
        if thumb.stat().st_mtime_ns >= overlay_mtime:
            return thumb
    except OSError:
        pass
    try:
        return make_thumbnail(overlay, thumb)
    except Exception:                 # a damaged overlay must not stop the report
        return None


_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa}
h1{font-size:1.4em;margin:0 0 .3em}
.stats{margin:.3em 0 1em;color:#444}
table{border-collapse:collapse;background:#fff}
th,td{border:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:middle}
th{background:#eee;cursor:pointer;user-select:none;white-space:nowrap}
th:after{content:" \\2195";color:#999}
td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.flagged td{background:#fff0f0}
tr.flagged td.flag{color:#b00;font-weight:bold}
img.thumb{display:block;max-width:256px;max-height:256px}
.uid{font-family:monospace;font-size:12px;word-break:break-all;max-width:22em}
"""

_SCRIPT = """
document.querySelectorAll('th[data-type]').forEach(function (th) {
  th.addEventListener('click', function () {
    var body = th.closest('table').tBodies[0], i = th.cellIndex, num = th.dataset.type === 'num';
    var dir = th.dataset.dir = (th.dataset.dir === 'desc' ? 'asc' : 'desc'), s = dir === 'asc' ? 1 : -1;
    Array.from(body.rows).sort(function (a, b) {
      var x = a.cells[i].dataset.v, y = b.cells[i].dataset.v;
      if (num) { x = parseFloat(x); y = parseFloat(y); }
      return (x < y ? -1 : x > y ? 1 : 0) * s;
    }).forEach(function (r) { body.appendChild(r); });
  });
});
"""


def _td(text: Any, value: Any = None, cls: str = "") -> str:
    shown = "" if text is None else html.escape(str(text))
    v = shown if value is None else html.escape(str(value), quote=True)
    c = f' class="{cls}"' if cls else ""
    return f'<td{c} data-v="{v}">{shown}</td>'


def _strip_paths(message: str, input_path: str) -> str:
    """The message with the input's folder removed (its file name stays)."""
    folder = os.path.dirname(input_path)
    return message.replace(folder + os.sep, "") if folder else message


def render_report(rows: Sequence[Mapping[str, Any]], errors: Sequence[Mapping[str, Any]],
                  exams: Sequence[Mapping[str, Any]], thumbs: Mapping[str, str | None],
                  n_pending: int = 0) -> str:
    """The report's HTML (see the module doc); `thumbs`: key → thumbnail link relative to OUT, or None."""
    ordered = sorted(rows, key=lambda r: (not r["flagged"], -float(r["max_cluster_score"]), r["key"]))
    n_flagged = sum(1 for r in rows if r["flagged"])
    n_flagged_exams = sum(1 for e in exams if e["flagged"])
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>mcgenref screen report</title>", f"<style>{_STYLE}</style></head><body>",
        "<h1>Microcalcification screening report</h1>",
        f'<p class="stats">{len(rows)} images screened, <b>{n_flagged} flagged</b>; {len(exams)} exams, '
        f"<b>{n_flagged_exams} flagged</b>; {len(errors)} inputs failed"
        + (f"; {n_pending} not screened yet (interrupted run)" if n_pending else "")
        + f". mcgenref_fast {html.escape(__version__)}. Click a column header to sort.</p>",
        '<table id="images"><thead><tr>',
        "<th>overlay</th>", '<th data-type="text">key</th>', '<th data-type="text">exam (StudyInstanceUID)</th>',
        '<th data-type="text">side</th>', '<th data-type="text">view</th>', '<th data-type="num">MCs</th>',
        '<th data-type="num">clusters</th>', '<th data-type="num">max cluster score</th>',
        '<th data-type="num">flagged</th>', "</tr></thead><tbody>",
    ]
    for r in ordered:
        key = r["key"]
        thumb = thumbs.get(key)
        link = f"{quote(key)}/{OVERLAY_PNG}"
        img = (f'<a href="{link}"><img class="thumb" loading="lazy" src="{html.escape(thumb, quote=True)}" '
               f'alt="overlay of {html.escape(key, quote=True)}"></a>') if thumb else f'<a href="{link}">overlay</a>'
        flagged = bool(r["flagged"])
        score = float(r["max_cluster_score"])
        parts.append(
            f'<tr class="{"flagged" if flagged else ""}"><td>{img}</td>'
            + _td(key, cls="uid") + _td(r.get("study_instance_uid") or "", cls="uid")
            + _td(r.get("laterality") or "") + _td(r.get("view") or "")
            + _td(r["n_mcs"], cls="num") + _td(r["n_clusters"], cls="num")
            + _td(f"{score:.3f}", score, cls="num") + _td("yes" if flagged else "no", int(flagged), cls="flag")
            + "</tr>")
    parts.append("</tbody></table>")
    if errors:
        parts += ["<h2>Inputs that could not be screened</h2>", "<table><thead><tr>",
                  '<th data-type="text">file</th><th data-type="text">error</th><th data-type="text">message</th>',
                  "</tr></thead><tbody>"]
        for e in errors:
            name = os.path.basename(str(e["input"]))
            parts.append("<tr>" + _td(name) + _td(e.get("error_type", "")) +
                         _td(_strip_paths(str(e.get("message", "")), str(e["input"]))) + "</tr>")
        parts.append("</tbody></table>")
    parts += [f"<script>{_SCRIPT}</script>", "</body></html>", ""]
    return "\n".join(parts)


def write_report(out_dir: str | Path, rows: Sequence[Mapping[str, Any]], errors: Sequence[Mapping[str, Any]],
                 exams: Sequence[Mapping[str, Any]], n_pending: int = 0) -> Path:
    """OUT/report.html (atomic), making any missing thumbnail first."""
    out_dir = Path(out_dir)
    thumbs: dict[str, str | None] = {}
    for r in rows:
        t = ensure_thumbnail(out_dir, r["key"])
        thumbs[r["key"]] = None if t is None else f"{THUMBS_DIR}/{quote(t.name)}"
    return write_text_atomic(out_dir / REPORT_NAME, render_report(rows, errors, exams, thumbs, n_pending))
