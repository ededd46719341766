"""Chat templates for model families whose GGUF files may come without `tokenizer.chat_template`.

A template here must render exactly the text the family's instruction-tuned models were trained on
(the same text their own Hugging Face chat template renders), since that text is what they answer.
"""

from __future__ import annotations

GEMMA_CHAT_TEMPLATE = (
    "{{- bos_token -}}"
    "{%- set ns = namespace(prefix='', turns=messages) -%}"
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- set ns.prefix = messages[0]['content'] ~ '\\n\\n' -%}"
    "{%- set ns.turns = messages[1:] -%}"
    "{%- endif -%}"
    "{%- for m in ns.turns -%}"
    "{%- if (m['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{- raise_exception('Gemma chats alternate user and assistant turns, starting with the user') -}}"
    "{%- endif -%}"
    "{{- '<start_of_turn>' ~ ('model' if m['role'] == 'assistant' else m['role']) ~ '\\n' -}}"
    "{{- ns.prefix if loop.first else '' -}}"
    "{{- m['content'] | trim -}}"
    "{{- '<end_of_turn>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<start_of_turn>model\\n' -}}{%- endif -%}"
)
"""Gemma (2 and 3) turns: `<start_of_turn>user|model`, the text trimmed, `<end_of_turn>` and a newline.
Gemma has no system role: a system message's text and a blank line open the first user turn."""
