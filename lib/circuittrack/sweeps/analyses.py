"""Analyses a sweep can run: named functions (loaded checkpoint, task data or none, parameters) -> tables.

Each analysis declares its parameters (type, default, whether a value may differ per task); a grid's values are
checked against them before any work, and the resolved parameters (defaults filled in, per-task values picked)
are part of each job's key. Register more with :func:`register` (the component analyses of the next issue do),
without touching the sweep code.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import pandas as pd

from circuittrack.errors import InvalidInput, choices
from circuittrack.options import check_threshold
from circuittrack.progress import kernel_bars_on

AUTO = "auto"


@dataclass(frozen=True)
class Param:
    """One parameter: accepted Python types, default, and whether a ``{task: value}`` mapping is allowed.

    A ``file`` parameter names a local file (one of ``suffixes``) unless its value is one of ``special``: a grid
    resolves the path and keys the job by the file's content (:attr:`~circuittrack.sweeps.store.Job.inputs`).
    """

    name: str
    types: tuple[type, ...]
    default: object
    help: str
    per_task: bool = False
    allowed: tuple = ()  # valid values when the set is closed (besides None)
    file: bool = False
    special: tuple[str, ...] = ()  # values of a file parameter that name no file
    suffixes: tuple[str, ...] = ()  # the file names a file parameter accepts (empty: any)
    valid: Callable | None = None  # a further check of the value (raises InvalidInput), e.g. a range

    def check(self, value, where: str, task: str | None, tasks=None):
        """The value for ``task`` (a per-task mapping picks it); ``tasks``, when given, are the valid keys of such
        a mapping (a grid's tasks), so a misspelt task is an error rather than silently the default."""
        if isinstance(value, dict):
            if not self.per_task:
                raise InvalidInput(f"{where}: {self.name} takes one value, not a per-task mapping")
            if tasks is not None:
                unknown = [k for k in value if k not in tasks]
                if unknown:
                    raise InvalidInput(f"{where}: {self.name}: {', '.join(map(repr, unknown))} is not a task of "
                                       f"this grid; valid tasks: {choices(tasks)}")
            value = value.get(task, self.default) if task is not None else self.default
        if value is None:
            return None
        if isinstance(value, bool) and bool not in self.types:
            raise InvalidInput(f"{where}: {self.name} must be {self._kinds()}, got {value!r}")
        if not isinstance(value, self.types):
            raise InvalidInput(f"{where}: {self.name} must be {self._kinds()}, got {value!r}")
        if self.allowed and value not in self.allowed:
            raise InvalidInput(f"{where}: {self.name} {value!r} is not valid; valid: {choices(self.allowed)}")
        if str in self.types and int in self.types and isinstance(value, str) and value != AUTO:
            raise InvalidInput(f"{where}: {self.name} must be a positive integer or 'auto', got {value!r}")
        if isinstance(value, int) and not isinstance(value, bool) and value < 1 and self.name != "seed" \
                and not self.allowed:
            raise InvalidInput(f"{where}: {self.name} must be positive, got {value!r}")
        if self.valid is not None:
            try:
                self.valid(value)
            except InvalidInput as err:
                raise InvalidInput(f"{where}: {err}") from None
        return value

    def _kinds(self) -> str:
        names = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
        return " or ".join(names.get(t, t.__name__) for t in self.types) + (" (or a per-task mapping)"
                                                                            if self.per_task else "")


@dataclass(frozen=True)
class Analysis:
    """A named analysis; ``run(checkpoint, data, params) -> {table name: DataFrame}``.

    ``reads``: another analysis whose result this one's includes (the IOI algorithm needs the head scores). When
    that analysis's job on the same checkpoint, with the parameters both declare, is stored intact, a sweep passes
    its tables to ``run`` as ``stored=`` instead of computing them again (None otherwise): the same key, so the
    same numbers."""

    name: str
    description: str
    needs_task: bool
    params: tuple[Param, ...]
    run: Callable
    tables: tuple[str, ...] = ()
    optional_tables: tuple[str, ...] = field(default=())
    reads: str | None = None

    def resolve(self, raw: dict | None, task: str | None, where: str, tasks=None) -> dict:
        """Parameters with defaults filled in and per-task values picked; errors name ``where`` and the choices
        (``tasks``: the valid keys of per-task mappings, e.g. a grid's tasks; None: not checked)."""
        raw = dict(raw or {})
        known = {p.name: p for p in self.params}
        unknown = sorted(map(str, set(raw) - set(known)))
        if unknown:
            raise InvalidInput(f"{where}: unknown parameter(s) {', '.join(unknown)} of analysis {self.name!r}; "
                               f"valid: {choices(known)}")
        return {p.name: p.check(raw.get(p.name, p.default), where, task, tasks) for p in self.params}


ANALYSES: dict[str, Analysis] = {}


def register(analysis: Analysis, overwrite: bool = False) -> Analysis:
    if analysis.name in ANALYSES and not overwrite:
        raise InvalidInput(f"an analysis named {analysis.name!r} is already registered")
    ANALYSES[analysis.name] = analysis
    return analysis


def get_analysis(name: str) -> Analysis:
    if name not in ANALYSES:
        raise InvalidInput(f"unknown analysis {name!r}; valid analyses: {choices(sorted(ANALYSES))}")
    return ANALYSES[name]


# ----- behaviour (Figure 1) --------------------------------------------------------------------------------

_DATA_CACHE: OrderedDict[tuple, object] = OrderedDict()
_DATA_CACHE_SIZE = 16


def _task_data(checkpoint, task: str, params: dict):
    """The task's examples for this checkpoint's tokenizer. Datasets are a pure function of (task, tokenizer, n,
    seed), and every checkpoint of a suite shares its tokenizer, so a worker builds each one once and reuses it
    across checkpoints (the kernels never change their inputs)."""
    from circuittrack.tasks.registry import get_task

    fingerprint = _tokenizer_fingerprint(checkpoint.tokenizer)
    key = (task, fingerprint, params["n"], params["seed"])
    if fingerprint is not None and key in _DATA_CACHE:
        _DATA_CACHE.move_to_end(key)
        data = _DATA_CACHE[key]
    else:
        data = get_task(task).make(checkpoint.tokenizer, n=params["n"], seed=params["seed"])
        if fingerprint is not None:
            _DATA_CACHE[key] = data
            while len(_DATA_CACHE) > _DATA_CACHE_SIZE:
                _DATA_CACHE.popitem(last=False)
    half = params.get("half", 0)
    if half:  # one of two disjoint halves of the dataset (the resampling noise floor)
        h = len(data) // 2
        data = data.slice((half - 1) * h, half * h)
    return data


def _tokenizer_fingerprint(tokenizer) -> str | None:
    """A hash of a fast tokenizer's full serialisation (vocabulary, merges, normaliser, special tokens); None for
    other tokenizers, whose data is then rebuilt every time."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    special = (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.bos_token_id)
    return hashlib.sha256((backend.to_str() + repr(special)).encode()).hexdigest()


def _behaviour(checkpoint, task: str, params: dict) -> dict[str, pd.DataFrame]:
    from circuittrack.tasks.evaluate import evaluate

    data = _task_data(checkpoint, task, params)
    size = 32 if params["batch_size"] == AUTO else params["batch_size"]
    result = evaluate(checkpoint.model, data, batch_size=size, per_example=True)
    return {"metrics": pd.DataFrame([{"metric_kind": data.metric_kind, "metric": result["metric"],
                                      "accuracy": result["accuracy"], "n": result["n"],
                                      "seed": params["seed"]}]),
            "examples": pd.DataFrame({"example": range(result["n"]),
                                      "metric": result["per_example"].numpy()})}


_DATA_PARAMS = (
    Param("n", (int,), None, "examples (default: the task's)", per_task=True),
    Param("seed", (int,), None, "dataset seed (default: the task's)", per_task=True),
)

register(Analysis(
    "behaviour", "the task metric and accuracy on the clean prompts (Figure 1)", True,
    _DATA_PARAMS + (Param("batch_size", (int, str), AUTO, "examples per forward pass, or auto (32)"),),
    _behaviour, tables=("metrics", "examples")))


# ----- circuit (EAP-IG, greedy, faithfulness, size) -----------------------------------------------------------

def _circuit(checkpoint, task: str, params: dict) -> dict[str, pd.DataFrame]:
    from circuittrack.circuits.discovery import find_circuit
    from circuittrack.circuits.selection import edge_ranks

    data = _task_data(checkpoint, task, params)
    result = find_circuit(checkpoint.model, data, method=params["method"], ig_steps=params["ig_steps"],
                          backend=params["backend"], batch_size=params["batch_size"],
                          circuit_batch=params["circuit_batch"], threshold=params["threshold"],
                          max_size=params["max_size"], progress=False,
                          search_undefined=params["search_undefined"])
    circuit, size = result.circuit, result.size
    summary = {k: v for k, v in result.summary().items() if k not in ("method", "ig_steps", "backend")}
    summary["seed"] = params["seed"]
    tables = {"summary": _typed_summary(summary), "curve": size.to_frame(),
              "fractions": pd.DataFrame(columns=["fraction", "n", "metric", "n_edges", "n_nodes"])}
    if circuit is None:  # undefined, not searched: no scores, no edges
        tables["edges"] = pd.DataFrame({"edge": pd.Series([], dtype=str), "source": pd.Series([], dtype=str),
                                        "target": pd.Series([], dtype=str), "score": pd.Series([], dtype="float32"),
                                        "greedy_rank": pd.Series([], dtype="int64")})
        return tables
    graph = circuit.graph
    src, dst = circuit.in_circuit.nonzero(as_tuple=True)  # row-major: the edge-number order
    sources = [graph.src_names[i] for i in src.tolist()]
    targets = [graph.dst_names[j] for j in dst.tolist()]
    tables["edges"] = pd.DataFrame({"edge": [f"{u}->{v}" for u, v in zip(sources, targets)],
                                    "source": sources, "target": targets,
                                    "score": circuit.scores[src, dst].numpy(),
                                    "greedy_rank": edge_ranks(graph, size.order)[src, dst].numpy()})
    if params["fractions"]:
        tables["fractions"] = _fraction_points(checkpoint, data, circuit, size, params)
    if params["keep_scores"]:
        every_src, every_dst = graph.edge_index
        tables["scores"] = pd.DataFrame({"edge": graph.edge_names(),
                                         "score": circuit.scores[every_src, every_dst].numpy()})
    return tables


#: Circuit-summary columns that are integers, or missing where faithfulness is undefined: stored as pandas'
#: nullable Int64 in every job, so the column types of a loaded table never depend on which jobs the store holds
#: (an undefined circuit's None would otherwise make the whole column object).
SUMMARY_INTS = ("circuit_edges", "circuit_nodes", "greedy_size", "total_edges", "max_size", "n_examples",
                "n_evaluate_calls", "seed", "checkpoint", "tokens_seen", "ig_steps")


def _typed_summary(summary: dict) -> pd.DataFrame:
    df = pd.DataFrame([summary])
    return df.astype({c: "Int64" for c in SUMMARY_INTS if c in df})


def _fraction_points(checkpoint, data, circuit, size, params) -> pd.DataFrame:
    """The greedy circuits at the MIB edge fractions (sizes the search already evaluated are reused)."""
    from circuittrack.circuits.evaluation import evaluate_circuits
    from circuittrack.circuits.faithfulness import MIB_FRACTIONS, faithfulness_curve, fraction_sizes

    graph = circuit.graph
    sizes = fraction_sizes(graph.n_edges)
    known = {p.n: p for p in size.points}
    missing = sorted({n for n in sizes if n not in known})
    if missing:
        def evaluate(masks):
            return evaluate_circuits(checkpoint.model, graph, data, masks, batch_size=params["batch_size"],
                                     circuit_batch=params["circuit_batch"], backend=params["backend"])
        k = 8 if params["circuit_batch"] == AUTO else params["circuit_batch"]
        curve = faithfulness_curve(graph, circuit.scores, evaluate, missing, k=k, full_metric=size.full_metric,
                                   empty_metric=size.empty_metric)
        known.update({p.n: p for p in curve.points})
    return pd.DataFrame([{"fraction": f, "n": n, "metric": known[n].metric, "n_edges": known[n].n_edges,
                          "n_nodes": known[n].n_nodes} for f, n in zip(MIB_FRACTIONS, sizes)])


register(Analysis(
    "circuit", "EAP-IG edge scores, the smallest greedy circuit at the threshold, its faithfulness curve and edges",
    True,
    _DATA_PARAMS + (
        Param("method", (str,), "eap-ig-inputs", "attribution method",
              allowed=("eap", "eap-ig-inputs", "eap-ig-activations", "clean-corrupted", "exact")),
        Param("ig_steps", (int,), 30, "integrated-gradient steps (the paper: 30)"),
        Param("backend", (str,), "torch", "runner", allowed=("torch", "nnsight", "transformer_lens")),
        Param("batch_size", (int, str), AUTO, "examples per pass, or auto"),
        Param("circuit_batch", (int, str), AUTO, "circuits per evaluation pass, or auto"),
        Param("threshold", (float, int), 0.8, "faithfulness the circuit must reach, in (0, 1]",
              valid=check_threshold),
        Param("max_size", (int,), 1600, "largest greedy circuit searched (the paper: 1600)"),
        Param("keep_scores", (bool,), False, "also store every edge's score (large at 2.8b)"),
        Param("fractions", (bool,), True, "also evaluate the greedy circuits at the MIB edge fractions (0.1% to "
              "100% of edges) for the whole-curve scores CPR and CMD"),
        Param("half", (int,), 0, "0: the whole dataset; 1 or 2: one of its two disjoint halves (the resampling "
              "noise floor of stability)", allowed=(0, 1, 2)),
        Param("search_undefined", (bool,), False, "also score and search where faithfulness is undefined (the "
              "full model's metric is not positive), to record the metric curve there; off: one pass decides"),
    ),
    _circuit, tables=("summary", "curve", "edges", "fractions"), optional_tables=("scores",)))


# ----- heads (component scores: induction, duplicate-token, previous-token) --------------------------------------

_SCORES_CACHE: dict[tuple, pd.DataFrame] = {}


def _head_scores(checkpoint, params: dict, stored: dict | None = None) -> pd.DataFrame:
    """Every head's component scores at this checkpoint (one row per head): the stored heads job's (``stored``),
    or computed. The heads and ioi_algorithm jobs of one loaded checkpoint run one after the other in one
    process, so the last result is kept and reused."""
    if stored is not None:
        return stored["scores"]
    names = ("length", "batch", "seed", "cspa", "cspa_text")
    key = (id(checkpoint.model), checkpoint.suite, checkpoint.spec.name, checkpoint.step, str(checkpoint.dtype),
           tuple(params[k] for k in names))
    if key not in _SCORES_CACHE:
        _SCORES_CACHE.clear()
        _SCORES_CACHE[key] = _compute_head_scores(checkpoint, params)
    return _SCORES_CACHE[key].copy()


def _compute_head_scores(checkpoint, params: dict) -> pd.DataFrame:
    from circuittrack.components.copying import copy_scores
    from circuittrack.components.induction import induction_scores
    from circuittrack.components.successor import successor_scores
    from circuittrack.tasks.registry import get_task

    scores = induction_scores(checkpoint.model, length=params["length"], batch=params["batch"], seed=params["seed"],
                              train_seq_len=checkpoint.spec.train_seq_len or None)
    succ = successor_scores(checkpoint.model, checkpoint.tokenizer)
    ioi = get_task("ioi")
    names = _task_data(checkpoint, "ioi", {"n": ioi.default_n, "seed": ioi.default_seed})
    copies = copy_scores(checkpoint.model, names)
    keys = ["layer", "head", "node"]
    out = scores.merge(succ, on=keys).merge(copies, on=keys)
    if params["cspa"]:
        from circuittrack.components import cspa

        text = _cspa_text(checkpoint.tokenizer, params["cspa_text"])
        cs = cspa.cspa_scores(checkpoint.model, text[:cspa.PAPER_N_SEQS], text,
                              function_tokens=cspa.function_token_ids(checkpoint.tokenizer),
                              progress=kernel_bars_on())
        out = out.merge(cs[keys + ["cspa", "kl_mean_ablation"]].rename(
            columns={"kl_mean_ablation": "cspa_kl_mean_ablation"}), on=keys)
    return out


def _cspa_text(tokenizer, source: str):
    """The CSPA text rows for this tokenizer, built once per worker (a pure function of tokenizer and source)."""
    from circuittrack.components.cspa import text_tokens

    key = ("cspa-text", _tokenizer_fingerprint(tokenizer), source)
    if key[1] is None or key not in _DATA_CACHE:
        _DATA_CACHE[key] = text_tokens(tokenizer, source)
    return _DATA_CACHE[key]


def _heads(checkpoint, task, params: dict) -> dict[str, pd.DataFrame]:
    return {"scores": _head_scores(checkpoint, params)}


#: What the stored head scores mean. Version 2: the paper's literal readings (induction scores over the whole
#: diagonal with 2T <= the training sequence length, successor ties count, copy scores on TransformerLens-processed
#: weights); version 1 (no parameter) was our earlier readings. As a resolved parameter it enters every heads and
#: ioi_algorithm job's store key, so results stored under version 1 are never read as current.
HEAD_SCORES_VERSION = 2

_HEAD_PARAMS = (
    Param("length", (int,), 100, "random tokens per sequence before the repeat (the paper: 100; cut to half the "
          "training sequence length)"),
    Param("batch", (int,), 2, "sequences (the paper: 2)"),
    Param("seed", (int,), 0, "seed of the random tokens (the paper's are unseeded)"),
    Param("cspa", (bool,), True, "also the CSPA (copy suppression) score: 17 x 61 tokens of text, means from 100"),
    Param("cspa_text", (str,), "toy-corpus", "CSPA text: toy-corpus (held-out toy documents) or a local .txt/.jsonl "
          "file, e.g. an OpenWebText export as in the paper", file=True, special=("toy-corpus",),
          suffixes=(".txt", ".jsonl")),
    Param("scores_version", (int,), HEAD_SCORES_VERSION, "what the head scores mean (only the current version is "
          "computed)", allowed=(HEAD_SCORES_VERSION,)),
)

register(Analysis(
    "heads", "per-head induction, duplicate-token, previous-token (repeated random tokens), successor and copy "
    "scores (Figure 2)", False, _HEAD_PARAMS, _heads, tables=("scores",)))


# ----- the IOI algorithm (Figure 4) and the Greater-Than check ------------------------------------------------

def _ioi_algorithm(checkpoint, task, params: dict, stored: dict | None = None) -> dict[str, pd.DataFrame]:
    from circuittrack.components.ioi_algorithm import ioi_algorithm
    from circuittrack.tasks.registry import get_task

    ioi = get_task("ioi")
    data = _task_data(checkpoint, "ioi", {"n": params["n"] or ioi.default_n, "seed": ioi.default_seed})
    scores = _head_scores(checkpoint, params, stored)
    return ioi_algorithm(checkpoint.model, data, scores, batch_size=params["batch_size"],
                         cspa_min_kl=float(params["cspa_min_kl"]), cspa_min_kl_share=float(params["cspa_min_kl_share"]),
                         s_inhibition_min_change=float(params["s_inhibition_min_change"]),
                         progress=kernel_bars_on())


register(Analysis(
    "ioi_algorithm", "path patching of the IOI algorithm: name movers, copy suppressors, S-inhibition and "
    "induction/duplicate heads and the share of the IOI effect each group's paths carry (Figure 4)", False,
    _HEAD_PARAMS + (Param("n", (int,), None, "IOI examples (default: the task's, 70 as in the paper)"),
                    Param("batch_size", (int, str), AUTO, "examples per pass, or auto"))
    + (Param("cspa_min_kl", (float, int), 0.001, "a CSPA score counts (copy suppressors) only where mean-ablating "
             "the head's direct path moves the output by at least this KL in nats (beyond the paper)"),
       Param("cspa_min_kl_share", (float, int), 0.05, "... and by at least this share of the largest such KL "
             "among the checkpoint's heads (beyond the paper)"),
       Param("s_inhibition_min_change", (float, int), 0.02, "the position test confirms an S-inhibition head only "
             "where each change reaches this share of its clean value (the paper: signs only)")),
    _ioi_algorithm, tables=("heads", "shares"), reads="heads"))


def _greater_than_check(checkpoint, task, params: dict) -> dict[str, pd.DataFrame]:
    from circuittrack.components.greater_than import greater_than_check
    from circuittrack.tasks.greater_than import year_token_ids
    from circuittrack.tasks.registry import get_task

    gt = get_task("greater-than")
    data = _task_data(checkpoint, "greater-than", {"n": params["n"] or gt.default_n, "seed": gt.default_seed})
    return greater_than_check(checkpoint.model, data, year_token_ids(checkpoint.tokenizer))


register(Analysis(
    "greater_than_check", "per head: attention to YY and a direct output favouring YY; per MLP: whether it raises "
    "the years after YY (the Greater-Than algorithm check)", False,
    (Param("n", (int,), None, "Greater-Than examples (default: the task's, 200)"),),
    _greater_than_check, tables=("heads", "mlps")))
