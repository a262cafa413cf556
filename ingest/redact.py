"""Secret redaction, applied to every string before it is stored or embedded.

Each kind of secret has a pattern and cheap literal hints; a pattern runs only
on texts that contain one of its hints. The kind becomes the typed marker,
e.g. `[REDACTED:github_token]`. For
`NAME=value` assignments and passwords in URLs only the secret part is
replaced, so the text stays readable ("DATABASE_URL=postgres://app:[REDACTED:
url_password]@db/x"). Value classes exclude backslashes and quotes so that
redacting serialized JSON (tool inputs) keeps it valid.

Text a person marks `<private>...</private>` (in a prompt, and wherever it is
quoted back: a compaction summary, a subagent's prompt) is replaced whole, as
`[REDACTED:private]`; an opening tag without its closing one hides the rest of
the text.

Redaction errs on the side of hiding: a false positive costs a word of
context, a false negative leaks a credential into a file that lives for years.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["redact", "Redactor", "SECRET_KINDS"]

_VALUE = r"[^\s\"'`\\,;()\[\]{}]"

# (kind, literal hints, pattern). A pattern runs only on texts containing one
# of its hints (a plain substring test, fast in C): most transcript text holds
# none, and one big alternation tried at every position was the slowest part
# of ingest. Hints of None mean "check the lowercased text" (see _LOWER_HINTS).
_PATTERNS: list[tuple[str, tuple[str, ...], str]] = [
    # First, so that a secret inside a private span is hidden with the span.
    ("private", ("<private>",), r"<private>.*?(?:</private>|\Z)"),
    ("private_key", ("PRIVATE KEY",),
     r"-----BEGIN[A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----.*?"
     r"(?:-----END[A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----|\Z)"),
    ("anthropic_key", ("sk-ant-",), r"\bsk-ant-[A-Za-z0-9_\-]{20,}"),
    ("openai_key", ("sk-",), r"\bsk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_\-]{20,}"),
    ("stripe_key", ("_live_",), r"\b(?:sk|rk|pk)_live_[A-Za-z0-9]{16,}"),
    ("aws_access_key", ("AKIA", "ASIA", "AGPA", "AIDA", "AROA", "ANPA", "ANVA", "AIPA", "ABIA", "ACCA"),
     r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA|ANVA|AIPA|ABIA|ACCA)[A-Z0-9]{16}\b"),
    ("github_token", ("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"),
     r"\b(?:gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{22,255})"),
    ("gitlab_token", ("glpat-",), r"\bglpat-[A-Za-z0-9_\-]{20,}"),
    ("slack_token", ("xox",), r"\bxox[abposr]-[A-Za-z0-9\-]{10,}"),
    ("google_api_key", ("AIza",), r"\bAIza[0-9A-Za-z_\-]{35}"),
    ("npm_token", ("npm_",), r"\bnpm_[A-Za-z0-9]{36}\b"),
    ("bearer_token", ("earer ",), r"(?<=[Bb]earer )[A-Za-z0-9_\-\.=+/]{20,}"),
    # scheme://user:PASSWORD@host -> only the password is replaced (the user
    # may be empty: redis://:PASSWORD@host)
    ("url_password", ("://",),
     r"(?<=://)(?!\[REDACTED:)(?P<user>[^\s:/@\"'\\]{0,128}):(?P<secret>[^\s@/\"'\\]{1,256})(?=@)"),
    # MY_SECRET=value, "api_key": "value", password: value -> only the value.
    # Anchored on the keyword (not on the name's start) so the regex engine
    # does not try every word of the text.
    (
        "secret_assignment",
        ("secret", "token", "passw", "passphrase", "key", "credential"),
        r"(?P<name>(?i:SECRET|TOKEN|PASSWORD|PASSWD|PASSPHRASE|API_?KEY|ACCESS_?KEY|PRIVATE_?KEY|"
        r"CREDENTIALS?|AUTH_?KEY)[A-Za-z0-9_]*)"
        # The quotes may be escaped: JSON text inside a JSON string (a tool input
        # writing a config file) reads {\"client_secret\": \"value\"}.
        r"(?P<sep>(?:\\?[\"'])?\s{0,3}[=:]\s{0,3}(?:\\?[\"'])?)"
        # not a reference ($X, ${..}, <placeholder>, process.env.X, self.token),
        # not a count (max_tokens=4096), not a call or an index (tokens[i], f(x)).
        # A count is digits up to the END of the value: "1+jkp..." or "6!Ezm..."
        # (an AWS or Django secret) starts with a digit but is no number.
        r"(?P<value>(?![\$\{<\[\*])(?!REDACTED)(?![0-9._]+(?:[\s\"'`\\,;()\[\]{}]|\Z))"
        r"(?!(?:process\.env|os\.environ|os\.getenv|getenv|env\.|config\.|this\.|self\.|settings\.|"
        r"options\.|opts\.|args\.|params\.|props\.|req\.|request\.|None\b|null\b|true\b|false\b|"
        r"undefined\b|str\b|string\b))"
        rf"{_VALUE}{{6,}}+(?![(\[]))",
    ),
]

SECRET_KINDS: tuple[str, ...] = tuple(name for name, _, _ in _PATTERNS)

_CASE_INSENSITIVE_HINTS = {"secret_assignment", "bearer_token", "private"}
_ASSIGNMENT_KEYWORDS = re.compile(
    r"secret|token|passw|passphrase|api_?key|access_?key|private_?key|credential|auth_?key"
)

def _hint_test(hints: tuple[str, ...]) -> Callable[[str], bool]:
    """A fast "may this text hold it?" test: one substring check, or one literal
    alternation for several hints (each `in` is a full pass over the text)."""
    if len(hints) == 1:
        hint = hints[0]
        return lambda text: hint in text
    search = re.compile("|".join(re.escape(h) for h in hints)).search
    return lambda text: search(text) is not None


_COMPILED: list[tuple[str, Callable[[str], bool], re.Pattern[str]]] = [
    (name, _hint_test(hints),
     re.compile(pattern, re.DOTALL | (re.IGNORECASE if name == "private" else 0)))
    for name, hints, pattern in _PATTERNS
]


def _replacer(kind: str, counts: Counter[str]) -> Callable[[re.Match[str]], str]:
    def replace(match: re.Match[str]) -> str:
        counts[kind] += 1
        if kind == "url_password":
            return f"{match.group('user')}:[REDACTED:{kind}]"
        if kind == "secret_assignment":
            return f"{match.group('name')}{match.group('sep')}[REDACTED:{kind}]"
        return f"[REDACTED:{kind}]"

    return replace


@dataclass
class Redactor:
    """Redacts texts and keeps a count of what it replaced, by kind."""

    counts: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self._replacers = {name: _replacer(name, self.counts) for name, _, _ in _PATTERNS}

    def __call__(self, text: str) -> str:
        if not text:
            return text
        lower: str | None = None
        for name, may_hold, pattern in _COMPILED:
            if name == "secret_assignment":
                if lower is None:
                    lower = text.lower()
                text = self._assignments(text, lower, pattern)
                continue
            if name in _CASE_INSENSITIVE_HINTS:
                if lower is None:
                    lower = text.lower()
                haystack = lower
            else:
                haystack = text
            if may_hold(haystack):
                new = pattern.sub(self._replacers[name], text)
                if new is not text:
                    text = new
                    lower = None
        return text

    def _assignments(self, text: str, lower: str, pattern: re.Pattern[str]) -> str:
        """Redact NAME=value assignments, trying the full pattern only at keywords.

        A plain search for the keywords in the lowercased text is far faster
        than letting the full pattern try every position.
        """
        if len(lower) != len(text):  # rare case-folding length change: be thorough
            return pattern.sub(self._replacers["secret_assignment"], text)
        pieces: list[str] = []
        last = 0
        for hit in _ASSIGNMENT_KEYWORDS.finditer(lower):
            if hit.start() < last:
                continue
            m = pattern.match(text, hit.start())
            if m is None:
                continue
            self.counts["secret_assignment"] += 1
            pieces.append(text[last:m.start("value")])
            pieces.append("[REDACTED:secret_assignment]")
            last = m.end()
        if not pieces:
            return text
        pieces.append(text[last:])
        return "".join(pieces)

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def redact(text: str) -> tuple[str, Counter[str]]:
    """Redact one text; returns the text and the counts by secret kind."""
    r = Redactor()
    return r(text), r.counts
