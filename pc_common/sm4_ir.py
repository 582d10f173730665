"""LLVM IR of the SM4-GCM kernels of :mod:`pc_common.sm4_aesni` (see there for what and why).

* ``sm4_ecb(rk, iv, in, out, niter)`` — SM4 encryption of 16 blocks per iteration (the
  national KKRT profile's code words), the same rounds on blocks loaded from ``in``.
* ``sm4_ctr(rk, iv, in, out, niter)`` — SM4 in CTR mode with GCM's 32-bit counter, 16 blocks
  per iteration: two groups of eight blocks in 256-bit registers, word-sliced (register w holds
  word w of eight blocks as numbers, so the round's rotations are lane rotations), the S-box as
  AESENCLAST between two PSHUFB nibble lookups (below), the keystream transposed back to block
  order, byte-swapped (SM4's words are big-endian) and XORed onto the input.
* ``ghash(h, state, data, n)`` — GHASH of n blocks on byte-reflected operands, one carry-less
  multiplication and reduction per block (Gueron–Kounavis, figure 5).

Generated as text and verified by LLVM; the tables are derived here and checked over all 256
inputs, so a wrong constant fails at load, not in use.
"""
from __future__ import annotations

from gmssl.sm4 import SM4_BOXES_TABLE

BLOCK = 16


# ----- the S-box as AES's between two affine maps -----------------------------------------------------
def _gmul(a: int, b: int, poly: int) -> int:
    r = 0
    while b:
        if b & 1:
            r ^= a
        b >>= 1
        a <<= 1
        if a & 0x100:
            a ^= poly
    return r


def _inverses(poly: int) -> list[int]:
    def power(a: int, e: int) -> int:
        r = 1
        while e:
            if e & 1:
                r = _gmul(r, a, poly)
            a, e = _gmul(a, a, poly), e >> 1
        return r
    return [power(a, 254) for a in range(256)]       # a^254 = a^-1 (and 0 ↦ 0)


def _affine_sm4(x: int) -> int:
    """SM4's affine matrix A: bit i of A·x is the parity of x and 0xA7 rotated left by i."""
    out = 0
    for i in range(8):
        row = ((0xA7 << i) | (0xA7 >> (8 - i))) & 0xFF
        out |= (bin(row & x).count("1") & 1) << i
    return out


def _aes_sbox(inv_aes: list[int]) -> list[int]:
    def affine(b: int) -> int:
        r = 0x63
        for k in (0, 1, 2, 3, 4):          # b ⊕ (b <<< 1) ⊕ … ⊕ (b <<< 4) ⊕ 0x63 (FIPS 197 §5.1.1)
            r ^= ((b << k) | (b >> (8 - k))) & 0xFF
        return r
    return [affine(inv_aes[x]) for x in range(256)]


def _nibble_tables(f: list[int]) -> tuple[list[int], list[int]]:
    """An affine byte map as two 16-entry tables: f(x) = lo[x & 15] ^ hi[x >> 4]."""
    lo = [f[i] for i in range(16)]
    hi = [f[i << 4] ^ f[0] for i in range(16)]
    if any(f[x] != lo[x & 15] ^ hi[x >> 4] for x in range(256)):
        raise AssertionError("map is not affine")
    return lo, hi


def derive() -> tuple[list[int], list[int], list[int], list[int]]:
    """Pre and Post with S_SM4 = Post ∘ SubBytes_AES ∘ Pre, as nibble tables.

    S_SM4(x) = A·inv(A·x ⊕ 0xD3) ⊕ 0xD3 in GF(2^8) mod x^8+x^7+x^6+x^5+x^4+x^2+1 (Liu et al.,
    "Structure of the SMS4 S-box", 2007 — checked against the table below); a field isomorphism
    T onto AES's field (x ↦ β^x, β a root of SM4's polynomial there) carries the inversion
    across: Pre(x) = T(A·x ⊕ 0xD3), Post = S_SM4 ∘ Pre⁻¹ ∘ SubBytes⁻¹.
    """
    sm4 = list(SM4_BOXES_TABLE)
    inv_sm4, inv_aes = _inverses(0x1F5), _inverses(0x11B)
    if any(_affine_sm4(inv_sm4[_affine_sm4(x) ^ 0xD3]) ^ 0xD3 != sm4[x] for x in range(256)):
        raise AssertionError("SM4 S-box structure not as expected")
    beta = next(b for b in range(2, 256) if _evaluate(0x1F5, b) == 0)     # a root of SM4's polynomial
    pre = [_evaluate(_affine_sm4(x) ^ 0xD3, beta) for x in range(256)]      # x ↦ x(β): the isomorphism
    sub = _aes_sbox(inv_aes)
    pre_inv, sub_inv = [0] * 256, [0] * 256
    for x in range(256):
        pre_inv[pre[x]] = x
        sub_inv[sub[x]] = x
    post = [sm4[pre_inv[sub_inv[y]]] for y in range(256)]
    if any(post[sub[pre[x]]] != sm4[x] for x in range(256)):
        raise AssertionError("S-box decomposition failed")
    return (*_nibble_tables(pre), *_nibble_tables(post))


def _evaluate(poly_bits: int, at: int) -> int:
    """The polynomial whose coefficients are the bits of ``poly_bits`` evaluated at ``at`` in
    AES's field: SM4's field polynomial (to find a root β), or an element of SM4's field as a
    polynomial in its generator (to carry it to AES's field)."""
    acc, p = 0, 1
    for i in range(poly_bits.bit_length()):
        if poly_bits >> i & 1:
            acc ^= p
        p = _gmul(p, at, 0x11B)
    return acc


# ----- LLVM IR of the kernels -------------------------------------------------------------------------
def _bytes_const(values16: list[int], width: int) -> str:
    vals = values16 * (width // 16)
    return "<" + ", ".join(f"i8 {v - 256 if v > 127 else v}" for v in vals) + ">"


def _i32_list(vals) -> str:
    return "<" + ", ".join(f"i32 {v}" for v in vals) + ">"


class _Emit:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self._n = 0

    def __call__(self, expr: str) -> str:
        self._n += 1
        name = f"%v{self._n}"
        self.lines.append(f"  {name} = {expr}")
        return name

    def raw(self, line: str) -> None:
        self.lines.append(line)


def sm4_ir(W: int, G: int) -> str:
    """The module text of ``sm4_ctr`` and ``sm4_ecb`` (same signature; ECB ignores ``iv``)."""
    B, Q = 4 * W, W // 2
    vi, vb, vq = f"<{W} x i32>", f"<{B} x i8>", f"<{Q} x i64>"
    aes, shuf = ("@llvm.x86.aesni.aesenclast.256", "@llvm.x86.avx2.pshuf.b") if W == 8 else \
        ("@llvm.x86.aesni.aesenclast", "@llvm.x86.ssse3.pshuf.b.128")
    n4 = 4 * W
    decls = [
        f"declare {vq} {aes}({vq}, {vq})",
        f"declare {vb} {shuf}({vb}, {vb})",
        f"declare {vi} @llvm.fshl.v{W}i32({vi}, {vi}, {vi})",
        f"declare <{n4} x i32> @llvm.bswap.v{n4}i32(<{n4} x i32>)",
    ]
    return "\n".join(decls + [_sm4_function(W, G, "ctr"), _sm4_function(W, G, "ecb")])


def _sm4_function(W: int, G: int, mode: str) -> str:
    B, Q = 4 * W, W // 2
    vi, vb, vq = f"<{W} x i32>", f"<{B} x i8>", f"<{Q} x i64>"
    if W == 8:
        aes, shuf = "@llvm.x86.aesni.aesenclast.256", "@llvm.x86.avx2.pshuf.b"
    else:
        aes, shuf = "@llvm.x86.aesni.aesenclast", "@llvm.x86.ssse3.pshuf.b.128"
    pre_lo, pre_hi, post_lo, post_hi = (_bytes_const(t, B) for t in derive())
    sr = [4 * (((i >> 2) + (i & 3)) % 4) + (i & 3) for i in range(16)]   # ShiftRows: out[i] = in[sr[i]]
    isr = [0] * 16
    for i, j in enumerate(sr):
        isr[j] = i
    isr_c, nib, four = _bytes_const(isr, B), _bytes_const([15] * 16, B), _bytes_const([4] * 16, B)
    lanes = _i32_list(range(W))
    e = _Emit()

    def splat(scalar: str) -> str:
        ins = e(f"insertelement {vi} poison, i32 {scalar}, i32 0")
        return e(f"shufflevector {vi} {ins}, {vi} poison, <{W} x i32> zeroinitializer")

    def sbox(x: str) -> str:
        b = e(f"bitcast {vi} {x} to {vb}")
        lo = e(f"and {vb} {b}, {nib}")
        hi = e(f"lshr {vb} {b}, {four}")
        y = e(f"xor {vb} {e(f'call {vb} {shuf}({vb} {pre_lo}, {vb} {lo})')}, "
              f"{e(f'call {vb} {shuf}({vb} {pre_hi}, {vb} {hi})')}")
        ys = e(f"bitcast {vb} {e(f'call {vb} {shuf}({vb} {y}, {vb} {isr_c})')} to {vq}")
        z = e(f"bitcast {vq} {e(f'call {vq} {aes}({vq} {ys}, {vq} zeroinitializer)')} to {vb}")
        lo2 = e(f"and {vb} {z}, {nib}")
        hi2 = e(f"lshr {vb} {z}, {four}")
        r = e(f"xor {vb} {e(f'call {vb} {shuf}({vb} {post_lo}, {vb} {lo2})')}, "
              f"{e(f'call {vb} {shuf}({vb} {post_hi}, {vb} {hi2})')}")
        return e(f"bitcast {vb} {r} to {vi}")

    def rol(x: str, n: int) -> str:
        return e(f"call {vi} @llvm.fshl.v{W}i32({vi} {x}, {vi} {x}, {vi} {_i32_list([n] * W)})")

    e.raw("entry:")
    rks = []
    for r in range(32):
        p = e(f"getelementptr inbounds i32, ptr %rk, i64 {r}")
        rks.append(splat(e(f"load i32, ptr {p}, align 4")))
    ivw = []
    for w in range(4):
        p = e(f"getelementptr inbounds i32, ptr %iv, i64 {w}")
        ivw.append(e(f"load i32, ptr {p}, align 4"))
    iv_splats = [splat(ivw[w]) for w in range(3)]
    e.raw(f"  %empty = icmp eq i64 %niter, 0")
    e.raw("  br i1 %empty, label %exit, label %loop")
    e.raw("loop:")
    e.raw("  %i = phi i64 [0, %entry], [%inext, %loop]")
    i32 = e("trunc i64 %i to i32")
    base = e(f"add i32 {ivw[3]}, {e(f'mul i32 {i32}, {G * W}')}")
    offset = e(f"mul i64 %i, {G * W * BLOCK}")
    n4 = 4 * W
    states = []
    for g in range(G):
        if mode == "ctr":     # word w of the counter blocks nonce ‖ (ctr + lane)
            ctr = e(f"add {vi} {splat(e(f'add i32 {base}, {g * W}'))}, {lanes}")
            states.append([iv_splats[0], iv_splats[1], iv_splats[2], ctr])
            continue
        # ECB: the input blocks, big-endian words, sliced: register w holds word w of each block
        pin = e(f"getelementptr inbounds i8, ptr %in, i64 {e(f'add i64 {offset}, {g * W * BLOCK}')}")
        words = e(f"bitcast <{4 * n4} x i8> {e(f'load <{4 * n4} x i8>, ptr {pin}, align 1')} to <{n4} x i32>")
        words = e(f"call <{n4} x i32> @llvm.bswap.v{n4}i32(<{n4} x i32> {words})")
        states.append([e(f"shufflevector <{n4} x i32> {words}, <{n4} x i32> poison, <{W} x i32> "
                         f"{_i32_list([4 * j + w for j in range(W)])}") for w in range(4)])
    for r in range(32):
        for g in range(G):
            x0, x1, x2, x3 = states[g]
            t = e(f"xor {vi} {x1}, {x2}")
            t = e(f"xor {vi} {e(f'xor {vi} {t}, {x3}')}, {rks[r]}")
            s = sbox(t)
            l1 = e(f"xor {vi} {s}, {rol(s, 2)}")
            l2 = e(f"xor {vi} {rol(s, 10)}, {rol(s, 18)}")
            l3 = e(f"xor {vi} {e(f'xor {vi} {l1}, {l2}')}, {rol(s, 24)}")
            states[g] = [x1, x2, x3, e(f"xor {vi} {x0}, {l3}")]
    order = _i32_list([(k % 4) * W + k // 4 for k in range(n4)])    # block j word w ← Y_w[j]
    for g in range(G):
        y0, y1, y2, y3 = states[g][3], states[g][2], states[g][1], states[g][0]   # (X35, X34, X33, X32)
        a = e(f"shufflevector {vi} {y0}, {vi} {y1}, <{2 * W} x i32> {_i32_list(range(2 * W))}")
        b = e(f"shufflevector {vi} {y2}, {vi} {y3}, <{2 * W} x i32> {_i32_list(range(2 * W))}")
        c = e(f"shufflevector <{2 * W} x i32> {a}, <{2 * W} x i32> {b}, <{n4} x i32> {_i32_list(range(n4))}")
        d = e(f"shufflevector <{n4} x i32> {c}, <{n4} x i32> poison, <{n4} x i32> {order}")
        ks = e(f"bitcast <{n4} x i32> {e(f'call <{n4} x i32> @llvm.bswap.v{n4}i32(<{n4} x i32> {d})')} to <{4 * n4} x i8>")
        off = e(f"add i64 {offset}, {g * W * BLOCK}")
        pin = e(f"getelementptr inbounds i8, ptr %in, i64 {off}")
        pout = e(f"getelementptr inbounds i8, ptr %out, i64 {off}")
        if mode == "ctr":
            data = e(f"load <{4 * n4} x i8>, ptr {pin}, align 1")
            ks = e(f"xor <{4 * n4} x i8> {data}, {ks}")
        e.raw(f"  store <{4 * n4} x i8> {ks}, ptr {pout}, align 1")
    e.raw("  %inext = add i64 %i, 1")
    e.raw("  %done = icmp eq i64 %inext, %niter")
    e.raw("  br i1 %done, label %exit, label %loop")
    e.raw("exit:")
    e.raw("  ret void")
    return "\n".join([f"define void @sm4_{mode}(ptr noalias %rk, ptr noalias %iv, ptr %in, ptr %out, i64 %niter) {{"]
                      + e.lines + ["}"])


def ghash_ir() -> str:
    e = _Emit()
    rev = _i32_list(range(15, -1, -1))
    q2, d4 = "<2 x i64>", "<4 x i32>"

    def reflect(ptr: str) -> str:
        b = e(f"load <16 x i8>, ptr {ptr}, align 1")
        return e(f"bitcast <16 x i8> {e(f'shufflevector <16 x i8> {b}, <16 x i8> poison, <16 x i32> {rev}')} to {q2}")

    def clmul(a: str, b: str, imm: int) -> str:
        return e(f"call {q2} @llvm.x86.pclmulqdq({q2} {a}, {q2} {b}, i8 {imm})")

    def as32(x: str) -> str:
        return e(f"bitcast {q2} {x} to {d4}")

    def as64(x: str) -> str:
        return e(f"bitcast {d4} {x} to {q2}")

    def bshift32(x: str, mask) -> str:      # byte shifts of a <4 x i32> (4 selects zero)
        return e(f"shufflevector {d4} {x}, {d4} zeroinitializer, <4 x i32> {_i32_list(mask)}")

    def lanes(op: str, x: str, n: int) -> str:
        return e(f"{op} {d4} {x}, {_i32_list([n] * 4)}")

    def gfmul(a: str, b: str) -> str:
        """Gueron–Kounavis figure 5: a·b in GF(2^128) on byte-reflected operands."""
        t3, t4, t5, t6 = clmul(a, b, 0x00), clmul(a, b, 0x10), clmul(a, b, 0x01), clmul(a, b, 0x11)
        t4 = e(f"xor {q2} {t4}, {t5}")
        t5 = e(f"shufflevector {q2} {t4}, {q2} zeroinitializer, <2 x i32> <i32 2, i32 0>")   # << 64
        t4 = e(f"shufflevector {q2} {t4}, {q2} zeroinitializer, <2 x i32> <i32 1, i32 2>")   # >> 64
        t3 = as32(e(f"xor {q2} {t3}, {t5}"))
        t6 = as32(e(f"xor {q2} {t6}, {t4}"))
        t7, t8 = lanes("lshr", t3, 31), lanes("lshr", t6, 31)
        t3, t6 = lanes("shl", t3, 1), lanes("shl", t6, 1)
        t9 = bshift32(t7, [3, 4, 4, 4])
        t8 = bshift32(t8, [4, 0, 1, 2])
        t7 = bshift32(t7, [4, 0, 1, 2])
        t3 = e(f"or {d4} {t3}, {t7}")
        t6 = e(f"or {d4} {e(f'or {d4} {t6}, {t8}')}, {t9}")
        t7 = e(f"xor {d4} {lanes('shl', t3, 31)}, {lanes('shl', t3, 30)}")
        t7 = e(f"xor {d4} {t7}, {lanes('shl', t3, 25)}")
        t8 = bshift32(t7, [1, 2, 3, 4])
        t7 = bshift32(t7, [4, 4, 4, 0])
        t3 = e(f"xor {d4} {t3}, {t7}")
        t2 = e(f"xor {d4} {lanes('lshr', t3, 1)}, {lanes('lshr', t3, 2)}")
        t2 = e(f"xor {d4} {t2}, {lanes('lshr', t3, 7)}")
        t2 = e(f"xor {d4} {t2}, {t8}")
        t3 = e(f"xor {d4} {t3}, {t2}")
        return as64(e(f"xor {d4} {t6}, {t3}"))

    e.raw("entry:")
    h = reflect("%h")
    s0 = reflect("%state")
    e.raw("  %empty = icmp eq i64 %n, 0")
    e.raw("  br i1 %empty, label %exit, label %loop")
    e.raw("loop:")
    e.raw("  %i = phi i64 [0, %entry], [%inext, %loop]")
    e.raw(f"  %x = phi {q2} [{s0}, %entry], [%y, %loop]")
    p = e(f"getelementptr inbounds i8, ptr %data, i64 {e('mul i64 %i, 16')}")
    y = gfmul(e(f"xor {q2} %x, {reflect(p)}"), h)
    e.raw(f"  %y = or {q2} {y}, zeroinitializer")
    e.raw("  %inext = add i64 %i, 1")
    e.raw("  %done = icmp eq i64 %inext, %n")
    e.raw("  br i1 %done, label %exit, label %loop")
    e.raw("exit:")
    e.raw(f"  %fin = phi {q2} [{s0}, %entry], [%y, %loop]")
    fb = e(f"bitcast {q2} %fin to <16 x i8>")
    out = e(f"shufflevector <16 x i8> {fb}, <16 x i8> poison, <16 x i32> {rev}")
    e.raw(f"  store <16 x i8> {out}, ptr %state, align 1")
    e.raw("  ret void")
    return "\n".join([f"declare {q2} @llvm.x86.pclmulqdq({q2}, {q2}, i8 immarg)",
                      "define void @ghash(ptr noalias %h, ptr noalias %state, ptr noalias %data, i64 %n) {"]
                     + e.lines + ["}"])
