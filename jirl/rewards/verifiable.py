r"""Verifiable rewards: exact-match answers (GSM8K style), format rewards and length penalties.

A GSM8K solution ends with ``#### <answer>`` (Cobbe et al. 2021). A response scores 1 when its
final answer equals the reference's final answer as an exact rational number
(``fractions.Fraction``: no floating point, no ``Decimal`` context rounding), else 0. Nothing here
raises on a response: text that cannot be read scores 0.

**Final answer** of a text, by the first rule that applies:

1. not a ``str``, or longer than ``MAX_TEXT_CHARS`` characters: none;
2. ``####`` occurs: the first number token after the last ``####``;
3. ``\boxed{...}`` occurs: the last number token inside the last box (braces balanced);
4. otherwise: the last number token of the text.

The chosen token *is* the answer: if it is malformed (below) there is no final answer and the
response scores 0; it never falls back to an earlier number.

**Number tokens.** A candidate is a maximal run of digits (any script) and ``. , / :``,
plus a glued exponent ``e5``/``E-3``, with an optional unary sign and ``$`` in front and an
optional ``%`` behind. Trailing ``.`` ``,`` ``:`` are sentence punctuation and leading ``:`` a
label colon (``15.``, ``Answer:42``); a trailing ``/`` before a letter starts a unit
(``$20/hour`` reads 20). ``{,}`` (LaTeX) reads as ``,``. A candidate is a number iff it
matches this grammar, in at most ``MAX_NUMBER_CHARS`` characters::

    number    = [sign] ["$"] magnitude ["%"]  |  "$" sign magnitude ["%"]
    sign      = "-" | "+" | "−"                 (U+2212 minus sign)
    magnitude = decimal  |  integer "/" integer  |  integer " " integer "/" integer
    decimal   = integer ["." digits]  |  "." digits
    integer   = "0"  |  [1-9] [0-9]*  |  [1-9] [0-9]{0,2} ("," [0-9]{3})+
    digits    = [0-9]+                          (ASCII digits only)
    latex     = [sign] \frac{a}{b}  (also \dfrac, \tfrac, \frac12; a, b = [sign] decimal)

with value ``sign * magnitude``: ``a/b`` is the rational ``a/b`` (``b != 0``), the mixed number
``w n/d`` (one space, also ``w\frac{n}{d}``) is ``w + n/d`` if ``0 < n/d < 1`` (else malformed),
``%`` is ignored (``40%`` is 40: GSM8K gives percentages as the percent value) and ``$`` too.
So ``1,234`` == ``1234.0`` == ``$1,234.00``, ``.5`` == ``0.5`` == ``1/2`` == ``\frac{1}{2}``,
``-3`` == ``$-3`` == ``-$3``.

Everything else is **malformed**: ``1,2,3``, ``12,34``, ``1234,5`` (bad grouping; never 123 nor
3), ``007`` and ``1 000`` (leading zeros), ``1.2.3``, ``3/4/5``, ``10:30``, ``2.5/100``, ``1/0``,
``,5``, ``/5``, ``1/-2``, ``3e5``, non-ASCII digits (``٣``), a numeric character right after
(``5²``, ``1½``), a letter, digit or ``_`` glued on the left (``x2``, ``2x3``, ``H2O``), more than
``MAX_NUMBER_CHARS`` characters (so a million-digit number scores 0, it does not raise),
``\frac{x}{4}``; a ``\frac`` missing an argument (or an unclosed brace) makes the rest of the
text one malformed token.

A sign after a letter, digit, ``_`` or closing bracket is a binary operator, not part of the
number (``5-3`` holds 5 and 3). Expressions are not evaluated: in ``12 / 3 = 4``, ``2^10`` or
``3 - 4`` the final answer is the last number token; ``3 / 4`` (spaced) is not a fraction.
Number words (``five``) are not numbers, and unit or multiplier suffixes are not read
(``5kg`` and ``5k`` read 5).
"""

from __future__ import annotations

import re
from fractions import Fraction
from typing import NamedTuple

import numpy as np

FINAL_MARKER = "####"
MAX_TEXT_CHARS = 100_000
"""Texts longer than this have no final answer (a response scores 0): bounds the work per text."""
MAX_NUMBER_CHARS = 100
"""A number token (or a ``\\frac`` argument) longer than this is malformed: bounds integer sizes."""

_SIGNS = "-+\u2212"
_RUN = re.compile(r"[\d.,/:]+(?:[eE][-+\u2212]?\d+)?")  # \d: digits of any script (rejected later)
_INT = r"(?:0|[1-9][0-9]{0,2}(?:,[0-9]{3})+|[1-9][0-9]*)"
_DECIMAL = rf"(?:{_INT}(?:\.[0-9]+)?|\.[0-9]+)"
_MAGNITUDE = re.compile(rf"(?P<num>{_INT})/(?P<den>{_INT})|{_DECIMAL}")
_FRAC_ARG = re.compile(rf"\s*(?P<sign>[-+\u2212]?)\s*(?P<value>{_DECIMAL})\s*")
_PLAIN_INT = re.compile(_INT)
_FRAC_COMMAND = re.compile(r"\\[dt]?frac(?![A-Za-z])")
_BOXED = re.compile(r"\\boxed\s*\{")


class _Token(NamedTuple):
    start: int  # first character (sign or "$" included)
    end: int  # one past the last character ("%" included)
    value: Fraction | None  # None: malformed
    kind: str  # "int" (no point, no slash), "frac" (unsigned integer a/b), "other"
    prefixed: bool  # has a sign or "$"
    percent: bool
    latex: bool  # a \frac command


def _is_word(ch: str) -> bool:
    return ch.isalnum() or ch == "_"


def _prefix(text: str, s: int) -> tuple[int, int, bool]:
    """``(start, sign, prefixed)`` for a number body starting at ``s``: a unary sign and/or ``$``."""
    p, sign, dollar, signed = s, 1, False, False
    if p > 0 and text[p - 1] == "$":
        p, dollar = p - 1, True
    if p > 0 and text[p - 1] in _SIGNS:
        before = text[p - 2] if p >= 2 else ""
        if not (before and (_is_word(before) or before in ")]}")):  # else: binary operator
            sign, signed, p = (1 if text[p - 1] == "+" else -1), True, p - 1
            if not dollar and p > 0 and text[p - 1] == "$":
                p, dollar = p - 1, True
    if not (dollar or signed):
        return s, 1, False
    return p, sign, True


def _magnitude(body: str) -> tuple[Fraction | None, str]:
    if len(body) > MAX_NUMBER_CHARS or not body.isascii():
        return None, "other"
    m = _MAGNITUDE.fullmatch(body)
    if m is None:
        return None, "other"
    if m["num"] is not None:
        den = int(m["den"].replace(",", ""))
        if den == 0:
            return None, "other"
        return Fraction(int(m["num"].replace(",", "")), den), "frac"
    return Fraction(body.replace(",", "")), ("other" if "." in body else "int")


def _run_token(text: str, s: int, e: int) -> _Token:
    body = text[s:e]
    lead = len(body) - len(body.lstrip(":"))
    s, body = s + lead, body[lead:]
    body = body.rstrip(".,:")
    following = text[s + len(body) : s + len(body) + 1]
    if body.endswith("/") and following.isascii() and following.isalpha():
        body = body[:-1]  # a unit: "$20/hour"
    end = s + len(body)
    start, sign, prefixed = _prefix(text, s)
    percent = end < len(text) and text[end] == "%"
    value, kind = _magnitude(body)
    before = text[start - 1] if start > 0 else ""
    after = text[e] if e < len(text) else ""
    if (before and _is_word(before)) or (prefixed and before == "/") or (after and after.isnumeric()):
        value = None
    if value is not None:
        value = sign * value
    return _Token(start, end + percent, value, kind, prefixed, percent, False)


def _braced(text: str, i: int) -> int:
    """Index one past the ``}`` matching the ``{`` at ``i``, or -1 if it is never closed."""
    depth = 0
    for j in range(i, len(text)):
        ch = text[j]
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return j + 1
    return -1


def _latex_argument(text: str, i: int) -> tuple[str | None, int]:
    """A ``\\frac`` argument at ``i`` (after spaces): ``{...}`` or one digit; None if neither."""
    while i < len(text) and text[i].isspace():
        i += 1
    if i < len(text) and text[i] == "{":
        j = _braced(text, i)
        return (None, len(text)) if j < 0 else (text[i + 1 : j - 1], j)
    if i < len(text) and text[i] in "0123456789":
        return text[i], i + 1
    return None, i


def _frac_argument(arg: str | None) -> tuple[Fraction | None, bool]:
    """Value of a ``\\frac`` argument, and whether it is an unsigned plain integer."""
    if arg is None or len(arg) > MAX_NUMBER_CHARS or not arg.isascii():
        return None, False
    m = _FRAC_ARG.fullmatch(arg)
    if m is None:
        return None, False
    value = Fraction(m["value"].replace(",", ""))
    if m["sign"] and m["sign"] != "+":
        value = -value
    return value, not m["sign"] and _PLAIN_INT.fullmatch(m["value"]) is not None


def _frac_token(text: str, m: re.Match) -> _Token:
    numerator, i = _latex_argument(text, m.end())
    denominator, end = _latex_argument(text, i) if numerator is not None else (None, i)
    if denominator is None:  # an argument is missing: the rest of the text is not readable
        end = len(text)
    start, sign, prefixed = _prefix(text, m.start())
    (a, a_int), (b, b_int) = _frac_argument(numerator), _frac_argument(denominator)
    value = None if a is None or b is None or b == 0 else sign * a / b
    percent = end < len(text) and text[end] == "%"
    kind = "frac" if a_int and b_int else "other"
    return _Token(start, end + percent, value, kind, prefixed, percent, True)


def _merge_mixed(tokens: list[_Token], text: str) -> list[_Token]:
    """Join ``w n/d`` (one space; no space before ``\\frac``) into one mixed-number token."""
    out: list[_Token] = []
    for tok in tokens:
        prev = out[-1] if out else None
        gap = text[prev.end : tok.start] if prev is not None else None
        if (
            prev is not None
            and tok.kind == "frac"
            and not tok.prefixed
            and prev.kind == "int"
            and prev.value is not None
            and not prev.percent
            and (gap == " " or (gap == "" and tok.latex))
        ):
            fraction = tok.value
            value = None
            if fraction is not None and 0 < fraction < 1:
                negative = text[prev.start : prev.end].lstrip("$")[:1] in ("-", "\u2212")
                value = prev.value - fraction if negative else prev.value + fraction
            out[-1] = _Token(prev.start, tok.end, value, "other", prev.prefixed, tok.percent, tok.latex)
        else:
            out.append(tok)
    return out


def _tokens(text: str) -> list[_Token]:
    """The number tokens of ``text``, left to right (malformed ones have ``value`` None)."""
    tokens: list[_Token] = []
    pos = 0
    while pos <= len(text):
        command = _FRAC_COMMAND.search(text, pos)
        stop = command.start() if command else len(text)
        for run in _RUN.finditer(text, pos, stop):
            if re.search(r"\d", run.group()):
                tokens.append(_run_token(text, run.start(), run.end()))
        if command is None:
            break
        token = _frac_token(text, command)
        tokens.append(token)
        pos = max(token.end, command.end())
    return _merge_mixed(tokens, text)


def _final_value(text: object) -> Fraction | None:
    """The exact value of the final answer of ``text`` (module docstring), or None."""
    if not isinstance(text, str) or len(text) > MAX_TEXT_CHARS:
        return None
    text = text.replace("{,}", ",")
    marker = text.rfind(FINAL_MARKER)
    if marker >= 0:
        tokens = _tokens(text[marker + len(FINAL_MARKER) :])
        return tokens[0].value if tokens else None
    boxes = list(_BOXED.finditer(text))
    if boxes:
        close = _braced(text, boxes[-1].end() - 1)
        if close < 0:
            return None
        text = text[boxes[-1].end() : close - 1]
    tokens = _tokens(text)
    return tokens[-1].value if tokens else None


def _canonical(value: Fraction) -> str:
    """Decimal string when ``value`` has a finite decimal expansion (``0.75``, ``-3``), else ``p/q``."""
    n, d = value.numerator, value.denominator
    if n == 0:
        return "0"
    twos = fives = 0
    rest = d
    while rest % 2 == 0:
        rest, twos = rest // 2, twos + 1
    while rest % 5 == 0:
        rest, fives = rest // 5, fives + 1
    if rest != 1:
        return f"{n}/{d}"
    places = max(twos, fives)
    digits = str(abs(n) * 10**places // d)
    if places:
        digits = digits.rjust(places + 1, "0")
        digits = f"{digits[:-places]}.{digits[-places:]}".rstrip("0").rstrip(".")
    return f"-{digits}" if n < 0 else digits


def normalize_number(text: str) -> str | None:
    """Canonical form of a number written as text, or None if it is not one.

    ``text`` must be exactly one number token (module docstring), optionally followed by
    sentence punctuation: ``"1,000.50"`` -> ``"1000.5"``, ``"$18"`` -> ``"18"``, ``"-0.0"`` ->
    ``"0"``, ``".5"``/``"1/2"`` -> ``"0.5"``, ``"2/6"`` -> ``"1/3"``; ``"1,2,3"``, ``"5 apples"``
    -> None. The canonical form is a decimal without trailing zeros when the value has a finite
    decimal expansion, else ``p/q`` in lowest terms; equal strings <=> equal values.
    """
    if not isinstance(text, str) or len(text) > MAX_TEXT_CHARS:
        return None
    text = text.strip().replace("{,}", ",")
    tokens = _tokens(text)
    if len(tokens) != 1 or tokens[0].value is None or tokens[0].start != 0:
        return None
    if text[tokens[0].end :].strip(".,:"):
        return None
    return _canonical(tokens[0].value)


def extract_final_answer(text: str) -> str | None:
    """The final numeric answer of a solution in canonical form (``normalize_number``), or None.

    After the last ``####`` if present, else inside the last ``\\boxed{}``, else the last number;
    None when that token is malformed or missing (the rules are in the module docstring).
    """
    value = _final_value(text)
    return None if value is None else _canonical(value)


def exact_match_rewards(responses: list[str], references: list[str]) -> np.ndarray:
    """``[N]`` float32: 1 where the response's final answer equals the reference's exactly, else 0.

    ``r_i = 1[v(response_i) == v(reference_i)]`` with ``v`` the exact rational value of the final
    answer (module docstring); a response without a readable final answer scores 0 and never
    raises. A reference without one raises ``ValueError`` (the data set is broken).
    """
    if len(responses) != len(references):
        raise ValueError(f"{len(responses)} responses but {len(references)} references")
    out = np.zeros(len(responses), np.float32)
    for i, (response, reference) in enumerate(zip(responses, references)):
        expected = _final_value(reference)
        if expected is None:
            raise ValueError(f"reference {i} has no numeric final answer: {str(reference)[-80:]!r}")
        out[i] = float(_final_value(response) == expected)
    return out


def format_rewards(responses: list[str], pattern: str = r"#### *-?\$?\d") -> np.ndarray:
    """``[N]`` float32: 1 where the response contains ``pattern`` (default: a ``#### <number>`` line)."""
    compiled = re.compile(pattern)
    return np.array([float(isinstance(r, str) and bool(compiled.search(r))) for r in responses], np.float32)


def length_penalties(lengths, max_length: int, coefficient: float = 1.0) -> np.ndarray:
    """``-coefficient * max(0, length - max_length) / max_length`` per response (0 within budget)."""
    lengths = np.asarray(lengths, np.float32)
    return -coefficient * np.maximum(0.0, lengths - max_length) / max_length
