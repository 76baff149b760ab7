// Device helpers shared by the attention kernels of attention.cu and attention_wgmma.cu: the
// key-split partial-output layout that CombineKernel merges, the split of a sequence's key axis,
// the segment lookup, and the RoPE angle reduction used to rotate queries by -rope_offset.
#pragma once

#include <cuda_runtime.h>

#include "kernels/cuda/layouts.h"

namespace kvblock::cuda::internal {

// Where a key-split attention kernel writes each row's partial result: the normalized partial O
// and (m, l) = (running maximum in the log2 domain, or -inf when the split saw no key; row sum).
// CombineKernel (attention.cu) merges the splits. Row index
// ((seq * splits + split) * max_q_len + token) * num_heads + head.
struct PartialOut {
  float* o;   // [seqs][splits][max_q_len][heads][D]
  float* ml;  // [seqs][splits][max_q_len][heads][2]
};

struct KeyRange {
  int begin, end;
};

// Keys [begin, end) that split `split` of `splits` handles for rows whose largest token is t_max;
// split boundaries are multiples of `tile` keys.
__device__ __forceinline__ KeyRange SplitRange(const AttnSequence& s, int split, int splits,
                                               int t_max, int tile) {
  int chunk = (s.num_keys + splits - 1) / splits;
  chunk = (chunk + tile - 1) / tile * tile;
  KeyRange r;
  r.begin = split * chunk;
  r.end = min(s.num_keys, r.begin + chunk);
  r.end = min(r.end, s.causal_start + t_max + 1);
  return r;
}

// The segment cursor (segment index, its first key) for key k: seq.seg_end and the key count
// when k is past the last key. The calling warp reads 32 segment lengths at a time with
// independent loads and scans them, instead of one dependent load per segment (the last split of
// a 64-block prompt starts 60 segments in). All 32 lanes must call it together.
__device__ __forceinline__ void LocateKey(const AttentionParams& p, const AttnSequence& seq, int k,
                                          int lane, int& seg, int& seg_start) {
  seg = seq.seg_begin;
  seg_start = 0;
  for (int base = seq.seg_begin; base < seq.seg_end; base += 32) {
    const int i = base + lane;
    const int len = i < seq.seg_end ? p.segs[i].num_tokens : 0;
    int incl = len;  // keys in segments base .. i
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const int v = __shfl_up_sync(0xffffffffu, incl, o);
      if (lane >= o) incl += v;
    }
    const unsigned ends_after = __ballot_sync(0xffffffffu, seg_start + incl > k);
    if (ends_after != 0) {
      const int j = __ffs(ends_after) - 1;  // the first segment that ends after k holds it
      seg = base + j;
      seg_start += __shfl_sync(0xffffffffu, incl - len, j);
      return;
    }
    seg_start += __shfl_sync(0xffffffffu, incl, 31);
    seg = min(base + 32, seq.seg_end);
  }
}

// cos/sin of offset * inv_freq: the angle (up to ~1e5 rad) reduced to [-pi, pi] in f64, then
// the f32 intrinsics; an absolute error ~1e-6, far under bf16's rounding (a full f64 sincos would
// need more registers than the kernels have left beside their accumulators).
__device__ __forceinline__ void RopeCosSin(int offset, float inv_freq, float* cos_out,
                                           float* sin_out) {
  const double theta = static_cast<double>(offset) * inv_freq;
  const double kTwoPi = 6.283185307179586;
  const float r = static_cast<float>(fma(-rint(theta * (1.0 / kTwoPi)), kTwoPi, theta));
  __sincosf(r, sin_out, cos_out);
}

}  // namespace kvblock::cuda::internal
