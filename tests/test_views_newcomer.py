"""Views a newcomer reads: the token view tells the truth about the first token, keeps a long
example's completion in view and keeps text readable; charts leave room for short bars and legends."""

from __future__ import annotations

import re
from types import SimpleNamespace

from plw_lab.views import tokens_view


def fake_encoded(n_prompt: int, n_completion: int):
    """An `Encoded`-like example: one-character tokens "p…" then "c…"."""
    n = n_prompt + n_completion
    text = "p" * n_prompt + "c" * n_completion
    return SimpleNamespace(
        input_ids=list(range(100, 100 + n)),
        prompt_mask=[1] * n_prompt + [0] * n_completion,
        completion_mask=[0] * n_prompt + [1] * n_completion,
        offsets=[(i, i + 1) for i in range(n)],
        text=text,
        truncated=0,
        n_prompt=n_prompt,
        n_completion=n_completion,
        answer_mask=[0] * n,
    )


def weights_of(html: str) -> list[str]:
    return re.findall(r'data-weight="([^"]+)"', html)


def test_the_first_token_has_weight_0_and_says_why():
    enc = fake_encoded(4, 2)
    html = tokens_view.token_html(enc, 1.0)
    assert weights_of(html) == ["0", "1", "1", "1", "1", "1"]
    first_title = re.search(r'title="([^"]+)"', html).group(1)
    assert "never a target" in first_title
    # 3 prompt tokens at PLW 1 and 2 completion tokens carry the weight: 2 / 5
    assert "<b>40.0%</b>" in html


def test_a_long_prompt_is_folded_in_the_middle_so_the_completion_shows():
    enc = fake_encoded(300, 3)
    assert tokens_view.fold_range(enc) == (tokens_view.FOLD_HEAD, 300 - tokens_view.FOLD_TAIL)
    html = tokens_view.token_html(enc, 0.1)
    folded = 300 - tokens_view.FOLD_TAIL - tokens_view.FOLD_HEAD
    assert f'data-folded="{folded}"' in html and f"\u2026 {folded} prompt tokens (weight 0.1 each) folded" in html
    head, rest = html.split('<details class="plw-fold"', 1)
    inside, tail = rest.split("</details>", 1)
    assert len(weights_of(head)) == tokens_view.FOLD_HEAD and len(weights_of(inside)) == folded
    assert weights_of(tail)[-3:] == ["1", "1", "1"] and len(weights_of(tail)) == tokens_view.FOLD_TAIL + 3
    assert len(weights_of(html)) == 303  # every token is still there, to be unfolded
    assert tokens_view.fold_range(fake_encoded(tokens_view.FOLD_ABOVE, 3)) is None  # short prompts are shown whole


def test_one_models_losses_say_nothing_about_an_adapter():
    enc = fake_encoded(3, 2)
    losses = [None, 2.0, 4.0, 1.0, 3.0]
    html = tokens_view.token_loss_html(enc, losses, None, mode="on")
    assert "adapter" not in html and "nan" not in html
    # completion tokens 3 and 4: (1 + 3) / 2; prompt tokens 1 and 2: (2 + 4) / 2
    assert "mean completion loss <b>2.000</b>; mean prompt loss 3.000" in html
    both = tokens_view.token_loss_html(enc, losses, losses, mode="on")
    assert "adapter on <b>2.000</b>, off <b>2.000</b>" in both


def test_text_on_saturated_blue_turns_white():
    enc = fake_encoded(3, 2)
    spans = re.findall(r'<span class="plw-tok[^"]*"[^>]*>', tokens_view.token_html(enc, 1.0))
    assert "color:#ffffff" in spans[1]  # a prompt token at PLW 1: dark blue behind it
    low = re.findall(r'<span class="plw-tok[^"]*"[^>]*>', tokens_view.token_html(enc, 0.1))
    assert "color:#ffffff" not in low[1] and "color:#ffffff" not in spans[3]  # pale blue; orange completion


def test_a_two_token_completion_bar_is_not_squashed_against_the_axis():
    from plw_lab.core.stats import length_stats
    from plw_lab.views import charts

    stats = length_stats([fake_encoded(n, 2) for n in (40, 50, 60)])
    low, high = charts.length_histogram(stats).layout.xaxis.range
    assert low < 2 - 1 and high > 60  # room left of the 2-token bar and right of the longest prompt


def test_the_predicted_answers_chart_has_no_axis_title_under_its_legend():
    from plw_lab.views import charts

    fig = charts.answer_distribution_figure({"adapter on": {"A": 3, "B": 1}}, {"A": 2, "B": 2})
    assert not fig.layout.xaxis.title.text and fig.layout.legend.orientation == "h"
