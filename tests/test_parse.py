"""Unit tests of the pure line parser (ingest.parse) and the redactor (ingest.redact).

No database and no subprocess: each test builds one transcript line the way
Claude Code writes it (FORMAT.md) and checks the records and side effects the
parser returns for it.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest

from fixtures.transcripts import line
from ingest.parse import (
    DEJA_CONTEXT_MARKER,
    TEXT_CAP,
    FileContext,
    LineError,
    ParsedLine,
    parse_line,
)
from ingest.redact import SECRET_KINDS, Redactor, redact

SESSION = "0b7c6a53-2f1e-4d8a-9c3b-5e6f7a8b9c0d"
CTX = FileContext(project_dir="-home-t-proj", layout="session", session_hint=SESSION, agent_id=None)
COMMON = {
    "parentUuid": "p-0",
    "sessionId": SESSION,
    "timestamp": "2025-03-01T10:00:00.000Z",
    "cwd": "/home/t/proj",
    "gitBranch": "feature/x",
    "version": "2.1.100",
    "isSidechain": False,
    "userType": "external",
}


def parse(obj: dict[str, Any] | bytes, ctx: FileContext = CTX, redactor: Redactor | None = None,
          offset: int = 0) -> ParsedLine:
    raw = obj if isinstance(obj, bytes) else line(obj)
    return parse_line(raw, ctx, offset, redactor or Redactor())


def user_line(uuid: str, content: Any, **extra: Any) -> dict[str, Any]:
    return {"type": "user", "uuid": uuid, **COMMON, "message": {"role": "user", "content": content},
            **extra}


def assistant_line(uuid: str, blocks: list[dict[str, Any]], model: str = "claude-opus-4-1",
                   **extra: Any) -> dict[str, Any]:
    return {"type": "assistant", "uuid": uuid, **COMMON, "requestId": "req_011",
            "message": {"id": "msg_011", "model": model, "role": "assistant", "content": blocks,
                        "usage": {"input_tokens": 12, "output_tokens": 34}},
            **extra}


# -- user lines --------------------------------------------------------------


def test_typed_prompt_keeps_text_and_context() -> None:
    out = parse(user_line("u-1", "How do I rotate the gizmo logs?"), offset=123)
    assert len(out.records) == 1
    r = out.records[0]
    assert (r.kind, r.role, r.text, r.text_len, r.truncated) == (
        "prompt", "user", "How do I rotate the gizmo logs?", 31, False)
    assert (r.uuid, r.parent_uuid, r.session_id, r.line_key, r.part) == ("u-1", "p-0", SESSION, "u-1", 0)
    assert (r.ts, r.cwd, r.git_branch, r.byte_offset) == (
        "2025-03-01T10:00:00.000Z", "/home/t/proj", "feature/x", 123)
    assert out.session is not None
    assert (out.session.session_id, out.session.cwd, out.session.git_branch, out.session.version) == (
        SESSION, "/home/t/proj", "feature/x", "2.1.100")


def test_slash_command_and_meta_lines_are_not_prompts() -> None:
    cmd = parse(user_line("u-2", "<command-name>/clear</command-name>\n<command-args></command-args>"))
    assert [r.kind for r in cmd.records] == ["command"]
    meta = parse(user_line("u-3", "Caveat: injected by the harness", isMeta=True))
    assert [r.kind for r in meta.records] == ["meta"]


def test_text_blocks_of_a_user_line_are_one_prompt() -> None:
    out = parse(user_line("u-4", [{"type": "text", "text": "first"}, {"type": "image", "source": {}},
                                  {"type": "text", "text": "second"}]))
    assert [(r.kind, r.text) for r in out.records] == [("prompt", "first\nsecond")]


def test_tool_result_string_and_blocks_verbatim() -> None:
    body = "line 1\n\tline 2 with  spaces  \n{\"json\": true}\n"
    out = parse(user_line("u-5", [
        {"type": "tool_result", "tool_use_id": "toolu_A", "content": body},
        {"type": "tool_result", "tool_use_id": "toolu_B", "is_error": True,
         "content": [{"type": "text", "text": "boom"}, {"type": "text", "text": "trace"}]},
    ]))
    assert [(r.kind, r.tool_use_id, r.text, r.is_error, r.part) for r in out.records] == [
        ("tool_result", "toolu_A", body, False, 0),
        ("tool_result", "toolu_B", "boom\ntrace", True, 1),
    ]


def test_tool_result_at_the_cap_is_whole_and_beyond_it_is_cut_and_marked() -> None:
    assert TEXT_CAP >= 64 * 1024
    exact = "a" * TEXT_CAP
    out = parse(user_line("u-6", [{"type": "tool_result", "tool_use_id": "t", "content": exact}]))
    assert out.records[0].text == exact and out.records[0].truncated is False

    long = "".join(f"{i:07d}\n" for i in range(30_000))  # 240,000 characters
    out = parse(user_line("u-7", [{"type": "tool_result", "tool_use_id": "t", "content": long}]))
    r = out.records[0]
    assert r.truncated is True
    assert r.text_len == len(long) == 240_000
    marker_at = r.text.rindex("[deja: truncated")
    assert "\n" not in r.text[marker_at:]  # the marker ends the text
    body = r.text[:marker_at]
    assert body.startswith(long[:TEXT_CAP]) and len(body) <= TEXT_CAP + 1  # + a newline before it
    assert len(r.text) < TEXT_CAP + 200


def test_secret_straddling_the_cap_is_not_kept() -> None:
    key = "AKIA" + "Q7ZX4MRT2VWP9KLN"
    text = "x" * (TEXT_CAP - 10) + " " + key + " " + "y" * 100_000
    out = parse(user_line("u-8", [{"type": "tool_result", "tool_use_id": "t", "content": text}]))
    assert key[:10] not in out.records[0].text
    assert "Q7ZX4M" not in out.records[0].text


def test_task_result_links_the_subagent_to_its_call() -> None:
    out = parse(user_line("u-9", [{"type": "tool_result", "tool_use_id": "toolu_SPAWN",
                                   "content": [{"type": "text", "text": "agent done"}]}],
                          toolUseResult={"status": "completed", "agentId": "a1b2c3d4e5f6a7b8c",
                                         "agentType": "Explore", "prompt": "look around"}))
    assert [(link.session_id, link.agent_id, link.tool_use_id, link.agent_type)
            for link in out.agent_links] == [(SESSION, "a1b2c3d4e5f6a7b8c", "toolu_SPAWN", "Explore")]
    assert out.records[0].text == "agent done"


def test_compact_summary_user_line() -> None:
    text = "This session is being continued from a previous conversation that ran out of context."
    out = parse(user_line("u-10", text, isCompactSummary=True, parentUuid=None))
    assert [(r.kind, r.text) for r in out.records] == [("compact_summary", text)]


def test_deja_own_injections_are_not_indexed() -> None:
    out = parse(user_line("u-11", f"{DEJA_CONTEXT_MARKER}remembered stuff</deja-memory-context>"))
    assert out.records == []
    att = parse({"type": "attachment", "uuid": "u-12", **COMMON,
                 "attachment": {"type": "hook_additional_context",
                                "content": [f"{DEJA_CONTEXT_MARKER} earlier sessions said..."]}})
    assert att.records == []


# -- assistant lines -----------------------------------------------------------


def test_assistant_blocks_become_parts_with_model() -> None:
    tool_input = {"command": "grep -rn 'x' src | head", "description": "Search", "timeout": 5}
    out = parse(assistant_line("a-1", [
        {"type": "thinking", "thinking": "Let me look for x.", "signature": "sig"},
        {"type": "text", "text": "I'll search."},
        {"type": "tool_use", "id": "toolu_01X", "name": "Bash", "input": tool_input},
        {"type": "thinking", "thinking": "", "signature": "only-a-signature"},
    ]))
    got = [(r.part, r.kind, r.role, r.tool_name, r.tool_use_id) for r in out.records]
    assert got == [
        (0, "thinking", "assistant", None, None),
        (1, "assistant", "assistant", None, None),
        (2, "tool_call", "assistant", "Bash", "toolu_01X"),
    ]
    assert out.records[0].text == "Let me look for x."
    assert out.records[1].text == "I'll search."
    call = out.records[2].text
    assert call.startswith("Bash ")
    assert json.loads(call[len("Bash "):]) == tool_input
    assert {r.model for r in out.records} == {"claude-opus-4-1"}
    assert all(r.uuid == "a-1" and r.line_key == "a-1" for r in out.records)
    assert out.records[0].meta and out.records[0].meta.get("message_id") == "msg_011"


def test_mcp_tool_and_non_anthropic_ids() -> None:
    out = parse(assistant_line("a-2", [{"type": "tool_use", "id": "call_function_9", "name":
                                        "mcp__github__search", "input": {"q": "x"}}],
                               model="glm-4.6"))
    r = out.records[0]
    assert (r.tool_name, r.tool_use_id, r.model) == ("mcp__github__search", "call_function_9", "glm-4.6")


def test_api_error_message_is_an_error_record() -> None:
    out = parse(assistant_line("a-3", [{"type": "text", "text": "API Error: 529 overloaded"}],
                               model="<synthetic>", isApiErrorMessage=True))
    assert [(r.kind, r.text) for r in out.records] == [("error", "API Error: 529 overloaded")]


# -- system, summary, titles ----------------------------------------------------


def test_compact_boundary_is_a_compaction_record() -> None:
    out = parse({"type": "system", "subtype": "compact_boundary", "uuid": "s-1", **COMMON,
                 "parentUuid": None, "logicalParentUuid": "old-leaf", "content": "Conversation compacted",
                 "compactMetadata": {"trigger": "auto", "preTokens": 171714}})
    assert len(out.records) == 1
    r = out.records[0]
    assert r.kind == "compaction" and r.uuid == "s-1"
    assert "Conversation compacted" in r.text and "auto" in r.text
    assert r.meta and r.meta["logical_parent_uuid"] == "old-leaf"


def test_summary_line_uuid_is_its_leaf() -> None:
    out = parse({"type": "summary", "summary": "Fixing the flaky gizmo test", "leafUuid": "leaf-42"})
    assert [(r.kind, r.text, r.uuid, r.session_id) for r in out.records] == [
        ("summary", "Fixing the flaky gizmo test", "leaf-42", SESSION)]
    assert out.records[0].line_key == "leaf:leaf-42"


@pytest.mark.parametrize("ltype,field", [("ai-title", "aiTitle"), ("custom-title", "customTitle")])
def test_titles_are_session_info_not_records(ltype: str, field: str) -> None:
    out = parse({"type": ltype, field: "Rotate the gizmo logs", "sessionId": SESSION})
    assert out.records == []
    assert out.session is not None
    assert (out.session.session_id, out.session.title, out.session.title_kind) == (
        SESSION, "Rotate the gizmo logs", ltype)


def test_agent_name_is_redacted() -> None:
    secret = "ghp_" + "Zq8" * 12
    out = parse({"type": "agent-name", "agentName": f"deploy {secret}", "sessionId": SESSION})
    assert out.session is not None and out.session.agent_name is not None
    assert secret not in out.session.agent_name
    assert "[REDACTED:github_token]" in out.session.agent_name


# -- attachments -------------------------------------------------------------------


def test_kept_attachment_is_a_record_with_its_path_first() -> None:
    out = parse({"type": "attachment", "uuid": "at-1", **COMMON,
                 "attachment": {"type": "file", "filename": "/home/t/proj/notes.md",
                                "content": {"type": "text", "file": {"content": "rotate weekly"}}}})
    assert [(r.kind, r.role, r.meta) for r in out.records] == [
        ("attachment", "system", {"attachment": "file"})]
    path, body = out.records[0].text.split("\n", 1)
    assert path == "/home/t/proj/notes.md" and "rotate weekly" in body
    assert out.ignored is None


def test_other_attachments_and_deja_context_are_ignored() -> None:
    other = parse({"type": "attachment", "uuid": "at-2", **COMMON,
                   "attachment": {"type": "diagnostics", "content": "unused variable"}})
    assert other.records == [] and other.ignored == "attachment diagnostics"
    ours = parse({"type": "attachment", "uuid": "at-3", **COMMON,
                  "attachment": {"type": "hook_additional_context",
                                 "content": f"{DEJA_CONTEXT_MARKER}earlier sessions said..."}})
    assert ours.records == [] and ours.ignored == "deja's own context"


# -- noise -----------------------------------------------------------------------


@pytest.mark.parametrize("obj", [
    {"type": "progress", "uuid": "pr-1", **COMMON, "parentToolUseID": "toolu_P", "toolUseID": "agent_msg_1",
     "data": {"type": "agent_progress", "agentId": "a9", "prompt": "p",
              "message": {"type": "user", "uuid": "copied-1",
                          "message": {"role": "user", "content": [{"type": "text", "text": "copied"}]}}}},
    {"type": "progress", "uuid": "pr-2", **COMMON, "data": {"type": "bash_progress", "output": "tick"}},
    {"type": "file-history-snapshot", "messageId": "m-1", "isSnapshotUpdate": False,
     "snapshot": {"messageId": "m-1", "trackedFileBackups": {"a.py": {"backupFileName": "x"}},
                  "timestamp": "2025-03-01T10:00:00.000Z"}},
    {"type": "queue-operation", "operation": "enqueue", "timestamp": "2025-03-01T10:00:00.000Z",
     "sessionId": SESSION, "content": "queued prompt text"},
    {"type": "last-prompt", "lastPrompt": "hello", "sessionId": SESSION},
], ids=["agent_progress", "bash_progress", "file-history-snapshot", "queue-operation", "last-prompt"])
def test_noise_lines_are_ignored_not_unknown(obj: dict[str, Any]) -> None:
    out = parse(obj)
    assert out.records == []
    assert out.ignored is not None
    assert out.unknown_type is None


def test_unknown_line_type_is_reported_and_its_text_kept() -> None:
    out = parse({"type": "hologram", "uuid": "h-1", **COMMON,
                 "message": {"content": "text from a future version"}})
    assert out.unknown_type == "hologram"
    assert [r.text for r in out.records] == ["text from a future version"]


# -- bad lines -------------------------------------------------------------------


@pytest.mark.parametrize("raw,why", [
    (b'{"type": "user", "uuid": \n', "invalid JSON"),
    (b"not json at all\n", "invalid JSON"),
    (b"[1, 2, 3]\n", "not a JSON object"),
    (b'"just a string"\n', "not a JSON object"),
    (b"[" * 100_000 + b"\n", "invalid JSON"),
])
def test_bad_lines_raise_line_error(raw: bytes, why: str) -> None:
    with pytest.raises(LineError, match=why):
        parse(raw)


def test_invalid_utf8_is_replaced_and_flagged() -> None:
    raw = (b'{"type":"user","uuid":"bad-1","sessionId":"' + SESSION.encode() +
           b'","message":{"role":"user","content":"before \xff\xfe after"}}\n')
    out = parse(raw)
    assert out.invalid_utf8 is True
    assert out.records[0].text == "before \ufffd\ufffd after"


def test_lone_surrogate_escape_is_replaced_and_flagged() -> None:
    # An emoji cut in half by a tool: valid JSON, but not storable in SQLite as is.
    raw = (b'{"type":"user","uuid":"sur-1","sessionId":"' + SESSION.encode() +
           b'","message":{"role":"user","content":"cut \\ud83d here \\ud83d\\ude00 ok"}}\n')
    out = parse(raw)
    assert out.invalid_utf8 is True
    text = out.records[0].text
    assert text == "cut \ufffd here \U0001F600 ok"
    text.encode("utf-8")  # storable


def test_nul_characters_do_not_survive() -> None:
    out = parse(user_line("nul-1", [{"type": "tool_result", "tool_use_id": "t",
                                     "content": "bin\x00ary tail-word"}]))
    assert "\x00" not in out.records[0].text
    assert out.records[0].text.endswith("tail-word")


# -- 1.0.x sidechains ---------------------------------------------------------------


def test_sidechain_root_links_to_the_task_call_with_the_same_prompt() -> None:
    prompt = "Audit the build scripts and report every use of nspawn."
    call = parse(assistant_line("a-10", [{"type": "tool_use", "id": "toolu_TASK", "name": "Task",
                                          "input": {"description": "audit", "prompt": prompt,
                                                    "subagent_type": "general-purpose"}}]))
    root = parse(user_line("sc-1", prompt, parentUuid=None, isSidechain=True))
    assert len(root.agent_links) == 1
    link = root.agent_links[0]
    assert (link.session_id, link.agent_id, link.layout) == (SESSION, "sidechain-sc-1", "sidechain")
    assert root.records[0].agent_id == "sidechain-sc-1"
    assert call.records[0].meta is not None
    assert link.spawn_prompt_sha == call.records[0].meta["prompt_sha1"]
    # A non-root sidechain line does not start a new run.
    later = parse(user_line("sc-2", "more", parentUuid="sc-1", isSidechain=True))
    assert later.agent_links == []


# -- the redactor ---------------------------------------------------------------------


def _secrets() -> dict[str, tuple[str, str]]:
    """kind -> (text holding a secret, the secret part that must vanish). Built at run time."""
    alnum = "aB3dE5gH7jK9mN1pQ2rS4tU6vW8xY0zC"
    return {
        "aws_access_key": ("id AKIA" + "J4K5L6M7N8P9Q2R3 here", "J4K5L6M7N8P9Q2R3"),
        "github_token": ("token ghp_" + alnum + "1234 here", alnum),
        "anthropic_key": ("sk-ant-api03-" + alnum * 3 + "AA", alnum * 2),
        "openai_key": ("OPENAI key sk-proj-" + alnum + "-_" + alnum, alnum),
        "stripe_key": ("charge with sk_" + "live_" + alnum, alnum),
        "private_key": ("-----BEGIN RSA PRIVATE KEY-----\nMIIEow" + alnum + "\n" + alnum +
                        "\n-----END RSA PRIVATE KEY-----", "MIIEow" + alnum),
        "url_password": ("postgres://app:Pw" + alnum[:12] + "@db.internal:5432/x", "Pw" + alnum[:12]),
        "secret_assignment": ("export DJANGO_SECRET=" + alnum, alnum),
    }


@pytest.mark.parametrize("kind", sorted(_secrets()))
def test_each_secret_kind_is_replaced_by_its_typed_marker(kind: str) -> None:
    text, secret = _secrets()[kind]
    out, counts = redact(f"before {text} after")
    assert secret not in out
    assert f"[REDACTED:{kind}]" in out
    assert counts[kind] == 1
    assert out.startswith("before ") and out.endswith(" after")
    assert kind in SECRET_KINDS


@pytest.mark.parametrize("text,secret", [
    ("redis://:Rd" + "sPw7734xkq@cache:6379/0", "Rd" + "sPw7734xkq"),
    ("MY_API_TOKEN=" + "tok_9f8e7d6c5b4a", "tok_9f8e7d6c5b4a"),
    ('{"client_secret": "' + "cs_77aa88bb99cc" + '"}', "cs_77aa88bb99cc"),
    ("DB_PASSWORD='" + "hunter2hunter2" + "'", "hunter2hunter2"),
    ("aws_secret_access_key = " + "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzEXAMPLEKEY", "wJalrXUtnFEMI"),
    ("Authorization: Bearer " + "eyJhbGciOiJIUzI1NiJ9.payload.sig0123", "eyJhbGciOiJIUzI1NiJ9"),
    ("-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n(output cut here)",
     "b3BlbnNzaC1rZXktdjEAAAAA"),
    # Values that start like a number but are not one.
    ("DJANGO_SECRET=" + "6!Ezm1ri6kAbs3&o6UxD", "Ezm1ri6kAbs3"),
    ("aws_secret_access_key = " + "1+jkpWNYLuG1xpR+yB1vUdFNU6d+j9NQJ7NTQwNY", "jkpWNYLuG1xpR"),
    # JSON text inside a JSON string (a tool input writing a config file).
    ('{"content":"db:\\n  PASSWORD: \\"' + "Wq7pass99z" + '\\"\\n"}', "Wq7pass99z"),
])
def test_more_secret_shapes(text: str, secret: str) -> None:
    out, counts = redact(text)
    assert secret not in out, out
    assert sum(counts.values()) >= 1


@pytest.mark.parametrize("text", [
    "max_tokens=4096",
    '{"max_tokens": 8192, "budget_tokens": 100_000}',
    "thinking.budget_tokens=32000)",
    "token = process.env.GITHUB_TOKEN",
    "password: ${{ secrets.DB_PASSWORD }}",
    'api_key = os.environ["API_KEY"]',
    "tokens[i] = next_token(x)",
    "the tokenizer splits text into tokens",
    "see https://example.com:8080/path and ssh://git@github.com/x.git",
])
def test_ordinary_text_is_left_alone(text: str) -> None:
    out, counts = redact(text)
    assert out == text
    assert sum(counts.values()) == 0


def test_redacting_serialized_json_keeps_it_valid() -> None:
    _, secret = _secrets()["private_key"]
    tool_input = {"command": f"cat > key.pem <<'EOF'\n{_secrets()['private_key'][0]}\nEOF",
                  "env": {"GITHUB_TOKEN": "ghp_" + "x1Y2" * 9, "DB": "postgres://u:Zz9zz9zz9@h/db"}}
    text = json.dumps(tool_input)
    out, counts = redact(text)
    decoded = json.loads(out)
    assert secret not in out and "x1Y2x1Y2" not in out and "Zz9zz9zz9" not in out
    assert decoded["env"]["DB"] == "postgres://u:[REDACTED:url_password]@h/db"
    assert sum(counts.values()) >= 3


def test_redactor_counts_accumulate() -> None:
    r = Redactor()
    r("AKIA" + "ABCDEFGHIJKLMNOP and AKIA" + "QRSTUVWXYZ234567")
    r("sk_" + "live_" + "0123456789abcdefABCD")
    assert r.counts["aws_access_key"] == 2 and r.counts["stripe_key"] == 1
    assert r.total == 3


def test_parser_redacts_every_text_it_keeps() -> None:
    key = "AKIA" + "ZZYYXXWWVVUUTTSS"
    r = Redactor()
    out = parse(assistant_line("a-20", [
        {"type": "thinking", "thinking": f"the key is {key}"},
        {"type": "text", "text": f"found {key}"},
        {"type": "tool_use", "id": "toolu_S", "name": "Bash", "input": {"command": f"echo {key}"}},
    ]), redactor=r)
    assert len(out.records) == 3
    for rec in out.records:
        assert "ZZYYXXWW" not in rec.text
        assert "[REDACTED:aws_access_key]" in rec.text
    assert r.counts["aws_access_key"] == 3


def test_task_prompt_hash_is_of_the_redacted_prompt() -> None:
    prompt = "deploy with token ghp_" + "Qw12" * 9
    out = parse(assistant_line("a-21", [{"type": "tool_use", "id": "toolu_T", "name": "Agent",
                                         "input": {"prompt": prompt}}]))
    meta = out.records[0].meta
    assert meta is not None
    redacted_prompt, _ = redact(prompt)
    assert meta["prompt_sha1"] == hashlib.sha1(redacted_prompt.encode()).hexdigest()
