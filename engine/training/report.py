"""``python -m bot eval --compare A B``: one self-contained HTML page comparing two evaluation runs.

Self-contained because it is mailed and attached to tickets: the chart is a PNG inside the page (base64),
no scripts, no external assets. Every text in it — queries, references and model outputs are customers'
and a model's words — goes through ``html.escape``.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

from engine.training.evaluate import EvalResult

_SCORES = ("BLEU", "chrF", "ROUGE-1", "ROUGE-2", "ROUGE-L")  # on one 0..100 axis (ROUGE x 100)

_STYLE = """body{font-family:sans-serif;margin:2em;max-width:75em}table{border-collapse:collapse;margin:1em 0}
td,th{border:1px solid #ccc;padding:.3em .6em;vertical-align:top;text-align:left}th{background:#f4f4f4}
.better{background:#e6f4e6}.worse{background:#fbe9e9}td.num{text-align:right;font-variant-numeric:tabular-nums}"""


def chart_png(a: EvalResult, b: EvalResult) -> bytes:
    """Grouped bars of the scores, A beside B (matplotlib on the Agg backend: no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    def values(r: EvalResult) -> list[float]:
        m = r.metrics()
        return [float(m[k] or 0.0) * (100 if k.startswith("ROUGE") else 1) for k in _SCORES]

    fig = Figure(figsize=(7, 3.2), dpi=100)
    ax = fig.subplots()
    xs = range(len(_SCORES))
    ax.bar([x - 0.2 for x in xs], values(a), width=0.4, label="A")
    ax.bar([x + 0.2 for x in xs], values(b), width=0.4, label="B")
    ax.set_xticks(list(xs), list(_SCORES))
    ax.set_ylabel("score (0-100)")
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _fmt(value: float | None, key: str) -> str:
    if value is None:
        return "–"
    if key.endswith(" s"):
        return f"{value * 1000:.0f} ms"
    if key == "FAQ hit":
        return f"{value:.1%}"
    return f"{value:.4f}" if key.startswith("ROUGE") else f"{value:.2f}"


def compare_html(a: EvalResult, b: EvalResult) -> str:
    esc = html.escape
    ma, mb = a.metrics(), b.metrics()
    rows = []
    for key in ma:
        va, vb = ma[key], mb[key]
        delta = "" if va is None or vb is None else f"{vb - va:+.4f}"
        rows.append(f"<tr><th>{esc(key)}</th><td class=num>{_fmt(va, key)}</td><td class=num>{_fmt(vb, key)}</td>"
                    f"<td class=num>{delta}</td></tr>")
    examples = []
    for i, (ea, eb) in enumerate(zip(a.examples, b.examples, strict=False), 1):
        mark = "better" if eb.chrf > ea.chrf else "worse" if eb.chrf < ea.chrf else ""
        examples.append(
            f"<tr class='{mark}'><td class=num>{i}</td><td>{esc(ea.query)}</td><td>{esc(ea.reference)}</td>"
            f"<td>{esc(ea.output)}</td><td>{esc(eb.output)}</td><td class=num>{ea.chrf:.1f}</td>"
            f"<td class=num>{eb.chrf:.1f}</td><td class=num>{eb.chrf - ea.chrf:+.1f}</td></tr>")
    chart = base64.b64encode(chart_png(a, b)).decode("ascii")
    return (
        "<!doctype html><html lang=zh><head><meta charset=utf-8><title>评测对比 / evaluation comparison</title>"
        f"<style>{_STYLE}</style></head><body><h1>评测对比 / evaluation comparison</h1>"
        f"<p>A: <b>{esc(a.label)}</b> · B: <b>{esc(b.label)}</b> · {len(a.examples)} / {len(b.examples)} examples"
        "</p><h2>指标 / metrics</h2><table><tr><th></th><th>A</th><th>B</th><th>B − A</th></tr>"
        + "".join(rows) + "</table>"
        f"<img alt='scores, A vs B' src='data:image/png;base64,{chart}'>"
        "<h2>逐条差异 / per example (chrF)</h2><table><tr><th>#</th><th>问题 query</th><th>参考 reference</th>"
        "<th>A</th><th>B</th><th>chrF A</th><th>chrF B</th><th>Δ</th></tr>" + "".join(examples)
        + "</table></body></html>\n"
    )


def write_compare(a: EvalResult, b: EvalResult, path: str | Path) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(compare_html(a, b), encoding="utf-8")
    return out
