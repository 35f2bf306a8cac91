// Batch norm (optionally fused with the ReLU after it) on CUDA, for f32 tensors laid out
// (N, C, H, W) and contiguous: the same ops as the CPU kernels beside this file (stats.rs,
// mod.rs, backward.rs), which say what each value is. Compiled to PTX by build.rs with the
// `cuda` feature and launched from cuda.rs.
//
// Per-channel sums run over a grid of (chunks, C) blocks, each summing one stretch of one
// channel's N·H·W values in f64 and writing its partial sums; a second kernel adds a channel's
// partials. The element-wise kernels are grid-stride loops.

#define THREADS 256

// The index of the j-th value of channel `ch`, counting image by image.
__device__ __forceinline__ size_t channel_value(size_t j, int c, int hw, int ch) {
    size_t image = j / hw;
    return (image * c + ch) * hw + (j - image * hw);
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

// The stretch [begin, end) of a channel's `n * hw` values that block (chunk, ·) sums.
__device__ __forceinline__ void stretch(int n, int hw, int chunks, size_t &begin, size_t &end) {
    size_t m = (size_t)n * hw;
    size_t per = (m + chunks - 1) / chunks;
    begin = (size_t)blockIdx.x * per;
    end = begin + per < m ? begin + per : m;
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
    size_t begin, end;
    stretch(n, hw, chunks, begin, end);
    double s = 0.0, q = 0.0;
    for (size_t j = begin + threadIdx.x; j < end; j += THREADS) {
        double v = x[channel_value(j, c, hw, ch)];
        s += v;
        q += v * v;
    }
    block_sums(s, q);
    if (threadIdx.x == 0) {
        size_t at = 2 * ((size_t)ch * chunks + blockIdx.x);
        partial[at] = s;
        partial[at + 1] = q;
    }
}

// Per channel, out = [mean (C); biased variance (C)] from the partial sums over `count`
// values.
extern "C" __global__ void bn_stats_finish(const double *partial, int c, int chunks,
                                           double count, float *out) {
    int ch = blockIdx.x * blockDim.x + threadIdx.x;
    if (ch >= c) return;
    double s = 0.0, q = 0.0;
    for (int k = 0; k < chunks; k++) {
        s += partial[2 * ((size_t)ch * chunks + k)];
        q += partial[2 * ((size_t)ch * chunks + k) + 1];
    }
    double mean = s / count;
    double var = q / count - mean * mean;
    out[ch] = (float)mean;
    out[c + ch] = (float)(var > 0.0 ? var : 0.0);
}

// y = x · scale + shift per channel (then ReLU); p = [weight; bias; mean; var] (4, C).
extern "C" __global__ void bn_apply(const float *x, const float *p, int c, int hw, size_t numel,
                                    float eps, int relu, float *y) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < numel;
         i += (size_t)blockDim.x * gridDim.x) {
        int ch = (int)((i / hw) % c);
        Coef k = coef_of(p, c, ch, eps);
        float v = x[i] * k.scale + k.shift;
        y[i] = relu && v <= 0.0f ? 0.0f : v;
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
    size_t begin, end;
    stretch(n, hw, chunks, begin, end);
    double s = 0.0, q = 0.0;
    for (size_t j = begin + threadIdx.x; j < end; j += THREADS) {
        size_t at = channel_value(j, c, hw, ch);
        float xv = x[at];
        float gv = masked(xv, g[at], k, relu);
        s += gv;
        q += (double)gv * (double)(xv - k.mean);
    }
    block_sums(s, q);
    if (threadIdx.x == 0) {
        size_t at = 2 * ((size_t)ch * chunks + blockIdx.x);
        partial[at] = s;
        partial[at + 1] = q;
    }
}

// ∂L/∂weight = Σg·x̂ and ∂L/∂bias = Σg per channel into out[numel..numel + 2C].
extern "C" __global__ void bn_grad_finish(const double *partial, const float *p, int c,
                                          int chunks, float eps, size_t numel, float *out) {
    int ch = blockIdx.x * blockDim.x + threadIdx.x;
    if (ch >= c) return;
    double s = 0.0, q = 0.0;
    for (int k = 0; k < chunks; k++) {
        s += partial[2 * ((size_t)ch * chunks + k)];
        q += partial[2 * ((size_t)ch * chunks + k) + 1];
    }
    Coef k = coef_of(p, c, ch, eps);
    out[numel + ch] = (float)(q * (double)k.inv_std);
    out[numel + c + ch] = (float)s;
}

// ∂L/∂x = weight · inv_std / M · (M·g − Σg − x̂·Σ(g·x̂)) into out[0..numel], with the sums
// bn_grad_finish left in out[numel..]; `count` is M = N·H·W.
extern "C" __global__ void bn_grad_input(const float *x, const float *p, const float *g, int c,
                                         int hw, size_t numel, float eps, int relu, float count,
                                         float *out) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < numel;
         i += (size_t)blockDim.x * gridDim.x) {
        int ch = (int)((i / hw) % c);
        Coef k = coef_of(p, c, ch, eps);
        float sgx = out[numel + ch], sg = out[numel + c + ch];
        float xv = x[i];
        float gv = masked(xv, g[i], k, relu);
        float xhat = (xv - k.mean) * k.inv_std;
        out[i] = k.weight * k.inv_std / count * (count * gv - sg - xhat * sgx);
    }
}
