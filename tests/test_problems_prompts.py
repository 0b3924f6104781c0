"""Prompt rendering with the tiny model's chat template, a prompt template, and no template."""

from __future__ import annotations

import pytest

from treerpo.errors import BadInputError
from treerpo.problems import PromptSettings, build_prompt, encode_prompt, render_prompt

PROBLEM = "Natalia sold 48 clips in April and half as many in May. How many in total?"
GENERATION_PROMPT = "<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture
def tokenizer_without_chat_template(tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.chat_template = None
    return tokenizer


@pytest.fixture
def tokenizer_adding_bos(tiny_model_dir):
    """The tiny tokenizer made to prepend a BOS by default, as Llama's does."""
    from tokenizers import processors
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.bos_token = "<|endoftext|>"
    bos_id = tokenizer.bos_token_id
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<|endoftext|> $A", special_tokens=[("<|endoftext|>", bos_id)]
    )
    assert tokenizer.encode("1", add_special_tokens=True)[0] == bos_id
    return tokenizer


def test_chat_template_renders_one_user_message_and_the_generation_prompt(tokenizer):
    text = render_prompt(tokenizer, PROBLEM)
    assert text == f"<|im_start|>user\n{PROBLEM}<|im_end|>\n{GENERATION_PROMPT}"
    assert text.count(PROBLEM) == 1
    assert text.endswith(GENERATION_PROMPT)


def test_encoded_prompt_decodes_to_the_rendered_text_with_each_marker_once(tokenizer):
    text = render_prompt(tokenizer, PROBLEM)
    token_ids = encode_prompt(tokenizer, PROBLEM)
    assert tokenizer.decode(token_ids) == text
    im_start_id = tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert token_ids[0] == im_start_id and token_ids.count(im_start_id) == 2
    assert build_prompt(tokenizer, PROBLEM).token_ids == token_ids


def test_system_prompt_comes_first_as_a_system_message(tokenizer):
    text = render_prompt(tokenizer, PROBLEM, system_prompt="Reason step by step.")
    assert text.startswith("<|im_start|>system\nReason step by step.<|im_end|>\n")
    assert text.endswith(f"<|im_start|>user\n{PROBLEM}<|im_end|>\n{GENERATION_PROMPT}")


def test_prompt_template_wins_over_the_chat_template(tokenizer):
    template = "Question: {problem}\nPut the answer in \\boxed{}.\nAnswer:"
    text = render_prompt(tokenizer, PROBLEM, prompt_template=template)
    assert text == f"Question: {PROBLEM}\nPut the answer in \\boxed{{}}.\nAnswer:"
    assert "<|im_start|>" not in text
    assert tokenizer.decode(encode_prompt(tokenizer, PROBLEM, prompt_template=template)) == text


def test_prompt_template_places_the_system_prompt_and_leaves_problem_braces_alone(
    tokenizer_without_chat_template,
):
    problem_with_braces = "Is {problem} a placeholder? Compute \\frac{1}{2} + {x}."
    text = render_prompt(
        tokenizer_without_chat_template,
        problem_with_braces,
        system_prompt="Be brief.",
        prompt_template="{system_prompt}\n\nQ: {problem}\nA:",
    )
    assert text == f"Be brief.\n\nQ: {problem_with_braces}\nA:"


def test_tokenizer_without_chat_template_needs_a_prompt_template(tokenizer_without_chat_template):
    with pytest.raises(BadInputError) as raised:
        render_prompt(tokenizer_without_chat_template, PROBLEM)
    message = str(raised.value)
    assert "no chat template" in message and "--prompt-template" in message
    assert "\n" not in message
    with pytest.raises(BadInputError):
        encode_prompt(tokenizer_without_chat_template, PROBLEM)


@pytest.mark.parametrize(
    ("prompt_template", "system_prompt", "missing"),
    [
        ("Answer this: {question}", None, "{problem}"),
        ("Q: {problem}\nA:", "Be brief.", "{system_prompt}"),
    ],
)
def test_prompt_template_without_its_placeholders_is_bad_input(
    tokenizer_without_chat_template, prompt_template, system_prompt, missing
):
    with pytest.raises(BadInputError) as raised:
        render_prompt(
            tokenizer_without_chat_template,
            PROBLEM,
            system_prompt=system_prompt,
            prompt_template=prompt_template,
        )
    assert missing in str(raised.value) and "\n" not in str(raised.value)


def test_plain_prompt_gets_the_tokenizers_bos_once(tokenizer_adding_bos):
    bos_id = tokenizer_adding_bos.bos_token_id
    plain = encode_prompt(tokenizer_adding_bos, PROBLEM, prompt_template="Q: {problem}\nA:")
    assert plain[0] == bos_id and plain.count(bos_id) == 1
    already_there = encode_prompt(
        tokenizer_adding_bos, PROBLEM, prompt_template="<|endoftext|>Q: {problem}\nA:"
    )
    assert already_there == plain


def test_chat_template_that_writes_the_bos_gets_it_once(tokenizer_adding_bos):
    bos_id = tokenizer_adding_bos.bos_token_id
    tokenizer_adding_bos.chat_template = "{{ bos_token }}" + tokenizer_adding_bos.chat_template
    token_ids = encode_prompt(tokenizer_adding_bos, PROBLEM)
    assert token_ids[0] == bos_id and token_ids.count(bos_id) == 1


def test_chat_template_that_refuses_a_system_message_is_bad_input(tokenizer_adding_bos):
    tokenizer_adding_bos.chat_template = (
        "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
        "{% endif %}" + tokenizer_adding_bos.chat_template
    )
    with pytest.raises(BadInputError, match="System role not supported"):
        render_prompt(tokenizer_adding_bos, PROBLEM, system_prompt="Be brief.")


def test_prompt_settings_render_like_the_functions(tokenizer):
    settings = PromptSettings(system_prompt="Be brief.")
    assert settings.build(tokenizer, PROBLEM).text == render_prompt(
        tokenizer, PROBLEM, system_prompt="Be brief."
    )
    assert PromptSettings.model_validate_json(settings.model_dump_json()) == settings
