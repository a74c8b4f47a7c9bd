"""Quantized blocks taken apart and put back together, in numpy, for every type the kernels write.

A row of any supported type is a sequence of affine grids, one per sub-block: element i of
sub-block s dequantizes to `step[s] * (q[i] - ZERO) + shift[s]`, q an unsigned level 0..nmax.
`unpack` reads llama.cpp's bytes into the levels and the stored fields (fp16 bits, 6-bit scales);
`pack` writes them back, byte for byte; `grid` derives step/shift from the fields exactly as ggml's
dequantizers compute them (float32, same operation order), so `dequantize` equals
`kernels.dequantize_rows` bit for bit. The optimizer picks fields and levels; this module only
moves bits (layouts: reference notes 1.1-1.4).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

T = GGMLQuantizationType


@dataclass(frozen=True)
class GridSpec:
    """The shape of one type's grids: `block` elements per stored block, `sub` per (step, shift)
    pair, levels 0..nmax, and ZERO the level of value `shift` (signed types store level - zero)."""

    block: int
    sub: int
    nmax: int
    zero: int
    has_min: bool  # asymmetric grid: shift is a stored min (Q4_1, Q5_1, Q4_K, Q5_K)


SPECS: dict[T, GridSpec] = {
    T.Q4_0: GridSpec(32, 32, 15, 8, False),
    T.Q4_1: GridSpec(32, 32, 15, 0, True),
    T.Q5_0: GridSpec(32, 32, 31, 16, False),
    T.Q5_1: GridSpec(32, 32, 31, 0, True),
    T.Q8_0: GridSpec(32, 32, 255, 128, False),
    T.Q4_K: GridSpec(256, 32, 15, 0, True),
    T.Q5_K: GridSpec(256, 32, 31, 0, True),
    T.Q6_K: GridSpec(256, 16, 63, 32, False),
}


@dataclass
class Fields:
    """What a row stores besides its levels, per block (n_rows, n_blocks[, n_sub_per_block]).

    d: fp16 bits of the block scale. dmin: fp16 bits of the K-quants' min scale, or of Q4_1/Q5_1's
    min `m`; None for symmetric types. sc / mn: Q4_K/Q5_K 6-bit sub-block scales and mins (uint8),
    Q6_K int8 sub-block scales (mn None); None for the 32-blocks.
    """

    d: np.ndarray
    dmin: np.ndarray | None = None
    sc: np.ndarray | None = None
    mn: np.ndarray | None = None


def _f16(bits: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(bits).view(np.float16).astype(np.float32)


def grid(qtype: T, f: Fields) -> tuple[np.ndarray, np.ndarray]:
    """(step, shift), float32 (n_rows, n_sub), as ggml's dequantizer computes them."""
    d = _f16(f.d)
    if qtype in (T.Q4_0, T.Q5_0, T.Q8_0):
        return d, np.zeros_like(d)
    if qtype in (T.Q4_1, T.Q5_1):
        return d, _f16(f.dmin)
    n_rows = d.shape[0]
    if qtype == T.Q6_K:  # y = d * sc * q, evaluated (d*sc)*q
        step = d[:, :, None] * f.sc.astype(np.float32)
        return step.reshape(n_rows, -1), np.zeros((n_rows, step.shape[1] * step.shape[2]), np.float32)
    step = d[:, :, None] * f.sc.astype(np.float32)  # Q4_K/Q5_K: y = (d*sc)*q - (dmin*m)
    shift = -(_f16(f.dmin)[:, :, None] * f.mn.astype(np.float32))
    return step.reshape(n_rows, -1), shift.reshape(n_rows, -1)


def dequantize(qtype: T, q: np.ndarray, f: Fields) -> np.ndarray:
    """float32 (n_rows, n_per_row) values of levels q under fields f."""
    spec = SPECS[qtype]
    step, shift = grid(qtype, f)
    n_rows, n = q.shape
    levels = (q.astype(np.int32) - spec.zero).astype(np.float32).reshape(n_rows, -1, spec.sub)
    values = step[:, :, None] * levels
    if spec.has_min:  # symmetric types add nothing: keeps ggml's -0.0 for negative levels times 0
        values += shift[:, :, None]
    return values.reshape(n_rows, n)


# --------------------------------------------------------------------------- bytes <-> fields


def _blocks(qtype: T, data: np.ndarray) -> tuple[np.ndarray, int]:
    block, size = GGML_QUANT_SIZES[qtype]
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] % size:
        raise ValueError(f"{qtype.name} data must be uint8 rows of whole {size}-byte blocks, got {data.shape}")
    return data.reshape(data.shape[0], -1, size), data.shape[1] // size * block


def _u16(b: np.ndarray, at: int) -> np.ndarray:
    return b[..., at].astype(np.uint16) | (b[..., at + 1].astype(np.uint16) << 8)


def _put_u16(out: np.ndarray, at: int, bits: np.ndarray) -> None:
    out[..., at] = bits & 0xFF
    out[..., at + 1] = bits >> 8


def _nibbles_32(qs: np.ndarray) -> np.ndarray:
    """16 bytes -> 32 values: low nibbles are elements 0..15, high nibbles 16..31."""
    return np.concatenate([qs & 15, qs >> 4], axis=-1)


def _nibbles_k(qs: np.ndarray) -> np.ndarray:
    """128 bytes -> 256 values: chunk c of 32 bytes holds elements 64c+l (low) and 64c+32+l (high)."""
    c = qs.reshape(*qs.shape[:-1], 4, 1, 32)
    return np.concatenate([c & 15, c >> 4], axis=-2).reshape(*qs.shape[:-1], 256)


def _k_scales(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q4_K/Q5_K 12 bytes -> 8 six-bit scales and 8 six-bit mins (get_scale_min_k4)."""
    sc = np.concatenate([s[..., 0:4] & 63, (s[..., 8:12] & 15) | ((s[..., 0:4] >> 6) << 4)], axis=-1)
    mn = np.concatenate([s[..., 4:8] & 63, (s[..., 8:12] >> 4) | ((s[..., 4:8] >> 6) << 4)], axis=-1)
    return sc, mn


def _pack_k_scales(sc: np.ndarray, mn: np.ndarray) -> np.ndarray:
    sc, mn = sc.astype(np.uint8), mn.astype(np.uint8)
    out = np.empty((*sc.shape[:-1], 12), np.uint8)
    out[..., 0:4] = (sc[..., 0:4] & 63) | ((sc[..., 4:8] >> 4) << 6)
    out[..., 4:8] = (mn[..., 0:4] & 63) | ((mn[..., 4:8] >> 4) << 6)
    out[..., 8:12] = (sc[..., 4:8] & 15) | ((mn[..., 4:8] & 15) << 4)
    return out


def unpack(qtype: T, data: np.ndarray) -> tuple[np.ndarray, Fields]:
    """uint8 rows of `qtype` blocks -> (levels uint8 (n_rows, n_per_row), fields)."""
    b, n = _blocks(qtype, data)
    n_rows = data.shape[0]
    if qtype in (T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0):
        d = _u16(b, 0)
        dmin = _u16(b, 2) if qtype in (T.Q4_1, T.Q5_1) else None
        at = 4 if dmin is not None else 2
        if qtype == T.Q8_0:
            q = (b[..., 2:34].view(np.int8).astype(np.int16) + 128).astype(np.uint8)
        else:
            if qtype in (T.Q5_0, T.Q5_1):
                qh = b[..., at:at + 4]
                high = (np.unpackbits(qh, axis=-1, bitorder="little") << 4)
                at += 4
            else:
                high = 0
            q = _nibbles_32(b[..., at:at + 16]) | high
        return q.reshape(n_rows, n), Fields(d, dmin)
    if qtype in (T.Q4_K, T.Q5_K):
        d, dmin = _u16(b, 0), _u16(b, 2)
        sc, mn = _k_scales(b[..., 4:16])
        if qtype == T.Q4_K:
            q = _nibbles_k(b[..., 16:144])
        else:
            qh = b[..., 16:48]  # bit s of qh[l]: high bit of element 32s + l
            bits = (qh[..., None, :] >> np.arange(8, dtype=np.uint8)[:, None]) & 1
            q = _nibbles_k(b[..., 48:176]) | (bits.reshape(*qh.shape[:-1], 256) << 4)
        return q.reshape(n_rows, n), Fields(d, dmin, sc, mn)
    if qtype == T.Q6_K:
        ql, qh, sc = b[..., 0:128], b[..., 128:192], b[..., 192:208].view(np.int8)
        d = _u16(b, 208)
        ql = ql.reshape(*ql.shape[:-1], 2, 2, 32)              # [half, j, l]
        low = np.concatenate([ql & 15, ql >> 4], axis=-2)      # [half, k, l], k = j (low) or j+2 (high)
        qh = qh.reshape(*qh.shape[:-1], 2, 1, 32)
        high = (qh >> (2 * np.arange(4, dtype=np.uint8))[:, None]) & 3
        q = (low | (high << 4)).reshape(n_rows, n)
        return q, Fields(d, None, sc.copy())
    raise ValueError(f"no block codec for {qtype.name}")


def pack(qtype: T, q: np.ndarray, f: Fields) -> np.ndarray:
    """Levels and fields -> uint8 rows of `qtype` blocks (the inverse of `unpack`)."""
    spec = SPECS[qtype]
    block, size = GGML_QUANT_SIZES[qtype]
    n_rows, n = q.shape
    if n % block:
        raise ValueError(f"{qtype.name}: rows of {n} are not whole {block}-blocks")
    if q.size and int(q.max()) > spec.nmax:
        raise ValueError(f"{qtype.name}: level {int(q.max())} is above {spec.nmax}")
    q = q.astype(np.uint8).reshape(n_rows, n // block, block)
    out = np.zeros((n_rows, n // block, size), np.uint8)
    _put_u16(out, 208 if qtype == T.Q6_K else 0, f.d.astype(np.uint16))
    if qtype in (T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0):
        at = 2
        if spec.has_min:
            _put_u16(out, 2, f.dmin.astype(np.uint16))
            at = 4
        if qtype == T.Q8_0:
            out[..., 2:34] = (q.astype(np.int16) - 128).astype(np.int8).view(np.uint8)
        else:
            if qtype in (T.Q5_0, T.Q5_1):
                out[..., at:at + 4] = np.packbits(q >> 4, axis=-1, bitorder="little")
                at += 4
            out[..., at:at + 16] = (q[..., :16] & 15) | ((q[..., 16:] & 15) << 4)
    elif qtype in (T.Q4_K, T.Q5_K):
        _put_u16(out, 2, f.dmin.astype(np.uint16))
        out[..., 4:16] = _pack_k_scales(f.sc, f.mn)
        c = q.reshape(n_rows, -1, 4, 2, 32)
        nib = (c[..., 0, :] & 15) | ((c[..., 1, :] & 15) << 4)
        if qtype == T.Q4_K:
            out[..., 16:144] = nib.reshape(n_rows, -1, 128)
        else:
            bits = (q.reshape(n_rows, -1, 8, 32) >> 4).astype(np.uint8) << np.arange(8, dtype=np.uint8)[:, None]
            out[..., 16:48] = np.bitwise_or.reduce(bits, axis=-2)
            out[..., 48:176] = nib.reshape(n_rows, -1, 128)
    elif qtype == T.Q6_K:
        c = q.reshape(n_rows, -1, 2, 4, 32)                    # [half, k, l]
        ql = (c[..., 0:2, :] & 15) | ((c[..., 2:4, :] & 15) << 4)
        out[..., 0:128] = ql.reshape(n_rows, -1, 128)
        qh = np.bitwise_or.reduce((c >> 4) << (2 * np.arange(4, dtype=np.uint8))[:, None], axis=-2)
        out[..., 128:192] = qh.reshape(n_rows, -1, 64)
        out[..., 192:208] = f.sc.astype(np.int8).view(np.uint8)
    else:
        raise ValueError(f"no block codec for {qtype.name}")
    return out.reshape(n_rows, -1)
