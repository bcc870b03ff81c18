"""Collapse to one answer, judged against the true answers at every evaluation (the base model too)."""

from plw_lab.core.advice import CollapseWatch, collapse, collapsed_answer


def _metrics(predicted: dict, answers: dict) -> dict:
    return {"predicted": predicted, "answers": answers}


# 48 validation answers whose true shares are A 27%, B 23%, C 25%, D 25%.
TRUTH = {"A": 13, "B": 11, "C": 12, "D": 12}


def test_42_of_48_on_an_answer_right_23_percent_of_the_time_is_flagged():
    m = _metrics({"A": 2, "B": 42, "C": 2, "D": 2}, TRUTH)
    answer, share, true_share = collapsed_answer(m)
    assert answer == "B" and share == 42 / 48 and true_share == 11 / 48
    assert "88% of validation answers are 'B'" in collapse(m) and "only 23%" in collapse(m)


def test_a_switch_from_all_b_to_all_a_is_flagged_again():
    watch = CollapseWatch()
    all_b = _metrics({"A": 0, "B": 48, "C": 0, "D": 0}, TRUTH)
    all_a = _metrics({"A": 48, "B": 0, "C": 0, "D": 0}, TRUTH)
    assert "'B'" in watch.check(all_b, 4)
    assert watch.check(all_b, 8) is None  # still B: said once
    assert "'A'" in watch.check(all_a, 12)
    balanced = _metrics({"A": 12, "B": 12, "C": 12, "D": 12}, TRUTH)
    assert watch.check(balanced, 16) is None
    assert "'A'" in watch.check(all_a, 20)  # collapsing again after a recovery is news again


def test_the_base_model_answering_a_29_of_30_times_is_flagged_at_step_0():
    m = _metrics({"A": 29, "B": 1, "C": 0, "D": 0}, {"A": 7, "B": 8, "C": 8, "D": 7})
    message = CollapseWatch().check(m, 0)
    assert "97% of validation answers are 'A'" in message and "base model (step 0" in message


def test_a_balanced_prediction_is_not_flagged():
    assert collapsed_answer(_metrics({"A": 13, "B": 12, "C": 11, "D": 12}, TRUTH)) is None
    assert (
        CollapseWatch().check(_metrics({"A": 30, "B": 6, "C": 6, "D": 6}, TRUTH), 0) is None
    )  # 62%: skewed, not collapsed


def test_a_true_majority_predicted_at_its_true_share_is_not_flagged():
    # "A" is right 85% of the time and predicted 85% of the time: no collapse, a good model of skewed data.
    assert collapsed_answer(_metrics({"A": 41, "B": 7}, {"A": 41, "B": 7})) is None
    # The same prediction where "A" is right half of the time is collapse.
    assert collapsed_answer(_metrics({"A": 41, "B": 7}, {"A": 24, "B": 24}))[0] == "A"


def test_a_handful_of_examples_is_not_enough_evidence():
    # 4 of 5 "A" where A is right 40%: share 0.8 >= 0.4 + 0.3, but P(X >= 4 | 5, 0.4) = 0.087 > 0.05
    assert collapsed_answer(_metrics({"A": 4, "B": 1}, {"A": 2, "B": 3})) is None
    assert collapsed_answer(_metrics({"A": 5, "B": 0}, {"A": 2, "B": 3}))[0] == "A"  # P = 0.4^5 = 0.01
    assert collapsed_answer(_metrics({"A": 4}, {"A": 1, "B": 3})) is None  # fewer than 5 answers


def test_stopping_on_completion_loss_of_letter_answers_is_questioned():
    from plw_lab.core.advice import before_training
    from plw_lab.core.config import LabConfig

    cfg = LabConfig().override({"train.early_stopping_metric": "completion_loss"})
    assert any("mostly measures learning to stop" in n for n in before_training(cfg, 1000, 40, has_answers=True))
    assert not any("learning to stop" in n for n in before_training(cfg, 1000, 40, has_answers=False))
    assert not any("learning to stop" in n for n in before_training(LabConfig(), 1000, 40, has_answers=True))
