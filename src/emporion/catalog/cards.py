"""Model cards: what a model is, under what terms, what it is for and what it is not
(``GET /v1/models/{id}/card``). The built-in models' cards say what their publishers say of
them, and no more; an operator adds to or changes any card with ``[models."x".card]``."""

from __future__ import annotations

from collections.abc import Container
from typing import Any

from emporion.catalog.models import ListPrice, Model
from emporion.settings import ModelCard

# The terms of the licenses Emporion knows by id, written as text: nothing is fetched at run time.
KNOWN_TERMS = {
    "gemma": "https://ai.google.dev/gemma/terms",
    "apache-2.0": "https://www.apache.org/licenses/LICENSE-2.0",
    "mit": "https://opensource.org/license/mit",
}

GEMMA_CARD = ModelCard(
    intended_uses=(
        "Text generation: continuation, few-shot prompting, and fine-tuning for narrow tasks (classification, "
        "extraction, short structured answers). Google presents the 270M size as a base for task-specific "
        "fine-tuning and on-device use rather than as a general assistant."
    ),
    limitations=(
        "A very small model (about 270 million parameters, 4-bit quantized here): little world knowledge, frequent "
        "factual errors, short and repetitive chat answers, no image input. Context: what this gateway's engine "
        "allows per request ([engine] ctx_per_request). Evaluations Google publishes are of the unquantized "
        "weights; this Q4_K_M file scores somewhat lower and is not separately evaluated here. Use is subject to "
        "the Gemma Terms of Use and its Prohibited Use Policy "
        "(https://ai.google.dev/gemma/prohibited_use_policy)."
    ),
    training_data=(
        "Per Google's Gemma 3 model card: about 6 trillion tokens of text for the 270M model: web documents in "
        "over 140 languages, code and mathematics; filtered for CSAM, sensitive personal data and content "
        "quality. Knowledge cutoff: August 2024."
    ),
    evaluations=[],
    terms_url=KNOWN_TERMS["gemma"],
)

MINILM_CARD = ModelCard(
    intended_uses=(
        "Encoding sentences and short paragraphs into 384-dimensional vectors for semantic search, clustering and "
        "sentence similarity."
    ),
    limitations=(
        "English text; input longer than 256 word pieces is truncated (it was trained on at most 128). Embeddings "
        "only: it generates no text."
    ),
    training_data=(
        "Per the sentence-transformers model card: nreimers/MiniLM-L6-H384-uncased fine-tuned with a contrastive "
        "objective on over a billion sentence pairs (Reddit comments, S2ORC citation pairs, WikiAnswers, PAQ, "
        "Stack Exchange, MS MARCO, SNLI and MultiNLI, among others)."
    ),
    evaluations=[],
    terms_url=KNOWN_TERMS["apache-2.0"],
)


def terms_url(model: Model) -> str | None:
    """Where the model's license terms are: its card's, else the known URL of its license."""
    return model.card.terms_url or KNOWN_TERMS.get(model.license.lower())


def card_object(model: Model, price: ListPrice, accepted: bool, local_upstreams: Container[str]) -> dict[str, Any]:
    """The card as ``GET /v1/models/{id}/card`` answers it. ``price``: what the caller pays;
    ``accepted``: the caller's organization accepted the license; ``local_upstreams``: the names
    of the upstreams on the operator's own machines (the local engine's are local by name)."""
    card = model.card
    return {
        "object": "model.card",
        "id": model.id,
        "name": model.name,
        "kind": model.kind,
        "description": model.description,
        "provider": model.provider,
        "owned_by": model.owned_by,
        "release": model.release,
        "license": model.license,
        "license_terms_url": terms_url(model),
        "license_acceptance_required": model.license_acceptance,
        "accepted": accepted,
        "context_length": model.context_length,
        "modalities": {"input": list(model.input_modalities), "output": list(model.output_modalities)},
        "intended_uses": card.intended_uses,
        "limitations": card.limitations,
        "training_data": card.training_data,
        "evaluations": [evaluation.model_dump() for evaluation in card.evaluations or []],
        "pricing": model.to_openai(price)["pricing"],
        "deployments": [
            {
                "upstream": d.upstream,
                "model": d.model,
                "local": d.upstream.startswith("local:") or d.upstream in local_upstreams,
            }
            for d in model.deployments
        ],
    }
