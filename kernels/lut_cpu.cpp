// CPU kernels of the packed low-bit LUT ops (performance.md §6a): qsd::lut_decode, qsd::lut_linear and
// qsd::lut_mm_int8 on the packed format of `qsd.kernels.packing`, loaded by `qsd.kernels.cpu`.
//
// AVX-512 (F/BW/VL + VNNI + VBMI) path, one 64-code block at a time:
//   decode   up to 4 bits, the codes come straight from the packed bytes with junk in the bits above them,
//            which the lookups ignore (vpermps reads 4 index bits, vpermb 6, and the tables are repeated
//            over the slots the junk can select): a 4-bit plane needs one widening (float) or one
//            vpmultishiftqb (int8), a 2-bit plane a shift, a 1-bit plane a rotate or a vpmultishiftqb and a
//            bit select. 5..8 bits decode exactly (shifts, masks, and vptestmb for a 1-bit plane).
//   float    16 indices at a time look up the row's fp32 table in registers (vpermps up to 16 entries,
//            vpermt2ps for 32, a gather beyond); lut_linear FMAs them into M ≤ kFusedRows accumulators, each
//            looked-up vector reused across the M rows, and for larger M decodes W once and calls the dense
//            GEMM (at::mm).
//   int8     the row's int8 table, offset to u8 (W + 128), gives 64 weights per vpermb (up to 64 entries;
//            vpermt2b beyond), and vpdpbusd multiplies them with the int8 activations. Subtracting
//            128·Σ_j xq[m, j] (once per activation row) makes Σ xq·W exact in int32 (wrapping like the
//            reference). Activations are padded with 0 up to K_pad.
// Without those ISA extensions a portable scalar path computes the same results.
// Rows are split over the OpenMP threads (torch's thread count, schedule(static)). Sub-millisecond calls
// want spinning worker threads: benchmarks set OMP_WAIT_POLICY=active before importing torch.

#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>
#include <vector>

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && defined(__AVX512VNNI__) && \
    defined(__AVX512VBMI__)
#define QSD_AVX512 1
#include <immintrin.h>
#endif

namespace {

constexpr int64_t kBlock = 64;
// lut_linear fuses the lookup into the dot products up to this many activation rows (measured on this Zen4
// VM at the PixArt-α shapes: beyond it, decoding W once and calling the dense GEMM is faster).
constexpr int64_t kFusedRows = 32;
// Activation rows one kernel call keeps in registers.
constexpr int kTileRows = 8;

struct Codes {
  int bits;
  int64_t rows, k, blocks, row_bytes, table_stride;  // table_stride is 0 for a shared table
};

Codes check_codes(const char* op, const at::Tensor& packed, const at::Tensor& table, at::ScalarType table_dtype,
                  int64_t bits, int64_t k) {
  TORCH_CHECK_VALUE(bits >= 2 && bits <= 8, op, ": bits must be in 2..8; got ", bits);
  TORCH_CHECK_VALUE(k >= 0, op, ": k must be >= 0; got ", k);
  TORCH_CHECK_TYPE(packed.scalar_type() == at::kByte && packed.dim() == 2, op,
                   ": packed codes must be a 2-D uint8 tensor [O, K_pad*bits/8]; got ", packed.scalar_type(), " ",
                   packed.sizes());
  const int64_t blocks = (k + kBlock - 1) / kBlock, row_bytes = blocks * 8 * bits, rows = packed.size(0);
  TORCH_CHECK_VALUE(packed.size(1) == row_bytes, op, ": packed codes for k=", k, " at ", bits, " bits have ",
                    row_bytes, " bytes per row; got ", packed.sizes());
  TORCH_CHECK_TYPE(table.scalar_type() == table_dtype, op, ": the table must be ", table_dtype, "; got ",
                   table.scalar_type());
  TORCH_CHECK_VALUE(table.dim() == 2 && table.size(1) == (int64_t{1} << bits) &&
                        (table.size(0) == 1 || table.size(0) == rows),
                    op, ": the table must be [1 or O=", rows, ", 2^bits=", int64_t{1} << bits, "]; got ",
                    table.sizes());
  for (const at::Tensor* t : {&packed, &table}) {
    TORCH_CHECK_VALUE(t->device().is_cpu() && t->is_contiguous(), op, ": inputs must be contiguous CPU tensors");
  }
  return {static_cast<int>(bits), rows, k, blocks, row_bytes, table.size(0) == 1 ? 0 : table.size(1)};
}

void check_activations(const char* op, const at::Tensor& x, at::ScalarType dtype, int64_t k) {
  TORCH_CHECK_TYPE(x.scalar_type() == dtype, op, ": activations must be ", dtype, "; got ", x.scalar_type());
  TORCH_CHECK_VALUE(x.dim() == 2 && x.size(1) == k, op, ": activations must be [M, k=", k, "]; got ", x.sizes());
  TORCH_CHECK_VALUE(x.device().is_cpu() && x.is_contiguous(), op, ": inputs must be contiguous CPU tensors");
}

// Calls f(std::integral_constant<int, v>) for the runtime value v clamped to [Lo, Hi], so that kernels are
// compiled per bit width and per activation-row tile.
template <int Lo, int Hi, class F>
void dispatch(int64_t v, F&& f) {
  if constexpr (Lo == Hi) {
    f(std::integral_constant<int, Lo>{});
  } else if (v <= Lo) {
    f(std::integral_constant<int, Lo>{});
  } else {
    dispatch<Lo + 1, Hi>(v, std::forward<F>(f));
  }
}

template <class F>
void with_bits(int bits, F&& f) { dispatch<2, 8>(bits, std::forward<F>(f)); }

// Activations copied into rows of K_pad values, the padding filled with `pad`.
template <class T>
at::Tensor pad_rows(const at::Tensor& x, int64_t k_pad, T pad) {
  const int64_t m = x.size(0), k = x.size(1);
  at::Tensor out = at::empty({m, k_pad}, x.options());
  const T* src = x.data_ptr<T>();
  T* dst = out.data_ptr<T>();
  for (int64_t r = 0; r < m; ++r) {
    std::copy(src + r * k, src + (r + 1) * k, dst + r * k_pad);
    std::fill(dst + r * k_pad + k, dst + (r + 1) * k_pad, pad);
  }
  return out;
}

#ifdef QSD_AVX512

#define QSD_INLINE inline __attribute__((always_inline))

// The 64 codes of one plane, one per byte (bytes hold the plane's bits only).
QSD_INLINE __m512i plane4(const uint8_t* s) {
  const __m512i both = _mm512_broadcast_i64x4(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(s)));
  const __m512i shift = _mm512_set_epi64(0x0004000400040004, 0x0004000400040004, 0x0004000400040004,
                                         0x0004000400040004, 0, 0, 0, 0);  // high nibbles → codes 32..63
  return _mm512_and_si512(_mm512_srlv_epi16(both, shift), _mm512_set1_epi8(0x0F));
}

QSD_INLINE __m512i plane2(const uint8_t* s) {
  const __m512i lanes = _mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s)));
  const __m512i shift = _mm512_set_epi64(0x0006000600060006, 0x0006000600060006, 0x0004000400040004,
                                         0x0004000400040004, 0x0002000200020002, 0x0002000200020002, 0, 0);
  return _mm512_and_si512(_mm512_srlv_epi16(lanes, shift), _mm512_set1_epi8(0x03));
}

QSD_INLINE __mmask64 plane1(const uint8_t* s) {  // bit i = code i
  uint64_t bytes;
  std::memcpy(&bytes, s, 8);
  const __m512i select = _mm512_set_epi64(0x8080808080808080, 0x4040404040404040, 0x2020202020202020,
                                          0x1010101010101010, 0x0808080808080808, 0x0404040404040404,
                                          0x0202020202020202, 0x0101010101010101);
  return _mm512_test_epi8_mask(_mm512_set1_epi64(static_cast<long long>(bytes)), select);
}

// The 64 codes of a block (planes widest first, low code bits in the widest plane), one per byte.
template <int B>
QSD_INLINE __m512i decode_block(const uint8_t* s) {
  if constexpr (B == 8) return _mm512_loadu_si512(s);
  __m512i idx = _mm512_setzero_si512();
  if constexpr ((B & 4) != 0) {
    idx = plane4(s);
    s += 32;
  }
  if constexpr ((B & 2) != 0) {
    idx = (B & 4) != 0 ? _mm512_or_si512(idx, _mm512_slli_epi16(plane2(s), 4)) : plane2(s);
    s += 16;
  }
  if constexpr ((B & 1) != 0) idx = _mm512_mask_add_epi8(idx, plane1(s), idx, _mm512_set1_epi8(1 << (B - 1)));
  return idx;
}

// Byte j of qword L of a vpmultishiftqb control: bit offset 8j + c_L (mod 64).
constexpr long long offsets(int c) { return static_cast<long long>(0x3830282018100800ull + 0x0101010101010101ull * c); }

// A block's 64 codes, one per byte, up to 4 bits: vpmultishiftqb moves each code of a broadcast plane into
// its byte. Bits above the code are junk, which vpermb (bits 6, 7) and tables repeated over the 64 slots
// (bits b..5) ignore.
template <int B>
QSD_INLINE __m512i junk_codes(const uint8_t* s) {
  if constexpr (B == 4) {  // code 8L + j: byte 8(L mod 4) + j, high nibble for L ≥ 4
    const __m512i ctrl = _mm512_set_epi64(offsets(4), offsets(4), offsets(4), offsets(4), offsets(0), offsets(0),
                                          offsets(0), offsets(0));
    return _mm512_multishift_epi64_epi8(
        ctrl, _mm512_broadcast_i64x4(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(s))));
  } else {  // 2-bit plane: code 8L + j in byte 8(L mod 2) + j at bit 2(L div 2)
    const __m512i ctrl2 = _mm512_set_epi64(offsets(6), offsets(6), offsets(4), offsets(4), offsets(2), offsets(2),
                                           offsets(0), offsets(0));
    const __m512i lo = _mm512_multishift_epi64_epi8(
        ctrl2, _mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s))));
    if constexpr (B == 2) return lo;
    // 1-bit plane: code 8L + j at bit L of byte j, moved to bit 2 (offset 8j + L - 2, mod 64)
    const __m512i ctrl1 = _mm512_set_epi64(offsets(69), offsets(68), offsets(67), offsets(66), offsets(65),
                                           offsets(64), offsets(63), offsets(62));
    long long plane;
    std::memcpy(&plane, s + 16, 8);
    const __m512i hi = _mm512_multishift_epi64_epi8(ctrl1, _mm512_set1_epi64(plane));
    return _mm512_ternarylogic_epi32(_mm512_set1_epi8(4), hi, lo, 0xCA);  // bit 2 from hi, the rest from lo
  }
}

// Calls f(q, indices of codes 16q..16q+15 as dwords) for q = 0..3. Up to 4 bits the dwords come straight
// from the packed bytes with junk above the code bits: vpermps reads the low 4 bits only, and FloatTable
// repeats a 4- or 8-entry table over them.
template <int B, class F>
QSD_INLINE void block_dwords(const uint8_t* s, F&& f) {
  if constexpr (B == 4) {  // codes i, 32 + i in the nibbles of byte i
    const __m512i lo = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s)));
    const __m512i hi = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s + 16)));
    f(0, lo);
    f(1, hi);
    f(2, _mm512_srli_epi32(lo, 4));
    f(3, _mm512_srli_epi32(hi, 4));
  } else if constexpr (B <= 3) {  // 2-bit plane: codes 16q + i at bits 2q of byte i
    const __m512i lo = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s)));
    __m512i hi = _mm512_setzero_si512();
    if constexpr (B == 3) {  // 1-bit plane: dword t holds byte t mod 8, code 16q + t at bit 2q + t div 8
      long long plane;
      std::memcpy(&plane, s + 16, 8);
      hi = _mm512_cvtepu8_epi32(_mm_set1_epi64x(plane));
    }
    auto index = [&](int q, __m512i lo_q) {
      if constexpr (B == 2) return lo_q;
      const __m512i half = _mm512_set_epi64(0x100000001, 0x100000001, 0x100000001, 0x100000001, 0, 0, 0, 0);  // t div 8
      const __m512i rotate = _mm512_sub_epi32(_mm512_set1_epi32(2 - 2 * q), half);  // hi bit → bit 2
      return _mm512_ternarylogic_epi32(_mm512_set1_epi32(4), _mm512_rolv_epi32(hi, rotate), lo_q, 0xCA);
    };
    f(0, index(0, lo));
    f(1, index(1, _mm512_srli_epi32(lo, 2)));
    f(2, index(2, _mm512_srli_epi32(lo, 4)));
    f(3, index(3, _mm512_srli_epi32(lo, 6)));
  } else {
    const __m512i idx = decode_block<B>(s);
    f(0, _mm512_cvtepu8_epi32(_mm512_castsi512_si128(idx)));
    f(1, _mm512_cvtepu8_epi32(_mm512_extracti32x4_epi32(idx, 1)));
    f(2, _mm512_cvtepu8_epi32(_mm512_extracti32x4_epi32(idx, 2)));
    f(3, _mm512_cvtepu8_epi32(_mm512_extracti32x4_epi32(idx, 3)));
  }
}

// One row's fp32 table held in registers (≤ 32 entries; up to 4 bits repeated over 16 slots) or gathered.
template <int B>
struct FloatTable {
  __m512 lo, hi;
  const float* entries;
  QSD_INLINE explicit FloatTable(const float* t) : entries(t) {
    if constexpr (B <= 4) {
      const __m512i slot = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
      lo = _mm512_permutexvar_ps(_mm512_and_si512(slot, _mm512_set1_epi32((1 << B) - 1)),
                                 _mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << (1 << B)) - 1), t));
    }
    if constexpr (B == 5) {
      lo = _mm512_loadu_ps(t);
      hi = _mm512_loadu_ps(t + 16);
    }
  }
  QSD_INLINE __m512 operator()(__m512i idx) const {
    if constexpr (B <= 4) return _mm512_permutexvar_ps(idx, lo);
    else if constexpr (B == 5) return _mm512_permutex2var_ps(lo, idx, hi);
    else return _mm512_i32gather_ps(idx, entries, 4);
  }
};

// One row's int8 table as u8 (entry + 128, up to 6 bits repeated over the 64 vpermb slots):
// a block → its 64 weights + 128.
template <int B>
struct WeightsU8 {
  __m512i t[4];
  QSD_INLINE explicit WeightsU8(const int8_t* e) {
    const __m512i bias = _mm512_set1_epi8(static_cast<char>(0x80));
    if constexpr (B <= 6) {
      alignas(64) static constexpr uint8_t kSlots[64] = {
          0,  1,  2,  3,  4,  5,  6,  7,  8,  9,  10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21,
          22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43,
          44, 45, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63};
      const __m512i slot = _mm512_and_si512(_mm512_load_si512(kSlots), _mm512_set1_epi8((1 << B) - 1));
      const __m512i row = _mm512_maskz_loadu_epi8(~__mmask64{0} >> (64 - (1 << B)), e);
      t[0] = _mm512_xor_si512(_mm512_permutexvar_epi8(slot, row), bias);
    } else {
      for (int i = 0; i < (1 << B) / 64; ++i) t[i] = _mm512_xor_si512(_mm512_loadu_si512(e + 64 * i), bias);
    }
  }
  QSD_INLINE __m512i operator()(const uint8_t* s) const {
    if constexpr (B <= 4) return _mm512_permutexvar_epi8(junk_codes<B>(s), t[0]);
    const __m512i idx = decode_block<B>(s);
    if constexpr (B <= 6) return _mm512_permutexvar_epi8(idx, t[0]);
    else if constexpr (B == 7) return _mm512_permutex2var_epi8(t[0], idx, t[1]);
    else {
      return _mm512_mask_blend_epi8(_mm512_movepi8_mask(idx), _mm512_permutex2var_epi8(t[0], idx, t[1]),
                                    _mm512_permutex2var_epi8(t[2], idx, t[3]));
    }
  }
};

template <int B>
void decode_rows(const Codes& c, const uint8_t* packed, const float* table, float* out) {
#pragma omp parallel for schedule(static) num_threads(at::get_num_threads())
  for (int64_t o = 0; o < c.rows; ++o) {
    const FloatTable<B> lookup(table + o * c.table_stride);
    const uint8_t* src = packed + o * c.row_bytes;
    float* dst = out + o * c.k;
    for (int64_t b = 0; b < c.blocks; ++b, src += 8 * B) {
      const int64_t base = b * kBlock, valid = std::min(kBlock, c.k - base);
      block_dwords<B>(src, [&](int q, __m512i idx) {
        const int64_t n = valid - 16 * q;
        if (n >= 16) _mm512_storeu_ps(dst + base + 16 * q, lookup(idx));
        else if (n > 0) _mm512_mask_storeu_ps(dst + base + 16 * q, static_cast<__mmask16>((1u << n) - 1), lookup(idx));
      });
    }
  }
}

// y[m, o] for MT activation rows (x rows of K_pad floats, zero padded) and one output row.
template <int B, int MT>
void fused_row(const Codes& c, const uint8_t* src, const float* table, const float* x, int64_t k_pad, float* y,
               int64_t ldy) {
  constexpr int kAcc = MT == 1 ? 4 : MT == 2 ? 2 : 1;  // independent FMA chains per activation row
  __m512 acc[MT][kAcc];
  for (auto& row : acc)
    for (auto& a : row) a = _mm512_setzero_ps();
  const FloatTable<B> lookup(table);
  for (int64_t b = 0; b < c.blocks; ++b, src += 8 * B) {
    const float* xb = x + b * kBlock;
    block_dwords<B>(src, [&](int q, __m512i idx) {
      const __m512 w = lookup(idx);
      for (int m = 0; m < MT; ++m)
        acc[m][q % kAcc] = _mm512_fmadd_ps(w, _mm512_loadu_ps(xb + m * k_pad + 16 * q), acc[m][q % kAcc]);
    });
  }
  for (int m = 0; m < MT; ++m) {
    __m512 sum = acc[m][0];
    for (int a = 1; a < kAcc; ++a) sum = _mm512_add_ps(sum, acc[m][a]);
    y[m * ldy] = _mm512_reduce_add_ps(sum);
  }
}

// y[m, o] = Σ_j xq[m, j]·W[o, j] for MT activation rows (int8, rows of K_pad, zero padded) and one output
// row: vpdpbusd sums (W + 128)·xq, and `shift[m]` = 128·Σ_j xq[m, j] is subtracted (wrapping like int32).
template <int B, int MT>
void int8_row(const Codes& c, const uint8_t* src, const int8_t* table, const int8_t* x, int64_t k_pad,
              const uint32_t* shift, int32_t* y, int64_t ldy) {
  constexpr int kAcc = MT == 1 ? 4 : MT == 2 ? 2 : 1;  // independent vpdpbusd chains per activation row
  __m512i acc[MT][kAcc];
  for (auto& row : acc)
    for (auto& a : row) a = _mm512_setzero_si512();
  const WeightsU8<B> weights(table);
  auto step = [&](int64_t b, int u) {
    const __m512i w = weights(src + b * 8 * B);
    for (int m = 0; m < MT; ++m)
      acc[m][u] = _mm512_dpbusd_epi32(acc[m][u], w, _mm512_loadu_si512(x + m * k_pad + b * kBlock));
  };
  int64_t b = 0;
  for (; b + kAcc <= c.blocks; b += kAcc)
    for (int u = 0; u < kAcc; ++u) step(b + u, u);
  for (; b < c.blocks; ++b) step(b, 0);
  for (int m = 0; m < MT; ++m) {
    for (int u = 1; u < kAcc; ++u) acc[m][0] = _mm512_add_epi32(acc[m][0], acc[m][u]);
    y[m * ldy] = static_cast<int32_t>(static_cast<uint32_t>(_mm512_reduce_add_epi32(acc[m][0])) - shift[m]);
  }
}

// Calls f(std::integral_constant<int, rows>) for rows in 1..kTileRows.
template <class F>
void with_rows(int64_t rows, F&& f) { dispatch<1, kTileRows>(rows, std::forward<F>(f)); }

#else  // portable scalar path

// The 64 codes of a block, one per byte.
void decode_block(const uint8_t* s, int bits, uint8_t* codes) {
  std::fill(codes, codes + kBlock, 0);
  int shift = 0;
  for (int p : {8, 4, 2, 1}) {
    if ((bits & p) == 0) continue;
    const int span = 8 * p, mask = (1 << p) - 1;
    for (int i = 0; i < kBlock; ++i) codes[i] |= ((s[i % span] >> (p * (i / span))) & mask) << shift;
    s += span;
    shift += p;
  }
}

template <class T>
void decode_rows(const Codes& c, const uint8_t* packed, const T* table, T* out, int64_t ld) {
#pragma omp parallel for schedule(static) num_threads(at::get_num_threads())
  for (int64_t o = 0; o < c.rows; ++o) {
    const T* t = table + o * c.table_stride;
    uint8_t codes[kBlock];
    for (int64_t b = 0; b < c.blocks; ++b) {
      decode_block(packed + o * c.row_bytes + b * 8 * c.bits, c.bits, codes);
      for (int64_t i = 0; i < std::min(kBlock, ld - b * kBlock); ++i) out[o * ld + b * kBlock + i] = t[codes[i]];
    }
  }
}

#endif

at::Tensor decode_all(const Codes& c, const at::Tensor& packed, const at::Tensor& table) {
  at::Tensor out = at::empty({c.rows, c.k}, table.options());
#ifdef QSD_AVX512
  with_bits(c.bits, [&](auto bits) {
    decode_rows<decltype(bits)::value>(c, packed.data_ptr<uint8_t>(), table.data_ptr<float>(),
                                       out.data_ptr<float>());
  });
#else
  decode_rows(c, packed.data_ptr<uint8_t>(), table.data_ptr<float>(), out.data_ptr<float>(), c.k);
#endif
  return out;
}

at::Tensor lut_decode(const at::Tensor& packed, const at::Tensor& table, int64_t bits, int64_t k) {
  return decode_all(check_codes("lut_decode", packed, table, at::kFloat, bits, k), packed, table);
}

at::Tensor lut_linear(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& table, int64_t bits,
                      int64_t k) {
  const Codes c = check_codes("lut_linear", packed, table, at::kFloat, bits, k);
  check_activations("lut_linear", x, at::kFloat, k);
  const int64_t m = x.size(0);
#ifdef QSD_AVX512
  if (m <= kFusedRows && c.blocks > 0) {
    const int64_t k_pad = c.blocks * kBlock;
    const at::Tensor xp = k_pad == k ? x : pad_rows<float>(x, k_pad, 0.0f);
    at::Tensor y = at::empty({m, c.rows}, x.options());
    const float* xs = xp.data_ptr<float>();
    const float* ts = table.data_ptr<float>();
    const uint8_t* ps = packed.data_ptr<uint8_t>();
    float* ys = y.data_ptr<float>();
    with_bits(c.bits, [&](auto bits) {
      constexpr int B = decltype(bits)::value;
#pragma omp parallel for schedule(static) num_threads(at::get_num_threads())
      for (int64_t o = 0; o < c.rows; ++o) {
        for (int64_t m0 = 0; m0 < m; m0 += kTileRows) {
          with_rows(std::min<int64_t>(kTileRows, m - m0), [&](auto rows) {
            fused_row<B, decltype(rows)::value>(c, ps + o * c.row_bytes, ts + o * c.table_stride, xs + m0 * k_pad,
                                                k_pad, ys + m0 * c.rows + o, c.rows);
          });
        }
      }
    });
    return y;
  }
#endif
  return at::mm(x, decode_all(c, packed, table).t());
}

at::Tensor lut_mm_int8(const at::Tensor& xq, const at::Tensor& packed, const at::Tensor& table_q, int64_t bits,
                       int64_t k) {
  const Codes c = check_codes("lut_mm_int8", packed, table_q, at::kChar, bits, k);
  check_activations("lut_mm_int8", xq, at::kChar, k);
  const int64_t m = xq.size(0), k_pad = c.blocks * kBlock;
  at::Tensor y = at::empty({m, c.rows}, xq.options().dtype(at::kInt));
  const uint8_t* ps = packed.data_ptr<uint8_t>();
  const int8_t* ts = table_q.data_ptr<int8_t>();
  int32_t* ys = y.data_ptr<int32_t>();
#ifdef QSD_AVX512
  const at::Tensor xp = k_pad == k ? xq : pad_rows<int8_t>(xq, k_pad, 0);
  const int8_t* xs = xp.data_ptr<int8_t>();
  std::vector<uint32_t> shift(m);
  for (int64_t r = 0; r < m; ++r) {
    uint32_t sum = 0;
    for (int64_t j = 0; j < k_pad; ++j) sum += static_cast<uint32_t>(xs[r * k_pad + j]);
    shift[r] = 128u * sum;
  }
  constexpr int64_t kPanelRows = 64;  // activation rows every output row meets before the next panel (L2)
  with_bits(c.bits, [&](auto bits) {
    constexpr int B = decltype(bits)::value;
#pragma omp parallel num_threads(at::get_num_threads())
    for (int64_t p0 = 0; p0 < m; p0 += kPanelRows) {
#pragma omp for schedule(static) nowait
      for (int64_t o = 0; o < c.rows; ++o) {
        for (int64_t m0 = p0; m0 < std::min(m, p0 + kPanelRows); m0 += kTileRows) {
          with_rows(std::min<int64_t>(kTileRows, m - m0), [&](auto rows) {
            int8_row<B, decltype(rows)::value>(c, ps + o * c.row_bytes, ts + o * c.table_stride, xs + m0 * k_pad,
                                               k_pad, shift.data() + m0, ys + m0 * c.rows + o, c.rows);
          });
        }
      }
    }
  });
#else
  const at::Tensor xs = xq.to(at::kInt);
  const int32_t* x32 = xs.data_ptr<int32_t>();
#pragma omp parallel for schedule(static) num_threads(at::get_num_threads())
  for (int64_t o = 0; o < c.rows; ++o) {
    std::vector<uint8_t> codes(k_pad);
    for (int64_t b = 0; b < c.blocks; ++b) decode_block(ps + o * c.row_bytes + b * 8 * c.bits, c.bits, &codes[b * kBlock]);
    const int8_t* t = ts + o * c.table_stride;
    for (int64_t r = 0; r < m; ++r) {
      uint32_t sum = 0;
      for (int64_t j = 0; j < k; ++j) sum += static_cast<uint32_t>(x32[r * k + j]) * static_cast<uint32_t>(t[codes[j]]);
      ys[r * c.rows + o] = static_cast<int32_t>(sum);
    }
  }
#endif
  return y;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "qsd packed low-bit LUT kernels for CPU (AVX-512 VNNI/VBMI with a scalar fallback)";
  m.def("lut_decode", &lut_decode, "W[o, j] = table[o or 0, code[o, j]] as float32 [O, k]");
  m.def("lut_linear", &lut_linear, "x [M, k] float32 times the decoded weight transposed -> [M, O]");
  m.def("lut_mm_int8", &lut_mm_int8, "int8 activations times the int8-table weight -> exact int32 [M, O]");
#ifdef QSD_AVX512
  m.attr("simd") = "avx512";
#else
  m.attr("simd") = "scalar";
#endif
}
