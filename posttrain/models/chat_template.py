"""OLMo 2 Instruct's chat template, shared by the tiny tokenizer and by checkpoints whose
tokenizer lacks one (base OLMo 2 models ship none).

Format: ``{bos}<|user|>\\n{user}\\n<|assistant|>\\n{assistant}{eos}``; system turns are
``<|system|>\\n{system}\\n``; every assistant turn but the last is followed by a newline;
``<|assistant|>\\n`` is the generation prompt.

The ``{% generation %}`` markers let ``apply_chat_template(..., return_assistant_tokens_mask=True)``
report which tokens an assistant wrote (its content and end-of-turn token, not the role
header), which is what SFT trains on. They render to nothing.
"""

OLMO2_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}"
    "{{ '<|system|>\n' + message['content'] + '\n' }}"
    "{% elif message['role'] == 'user' %}"
    "{{ '<|user|>\n' + message['content'] + '\n' }}"
    "{% elif message['role'] == 'assistant' %}"
    "{{ '<|assistant|>\n' }}"
    "{% generation %}{{ message['content'] + eos_token }}{% endgeneration %}"
    "{% if not loop.last %}{{ '\n' }}{% endif %}"
    "{% endif %}"
    "{% if loop.last and add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
    "{% endfor %}"
)
