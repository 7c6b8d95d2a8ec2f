"""``GET /openapi.json``: the API described in OpenAPI 3.1, request bodies from the same pydantic
schemas the routes validate with, so the description cannot drift from what is accepted.

Each route of the app has one ``Operation`` here; a test holds the two lists together."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from emporion import __version__
from emporion.accounts import schemas as admin
from emporion.api.openai.batches import CreateBatch
from emporion.api.openai.files import PURPOSES
from emporion.api.openai.routes import json_response
from emporion.api.usage_routes import FORMATS
from emporion.core.requests import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from emporion.formats.anthropic_schemas import CountTokensRequest, MessagesRequest
from emporion.formats.responses_schemas import ResponsesRequest
from emporion.metering.usage import GROUPS

PATH = "/openapi.json"
REF = "#/components/schemas/{model}"


@dataclass(frozen=True)
class Query:
    name: str
    description: str
    schema: dict[str, Any] = field(default_factory=lambda: {"type": "string"})
    required: bool = False


@dataclass(frozen=True)
class Operation:
    method: str
    path: str  # Starlette's template: "{model_id:path}" is "{model_id}" in the description
    summary: str
    tag: str
    body: type[BaseModel] | None = None
    body_required: bool = True
    query: tuple[Query, ...] = ()
    authenticated: bool = True
    media: tuple[str, ...] = ("application/json",)  # what a 200 may be
    body_media: str = "application/json"

    @property
    def template(self) -> str:
        return re.sub(r"\{(\w+):\w+\}", r"{\1}", self.path)


ORG = "/admin/v1/organizations/{org_id}"
MODEL_FILTER = Query("model", "Only the rows of this model.")
USAGE = (
    Query("start", "First day, YYYY-MM-DD (default: 30 days before `end`).", {"type": "string", "format": "date"}),
    Query("end", "Last day, YYYY-MM-DD (default: today, UTC).", {"type": "string", "format": "date"}),
    Query("group_by", "One row per day (default), model, key, end user or tag.", {"type": "string", "enum": list(GROUPS)}),
    Query("key_id", "Only the requests of this key."),
    Query("user", "Only the requests of this end user (their `user`)."),
)
PAGE = (Query("limit", "At most this many."), Query("after", "The last id of the previous page."))
FILE = "/v1/files/{file_id}"
BATCH = "/v1/batches/{batch_id}"


class FileUpload(BaseModel):
    """``POST /v1/files``, as multipart/form-data."""

    file: bytes
    purpose: Literal[PURPOSES]  # type: ignore[valid-type]  # a Literal of the tuple's members


STATEMENT = (Query("format", "json (default), csv or pdf.", {"type": "string", "enum": list(FORMATS)}),)
STATEMENT_MEDIA = ("application/json", "text/csv", "application/pdf")

OPERATIONS: tuple[Operation, ...] = (
    Operation(
        "POST",
        "/v1/chat/completions",
        "Create a chat completion (streamed with `stream`).",
        "OpenAI",
        ChatCompletionRequest,
        media=("application/json", "text/event-stream"),
    ),
    Operation(
        "POST",
        "/v1/completions",
        "Create a legacy text completion.",
        "OpenAI",
        CompletionRequest,
        media=("application/json", "text/event-stream"),
    ),
    Operation("POST", "/v1/embeddings", "Create embeddings.", "OpenAI", EmbeddingRequest),
    Operation(
        "GET",
        "/v1/generation",
        "The stored record of one of the organization's requests.",
        "OpenAI",
        query=(Query("id", "The response id.", {"type": "string", "minLength": 1}, required=True),),
    ),
    Operation("GET", "/v1/models", "The catalog, at the caller's prices.", "OpenAI"),
    Operation("GET", "/v1/models/{model_id:path}", "One model of the catalog, at the caller's price.", "OpenAI"),
    Operation(
        "GET",
        "/v1/models/{model_id:path}/card",
        "A model's card: license and its terms, intended uses, limitations, training data, evaluations, price.",
        "OpenAI",
    ),
    Operation(
        "POST",
        "/v1/responses",
        "Create a response (OpenAI's Responses API; streamed with `stream`).",
        "OpenAI",
        ResponsesRequest,
        media=("application/json", "text/event-stream"),
    ),
    Operation("GET", "/v1/responses/{response_id}", "A stored response of the organization.", "OpenAI"),
    Operation("DELETE", "/v1/responses/{response_id}", "Delete a stored response.", "OpenAI"),
    Operation(
        "GET",
        "/v1/responses/{response_id}/input_items",
        "The input items a stored response answered.",
        "OpenAI",
        query=(
            Query("limit", "How many items, 1 to 100 (default 20).", {"type": "integer", "minimum": 1, "maximum": 100}),
            Query("order", "asc or desc (default).", {"type": "string", "enum": ["asc", "desc"]}),
            Query("after", "The id of the item to list after."),
        ),
    ),
    Operation(
        "POST",
        "/v1/messages",
        "Create a message (Anthropic's Messages API).",
        "Anthropic",
        MessagesRequest,
        media=("application/json", "text/event-stream"),
    ),
    Operation(
        "POST",
        "/v1/messages/count_tokens",
        "Count a Messages request's input tokens: exact where the model's deployment can count, else an estimate.",
        "Anthropic",
        CountTokensRequest,
    ),
    Operation(
        "POST",
        "/v1/files",
        "Upload a file (batch inputs and training data are checked line by line).",
        "OpenAI",
        FileUpload,
        body_media="multipart/form-data",
    ),
    Operation(
        "GET",
        "/v1/files",
        "The organization's files.",
        "OpenAI",
        query=(
            Query("purpose", "Only the files of this purpose."),
            Query("order", "asc or desc (default).", {"type": "string", "enum": ["asc", "desc"]}),
            *PAGE,
        ),
    ),
    Operation("GET", FILE, "One of the organization's files.", "OpenAI"),
    Operation("DELETE", FILE, "Delete a file.", "OpenAI"),
    Operation("GET", FILE + "/content", "A file's content.", "OpenAI", media=("application/octet-stream",)),
    Operation("POST", "/v1/batches", "Create a batch from an uploaded JSONL file.", "OpenAI", CreateBatch),
    Operation("GET", "/v1/batches", "The organization's batches, newest first.", "OpenAI", query=PAGE),
    Operation("GET", BATCH, "One of the organization's batches.", "OpenAI"),
    Operation("POST", BATCH + "/cancel", "Cancel a batch.", "OpenAI"),
    Operation("GET", "/v1/usage", "The caller's organization's usage.", "Usage", query=USAGE),
    Operation(
        "GET",
        "/v1/statements/{month}",
        "The caller's organization's statement of a month (YYYY-MM).",
        "Usage",
        query=STATEMENT,
        media=STATEMENT_MEDIA,
    ),
    Operation("POST", "/admin/v1/organizations", "Create an organization.", "Admin", admin.CreateOrganization),
    Operation("GET", "/admin/v1/organizations", "The organizations the key reaches.", "Admin"),
    Operation("GET", ORG, "One organization, with its balance.", "Admin"),
    Operation("PATCH", ORG, "Change an organization's markup or limits.", "Admin", admin.UpdateOrganization),
    Operation(
        "POST", ORG + "/suspend", "Suspend an organization (its keys stop working).", "Admin", admin.Suspend, body_required=False
    ),
    Operation("POST", ORG + "/restore", "Lift a suspension.", "Admin"),
    Operation("POST", ORG + "/tier", "Pin an organization's tier, or let it float.", "Admin", admin.SetTier),
    Operation("POST", ORG + "/members", "Add a member.", "Admin", admin.AddMember),
    Operation("GET", ORG + "/members", "The members.", "Admin"),
    Operation("DELETE", ORG + "/members/{member_id}", "Remove a member.", "Admin"),
    Operation("POST", ORG + "/presets", 'Create or replace a preset (`model: "@preset/NAME"`).', "Admin", admin.SetPreset),
    Operation("GET", ORG + "/presets", "The organization's presets.", "Admin"),
    Operation("GET", ORG + "/presets/{name}", "One preset.", "Admin"),
    Operation("DELETE", ORG + "/presets/{name}", "Delete a preset.", "Admin"),
    Operation("POST", ORG + "/licenses", "Accept a model's license for the organization.", "Admin", admin.AcceptLicense),
    Operation("GET", ORG + "/licenses", "The licenses the organization accepted.", "Admin"),
    Operation("POST", ORG + "/keys", "Create a key (its secret is shown once).", "Admin", admin.CreateKey),
    Operation("GET", ORG + "/keys", "The keys, without their secrets.", "Admin"),
    Operation("DELETE", "/admin/v1/keys/{key_id}", "Revoke a key.", "Admin"),
    Operation("POST", ORG + "/credits", "Top up, grant or transfer credit.", "Admin", admin.AddCredit),
    Operation("GET", ORG + "/credits", "The balance and the credit history.", "Admin"),
    Operation("POST", "/admin/v1/generations/{request_id}/refund", "Refund a generation.", "Admin"),
    Operation("POST", "/admin/v1/prices", "Set a model's price from a time on.", "Admin", admin.SetPrice),
    Operation("GET", "/admin/v1/prices", "The price book.", "Admin", query=(MODEL_FILTER,)),
    Operation("POST", "/admin/v1/margins", "Set the operator's margin.", "Admin", admin.SetMargin),
    Operation("GET", "/admin/v1/margins", "The margins.", "Admin", query=(MODEL_FILTER,)),
    Operation(
        "GET",
        "/admin/v1/audit",
        "The audit trail of accounts, newest first (an admin key: its tree's events).",
        "Admin",
        query=(
            Query("org_id", "Only the events concerning this organization."),
            Query(
                "action",
                "Only this action (organization.create, key.revoke, credit.top_up, price.set, ...).",
                {"type": "string", "minLength": 1, "maxLength": 40},
            ),
            Query("object_id", "Only the events of this object.", {"type": "string", "minLength": 1, "maxLength": 80}),
            Query("since", "From this Unix time on (seconds).", {"type": "number", "minimum": 0, "maximum": admin.MAX_EPOCH_S}),
            Query("until", "Before this Unix time (seconds).", {"type": "number", "minimum": 0, "maximum": admin.MAX_EPOCH_S}),
            Query(
                "limit",
                "At most this many events (default 50).",
                {"type": "integer", "minimum": 1, "maximum": admin.MAX_AUDIT_PAGE},
            ),
            Query("after", "The `last_id` of the previous page.", {"type": "integer", "minimum": 1}),
        ),
    ),
    Operation(
        "GET",
        "/admin/v1/requests",
        "The request log, newest first.",
        "Admin",
        query=(
            Query("org_id", "Only this organization's (default: every one for the operator, its own for an admin key)."),
            Query("key_id", "Only this key's."),
            Query("model", "Only requests for this model."),
            Query("status", "completed, partial, cancelled, failed or refused."),
            Query("user", "Only this end user's."),
            Query("since", "From this time on (epoch seconds)."),
            Query("until", "Before this time (epoch seconds)."),
            *PAGE,
        ),
    ),
    Operation("GET", "/admin/v1/requests/{request_id}", "One request of the log, with its bodies where kept.", "Admin"),
    Operation("GET", ORG + "/usage", "An organization's usage.", "Admin", query=USAGE),
    Operation(
        "GET",
        ORG + "/statements/{month}",
        "An organization's statement of a month (YYYY-MM).",
        "Admin",
        query=STATEMENT,
        media=STATEMENT_MEDIA,
    ),
    Operation("GET", "/healthz", "Liveness, and the state of the engine.", "Service", authenticated=False),
    Operation("GET", "/readyz", "Readiness: 200 once the server takes requests.", "Service", authenticated=False),
    Operation(
        "GET",
        "/metrics",
        "Prometheus metrics of this replica (a `[metrics] token` as bearer, or from loopback).",
        "Service",
        authenticated=False,
        media=("text/plain",),
    ),
    Operation("GET", PATH, "This description.", "Service", authenticated=False),
)

OPENAI_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}
ANTHROPIC_ERROR = {
    "type": "object",
    "required": ["type", "error"],
    "properties": {
        "type": {"const": "error"},
        "error": {
            "type": "object",
            "required": ["type", "message"],
            "properties": {"type": {"type": "string"}, "message": {"type": "string"}},
        },
    },
}


@functools.cache
def document() -> dict[str, Any]:
    bodies = sorted({op.body for op in OPERATIONS if op.body is not None}, key=lambda model: model.__name__)
    refs, components = models_json_schema([(model, "validation") for model in bodies], ref_template=REF)
    schemas = {**components.get("$defs", {}), "Error": OPENAI_ERROR, "AnthropicError": ANTHROPIC_ERROR}
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        body_ref = refs[(op.body, "validation")] if op.body is not None else None
        paths.setdefault(op.template, {})[op.method.lower()] = _operation(op, body_ref)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Emporion",
            "version": __version__,
            "description": "OpenAI's and Anthropic's APIs over every model behind this gateway, and its admin API.",
        },
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An Emporion key: `Authorization: Bearer sk-emp-…`.",
                },
                "x-api-key": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "x-api-key",
                    "description": "The same key, as Anthropic's SDK sends it.",
                },
            },
        },
    }


def _operation(op: Operation, body_ref: dict[str, Any] | None) -> dict[str, Any]:
    error = "AnthropicError" if op.path.startswith("/v1/messages") else "Error"
    operation: dict[str, Any] = {
        "operationId": _operation_id(op),
        "summary": op.summary,
        "tags": [op.tag],
        "parameters": [
            *(
                {"name": name, "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}}
                for name in _path_params(op)
            ),
            *(
                {"name": q.name, "in": "query", "required": q.required, "description": q.description, "schema": q.schema}
                for q in op.query
            ),
        ],
        "responses": {
            "200": {"description": "OK", "content": {media: {"schema": _success(media)} for media in op.media}},
            "default": {
                "description": "An error, in the envelope of the API the route belongs to.",
                "content": {"application/json": {"schema": {"$ref": REF.format(model=error)}}},
            },
        },
        "security": [{"bearer": []}, {"x-api-key": []}] if op.authenticated else [],
    }
    if body_ref is not None:
        operation["requestBody"] = {"required": op.body_required, "content": {op.body_media: {"schema": body_ref}}}
    return operation


SSE_EVENT = {
    "type": "object",
    "description": "One server-sent event: a JSON chunk (or `[DONE]`) in `data`, Anthropic's event type in `event`.",
    "required": ["data"],
    "properties": {"event": {"type": "string"}, "data": {"type": "string"}},
}


def _success(media: str) -> dict[str, Any]:
    if media == "text/event-stream":
        return SSE_EVENT
    return {"type": "object"} if media == "application/json" else {"type": "string"}


def _path_params(op: Operation) -> list[str]:
    return re.findall(r"\{(\w+)\}", op.template)


def _operation_id(op: Operation) -> str:
    words = re.sub(r"\{(\w+)\}", r"by_\1", op.template).strip("/").replace(".json", "")
    return op.method.lower() + "_" + re.sub(r"[^a-z0-9]+", "_", words.lower()).strip("_")


async def openapi(request: Request) -> Response:
    return json_response(document())


routes = [Route(PATH, openapi, methods=["GET"])]
