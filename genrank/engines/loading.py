"""Loading a model or tokenizer by name: one line within seconds when it cannot be fetched.

Without Hub access, ``from_pretrained`` of a model that is not in the local cache spends half a
minute in huggingface_hub's retries ("Retrying in 8s") before transformers' own multi-line text.
``pretrained`` asks the Hub once first, without retries: if it cannot be reached, a cached model
loads from the cache (``local_files_only``) and an uncached one fails at once with
``ModelNotFetchable``, saying how to use a local directory or ``HF_HUB_OFFLINE=1``. Local
directories and offline mode skip the check. transformers' own progress bars ("Loading weights")
are off while it loads; download bars stay (they go to stderr).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

CHECK_TIMEOUT = 5.0  # seconds the one check of the Hub waits (HF_HUB_ETAG_TIMEOUT, when set, instead)

_unreachable: dict[str, str] = {}  # endpoint -> why, so that a second load does not wait again


class ModelNotFetchable(OSError):
    """A model named by its Hub id is not in the local cache and the Hub cannot be reached."""


def pretrained(load: Callable[..., T], name: str, /, *, filename: str = "config.json", **kwargs: Any) -> T:
    """``load(name, **kwargs)`` (a ``from_pretrained``), after checking that ``name`` can be fetched.

    ``filename`` is the file of ``name`` whose presence in the local cache means it can load from
    the cache (``config.json`` for a model, ``tokenizer_config.json`` for a tokenizer).
    """
    if not kwargs.get("local_files_only") and cache_only(name, filename, revision=kwargs.get("revision"),
                                                         token=kwargs.get("token"), cache_dir=kwargs.get("cache_dir")):
        kwargs["local_files_only"] = True
    with _quiet_transformers():
        return load(name, **kwargs)


def cache_only(name: str, filename: str = "config.json", *, revision: str | None = None,
               token: str | bool | None = None, cache_dir: str | os.PathLike | None = None) -> bool:
    """Whether ``name`` has to load from the local cache only: the Hub cannot be reached but the file is cached.

    False for a local directory, in offline mode, for what is not a Hub id, and when the Hub
    answers. Raises ModelNotFetchable when the Hub cannot be reached and ``filename`` is not cached.
    """
    if os.path.isdir(name):
        return False
    try:
        from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url, try_to_load_from_cache
        from huggingface_hub.errors import EntryNotFoundError, GatedRepoError, HfHubHTTPError, RepositoryNotFoundError
        from huggingface_hub.utils import validate_repo_id
    except ImportError:  # no huggingface_hub: nothing is fetched from the Hub
        return False
    if constants.HF_HUB_OFFLINE:
        return False
    try:
        validate_repo_id(name)
    except ValueError:  # not a Hub id (a missing path): the loader's own error says so
        return False
    endpoint = constants.ENDPOINT
    why = _unreachable.get(endpoint)
    if why is None:
        timeout = float(os.environ["HF_HUB_ETAG_TIMEOUT"]) if os.environ.get("HF_HUB_ETAG_TIMEOUT") else CHECK_TIMEOUT
        try:
            get_hf_file_metadata(hf_hub_url(name, filename, revision=revision), token=token, timeout=timeout)
            return False
        except GatedRepoError:
            raise ModelNotFetchable(f"model {name!r} is gated on the Hugging Face Hub: accept its terms on its page "
                                    "and set HF_TOKEN, or pass a local model directory") from None
        except RepositoryNotFoundError:
            raise ModelNotFetchable(f"model {name!r} was not found on the Hugging Face Hub ({endpoint}); check the "
                                    "name (a private model needs HF_TOKEN), or pass a local model directory") from None
        except EntryNotFoundError:  # the repository is there, without this file: the loader decides
            return False
        except HfHubHTTPError as e:
            why = f"it answered HTTP {e.response.status_code}"
        except Exception as e:  # noqa: BLE001 - whatever the HTTP client raises when the network fails
            why = f"{type(e).__name__}: {e}".splitlines()[0]
        _unreachable[endpoint] = why
    if isinstance(try_to_load_from_cache(name, filename, cache_dir=cache_dir, revision=revision), str):
        log.warning("the Hugging Face Hub (%s) cannot be reached (%s); loading %r from the local cache",
                    endpoint, why, name)
        return True
    raise ModelNotFetchable(
        f"could not fetch model {name!r}: the Hugging Face Hub ({endpoint}) cannot be reached ({why}) and the model "
        f"is not in the local cache; pass a local model directory instead (--model /path/to/model), or set "
        f"HF_HUB_OFFLINE=1 to load models from the cache without asking the Hub")


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """transformers' own progress bars ("Loading weights") off; huggingface_hub's download bars untouched."""
    try:
        from transformers.utils.logging import set_tqdm_hook
    except ImportError:  # transformers < 5 has no such bar for a one-file model
        yield
        return
    previous = set_tqdm_hook(lambda factory, args, kwargs: factory(*args, **{**kwargs, "disable": True}))
    try:
        yield
    finally:
        set_tqdm_hook(previous)
