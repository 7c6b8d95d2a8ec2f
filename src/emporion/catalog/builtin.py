"""The catalog as it is put together at start: built-in models, operator-added GGUF files, config."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Protocol

from emporion.catalog.cards import GEMMA_CARD, MINILM_CARD
from emporion.catalog.models import LOCAL_PROVIDER, Catalog, Deployment, Model
from emporion.settings import ModelConfig, Pricing, Settings

GEMMA_ID = "gemma-3-270m"
MINILM_ID = "all-minilm-l6-v2"
EMBEDDINGS_UPSTREAM = "local:embeddings"
MINILM_MAX_TOKENS = 256  # sentence-transformers' max_seq_length for this model


class AddedModel(Protocol):
    """A GGUF file the operator added (a row of the store's ``local_models``), as the catalog reads it."""

    @property
    def id(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def path(self) -> str: ...
    @property
    def context_length(self) -> int: ...
    @property
    def architecture(self) -> str: ...
    @property
    def license(self) -> str: ...
    @property
    def release(self) -> str: ...
    @property
    def created_at(self) -> int: ...


def local_upstream(model_id: str) -> str:
    return f"local:{model_id}"


def builtin_models(settings: Settings, gemma_file: str) -> list[Model]:
    return [
        Model(
            id=GEMMA_ID,
            name="Google: Gemma 3 270M (Q4_K_M, local)",
            kind="chat",
            deployments=(Deployment(local_upstream(GEMMA_ID), GEMMA_ID),),
            context_length=settings.engine.ctx_per_request,
            pricing=Pricing(),
            release="open-weights",
            license="gemma",
            provider=LOCAL_PROVIDER,
            owned_by="google",
            created=1755129600,  # 2025-08-14, Gemma 3 270M's release
            description=(
                "Gemma 3 270M, quantized to Q4_K_M, served on this machine by llama.cpp. A small base "
                "model: fluent continuations and few-shot prompts work well on /v1/completions; chat "
                "answers are short and often repeat the question. Licensed under the Gemma Terms of Use."
            ),
            gguf=gemma_file,
            chat_template="gemma",
            card=GEMMA_CARD,  # license_acceptance: the operator's to turn on (`[models."gemma-3-270m"]`)
        ),
        Model(
            id=MINILM_ID,
            name="sentence-transformers: all-MiniLM-L6-v2 (local)",
            kind="embedding",
            deployments=(Deployment(EMBEDDINGS_UPSTREAM, MINILM_ID),),
            context_length=MINILM_MAX_TOKENS,
            pricing=Pricing(),
            release="open-source",
            license="apache-2.0",
            provider=LOCAL_PROVIDER,
            owned_by="sentence-transformers",
            created=1630281600,  # 2021-08-30
            description="384-dimensional sentence embeddings, computed on this machine's CPU.",
            output_modalities=("embeddings",),
            card=MINILM_CARD,
        ),
    ]


def added_model(row: AddedModel) -> Model:
    return Model(
        id=row.id,
        name=row.name,
        kind="chat",
        deployments=(Deployment(local_upstream(row.id), row.id),),
        context_length=row.context_length,
        pricing=Pricing(),
        release=row.release,
        license=row.license,
        provider=LOCAL_PROVIDER,
        owned_by="operator",
        created=row.created_at,
        description=f"{row.architecture} model from {row.path}, served on this machine by llama.cpp.",
        gguf=row.path,
    )


def configured_model(model_id: str, config: ModelConfig, settings: Settings) -> Model:
    """A model that only the config file defines: it names an upstream or a local GGUF file."""
    remote = config.upstream is not None or bool(config.deployments)
    if remote == (config.gguf is not None):
        raise ValueError(f"model {model_id!r}: set exactly one of `upstream`, `deployments` or `gguf`")
    local = config.gguf is not None
    first = config.upstream or (config.deployments[0].upstream if config.deployments else None)
    base = Model(
        id=model_id,
        name=model_id,
        kind="chat",
        deployments=(Deployment(local_upstream(model_id) if local else str(first), model_id),),
        context_length=settings.engine.ctx_per_request if local else 4096,
        pricing=Pricing(),
        release="open-weights" if local else "closed",
        license="unknown",
        provider=LOCAL_PROVIDER if local else str(first),
        owned_by="operator",
        created=int(time.time()),
    )
    return base.with_config(config)


def build_catalog(settings: Settings, gemma_file: str, added: Sequence[AddedModel]) -> Catalog:
    """What this gateway serves. A local model whose engine is disabled (``[engine] enabled =
    false``, ``[embeddings] enabled = false``) is not listed at all, nor are its deployments in
    other models; a config table that only tunes such a model (its price, say) is ignored."""
    models = {model.id: model for model in builtin_models(settings, gemma_file)}
    for row in added:
        models[row.id] = added_model(row)
    disabled = {model.id for model in models.values() if not _enabled(settings, model)}
    for model_id, config in settings.models.items():
        known = models.get(model_id)
        if config.gguf is not None and not settings.engine.enabled:
            disabled.add(model_id)
        if model_id in disabled and config.upstream is None and not config.deployments:
            continue
        models[model_id] = known.with_config(config) if known else configured_model(model_id, config, settings)
    models = {key: model for key, model in models.items() if key not in disabled or not _is_local(model)}
    if disabled:
        models = {key: _without(model, disabled) for key, model in models.items()}
        models = {key: model for key, model in models.items() if model.deployments}
    for model in models.values():
        if model.gguf and model.context_length > settings.engine.ctx_per_request:
            models[model.id] = model.with_config(ModelConfig(context_length=settings.engine.ctx_per_request))
    return Catalog(list(models.values()))


def _is_local(model: Model) -> bool:
    return all(d.upstream.startswith("local:") for d in model.deployments)


def _enabled(settings: Settings, model: Model) -> bool:
    if model.upstream == EMBEDDINGS_UPSTREAM:
        return settings.embeddings.enabled
    return settings.engine.enabled or not _is_local(model)


def _without(model: Model, disabled: set[str]) -> Model:
    """The model without its deployments on the disabled local engines."""
    gone = {local_upstream(model_id) for model_id in disabled} | ({EMBEDDINGS_UPSTREAM} if MINILM_ID in disabled else set())
    kept = tuple(d for d in model.deployments if d.upstream not in gone)
    return model if kept == model.deployments else replace(model, deployments=kept)
