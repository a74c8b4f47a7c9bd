"""Calibration: the block codec, the optimizing quantizers, activation statistics and importance
matrix files, against llama.cpp's bytes and tools and on the real SmolLM2 model.

The optimizers are judged by the error they are built to lower, on real weights and real
activations: tr((W - Wq) H (W - Wq)^T) with H = X^T X collected on Emma, against llama.cpp's
importance-matrix quantizer given diag(H) (its imatrix) on the same weights.
"""

from __future__ import annotations

import json
import struct
import subprocess
from pathlib import Path

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType

from quantize_cli import kernels
from quantize_cli.calibration import blocks, optimize, refine
from quantize_cli.calibration.collect import ActivationStats, Collector, calibrate
from quantize_cli.calibration.imatrix_writer import merge_files, read_stats, write_imatrix
from quantize_cli.errors import NonFiniteError
from quantize_cli.formats.imatrix import load_imatrix
from support.cli import qconvert
from support.cli import user_error as error_line
from support.tiny_model import tiny_llama

T = GGMLQuantizationType
TYPES = sorted(blocks.SPECS)
K_TYPES = (T.Q4_K, T.Q5_K, T.Q6_K)
LAYERS = (3, 17)  # layers of SmolLM2 whose H the real-data tests collect


def student_rows(seed: int, shape: tuple[int, int] = (24, 512)) -> np.ndarray:
    rows = np.random.default_rng(seed).standard_t(4, size=shape).astype(np.float32) * np.float32(0.02)
    rows[1, :64] = 0  # an all-zero block and sub-blocks
    return rows


# --------------------------------------------------------------------------- block codec


@pytest.mark.parametrize("with_imatrix", [False, True], ids=["ref", "imatrix"])
@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_unpack_then_pack_gives_llamacpp_bytes_back(qtype: T, with_imatrix: bool) -> None:
    rows = student_rows(1)
    imatrix = np.random.default_rng(2).gamma(1.0, size=rows.shape[1]).astype(np.float32) if with_imatrix else None
    data = kernels.quantize_rows(qtype, rows, imatrix=imatrix)
    levels, fields = blocks.unpack(qtype, data)
    assert levels.max() <= blocks.SPECS[qtype].nmax
    np.testing.assert_array_equal(blocks.pack(qtype, levels, fields), data)
    ours, theirs = blocks.dequantize(qtype, levels, fields), kernels.dequantize_rows(qtype, data, rows.shape[1])
    np.testing.assert_array_equal(ours.view(np.uint32), theirs.view(np.uint32))


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_packed_fields_and_levels_dequantize_to_the_intended_values(qtype: T) -> None:
    """Arbitrary levels and fields (every bit pattern a block may hold) survive packing."""
    spec = blocks.SPECS[qtype]
    rng = np.random.default_rng(3)
    n_rows, n = 8, 512
    n_blocks, per_block = n // spec.block, spec.block // spec.sub
    levels = rng.integers(0, spec.nmax + 1, size=(n_rows, n), dtype=np.uint8)
    d = rng.uniform(1e-4, 1e-2, size=(n_rows, n_blocks)).astype(np.float16).view(np.uint16)
    dmin = rng.uniform(1e-4, 1e-2, size=(n_rows, n_blocks)).astype(np.float16).view(np.uint16) if spec.has_min else None
    sc = mn = None
    if qtype == T.Q6_K:
        sc = rng.integers(-128, 128, size=(n_rows, n_blocks, per_block)).astype(np.int8)
    elif qtype in (T.Q4_K, T.Q5_K):
        sc, mn = (rng.integers(0, 64, size=(n_rows, n_blocks, per_block)).astype(np.uint8) for _ in range(2))
    fields = blocks.Fields(d, dmin, sc, mn)
    data = blocks.pack(qtype, levels, fields)
    assert data.shape == (n_rows, n // spec.block * gguf.GGML_QUANT_SIZES[qtype][1])
    ours, theirs = blocks.dequantize(qtype, levels, fields), kernels.dequantize_rows(qtype, data, n)
    np.testing.assert_array_equal(ours.view(np.uint32), theirs.view(np.uint32))
    back_levels, back_fields = blocks.unpack(qtype, data)
    np.testing.assert_array_equal(back_levels, levels)
    np.testing.assert_array_equal(back_fields.d, d)


def test_pack_rejects_levels_off_the_grid() -> None:
    with pytest.raises(ValueError, match="level 16 is above 15"):
        blocks.pack(T.Q4_0, np.full((1, 32), 16, np.uint8), blocks.Fields(np.zeros((1, 1), np.uint16)))


# --------------------------------------------------------------------------- optimizers, synthetic


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_weighted_search_never_loses_to_llamacpp_on_its_error(qtype: T) -> None:
    rows = student_rows(4)
    importance = np.random.default_rng(5).gamma(0.7, size=rows.shape[1]).astype(np.float32)
    n = rows.shape[1]
    theirs = kernels.dequantize_rows(qtype, kernels.quantize_rows(qtype, rows, imatrix=importance), n)
    ours = kernels.dequantize_rows(qtype, refine.quantize_weighted(qtype, rows, importance), n)
    d_ours, d_theirs = (((rows - q) ** 2).astype(np.float64) @ importance for q in (ours, theirs))
    assert np.all(d_ours <= d_theirs * (1 + 1e-6)), "a row got worse than llama.cpp's"
    assert d_ours.sum() < 0.99 * d_theirs.sum()


def test_gptq_uses_correlations_and_is_independent_of_threads() -> None:
    rng = np.random.default_rng(6)
    n_in = 512
    mix = rng.standard_normal((n_in, n_in)).astype(np.float32) * np.float32(0.3) + np.eye(n_in, dtype=np.float32)
    x = rng.standard_normal((2048, n_in)).astype(np.float32) @ mix  # strongly correlated inputs
    hessian = x.T @ x
    rows = student_rows(7, (64, n_in))
    for qtype in (T.Q4_K, T.Q5_0):
        imatrix = (np.diagonal(hessian) / len(x)).astype(np.float32)
        theirs = kernels.dequantize_rows(qtype, kernels.quantize_rows(qtype, rows, imatrix=imatrix), n_in)
        data = optimize.quantize_gptq(qtype, rows, hessian)
        ours = kernels.dequantize_rows(qtype, data, n_in)
        ratio = optimize.weighted_error(rows, ours, hessian) / optimize.weighted_error(rows, theirs, hessian)
        assert ratio < 0.8, f"{qtype.name}: GPTQ/llama.cpp weighted error {ratio:.3f}"


@pytest.mark.parametrize("qtype", [T.Q4_K, T.Q6_K, T.Q5_1], ids=lambda t: t.name)
def test_act_order_keeps_blocks_and_sub_blocks_contiguous(qtype: T) -> None:
    spec = blocks.SPECS[qtype]
    importance = np.random.default_rng(3).gamma(0.5, size=4 * 256).astype(np.float32)
    perm = optimize.grouped_act_order(spec, importance)
    assert sorted(perm.tolist()) == list(range(importance.size))
    for g in range(0, perm.size, spec.block):
        assert len(set(perm[g:g + spec.block] // spec.block)) == 1
        for s0 in range(g, g + spec.block, spec.sub):
            sub = perm[s0:s0 + spec.sub]
            assert len(set(sub // spec.sub)) == 1
            assert (np.diff(importance[sub]) <= 0).all()  # most important column first
    totals = [importance[perm[g:g + spec.block]].sum() for g in range(0, perm.size, spec.block)]
    assert totals == sorted(totals, reverse=True)


# --------------------------------------------------------------------------- real model


@pytest.fixture(scope="module")
def smol_stats(smollm2_gguf: Path, austen_emma: Path) -> ActivationStats:
    """SmolLM2's statistics on Emma (4 chunks of 256 tokens), H for two layers."""
    want = lambda name, n_in: int(name.split(".")[1]) in LAYERS  # noqa: E731
    return calibrate(smollm2_gguf, austen_emma, n_ctx=256, n_chunk=4, hessians=want, threads=2).stats


@pytest.fixture(scope="module")
def smol_weights(smollm2_gguf: Path) -> dict[str, np.ndarray]:
    """The weights of LAYERS as the F16 checkpoint holds them. They come from a Q4_1 file, so each
    32-block lies near a 16-level grid that Q4_1/Q5_1 can nearly reproduce."""
    reader = gguf.GGUFReader(smollm2_gguf)
    out = {}
    for t in reader.tensors:
        if t.name.startswith(tuple(f"blk.{i}." for i in LAYERS)) and len(t.shape) == 2:
            n_in = int(t.shape[0])
            rows = kernels.dequantize_rows(T(t.tensor_type), np.ascontiguousarray(t.data).reshape(int(t.shape[1]), -1), n_in)
            out[t.name] = rows.astype(np.float16).astype(np.float32)  # the F16 checkpoint `qconvert unpack` writes
    return out


def test_statistics_cover_every_block_matmul(smol_stats: ActivationStats) -> None:
    assert len(smol_stats.sums) == 30 * 7
    assert smol_stats.chunk_count == 4 and smol_stats.chunk_size == 256
    np.testing.assert_array_equal(smol_stats.sums["blk.5.attn_q.weight"], smol_stats.sums["blk.5.attn_v.weight"])
    np.testing.assert_array_equal(smol_stats.sums["blk.5.ffn_gate.weight"], smol_stats.sums["blk.5.ffn_up.weight"])
    assert smol_stats.sums["blk.5.ffn_down.weight"].shape == (1536,)
    assert all(int(c[0]) == 1024 for c in smol_stats.counts.values())
    assert set(smol_stats.hessians) == {f"blk.{i}.{k}.weight" for i in LAYERS for k in
                                        ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")}
    h = smol_stats.hessians["blk.3.ffn_down.weight"]
    np.testing.assert_allclose(np.diagonal(h), smol_stats.sums["blk.3.ffn_down.weight"], rtol=1e-3)


CASES = [("attn_q", T.Q5_0), ("attn_v", T.Q8_0), ("ffn_up", T.Q5_1), ("attn_output", T.Q4_0),
         ("ffn_down", T.Q4_K), ("ffn_down", T.Q5_K), ("ffn_down", T.Q6_K)]


@pytest.mark.slow
@pytest.mark.parametrize("kind,qtype", CASES, ids=[f"{k}-{t.name}" for k, t in CASES])
def test_optimizers_beat_llamacpp_imatrix_on_real_tensors(kind: str, qtype: T, smol_stats: ActivationStats,
                                                          smol_weights: dict[str, np.ndarray]) -> None:
    for layer in LAYERS:
        name = f"blk.{layer}.{kind}.weight"
        w, hessian, imatrix = smol_weights[name], smol_stats.hessian(name), smol_stats.importance(name)
        n = w.shape[1]

        def deq(data: np.ndarray) -> np.ndarray:
            return kernels.dequantize_rows(qtype, data, n)
        theirs = deq(kernels.quantize_rows(qtype, w, imatrix=imatrix))
        plan_source = optimize.OptimizedRows(_Rows(w), qtype, name=name, hessian=hessian, imatrix=imatrix)
        gptq = deq(plan_source.read(0, w.shape[0]))
        weighted = deq(refine.quantize_weighted(qtype, w, imatrix))
        base = optimize.weighted_error(w, theirs, hessian)
        bound = 1.0 if qtype == T.Q5_1 else 0.9  # Q5_1 can hold the Q4_1 grid: little to gain there
        assert optimize.weighted_error(w, gptq, hessian) <= bound * base, f"{name} {qtype.name}: GPTQ"
        assert optimize.weighted_error(w, weighted, imatrix) <= optimize.weighted_error(w, theirs, imatrix), \
            f"{name} {qtype.name}: importance-weighted search"


class _Rows:
    """A RowSource over float32 rows in memory."""

    def __init__(self, rows: np.ndarray) -> None:
        self.rows, self.shape, self.stored_type, self.row_group = rows, rows.shape, T.F32, 1

    def read(self, start: int, stop: int) -> np.ndarray:
        return self.rows[start:stop]


def test_optimized_bytes_do_not_depend_on_threads(smol_stats: ActivationStats,
                                                  smol_weights: dict[str, np.ndarray]) -> None:
    name = "blk.17.ffn_up.weight"
    w, hessian = smol_weights[name], smol_stats.hessians[name]
    outs = [optimize.OptimizedRows(_Rows(w), T.Q5_0, name=name, hessian=hessian, imatrix=smol_stats.importance(name),
                                   threads=threads).read(0, w.shape[0]) for threads in (1, 2)]
    np.testing.assert_array_equal(outs[0], outs[1])


# --------------------------------------------------------------------------- imatrix files


def test_imatrix_files_read_back_by_the_loader(smol_stats: ActivationStats, tmp_path: Path) -> None:
    gguf_path, dat_path = tmp_path / "x.imatrix.gguf", tmp_path / "x.dat"
    write_imatrix(smol_stats, gguf_path)
    write_imatrix(smol_stats, dat_path, fmt="dat")
    direct = smol_stats.importance_matrix(str(gguf_path))  # what --calibrate hands the planner
    for path in (gguf_path, dat_path):
        loaded = load_imatrix(str(path))
        assert loaded.chunk_count == 4 and loaded.datasets == smol_stats.datasets == direct.datasets
        assert set(loaded.entries) == set(smol_stats.sums) == set(direct.entries)
        for name in ("blk.0.attn_k.weight", "blk.29.ffn_down.weight"):
            if path == gguf_path:  # the file round trip gives the very same floats
                np.testing.assert_array_equal(loaded.entries[name], direct.entries[name])
            else:  # (sum / count) * ncall / ncall: within an ulp
                np.testing.assert_allclose(loaded.entries[name], direct.entries[name], rtol=1e-6)
    assert direct.kvs() == load_imatrix(str(gguf_path)).kvs()
    raw, datasets = read_stats(gguf_path, chunk_size=256)
    np.testing.assert_array_equal(raw["blk.3.ffn_down.weight"][0], smol_stats.sums["blk.3.ffn_down.weight"])
    merged = merge_files([gguf_path, gguf_path], chunk_size=256)
    assert merged.chunk_count == 8 and merged.datasets == datasets * 2
    assert int(merged.counts["blk.3.ffn_down.weight"][0]) == 2048


def test_collector_names_the_layer_with_non_finite_activations() -> None:
    collector = Collector(ActivationStats(), process_output=False)
    collector.location = "chunk 3 of emma.txt"
    x = np.ones((32, 8), np.float32)
    collector.observe(x, ("blk.0.attn_q.weight", "blk.0.attn_k.weight"))
    x[5, 2] = np.inf
    with pytest.raises(NonFiniteError, match=r"blk\.0\.attn_q\.weight: non-finite activations in chunk 3 of emma"):
        collector.observe(x, ("blk.0.attn_q.weight", "blk.0.attn_k.weight"))


def test_collector_skips_small_batches_and_foreign_weights() -> None:
    collector = Collector(ActivationStats(), process_output=False)
    collector.observe(np.ones((15, 8), np.float32), ("blk.0.attn_q.weight",))
    collector.observe(np.ones((16, 8), np.float32), ("output.weight",))
    assert collector.finish().sums == {}


# --------------------------------------------------------------------------- CLI: bad inputs


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, austen_tokenizer) -> Path:
    return tiny_llama(tmp_path_factory.mktemp("tiny") / "Tiny-Llama", tokenizer_model=austen_tokenizer)


def test_cli_imatrix_on_an_hf_folder(tiny: Path, austen_emma: Path, tmp_path: Path) -> None:
    out = tmp_path / "tiny.imatrix.gguf"
    proc = qconvert("imatrix", str(tiny), "--text", str(austen_emma), "--ctx", "64", "--chunks", "3", "-o", str(out),
                    "--json")
    assert proc.returncode == 0, proc.stderr
    loaded = load_imatrix(str(out))
    assert len(loaded.entries) == 2 * 7 and loaded.chunk_count == 3
    assert [p.name for p in tmp_path.iterdir()] == [out.name], "the temporary GGUF was left behind"


def test_cli_text_too_short_for_the_context(tiny: Path, tmp_path: Path) -> None:
    text = tmp_path / "short.txt"
    text.write_text("It is a truth universally acknowledged.\n")
    proc = qconvert("imatrix", str(tiny), "--text", str(text), "-o", str(tmp_path / "x.gguf"))
    line = error_line(proc)
    assert "short.txt" in line and "needs at least 1024" in line
    assert not (tmp_path / "x.gguf").exists()


def test_cli_previous_imatrix_of_another_model(tiny: Path, austen_emma: Path, tmp_path: Path) -> None:
    other = ActivationStats(sums={"blk.0.attn_q.weight": np.ones(96, np.float32)},
                            counts={"blk.0.attn_q.weight": np.array([512])}, datasets=["x.txt"], chunk_count=1)
    prev = write_imatrix(other, tmp_path / "other.gguf")
    proc = qconvert("imatrix", str(tiny), "--text", str(austen_emma), "--ctx", "64", "--chunks", "2",
                    "--in-file", str(prev), "-o", str(tmp_path / "x.gguf"))
    line = error_line(proc)
    assert "blk.0.attn_q.weight" in line and "96 values" in line and "64" in line


def test_cli_non_finite_activations_name_the_layer(austen_tokenizer: Path, austen_emma: Path, tmp_path: Path) -> None:
    broken = tiny_llama(tmp_path / "Broken", tokenizer_model=austen_tokenizer)
    _overwrite_f32(broken / "model.safetensors", "model.layers.1.post_attention_layernorm.weight", 3e38)
    proc = qconvert("imatrix", str(broken), "--text", str(austen_emma), "--ctx", "64", "--chunks", "2",
                    "-o", str(tmp_path / "x.gguf"))
    line = error_line(proc)
    assert "blk.1.ffn_gate.weight" in line and "non-finite activations" in line and "chunk 1" in line
    assert not (tmp_path / "x.gguf").exists()


def _overwrite_f32(path: Path, name: str, value: float) -> None:
    """Set every element of an F32 safetensors tensor to `value`, in place."""
    raw = bytearray(path.read_bytes())
    (size,) = struct.unpack_from("<Q", raw)
    header = json.loads(raw[8:8 + size])
    begin, end = header[name]["data_offsets"]
    n = (end - begin) // 4
    raw[8 + size + begin:8 + size + end] = np.full(n, value, "<f4").tobytes()
    path.write_bytes(bytes(raw))


def test_cli_imatrix_option_errors(tiny: Path, tmp_path: Path) -> None:
    assert "--text" in error_line(qconvert("imatrix", str(tiny), "-o", str(tmp_path / "x.gguf")))
    assert "--format" in error_line(qconvert("imatrix", "--in-file", "a.gguf", "-o", str(tmp_path / "x.gguf"),
                                             "--format", "bin"))
    assert "imatrix file not found" in error_line(qconvert("imatrix", "--in-file", str(tmp_path / "none.gguf"),
                                                           "-o", str(tmp_path / "x.gguf")))
    text = tmp_path / "t.txt"
    text.write_text("Emma Woodhouse, handsome, clever, and rich.")
    assert "at least 16 tokens" in error_line(qconvert("imatrix", str(tiny), "--text", str(text), "--ctx", "8",
                                                       "-o", str(tmp_path / "x.gguf")))


# --------------------------------------------------------------------------- llama.cpp


@pytest.mark.oracle
def test_writer_and_merge_are_byte_identical_to_llama_imatrix(llamacpp, smollm2_gguf: Path, austen_emma: Path,
                                                              tmp_path: Path) -> None:
    ref_gguf = llamacpp.imatrix(smollm2_gguf, austen_emma, out=tmp_path / "ref.gguf", ctx=128, chunks=2)
    ref_dat = llamacpp.imatrix(smollm2_gguf, austen_emma, out=tmp_path / "ref.dat", ctx=128, chunks=2,
                               output_format="dat")
    stats = merge_files([ref_gguf], chunk_size=128)
    assert write_imatrix(stats, tmp_path / "ours.gguf").read_bytes() == ref_gguf.read_bytes()
    assert write_imatrix(stats, tmp_path / "ours.dat", fmt="dat").read_bytes() == ref_dat.read_bytes()
    merged = tmp_path / "merged.gguf"  # llama-imatrix with no text only merges (it still wants -m)
    subprocess.run([str(llamacpp.tool("llama-imatrix")), "-m", str(smollm2_gguf), "-c", "128", "--in-file", str(ref_gguf),
                    "--in-file", str(ref_dat), "-o", str(merged)], check=True, capture_output=True)
    proc = qconvert("imatrix", "--in-file", str(ref_gguf), "--in-file", str(ref_dat), "--ctx", "128",
                    "-o", str(tmp_path / "ours-merged.gguf"))
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "ours-merged.gguf").read_bytes() == merged.read_bytes()


@pytest.mark.oracle
def test_statistics_agree_with_llama_imatrix(llamacpp, smollm2_gguf: Path, austen_emma: Path, tmp_path: Path) -> None:
    """Same entries, keys and counts; the first layer's attention input (embedding + RMSNorm, the
    same floats in both runtimes) gives bit-identical sums, so the accumulation order is
    llama-imatrix's. Deeper inputs differ as far as the two forward passes do (about 1% by the
    last layers of this Q4_1 model)."""
    ref = llamacpp.imatrix(smollm2_gguf, austen_emma, out=tmp_path / "ref.gguf", ctx=128, chunks=2)
    proc = qconvert("imatrix", str(smollm2_gguf), "--text", str(austen_emma), "--ctx", "128", "--chunks", "2",
                    "-o", str(tmp_path / "ours.gguf"))
    assert proc.returncode == 0, proc.stderr
    theirs, ours = gguf.GGUFReader(ref), gguf.GGUFReader(tmp_path / "ours.gguf")
    assert [(t.name, t.shape.tolist()) for t in ours.tensors] == [(t.name, t.shape.tolist()) for t in theirs.tensors]
    for key in ("general.type", "imatrix.datasets", "imatrix.chunk_count", "imatrix.chunk_size"):
        assert ours.fields[key].contents() == theirs.fields[key].contents(), key
    rel = []
    for a, b in zip(ours.tensors, theirs.tensors):
        x, y = np.asarray(a.data), np.asarray(b.data)
        if a.name.endswith(".counts") or a.name.startswith(("blk.0.attn_q", "blk.0.attn_k", "blk.0.attn_v")):
            np.testing.assert_array_equal(x, y, err_msg=a.name)
        else:
            rel.append(np.abs(x.astype(np.float64) - y) / np.maximum(np.abs(y), 1e-30))
    rel = np.concatenate(rel)
    assert np.median(rel) < 0.01 and rel.max() < 0.5, (np.median(rel), rel.max())


def _relative_differences(ours: Path, theirs: Path) -> np.ndarray:
    """|ours - theirs| / |theirs| over every in_sum2 value, after checking names and exact counts."""
    a, b = gguf.GGUFReader(ours), gguf.GGUFReader(theirs)
    assert [t.name for t in a.tensors] == [t.name for t in b.tensors]
    rel = []
    for x, y in zip(a.tensors, b.tensors):
        u, v = np.asarray(x.data, np.float64), np.asarray(y.data, np.float64)
        if x.name.endswith(".counts"):
            np.testing.assert_array_equal(u, v, err_msg=x.name)
        else:
            rel.append(np.abs(u - v) / np.maximum(np.abs(v), 1e-30))
    return np.concatenate(rel)


@pytest.mark.oracle
def test_f16_statistics_are_as_close_to_llama_imatrix_as_its_own_attention_variants(
        llamacpp, smollm2_gguf: Path, austen_emma: Path, tmp_path: Path) -> None:
    """SmolLM2 F16, ctx 512, 3 chunks: one decode batch of three sequences, whose micro-batches hold
    170 tokens of each and then 2 of each, 6 rows that llama-imatrix does not count. Counts and the
    inputs of layer 0's attention are exact (same rows, same order of float additions). The other
    entries cannot be bit-identical: llama.cpp's own two attention paths (-fa on, its default here,
    and -fa off) disagree with each other by as much as we disagree with either. Measured on the
    first 100 KB of Emma (48 chunks): ours vs llama-imatrix median 1.6e-5, 99th percentile 2e-4;
    Q4_K_M with either file differs in 0.13% of blocks, as with -fa on vs -fa off."""
    hf = tmp_path / "SmolLM2"
    assert qconvert("unpack", str(smollm2_gguf), "--outdir", str(hf)).returncode == 0
    f16 = tmp_path / "smol-f16.gguf"
    assert qconvert(str(hf), "--type", "f16", "-o", str(f16)).returncode == 0
    refs = {fa: llamacpp.imatrix(f16, austen_emma, out=tmp_path / f"fa-{fa}.gguf", ctx=512, chunks=3,
                                 extra_args=("-fa", fa)) for fa in ("on", "off")}
    proc = qconvert("imatrix", str(f16), "--text", str(austen_emma), "--chunks", "3", "-o", str(tmp_path / "ours.gguf"))
    assert proc.returncode == 0, proc.stderr
    ours = _relative_differences(tmp_path / "ours.gguf", refs["on"])
    theirs = _relative_differences(refs["off"], refs["on"])
    assert np.median(ours) < 1e-4 and np.quantile(ours, 0.99) < 1e-3, (np.median(ours), np.quantile(ours, 0.99))
    for q in (0.5, 0.9, 0.99):
        assert np.quantile(ours, q) < 2 * np.quantile(theirs, q), (q, np.quantile(ours, q), np.quantile(theirs, q))
    ours_file, theirs_file = gguf.GGUFReader(tmp_path / "ours.gguf"), gguf.GGUFReader(refs["on"])
    assert ours_file.get_tensor(1).name == "blk.0.attn_k.weight.counts"
    assert ours_file.get_tensor(1).data[0] == 3 * 512 - 6
    for i in (0, 4, 6):  # blk.0.attn_k, attn_q, attn_v: embedding + RMSNorm only
        assert ours_file.get_tensor(i).name.startswith("blk.0.attn_")
        np.testing.assert_array_equal(ours_file.get_tensor(i).data, theirs_file.get_tensor(i).data)


@pytest.mark.oracle
def test_llamacpp_reads_our_imatrix_and_runs_our_optimized_blocks(llamacpp, smollm2_gguf: Path, austen_emma: Path,
                                                                  austen_pride: Path, tmp_path: Path) -> None:
    from quantize_cli.convert import write_plan
    from quantize_cli.plan import plan_from_gguf
    from quantize_cli.qtypes import file_type

    stats = calibrate(smollm2_gguf, austen_emma, n_ctx=128, n_chunk=4, hessians=True, threads=2).stats
    imatrix = write_imatrix(stats, tmp_path / "smol.imatrix.gguf")
    # llama-quantize takes the file, and quantizes exactly as qconvert does with it
    theirs = llamacpp.quantize(smollm2_gguf, tmp_path / "theirs.gguf", "Q4_K_M", imatrix=imatrix,
                               extra_args=("--allow-requantize",))
    ours = qconvert(str(smollm2_gguf), "--type", "q4_k_m", "--imatrix", str(imatrix), "--allow-requantize",
                    "-o", str(tmp_path / "ours.gguf"))
    assert ours.returncode == 0, ours.stderr
    assert (tmp_path / "ours.gguf").read_bytes() == theirs.read_bytes()
    # optimized standard blocks: llama.cpp loads and runs them
    plan = plan_from_gguf(smollm2_gguf, file_type("q4_k_m"), imatrix=stats.importance_matrix(str(imatrix)),
                          allow_requantize=True)
    plan, methods = optimize.optimize_plan(plan, stats, threads=2)
    assert len(methods) == 30 * 7 and set(methods.values()) == {"gptq"}
    write_plan(plan, tmp_path / "optimized.gguf", threads=2)
    result = llamacpp.perplexity(tmp_path / "optimized.gguf", austen_pride, ctx=128, chunks=2)
    assert result.ppl is not None and 1 < result.ppl < 100
