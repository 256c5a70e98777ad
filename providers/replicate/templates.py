"""Chat messages → one prompt string, in the chat formats open models were trained on.

Replicate's language models take a prompt, not messages. The whole conversation is rendered here and
sent with `prompt_template: "{prompt}"`, so the model's own template does not wrap it a second time.
Formats: Meta's Llama 3 model card, Mistral's instruct format, and OpenAI's ChatML.
"""

from __future__ import annotations

from collections.abc import Callable

Turn = tuple[str, str]  # (role, text) with role in system | user | assistant


def llama3(turns: list[Turn]) -> str:
    parts = ["<|begin_of_text|>"]
    for role, text in turns:
        parts.append(f"<|start_header_id|>{role}<|end_header_id|>\n\n{text}<|eot_id|>")
    parts.append("<|start_header_id|>assistant<|end_header_id|>\n\n")
    return "".join(parts)


def mistral(turns: list[Turn]) -> str:
    """[INST] blocks; Mistral has no system role, so system text opens the first instruction."""
    system = "\n\n".join(text for role, text in turns if role == "system")
    out, pending = ["<s>"], system
    for role, text in turns:
        if role == "user":
            instruction = f"{pending}\n\n{text}" if pending else text
            out.append(f"[INST] {instruction} [/INST]")
            pending = ""
        elif role == "assistant":
            out.append(f" {text}</s>")
    return "".join(out)


def chatml(turns: list[Turn]) -> str:
    rendered = "".join(f"<|im_start|>{role}\n{text}<|im_end|>\n" for role, text in turns)
    return rendered + "<|im_start|>assistant\n"


TEMPLATES: dict[str, Callable[[list[Turn]], str]] = {"llama3": llama3, "mistral": mistral, "chatml": chatml}
