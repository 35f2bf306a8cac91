// Batch norm (optionally fused with the ReLU after it) on CUDA, for f32 tensors laid out
// (N, C, H, W) and contiguous: the same ops as the CPU kernels beside this file (stats.rs,
// mod.rs, backward.rs), which say what each value is. Compiled to PTX by build.rs with the
// `cuda` feature and launched from cuda.rs.
//
// Per-channel sums run over a grid of (chunks, C) blocks, each summing one stretch of one
// channel's N·H·W values in f64 and writing its partial sums; a second kernel adds a channel's
// partials. The element-wise kernels are grid-stride loops; each block first works out every
// channel's coefficients into shared memory (C·4 bytes per row of them, dynamic), so a value
// costs one 32-bit division for its channel and no square root. Indices within a tensor are
// 32-bit (cuda.rs refuses tensors of 2³¹ values or more, so a grid-stride step cannot wrap).
// build.rs compiles this with --fmad=false: a product and a sum are rounded apart, as in the
// CPU's Rust, so x·scale + shift and the ReLU's mask agree with the CPU's to the last bit.

#define THREADS 256

// The index of the j-th value of channel `ch`, counting image by image.
__device__ __forceinline__ unsigned int channel_value(unsigned int j, unsigned int c,
                                                      unsigned int hw, unsigned int ch) {
    unsigned int image = j / hw;
    return (image * c + ch) * hw + (j - image * hw);
}

// The channel of value i of an (N, C, H, W) tensor.
__device__ __forceinline__ unsigned int channel_of(unsigned int i, unsigned int c,
                                                   unsigned int hw) {
    return (i / hw) % c;
}

// The block's totals of (a, b) land in thread 0's.
__device__ __forceinline__ void block_sums(double &a, double &b) {
    __shared__ double sa[THREADS];
    __shared__ double sb[THREADS];
    sa[threadIdx.x] = a;
    sb[threadIdx.x] = b;
    __syncthreads();
    for (int half = THREADS / 2; half > 0; half /= 2) {
        if (threadIdx.x < half) {
            sa[threadIdx.x] += sa[threadIdx.x + half];
            sb[threadIdx.x] += sb[threadIdx.x + half];
        }
        __syncthreads();
    }
    a = sa[0];
    b = sb[0];
}

// Block (chunk, ch)'s two sums (a thread's share each), added over the block, into
// partial[2·(ch·chunks + chunk) + {0, 1}].
__device__ __forceinline__ void write_partial(double s, double q, int ch, int chunks,
                                              double *partial) {
    block_sums(s, q);
    if (threadIdx.x == 0) {
        size_t at = 2 * ((size_t)ch * chunks + blockIdx.x);
        partial[at] = s;
        partial[at + 1] = q;
    }
}

// Channel ch's two sums over its chunks' partial sums.
__device__ __forceinline__ void channel_totals(const double *partial, int ch, int chunks,
                                               double &s, double &q) {
    s = 0.0;
    q = 0.0;
    for (int k = 0; k < chunks; k++) {
        s += partial[2 * ((size_t)ch * chunks + k)];
        q += partial[2 * ((size_t)ch * chunks + k) + 1];
    }
}

// The stretch [begin, end) of a channel's `n * hw` values that block (chunk, ·) sums.
__device__ __forceinline__ void stretch(int n, int hw, int chunks, unsigned int &begin,
                                        unsigned int &end) {
    unsigned int m = (unsigned int)n * (unsigned int)hw;
    unsigned int per = (m + chunks - 1) / chunks;
    begin = blockIdx.x * per;
    if (begin >= m) {
        begin = end = m;
        return;
    }
    end = per < m - begin ? begin + per : m;
}

// One channel's normalisation: y = x · scale + shift; as NormParams::coef.
struct Coef {
    float scale, shift, inv_std, mean, weight;
};

__device__ __forceinline__ Coef coef_of(const float *p, int c, int ch, float eps) {
    float w = p[ch], b = p[c + ch], mean = p[2 * c + ch], var = p[3 * c + ch];
    float inv = 1.0f / sqrtf(var + eps);
    Coef k;
    k.scale = w * inv;
    k.shift = b - mean * w * inv;
    k.inv_std = inv;
    k.mean = mean;
    k.weight = w;
    return k;
}

// Σx and Σx² of block (chunk, ch)'s stretch into partial[2·(ch·chunks + chunk) + {0, 1}].
extern "C" __global__ void bn_stats_partial(const float *x, int n, int c, int hw, int chunks,
                                            double *partial) {
    int ch = blockIdx.y;
    unsigned int begin, end;
    stretch(n, hw, chunks, begin, end);
    double s = 0.0, q = 0.0;
    for (unsigned int j = begin + threadIdx.x; j < end; j += THREADS) {
        double v = x[channel_value(j, c, hw, ch)];
        s += v;
        q += v * v;
    }
    write_partial(s, q, ch, chunks, partial);
}

// Per channel, out = [mean (C); biased variance (C)] from the partial sums over `count`
// values.
extern "C" __global__ void bn_stats_finish(const double *partial, int c, int chunks,
                                           double count, float *out) {
    int ch = blockIdx.x * blockDim.x + threadIdx.x;
    if (ch >= c) return;
    double s, q;
    channel_totals(partial, ch, chunks, s, q);
    double mean = s / count;
    double var = q / count - mean * mean;
    out[ch] = (float)mean;
    out[c + ch] = (float)(var > 0.0 ? var : 0.0);
}

// The block's copy of every channel's coefficients: rows of C floats in dynamic shared memory.
extern __shared__ float coefs[];

// y = x · scale + shift per channel (then ReLU); p = [weight; bias; mean; var] (4, C). Shared
// memory: 2 rows.
extern "C" __global__ void bn_apply(const float *x, const float *p, int c, int hw,
                                    unsigned int numel, float eps, int relu, float *y) {
    float *scale = coefs, *shift = coefs + c;
    for (int ch = threadIdx.x; ch < c; ch += blockDim.x) {
        Coef k = coef_of(p, c, ch, eps);
        scale[ch] = k.scale;
        shift[ch] = k.shift;
    }
    __syncthreads();
    for (unsigned int i = blockIdx.x * blockDim.x + threadIdx.x; i < numel;
         i += blockDim.x * gridDim.x) {
        unsigned int ch = channel_of(i, c, hw);
        float v = x[i] * scale[ch] + shift[ch];
        // fmaxf as the CPU's f32::max: NaN becomes 0 there too.
        y[i] = relu ? fmaxf(v, 0.0f) : v;
    }
}

// The gradient of the output, zeroed where the fused ReLU's output is not positive.
__device__ __forceinline__ float masked(float xv, float gv, Coef k, int relu) {
    return relu && xv * k.scale + k.shift <= 0.0f ? 0.0f : gv;
}

// Σg and Σg·(x − mean) (g masked) of block (chunk, ch)'s stretch, as bn_stats_partial.
extern "C" __global__ void bn_grad_partial(const float *x, const float *p, const float *g, int n,
                                           int c, int hw, int chunks, float eps, int relu,
                                           double *partial) {
    int ch = blockIdx.y;
    Coef k = coef_of(p, c, ch, eps);
    unsigned int begin, end;
    stretch(n, hw, chunks, begin, end);
    double s = 0.0, q = 0.0;
    for (unsigned int j = begin + threadIdx.x; j < end; j += THREADS) {
        unsigned int at = channel_value(j, c, hw, ch);
        float xv = x[at];
        float gv = masked(xv, g[at], k, relu);
        s += gv;
        q += (double)gv * (double)(xv - k.mean);
    }
    write_partial(s, q, ch, chunks, partial);
}

// ∂L/∂weight = Σg·x̂ and ∂L/∂bias = Σg per channel into out[numel..numel + 2C].
extern "C" __global__ void bn_grad_finish(const double *partial, const float *p, int c,
                                          int chunks, float eps, unsigned int numel,
                                          float *out) {
    int ch = blockIdx.x * blockDim.x + threadIdx.x;
    if (ch >= c) return;
    double s, q;
    channel_totals(partial, ch, chunks, s, q);
    Coef k = coef_of(p, c, ch, eps);
    out[numel + ch] = (float)(q * (double)k.inv_std);
    out[numel + c + ch] = (float)s;
}

// ∂L/∂x = weight · inv_std / M · (M·g − Σg − x̂·Σ(g·x̂)) into out[0..numel], with the sums
// bn_grad_finish left in out[numel..]; `count` is M = N·H·W. Shared memory: 7 rows.
extern "C" __global__ void bn_grad_input(const float *x, const float *p, const float *g, int c,
                                         int hw, unsigned int numel, float eps, int relu,
                                         float count, float *out) {
    float *scale = coefs, *shift = coefs + c, *mean = coefs + 2 * c, *inv = coefs + 3 * c;
    float *gain = coefs + 4 * c, *sum_g = coefs + 5 * c, *sum_gx = coefs + 6 * c;
    for (int ch = threadIdx.x; ch < c; ch += blockDim.x) {
        Coef k = coef_of(p, c, ch, eps);
        scale[ch] = k.scale;
        shift[ch] = k.shift;
        mean[ch] = k.mean;
        inv[ch] = k.inv_std;
        // dx = gain · (M·g − Σg − x̂·Σ(g·x̂)), with gain = weight · inv_std / M as the CPU's.
        gain[ch] = k.weight * k.inv_std / count;
        sum_gx[ch] = out[numel + ch];
        sum_g[ch] = out[numel + c + ch];
    }
    __syncthreads();
    for (unsigned int i = blockIdx.x * blockDim.x + threadIdx.x; i < numel;
         i += blockDim.x * gridDim.x) {
        unsigned int ch = channel_of(i, c, hw);
        float xv = x[i];
        float gv = relu && xv * scale[ch] + shift[ch] <= 0.0f ? 0.0f : g[i];
        float xhat = (xv - mean[ch]) * inv[ch];
        out[i] = gain[ch] * (count * gv - sum_g[ch] - xhat * sum_gx[ch]);
    }
}
