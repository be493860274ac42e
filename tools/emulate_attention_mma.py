#!/usr/bin/env python3
"""Lane-level numpy emulation of src/kernels/cuda/cuda_attention_mma.cu.

There is no GPU on the development machines, so this transcribes the mma
kernels' index arithmetic (ldmatrix addresses, fragment element positions,
shared-memory tile offsets, masking, online softmax, the backward's
transposed products) one warp lane at a time, with ldmatrix and
mma.m16n8k16 implemented from the PTX ISA fragment tables, and compares the
result against a plain fp32 attention. It checks the layout logic, not the
CUDA code itself (races, PTX syntax): the GPU test tests/cuda/attention_parity
does that. Usage: /usr/bin/python3 tools/emulate_attention_mma.py
Exit 0 when every check passes.
"""
import sys

import numpy as np

TILE = 64
LD_DS = TILE + 8


def bf16(x):
    """Round fp32 values to bf16 (nearest even), returned as float32."""
    x = np.atleast_1d(np.asarray(x, dtype=np.float32))
    u = x.view(np.uint32).astype(np.uint64)
    sh, one, half = np.uint64(16), np.uint64(1), np.uint64(0x7FFF)
    u = ((u + half + ((u >> sh) & one)) >> sh) << sh
    return u.astype(np.uint32).view(np.float32)


LANES = np.arange(32)
GID, TIG = LANES // 4, LANES % 4


# A register holding two bf16: array [32 lanes, 2] (lo, hi).
def ldmatrix_x4(tile, rows, cols, trans):
    """tile: 2D smem array; rows, cols: per-lane address (row, first column).
    Returns 4 registers [32, 2]: register m = matrix m, whose 8 rows are
    addressed by lanes 8m..8m+7."""
    regs = []
    for m in range(4):
        mat = np.stack([tile[rows[8 * m + i], cols[8 * m + i]:cols[8 * m + i] + 8] for i in range(8)])  # [8][8]
        assert mat.shape == (8, 8)
        if not trans:
            reg = np.stack([mat[GID, 2 * TIG], mat[GID, 2 * TIG + 1]], axis=1)
        else:
            reg = np.stack([mat[2 * TIG, GID], mat[2 * TIG + 1, GID]], axis=1)
        regs.append(reg)
    return regs


def mma(c, a, b0, b1):
    """c [32, 4] fp32 += A (4 regs) * B (b0, b1), PTX m16n8k16 .bf16 layouts."""
    A = np.zeros((16, 16), np.float32)
    B = np.zeros((16, 8), np.float32)
    for lane in range(32):
        g, t = lane // 4, lane % 4
        A[g, 2 * t:2 * t + 2] = a[0][lane]
        A[g + 8, 2 * t:2 * t + 2] = a[1][lane]
        A[g, 2 * t + 8:2 * t + 10] = a[2][lane]
        A[g + 8, 2 * t + 8:2 * t + 10] = a[3][lane]
        B[2 * t:2 * t + 2, g] = b0[lane]
        B[2 * t + 8:2 * t + 10, g] = b1[lane]
    C = A.astype(np.float64) @ B.astype(np.float64)
    out = c.copy()
    out[:, 0] += C[GID, 2 * TIG]
    out[:, 1] += C[GID, 2 * TIG + 1]
    out[:, 2] += C[GID + 8, 2 * TIG]
    out[:, 3] += C[GID + 8, 2 * TIG + 1]
    return out.astype(np.float32)


def pack(lo, hi):
    return np.stack([bf16(lo), bf16(hi)], axis=1)


def a_from_c(lo, hi):
    return [pack(lo[:, 0], lo[:, 1]), pack(lo[:, 2], lo[:, 3]), pack(hi[:, 0], hi[:, 1]), pack(hi[:, 2], hi[:, 3])]


def load_tile(src, r0, L, D):
    """[64][D + 8] tile of rows r0.. of src [L][D], rows >= L zero."""
    t = np.zeros((TILE, D + 8), np.float32)
    n = min(TILE, L - r0)
    t[:n, :D] = src[r0:r0 + n]
    return t


L8 = LANES % 8
A_ROWS_R, A_ROWS_C = L8 + 8 * ((LANES // 8) % 2), 8 * (LANES // 16)  # also B_OF_TILE
BT_R, BT_C = L8 + 8 * (LANES // 16), 8 * ((LANES // 8) % 2)  # B_OF_TRANSPOSE, A_OF_TRANSPOSE


def forward(q, k, v, mask, B, L, Hq, Hkv, D, causal, scale):
    """q [B, L, Hq, D], k, v [B, L, Hkv, D] (bf16 values); mask [B, L] or None."""
    NK, ND = D // 16, D // 8
    out = np.full((B, L, Hq, D), np.nan, np.float32)
    lse = np.full((B, Hq, L), np.nan, np.float32)
    s_log2 = np.float32(scale * 1.4426950408889634)
    for b in range(B):
        for h in range(Hq):
            g = h // (Hq // Hkv)
            for i0 in range(0, L, TILE):
                key_end = min(L, i0 + TILE) if causal else L
                sQ = load_tile(q[b, :, h], i0, L, D)

                def next_tile(j):
                    while j < key_end:
                        ok = np.array([(j + c < L) and (mask is None or mask[b, j + c] != 0) for c in range(TILE)])
                        if mask is None or ok.any():
                            return j, ok
                        j += TILE
                    return key_end, None

                for warp in range(4):
                    row_first = i0 + 16 * warp
                    qa = [ldmatrix_x4(sQ, 16 * warp + A_ROWS_R, 16 * kk + A_ROWS_C, False) for kk in range(NK)]
                    o = [np.zeros((32, 4), np.float32) for _ in range(ND)]
                    m = [np.full(32, -np.inf, np.float32) for _ in range(2)]
                    l = [np.zeros(32, np.float32) for _ in range(2)]
                    j0, ok = next_tile(0)
                    while j0 < key_end:
                        sK = load_tile(k[b, :, g], j0, L, D)
                        sV = load_tile(v[b, :, g], j0, L, D)
                        if not causal or j0 <= row_first + 15:
                            s = [np.zeros((32, 4), np.float32) for _ in range(8)]
                            for kk in range(NK):
                                for np_ in range(4):
                                    bk = ldmatrix_x4(sK, 16 * np_ + BT_R, 16 * kk + BT_C, False)
                                    s[2 * np_] = mma(s[2 * np_], qa[kk], bk[0], bk[1])
                                    s[2 * np_ + 1] = mma(s[2 * np_ + 1], qa[kk], bk[2], bk[3])
                            need_mask = mask is not None or j0 + TILE > L or (causal and j0 + TILE - 1 > row_first)
                            for n in range(8):
                                for e in range(4):
                                    x = s[n][:, e] * s_log2
                                    if need_mask:
                                        c = 8 * n + 2 * TIG + e % 2
                                        row = row_first + GID + 8 * (e // 2)
                                        hide = ~ok[c] | (causal & (j0 + c > row))
                                        x = np.where(hide, -np.inf, x)
                                    s[n][:, e] = x
                            tmax = [np.full(32, -np.inf, np.float32) for _ in range(2)]
                            for n in range(8):
                                tmax[0] = np.maximum(tmax[0], np.maximum(s[n][:, 0], s[n][:, 1]))
                                tmax[1] = np.maximum(tmax[1], np.maximum(s[n][:, 2], s[n][:, 3]))
                            m_use = [None, None]
                            for r in range(2):
                                tmax[r] = np.maximum(tmax[r], tmax[r][LANES ^ 1])
                                tmax[r] = np.maximum(tmax[r], tmax[r][LANES ^ 2])
                                m_new = np.maximum(m[r], tmax[r])
                                m_use[r] = np.where(m_new == -np.inf, 0, m_new).astype(np.float32)
                                alpha = np.exp2(m[r] - m_use[r]).astype(np.float32)
                                m[r] = m_new
                                l[r] = l[r] * alpha
                                for n in range(ND):
                                    o[n][:, 2 * r] *= alpha
                                    o[n][:, 2 * r + 1] *= alpha
                            for n in range(8):
                                for e in range(4):
                                    s[n][:, e] = np.exp2(s[n][:, e] - m_use[e // 2])
                                    l[e // 2] = l[e // 2] + s[n][:, e]
                            for kk in range(4):
                                pa = a_from_c(s[2 * kk], s[2 * kk + 1])
                                for np_ in range(NK):
                                    bv = ldmatrix_x4(sV, 16 * kk + A_ROWS_R, 16 * np_ + A_ROWS_C, True)
                                    o[2 * np_] = mma(o[2 * np_], pa, bv[0], bv[1])
                                    o[2 * np_ + 1] = mma(o[2 * np_ + 1], pa, bv[2], bv[3])
                        j0, ok = next_tile(j0 + TILE)
                    for r in range(2):
                        l[r] = l[r] + l[r][LANES ^ 1]
                        l[r] = l[r] + l[r][LANES ^ 2]
                        row = row_first + GID + 8 * r
                        for lane in range(32):
                            if row[lane] >= L:
                                continue
                            inv = 0.0 if m[r][lane] == -np.inf else 1.0 / l[r][lane]
                            for n in range(ND):
                                col = 8 * n + 2 * TIG[lane]
                                out[b, row[lane], h, col] = bf16(o[n][lane, 2 * r] * inv)[0]
                                out[b, row[lane], h, col + 1] = bf16(o[n][lane, 2 * r + 1] * inv)[0]
                            if TIG[lane] == 0:
                                lse[b, h, row[lane]] = (np.inf if m[r][lane] == -np.inf else
                                                        m[r][lane] * 0.6931471805599453 + np.log(l[r][lane]))
    return out, lse


def backward(dout, out, lse, q, k, v, mask, B, L, Hq, Hkv, D, causal, scale, split):
    NK, ND = D // 16, D // 8
    group = Hq // Hkv
    hpb = group // split
    delta = np.einsum("blhd,blhd->bhl", dout.astype(np.float64), out.astype(np.float64)).astype(np.float32)
    dq_acc = np.zeros((B, L, Hq, D), np.float32)
    dk_acc = np.zeros((B, L, Hkv, D), np.float32)
    dv_acc = np.zeros((B, L, Hkv, D), np.float32)
    dk = np.full((B, L, Hkv, D), np.nan, np.float32)
    dv = np.full((B, L, Hkv, D), np.nan, np.float32)
    s_log2 = np.float32(scale * 1.4426950408889634)
    for b in range(B):
        for g in range(Hkv):
            for part in range(split):
                h_first = g * group + part * hpb
                for j0 in range(0, L, TILE):
                    key_ok = np.array([(j0 + c < L) and (mask is None or mask[b, j0 + c] != 0) for c in range(TILE)])
                    if not key_ok.any():
                        if split == 1:
                            dk[b, j0:j0 + TILE, g] = 0
                            dv[b, j0:j0 + TILE, g] = 0
                        continue
                    i_first = j0 if causal else 0
                    n_qt = (L - i_first + TILE - 1) // TILE
                    sK = load_tile(k[b, :, g], j0, L, D)
                    sV = load_tile(v[b, :, g], j0, L, D)
                    dk_r = [[np.zeros((32, 4), np.float32) for _ in range(ND)] for _ in range(4)]
                    dv_r = [[np.zeros((32, 4), np.float32) for _ in range(ND)] for _ in range(4)]
                    for it in range(hpb * n_qt):
                        h = h_first + it // n_qt
                        i0 = i_first + (it % n_qt) * TILE
                        sQ = load_tile(q[b, :, h], i0, L, D)
                        sdO = load_tile(dout[b, :, h], i0, L, D)
                        rl2 = np.array([lse[b, h, i0 + c] * 1.4426950408889634 if i0 + c < L else np.inf
                                        for c in range(TILE)], np.float32)
                        rdl = np.array([delta[b, h, i0 + c] if i0 + c < L else 0 for c in range(TILE)], np.float32)
                        sdsT = np.full((TILE, LD_DS), np.nan, np.float32)
                        for warp in range(4):
                            key_row = 16 * warp
                            s = [np.zeros((32, 4), np.float32) for _ in range(8)]
                            dp = [np.zeros((32, 4), np.float32) for _ in range(8)]
                            for kk in range(NK):
                                ak = ldmatrix_x4(sK, key_row + A_ROWS_R, 16 * kk + A_ROWS_C, False)
                                av = ldmatrix_x4(sV, key_row + A_ROWS_R, 16 * kk + A_ROWS_C, False)
                                for np_ in range(4):
                                    bq = ldmatrix_x4(sQ, 16 * np_ + BT_R, 16 * kk + BT_C, False)
                                    bo = ldmatrix_x4(sdO, 16 * np_ + BT_R, 16 * kk + BT_C, False)
                                    s[2 * np_] = mma(s[2 * np_], ak, bq[0], bq[1])
                                    s[2 * np_ + 1] = mma(s[2 * np_ + 1], ak, bq[2], bq[3])
                                    dp[2 * np_] = mma(dp[2 * np_], av, bo[0], bo[1])
                                    dp[2 * np_ + 1] = mma(dp[2 * np_ + 1], av, bo[2], bo[3])
                            pa, dsa = [None] * 4, [None] * 4
                            for kk in range(4):
                                for half in range(2):
                                    n = 2 * kk + half
                                    for e in range(4):
                                        key = key_row + GID + 8 * (e // 2)
                                        c = 8 * n + 2 * TIG + e % 2
                                        vis = (rl2[c] != np.inf) & key_ok[key] & ((not causal) | (j0 + key <= i0 + c))
                                        with np.errstate(over="ignore", invalid="ignore"):
                                            p = np.where(vis, np.exp2(s[n][:, e] * s_log2 - rl2[c]), 0).astype(np.float32)
                                        s[n][:, e] = p
                                        dp[n][:, e] = p * (dp[n][:, e] - rdl[c]) * np.float32(scale)
                                pa[kk] = a_from_c(s[2 * kk], s[2 * kk + 1])
                                dsa[kk] = a_from_c(dp[2 * kk], dp[2 * kk + 1])
                                for lane in range(32):
                                    r0 = key_row + GID[lane]
                                    c0 = 16 * kk + 2 * TIG[lane]
                                    sdsT[r0, c0:c0 + 2] = dsa[kk][0][lane]
                                    sdsT[r0 + 8, c0:c0 + 2] = dsa[kk][1][lane]
                                    sdsT[r0, c0 + 8:c0 + 10] = dsa[kk][2][lane]
                                    sdsT[r0 + 8, c0 + 8:c0 + 10] = dsa[kk][3][lane]
                            for kk in range(4):
                                for np_ in range(NK):
                                    bo = ldmatrix_x4(sdO, 16 * kk + A_ROWS_R, 16 * np_ + A_ROWS_C, True)
                                    bq = ldmatrix_x4(sQ, 16 * kk + A_ROWS_R, 16 * np_ + A_ROWS_C, True)
                                    dv_r[warp][2 * np_] = mma(dv_r[warp][2 * np_], pa[kk], bo[0], bo[1])
                                    dv_r[warp][2 * np_ + 1] = mma(dv_r[warp][2 * np_ + 1], pa[kk], bo[2], bo[3])
                                    dk_r[warp][2 * np_] = mma(dk_r[warp][2 * np_], dsa[kk], bq[0], bq[1])
                                    dk_r[warp][2 * np_ + 1] = mma(dk_r[warp][2 * np_ + 1], dsa[kk], bq[2], bq[3])
                        # __syncthreads: dS^T complete
                        assert not np.isnan(sdsT[:, :TILE]).any(), "dS^T tile not fully written"
                        for warp in range(4):
                            ds_a = [ldmatrix_x4(sdsT, 16 * kk + BT_R, 16 * warp + BT_C, True) for kk in range(4)]
                            for np_ in range(NK):
                                acc = [np.zeros((32, 4), np.float32) for _ in range(2)]
                                for kk in range(4):
                                    bk = ldmatrix_x4(sK, 16 * kk + A_ROWS_R, 16 * np_ + A_ROWS_C, True)
                                    acc[0] = mma(acc[0], ds_a[kk], bk[0], bk[1])
                                    acc[1] = mma(acc[1], ds_a[kk], bk[2], bk[3])
                                for r in range(2):
                                    row = i0 + 16 * warp + GID + 8 * r
                                    for lane in range(32):
                                        if row[lane] >= L:
                                            continue
                                        col = 16 * np_ + 2 * TIG[lane]
                                        dq_acc[b, row[lane], h, col:col + 2] += acc[0][lane, 2 * r:2 * r + 2]
                                        dq_acc[b, row[lane], h, col + 8:col + 10] += acc[1][lane, 2 * r:2 * r + 2]
                    for warp in range(4):
                        for r in range(2):
                            for lane in range(32):
                                j = j0 + 16 * warp + GID[lane] + 8 * r
                                if j >= L:
                                    continue
                                for n in range(ND):
                                    col = 8 * n + 2 * TIG[lane]
                                    kv = dk_r[warp][n][lane, 2 * r:2 * r + 2]
                                    vv = dv_r[warp][n][lane, 2 * r:2 * r + 2]
                                    if split == 1:
                                        dk[b, j, g, col:col + 2] = bf16(kv)
                                        dv[b, j, g, col:col + 2] = bf16(vv)
                                    else:
                                        dk_acc[b, j, g, col:col + 2] += kv
                                        dv_acc[b, j, g, col:col + 2] += vv
    if split > 1:
        dk, dv = bf16(dk_acc), bf16(dv_acc)
    return bf16(dq_acc), dk, dv


def reference(q, k, v, dout, mask, B, L, Hq, Hkv, D, causal, scale):
    """fp64 attention forward and backward; rows that see no key: out 0, lse inf, no gradient."""
    group = Hq // Hkv
    out = np.zeros((B, L, Hq, D))
    lse = np.full((B, Hq, L), np.inf)
    dq = np.zeros((B, L, Hq, D))
    dk = np.zeros((B, L, Hkv, D))
    dv = np.zeros((B, L, Hkv, D))
    i_idx, j_idx = np.meshgrid(np.arange(L), np.arange(L), indexing="ij")
    for b in range(B):
        vis = np.ones((L, L), bool)
        if causal:
            vis &= j_idx <= i_idx
        if mask is not None:
            vis &= (mask[b] != 0)[None, :]
        any_row = vis.any(1)
        for h in range(Hq):
            g = h // group
            Q, K, V, dO = (x.astype(np.float64) for x in (q[b, :, h], k[b, :, g], v[b, :, g], dout[b, :, h]))
            S = np.where(vis, Q @ K.T * scale, -np.inf)
            mx = np.where(any_row, S.max(1), 0)
            P = np.where(vis, np.exp(S - mx[:, None]), 0)
            l = P.sum(1)
            P = np.where(any_row[:, None], P / np.where(l > 0, l, 1)[:, None], 0)
            out[b, :, h] = P @ V
            lse[b, h] = np.where(any_row, mx + np.log(np.where(l > 0, l, 1)), np.inf)
            dP = dO @ V.T
            dlt = (dO * out[b, :, h]).sum(1)
            dS = P * (dP - dlt[:, None]) * scale
            dq[b, :, h] = dS @ K
            dk[b, :, g] += dS.T @ Q
            dv[b, :, g] += P.T @ dO
    return out, lse, dq, dk, dv


def rel(a, b):
    return float(np.linalg.norm((a - b).ravel()) / max(np.linalg.norm(b.ravel()), 1e-30))


def main():
    rng = np.random.default_rng(7)
    shapes = [  # name, B, L, Hq, Hkv, D, causal, pad
        ("d16 causal lpad gqa", 2, 70, 4, 2, 16, 1, 2),
        ("d80 full rpad", 2, 75, 2, 2, 80, 0, 1),
        ("d32 causal 130", 1, 130, 2, 1, 32, 1, 0),
        ("d64 full lpad", 2, 70, 2, 1, 64, 0, 2),
    ]
    failed = 0
    for name, B, L, Hq, Hkv, D, causal, pad in shapes:
        q = bf16(rng.uniform(-2, 2, (B, L, Hq, D)))
        k = bf16(rng.uniform(-2, 2, (B, L, Hkv, D)))
        v = bf16(rng.uniform(-1, 1, (B, L, Hkv, D)))
        dout = bf16(rng.uniform(-1, 1, (B, L, Hq, D)))
        mask = None
        if pad:
            mask = np.zeros((B, L), np.int32)
            for b in range(B):
                valid = L - b * (L // 3) // max(B - 1, 1) - (b > 0) * 64 * (pad == 2)  # lpad: a whole tile masked
                valid = max(valid, 1)
                for t in range(L):
                    mask[b, t] = (t < valid) if pad == 1 else (t >= L - valid)
        scale = 1.0 / np.sqrt(D)
        ro, rl, rdq, rdk, rdv = reference(q, k, v, dout, mask, B, L, Hq, Hkv, D, causal, scale)
        o, l = forward(q, k, v, mask, B, L, Hq, Hkv, D, causal, scale)
        checks = [("out", rel(o, ro), 1e-2, np.isnan(o).sum())]
        fin = np.isfinite(rl)
        lse_bad = int(np.isnan(l).sum() + (np.isinf(l) != np.isinf(rl)).sum())
        checks.append(("lse", rel(l[fin], rl[fin]), 1e-5, lse_bad))
        for split in sorted({1, Hq // Hkv}):
            dq, dk, dv = backward(dout, o, l, q, k, v, mask, B, L, Hq, Hkv, D, causal, scale, split)
            checks += [(f"dq split={split}", rel(dq, rdq), 1e-2, np.isnan(dq).sum()),
                       (f"dk split={split}", rel(dk, rdk), 1e-2, np.isnan(dk).sum()),
                       (f"dv split={split}", rel(dv, rdv), 1e-2, np.isnan(dv).sum())]
        for what, err, thr, bad in checks:
            ok = err <= thr and bad == 0
            failed += not ok
            print(f"{'PASS' if ok else 'FAIL'} {name:22s} {what:12s} {err:.3e} {thr:.0e}" +
                  (f" ({bad} bad elements)" if bad else ""))
            sys.stdout.flush()
    print(f"{'all passed' if failed == 0 else f'{failed} failed'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
