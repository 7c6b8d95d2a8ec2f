"""The catalog: every model Emporion offers, where it runs, what it costs, and under what terms."""

from __future__ import annotations

from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any, Literal

from emporion.errors import InvalidRequest, ModelNotFound
from emporion.settings import ModelConfig, Pricing

ModelKind = Literal["chat", "embedding"]

LOCAL_PROVIDER = "emporion-local"


@dataclass(frozen=True, slots=True)
class Model:
    id: str
    name: str
    kind: ModelKind
    upstream: str  # the Upstream (or local engine) that serves it
    upstream_model: str  # the name that upstream knows it by
    context_length: int
    pricing: Pricing
    release: str
    license: str
    provider: str
    owned_by: str
    created: int
    description: str = ""
    input_modalities: tuple[str, ...] = ("text",)
    output_modalities: tuple[str, ...] = ("text",)
    gguf: str | None = None  # a local GGUF file the engine serves
    chat_template: str | None = None  # llama.cpp built-in template name, when the file has none

    def to_openai(self) -> dict[str, Any]:
        """OpenAI's model object plus the marketplace fields OpenRouter users expect."""
        return {
            "id": self.id,
            "object": "model",
            "created": self.created,
            "owned_by": self.owned_by,
            "name": self.name,
            "description": self.description,
            "context_length": self.context_length,
            "pricing": {"prompt": _usd(self.pricing.prompt), "completion": _usd(self.pricing.completion)},
            "architecture": {
                "input_modalities": list(self.input_modalities),
                "output_modalities": list(self.output_modalities),
            },
            "release": self.release,
            "license": self.license,
            "provider": self.provider,
        }

    def with_config(self, config: ModelConfig) -> Model:
        """This model with the fields a config file sets for it."""
        changes = {key: value for key, value in config.model_dump(exclude_none=True).items()}
        for key in ("input_modalities", "output_modalities"):
            if key in changes:
                changes[key] = tuple(changes[key])
        if "gguf" in changes:
            changes["gguf"] = str(changes["gguf"])
        if config.pricing is not None:
            changes["pricing"] = config.pricing
        return replace(self, **changes)


def _usd(value: Decimal) -> str:
    """A price as OpenRouter writes it: plain decimal notation, no exponent, no trailing zeros."""
    text = format(value.normalize(), "f")
    return text if text != "-0" else "0"


class Catalog:
    def __init__(self, models: list[Model]) -> None:
        self._models = {model.id: model for model in models}

    def __iter__(self):
        return iter(self._models.values())

    def get(self, model_id: str) -> Model:
        model = self._models.get(model_id)
        if model is None:
            raise ModelNotFound(f"The model `{model_id}` does not exist or you do not have access to it.", param="model")
        return model

    def require(self, model_id: str, kind: ModelKind) -> Model:
        model = self.get(model_id)
        if model.kind != kind:
            what = "an embedding model" if model.kind == "embedding" else "a text generation model"
            raise InvalidRequest(
                f"The model `{model_id}` is {what} and does not serve this endpoint.", param="model", code="model_not_supported"
            )
        return model
