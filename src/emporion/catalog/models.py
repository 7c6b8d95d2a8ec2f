"""The catalog: every model Emporion offers, where it runs, what it costs, and under what terms."""

from __future__ import annotations

from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any, Literal, Protocol

from emporion.errors import InvalidRequest, ModelNotFound
from emporion.settings import ModelCard, ModelConfig, Pricing

ModelKind = Literal["chat", "embedding"]


class ListPrice(Protocol):
    """USD per token and per request, as a price list shows them (read-only: a frozen Price will do)."""

    @property
    def prompt(self) -> Decimal: ...
    @property
    def completion(self) -> Decimal: ...
    @property
    def cached_prompt(self) -> Decimal | None: ...
    @property
    def cache_write(self) -> Decimal | None: ...
    @property
    def request(self) -> Decimal: ...


LOCAL_PROVIDER = "emporion-local"


@dataclass(frozen=True, slots=True)
class Deployment:
    """A model on one upstream: the name that upstream knows it by, a weight for weighted
    splits, and its own price when it differs from the model's."""

    upstream: str
    model: str
    weight: int = 1
    pricing: Pricing | None = None


@dataclass(frozen=True, slots=True)
class Model:
    id: str
    name: str
    kind: ModelKind
    deployments: tuple[Deployment, ...]
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
    split: Literal["ordered", "weighted"] = "ordered"
    sticky: bool = False
    supported_parameters: tuple[str, ...] = ()
    card: ModelCard = ModelCard()  # intended uses, limitations, training data, evaluations (catalog/cards.py)
    license_acceptance: bool = False  # an organization is served once it accepted the license

    @property
    def upstream(self) -> str:
        """The first deployment's upstream (the only one, for most models)."""
        return self.deployments[0].upstream

    def to_openai(self, price: ListPrice | None = None) -> dict[str, Any]:
        """OpenAI's model object plus the marketplace fields OpenRouter users expect; ``price``:
        what the caller pays (default: the configured price)."""
        shown: ListPrice | Pricing = self.pricing if price is None else price
        pricing = {"prompt": _usd(shown.prompt), "completion": _usd(shown.completion)}
        # prompt-cache reads and writes, where they have their own price (OpenRouter's names)
        if shown.cached_prompt is not None:
            pricing["input_cache_read"] = _usd(shown.cached_prompt)
        if shown.cache_write is not None:
            pricing["input_cache_write"] = _usd(shown.cache_write)
        if price is not None and price.request:
            pricing["request"] = _usd(price.request)
        return {
            "id": self.id,
            "object": "model",
            "created": self.created,
            "owned_by": self.owned_by,
            "name": self.name,
            "description": self.description,
            "context_length": self.context_length,
            "pricing": pricing,
            "architecture": {
                "input_modalities": list(self.input_modalities),
                "output_modalities": list(self.output_modalities),
            },
            "release": self.release,
            "license": self.license,
            "provider": self.provider,
            "supported_parameters": list(self.supported_parameters),
        }

    def with_config(self, config: ModelConfig) -> Model:
        """This model with the fields a config file sets for it."""
        changes = config.model_dump(exclude_none=True, exclude={"upstream", "upstream_model", "deployments", "pricing", "card"})
        for key in ("input_modalities", "output_modalities"):
            if key in changes:
                changes[key] = tuple(changes[key])
        if "gguf" in changes:
            changes["gguf"] = str(changes["gguf"])
        if config.pricing is not None:
            changes["pricing"] = config.pricing
        if config.card is not None:  # field by field over the card the model has
            changes["card"] = self.card.model_copy(update=config.card.model_dump(exclude_none=True, exclude={"evaluations"}))
            if config.card.evaluations is not None:
                changes["card"] = changes["card"].model_copy(update={"evaluations": config.card.evaluations})
        if config.deployments:
            changes["deployments"] = tuple(
                Deployment(d.upstream, d.model or self.id, d.weight, d.pricing) for d in config.deployments
            )
        elif config.upstream:
            changes["deployments"] = (Deployment(config.upstream, config.upstream_model or self.id),)
        elif config.upstream_model:
            changes["deployments"] = (replace(self.deployments[0], model=config.upstream_model), *self.deployments[1:])
        return replace(self, **changes)


def _usd(value: Decimal) -> str:
    """A price as OpenRouter writes it: plain decimal notation, no exponent, no trailing zeros."""
    text = format(value.normalize(), "f")
    return text if text != "-0" else "0"


class Catalog:
    def __init__(self, models: list[Model]) -> None:
        self._models = {model.id: model for model in models}

    def replace(self, models: list[Model]) -> None:
        """All the models at once (the live catalog's refresh): a request sees the old or the new, never a mix."""
        self._models = {model.id: model for model in models}

    def __iter__(self):
        return iter(self._models.values())

    def has(self, model_id: str) -> bool:
        return model_id in self._models

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
