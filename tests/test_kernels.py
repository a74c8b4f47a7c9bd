"""The C kernels against llama.cpp's bytes, gguf-py's numpy codecs and hand-worked blocks.

Known-answer vectors (tests/data/kernel_vectors/) hold llama.cpp's output for hand-built and random
rows; tests/support/kernel_vectors.py regenerates them. The `oracle` test compiles llama.cpp's
quantizers (source fetched on first use, like every oracle test) and compares on fresh random rows.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from quantize_cli import kernels
from quantize_cli.errors import UnsupportedError
from quantize_cli.kernels import dequantize_rows, quantize_rows, widen_to_f32
from support import kernel_vectors as kv
from support import llamacpp

T = GGMLQuantizationType
QUANTIZED = (T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.Q4_K, T.Q5_K, T.Q6_K)
GGUF_PY_QUANTIZES = (T.F16, T.BF16, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0)


INPUTS = np.load(kv.DATA_DIR / "inputs.npz")
EXPECTED = np.load(kv.DATA_DIR / "expected.npz")


def assert_same_bytes(ours: np.ndarray, theirs: np.ndarray, what: str) -> None:
    assert ours.shape == theirs.shape, f"{what}: shape {ours.shape} != {theirs.shape}"
    diff = np.argwhere(ours != theirs)
    if diff.size:
        r, c = diff[0]
        pytest.fail(f"{what}: {len(diff)} bytes differ, first at row {r} byte {c}: {ours[r, c]} != {theirs[r, c]}")


def assert_same_floats(ours: np.ndarray, theirs: np.ndarray, what: str) -> None:
    assert ours.dtype == theirs.dtype == np.float32 and ours.shape == theirs.shape, what
    ours_bits, theirs_bits = ours.view(np.uint32), theirs.view(np.uint32)
    both_nan = np.isnan(ours) & np.isnan(theirs)
    bad = np.argwhere((ours_bits != theirs_bits) & ~both_nan)
    if bad.size:
        i = tuple(bad[0])
        pytest.fail(f"{what}: {len(bad)} values differ, first at {i}: {ours[i]!r} != {theirs[i]!r}")


def gaussian_rows(seed: int, shape: tuple[int, int] = (16, 512), scale: float = 0.02) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, scale, shape).astype(np.float32)


# --------------------------------------------------------------------------- tables


@pytest.mark.parametrize("qtype", sorted(kernels.SUPPORTED), ids=lambda t: t.name)
def test_c_block_structs_match_gguf_table(qtype: GGMLQuantizationType) -> None:
    assert kernels.block_struct_size(qtype) == GGML_QUANT_SIZES[qtype]


def test_vectors_cover_every_type_and_path() -> None:
    keys = set(EXPECTED.files)
    for qtype in kv.TYPES:
        for case in ("zeros", "constant", "outlier", "zero_subblock", "ties", "gaussian", "student_t"):
            assert kv.expected_key(qtype, case, False) in keys
            if qtype in kv.IMATRIX_TYPES:
                assert kv.expected_key(qtype, case, True) in keys
    for qtype in (T.F16, T.BF16):
        assert kv.expected_key(qtype, "fp_specials", False) in keys


# --------------------------------------------------------------------------- llama.cpp's bytes


@pytest.mark.parametrize("key", EXPECTED.files)
def test_matches_llamacpp_known_answer(key: str) -> None:
    type_name, case, path = key.split("__")
    x = INPUTS[f"x__{case}"]
    imatrix = INPUTS[f"imatrix__{case}"] if path == "imat" else None
    assert_same_bytes(quantize_rows(T[type_name], x, imatrix=imatrix), EXPECTED[key], key)


@pytest.mark.parametrize("qtype", kv.IMATRIX_TYPES, ids=lambda t: t.name)
def test_imatrix_path_differs_from_reference_path(qtype: GGMLQuantizationType) -> None:
    # Guards the vectors themselves: if both paths gave the same bytes the imatrix tests would
    # not tell a missing imatrix from a used one.
    ref = EXPECTED[kv.expected_key(qtype, "student_t", False)]
    imat = EXPECTED[kv.expected_key(qtype, "student_t", True)]
    assert not np.array_equal(ref, imat)


@pytest.mark.oracle
def test_matches_llamacpp_on_fresh_random_rows(tmp_path: Path) -> None:
    harness = kv.Harness(kv.find_llama_cpp() or llamacpp.source_dir(), tmp_path)
    rng = np.random.default_rng()
    seed = int(rng.integers(2**31))
    rng = np.random.default_rng(seed)
    n = 1024
    sets = {
        "gaussian": rng.normal(0, 0.02, (64, n)),
        "student_t": 0.02 * rng.standard_t(2.5, (64, n)),
        "sub_block_scales": rng.normal(0, 1, (32, n)) * np.repeat(np.exp(rng.normal(0, 3, (32, n // 16))), 16, 1),
        "grid": np.round(rng.normal(0, 8, (32, n))) / 4,
    }
    for name, x in sets.items():
        x = x.astype(np.float32)
        imatrix = kv.make_imatrix(rng, n)
        for qtype in kv.TYPES:
            for im in (None, imatrix) if qtype in kv.IMATRIX_TYPES else (None,):
                what = f"{qtype.name} {name} imatrix={im is not None} seed={seed}"
                ours = quantize_rows(qtype, x, imatrix=im, threads=2)
                assert_same_bytes(ours, harness.quantize(qtype, x, im), what)
                assert_same_floats(dequantize_rows(qtype, ours, n), harness.dequantize(qtype, ours, n), what)

    # The committed vectors are what the generator produces today.
    kv.generate(harness, tmp_path / "vectors")
    regenerated = np.load(tmp_path / "vectors" / "expected.npz")
    assert sorted(regenerated.files) == sorted(EXPECTED.files)
    for key in EXPECTED.files:
        assert_same_bytes(regenerated[key], EXPECTED[key], f"regenerated {key}")


# --------------------------------------------------------------------------- hand-worked blocks


def test_q8_0_rounds_half_away_from_zero() -> None:
    # amax = 127 -> d = 1, id = 1: x*id lands exactly on the ties.
    x = np.zeros((1, 32), np.float32)
    x[0, :8] = [127, 0.5, -0.5, 1.5, 2.5, -2.5, 126.5, 0.49999997]
    q = quantize_rows(T.Q8_0, x)
    assert q[0, :2].view(np.float16)[0] == 1.0
    assert list(q[0, 2:10].view(np.int8)) == [127, 1, -1, 2, 3, -3, 127, 0]


def test_q4_0_truncates_after_adding_8_5() -> None:
    # max by |x| is -8 -> d = 1: q = min(15, trunc(x + 8.5)).
    x = np.zeros((1, 32), np.float32)
    x[0, :6] = [-8, 7.0, -0.5, 0.49, 6.5, -7.6]
    x[0, 16] = 7.6
    q = quantize_rows(T.Q4_0, x)
    assert q[0, :2].view(np.float16)[0] == 1.0
    nibbles = [q[0, 2 + j] & 15 for j in range(6)]
    assert nibbles == [0, 15, 8, 8, 15, 0]  # 7.0+8.5 -> 15; -0.5+8.5 = 8.0 -> 8; -7.6+8.5 = 0.9 -> 0
    assert q[0, 2] >> 4 == 15  # element 16 (7.6 + 8.5 = 16.1 -> 16 -> min 15) is the high nibble of byte 0


def test_zero_rows_dequantize_to_zero() -> None:
    x = np.zeros((2, 256), np.float32)
    for qtype in QUANTIZED:
        for imatrix in (None, np.ones(256, np.float32)):
            q = quantize_rows(qtype, x, imatrix=imatrix)
            assert not dequantize_rows(qtype, q, 256).any(), qtype.name
    # Q4_0 ref: d = 0 / -8 = -0.0 (fp16 0x8000) and every nibble is trunc(0 + 8.5) = 8.
    q = quantize_rows(T.Q4_0, np.zeros((1, 32), np.float32))
    assert q[0, :2].view(np.uint16)[0] == 0x8000 and set(q[0, 2:].tolist()) == {0x88}


def test_q4_k_zero_scale_sub_block_keeps_search_levels() -> None:
    # Sub-block 1 is tiny next to sub-block 0: its 6-bit scale rounds to 0, so its nibbles keep the
    # levels of the first search (ggml `if (!d) continue`) instead of being re-derived (0 or 15).
    rng = np.random.default_rng(3)
    x = np.zeros((1, 256), np.float32)
    x[0, :32] = rng.normal(0, 100, 32)
    x[0, 32:64] = rng.normal(0, 1e-3, 32)
    q = quantize_rows(T.Q4_K, x)
    high = q[0, 16:48] >> 4  # element 32 + l sits in the high nibble of qs[l]
    assert len(set(high.tolist())) > 2
    assert_same_floats(dequantize_rows(T.Q4_K, q, 256), gguf.quants.dequantize(q, T.Q4_K), "q4_K")


# --------------------------------------------------------------------------- gguf-py codecs


@pytest.mark.parametrize("qtype", GGUF_PY_QUANTIZES, ids=lambda t: t.name)
@pytest.mark.parametrize("dist", ["gaussian", "student_t", "scale_ramp", "ties"])
def test_quantize_matches_gguf_py(qtype: GGMLQuantizationType, dist: str) -> None:
    x = INPUTS[f"x__{dist}"]
    theirs = gguf.quants.quantize(x, qtype).view(np.uint8).reshape(x.shape[0], -1)
    assert_same_bytes(quantize_rows(qtype, x), theirs, f"{qtype.name} {dist}")


@pytest.mark.parametrize("qtype", QUANTIZED, ids=lambda t: t.name)
@pytest.mark.parametrize("with_imatrix", [False, True], ids=["ref", "imat"])
def test_dequantize_matches_gguf_py(qtype: GGMLQuantizationType, with_imatrix: bool) -> None:
    for case in ("gaussian", "student_t", "zero_subblock", "scale_ramp", "extreme"):
        x = INPUTS[f"x__{case}"]
        data = quantize_rows(qtype, x, imatrix=INPUTS[f"imatrix__{case}"] if with_imatrix else None)
        ours = dequantize_rows(qtype, data, x.shape[1])
        assert_same_floats(ours, gguf.quants.dequantize(data, qtype), f"{qtype.name} {case}")
        if case in ("gaussian", "student_t"):  # sanity: a quantizer, not a byte shuffler
            assert np.abs(ours - x).mean() < 0.2 * np.abs(x).mean(), f"{qtype.name} {case} error too large"


def test_dequantize_random_bytes_matches_gguf_py() -> None:
    # Arbitrary blocks (all scale/min bit patterns), with finite fp16 scales.
    rng = np.random.default_rng(11)
    for qtype in QUANTIZED:
        block, size = GGML_QUANT_SIZES[qtype]
        data = rng.integers(0, 256, (8, 4 * size), dtype=np.uint8)
        ours = dequantize_rows(qtype, data, 4 * block)
        with np.errstate(invalid="ignore", over="ignore"):  # random fp16 scales include inf/NaN
            theirs = gguf.quants.dequantize(data, qtype)
        finite = np.isfinite(theirs)
        assert_same_floats(np.where(finite, ours, 0), np.where(finite, theirs, 0), qtype.name)


def test_f16_from_f32_is_ieee_round_to_nearest_even() -> None:
    rng = np.random.default_rng(5)
    bits = np.concatenate([
        rng.integers(0, 2**32, 1 << 20, dtype=np.uint64).astype(np.uint32),
        np.arange(0x33000000, 0x33800000, 0x100, dtype=np.uint32),  # around half the smallest subnormal
        np.arange(0x38000000, 0x38900000, 0x1000, dtype=np.uint32) | 0x80000000,  # subnormal/normal edge
        np.arange(0x477fe000, 0x47801000, 0x10, dtype=np.uint32),  # around 65504..65520
    ])
    x = bits.view(np.float32)
    x = x[~np.isnan(x)]
    x = x[: x.size // 256 * 256].reshape(-1, 256)
    with np.errstate(over="ignore"):
        theirs = x.astype(np.float16).view(np.uint8)
    assert_same_bytes(quantize_rows(T.F16, x), theirs, "f16")
    nans = np.array([[np.nan, -np.nan, np.float32(np.nan) * 0]], np.float32).repeat(1, 0)
    assert quantize_rows(T.F16, nans).view(np.uint16).tolist() == [[0x7E00, 0xFE00, 0x7E00]]


def test_widen_f16_and_bf16_exact() -> None:
    all_halves = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    ours = widen_to_f32(all_halves.view(np.float16), source="f16")
    assert_same_floats(ours, all_halves.view(np.float16).astype(np.float32), "f16 -> f32")
    assert np.array_equal(widen_to_f32(all_halves, source="f16").view(np.uint32), ours.view(np.uint32))
    bf16 = widen_to_f32(all_halves.reshape(256, 256), source="bf16", threads=3)
    assert bf16.shape == (256, 256)
    assert np.array_equal(bf16.reshape(-1).view(np.uint32), all_halves.astype(np.uint32) << 16)


# --------------------------------------------------------------------------- threads, validation


@pytest.mark.parametrize("qtype", sorted(kernels.SUPPORTED), ids=lambda t: t.name)
def test_bytes_do_not_depend_on_thread_count(qtype: GGMLQuantizationType) -> None:
    x = INPUTS["x__student_t"]
    imatrix = INPUTS["imatrix__student_t"]
    one = quantize_rows(qtype, x, imatrix=imatrix, threads=1)
    for threads in (2, 3, 7, 64):
        assert np.array_equal(quantize_rows(qtype, x, imatrix=imatrix, threads=threads), one), threads
        assert np.array_equal(dequantize_rows(qtype, one, x.shape[1], threads=threads).view(np.uint32),
                              dequantize_rows(qtype, one, x.shape[1]).view(np.uint32)), threads


def test_imatrix_ignored_where_llamacpp_ignores_it() -> None:
    x = gaussian_rows(1)
    weights = np.random.default_rng(2).random(512).astype(np.float32)
    for qtype in (T.F32, T.F16, T.BF16, T.Q8_0):
        assert np.array_equal(quantize_rows(qtype, x, imatrix=weights), quantize_rows(qtype, x))


def test_f32_is_a_copy_and_empty_input_is_fine() -> None:
    x = gaussian_rows(4, (3, 64))
    assert np.array_equal(quantize_rows(T.F32, x).view(np.float32), x)
    assert quantize_rows(T.Q4_K, np.zeros((0, 256), np.float32)).shape == (0, 144)
    assert dequantize_rows(T.Q6_K, np.zeros((0, 210), np.uint8), 256).shape == (0, 256)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: quantize_rows(T.Q8_0, gaussian_rows(0).astype(np.float64)), "float32"),
        (lambda: quantize_rows(T.Q8_0, gaussian_rows(0)[:, ::2]), "C-contiguous"),
        (lambda: quantize_rows(T.Q8_0, gaussian_rows(0)[0]), "2-D"),
        (lambda: quantize_rows(T.Q4_K, gaussian_rows(0, (2, 320))), "multiple of the Q4_K block"),
        (lambda: quantize_rows(T.Q4_K, gaussian_rows(0), imatrix=np.ones(256, np.float32)), "imatrix has 256"),
        (lambda: quantize_rows(T.Q4_K, gaussian_rows(0), imatrix=np.ones(512)), "imatrix must be float32"),
        (lambda: quantize_rows(T.Q8_0, gaussian_rows(0), threads=0), "threads"),
        (lambda: dequantize_rows(T.Q8_0, np.zeros((2, 35), np.uint8), 32), "take 34 bytes"),
        (lambda: dequantize_rows(T.Q8_0, np.zeros((2, 36), np.uint8)[:, 1:35], 32), "C-contiguous"),
        (lambda: widen_to_f32(np.zeros(4, np.float16), source="bf16"), "bf16 input"),
        (lambda: widen_to_f32(np.zeros(4, np.uint16), source="f32"), "source"),
    ],
)
def test_bad_input_raises_value_error(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()


def test_non_array_raises_type_error() -> None:
    with pytest.raises(TypeError, match="numpy array"):
        quantize_rows(T.Q8_0, [[0.0] * 32])
    with pytest.raises(TypeError, match="numpy array"):
        widen_to_f32(b"\0\0", source="f16")


def test_unsupported_type_raises_typed_error() -> None:
    with pytest.raises(UnsupportedError, match="Q2_K"):
        quantize_rows(T.Q2_K, gaussian_rows(0, (1, 256)))


def test_c_checks_its_arguments_and_statuses_become_exceptions() -> None:
    ffi, lib = kernels._ffi, kernels._lib
    x, out = np.zeros(32, np.float32), np.zeros(34, np.uint8)
    src, dst = ffi.from_buffer("float[]", x), ffi.from_buffer("uint8_t[]", out, require_writable=True)
    assert lib.qk_quantize(int(T.Q8_0), src, 1, 32, ffi.NULL, dst, 34) == 34
    assert lib.qk_quantize(int(T.Q8_0), src, 1, 32, ffi.NULL, dst, 33) == lib.QK_ERR_CAPACITY
    assert lib.qk_quantize(int(T.Q2_K), src, 1, 256, ffi.NULL, dst, 34) == lib.QK_ERR_TYPE
    assert lib.qk_quantize(int(T.Q8_0), src, 1, 31, ffi.NULL, dst, 34) == lib.QK_ERR_SHAPE
    assert lib.qk_quantize(int(T.Q8_0), src, -1, 32, ffi.NULL, dst, 34) == lib.QK_ERR_SHAPE
    assert lib.qk_quantize(int(T.Q8_0), ffi.NULL, 1, 32, ffi.NULL, dst, 34) == lib.QK_ERR_NULL
    assert lib.qk_dequantize(int(T.Q8_0), dst, 1, 32, ffi.cast("float *", src), 31) == lib.QK_ERR_CAPACITY
    with pytest.raises(ValueError, match="too small"):
        kernels._check(lib.QK_ERR_CAPACITY, "test")
    with pytest.raises(ValueError, match="unknown status -99"):
        kernels._check(-99, "test")
    assert kernels._check(34, "test") == 34
    assert kernels.backend() in ("avx2", "neon", "scalar")
