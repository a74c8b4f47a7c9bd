"""llama-perplexity's perplexity and KL-divergence runs over the CPU model (notes 6.2, 6.3).

The text is cut into non-overlapping chunks of n_ctx tokens (a trailing partial chunk is dropped).
Each chunk is evaluated from an empty KV cache, with its first token replaced by BOS in the model
input when the vocabulary adds BOS. The positions first = n_ctx/2 .. n_ctx-2 each predict the next
token: those n_ctx-1-first tokens per chunk are scored; the first half only gives context.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from quantize_cli.errors import InputError, OptionError
from quantize_cli.runtime.kld import KLDivergence, LogitsFile, LogitsWriter, log_prob_records, record_size, scored_per_chunk, token_nll
from quantize_cli.runtime.model import Model, RunState, forward


def read_text(path: Path) -> str:
    """The text as llama-perplexity's `-f` reads it (common/arg.cpp): the whole file, with one
    trailing newline dropped."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except OSError as e:
        raise InputError(f"{path}: cannot read: {e.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not UTF-8 text (byte {e.start})", hint="convert the file to UTF-8") from None
    return text[:-1] if text.endswith("\n") else text


@dataclass(frozen=True)
class ChunkReport:
    """Sent to `on_chunk` after each chunk."""

    index: int                 # 1-based
    n_chunk: int
    ppl: float                 # running perplexity over the chunks so far
    kld: dict[str, tuple[float, float]] | None  # running KLD line (KLD runs only), see KLDivergence.running
    tokens: int                # tokens evaluated so far (both models in a --base run)
    seconds: float             # evaluation time so far


@dataclass(frozen=True)
class PerplexityResult:
    n_ctx: int
    n_chunk: int
    count: int                 # scored tokens
    ppl: float
    ppl_error: float           # llama-perplexity's "+/-" term
    chunks: list[float]        # running perplexity after each chunk: the "[1]..,[2].." list
    tokens: int                # tokens evaluated (both models in a --base run)
    seconds: float             # evaluation time (tokenization and loading excluded)
    kld: dict[str, tuple[float, float | None]] | None  # KLDivergence.report() in KLD runs

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "n_ctx": self.n_ctx, "n_chunk": self.n_chunk, "scored_tokens": self.count,
            "ppl": self.ppl, "ppl_error": self.ppl_error, "chunks": self.chunks,
            "evaluated_tokens": self.tokens, "seconds": round(self.seconds, 3),
            "tokens_per_second": round(self.tokens_per_second, 1),
        }
        if self.kld is not None:
            doc["kld"] = {label: {"value": v, "error": u} for label, (v, u) in self.kld.items()}
        return doc


class Evaluator:
    """One model's logits for the scored positions of a chunk, in batches of up to n_batch tokens."""

    def __init__(self, model: Model, *, n_ctx: int, n_batch: int, bos_id: int | None, threads: int) -> None:
        self.model, self.n_ctx, self.bos_id, self.threads = model, n_ctx, bos_id, threads
        self.first = n_ctx // 2
        n_eval = n_ctx - 1  # the last position predicts nothing that is scored: never evaluated
        n_scored = scored_per_chunk(n_ctx)
        self.n_batch = min(n_batch, n_eval)
        self.state = RunState(model.config, n_ctx=n_eval, n_batch=self.n_batch,
                              n_logits=min(self.n_batch, n_scored))
        # (n_scored, n_vocab) gathered over several batches; one batch returns its own view
        self.gathered = None if self.n_batch == n_eval else np.empty((n_scored, model.config.n_vocab), np.float32)

    def logits(self, chunk: np.ndarray) -> np.ndarray:
        """Logits (n_ctx-1-first, n_vocab) of positions first..n_ctx-2 of `chunk` (n_ctx tokens)."""
        inputs = np.array(chunk[: self.n_ctx - 1], dtype=np.int32)
        if self.bos_id is not None:
            inputs[0] = self.bos_id
        for b0 in range(0, len(inputs), self.n_batch):
            b1 = min(len(inputs), b0 + self.n_batch)
            skip = min(b1 - b0, max(0, self.first - b0))  # batch rows before `first` need no logits
            out = forward(self.model, self.state, inputs[b0:b1], b0, logits_from=skip, threads=self.threads)
            if self.gathered is not None and len(out):
                row = b0 + skip - self.first
                self.gathered[row:row + len(out)] = out
        return out if self.gathered is None else self.gathered


def run_perplexity(
    model: Model,
    tokens: np.ndarray,
    *,
    n_ctx: int = 512,
    n_chunk: int | None = None,
    n_batch: int | None = None,
    threads: int = 1,
    bos_id: int | None = None,
    base: Model | LogitsFile | None = None,
    base_bos_id: int | None = None,
    save_logits: Path | None = None,
    source: str = "text",
    on_chunk: Callable[[ChunkReport], None] | None = None,
) -> PerplexityResult:
    """Perplexity of `model` on `tokens` (int32, BOS included where the vocabulary adds one).

    base: a base model run on the same chunks, or a logits file (then `tokens` and `n_ctx` must be
    the file's): the run also computes llama-perplexity's KL-divergence statistics against it.
    save_logits: write a logits file of the base model (or of `model` when there is no base model).
    bos_id / base_bos_id: substituted for each chunk's first token in the model input, or None.
    source: names the text in error messages.
    """
    tokens = np.asarray(tokens, dtype=np.int32)
    n_vocab = model.config.n_vocab
    if n_ctx < 4:
        raise OptionError(f"--ctx {n_ctx}: the context must hold at least 4 tokens")
    _check_base(model, base)
    if isinstance(base, LogitsFile):
        if save_logits is not None:
            raise OptionError("--save-logits cannot be combined with --kld-base: the base logits exist already")
        if base.n_ctx != n_ctx:
            raise OptionError(f"{base.path} was computed with a context of {base.n_ctx}, not {n_ctx}",
                              hint=f"drop --ctx, or pass --ctx {base.n_ctx}")
        n_available = min(len(tokens) // n_ctx, base.n_chunk)
    elif len(tokens) < 2 * n_ctx:
        raise InputError(f"{source}: {len(tokens)} tokens; perplexity with a context of {n_ctx} needs at least "
                         f"{2 * n_ctx}", hint="use a longer text or a smaller --ctx")
    else:
        n_available = len(tokens) // n_ctx
    if n_available < 1:
        raise InputError(f"{source}: {len(tokens)} tokens, less than one chunk of {n_ctx}")
    if tokens.min() < 0 or tokens.max() >= n_vocab:
        raise InputError(f"{source}: token id {int(tokens.max())} is outside the vocabulary of {model.path} "
                         f"({n_vocab} tokens)")
    n_chunk = min(n_chunk or n_available, n_available)
    if isinstance(base, LogitsFile) and not np.array_equal(tokens[: n_chunk * n_ctx], base.tokens[: n_chunk * n_ctx]):
        raise InputError(f"{base.path}: its tokens are not this text's tokens",
                         hint="use the text and model family the base file was made with")

    n_batch = n_batch or n_ctx
    first, n_scored = n_ctx // 2, scored_per_chunk(n_ctx)
    evaluator = Evaluator(model, n_ctx=n_ctx, n_batch=n_batch, bos_id=bos_id, threads=threads)
    base_evaluator = (Evaluator(base, n_ctx=n_ctx, n_batch=n_batch, bos_id=base_bos_id, threads=threads)
                      if isinstance(base, Model) else None)
    records = np.empty((n_scored, record_size(n_vocab)), np.uint16) if base is not None or save_logits else None
    writer = (LogitsWriter(save_logits, n_ctx=n_ctx, n_vocab=n_vocab, n_chunk=n_chunk, tokens=tokens)
              if save_logits is not None else None)
    kld = KLDivergence() if base is not None else None
    nll_sum = nll2_sum = 0.0
    count = evaluated = 0
    running: list[float] = []
    seconds = 0.0
    try:
        for c in range(n_chunk):
            t0 = time.perf_counter()
            chunk = tokens[c * n_ctx:(c + 1) * n_ctx]
            targets = chunk[first + 1:]
            if base_evaluator is not None:
                log_prob_records(base_evaluator.logits(chunk), targets, records)
                evaluated += n_ctx
                reference = records
            else:
                reference = base.records[c] if isinstance(base, LogitsFile) else None
            logits = evaluator.logits(chunk)
            evaluated += n_ctx
            if reference is None:
                nll = log_prob_records(logits, targets, records) if writer else token_nll(logits, targets)
                if writer:
                    writer.write_records(records)
                nll_sum += float(nll.sum())
                nll2_sum += float((nll * nll).sum())
                count += n_scored
                running.append(math.exp(nll_sum / count))
            else:
                if writer:
                    writer.write_records(reference)
                kld.add(logits, reference, targets)
                running.append(kld.running()["ppl"][0])
            seconds += time.perf_counter() - t0
            if on_chunk is not None:
                on_chunk(ChunkReport(c + 1, n_chunk, running[-1], kld.running() if kld else None, evaluated, seconds))
    except BaseException:
        if writer:
            writer.discard()
        raise
    if writer:
        writer.commit()

    if kld is not None:
        report = kld.report()
        ppl, ppl_error = report["Mean PPL(Q)"]
        count = kld.count
    else:
        report = None
        mean, mean2 = nll_sum / count, nll2_sum / count
        ppl = math.exp(mean)
        var = mean2 - mean * mean
        ppl_error = math.sqrt(var / (count - 1)) * ppl if var > 0 else math.nan
    return PerplexityResult(n_ctx=n_ctx, n_chunk=n_chunk, count=count, ppl=ppl, ppl_error=ppl_error,
                            chunks=running, tokens=evaluated, seconds=seconds, kld=report)


def check_same_vocabulary(model: Model, base: Model) -> None:
    """A base model must share the vocabulary, or the KL-divergence means nothing."""
    ours, theirs = model.metadata.get("tokenizer.ggml.tokens"), base.metadata.get("tokenizer.ggml.tokens")
    if base.config.n_vocab != model.config.n_vocab or (ours is not None and theirs is not None and ours != theirs):
        raise InputError(f"{base.path}: its vocabulary ({base.config.n_vocab} tokens) differs from that of "
                         f"{model.path} ({model.config.n_vocab} tokens)",
                         hint="the base must be the same model in another type (e.g. F16 or Q8_0)")


def _check_base(model: Model, base: Model | LogitsFile | None) -> None:
    if isinstance(base, Model):
        check_same_vocabulary(model, base)
    elif isinstance(base, LogitsFile) and base.n_vocab != model.config.n_vocab:
        raise InputError(f"{base.path}: logits of a {base.n_vocab}-token vocabulary, but {model.path} has "
                         f"{model.config.n_vocab} tokens", hint="the base file must come from the same model family")
