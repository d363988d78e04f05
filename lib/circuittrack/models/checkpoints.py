"""Load one checkpoint of a suite as a Hugging Face model + tokenizer, in a chosen dtype and device.

Pythia and ``hf`` checkpoints come from the hub revision ``step{N}`` through the local Hugging Face cache;
toy checkpoints from ``<data>/toy_suite/<model>/step{N}``. The same loader serves all suites. When a
checkpoint is not cached and the hub cannot be reached, loading fails at once with a message that names the
model and revision and says how to fetch it (no half-minute of retries).
"""

from __future__ import annotations

import os
import socket
import threading
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from circuittrack import paths
from circuittrack.errors import CheckpointMissing, CheckpointUnavailable
from circuittrack.models.devices import dtype_name, parse_device, parse_dtype
from circuittrack.models.suites import HUB_MISSING, ModelSpec, get_suite, resolve  # noqa: F401 - resolve: re-exported


@dataclass
class LoadedModel:
    """A checkpoint in memory: the Hugging Face model and tokenizer plus where they came from."""

    suite: str
    spec: ModelSpec
    step: int
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    source: str  # local directory or hub id@revision

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def transformer_lens(self):
        """The same weights as a TransformerLens ``TransformerBridge``.

        The bridge rewires the modules it wraps in place (eager attention, its own q/k/v weights), after which
        hooks on the plain model no longer fire; so it wraps a copy and :attr:`model` stays usable.
        """
        import copy

        from circuittrack.models.runners.transformer_lens import wrap_transformer_lens

        return wrap_transformer_lens(copy.deepcopy(self.model), self.tokenizer)

    def nnsight(self):
        """The same weights as an nnsight model (over a copy: nnsight installs itself on the modules it wraps)."""
        import copy

        from circuittrack.models.runners.nnsight import wrap_nnsight

        return wrap_nnsight(copy.deepcopy(self.model), self.tokenizer)

    def describe(self) -> dict:
        cfg = self.model.config
        return {
            "suite": self.suite, "model": self.spec.name, "step": self.step,
            "tokens_seen": self.spec.tokens(self.step), "source": self.source,
            "architecture": cfg.architectures[0] if getattr(cfg, "architectures", None) else type(self.model).__name__,
            "n_params": sum(p.numel() for p in self.model.parameters()),
            "n_layers": cfg.num_hidden_layers, "n_heads": cfg.num_attention_heads, "d_model": cfg.hidden_size,
            "vocab_size": cfg.vocab_size, "dtype": dtype_name(self.dtype), "device": str(self.device),
        }


def hub_offline() -> bool:
    """True when the hub must not or cannot be reached (``HF_HUB_OFFLINE`` or no DNS within 3 s)."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return True
    result: list[bool] = []

    def probe() -> None:
        try:
            socket.getaddrinfo("huggingface.co", 443)
            result.append(True)
        except OSError:
            result.append(False)

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(3.0)
    return not (result and result[0])


def toy_checkpoint_dir(model: str, step: int | str, suite_dir: Path | None = None) -> Path:
    """Directory of a toy checkpoint (``step`` may be ``"final"``)."""
    step = get_suite("toy").model(model).resolve_step(step)
    return Path(suite_dir or paths.toy_suite_dir()) / model / f"step{step}"


def load_checkpoint(suite: str, model: str, checkpoint: int | str = "final", *, device: str | torch.device = "cpu",
                    dtype: str | torch.dtype = torch.float32, suite_dir: Path | None = None) -> LoadedModel:
    """Load ``model`` of ``suite`` at ``checkpoint`` (a step or ``"final"``) onto ``device`` in ``dtype``."""
    spec, step = resolve(suite, model, checkpoint)
    dtype = parse_dtype(dtype)
    device = parse_device(device)
    if suite == "toy":
        d = toy_checkpoint_dir(spec.name, step, suite_dir)
        if not (d / "config.json").exists():
            raise CheckpointUnavailable(
                f"toy checkpoint {spec.name} step {step} is not trained yet ({d} is missing). "
                "Train the toy suite with `circuittrack train-toy` (or `make book`), about 5 minutes on 2 cores.")
        model_obj = AutoModelForCausalLM.from_pretrained(str(d), dtype=dtype)
        tok = AutoTokenizer.from_pretrained(str(d))
        source = str(d)
    else:
        if (spec.name, step) in HUB_MISSING:
            raise CheckpointMissing(f"{spec.hf_id} has no checkpoint at step {step} on the hub (a known gap: "
                                    "EleutherAI/pythia issue #202); use a neighbouring step")
        model_obj, tok = _load_from_hub(spec.hf_id, spec.revision(step), dtype)
        source = f"{spec.hf_id}@{spec.revision(step)}"
    model_obj.to(device).eval()
    for p in model_obj.parameters():
        p.requires_grad_(False)
    return LoadedModel(suite, spec, step, model_obj, tok, source)


def _load_from_hub(hf_id: str, revision: str, dtype: torch.dtype):
    try:  # the cache first, without touching the network
        model = AutoModelForCausalLM.from_pretrained(hf_id, revision=revision, dtype=dtype, local_files_only=True)
        tok = AutoTokenizer.from_pretrained(hf_id, revision=revision, local_files_only=True)
        return model, tok
    except OSError as err:
        if hub_offline():
            raise CheckpointUnavailable(
                f"{hf_id} at revision {revision} is not in the local Hugging Face cache and the hub cannot be "
                f"reached (offline); on a machine with internet run `hf download {hf_id} --revision {revision}`, "
                f"then copy the cache ($HF_HOME, default ~/.cache/huggingface) here or point HF_HOME at it") from err
    try:
        model = AutoModelForCausalLM.from_pretrained(hf_id, revision=revision, dtype=dtype)
        tok = AutoTokenizer.from_pretrained(hf_id, revision=revision)
    except OSError as err:
        if missing_on_hub(err):
            raise CheckpointMissing(f"{hf_id} has no revision {revision} with weights on the hub") from err
        raise
    return model, tok


def missing_on_hub(err: BaseException) -> bool:
    """True when a loading error says the hub has no such revision or no weights in it (not a network failure)."""
    from huggingface_hub.errors import EntryNotFoundError, RevisionNotFoundError

    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, (RevisionNotFoundError, EntryNotFoundError)):
            return True
        text = str(seen)
        if "is not a valid git identifier" in text or "does not appear to have a file named" in text:
            return True
        seen = seen.__cause__ or seen.__context__
    return False
