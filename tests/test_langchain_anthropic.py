"""LangChain's standard chat-model integration suite (langchain-tests) a second time, now
through langchain-anthropic's ChatAnthropic against xnb's Anthropic Messages API
(`base_url` = the sidecar), with the packaged SmolLM2-135M.

Tool calling, tool choice, structured output and Anthropic-format inputs are declared
supported; as with ChatOpenAI, xnb constrains calls with grammars.  Marked slow (it runs
in `make test-all`): the ChatOpenAI run already covers the default suite's budget.
"""

from __future__ import annotations

from typing import Any

import pytest
from support import INFERENCE_KEY

pytest.importorskip("langchain_tests", reason="the test extra installs langchain-tests")
pytest.importorskip("langchain_anthropic", reason="the test extra installs langchain-anthropic")

from langchain_anthropic import ChatAnthropic  # noqa: E402
from langchain_tests.integration_tests import ChatModelIntegrationTests  # noqa: E402


@pytest.mark.slow  # ~50 generations of up to 200 tokens: minutes on a small CPU machine
class TestXnbChatAnthropic(ChatModelIntegrationTests):
    base_url: str = ""

    @pytest.fixture(autouse=True)
    def _xnb_sidecar(self, sidecar: str) -> None:
        type(self).base_url = sidecar

    @property
    def chat_model_class(self) -> type[ChatAnthropic]:
        return ChatAnthropic

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {
            "model": "smol",
            "base_url": self.base_url,
            "api_key": INFERENCE_KEY,
            "temperature": 0,
            "max_tokens": 200,
            "max_retries": 0,
        }

    @property
    def has_tool_calling(self) -> bool:
        return True

    @property
    def has_tool_choice(self) -> bool:
        return True

    @property
    def has_structured_output(self) -> bool:
        return True

    @property
    def supports_json_mode(self) -> bool:
        return False  # ChatAnthropic has no JSON mode (json_schema and tools instead)

    @property
    def supports_anthropic_inputs(self) -> bool:
        return True

    @property
    def returns_usage_metadata(self) -> bool:
        return True

    @property
    def supported_usage_metadata_details(self) -> dict[str, list[str]]:
        return {"invoke": [], "stream": []}

    # Model-limited: for "Tell me a joke about cats" the forced Joke call's punchline loops
    # ("The cat was a cat, and it was a cat, ...") until max_tokens=200, so the call never
    # closes and there is nothing to parse (stop_reason max_tokens).  Tool calling and
    # tool_choice cases pass; ChatOpenAI's run of the same cases goes through json_schema.
    _STRUCTURED = pytest.mark.xfail(reason="model-limited: SmolLM2-135M repeats inside the forced call's "
                                           "string until max_tokens, so the call never completes", strict=False)

    @_STRUCTURED
    @pytest.mark.parametrize("schema_type", ["pydantic", "typeddict", "json_schema"])
    def test_structured_output(self, model: Any, schema_type: Any) -> None:
        super().test_structured_output(model, schema_type)

    @_STRUCTURED
    @pytest.mark.parametrize("schema_type", ["pydantic", "typeddict", "json_schema"])
    async def test_structured_output_async(self, model: Any, schema_type: Any) -> None:
        await super().test_structured_output_async(model, schema_type)

    @_STRUCTURED
    def test_structured_output_pydantic_2_v1(self, model: Any) -> None:
        super().test_structured_output_pydantic_2_v1(model)

    @_STRUCTURED
    def test_structured_output_optional_param(self, model: Any) -> None:
        super().test_structured_output_optional_param(model)
