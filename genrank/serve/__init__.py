"""``genrank serve``: a rerank HTTP service (Cohere, Jina and text-embeddings-inference shapes) in front of
any engine, with batching across requests, limits, bearer-key auth and Prometheus metrics.

>>> from genrank.serve import ServeSettings, serve
>>> serve(lambda: Reranker(model, engine="hf"), ServeSettings(api_keys=("KEY",)), port=8000)

``create_app`` gives the ASGI app to run under a server of your own. Needs ``pip install 'genrank[serve]'``.
"""

from .app import create_app
from .server import serve
from .settings import ServeSettings

__all__ = ["ServeSettings", "create_app", "serve"]
