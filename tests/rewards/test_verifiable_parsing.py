"""Strict number parsing of the verifiable reward (issue "Verifier: no false positives").

Explicit tables of what the module docstring of ``jirl.rewards.verifiable`` claims, properties
over generated answers (a wrong answer in any supported format never scores 1, a right one in
any supported format always does) and hostile inputs that must score 0 without raising.
"""

from __future__ import annotations

import string
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from jirl.rewards.verifiable import (
    MAX_NUMBER_CHARS,
    MAX_TEXT_CHARS,
    exact_match_rewards,
    extract_final_answer,
    format_rewards,
    normalize_number,
)


def reward(response, reference) -> float:
    return float(exact_match_rewards([response], [reference])[0])


# --------------------------------------------------------------------------- explicit tables

# (text, final answer in canonical form, or None when the final token is malformed / missing)
FINAL_ANSWERS = [
    # plain integers, signs, separators, decimals
    ("42", "42"),
    ("-3", "-3"),
    ("+7", "7"),
    ("\u22125", "-5"),
    ("1,234", "1234"),
    ("1,234,567", "1234567"),
    ("1234.0", "1234"),
    ("1234.", "1234"),
    ("0.5", "0.5"),
    (".5", "0.5"),
    ("-.5", "-0.5"),
    ("1/2", "0.5"),
    ("3/4", "0.75"),
    ("6/3", "2"),
    ("2/6", "1/3"),
    ("-1/3", "-1/3"),
    ("1,000/4", "250"),
    ("0.10000000000000000000000000001", "0.10000000000000000000000000001"),
    ("-0.0", "0"),
    # currency, percent, sentence punctuation, labels, units
    ("$1,234.50", "1234.5"),
    ("-$5", "-5"),
    ("$-5", "-5"),
    ("$.50", "0.5"),
    ("40%", "40"),
    ("5\\%", "5"),
    ("The answer is 15.", "15"),
    ("It costs $18, in total", "18"),
    ("Answer:42", "42"),
    ("Answer: -42", "-42"),
    ("She earns $20/hour", "20"),
    ("5kg", "5"),
    ("**42**", "42"),
    ("(5)", "5"),
    # mixed numbers
    ("1 1/2", "1.5"),
    ("-2 3/4", "-2.75"),
    ("1\\frac{1}{2}", "1.5"),
    ("1 \\frac{1}{2}", "1.5"),
    # LaTeX
    ("\\frac{3}{4}", "0.75"),
    ("\\dfrac{1}{3}", "1/3"),
    ("-\\frac{3}{4}", "-0.75"),
    ("$\\frac{-3}{4}$", "-0.75"),
    ("\\frac{1,000}{8}", "125"),
    ("\\frac12", "0.5"),
    ("\\tfrac 3 4", "0.75"),
    ("$x = 5$", "5"),
    ("\\boxed{1{,}234}", "1234"),
    # final-answer rules: #### first, then the last box, then the last number
    ("#### 42", "42"),
    ("so 3 + 4 = 7\n#### 7", "7"),
    ("#### 5 apples, not 6", "5"),
    ("#### 1 1/2 cups", "1.5"),
    ("#### 3\nsome text #### 4 then 9", "4"),
    ("\\boxed{42}", "42"),
    ("\\boxed{\\frac{3}{4}} and then 7", "0.75"),
    ("\\boxed{6} ... \\boxed{x = 8} ... 9", "8"),
    ("#### 5 \\boxed{6}", "5"),
    ("We get 12 apples, then 15. The answer is 15.", "15"),
    ("the numbers are 1, 2, 3", "3"),
    ("5-3", "3"),
    ("x-5", "5"),
    ("12 / 3 = 4", "4"),
    ("3 / 4", "4"),  # spaced: an expression, not a fraction
    # malformed final tokens: no answer, never an earlier number
    ("1,2,3", None),
    ("The answer is 123, i.e. 1,2,3", None),
    ("12,34", None),
    ("1234,5", None),
    ("1,0000", None),
    (",5", None),
    ("0,123", None),
    ("007", None),
    ("1 000", None),
    ("1.2.3", None),
    ("3/4/5", None),
    ("10:30", None),
    ("2.5/100", None),
    ("1/0", None),
    ("\\frac{1}{0}", None),
    ("/5", None),
    ("1/-2", None),
    ("$17/$8.50", None),
    ("3e5", None),
    ("3E-5", None),
    ("x2", None),
    ("2x3", None),
    ("H2O", None),
    ("var_2", None),
    ("0x1F", None),
    ("5\u00b2", None),  # 5 squared
    ("1\u00bd", None),  # 1 and a half (vulgar fraction)
    ("\u0663", None),  # Arabic-Indic three
    ("\uff14\uff12", None),  # fullwidth 42
    ("4\u0662", None),
    ("1 3/2", None),  # improper mixed number
    ("1 0/2", None),
    ("\\frac{\\frac{1}{2}}{3}", None),
    ("\\frac{1}{2", None),
    ("\\frac{x}{4}", None),
    ("\\frac{1}\\frac{1}{2}", None),
    ("\\frac{1}{2} \\frac", None),
    ("\\frac{1}{2}\\frac{1}", None),
    ("\\boxed{}", None),
    ("\\boxed{five}", None),
    ("\\boxed{42", None),
    ("#### ", None),
    ("#### forty-two", None),
    ("", None),
    ("   ", None),
    ("no digits here", None),
    ("1" * (MAX_NUMBER_CHARS + 1), None),
]


@pytest.mark.parametrize(("text", "expected"), FINAL_ANSWERS)
def test_final_answer_table(text, expected):
    assert extract_final_answer(text) == expected


# (response, reference, reward)
ISSUE_CASES = [
    # the false positives of the issue
    (".5", "#### 5", 0.0),
    ("3/4", "#### 3", 0.0),
    ("3/4", "#### 4", 0.0),
    ("1,2,3", "#### 123", 0.0),
    ("1,2,3", "#### 3", 0.0),
    ("0.10000000000000000000000000001", "#### 0.1", 0.0),
    ("0.1", "#### 0.10000000000000000000000000001", 0.0),
    ("1 1/2", "#### 1/2", 0.0),
    ("1\\frac{1}{2}", "#### 0.5", 0.0),
    ("\\frac{3}{4}", "#### 4", 0.0),
    ("3e5", "#### 5", 0.0),
    ("3e5", "#### 3", 0.0),
    ("12,34", "#### 1234", 0.0),
    ("1 000", "#### 0", 0.0),
    ("The answer is 123, i.e. 1,2,3", "#### 123", 0.0),
    ("5\u00b2", "#### 5", 0.0),
    ("\u0663", "#### 3", 0.0),
    ("$17/$8.50", "#### 8.5", 0.0),
    ("I first said 42 but it is 41", "#### 42", 0.0),
    ("#### 42.5", "#### 42", 0.0),
    ("4/2", "#### 4", 0.0),
    # correct answers in every supported format
    ("42", "#### 42", 1.0),
    ("The answer is -3.", "#### -3", 1.0),
    ("1,234", "#### 1234", 1.0),
    ("1234.0", "#### 1,234", 1.0),
    ("1,234.000", "#### 1234", 1.0),
    ("\\boxed{42}", "#### 42", 1.0),
    ("so 40 + 2\n#### 42", "#### 42", 1.0),
    ("$1,234.50", "#### 1234.5", 1.0),
    ("0.5", "#### 1/2", 1.0),
    (".5", "#### 0.5", 1.0),
    ("1/2", "#### .5", 1.0),
    ("2/4", "#### 0.5", 1.0),
    ("\\boxed{\\frac{1}{2}}", "#### 0.5", 1.0),
    ("2 1/2", "#### 2.5", 1.0),
    ("1/3", "#### 2/6", 1.0),
    ("40%", "#### 40", 1.0),
    ("-$5", "#### -5", 1.0),
    ("\\boxed{1{,}234}", "#### 1,234", 1.0),
    ("#### 5 (I also tried 6)", "#### 5", 1.0),
    ("I first said 41 but it is 42", "#### 42", 1.0),
]


@pytest.mark.parametrize(("response", "reference", "expected"), ISSUE_CASES)
def test_exact_match_table(response, reference, expected):
    assert reward(response, reference) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1,000.50", "1000.5"),
        ("$18", "18"),
        ("-0.0", "0"),
        (" 15. ", "15"),
        (".5", "0.5"),
        ("1/2", "0.5"),
        ("2/6", "1/3"),
        ("1 1/2", "1.5"),
        ("40%", "40"),
        ("\\frac{3}{4}", "0.75"),
        ("abc", None),
        ("5 apples", None),
        ("x5", None),
        ("1,2,3", None),
        ("1 2", None),
        ("", None),
        (None, None),
    ],
)
def test_normalize_number_requires_exactly_one_number(text, expected):
    assert normalize_number(text) == expected


# --------------------------------------------------------------------------- hostile inputs


def test_huge_numbers_score_zero_without_raising():
    digits = "1" * 1_000_001
    for text in (digits, f"#### {digits}", f"\\boxed{{{digits}}}", f"0.{digits}", f"{digits}/3", f"\\frac{{{digits}}}{{1}}"):
        assert extract_final_answer(text) is None
        assert reward(text, "#### 1") == 0.0
        assert normalize_number(text) is None
    # Within the text bound, a number over MAX_NUMBER_CHARS (beyond Python's 4300-digit int limit)
    # is malformed; one at the bound still parses exactly.
    for text in ("9" * 5000, f"#### {'9' * 5000}", f"\\frac{{{'9' * 5000}}}{{7}}", f"1,{'000,' * 2000}000"):
        assert extract_final_answer(text) is None
    at_bound = "1" + "0" * (MAX_NUMBER_CHARS - 1)
    assert extract_final_answer(f"x = {at_bound}.") == at_bound
    assert reward(f"x = {at_bound}", f"#### {at_bound}") == 1.0
    assert extract_final_answer(at_bound + "0") is None
    # Text length: MAX_TEXT_CHARS characters are read, one more is not.
    assert extract_final_answer(" " * (MAX_TEXT_CHARS - 2) + "42") == "42"
    assert extract_final_answer(" " * (MAX_TEXT_CHARS - 1) + "42") is None


def test_degenerate_and_non_text_responses_score_zero():
    hostile = [
        None, 42, 4.2, float("nan"), b"#### 42", ["#### 42"], "", "####", "#### #### ####", "\\boxed{",
        "}{", "$", "-", "%", "/", ".", "...", ",,,", "\\frac", "\\frac{", "\\frac{}{}", "{" * 50_000 + "\\boxed{42",
        "\\boxed{" * 20_000, "\\frac{1}" * 20_000, "\\frac{" * 20_000 + "42", "-" * 50_000 + "5" * (MAX_NUMBER_CHARS + 1),
        ".5" * 30_000, "1," * 40_000, "1/" * 40_000, "e5" * 40_000, "\u0663" * 50_000, "\x00\ud800",
    ]
    for text in hostile:
        assert extract_final_answer(text) is None, repr(text)[:60]
        assert normalize_number(text) is None
    rewards = exact_match_rewards(hostile, ["#### 42"] * len(hostile))
    np.testing.assert_array_equal(rewards, 0.0)
    assert format_rewards([None, 42, "#### 5"]).tolist() == [0.0, 0.0, 1.0]


FRAGMENTS = [
    "####", "\\boxed{", "\\frac{", "\\dfrac", "{", "}", "{,}", "$", "%", "-", "+", "\u2212", ".", ",", "/", ":",
    " ", "\n", "e", "E", "x", "0", "1", "7", "42", "1,234", "1,2,3", ".5", "3/4", "1/0", "\u0663", "\u00b2",
    "\u00bd", "\uff14", "9" * 120, "\\", "_",
]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=8)), max_size=40).map("".join))
def test_random_hostile_text_never_raises(text):
    answer = extract_final_answer(text)
    assert answer is None or isinstance(Fraction(answer), Fraction)
    canonical = normalize_number(text)
    assert canonical is None or canonical == answer
    assert reward(text, "#### 5") == float(answer is not None and Fraction(answer) == 5)
    if answer is not None:
        assert reward(text, text) == 1.0
    format_rewards([text])


# --------------------------------------------------------------------------- generated answers
# Strategies are built once here: building them inside the composites costs more than the tests.

DENOMINATORS = [1, 1, 1, 1, 2, 3, 4, 5, 7, 8, 10, 12, 16, 20, 25, 100, 1000, 1024]
rationals = st.builds(
    Fraction,
    st.one_of(st.integers(-1000, 1000), st.integers(-(10**12), 10**12)),
    st.sampled_from(DENOMINATORS),
)
# Prose never holds a digit, a numeric character, ``#`` or a backslash, and is always separated
# from the number by whitespace: it cannot add, change or hide a number.
PROSE_ALPHABET = string.ascii_letters + " \n\t.,;:!?()[]{}*_=-+$%/'\"<>" + "\u00e9\u00df\u0436\u03bb\u4e2d\u00a0"
prose = st.text(PROSE_ALPHABET, max_size=25)
punctuation = st.sampled_from(["", ".", ",", "!", "?", ";", ")", ":"])
booleans = st.booleans()
scales = st.integers(1, 4)
minus_signs = st.sampled_from(["-", "\u2212"])
plus_signs = st.sampled_from(["", "", "+"])
currencies = st.sampled_from(["", "", "$"])
percents = st.sampled_from(["", "", "%"])
latex_gaps = st.sampled_from(["", " "])
latex_sign_places = st.sampled_from(["outside", "numerator", "denominator"])
trailing_zeros = {False: st.integers(0, 3), True: st.integers(1, 3)}
WRAPPERS = ["{}", "\\boxed{{{}}}", "#### {}", "**{}**"]
wrappers = {False: st.sampled_from(WRAPPERS), True: st.sampled_from([*WRAPPERS, "${}$"])}
tiny_signs = st.sampled_from([-1, 1])
tiny_exponents = st.integers(1, 30)
WRONG_KINDS = st.sampled_from(
    ["unrelated", "plus_one", "tiny", "times_ten", "over_ten", "negated", "numerator", "denominator", "reciprocal"]
)
REFERENCE_LAYOUTS = st.sampled_from(["gsm8k", "bare", "solution"])
_format_strategies: dict[tuple[str, ...], st.SearchStrategy[str]] = {}


def finite_decimal(value: Fraction) -> tuple[int, str] | None:
    """``(integer part, fractional digits)`` of ``|value|``, or None without a finite expansion."""
    for places in range(40):
        if 10**places % value.denominator == 0:
            scaled = abs(value.numerator) * 10**places // value.denominator
            whole, part = divmod(scaled, 10**places)
            return whole, str(part).rjust(places, "0") if places else ""
    return None


def render(draw, value: Fraction) -> str:
    """``value`` written in one of the supported formats (module docstring of verifiable)."""
    negative, magnitude, decimal = value < 0, abs(value), finite_decimal(value)
    formats = ["fraction", "latex"]
    if value.denominator == 1:
        formats += ["integer", "grouped"]
    if decimal is not None:
        formats += ["decimal", "leading_dot"] if magnitude < 1 else ["decimal"]
    if value.denominator != 1 and magnitude > 1:
        formats += ["mixed", "mixed_latex"]
    key = tuple(formats)
    if key not in _format_strategies:
        _format_strategies[key] = st.sampled_from(formats)
    fmt = draw(_format_strategies[key])
    scale = draw(scales)
    p, q = magnitude.numerator * scale, magnitude.denominator * scale
    grouped = draw(booleans)

    def integer(n: int) -> str:
        return f"{n:,}" if grouped else str(n)

    if fmt == "latex":
        where = draw(latex_sign_places) if negative else "outside"
        numerator = f"-{p}" if where == "numerator" else str(p)
        denominator = f"-{q}" if where == "denominator" else str(q)
        body = f"\\frac{{{numerator}}}{{{denominator}}}"
        return f"{draw(minus_signs)}{body}" if negative and where == "outside" else body
    if fmt == "integer":
        body = str(magnitude.numerator)
    elif fmt == "grouped":
        body = f"{magnitude.numerator:,}"
    elif fmt in ("decimal", "leading_dot"):
        whole, digits = decimal
        digits += "0" * draw(trailing_zeros[not digits])
        body = f".{digits}" if fmt == "leading_dot" else f"{integer(whole)}.{digits}"
    elif fmt == "fraction":
        body = f"{p}/{q}"
    else:  # mixed numbers
        whole = magnitude.numerator // magnitude.denominator
        n, d = (magnitude - whole).numerator * scale, (magnitude - whole).denominator * scale
        if fmt == "mixed_latex":
            body = f"{integer(whole)}{draw(latex_gaps)}\\frac{{{n}}}{{{d}}}"
        else:
            body = f"{integer(whole)} {n}/{d}"
    sign = draw(minus_signs) if negative else draw(plus_signs)
    currency = draw(currencies)
    text = f"{currency}{sign}{body}" if draw(booleans) else f"{sign}{currency}{body}"
    return text + draw(percents)


@st.composite
def final_answer_text(draw, value: Fraction, earlier: Fraction | None = None) -> str:
    """``value`` as the final answer of a response: a bare number, ``\\boxed{}``, ``#### ``,
    bold or LaTeX math, inside number-free prose, optionally after a plain mention of ``earlier``."""
    number = render(draw, value)
    wrapper = draw(wrappers["$" not in number])
    if wrapper != "{}" and "," in number and draw(booleans):
        number = number.replace(",", "{,}")  # LaTeX thousands separator
    head = draw(prose)
    if earlier is not None:
        head = f"{head} {render(draw, earlier)} {draw(prose)}"
    return f"{head} {wrapper.format(number)}{draw(punctuation)} {draw(prose)}"


@st.composite
def reference_text(draw, value: Fraction) -> str:
    """A GSM8K-style reference (``#### answer``, maybe after a worked solution) or a bare answer."""
    number = render(draw, value)
    layout = draw(REFERENCE_LAYOUTS)
    return {"gsm8k": f"#### {number}", "bare": number}.get(layout) or f"{draw(prose)}\n#### {number}"


@st.composite
def wrong_answer(draw, gold: Fraction) -> Fraction:
    """A rational different from ``gold``: unrelated, or a near miss (off by one, digit shifts,
    differences below float or 28-digit ``Decimal`` resolution, numerator or denominator alone)."""
    kind = draw(WRONG_KINDS)
    if kind == "unrelated":
        wrong = draw(rationals)
    elif kind == "plus_one":
        wrong = gold + draw(tiny_signs)
    elif kind == "tiny":
        wrong = gold + Fraction(draw(tiny_signs), 10 ** draw(tiny_exponents))
    elif kind == "times_ten":
        wrong = gold * 10
    elif kind == "over_ten":
        wrong = gold / 10
    elif kind == "negated":
        wrong = -gold
    elif kind == "numerator":
        wrong = Fraction(gold.numerator)
    elif kind == "denominator":
        wrong = Fraction(gold.denominator)
    else:
        wrong = 1 / gold if gold else Fraction(1)
    assume(wrong != gold)
    return wrong


@settings(max_examples=1000, deadline=None)
@given(data=st.data(), gold=rationals)
def test_a_wrong_answer_never_scores_one(data, gold):
    """(a) A wrong rational in any supported format, anywhere in prose, even after a mention of the
    right answer, is read as exactly that wrong value and scores 0."""
    wrong = data.draw(wrong_answer(gold))
    earlier = gold if data.draw(booleans) else None
    response = data.draw(final_answer_text(wrong, earlier=earlier))
    reference = data.draw(reference_text(gold))
    assert Fraction(extract_final_answer(response)) == wrong
    assert reward(response, reference) == 0.0


@settings(max_examples=1000, deadline=None)
@given(data=st.data(), gold=rationals)
def test_a_right_answer_in_any_supported_format_scores_one(data, gold):
    """(b) The right rational in any supported format (integer, thousands separators, trailing
    zeros, leading dot, equal fraction, mixed number, ``\\frac``, ``$``, ``%``; bare, boxed, GSM8K
    ``####``, LaTeX math), even after a wrong number, scores 1."""
    earlier = data.draw(st.one_of(st.none(), wrong_answer(gold)))
    response = data.draw(final_answer_text(gold, earlier=earlier))
    reference = data.draw(reference_text(gold))
    assert Fraction(extract_final_answer(response)) == gold
    assert reward(response, reference) == 1.0


separators = st.sampled_from([",", ",", ".", ":", "/"])


@settings(max_examples=300, deadline=None)
@given(data=st.data(), gold=st.integers(10, 10**12))
def test_digits_with_invalid_separators_never_score(data, gold):
    """The digits of the gold answer split by separators in the wrong places (``1,2,3``,
    ``12,34``, ``1234,5``, ``1.2.3``, ``1:23``) are malformed: the response scores 0."""
    digits = str(gold)
    cuts = sorted(data.draw(st.sets(st.integers(1, len(digits) - 1), min_size=1)))
    separator = data.draw(separators)
    pieces = [digits[i:j] for i, j in zip([0, *cuts], [*cuts, len(digits)])]
    corrupted = separator.join(pieces)
    assume(corrupted != f"{gold:,}")
    if separator in "./":
        assume(len(pieces) > 2)  # one "." or "/" is a real decimal or fraction, a different value
    response = f"{data.draw(prose)} {gold} is wrong, it is {corrupted}{data.draw(punctuation)} {data.draw(prose)}"
    assert extract_final_answer(response) is None
    assert reward(response, f"#### {gold}") == 0.0
