"""The request path (``handle.py`` reads it top to bottom) and its seam for later features (``stages.py``)."""

from emporion.pipeline.deps import Deps
from emporion.pipeline.execute import Embeddings, Streamed
from emporion.pipeline.handle import Answer, handle
from emporion.pipeline.stages import Call, Stage, Stages

__all__ = ["Answer", "Call", "Deps", "Embeddings", "Stage", "Stages", "Streamed", "handle"]
