"""An example posttrain verifier plugin.

``word_count``: the response should have exactly N words (the ground truth, an int or a
numeric string). Score 1.0 when it does, falling linearly to 0 at 0 or 2N words.
"""


def word_count(response: str, ground_truth, prompt: str | None = None):
    target = int(ground_truth)
    n = len(response.split())
    if n == target:
        return 1.0
    if target <= 0:
        return 0.0, f"{n} words, wanted {target}"
    return max(0.0, 1.0 - abs(n - target) / target), f"{n} words, wanted {target}"
