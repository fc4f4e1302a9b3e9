"""All the parts of the pipeline over one store, made once over a shared :class:`StoreContext`."""

from __future__ import annotations

from .building import Building
from .context import StoreContext
from .embedding import Embedding
from .recognising import Recognising
from .searching import Searching


class Parts:
    """The parts over ``ctx``: what the facade composes and what evaluation runs."""

    def __init__(self, ctx: StoreContext):
        self.ctx = ctx
        self.embedding = Embedding(ctx)
        self.building = Building(ctx)
        self.searching = Searching(ctx, self.embedding)
        self.recognising = Recognising(ctx, self.embedding)
