"""OpenAI-compatible remote driver: many requests in flight, exact label log-probabilities, faults survived.

Modules: ``engine`` (options; a call's prompts to requests and back), ``protocol`` (request
bodies and response parsing, pure), ``errors`` (what is retried, what stops the run, redaction),
``server`` (which server it is), ``dispatch`` (the engine's limits, retries and pauses across
event loops), ``limits``, ``queue`` (one loop's session and call order), ``backups`` (backup
requests against tail latency), ``background`` (the loop behind blocking calls), ``progress``.
"""

from .engine import OpenAIEngine

__all__ = ["OpenAIEngine"]
