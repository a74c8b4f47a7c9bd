"""Activation statistics of a model on a text, collected the way llama-imatrix does (notes 4.8).

The text's tokens are cut into chunks of n_ctx (a trailing partial chunk is dropped; at least two
chunks' worth of tokens are required, as llama-imatrix requires), each chunk runs from an empty KV
cache with its first token replaced by BOS when the vocabulary adds BOS, and every matrix
multiplication whose weight is named `blk.*` (and `output.weight` with process_output) and whose
input has at least 16 rows adds, per input column j, the squares x[:, j]^2 of its input rows to a
float32 sum, one row after the other, and the row count to its count. Weights that read the same
input (attn_q/k/v, ffn_gate/up) get identical statistics.

The rows arrive in the order of llama-imatrix's default batching, which float sums depend on:
decode batches of n_batch = 2048 tokens hold max(1, 2048 // n_ctx) chunks, one sequence each,
and llama.cpp splits each batch into micro-batches of n_ubatch = 512 rows holding the same number
of consecutive tokens of every sequence (`split_equal`): with n_ctx 512, tokens 0-127 of four
chunks, then tokens 128-255, and so on. A micro-batch of fewer than 16 rows is not counted.

With `hessians` it also sums the full second-moment matrix H = X^T X of each input (n_in x n_in,
float32; one matrix per input, shared by the weights reading it) for the optimizing quantizer.
That costs n_in^2 * 4 bytes per input and layer, kept until the statistics are dropped: SmolLM2-135M
400 MB, Qwen2.5-1.5B 790 MB without its 8960-wide ffn_down inputs (`hessians_up_to`).
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType

from quantize_cli.calibration import blas
from quantize_cli.errors import InputError, NonFiniteError, OptionError
from quantize_cli.formats.imatrix import ImportanceMatrix
from quantize_cli.runtime import ops
from quantize_cli.runtime.model import Model, RunState, forward

MIN_ROWS = 16  # llama-imatrix ignores matrix multiplications of smaller batches
N_BATCH, N_UBATCH = 2048, 512  # llama.cpp's default decode and micro-batch sizes

# Which inputs get a full H: all (True), none (False), or those where f(first weight name, n_in).
HessianChoice = bool | Callable[[str, int], bool]
MAX_HESSIAN_INPUTS = 4096  # wider inputs (an 8960-wide ffn_down: 320 MB per layer) get no H


def hessians_up_to(max_inputs: int = MAX_HESSIAN_INPUTS) -> Callable[[str, int], bool]:
    """A HessianChoice: H for the inputs of at most `max_inputs` columns. The optimizer gives the
    weights of the other inputs the importance-weighted search instead of GPTQ."""
    return lambda name, n_in: n_in <= max_inputs


@dataclass
class ActivationStats:
    """Raw importance statistics, as llama-imatrix keeps them before writing.

    sums: weight name -> float32 (n_mat * n_in,) sums of squared inputs, per expert then column.
    counts: weight name -> int64 (n_mat,) input rows summed. datasets: the texts, oldest first.
    chunk_count: chunks behind the statistics (llama-imatrix's m_last_chunk); chunk_size: n_ctx.
    hessians: weight name -> float32 (n_in, n_in) sum of x x^T over the rows (optional).
    """

    sums: dict[str, np.ndarray] = field(default_factory=dict)
    counts: dict[str, np.ndarray] = field(default_factory=dict)
    datasets: list[str] = field(default_factory=list)
    chunk_count: int = 0
    chunk_size: int = 512
    hessians: dict[str, np.ndarray] = field(default_factory=dict)

    def importance(self, name: str) -> np.ndarray | None:
        """Mean squared input per column, as llama-quantize derives it from the GGUF format."""
        if name not in self.sums:
            return None
        s, c = self.sums[name], self.counts[name]
        per = s.size // c.size
        out = np.ones_like(s)
        for e, n in enumerate(c):
            if n > 0:
                out[e * per:(e + 1) * per] = s[e * per:(e + 1) * per] / np.float32(n)
        return out

    def importance_matrix(self, path_arg: str) -> ImportanceMatrix:
        """The statistics as llama-quantize would read them back from a GGUF imatrix file named
        `path_arg` (the string the quantize.imatrix.file key records)."""
        entries = {name: self.importance(name) for name in self.sums}
        return ImportanceMatrix(path_arg, entries, datasets=list(self.datasets), chunk_count=self.chunk_count)

    def hessian(self, name: str) -> np.ndarray | None:
        """H / n_rows (float32 (n_in, n_in)): the mean of x x^T, or None when not collected."""
        h = self.hessians.get(name)
        if h is None:
            return None
        return h / np.float32(max(1, int(self.counts[name][0])))


@dataclass
class _Accumulator:
    """The statistics of one input, shared by every weight that reads it."""

    names: tuple[str, ...]
    sums: np.ndarray           # float32 (n_in,)
    count: int = 0
    hessian: np.ndarray | None = None  # float32 (n_in, n_in)


class Collector:
    """Receives every matrix multiplication's input during a forward pass (see `observing`)."""

    def __init__(self, stats: ActivationStats, *, process_output: bool, hessians: HessianChoice = False) -> None:
        self.stats = stats
        self.process_output = process_output
        self.hessians = hessians
        self.location = ""  # "chunk N" for error messages
        self.batch_rows = 0  # rows of the current micro-batch, of which observe() may see a slice
        self._accumulators: dict[tuple[str, ...], _Accumulator] = {}

    def wants(self, name: str) -> bool:
        return name.startswith("blk.") or (self.process_output and name == "output.weight")

    def observe(self, x: np.ndarray, names: tuple[str, ...]) -> None:
        """x (n_rows, n_in) float32 is the input of the weights `names` (one matmul call, or one
        sequence's slice of a micro-batch of `batch_rows` rows)."""
        names = tuple(n for n in names if self.wants(n))
        if not names or max(x.shape[0], self.batch_rows) < MIN_ROWS:
            return
        acc = self._accumulators.get(names)
        if acc is None:
            acc = self._start(names, x.shape[1])
        # values[j] += x[r, j]^2 for r in order, in float32: a reduction along axis 0 whose first
        # row is the running sum adds the rows one after the other, exactly like llama-imatrix.
        acc.sums = np.add.reduce(np.concatenate([acc.sums[None, :], x * x]), axis=0)
        acc.count += x.shape[0]
        if not np.isfinite(acc.sums).all():
            raise NonFiniteError(f"{names[0]}: non-finite activations in {self.location}",
                                 hint="the model produces NaN/Inf on this text; check the model file")
        if acc.hessian is not None:
            with blas.single_threaded():  # the same bits whatever the machine's load
                acc.hessian += x.T @ x

    def _start(self, names: tuple[str, ...], n_in: int) -> _Accumulator:
        """A new accumulator, seeded with merged statistics (--in-file) when they exist."""
        prior = [self.stats.sums.get(n) for n in names]
        sums = np.zeros(n_in, np.float32)
        count = 0
        if prior[0] is not None:
            if prior[0].size != n_in:
                raise InputError(f"{names[0]}: previous importance matrix has {prior[0].size} values, the model's "
                                 f"input has {n_in}", hint="the --in-file was computed for a different model")
            sums, count = prior[0].copy(), int(self.stats.counts[names[0]][0])
        wanted = self.hessians(names[0], n_in) if callable(self.hessians) else self.hessians
        hessian = np.zeros((n_in, n_in), np.float32) if wanted else None
        acc = _Accumulator(names, sums, count, hessian)
        self._accumulators[names] = acc
        return acc

    def finish(self) -> ActivationStats:
        """Copy the accumulators into the statistics, one entry per weight name."""
        for acc in self._accumulators.values():
            for name in acc.names:
                self.stats.sums[name] = acc.sums
                self.stats.counts[name] = np.array([acc.count], np.int64)
                if acc.hessian is not None:
                    self.stats.hessians[name] = acc.hessian
        counts = [int(c.max()) for c in self.stats.counts.values() if c.size]
        self.stats.chunk_count = max(counts, default=0) // self.stats.chunk_size
        return self.stats


@contextlib.contextmanager
def observing(collector: Collector) -> Iterator[None]:
    """Route every `ops.matmul` call through `collector` for the duration of the block.

    The runtime has one matmul seam (`runtime.ops.matmul(x, [(W, out), ...])`); wrapping it here
    sees each input once with the names of all the weights that read it.
    """
    inner = ops.matmul

    def matmul(x: np.ndarray, pairs: list, *, threads: int = 1) -> None:
        collector.observe(x, tuple(w.name for w, _ in pairs))
        inner(x, pairs, threads=threads)

    ops.matmul = matmul
    try:
        yield
    finally:
        ops.matmul = inner


@dataclass(frozen=True)
class ChunkProgress:
    index: int      # 1-based
    n_chunk: int
    tokens: int     # evaluated so far
    seconds: float  # evaluation time so far

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0

    @property
    def eta_seconds(self) -> float:
        return self.seconds / self.index * (self.n_chunk - self.index)


def _check_ctx(n_ctx: int) -> None:
    if n_ctx < MIN_ROWS:
        raise OptionError(f"--ctx {n_ctx}: each chunk must hold at least {MIN_ROWS} tokens "
                          "(llama-imatrix does not collect smaller batches)")


def collect(
    model: Model,
    tokens: np.ndarray,
    *,
    n_ctx: int = 512,
    n_chunk: int | None = None,
    bos_id: int | None = None,
    process_output: bool = False,
    hessians: HessianChoice = False,
    previous: ActivationStats | None = None,
    dataset: str | None = None,
    threads: int = 1,
    source: str = "text",
    on_chunk: Callable[[ChunkProgress], None] | None = None,
) -> ActivationStats:
    """Run `model` over `tokens` (BOS included where the vocabulary adds it) and return the
    statistics, added to `previous` (merged --in-file statistics) when given. `dataset` names the
    text in the file's metadata; `source` names it in error messages. hessians: also sum H = X^T X,
    for every input (True) or for those where hessians(first weight name, n_in) is true (n_in^2
    floats each: an 8960-wide input takes 320 MB per layer)."""
    _check_ctx(n_ctx)
    tokens = np.asarray(tokens, dtype=np.int32)
    if len(tokens) < 2 * n_ctx:
        raise InputError(f"{source}: {len(tokens)} tokens; an importance matrix with a context of {n_ctx} needs at "
                         f"least {2 * n_ctx}", hint="use a longer text or a smaller --ctx")
    if tokens.min() < 0 or tokens.max() >= model.config.n_vocab:
        raise InputError(f"{source}: token id {int(tokens.max())} is outside the vocabulary of {model.path}")
    n_available = len(tokens) // n_ctx
    n_chunk = min(n_chunk or n_available, n_available)

    stats = previous if previous is not None else ActivationStats()
    stats.chunk_size = n_ctx
    if dataset is not None:
        stats.datasets.append(dataset)
    collector = Collector(stats, process_output=process_output, hessians=hessians)
    n_seq = max(1, N_BATCH // n_ctx)
    rows = min(N_UBATCH, n_ctx)  # the most tokens of one sequence in a micro-batch
    state = RunState(model.config, n_ctx=n_ctx, n_batch=rows, n_logits=rows if process_output else 0)
    caches = [(np.zeros_like(state.key_cache), np.zeros_like(state.value_cache)) for _ in range(min(n_seq, n_chunk))]
    seconds = 0.0
    with observing(collector):
        for first in range(0, n_chunk, n_seq):
            t0 = time.perf_counter()
            group = range(first, min(first + n_seq, n_chunk))
            chunks = [np.array(tokens[c * n_ctx:(c + 1) * n_ctx]) for c in group]
            if bos_id is not None:
                for chunk in chunks:
                    chunk[0] = bos_id
            for start, stop in _micro_batches(n_ctx, len(chunks)):
                collector.batch_rows = (stop - start) * len(chunks)
                for c, chunk, (keys, values) in zip(group, chunks, caches):
                    collector.location = f"chunk {c + 1} of {source}"
                    state.key_cache, state.value_cache = keys, values  # one KV cache per sequence
                    # llama-imatrix asks for every token's logits, so the lm head sees every row
                    forward(model, state, chunk[start:stop], start, logits_from=0 if process_output else stop - start,
                            threads=threads)
            seconds += time.perf_counter() - t0
            if on_chunk is not None:
                done = group[-1] + 1
                on_chunk(ChunkProgress(done, n_chunk, done * n_ctx, seconds))
    return collector.finish()


def _micro_batches(n_ctx: int, n_seqs: int) -> Iterator[tuple[int, int]]:
    """The token ranges [start, stop) of each sequence that llama.cpp's micro-batches hold, in order,
    when `n_seqs` chunks of n_ctx tokens are decoded together (n_ctx > N_BATCH: one chunk, several
    decode batches, each split in micro-batches of N_UBATCH)."""
    per_seq = max(1, N_UBATCH // n_seqs)
    for batch_start in range(0, n_ctx, N_BATCH):
        batch_stop = min(n_ctx, batch_start + N_BATCH)
        for start in range(batch_start, batch_stop, per_seq):
            yield start, min(batch_stop, start + per_seq)


def lossless_gguf(model_dir: Path, out: Path, *, threads: int = 1) -> Path:
    """Convert an HF folder to the GGUF llama.cpp's converter writes by default (BF16 for BF16
    checkpoints, else F16), the model llama-imatrix would be run on."""
    from quantize_cli.convert import write_plan
    from quantize_cli.plan import plan_from_hf
    from quantize_cli.qtypes import file_type

    plan = plan_from_hf(model_dir, file_type("f16"))
    if any(t.source.stored_type == GGMLQuantizationType.BF16 for t in plan.tensors if len(t.shape) >= 2):
        plan = plan_from_hf(model_dir, file_type("bf16"))
    write_plan(plan, out, threads=threads)
    return out


@dataclass(frozen=True)
class Calibration:
    """What `calibrate` returns: the statistics and how they were made."""

    stats: ActivationStats
    n_tokens: int   # tokens of the text
    n_chunk: int    # chunks evaluated
    seconds: float  # evaluation time


def calibrate(
    model_path: Path,
    text: Path,
    *,
    n_ctx: int = 512,
    n_chunk: int | None = None,
    hessians: HessianChoice = False,
    process_output: bool = False,
    previous: ActivationStats | None = None,
    threads: int = 1,
    workdir: Path | None = None,
    on_chunk: Callable[[ChunkProgress], None] | None = None,
    on_status: Callable[[str], None] | None = None,
) -> Calibration:
    """The statistics of a model (an unquantized .gguf file or an HF folder, which is first
    converted to a lossless GGUF in `workdir`) on a UTF-8 text, tokenized and chunked as
    llama-imatrix does. The dataset name recorded is `text` as given."""
    from quantize_cli.runtime.model import load_model
    from quantize_cli.runtime.perplexity import read_text
    from quantize_cli.runtime.tokenizer import Tokenizer

    _check_ctx(n_ctx)
    content = read_text(text)
    with tempfile.TemporaryDirectory(prefix=".qconvert-calibrate-", dir=workdir) as tmp:
        path = Path(model_path)
        if path.is_dir():
            if on_status is not None:
                on_status(f"converting {path} to a lossless GGUF for the forward pass")
            path = lossless_gguf(path, Path(tmp) / "model.gguf", threads=threads)
        net = load_model(path)
        tokenizer = Tokenizer.from_gguf_metadata(net.metadata)
        tokens = np.asarray(tokenizer.encode(content, add_bos=tokenizer.add_bos), dtype=np.int32)
        chunks = min(n_chunk or len(tokens) // n_ctx, len(tokens) // n_ctx)
        if on_status is not None:
            on_status(f"{model_path}: {len(tokens)} tokens of {text}, {chunks} chunks of {n_ctx}")
        seconds = 0.0

        def progress(p: ChunkProgress) -> None:
            nonlocal seconds
            seconds = p.seconds
            if on_chunk is not None:
                on_chunk(p)

        stats = collect(net, tokens, n_ctx=n_ctx, n_chunk=n_chunk,
                        bos_id=tokenizer.bos_id if tokenizer.add_bos else None, process_output=process_output,
                        hessians=hessians, previous=previous,
                        dataset=str(text), threads=threads, source=str(text), on_chunk=progress)
    return Calibration(stats, len(tokens), chunks, seconds)
