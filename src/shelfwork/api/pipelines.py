"""Pipelines: what can be submitted, with each one's params schema (JSON Schema) and plan."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request

from .auth import Viewer
from .errors import ApiError, responses
from .jobs import engine_of
from .schemas import NO_CONTROL, PipelineList, PipelineOut

router = APIRouter(tags=["pipelines"])


@router.get(
    "/pipelines",
    response_model=PipelineList,
    responses=responses(401, 403),
    summary="Pipelines, with descriptions and params schemas",
)
def list_pipelines(request: Request, _who: Viewer) -> PipelineList:
    return PipelineList(items=[PipelineOut(**p.describe()) for p in engine_of(request).registry])


@router.get(
    "/pipelines/{name}",
    response_model=PipelineOut,
    responses=responses(401, 403, 404, 422),
    summary="One pipeline",
)
def get_pipeline(
    name: Annotated[str, Path(max_length=200, pattern=NO_CONTROL)], request: Request, _who: Viewer
) -> PipelineOut:
    registry = engine_of(request).registry
    if name not in registry:
        known = ", ".join(registry.names()) or "none"
        raise ApiError(404, "not_found", f"unknown pipeline {name!r}; known pipelines: {known}")
    return PipelineOut(**registry.get(name).describe())
