"""The self-contained HTML page of ``stereograin validate`` (``index.html``).

:func:`render_html` turns the report dict of :func:`stereograin.validate.validate`
(the content of ``report.json``) into one HTML page: every figure is embedded
as a base64 PNG (``<img src="data:image/png;base64,...">``), there are no
external resources and no scripts, and all text is escaped.

Every number in a table is read from the report dict by its dotted key
(``shell.descriptors.sphericity.ks``; list items by index,
``grains.alpha_by_height.aligned_fraction.0``) and its cell carries that key
and the full-precision value::

    <td data-key="shell.descriptors.sphericity.ks" data-value="0.0812...">0.0812</td>

so a script (or a test) can check the page against ``report.json``;
``data-value="null"`` marks a value that is not finite (``null`` in JSON).
"""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .errors import StereograinError
from .io import atomic_path

__all__ = ["render_html", "write_html", "lookup", "SECTION_TITLES"]

#: Section ids and headings of the page, in order.
SECTION_TITLES = {
    "fig10a": "Fig. 10a: 3D shell descriptors, data vs model",
    "fig10b": "Fig. 10b: 2D grain-section descriptors, data vs model",
    "fig4": "Fig. 4: coefficient laws",
    "fig3a": "Fig. 3a: distance correlations of the SH coefficients",
    "fig11": "Fig. 11: grain orientation against cut height",
    "grains3d": "3D grain statistics (what 2D sections cannot show)",
}

_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1200px; margin: 2em auto; padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 1em 0; } figure img { max-width: 100%; height: auto; }
figcaption, p.note { color: #555; font-size: 0.9em; } p.missing { color: #a33; }
"""


# --------------------------------------------------------------------------- values


def lookup(report: Mapping[str, Any], key: str) -> Any:
    """The value at a dotted ``key`` of the report (list items by integer index).

    Raises
    ------
    KeyError
        If the key does not name a value.
    """
    value: Any = report
    for part in key.split("."):
        if isinstance(value, Mapping):
            value = value[part]
        elif isinstance(value, (list, tuple)):
            value = value[int(part)]
        else:
            raise KeyError(key)
    return value


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _num(report: Mapping[str, Any], key: str, tag: str = "td", label: str = "") -> str:
    """An element (a table cell by default) showing the number at ``key``, with its key and full-precision value."""
    value = lookup(report, key)
    if value is None:
        raw = "null"
    elif isinstance(value, bool) or not isinstance(value, (int, float)):
        raise StereograinError(f"report value {key} is not a number ({value!r}); cannot tabulate it")
    else:
        raw = repr(value)
    cls = ' class="num"' if tag == "td" else ""
    return f'<{tag}{cls} data-key="{_esc(key)}" data-value="{_esc(raw)}">{_esc(label)}{_esc(_fmt(value))}</{tag}>'


def _text(value: Any) -> str:
    return f"<td>{_esc(value)}</td>"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    body = "\n".join("<tr>" + "".join(r) + "</tr>" for r in rows)
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>"


def _figure(root: Path, rel: str, caption: str) -> str:
    path = root / rel
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise StereograinError(f"cannot embed figure {path} ({exc.strerror or exc})") from None
    b64 = base64.b64encode(data).decode("ascii")
    return (f'<figure><img alt="{_esc(caption)}" src="data:image/png;base64,{b64}">'
            f"<figcaption>{_esc(caption)} (also <code>{_esc(rel)}</code>)</figcaption></figure>")


def _section(sid: str, body: str) -> str:
    return f'<section id="{sid}">\n<h2>{_esc(SECTION_TITLES[sid])}</h2>\n{body}\n</section>'


def _missing(what: str) -> str:
    return f'<p class="missing">Not computed: {_esc(what)}</p>'


def _distance_table(report: Mapping[str, Any], prefix: str, names: Sequence[str], data: str, model: str) -> str:
    rows = [
        [_text(name), _text(lookup(report, f"{prefix}.{name}.unit"))]
        + [_num(report, f"{prefix}.{name}.{k}") for k in ("ks", "ks_pvalue", "wasserstein", "n_data", "n_model")]
        for name in names
    ]
    return _table(["descriptor", "unit", "KS statistic", "KS p-value", "Wasserstein distance",
                   f"n ({data})", f"n ({model})"], rows)


# --------------------------------------------------------------------------- sections


def _fig10a(r: Mapping[str, Any], root: Path) -> str:
    s = r.get("shell")
    if not s:
        return _missing("needs a shell model and shell data (--ct or --library).")
    label = s["data_label"]
    names = list(s["descriptors"])
    return "\n".join([
        f'<p class="note">{_esc(s["n_data"])} shells of the {_esc(label)} ({_esc(s["data"]["source"])}) against '
        f'{_esc(s["n_model"])} shells drawn from the shell model {_esc(s["model"])}, in CT voxels of '
        f'{_esc(_fmt(s["voxel_size_nm"]))} nm; descriptors on icosphere level {_esc(s["icosphere_level"])}. '
        "Small KS statistics and Wasserstein distances mean the model reproduces the data.</p>",
        _figure(root, s["figures"]["fig10a"], f"{label} vs model: d_max, compactness, aspect ratio, sphericity"),
        _distance_table(r, "shell.descriptors", names, label, "model"),
    ])


def _fig10b(r: Mapping[str, Any], root: Path) -> str:
    g = r.get("grains")
    if not g:
        return _missing("needs a grain model and sections (--sections with --grain-model).")
    return "\n".join([
        f'<p class="note">{_esc(g["n_sections"])} central data sections (fitted tessellations, '
        f'{_esc(_fmt(g["px_nm"]))} nm pixels) against {_esc(g["n_model_sections"])} central sections of '
        f'architectures drawn from the grain model {_esc(g["model"])} in balls of the data particles\' radii.</p>',
        _figure(root, g["figures"]["fig10b"], "data vs model sections: area, eta, alpha, chord length"),
        _distance_table(r, "grains.descriptors", list(g["descriptors"]), "data", "model"),
    ])


def _fig4(r: Mapping[str, Any], root: Path) -> str:
    s = r.get("shell")
    if not s:
        return _missing("needs a shell model and shell data (--ct or --library).")
    rows = []
    for name, d in s["coefficient_fit"].items():
        params = ", ".join(_num(r, f"shell.coefficient_fit.{name}.params.{k}", "span", f"{k} = ") for k in d["params"])
        rows.append(
            [_text("a_00" if name == "a00" else f"a_{d['degree']}m"), _text(d["family"]), f"<td>{params}</td>"]
            + [_num(r, f"shell.coefficient_fit.{name}.{k}") for k in ("ks", "ks_pvalue", "n")]
        )
    return "\n".join([
        '<p class="note">The data\'s SH coefficients per degree (histograms) with the shell model\'s laws '
        "(curves); the one-sample KS statistic tests the pooled coefficients of a degree against its law.</p>",
        _figure(root, s["figures"]["fig4"], "coefficient histograms and the model's laws"),
        _table(["coefficients", "law", "parameters (lengths in voxels)", "KS statistic", "KS p-value", "n"], rows),
    ])


def _fig3a(r: Mapping[str, Any], root: Path) -> str:
    s = r.get("shell")
    if not s:
        return _missing("needs a shell model and shell data (--ct or --library).")
    dc = s["distance_correlation"]
    rows = [
        [_text(l)] + [_num(r, f"shell.distance_correlation.{k}.{i}") for k in ("data_mean", "data_max", "model_mean", "model_max")]
        for i, l in enumerate(dc["degrees"])
    ]
    return "\n".join([
        '<p class="note">Distance correlation of a_00 with the coefficients of each degree in the data. The model '
        "draws its coefficients independently; its values, at the data's sample size, show the level that "
        "independent coefficients reach by chance.</p>",
        _figure(root, s["figures"]["fig3a"], "distance correlation with a_00 per degree (data)"),
        _table(["degree l", "data mean", "data max", "model mean (same n)", "model max (same n)"], rows),
    ])


def _fig11(r: Mapping[str, Any], root: Path) -> str:
    g = r.get("grains")
    if not g:
        return _missing("needs a grain model and sections (--sections with --grain-model).")
    a = g["alpha_by_height"]
    rows = [
        [_num(r, f"grains.alpha_by_height.heights.{i}"), _num(r, f"grains.alpha_by_height.aligned_fraction.{i}"),
         _num(r, f"grains.alpha_by_height.n_grains.{i}")]
        for i in range(len(a["heights"]))
    ]
    return "\n".join([
        f'<p class="note">Sections of one model architecture cut at heights h (fractions of the radius). '
        f'Statistic: {_esc(a["statistic"])}. Data (central sections):</p>',
        _table(["data aligned fraction", "no-preference baseline"],
               [[_num(r, "grains.alpha_by_height.data_aligned_fraction"), _num(r, "grains.alpha_by_height.baseline")]]),
        _figure(root, g["figures"]["fig11"], "alpha densities per cut height and aligned fraction against height"),
        _table(["cut height h", "aligned fraction (model)", "grains"], rows),
    ])


def _grains3d(r: Mapping[str, Any], root: Path) -> str:
    g = r.get("grains_3d")
    if not g:
        return _missing("needs a grain model or a library.")
    names = ("volume", "elongation", "radial_angle")
    units = g["units"]
    rows = []
    for src, d in g["sources"].items():
        rows.append([_text(src), _text(d["what"]), _num(r, f"grains_3d.sources.{src}.n_grains")]
                    + [_num(r, f"grains_3d.sources.{src}.median.{k}") for k in names])
    parts = [
        '<p class="note">Grain volume, 3D elongation sqrt(l1/l3) and the angle between a grain\'s long axis and '
        "the radius (0 = radial, about 57 degrees for random directions). Model grains are those wholly "
        "inside one ball; library grains are all grains of its particles.</p>",
        _figure(root, g["figures"]["grains3d"], "3D grain statistics"),
        _table(["source", "grains", "n"] + [f"median {k} [{units[k]}]" for k in names], rows),
    ]
    if g.get("comparison"):
        parts.append(_distance_table(r, "grains_3d.comparison", list(g["comparison"]), "library", "model"))
    return "\n".join(parts)


def _inputs(r: Mapping[str, Any]) -> str:
    rows = [[_text(k), _text("–" if v is None else v)] for k, v in r["inputs"].items()]
    return _table(["input", "value"], rows)


_BUILDERS = {"fig10a": _fig10a, "fig10b": _fig10b, "fig4": _fig4, "fig3a": _fig3a, "fig11": _fig11,
             "grains3d": _grains3d}


def render_html(report: Mapping[str, Any], root: str | Path) -> str:
    """The report page as one HTML string.

    Parameters
    ----------
    report : mapping
        The content of ``report.json`` (from :func:`stereograin.validate.validate`).
    root : path
        The report folder, where the figures named in ``report`` are.

    Returns
    -------
    str
        A complete HTML5 document: embedded PNGs, no scripts, no external resources.
    """
    root = Path(root)
    body = "\n".join(_section(sid, build(report, root)) for sid, build in _BUILDERS.items())
    version = _esc(report.get("stereograin_version", ""))
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>stereograin validation report</title>
<style>{_STYLE}</style>
</head>
<body>
<h1>stereograin validation report</h1>
<p class="note">Data against the shell and grain models (Fuchs et al. 2025). stereograin {version}.
All numbers are also in <code>report.json</code>.</p>
<h2>What was compared</h2>
{_inputs(report)}
{body}
</body>
</html>
"""


def write_html(path: str | Path, report: Mapping[str, Any], root: str | Path) -> None:
    """Write :func:`render_html` to ``path`` (atomically, UTF-8)."""
    text = render_html(report, root)
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")
