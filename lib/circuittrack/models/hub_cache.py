"""The local Hugging Face cache of hub checkpoints: is one there, fetch one ahead of time, evict one when done.

A Pythia sweep reads each checkpoint once (154 revisions of a 2.8b model are 860 GB), so the sweep fetches the
next checkpoint while it analyses the current one (:func:`prefetch`) and, with ``--evict``, removes a checkpoint's
files once all its analyses are stored (:func:`evict`). Toy checkpoints are trained here, not cached: both are
no-ops for them. Nothing here reaches the network unless asked to download.
"""

from __future__ import annotations

from circuittrack.errors import InvalidInput
from circuittrack.models.suites import get_suite

#: Files a checkpoint needs besides its weights (config, tokenizer); the weights are the safetensors shards when
#: the revision has them, else the PyTorch ``.bin`` shards (``from_pretrained`` prefers the same).
_SIDE_FILES = (".json", ".txt", ".model")


def hub_location(suite: str, model: str, step: int) -> tuple[str, str] | None:
    """(repo id, revision) of a hub checkpoint; None for the toy suite."""
    if suite == "toy":
        return None
    spec = get_suite(suite).model(model)
    return spec.hf_id, spec.revision(step)


def is_cached(suite: str, model: str, step: int) -> bool:
    """True when the checkpoint's config is in the local cache (toy: always); touches no network."""
    where = hub_location(suite, model, step)
    if where is None:
        return True
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(where[0], "config.json", revision=where[1]), str)


def checkpoint_files(repo_files: list[str]) -> list[str]:
    """The files of a revision that loading needs: config and tokenizer files plus one weight format."""
    top = [f for f in repo_files if "/" not in f]
    weights = [f for f in top if f.endswith(".safetensors") or f == "model.safetensors.index.json"]
    if not any(f.endswith(".safetensors") for f in weights):
        weights = [f for f in top if f.endswith(".bin") or f == "pytorch_model.bin.index.json"]
    side = [f for f in top if f.endswith(_SIDE_FILES) and f not in weights]
    return sorted(set(side) | set(weights))


def prefetch(suite: str, model: str, step: int) -> None:
    """Download a hub checkpoint into the local cache unless it is there (toy: nothing to do)."""
    if is_cached(suite, model, step):
        return
    from huggingface_hub import HfApi, hf_hub_download

    repo, revision = hub_location(suite, model, step)
    for name in checkpoint_files(HfApi().list_repo_files(repo, revision=revision)):
        hf_hub_download(repo, name, revision=revision)


def evict(suite: str, model: str, step: int) -> int:
    """Remove a hub checkpoint's snapshot (and the blobs no other revision uses) from the local cache; returns
    the bytes freed (0 if it was not cached). Refused for the toy suite, whose checkpoints are trained here."""
    if suite == "toy":
        from circuittrack.models.suites import SUITE_NAMES

        raise InvalidInput("--evict removes hub checkpoints from the Hugging Face cache; the toy suite's "
                           "checkpoints are trained here and are kept (valid suites for --evict: "
                           f"{', '.join(s for s in SUITE_NAMES if s != 'toy')})")
    from huggingface_hub import scan_cache_dir

    repo, revision = hub_location(suite, model, step)
    try:
        cache = scan_cache_dir()
    except Exception:  # noqa: BLE001 - no cache directory yet: nothing to evict
        return 0
    hashes = [rev.commit_hash for info in cache.repos if info.repo_id == repo and info.repo_type == "model"
              for rev in info.revisions if revision in rev.refs or rev.commit_hash == revision]
    if not hashes:
        return 0
    strategy = cache.delete_revisions(*hashes)
    strategy.execute()
    return strategy.expected_freed_size
