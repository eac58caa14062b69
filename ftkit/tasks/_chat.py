"""The conversation layouts gen reads, each turned into one form — a list of ``{role, content}`` messages with roles
system, user and assistant — with its errors naming the file, line, turn and field:

- ``chat``: OpenAI-style ``messages`` (``role``/``content``), any number of turns, a system message allowed;
- ``sharegpt``: ``conversations`` of ``from``/``value`` turns, roles human/gpt/system (also user/assistant), an
  optional ``system`` column;
- ``alpaca``: ``instruction``, an optional ``input`` (appended to the instruction after a blank line, as Alpaca's
  own template does), ``output``, an optional ``system``;
- ``pairs``: ``prompt`` + ``response`` (one turn).

Tool calls (a ``tool``/``function`` turn, or ``tool_calls`` on a message) are refused: ftkit does not train on them
yet."""

from __future__ import annotations

from ftkit.data.table import Table
from ftkit.errors import UsageError

SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "system": "system"}
TOOL_ROLES = {"tool", "function", "function_call", "observation", "ipython"}
CHAT_ROLES = {"system", "user", "assistant"}
# the columns of each layout, by role (data.columns renames them), in the order auto-detection tries them
LAYOUTS = {"chat": ("messages",), "sharegpt": ("conversations",), "alpaca": ("instruction", "output"),
           "pairs": ("prompt", "response"), "text": ("text",)}


def detect(columns, col) -> str | None:
    """The layout whose columns ``columns`` has (``col(role)``: the column name of a role), or None."""
    for layout, roles in LAYOUTS.items():
        if all(col(role) in columns for role in roles):
            return layout
    return None


def _tool_refusal(where: str, what: str) -> UsageError:
    return UsageError(f"{where}: {what}: a tool call; ftkit does not train on tool calls yet (drop those turns, or "
                      "render them into the assistant's text yourself)")


def _checked(messages, where: str) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise UsageError(f"{where}: expected a non-empty list of messages")
    for k, m in enumerate(messages, 1):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise UsageError(f"{where}: message {k}: expected an object with `role` and `content`")
        if m["role"] in TOOL_ROLES or m.get("tool_calls"):
            raise _tool_refusal(where, f"message {k}")
        if m["role"] not in CHAT_ROLES:
            raise UsageError(f"{where}: message {k}: role {m['role']!r}, expected system, user or assistant")
        if not isinstance(m.get("content"), str) or not m["content"].strip():
            raise UsageError(f"{where}: message {k}: `content` must be a non-empty string")
    if not any(m["role"] == "assistant" for m in messages):
        raise UsageError(f"{where}: no assistant message to learn from")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def _sharegpt(turns, system, where: str) -> list[dict]:
    if not isinstance(turns, list) or not turns:
        raise UsageError(f"{where}: `conversations` must be a non-empty list of {{from, value}} turns")
    messages = [{"role": "system", "content": system}] if isinstance(system, str) and system.strip() else []
    for k, t in enumerate(turns, 1):
        if not isinstance(t, dict):
            raise UsageError(f"{where}: turn {k}: expected an object with `from` and `value`")
        who, text = t.get("from", t.get("role")), t.get("value", t.get("content"))
        if who in TOOL_ROLES:
            raise _tool_refusal(where, f"turn {k}")
        if who not in SHAREGPT_ROLES:
            raise UsageError(f"{where}: turn {k}: `from` is {who!r}, expected human, gpt or system")
        messages.append({"role": SHAREGPT_ROLES[who], "content": text})
    return _checked(messages, where)


def _alpaca(instruction, extra, output, system, where: str) -> list[dict]:
    for name, value in (("instruction", instruction), ("output", output)):
        if not isinstance(value, str) or not value.strip():
            raise UsageError(f"{where}: `{name}` must be a non-empty string")
    if extra is not None and not isinstance(extra, str):
        raise UsageError(f"{where}: `input` must be a string (or empty)")
    user = instruction + (f"\n\n{extra}" if extra and extra.strip() else "")
    messages = [{"role": "system", "content": system}] if isinstance(system, str) and system.strip() else []
    return messages + [{"role": "user", "content": user}, {"role": "assistant", "content": output}]


def conversations(table: Table, layout: str, col) -> list[list[dict]]:
    """Every row of ``table`` in ``layout`` as a list of messages (checked; ``col(role)``: the column of a role)."""
    cols = table.columns

    def optional(role: str) -> list:
        return cols.get(col(role), [None] * len(table))

    if layout == "chat":
        return [_checked(m, table.locate(i)) for i, m in enumerate(table.column(col("messages"), "messages"))]
    if layout == "sharegpt":
        turns = table.column(col("conversations"), "conversations")
        return [_sharegpt(t, s, table.locate(i)) for i, (t, s) in enumerate(zip(turns, optional("system")))]
    if layout == "alpaca":
        rows = zip(table.column(col("instruction"), "instruction"), optional("input"),
                   table.column(col("output"), "output"), optional("system"))
        return [_alpaca(*row, table.locate(i)) for i, row in enumerate(rows)]
    prompts, responses = table.text_column(col("prompt"), "prompt"), table.text_column(col("response"), "response")
    return [[{"role": "user", "content": p}, {"role": "assistant", "content": r}] for p, r in zip(prompts, responses)]
