"""What the label-noise, easy/hard and m-coherence pages conclude from their numbers
(:mod:`cgh_jax.analysis.label_noise`, :func:`cgh_jax.analysis.easy_hard.verdict`,
:func:`cgh_jax.analysis.coherence.verdict`), on rows and curves worked out by hand."""

import math

from cgh_jax.analysis import coherence, easy_hard, label_noise


def noise_row(noise, pristine, corrupt, to_50=math.nan):
    return dict(noise=noise, pristine_ep1=pristine, corrupt_ep1=corrupt, corrupt_to_50=to_50)


def test_both_label_noise_predictions_hold_and_memorization_comes_sooner():
    rows = [
        noise_row(0.0, 0.90, math.nan),
        noise_row(0.25, 0.85, 0.20, to_50=30),
        noise_row(0.5, 0.80, 0.25, to_50=20),
        noise_row(1.0, 0.12, 0.10, to_50=5),
    ]
    noisy, below, p1, p2 = label_noise.predictions(rows)
    assert [r["noise"] for r in noisy] == [0.25, 0.5] and len(below) == 3 and p1 and p2
    text = "\n".join(label_noise.verdicts(rows, 60))
    assert "the gaps are 65.0 points at 25% noise, 55.0 points at 50% noise" in text
    assert "after one epoch the difference is +2.0 points" in text  # the 100% row
    assert "falls as the noise grows (90.0%, 85.0%, 80.0% at 0% noise" in text
    assert "25% noise: epoch 30, 50% noise: epoch 20" in text
    assert "Memorization of the corrupt examples comes *sooner*" in text


def test_label_noise_predictions_that_fail_say_where():
    rows = [noise_row(0.0, 0.80, math.nan), noise_row(0.5, 0.85, 0.90)]
    _, _, p1, p2 = label_noise.predictions(rows)
    assert not p1 and not p2
    text = "\n".join(label_noise.verdicts(rows, 60))
    assert "**Prediction 1 does not hold** at 50% noise" in text
    assert "**Prediction 2 does not hold strictly**" in text
    assert "50% noise: not within 60" in text


def side(name, train, test):
    return dict(
        side=name, train=train, test=test, gap=[a - b for a, b in zip(train, test, strict=True)]
    )


def test_easy_hard_holds_only_beyond_twice_the_seed_spread():
    # test accuracies: easy 0.95 +- 0.01 (sample std 0.01 * sqrt(2)), hard 0.80: 15 points
    rows = [side("easy", [1.0, 1.0], [0.94, 0.96]), side("hard", [0.99, 0.97], [0.80, 0.80])]
    first, second = easy_hard.verdict(rows)
    assert first.startswith("- **The W&S finding holds here**")
    assert "easy side reaches 95.0% test accuracy and the hard side 80.0%" in first
    assert "(+15.0 points; largest seed std 1.4)." in first
    assert "easy 5.0 points, hard 18.0 points" in second and "not in fitting" in second
    close = [side("easy", [0.5, 0.5], [0.80, 0.90]), side("hard", [0.5, 0.5], [0.80, 0.84])]
    first, second = easy_hard.verdict(close)
    assert first.startswith("- **The W&S finding does not hold here**")
    assert "a side that is not fitted yet understates its gap" in second


def test_coherence_verdict_compares_the_curves_step_by_step():
    real = [
        dict(step=0, alpha=2.0, accuracy=0.1),
        dict(step=10, alpha=30.0, accuracy=0.5),
        dict(step=1000, alpha=5.0, accuracy=1.0),
    ]
    rand = [
        dict(step=0, alpha=1.0, accuracy=0.1),
        dict(step=10, alpha=1.5, accuracy=0.1),
        dict(step=1000, alpha=6.0, accuracy=0.9),
    ]
    lines = coherence.verdict({"real labels": real, "random labels": rand}, m=200)
    assert (
        lines[0] == "- Real labels are more coherent at 2 of 3 measured steps; not at steps 1000."
    )
    assert "up to 20.0x the random-label coherence" in lines[1]  # 30 / 1.5 at step 10
    assert "α peaks at 30.0 (step 10) and ends at 5.0" in lines[2] and "falls as" in lines[2]
    assert "rises from at most 1.50 in the first 100 steps to 6.00 at step 1000" in lines[3]
    assert "α = 1 for orthogonal gradients and 200 for identical ones" in lines[3]
