"""Secret redaction, applied to every string before it is stored or embedded.

One compiled alternation scans a text once; each alternative is a named group
whose name becomes the typed marker, e.g. `[REDACTED:github_token]`. For
`NAME=value` assignments and passwords in URLs only the secret part is
replaced, so the text stays readable ("DATABASE_URL=postgres://app:[REDACTED:
url_password]@db/x"). Value classes exclude backslashes and quotes so that
redacting serialized JSON (tool inputs) keeps it valid.

Redaction errs on the side of hiding: a false positive costs a word of
context, a false negative leaks a credential into a file that lives for years.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

__all__ = ["redact", "Redactor", "SECRET_KINDS"]

_VALUE = r"[^\s\"'`\\,;()\[\]{}]"

_PATTERNS: list[tuple[str, str]] = [
    ("private_key", r"-----BEGIN[A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----.*?(?:-----END[A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----|\Z)"),
    ("anthropic_key", r"\bsk-ant-[A-Za-z0-9_\-]{20,}"),
    ("openai_key", r"\bsk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_\-]{20,}"),
    ("stripe_key", r"\b(?:sk|rk|pk)_live_[A-Za-z0-9]{16,}"),
    ("aws_access_key", r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA|ANVA|AIPA|ABIA|ACCA)[A-Z0-9]{16}\b"),
    ("github_token", r"\b(?:gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{22,255})"),
    ("gitlab_token", r"\bglpat-[A-Za-z0-9_\-]{20,}"),
    ("slack_token", r"\bxox[abposr]-[A-Za-z0-9\-]{10,}"),
    ("google_api_key", r"\bAIza[0-9A-Za-z_\-]{35}"),
    ("npm_token", r"\bnpm_[A-Za-z0-9]{36}\b"),
    ("bearer_token", r"(?<=[Bb]earer )[A-Za-z0-9_\-\.=+/]{20,}"),
    # scheme://user:PASSWORD@host -> only the password is replaced
    ("url_password", r"(?<=://)(?P<url_user>[^\s:/@\"'\\]{1,128}):(?P<url_secret>[^\s@/\"'\\]{1,256})(?=@)"),
    # NAME_SECRET=value, "api_key": "value", password: value -> only the value
    (
        "secret_assignment",
        r"(?P<assign_name>\b(?i:[A-Z0-9_\.\-]*(?:SECRET|TOKEN|PASSWORD|PASSWD|PASSPHRASE|API_?KEY|"
        r"ACCESS_?KEY|PRIVATE_?KEY|CREDENTIALS?|AUTH_?KEY|CLIENT_?SECRET)[A-Z0-9_]*))"
        r"(?P<assign_sep>[\"']?\s{0,3}[=:]\s{0,3}[\"']?)"
        # not a reference ($X, ${{..}}, <placeholder>, process.env.X, self.token),
        # not a count (max_tokens=4096), not a call or an index (tokens[i], f(x))
        r"(?P<assign_value>(?![\$\{<\[\*])(?!REDACTED)(?![0-9.]+(?:[^A-Za-z0-9]|\Z))"
        r"(?!(?:process\.env|os\.environ|os\.getenv|getenv|env\.|config\.|this\.|self\.|settings\.|"
        r"options\.|opts\.|args\.|params\.|props\.|req\.|request\.|None\b|null\b|true\b|false\b|"
        r"undefined\b|str\b|string\b))"
        rf"{_VALUE}{{6,}}+(?![(\[]))",
    ),
]

SECRET_KINDS: tuple[str, ...] = tuple(name for name, _ in _PATTERNS)

_COMBINED = re.compile(
    "|".join(f"(?P<{name}>{pattern})" for name, pattern in _PATTERNS), re.DOTALL
)

# Cheap pre-check: texts with none of these substrings cannot hold a secret of
# ours, and most transcript text has none, so the big regex is skipped.
_HINTS = re.compile(
    r"PRIVATE KEY|sk-|_live_|AKIA|ASIA|A[GIRN][PDOV]A|AIPA|ABIA|ACCA|gh[pousr]_|github_pat_|glpat-|xox|AIza|npm_|"
    r"(?i:bearer|://[^\s/@]*:|secret|token|passw|passphrase|api_?key|access_?key|private_?key|credential|auth_?key)"
)


def _replace(match: re.Match[str], counts: Counter[str]) -> str:
    kind = match.lastgroup or "secret"
    if kind == "url_password":
        counts[kind] += 1
        return f"{match.group('url_user')}:[REDACTED:{kind}]"
    if kind == "secret_assignment":
        counts[kind] += 1
        return f"{match.group('assign_name')}{match.group('assign_sep')}[REDACTED:{kind}]"
    counts[kind] += 1
    return f"[REDACTED:{kind}]"


@dataclass
class Redactor:
    """Redacts texts and keeps a count of what it replaced, by kind."""

    counts: Counter[str] = field(default_factory=Counter)

    def __call__(self, text: str) -> str:
        if not text or _HINTS.search(text) is None:
            return text
        return _COMBINED.sub(lambda m: _replace(m, self.counts), text)

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def redact(text: str) -> tuple[str, Counter[str]]:
    """Redact one text; returns the text and the counts by secret kind."""
    r = Redactor()
    return r(text), r.counts
