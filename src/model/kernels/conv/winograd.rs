//! Winograd F(2×2, 3×3) and F(4×4, 3×3) convolution (Lavin & Gray, "Fast Algorithms for
//! Convolutional Neural Networks", CVPR 2016) for 3×3 kernels, stride 1 or 2, padding 1, on
//! AVX2 + FMA or AVX-512. F(2×2, 3×3) first (F(4×4, 3×3), below, is the same machinery with
//! larger tiles):
//!
//! Every 2×2 block of output pixels (a *tile*) is `Y = Aᵀ [Σ_c U_oc ⊙ V_c] A`, where
//! `V_c = Bᵀ d_c B` is the transform of the tile's 4×4 input patch in channel c and
//! `U_oc = G g_oc Gᵀ` that of the 3×3 weight: 16 multiplications per tile and channel pair
//! instead of the 36 of the definition (2.25× fewer), the rest additions. The transforms'
//! coefficients are 0, ±1 and ±½, so the result differs from the direct sum by a few
//! roundings only.
//!
//! How it is laid out for vectors: tiles go along the vector lanes, numbered row by row
//! (H/2 rows of W/2). The zero-padded input is first split into eight planes per channel —
//! its four phases (even/odd rows × even/odd columns), each once as it is and once shifted by
//! one column, (H/2 + 1) × W/2 values each — so the value that patch position (r, s) of a
//! run of consecutive tiles needs is a run of consecutive values of one plane: one unaligned
//! load per (r, s) for a whole vector of tiles, across tile rows too. Output rows are whole
//! groups of half a vector of tiles (W a multiple of the vector's lanes), so a vector's two
//! output rows per tile come out as contiguous runs of pixels. Then, for a chunk of two
//! vectors of tiles:
//!
//! 1. **input transform**: `V[ξ][c][tile]`, 16 values ξ per channel and tile;
//! 2. **product**: for each ξ, `M[ξ][o][tile] = Σ_c U[ξ][c][o] · V[ξ][c][tile]` — the
//!    register tile of the direct kernel ([`super::direct`]): B output channels × 2 vectors
//!    of tiles, one broadcast weight per channel and output channel;
//! 3. **output transform** `Aᵀ M A`, each tile's 2×2 pixels written to (or added into) the
//!    output image.
//!
//! **Two images per chunk.** A map of exactly one vector of tiles with rows of half a vector
//! of pixels (8×8 for 512 bits: the last stage of a 32 px input, 16 tiles) would leave half
//! of every chunk idle, or fall back to the 256-bit kernel. There the two vectors of a chunk
//! take the same tiles of two images ([`forward_images`], [`weight_images`],
//! [`strided_input_images`]): the second vector's input transform reads the second image's
//! split input, a [`Tiles::phase_len`] further; the product does not care; the output
//! transform writes a group (two tile rows) as four consecutive output rows of the image its
//! vector belongs to. ∂L/∂w's sums and the stride-2 ∂L/∂x take the second image's tiles as
//! tiles LANES … 2·LANES − 1 of a map twice as high (their ∂L/∂y one image after the other).
//!
//! ∂L/∂x of a "same" convolution is the convolution of ∂L/∂y with the turned-round weight
//! ([`super::BackwardPlan`]), so it runs here too, with that weight's transform.
//!
//! ∂L/∂w is the same algorithm turned round (F(3×3, 2×2)): as `M = Σ_c U ⊙ V` and
//! `Y = Aᵀ M A`, `∂L/∂U[o][c] = Σ_tiles Z_o ⊙ V_c` with `Z_o = A ∂L/∂Y_o Aᵀ` the transform of
//! the tile's 2×2 output gradient, and `∂L/∂w = Gᵀ (∂L/∂U) G`. Per chunk of tiles: the
//! input transform as above, Z with output channels along the lanes (from ∂L/∂y transposed
//! to (H·W × O)), then `∂U[ξ][c][o] += Σ_tile V[ξ][c][tile] · Z[ξ][tile][o]` in registers
//! (T channels × 2 vectors of output channels, as the direct ∂L/∂w kernel). The 16·C·O sums
//! are carried from image to image and turned into ∂L/∂w once per run of images
//! ([`weight_from_transform`]).
//!
//! **Stride 2** (the stages' first convolutions) splits the padded input into its four row
//! and four column phases (as in Huang et al., "DWM: A Decomposable Winograd Method for
//! Convolution Acceleration", AAAI 2020).
//! In one dimension, the two outputs of a tile are `y0 = w0 x0 + w1 x1 + w2 x2` and
//! `y1 = w0 x2 + w1 x3 + w2 x4`: the even inputs with taps (w0, w2) are an F(2, 2), three
//! products, and the odd ones with w1 two more — 5 instead of 6, with
//! `Bᵀ = [[1, 0, −1, 0, 0], [0, 0, 1, 0, 0], [0, 0, −1, 0, 1], [0, 1, 0, 0, 0], [0, 0, 0, 1, 0]]`,
//! `G = [[1, 0, 0], [1, 0, 1], [0, 0, 1], [0, 1, 0], [0, 1, 0]]`,
//! `Aᵀ = [[1, 1, 0, 1, 0], [0, 1, 1, 0, 1]]`. Nested in two dimensions: a tile's 5×5 input
//! patch (padded rows 4i … 4i + 4 and columns 4j … 4j + 4 of tile (i, j)) makes 25 values ξ, 25 products per tile and
//! channel pair instead of 36 (1.44× fewer), every coefficient 0 or ±1. The input is split
//! into 20 planes per channel (4 row phases × the patch's 5 columns), the products and ∂L/∂w
//! are the same code with 25 planes.
//!
//! **F(4×4, 3×3)** for stride 1 on larger maps (height a multiple of 4, width a multiple of 16,
//! at least 32: the first stage at 32 px and up, the second from 64 px; [`Algo::of`]): tiles
//! of 4×4 output pixels from 6×6 input patches, 36 values ξ, so 36 products per 16 pixels
//! (2.25 per pixel and channel pair, against F(2×2, 3×3)'s 4 and the definition's 9), with
//! Lavin & Gray's matrices for the points 0, ±1, ±2, ∞:
//! `Bᵀ = [[4, 0, −5, 0, 1, 0], [0, −4, −4, 1, 1, 0], [0, 4, −4, −1, 1, 0], [0, −2, −1, 2, 1, 0],
//! [0, 2, −1, −2, 1, 0], [0, 4, 0, −5, 0, 1]]`, `G = [[¼, 0, 0], [−⅙, −⅙, −⅙], [−⅙, ⅙, −⅙],
//! [1/24, 1/12, ⅙], [1/24, −1/12, ⅙], [0, 0, 1]]`, `Aᵀ = [[1, 1, 1, 1, 1, 0],
//! [0, 1, −1, 2, −2, 0], [0, 1, 1, 4, 4, 0], [0, 1, −1, 8, −8, 1]]`. The patches lie 4 pixels
//! apart, as the stride-2 form's: the same split with a sixth column plane (24 planes per
//! channel). The output transform makes, per output row, four vectors of one pixel column of
//! every tile; a 4×4 transpose within 128-bit blocks (and, for 512 bits, one of the blocks)
//! puts each group of a quarter vector of tiles' four pixels side by side, one vector. ∂L/∂w
//! uses it too (Z from the tile's 4×4 output gradient with A = (Aᵀ)ᵀ, then `Gᵀ ∂U G`). Its
//! coefficients (up to 8, and ⅙, 1/24) round more: about 4e-6 of the largest output or
//! gradient against a few 1e-7 for F(2×2, 3×3), measured against sums in f64 — far below a
//! training step's own noise, as with cuDNN's F(4×4, 3×3). `PRETEXT_NO_WINOGRAD4` keeps
//! F(2×2, 3×3) everywhere, for comparisons.
//!
//! **4×4 maps** (the last stage of the 16 px views) are one F(4×4, 3×3) tile each, so there
//! the lanes take images instead of tiles, 32 images a chunk, on AVX-512 ([`whole`]); **8×8
//! maps** (the second stage of the 16 px views, the last at 32 px) are four tiles each, and
//! take F(4×4, 3×3) the same way, 16 images a chunk ([`whole8`]; F(2×2, 3×3) two images per
//! chunk where F(4×4, 3×3) is off); the stride-2 convolution from 8×8 into 4×4 maps (four
//! tiles per image) takes the stride-2 form the same way, 16 images a chunk ([`whole_s2`]).
//!
//! ∂L/∂x of a stride-2 convolution is not a convolution but the forward algorithm turned
//! round ([`strided_input_image`]): per tile `∂L/∂V_c = Σ_o U_oc ⊙ Z_o` with
//! `Z_o = A ∂L/∂Y_o Aᵀ` (as for ∂L/∂w, but with the tiles along the lanes, from ∂L/∂y split
//! into its four phases), the forward product with C and O swapped, and the patch gradient
//! `B ∂L/∂V Bᵀ` (5×5 per tile) added into the padded input, where the patches of neighbouring
//! tiles overlap by a row and a column: 25 products per tile and channel pair instead of the
//! 36 of `col2im(wᵀ · ∂L/∂y)`, and no column matrix.

use candle_core::{Result, bail};
use rayon::prelude::*;

use super::super::gemm::count_flop;
use super::direct::{Width, take, transposed_gradient, vector_cpu};
use super::geometry::ConvGeom;

mod split;
pub(super) mod whole;
pub(super) mod whole8;
pub(super) mod whole_s2;

/// Transformed weight values per (channel, output channel) pair for stride 1: the 4×4 `U`.
const XI: usize = 16;

/// Transformed weight values per (channel, output channel) pair for stride 2: the 5×5 `U`.
const XI_S2: usize = 25;

/// Transformed weight values per (channel, output channel) pair for F(4×4, 3×3): the 6×6 `U`.
const XI_F4: usize = 36;

/// The most tiles a chunk has (two 512-bit vectors), for sizing buffers.
const MAX_CHUNK: usize = 32;

/// Values between the ξ planes of the transformed input and of the products, beyond their
/// C·CHUNK or O·CHUNK: with 32 channels those are 4 KiB apart, so the 16 values of one tile
/// would fall into one set of the L1 cache and evict each other (measured: the transforms
/// took as long as the product); a cache line more spreads them.
const PLANE_GAP: usize = 16;

/// Values per ξ plane of `rows` rows of a chunk.
const fn plane(rows: usize, chunk: usize) -> usize {
    rows * chunk + PLANE_GAP
}

/// Planes per channel of the split input for stride 1: 2 row phases × 2 column phases × 2
/// shifts.
const PLANES: usize = 8;

/// Planes per channel of the split input for stride 2: 4 row phases × 5 columns of the
/// patch (4 column phases and the first one shifted by one tile).
const PLANES_S2: usize = 20;

/// Planes per channel of the split input for F(4×4, 3×3): 4 row phases × 6 columns of the
/// patch (4 column phases and the first two shifted by one tile).
const PLANES_F4: usize = 24;

/// The fewest input channels Winograd takes: with fewer, the product of step 2 is too short
/// to pay for the transforms (the network's 3-channel first convolution stays off it).
const MIN_CHANNELS: usize = 16;

/// Whether the Winograd kernels may run (`PRETEXT_NO_WINOGRAD=1` turns them off: for
/// comparisons; [`super::super::switch_on`]).
fn enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| !super::super::switch_on("PRETEXT_NO_WINOGRAD"))
}

/// Whether the stride-2 algorithm may run (`PRETEXT_NO_STRIDED_WINOGRAD=1` turns it alone
/// off: for comparisons).
fn strided_enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| !super::super::switch_on("PRETEXT_NO_STRIDED_WINOGRAD"))
}

/// Whether stride-1 convolutions (forward, ∂L/∂x and ∂L/∂w) may take F(4×4, 3×3) where it
/// fits (`PRETEXT_NO_WINOGRAD4=1` keeps F(2×2, 3×3) everywhere: for comparisons).
fn f4_enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| !super::super::switch_on("PRETEXT_NO_WINOGRAD4"))
}

/// The algorithms: F(2×2, 3×3) for stride 1, its stride-2 form, and F(4×4, 3×3) for stride
/// 1 on larger maps (the module's docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Algo {
    /// Stride 1: 4×4 input patches, 16 products per tile (of 2×2 pixels) and channel pair.
    Stride1,
    /// Stride 2: 5×5 input patches, 25 products per tile and channel pair.
    Stride2,
    /// Stride 1, F(4×4, 3×3): 6×6 input patches, 36 products per tile of 4×4 pixels and
    /// channel pair (2.25 per pixel instead of F(2×2, 3×3)'s 4); on 4×4 maps one tile per
    /// image ([`whole`]), on 8×8 maps four ([`whole8`]), the images along the lanes.
    F4,
}

impl Algo {
    /// The algorithm for `g`: the stride-2 form for stride 2; for stride 1 F(4×4, 3×3) on
    /// maps of a height a multiple of 4 and a width a multiple of 16 (whole groups of output
    /// tiles per row for both vector widths) with at least 16 tiles (16×16: one 256-bit
    /// chunk, or one vector of a 512-bit chunk of two images, [`pair_fits`]), on 4×4 maps
    /// where [`whole::shape`] takes them (one tile per image, on AVX-512) and on 8×8 maps
    /// where [`whole8::shape`] does (four), else F(2×2, 3×3).
    fn of(g: &ConvGeom) -> Self {
        if g.stride == 2 {
            Algo::Stride2
        } else if g.h.is_multiple_of(4)
            && g.w.is_multiple_of(16)
            && g.h * g.w >= 256
            && f4_enabled()
        {
            Algo::F4
        } else if whole::shape(g) || whole8::shape(g) {
            // A 4×4 map: one F(4×4, 3×3) tile per image; an 8×8 one: four. Images along the
            // lanes ([`whole`], [`whole8`]).
            Algo::F4
        } else {
            Algo::Stride1
        }
    }

    /// Transformed values per tile and channel (and per channel pair of the weight).
    const fn xi(self) -> usize {
        match self {
            Algo::Stride1 => XI,
            Algo::Stride2 => XI_S2,
            Algo::F4 => XI_F4,
        }
    }

    /// Planes per channel of the split input.
    const fn planes(self) -> usize {
        match self {
            Algo::Stride1 => PLANES,
            Algo::Stride2 => PLANES_S2,
            Algo::F4 => PLANES_F4,
        }
    }

    /// Output pixels per tile side.
    const fn side(self) -> usize {
        match self {
            Algo::Stride1 | Algo::Stride2 => 2,
            Algo::F4 => 4,
        }
    }
}

impl ConvGeom {
    /// A 3×3 convolution, padding 1, of at least [`MIN_CHANNELS`] input channels: stride 1
    /// on maps of an even height, or stride 2 on maps whose sides are multiples of 4 (an
    /// output of an even height, each output pixel two input ones) — the width depends on
    /// the kernel: [`fits`].
    fn winograd_shape(&self) -> bool {
        self.k == 3
            && self.pad == 1
            && self.c >= MIN_CHANNELS
            && match self.stride {
                1 => self.h >= 2 && self.h.is_multiple_of(2),
                2 => {
                    strided_enabled()
                        && self.h >= 4
                        && self.h.is_multiple_of(4)
                        && self.w.is_multiple_of(4)
                }
                _ => false,
            }
    }

    /// The kernel that convolves this geometry's input into `out` channels with Winograd
    /// here, if any: the CPU's widest, where it [`fits`].
    pub(super) fn winograd_width(&self, out: usize) -> Option<Width> {
        if !enabled() || !self.winograd_shape() {
            return None;
        }
        widest(|width| fits(width, self, out))
    }

    /// Whether the forward pass runs Winograd here ([`forward_images`]).
    pub(super) fn winograd_forward(&self) -> bool {
        self.winograd_width(self.o).is_some()
            || whole::fits(self, self.o)
            || whole8::fits(self, self.o)
            || whole_s2::fits(self)
    }

    /// The kernel that makes ∂L/∂w with Winograd here, if any: the CPU's widest whose
    /// forward kernel fits, where O is a multiple of two of its vectors.
    pub(super) fn winograd_weight_width(&self) -> Option<Width> {
        widest(|width| weight_fits(width, self)).filter(|_| enabled())
    }

    /// Whether ∂L/∂w runs Winograd here ([`weight_images`]).
    pub(super) fn winograd_weight(&self) -> bool {
        self.winograd_weight_width().is_some()
            || whole::weight_fits(self)
            || whole8::weight_fits(self)
            || whole_s2::weight_fits(self)
    }

    /// Whether ∂L/∂x runs Winograd here ([`forward_images`]), as the convolution of ∂L/∂y with the
    /// turned-round weight (O input channels, C output channels).
    pub(super) fn winograd_input(&self) -> bool {
        self.flips() && {
            let f = self.flipped();
            f.winograd_width(self.c).is_some()
                || whole::fits(&f, self.c)
                || whole8::fits(&f, self.c)
        }
    }

    /// The kernel that makes ∂L/∂x of a stride-2 convolution with Winograd turned round
    /// ([`strided_input_image`]) here, if any: the CPU's widest whose output block divides
    /// C (the channels its products make), on output rows of whole vectors as the forward
    /// pass's — nothing is interleaved here, but an image with fewer tiles than a chunk
    /// (4×4 outputs: 4 tiles) would leave most lanes idle; such images go along the lanes
    /// instead ([`whole_s2`], AVX-512) or to `gemm`, a group of images at once.
    fn winograd_strided_input_width(&self) -> Option<Width> {
        if !enabled() || self.stride != 2 || !self.winograd_shape() {
            return None;
        }
        widest(|width| strided_input_fits(width, self))
    }

    /// Whether ∂L/∂x of this stride-2 convolution runs [`strided_input_image`] (or, for 8×8
    /// maps on AVX-512, [`whole_s2::input_images`]) here.
    pub(super) fn winograd_strided_input(&self) -> bool {
        self.winograd_strided_input_width().is_some() || whole_s2::input_fits(self)
    }
}

/// The CPU's widest vectors ([`vector_cpu`]: AVX-512, then AVX2) for which `takes` holds.
fn widest(takes: impl Fn(Width) -> bool) -> Option<Width> {
    let c = vector_cpu();
    [(c.avx512, Width::Avx512), (c.avx2, Width::Avx2)]
        .into_iter()
        .find(|&(has, width)| has && takes(width))
        .map(|(_, width)| width)
}

/// Whether `width`'s kernel takes `g` with `out` output channels: output rows of whole
/// vectors of pixels (half a vector of tiles), `out` a multiple of the output block; for
/// F(4×4, 3×3) rows of a multiple of 16 pixels ([`Algo::of`]: 8×8 maps take it only along
/// the images, [`whole8`]).
fn fits(width: Width, g: &ConvGeom, out: usize) -> bool {
    g.winograd_shape()
        && (Algo::of(g) != Algo::F4 || g.wo().is_multiple_of(16))
        && g.wo().is_multiple_of(width.lanes())
        && out.is_multiple_of(width.out_block())
}

/// Whether `width`'s turned-round kernel takes ∂L/∂x of the stride-2 `g`
/// ([`strided_input_image`]): C a multiple of the output block, output rows of whole vectors.
fn strided_input_fits(width: Width, g: &ConvGeom) -> bool {
    g.stride == 2
        && g.winograd_shape()
        && g.c.is_multiple_of(width.out_block())
        && g.wo().is_multiple_of(width.lanes())
}

/// Whether `width`'s ∂L/∂w kernel takes `g`: as [`fits`], O a multiple of two vectors.
fn weight_fits(width: Width, g: &ConvGeom) -> bool {
    fits(width, g, g.o) && g.o.is_multiple_of(2 * width.lanes())
}

/// Where the tiles of one image lie.
#[derive(Clone, Copy, Debug)]
struct Tiles {
    /// Which algorithm ([`Algo::of`]).
    algo: Algo,
    /// Input channels, C.
    c: usize,
    /// Output channels, O.
    o: usize,
    /// Output map width, Wo (the input's W for stride 1).
    w: usize,
    /// Values per output plane, Ho·Wo.
    hw: usize,
    /// Input map width, W.
    in_w: usize,
    /// Values per input plane, H·W.
    in_hw: usize,
    /// Tiles per tile row, Wo/2 (Wo/4 for F(4×4, 3×3)); also the planes' row pitch.
    q: usize,
    /// Values per plane, (tile rows + 1)·Q.
    s: usize,
    /// Tiles, (Ho/2)·(Wo/2) (or (Ho/4)·(Wo/4)).
    tiles: usize,
}

impl Tiles {
    fn of(g: &ConvGeom) -> Self {
        let algo = Algo::of(g);
        let (ho, wo) = (g.ho(), g.wo());
        let a = algo.side();
        let q = wo / a;
        Self {
            algo,
            c: g.c,
            o: g.o,
            w: wo,
            hw: ho * wo,
            in_w: g.w,
            in_hw: g.h * g.w,
            q,
            s: (ho / a + 1) * q,
            tiles: ho / a * q,
        }
    }

    /// Transformed values per tile and channel.
    fn xi(&self) -> usize {
        self.algo.xi()
    }

    /// Values of the split input: the algorithm's planes per channel, and one chunk of
    /// slack that the lanes past the last tile read.
    fn phase_len(&self) -> usize {
        self.algo.planes() * self.c * self.s + MAX_CHUNK
    }

    /// One past the last value of the split input that the input transform reads with chunks
    /// of `chunk` tiles — at most: the last channel's last plane, a tile row further (Q), at
    /// the last chunk's lanes, every one loaded whether or not its tile exists.
    fn reach(&self, chunk: usize) -> usize {
        let last_chunk = self.tiles.saturating_sub(1) / chunk * chunk;
        (self.algo.planes() * self.c - 1) * self.s + self.q + last_chunk + chunk
    }

    /// For the groups of `group` tiles from `u0`: the offset of each group's first tile's
    /// top-left pixel in an output plane, or `usize::MAX` past the last tile.
    fn positions(&self, u0: usize, group: usize, pos: &mut [usize]) {
        for (k, p) in pos.iter_mut().enumerate() {
            let u = u0 + k * group;
            let a = self.algo.side();
            *p = if u < self.tiles {
                a * (u / self.q) * self.w + a * (u % self.q)
            } else {
                usize::MAX
            };
        }
    }
}

/// The working memory [`forward_images`] needs for `g` and for its ∂L/∂x geometry (C and O
/// swapped), in values: every buffer is sized for the larger of C and O, and each geometry is
/// asked about (which algorithm and path take a map can depend on its output channels,
/// [`whole8::shape`]).
pub(super) fn buffer_len(g: &ConvGeom) -> usize {
    let mut len = 0;
    let flipped = g.flips().then(|| g.flipped());
    for h in std::iter::once(*g).chain(flipped) {
        len = len.max(buffer_len_for(&h, pairs(&h)));
        if whole::shape(&h) {
            len = len.max(whole::buffer_len(&h));
        }
        if whole8::shape(&h) {
            len = len.max(whole8::buffer_len(&h));
        }
    }
    if whole_s2::shape(g) {
        len = len.max(whole_s2::buffer_len(g));
    }
    len
}

/// [`buffer_len`] with two images' split inputs (`paired`: where [`forward_images`] pairs
/// them) or one.
fn buffer_len_for(g: &ConvGeom, paired: bool) -> usize {
    let t = Tiles::of(&ConvGeom {
        c: g.c.max(g.o),
        ..*g
    });
    let images = if paired { 2 } else { 1 };
    images * t.phase_len() + t.xi() * (plane(g.c, MAX_CHUNK) + plane(g.o, MAX_CHUNK))
}

/// The working memory [`weight_images`] needs for `g` in `work.col` (the split input, its
/// transform and Z for a chunk) and `work.product` (∂L/∂y transposed), in values.
pub(super) fn weight_buffer_len(g: &ConvGeom) -> (usize, usize) {
    if whole::weight_fits(g) {
        return whole::weight_buffer_len(g);
    }
    if whole8::weight_fits(g) {
        return whole8::weight_buffer_len(g);
    }
    if whole_s2::weight_fits(g) {
        return whole_s2::weight_buffer_len(g);
    }
    weight_buffer_len_for(g, weight_pair_width(g).is_some())
}

/// [`weight_buffer_len`] with two images' split inputs and transposed gradients (`paired`:
/// where [`weight_images`] pairs them) or one.
fn weight_buffer_len_for(g: &ConvGeom, paired: bool) -> (usize, usize) {
    let t = Tiles::of(g);
    let images = if paired { 2 } else { 1 };
    (
        images * t.phase_len() + t.xi() * (plane(g.c, MAX_CHUNK) + plane(MAX_CHUNK, g.o)),
        images * g.out_image(),
    )
}

/// Values of the weight's transform (and of the sums of ∂L/∂U) for `g`: 16·C·O for
/// F(2×2, 3×3), 25·C·O for stride 2, 36·C·O for F(4×4, 3×3).
pub(super) fn transform_len(g: &ConvGeom) -> usize {
    Algo::of(g).xi() * g.c * g.o
}

/// ∂L/∂w (O, C, 3, 3) from the sums of ∂L/∂U, `du[ξ][c][o]` ([`transform_len`] values), as
/// `Gᵀ ∂U G` with, for F(2×2, 3×3), `Gᵀ = [[1, ½, ½, 0], [0, ½, −½, 0], [0, ½, ½, 1]]`, for
/// stride 2 `Gᵀ = [[1, 1, 0, 0, 0], [0, 0, 0, 1, 1], [0, 1, 1, 0, 0]]`, for F(4×4, 3×3) the
/// transpose of its 6×3 G: as one product `∂W (9 × C·O) = (G ⊗ G)ᵀ · ∂U` ([`kron`]),
/// column by column as [`transform_weight`] (the pair-by-pair form read ∂U O values apart in
/// every plane).
///
/// # Errors
/// If `du` does not hold [`transform_len`] values.
pub(super) fn weight_from_transform(g: &ConvGeom, du: &[f32]) -> Result<Vec<f32>> {
    let (c, o) = (g.c, g.o);
    if du.len() != transform_len(g) {
        bail!(
            "winograd convolution: {} sums of ∂L/∂U do not fit {g:?}",
            du.len()
        );
    }
    // ∂W (9 × C·O) = (G ⊗ G)ᵀ · ∂U, its rows in parallel (each a block of columns at a
    // time), then laid out as (O, C, 3, 3) ([`transform_weight`] the other way round).
    let kron = kron(Algo::of(g));
    let co = c * o;
    let mut dwt = vec![0f32; 9 * co];
    dwt.par_chunks_mut(co.max(1))
        .enumerate()
        .for_each(|(t, dst_row)| {
            for j0 in (0..co).step_by(KRON_BLOCK) {
                let len = KRON_BLOCK.min(co - j0);
                let dst = &mut dst_row[j0..][..len];
                for (x, coef) in kron.iter().enumerate() {
                    let k = coef[t];
                    if k != 0.0 {
                        for (d, v) in dst.iter_mut().zip(&du[x * co + j0..][..len]) {
                            *d += k * v;
                        }
                    }
                }
            }
        });
    let mut dw = vec![0f32; o * c * 9];
    for (oc, out) in dw.chunks_exact_mut(9).enumerate() {
        let (oi, ci) = (oc / c, oc % c);
        for (t, v) in out.iter_mut().enumerate() {
            *v = dwt[t * co + ci * o + oi];
        }
    }
    Ok(dw)
}

/// Columns per block of the products with `G ⊗ G` ([`transform_weight`],
/// [`weight_from_transform`]): the block's 9 rows of W fit in L1 beside a row of U.
const KRON_BLOCK: usize = 512;

/// `G ⊗ G` for `algo`'s G (ξ × 9: `[r·n + s][a·3 + b] = G[r][a] · G[s][b]`), made in f64
/// and rounded once: for stride 1 `G = [[1, 0, 0], [½, ½, ½], [½, −½, ½], [0, 0, 1]]`, for
/// stride 2 `G = [[1, 0, 0], [1, 0, 1], [0, 0, 1], [0, 1, 0], [0, 1, 0]]`, for F(4×4, 3×3)
/// `G = [[¼, 0, 0], [−⅙, −⅙, −⅙], [−⅙, ⅙, −⅙], [1/24, 1/12, ⅙], [1/24, −1/12, ⅙],
/// [0, 0, 1]]` (Lavin & Gray 2016, points 0, ±1, ±2, ∞).
fn kron(algo: Algo) -> Vec<[f32; 9]> {
    let gm: &[[f64; 3]] = match algo {
        Algo::Stride1 => &[
            [1.0, 0.0, 0.0],
            [0.5, 0.5, 0.5],
            [0.5, -0.5, 0.5],
            [0.0, 0.0, 1.0],
        ],
        Algo::Stride2 => &[
            [1.0, 0.0, 0.0],
            [1.0, 0.0, 1.0],
            [0.0, 0.0, 1.0],
            [0.0, 1.0, 0.0],
            [0.0, 1.0, 0.0],
        ],
        Algo::F4 => &[
            [0.25, 0.0, 0.0],
            [-1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0],
            [-1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0],
            [1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0],
            [1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0],
            [0.0, 0.0, 1.0],
        ],
    };
    let n = gm.len();
    (0..n * n)
        .map(|x| std::array::from_fn(|t| (gm[x / n][t / 3] * gm[x % n][t % 3]) as f32))
        .collect()
}

/// The weight `w` (O, C, 3, 3) transformed, `U[ξ][c][o] = (G w[o, c] Gᵀ)[ξ]`, made once per
/// batch: for stride 1 with `G = [[1, 0, 0], [½, ½, ½], [½, −½, ½], [0, 0, 1]]` (16·C·O
/// values), for stride 2 with `G = [[1, 0, 0], [1, 0, 1], [0, 0, 1], [0, 1, 0], [0, 1, 0]]`
/// (25·C·O), for F(4×4, 3×3) ([`Algo::of`]) with its 6×3 G (36·C·O) ([`kron`]).
///
/// As one product: with the weight laid out as W (9 × C·O), tap by tap, `U (ξ × C·O) =
/// (G ⊗ G) · W` ([`kron`]). Each plane of U is then written front to back, a block of columns at a
/// time with W's block in L1. (Transforming pair by pair in the weight's (O, C) order had
/// put consecutive stores O values apart in every plane: 4.4 ms for l3.c2's 128 × 128
/// channels as F(4×4, 3×3), more than its forward pass; 0.5–1.2 ms now, on an AMD EPYC
/// Zen 5.)
pub(super) fn transform_weight(g: &ConvGeom, w: &[f32]) -> Vec<f32> {
    let (c, o) = (g.c, g.o);
    let algo = Algo::of(g);
    let (xi, co) = (algo.xi(), c * o);
    let mut u = vec![0f32; xi * co];
    if w.len() < co * 9 {
        return u;
    }
    let kron = kron(algo);
    // W (9 × C·O): column ci·O + oi is the weight of (oi, ci); a row per tap, in parallel.
    let mut wt = vec![0f32; 9 * co];
    wt.par_chunks_mut(co.max(1))
        .enumerate()
        .for_each(|(t, row)| {
            for (ci, dst) in row.chunks_exact_mut(o.max(1)).enumerate() {
                for (oi, d) in dst.iter_mut().enumerate() {
                    *d = w[(oi * c + ci) * 9 + t];
                }
            }
        });
    // U's rows in parallel (once per batch and pass: run alone, it left the other cores
    // idle), each a block of columns at a time.
    u.par_chunks_mut(co.max(1))
        .zip(&kron)
        .for_each(|(dst_row, coef)| {
            for j0 in (0..co).step_by(KRON_BLOCK) {
                let len = KRON_BLOCK.min(co - j0);
                let dst = &mut dst_row[j0..][..len];
                // U's row starts at zero; (G ⊗ G) is sparse (196 of F4's 324 coefficients are
                // not zero, 64 of stride 1's 144).
                for (t, &k) in coef.iter().enumerate() {
                    if k != 0.0 {
                        for (d, v) in dst.iter_mut().zip(&wt[t * co + j0..][..len]) {
                            *d += k * v;
                        }
                    }
                }
            }
        });
    u
}

/// Values per plane of the turned-round stride-2 pass ([`strided_input_image`]): one per
/// tile, rounded up to whole chunks of the widest kernel (what a chunk's lanes load and
/// store).
fn strided_plane(t: &Tiles) -> usize {
    t.tiles.div_ceil(MAX_CHUNK) * MAX_CHUNK
}

/// The working memory [`strided_input_image`] needs for `g`, in values: ∂L/∂y's four phases
/// (4·O planes), a chunk's Z (25 planes of O rows) and ∂L/∂V (25 of C rows), and the patches'
/// gradients (25·C planes).
pub(super) fn strided_input_len(g: &ConvGeom) -> usize {
    let t = Tiles::of(g);
    let sp = strided_plane(&t);
    let len =
        4 * g.o * sp + XI_S2 * (plane(g.o, MAX_CHUNK) + plane(g.c, MAX_CHUNK)) + XI_S2 * g.c * sp;
    if whole_s2::input_fits(g) {
        len.max(whole_s2::buffer_len(g))
    } else {
        len
    }
}

/// The stride-2 weight's transform turned round, `U[ξ][o][c]` (25·O·C values): what
/// [`strided_input_image`] multiplies Z by, summing over the output channels.
pub(super) fn transposed_transform(g: &ConvGeom, w: &[f32]) -> Vec<f32> {
    let (c, o) = (g.c, g.o);
    let u = transform_weight(g, w);
    let mut ut = vec![0f32; u.len()];
    for (src, dst) in u.chunks_exact(c * o).zip(ut.chunks_exact_mut(c * o)) {
        for (ci, row) in src.chunks_exact(o).enumerate() {
            for (oi, v) in row.iter().enumerate() {
                dst[oi * c + ci] = *v;
            }
        }
    }
    ut
}

/// One image's ∂L/∂x of a stride-2 convolution, added into `dx` (C, H, W), from ∂L/∂y = `dy`
/// (O, Ho, Wo) and `ut` the weight's [`transposed_transform`]: the forward algorithm turned
/// round (the module's docs), `∂L/∂d = B [Σ_o U ⊙ Z_o] Bᵀ` per tile with
/// `Z_o = A ∂L/∂Y_o Aᵀ`, each tile's 5×5 patch gradient added into the padded input, where
/// neighbouring patches overlap by a row and a column. 25 products per tile and channel pair
/// instead of the 36 of `col2im(wᵀ · dy)`. `buf` is working memory of [`strided_input_len`]
/// values or more.
///
/// # Errors
/// If the slices do not have the geometry's sizes, or the geometry or CPU does not allow it.
fn strided_input_image(
    g: &ConvGeom,
    ut: &[f32],
    dy: &[f32],
    dx: &mut [f32],
    buf: &mut [f32],
) -> Result<()> {
    let Some(width) = g.winograd_strided_input_width() else {
        bail!("winograd convolution: strided ∂L/∂x not for {g:?} on this CPU");
    };
    strided_input_with(width, g, ut, dy, dx, buf)
}

/// [`strided_input_image`] with the kernel of `width`.
///
/// # Errors
/// As [`strided_input_image`].
fn strided_input_with(
    width: Width,
    g: &ConvGeom,
    ut: &[f32],
    dy: &[f32],
    dx: &mut [f32],
    buf: &mut [f32],
) -> Result<()> {
    if !(width.runs_here() && strided_input_fits(width, g)) {
        bail!("winograd convolution: strided ∂L/∂x with {width:?} not for {g:?} on this CPU");
    }
    if ut.len() != transform_len(g) || dy.len() != g.out_image() || dx.len() != g.in_image() {
        bail!(
            "winograd convolution: weight transform {}, gradient {}, input gradient {} values do not fit {g:?}",
            ut.len(),
            dy.len(),
            dx.len()
        );
    }
    let t = Tiles::of(g);
    let sp = strided_plane(&t);
    let buf = take(buf, strided_input_len(g), "Winograd strided ∂L/∂x")?;
    let (dph, rest) = buf.split_at_mut(4 * g.o * sp);
    let (z, rest) = rest.split_at_mut(XI_S2 * plane(g.o, MAX_CHUNK));
    let (dv, patches) = rest.split_at_mut(XI_S2 * plane(g.c, MAX_CHUNK));
    split_gradient(&t, dy, dph, sp, 0);
    #[cfg(target_arch = "x86_64")]
    #[allow(unsafe_code)]
    // SAFETY: the CPU has the width's instructions, C is a multiple of its block, and the
    // buffers were cut to the sizes the kernels use (see `zmm::strided_input`).
    unsafe {
        match width {
            Width::Avx2 => ymm::strided_input(&t, ut, dph, z, dv, patches, sp),
            Width::Avx512 => zmm::strided_input(&t, ut, dph, z, dv, patches, sp),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (dph, z, dv);
    add_patches(&t, patches, sp, dx);
    count_flop(product_flop(&t));
    Ok(())
}

/// ∂L/∂x of a stride-2 convolution for images one after the other: `dxs (N, C, H, W) +=`
/// each image's as [`strided_input_image`] makes it from `dys` (N, O, Ho, Wo), two at a time
/// where [`strided_pair_width`] says (one per vector of a chunk: a map of one vector of
/// tiles would leave half of every chunk unused), the last of an odd number in a chunk of
/// its own.
///
/// # Errors
/// As [`strided_input_image`]; if `dys` and `dxs` do not hold the same number of whole images.
pub(super) fn strided_input_images(
    g: &ConvGeom,
    ut: &[f32],
    dys: &[f32],
    dxs: &mut [f32],
    buf: &mut [f32],
) -> Result<()> {
    if whole_s2::input_fits(g) {
        return whole_s2::input_images(g, ut, dys, dxs, buf);
    }
    let (inl, outl) = whole_images(g, dxs.len(), dys.len())?;
    match strided_pair_width(g) {
        Some(width) => {
            for (dy2, dx2) in dys.chunks(2 * outl).zip(dxs.chunks_mut(2 * inl)) {
                strided_pair_with(width, g, ut, dy2, dx2, buf)?;
            }
        }
        None => {
            for (dyi, dxi) in dys.chunks_exact(outl).zip(dxs.chunks_exact_mut(inl)) {
                strided_input_image(g, ut, dyi, dxi, buf)?;
            }
        }
    }
    Ok(())
}

/// The values per input and per output image of `g` (at least 1 each), checked against
/// `inputs` and `outputs` values (an input-sized and an output-sized buffer of the same images).
///
/// # Errors
/// If either is not a whole number of images, or they hold different numbers of images.
fn whole_images(g: &ConvGeom, inputs: usize, outputs: usize) -> Result<(usize, usize)> {
    let (inl, outl) = (g.in_image().max(1), g.out_image().max(1));
    if !inputs.is_multiple_of(inl)
        || !outputs.is_multiple_of(outl)
        || inputs / inl != outputs / outl
    {
        bail!(
            "winograd convolution: {inputs} input-side and {outputs} output-side values are not the same whole images of {g:?}"
        );
    }
    Ok((inl, outl))
}

/// The widest vectors with which [`strided_input_images`] takes two images at a time: maps
/// of exactly one vector of tiles (8×8 outputs for 512 bits), C a multiple of the output
/// block.
fn strided_pair_width(g: &ConvGeom) -> Option<Width> {
    widest(|width| strided_pair_fits(width, g))
}

/// Whether `width`'s turned-round kernel takes two images of the stride-2 `g` at a time.
fn strided_pair_fits(width: Width, g: &ConvGeom) -> bool {
    enabled()
        && g.stride == 2
        && g.winograd_shape()
        && Tiles::of(g).tiles == width.lanes()
        && g.c.is_multiple_of(width.out_block())
}

/// One or two images of [`strided_input_images`] in one chunk: the second image's tiles
/// follow the first's in ∂L/∂y's phase planes (whose `sp` values hold a chunk), the kernel
/// runs on a map of twice the tiles, and each image's patches (the second's from tile LANES
/// on) are added into its ∂L/∂x. With one image the second vector's tiles are zeros.
///
/// # Errors
/// As [`strided_input_image`].
fn strided_pair_with(
    width: Width,
    g: &ConvGeom,
    ut: &[f32],
    dys: &[f32],
    dxs: &mut [f32],
    buf: &mut [f32],
) -> Result<()> {
    if !(width.runs_here() && strided_pair_fits(width, g)) {
        bail!(
            "winograd convolution: strided ∂L/∂x with {width:?} does not take two images of {g:?}"
        );
    }
    let (inl, outl) = (g.in_image(), g.out_image());
    let images = dys.len() / outl.max(1);
    if ut.len() != transform_len(g)
        || !(1..=2).contains(&images)
        || dys.len() != images * outl
        || dxs.len() != images * inl
    {
        bail!(
            "winograd convolution: weight transform {}, gradients {}, input gradients {} values are not one or two images of {g:?}",
            ut.len(),
            dys.len(),
            dxs.len()
        );
    }
    let t = Tiles::of(g);
    let both = Tiles {
        tiles: 2 * t.tiles,
        ..t
    };
    let sp = strided_plane(&t);
    if sp < both.tiles {
        bail!("winograd convolution: phase planes of {sp} values cannot hold two images of {g:?}");
    }
    let buf = take(buf, strided_input_len(g), "Winograd strided ∂L/∂x")?;
    let (dph, rest) = buf.split_at_mut(4 * g.o * sp);
    let (z, rest) = rest.split_at_mut(XI_S2 * plane(g.o, MAX_CHUNK));
    let (dv, patches) = rest.split_at_mut(XI_S2 * plane(g.c, MAX_CHUNK));
    for (k, dy) in dys.chunks_exact(outl).enumerate() {
        split_gradient(&t, dy, dph, sp, k * t.tiles);
    }
    #[cfg(target_arch = "x86_64")]
    #[allow(unsafe_code)]
    // SAFETY: the CPU has the width's instructions, C is a multiple of its block, the
    // buffers were cut to the sizes the kernels use (see `zmm::strided_input`), and `sp`
    // holds `both`'s tiles, one chunk.
    unsafe {
        match width {
            Width::Avx2 => ymm::strided_input(&both, ut, dph, z, dv, patches, sp),
            Width::Avx512 => zmm::strided_input(&both, ut, dph, z, dv, patches, sp),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (dph, z, dv);
    for (k, dx) in dxs.chunks_exact_mut(inl).enumerate() {
        add_patches(&t, &patches[k * t.tiles..], sp, dx);
    }
    count_flop(images as u64 * product_flop(&t));
    Ok(())
}

/// ∂L/∂y (O, Ho, Wo) split into its four phases per channel, `dph[o][a][b][first + u] =
/// dy[o][2i + a][2j + b]` for tile u = (i, j), each plane `sp` values (zeros past the last
/// tile).
fn split_gradient(t: &Tiles, dy: &[f32], dph: &mut [f32], sp: usize, first: usize) {
    let q = t.q;
    for (plane, out) in dy
        .chunks_exact(t.hw)
        .zip(dph.chunks_exact_mut(4 * sp))
        .take(t.o)
    {
        let (p0, rest) = out.split_at_mut(sp);
        let (p1, rest) = rest.split_at_mut(sp);
        let (p2, p3) = rest.split_at_mut(sp);
        for (i, rows) in plane.chunks_exact(2 * t.w).enumerate() {
            let at = first + i * q..first + (i + 1) * q;
            let (top, bottom) = rows.split_at(t.w);
            for ((e, o), pair) in p0[at.clone()]
                .iter_mut()
                .zip(&mut p1[at.clone()])
                .zip(top.chunks_exact(2))
            {
                *e = pair[0];
                *o = pair[1];
            }
            for ((e, o), pair) in p2[at.clone()]
                .iter_mut()
                .zip(&mut p3[at])
                .zip(bottom.chunks_exact(2))
            {
                *e = pair[0];
                *o = pair[1];
            }
        }
        for p in [p0, p1, p2, p3] {
            p[first + t.tiles..].fill(0.0);
        }
    }
}

/// Adds the tiles' 5×5 patch gradients, `patches[c][r][k][u]` for tile u = (i, j) at padded
/// row 4i + r and column 4j + k, into `dx` (C, H, W): patch row 4 of tile row i is row 0 of
/// tile row i + 1, column 4 of tile column j column 0 of j + 1, and the padding is dropped.
fn add_patches(t: &Tiles, patches: &[f32], sp: usize, dx: &mut [f32]) {
    let (q, rows) = (t.q, t.tiles / t.q.max(1));
    for (c, plane) in dx.chunks_exact_mut(t.in_hw).enumerate().take(t.c) {
        let at = |r: usize, k: usize, i: usize| {
            let from = ((c * XI_S2) + r * 5 + k) * sp + i * q;
            &patches[from..from + q]
        };
        for (y, row) in plane.chunks_exact_mut(t.in_w).enumerate() {
            // Input row y is padded row y + 1 = 4i + r: patch row r of tile row i, and for
            // r = 0 also patch row 4 of tile row i − 1.
            let (r, i) = ((y + 1) % 4, (y + 1) / 4);
            let above = (r == 0).then(|| i - 1);
            for (pr, pi) in [(r, Some(i).filter(|&i| i < rows)), (4, above)] {
                let Some(pi) = pi else { continue };
                let (k0, k1, k2, k3, k4) = (
                    at(pr, 0, pi),
                    at(pr, 1, pi),
                    at(pr, 2, pi),
                    at(pr, 3, pi),
                    at(pr, 4, pi),
                );
                // Input column 4j + b − 1 is padded column 4j + b: patch column b of tile
                // column j for b = 1, 2, 3, and for b = 4 column 4 of j and column 0 of j + 1.
                let next = k0.iter().skip(1).chain(std::iter::once(&0.0));
                for (((((quad, a), b), d), e), f) in row
                    .chunks_exact_mut(4)
                    .zip(k1)
                    .zip(k2)
                    .zip(k3)
                    .zip(k4)
                    .zip(next)
                {
                    quad[0] += a;
                    quad[1] += b;
                    quad[2] += d;
                    quad[3] += e + f;
                }
            }
        }
    }
}

/// Images one after the other: `ys (N, O, Ho, Wo) = (accumulate ? ys : 0) + conv3×3(xs, w)`
/// for `xs` (N, C, H, W), as [`forward_image`] does each, two at a time where
/// [`pair_fits`] (the last of an odd number alone). `buf` is working memory of
/// [`buffer_len`] values or more.
///
/// # Errors
/// As [`forward_image`]; if `xs` and `ys` do not hold the same number of whole images.
pub(super) fn forward_images(
    g: &ConvGeom,
    u: &[f32],
    xs: &[f32],
    ys: &mut [f32],
    accumulate: bool,
    buf: &mut [f32],
) -> Result<()> {
    if whole::fits(g, g.o) {
        return whole::forward_images(g, u, xs, ys, accumulate, buf);
    }
    if whole8::fits(g, g.o) {
        return whole8::forward_images(g, u, xs, ys, accumulate, buf);
    }
    if whole_s2::fits(g) {
        return whole_s2::forward_images(g, u, xs, ys, accumulate, buf);
    }
    let (inl, outl) = whole_images(g, xs.len(), ys.len())?;
    let mut done = 0;
    if let Some(width) = pair_width(g) {
        for (x2, y2) in xs.chunks_exact(2 * inl).zip(ys.chunks_exact_mut(2 * outl)) {
            forward_pair_with(width, g, u, x2, y2, accumulate, buf)?;
            done += 1;
        }
    }
    let (xs, ys) = (&xs[2 * done * inl..], &mut ys[2 * done * outl..]);
    match pair_width(g) {
        // The last of an odd number of images on maps that only the pairs take (8×4 for
        // 256 bits; the plan gives training none: it takes Winograd only where the one-image
        // kernel fits, and on 8×8 maps the 256-bit one does): paired with itself, its copy's
        // output thrown away.
        Some(width) if !xs.is_empty() && g.winograd_width(g.o).is_none() => {
            let x2 = [xs, xs].concat();
            let mut y2 = [&ys[..], &ys[..]].concat();
            forward_pair_with(width, g, u, &x2, &mut y2, accumulate, buf)?;
            ys.copy_from_slice(&y2[..outl]);
        }
        _ => {
            for (xi, yi) in xs.chunks_exact(inl).zip(ys.chunks_exact_mut(outl)) {
                forward_image(g, u, xi, yi, accumulate, buf)?;
            }
        }
    }
    Ok(())
}

/// Whether [`forward_images`] takes `g`'s images (or, for ∂L/∂x, its flipped geometry's)
/// two at a time on this CPU: then a group of images ([`super::ConvGeom::group`]) should
/// hold two.
pub(super) fn pairs(g: &ConvGeom) -> bool {
    pair_width(g).is_some() || (g.flips() && pair_width(&g.flipped()).is_some())
}

/// The widest vectors with which [`forward_images`] takes `g`'s images two at a time
/// ([`pair_fits`]), if any this CPU has.
fn pair_width(g: &ConvGeom) -> Option<Width> {
    widest(|width| pair_fits(width, g))
}

/// Whether `width`'s kernel takes `g` two images at a time ([`zmm::forward_pair`]): maps of
/// one vector of tiles whose output rows are half a vector of pixels (for 512 bits 8×8 maps
/// that [`whole8`] does not take — all of them with `PRETEXT_NO_WINOGRAD4=1` — which would
/// otherwise run in 256-bit form), or with
/// F(4×4, 3×3) a whole vector (16×16: the second stage at 32 px, the first of 16 px views,
/// which would leave half of every 512-bit chunk idle), O a multiple of the output block.
fn pair_fits(width: Width, g: &ConvGeom) -> bool {
    let t = Tiles::of(g);
    // Output rows of half a vector of pixels for F(2×2, 3×3) (its groups of half a vector of
    // tiles then span two tile rows); for F(4×4, 3×3) rows of whole vectors (its groups of a
    // quarter vector of tiles, one tile row each).
    let rows = match t.algo {
        Algo::F4 => g.wo() == width.lanes(),
        Algo::Stride1 | Algo::Stride2 => 2 * g.wo() == width.lanes(),
    };
    enabled()
        && g.winograd_shape()
        && rows
        && t.tiles == width.lanes()
        && g.o.is_multiple_of(width.out_block())
}

/// Two images of [`forward_images`] with the kernel of `width` ([`zmm::forward_pair`]).
///
/// # Errors
/// As [`forward_image`].
fn forward_pair_with(
    width: Width,
    g: &ConvGeom,
    u: &[f32],
    x2: &[f32],
    y2: &mut [f32],
    accumulate: bool,
    buf: &mut [f32],
) -> Result<()> {
    if !(width.runs_here() && pair_fits(width, g)) {
        bail!("winograd convolution: {width:?} does not take two images of {g:?} on this CPU");
    }
    if u.len() != transform_len(g) || x2.len() != 2 * g.in_image() || y2.len() != 2 * g.out_image()
    {
        bail!(
            "winograd convolution: weight transform {}, inputs {}, outputs {} values are not two images of {g:?}",
            u.len(),
            x2.len(),
            y2.len()
        );
    }
    let t = Tiles::of(g);
    let (phases, v, m) = split_input(&t, width, x2, buf, t.xi() * plane(g.o, MAX_CHUNK))?;
    #[cfg(target_arch = "x86_64")]
    #[allow(unsafe_code)]
    // SAFETY: the CPU has the width's instructions, O is a multiple of its block, the map
    // is one vector of tiles with rows of half a vector of pixels ([`pair_fits`]), the sizes
    // were checked above, and the two split inputs lie `phase_len` apart in `phases`.
    unsafe {
        match width {
            Width::Avx2 => ymm::forward_pair(&t, u, phases, v, m, y2, accumulate),
            Width::Avx512 => zmm::forward_pair(&t, u, phases, v, m, y2, accumulate),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (phases, v, m, y2, accumulate);
    count_flop(2 * product_flop(&t));
    Ok(())
}

/// One image: `y (O, Ho, Wo) = (accumulate ? y : 0) + conv3×3(x, w)` with `u` the weight's
/// [`transform_weight`], `x` (C, H, W), stride 1 or 2, padding 1, for a geometry with
/// [`ConvGeom::winograd_forward`]. For ∂L/∂x, call it with the flipped geometry and the
/// flipped weight's transform. `buf` is working memory of [`buffer_len`] values or more.
///
/// # Errors
/// If the slices do not have the geometry's sizes, or the geometry or CPU does not allow it.
fn forward_image(
    g: &ConvGeom,
    u: &[f32],
    x: &[f32],
    y: &mut [f32],
    accumulate: bool,
    buf: &mut [f32],
) -> Result<()> {
    let Some(width) = g.winograd_width(g.o) else {
        bail!("winograd convolution: not for {g:?} on this CPU");
    };
    forward_with(width, g, u, x, y, accumulate, buf)
}

/// [`forward_image`] with the kernel of `width`.
///
/// # Errors
/// As [`forward_image`].
fn forward_with(
    width: Width,
    g: &ConvGeom,
    u: &[f32],
    x: &[f32],
    y: &mut [f32],
    accumulate: bool,
    buf: &mut [f32],
) -> Result<()> {
    if !(width.runs_here() && fits(width, g, g.o)) {
        bail!("winograd convolution: {width:?} not for {g:?} on this CPU");
    }
    if u.len() != transform_len(g) || x.len() != g.in_image() || y.len() != g.out_image() {
        bail!(
            "winograd convolution: weight transform {}, input {}, output {} values do not fit {g:?}",
            u.len(),
            x.len(),
            y.len()
        );
    }
    let t = Tiles::of(g);
    let (phases, v, m) = split_input(&t, width, x, buf, t.xi() * plane(g.o, MAX_CHUNK))?;
    #[cfg(target_arch = "x86_64")]
    #[allow(unsafe_code)]
    // SAFETY: the CPU has the width's instructions, O is a multiple of its block, and the
    // sizes were checked above; the kernels read and write only inside them (see
    // `zmm::forward`).
    unsafe {
        match width {
            Width::Avx2 => ymm::forward(&t, u, phases, v, m, y, accumulate),
            Width::Avx512 => zmm::forward(&t, u, phases, v, m, y, accumulate),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (phases, v, m, accumulate);
    count_flop(product_flop(&t));
    Ok(())
}

/// Images one after the other: `du += ` each image's sums of ∂L/∂U as [`weight_image`]
/// makes them, for `xs` (N, C, H, W) and ∂L/∂y = `dys` (N, O, Ho, Wo), two at a time where
/// [`weight_pair_width`] says (the last of an odd number alone, or with a zero gradient
/// beside it where no one-image kernel takes the map, as in [`forward_images`]).
///
/// # Errors
/// As [`weight_image`]; if `xs` and `dys` do not hold the same number of whole images.
pub(super) fn weight_images(
    g: &ConvGeom,
    xs: &[f32],
    dys: &[f32],
    du: &mut [f32],
    work: &mut super::Work,
) -> Result<()> {
    if whole::weight_fits(g) {
        return whole::weight_images(g, xs, dys, du, work);
    }
    if whole8::weight_fits(g) {
        return whole8::weight_images(g, xs, dys, du, work);
    }
    if whole_s2::weight_fits(g) {
        return whole_s2::weight_images(g, xs, dys, du, work);
    }
    let (inl, outl) = whole_images(g, xs.len(), dys.len())?;
    let pair = weight_pair_width(g);
    let mut done = 0;
    if let Some(width) = pair {
        for (x2, dy2) in xs.chunks_exact(2 * inl).zip(dys.chunks_exact(2 * outl)) {
            weight_pair_with(width, g, x2, dy2, du, &mut work.col, &mut work.product)?;
            done += 1;
        }
    }
    let (xs, dys) = (&xs[2 * done * inl..], &dys[2 * done * outl..]);
    match pair {
        Some(width) if !xs.is_empty() && g.winograd_weight_width().is_none() => {
            let x2 = [xs, xs].concat();
            let mut dy2 = dys.to_vec();
            dy2.resize(2 * outl, 0.0);
            weight_pair_with(width, g, &x2, &dy2, du, &mut work.col, &mut work.product)?;
        }
        _ => {
            for (xi, dyi) in xs.chunks_exact(inl).zip(dys.chunks_exact(outl)) {
                weight_image(g, xi, dyi, du, work)?;
            }
        }
    }
    Ok(())
}

/// The widest vectors with which [`weight_images`] takes `g`'s images two at a time: as
/// [`pair_width`], with O a multiple of two vectors ([`weight_fits`]).
fn weight_pair_width(g: &ConvGeom) -> Option<Width> {
    widest(|width| pair_fits(width, g) && g.o.is_multiple_of(2 * width.lanes()))
}

/// Two images of [`weight_images`] with the kernel of `width` ([`zmm::weight_pair`]), its
/// buffers `col` (both split inputs, the chunk's transforms) and `product` (both transposed
/// gradients).
///
/// # Errors
/// As [`weight_image`].
fn weight_pair_with(
    width: Width,
    g: &ConvGeom,
    x2: &[f32],
    dy2: &[f32],
    du: &mut [f32],
    col: &mut [f32],
    product: &mut [f32],
) -> Result<()> {
    if !(width.runs_here() && pair_fits(width, g) && g.o.is_multiple_of(2 * width.lanes())) {
        bail!("winograd convolution: ∂L/∂w with {width:?} does not take two images of {g:?}");
    }
    let (inl, outl) = (g.in_image(), g.out_image());
    if x2.len() != 2 * inl || dy2.len() != 2 * outl || du.len() != transform_len(g) {
        bail!(
            "winograd convolution: inputs {}, gradients {}, transform sums {} values are not two images of {g:?}",
            x2.len(),
            dy2.len(),
            du.len()
        );
    }
    let t = Tiles::of(g);
    let (phases, v, z) = split_input(&t, width, x2, col, t.xi() * plane(MAX_CHUNK, g.o))?;
    let dyt = take(product, 2 * outl, "transposed gradient")?;
    let (d0, d1) = dyt.split_at_mut(outl);
    transposed_gradient(&dy2[..outl], g.o, d0)?;
    transposed_gradient(&dy2[outl..], g.o, d1)?;
    #[cfg(target_arch = "x86_64")]
    #[allow(unsafe_code)]
    // SAFETY: the CPU has the width's instructions, O is a multiple of two of its vectors,
    // the map is one vector of tiles with rows of half a vector of pixels ([`pair_fits`]),
    // the sizes were checked above; the two split inputs lie `phase_len` apart in `phases`
    // and the two transposed gradients one after the other in `dyt`.
    unsafe {
        match width {
            Width::Avx2 => ymm::weight_pair(&t, phases, v, z, dyt, du),
            Width::Avx512 => zmm::weight_pair(&t, phases, v, z, dyt, du),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (phases, v, z, dyt);
    count_flop(2 * product_flop(&t));
    Ok(())
}

/// One image: `du[ξ][c][o] += Σ_tiles V[ξ][c] · Z[ξ][o]` (the module's docs) for `x`
/// (C, H, W) and ∂L/∂y = `dy` (O, Ho, Wo), for a geometry with [`ConvGeom::winograd_weight`];
/// [`weight_from_transform`] makes ∂L/∂w of the sums. The split input and the chunk's
/// transforms are made in `work.col`, ∂L/∂y's transpose in `work.product`.
///
/// # Errors
/// If the slices do not have the geometry's sizes, or the geometry or CPU does not allow it.
fn weight_image(
    g: &ConvGeom,
    x: &[f32],
    dy: &[f32],
    du: &mut [f32],
    work: &mut super::Work,
) -> Result<()> {
    let Some(width) = g.winograd_weight_width() else {
        bail!("winograd convolution: ∂L/∂w not for {g:?} on this CPU");
    };
    weight_with(width, g, x, dy, du, &mut work.col, &mut work.product)
}

/// [`weight_image`] with the kernel of `width`, its buffers `col` and `product`.
///
/// # Errors
/// As [`weight_image`].
fn weight_with(
    width: Width,
    g: &ConvGeom,
    x: &[f32],
    dy: &[f32],
    du: &mut [f32],
    col: &mut [f32],
    product: &mut [f32],
) -> Result<()> {
    if !(width.runs_here() && weight_fits(width, g)) {
        bail!("winograd convolution: ∂L/∂w with {width:?} not for {g:?} on this CPU");
    }
    if x.len() != g.in_image() || dy.len() != g.out_image() || du.len() != transform_len(g) {
        bail!(
            "winograd convolution: input {}, gradient {}, transform sums {} values do not fit {g:?}",
            x.len(),
            dy.len(),
            du.len()
        );
    }
    let t = Tiles::of(g);
    let (phases, v, z) = split_input(&t, width, x, col, t.xi() * plane(MAX_CHUNK, g.o))?;
    let dyt = transposed_gradient(dy, g.o, product)?;
    #[cfg(target_arch = "x86_64")]
    #[allow(unsafe_code)]
    // SAFETY: the CPU has the width's instructions, O is a multiple of two of its vectors,
    // and the sizes were checked above; the kernels read and write only inside them (see
    // `zmm::weight`).
    unsafe {
        match width {
            Width::Avx2 => ymm::weight(&t, phases, v, z, dyt, du),
            Width::Avx512 => zmm::weight(&t, phases, v, z, dyt, du),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (phases, v, z, dyt);
    count_flop(product_flop(&t));
    Ok(())
}

/// The arithmetic of one image's products, as the step's count has it (the transforms, like
/// im2col elsewhere, are not counted): 2·16·C·O per tile, 4/9 of the definition's, for
/// F(2×2, 3×3); 2·25·C·O, 25/36 of it, for stride 2; 2·36·C·O per tile of 16 pixels, 1/4
/// of it, for F(4×4, 3×3).
fn product_flop(t: &Tiles) -> u64 {
    (2 * t.xi() * t.c * t.o * t.tiles) as u64
}

/// Cuts `buf` into the split inputs of the images in `xs` (one, or two for the pairs, each
/// made here, [`Tiles::phase_len`] values apart), a chunk's input transform (16 or 25 planes
/// of C rows), and `rest` values for what the pass needs next (the products, or Z).
///
/// # Errors
/// If `xs` is not one or two whole images, `buf` is too short, or the split input's slack
/// too short for what `width`'s last chunk reads.
fn split_input<'a>(
    t: &Tiles,
    width: Width,
    xs: &[f32],
    buf: &'a mut [f32],
    rest: usize,
) -> Result<(&'a mut [f32], &'a mut [f32], &'a mut [f32])> {
    if t.reach(2 * width.lanes()) > t.phase_len() {
        bail!("winograd convolution: the split input's slack is too short for {t:?}");
    }
    let image = (t.c * t.in_hw).max(1);
    let images = xs.len() / image;
    if !(1..=2).contains(&images) || xs.len() != images * image {
        bail!(
            "winograd convolution: {} input values are not one or two images of {t:?}",
            xs.len()
        );
    }
    let (plen, vlen) = (t.phase_len(), t.xi() * plane(t.c, MAX_CHUNK));
    let buf = take(buf, images * plen + vlen + rest, "Winograd")?;
    let (phases, tail) = buf.split_at_mut(images * plen);
    let (v, rest) = tail.split_at_mut(vlen);
    for (x, p) in xs.chunks_exact(image).zip(phases.chunks_exact_mut(plen)) {
        split::split(t, x, p);
    }
    Ok((phases, v, rest))
}

/// The kernels for one vector width: `$feature` the target features, `$v` the vector type,
/// `$lanes` its values, `$block` output channels per product tile (O a multiple), `$wide` per
/// wide product tile, `$taps` input channels per ∂L/∂w tile, then the intrinsics for
/// zero, unaligned load and store, broadcast, add, subtract and fused multiply-add.
#[cfg(target_arch = "x86_64")]
macro_rules! winograd_kernels {
    (
        $module:ident, $feature:literal, $lanes:literal, $block:literal, $wide:literal,
        $taps:literal,
        $zip:ident, $rows2:ident, $zip4:ident,
        $zero:ident, $load:ident, $store:ident, $set1:ident, $add:ident, $sub:ident,
        $fma:ident
    ) => {
        #[allow(unsafe_code)]
        mod $module {
            use std::arch::x86_64::{$add, $fma, $load, $set1, $store, $sub, $zero};

            use super::{
                Algo, PLANES, PLANES_F4, PLANES_S2, Tiles, XI, XI_F4, XI_S2, plane, $rows2, $zip,
                $zip4,
            };

            /// Values per vector.
            const LANES: usize = $lanes;
            /// Tiles per chunk: two vectors.
            const CHUNK: usize = 2 * LANES;
            /// Tiles per output group: half a vector, whose two pixels per tile and row
            /// make one vector.
            const GROUP: usize = LANES / 2;
            /// Tiles per output group of F(4×4, 3×3): a quarter vector, whose four pixels
            /// per tile and row make one vector.
            const QUARTER: usize = LANES / 4;
            /// Output channels per product tile: O must be a multiple.
            const OUT_BLOCK: usize = $block;
            /// Output channels per wide product tile, used where the rest stays a multiple
            /// of OUT_BLOCK.
            const WIDE_BLOCK: usize = $wide;
            /// Input channels per ∂L/∂w register tile (of two vectors of output channels).
            const TAPS: usize = $taps;

            /// The whole image, chunk by chunk.
            ///
            /// # Safety
            /// The CPU has the module's features; `u` holds ξ·C·O values (ξ = 16, 25 for
            /// stride 2, 36 for F(4×4, 3×3)), `phases` [`Tiles::phase_len`], `v` ξ planes of
            /// C rows, `m` ξ of O rows ([`plane`]), `y` O·Ho·Wo; O a multiple of the block,
            /// Wo of LANES.
            #[target_feature(enable = $feature)]
            pub(super) unsafe fn forward(
                t: &Tiles,
                u: &[f32],
                phases: &[f32],
                v: &mut [f32],
                m: &mut [f32],
                y: &mut [f32],
                accumulate: bool,
            ) {
                if t.algo == Algo::F4 {
                    // SAFETY: the caller's.
                    return unsafe { forward_f4(t, u, phases, v, m, y, accumulate) };
                }
                let mut pos = [usize::MAX; CHUNK / GROUP];
                let mut u0 = 0;
                while u0 < t.tiles {
                    t.positions(u0, GROUP, &mut pos);
                    // SAFETY: the caller's sizes; chunk u0 reads the planes up to
                    // [`Tiles::phase_len`] (the slack included) and writes only the groups in
                    // `pos`.
                    unsafe {
                        match t.algo {
                            Algo::Stride1 => input(t, phases, v, u0, LANES),
                            Algo::Stride2 => input_s2(t, phases, v, u0, LANES),
                            Algo::F4 => unreachable!("F(4×4, 3×3) runs forward_f4"),
                        }
                        product(t, u, v, m);
                        output(t, m, &pos, y, accumulate, false);
                    }
                    u0 += CHUNK;
                }
            }

            /// Two images at once, one per vector of the chunk, for maps of one vector of
            /// tiles whose rows are half a vector of pixels (8×8 for 512 bits: one image
            /// would leave half of every chunk's products unused).
            ///
            /// # Safety
            /// As [`forward`], with `phases` two images' split inputs
            /// ([`Tiles::phase_len`] values apart) and `y` two images' outputs (O·Ho·Wo
            /// apart); `t.tiles` = LANES and Wo = LANES / 2 (Wo = LANES for F(4×4, 3×3),
            /// which [`forward_pair_f4`] runs).
            #[target_feature(enable = $feature)]
            pub(super) unsafe fn forward_pair(
                t: &Tiles,
                u: &[f32],
                phases: &[f32],
                v: &mut [f32],
                m: &mut [f32],
                y: &mut [f32],
                accumulate: bool,
            ) {
                if t.algo == Algo::F4 {
                    // SAFETY: the caller's.
                    return unsafe { forward_pair_f4(t, u, phases, v, m, y, accumulate) };
                }
                // The first image's two groups (two tile rows each), then the second's.
                let mut pos = [usize::MAX; CHUNK / GROUP];
                t.positions(0, GROUP, &mut pos);
                pos[2] = pos[0] + t.o * t.hw;
                pos[3] = pos[1] + t.o * t.hw;
                let step = t.phase_len();
                // SAFETY: the caller's sizes; each vector reads its image's planes up to
                // [`Tiles::phase_len`] (the slack included) and writes only its image's
                // groups.
                unsafe {
                    match t.algo {
                        Algo::Stride1 => input(t, phases, v, 0, step),
                        Algo::Stride2 => input_s2(t, phases, v, 0, step),
                        Algo::F4 => unreachable!("F(4×4, 3×3) runs forward_pair_f4"),
                    }
                    product(t, u, v, m);
                    output(t, m, &pos, y, accumulate, true);
                }
            }

            /// F(4×4, 3×3) over the whole image, chunk by chunk ([`forward`] for
            /// [`Algo::F4`]): the input transform ([`input_f4`]), the same product with 36
            /// planes, and the output transform ([`output_f4`]) in groups of a quarter vector
            /// of tiles, whose four pixels per tile and row make one vector.
            ///
            /// # Safety
            /// As [`forward`], with ξ = 36 and Wo a multiple of LANES (whole groups per tile
            /// row).
            #[target_feature(enable = $feature)]
            unsafe fn forward_f4(
                t: &Tiles,
                u: &[f32],
                phases: &[f32],
                v: &mut [f32],
                m: &mut [f32],
                y: &mut [f32],
                accumulate: bool,
            ) {
                let mut pos = [usize::MAX; CHUNK / QUARTER];
                let mut u0 = 0;
                while u0 < t.tiles {
                    t.positions(u0, QUARTER, &mut pos);
                    // SAFETY: as in [`forward`]; chunk u0 reads the planes up to
                    // [`Tiles::phase_len`] and writes only the groups in `pos`.
                    unsafe {
                        input_f4(t, phases, v, u0, LANES);
                        product(t, u, v, m);
                        output_f4(t, m, &pos, y, accumulate);
                    }
                    u0 += CHUNK;
                }
            }

            /// [`forward_f4`] for two images at once, one per vector of the chunk, on maps of
            /// one vector of tiles (16×16 for 512 bits): each vector's four groups are its
            /// image's four tile rows.
            ///
            /// # Safety
            /// As [`forward_pair`], with ξ = 36, `t.tiles` = LANES and Wo = LANES.
            #[target_feature(enable = $feature)]
            unsafe fn forward_pair_f4(
                t: &Tiles,
                u: &[f32],
                phases: &[f32],
                v: &mut [f32],
                m: &mut [f32],
                y: &mut [f32],
                accumulate: bool,
            ) {
                let mut pos = [usize::MAX; CHUNK / QUARTER];
                let (first, second) = pos.split_at_mut(CHUNK / QUARTER / 2);
                t.positions(0, QUARTER, first);
                for (p, q) in second.iter_mut().zip(first.iter()) {
                    *p = q + t.o * t.hw;
                }
                // SAFETY: the caller's sizes; each vector reads its image's planes up to
                // [`Tiles::phase_len`] (the slack included) and writes only its image's
                // groups.
                unsafe {
                    input_f4(t, phases, v, 0, t.phase_len());
                    product(t, u, v, m);
                    output_f4(t, m, &pos, y, accumulate);
                }
            }

            /// ∂L/∂U's sums over the whole image, chunk by chunk.
            ///
            /// # Safety
            /// The CPU has the module's features; `phases` holds [`Tiles::phase_len`]
            /// values, `v` ξ planes of C rows, `z` ξ planes of CHUNK rows of O values
            /// ([`plane`]), `dyt` Ho·Wo·O, `du` ξ·C·O (ξ = 16, 25 or 36, [`Algo::xi`]); O a multiple
            /// of two vectors.
            #[target_feature(enable = $feature)]
            pub(super) unsafe fn weight(
                t: &Tiles,
                phases: &[f32],
                v: &mut [f32],
                z: &mut [f32],
                dyt: &[f32],
                du: &mut [f32],
            ) {
                let mut u0 = 0;
                while u0 < t.tiles {
                    let n = (t.tiles - u0).min(CHUNK);
                    // SAFETY: the caller's sizes; the chunk's n tiles exist.
                    unsafe {
                        match t.algo {
                            Algo::Stride1 => input(t, phases, v, u0, LANES),
                            Algo::Stride2 => input_s2(t, phases, v, u0, LANES),
                            Algo::F4 => input_f4(t, phases, v, u0, LANES),
                        }
                        if t.algo == Algo::F4 {
                            gradient_f4(t, dyt, z, u0, n);
                        } else {
                            gradient(t, dyt, z, u0, n);
                        }
                        weight_product(t, v, z, du, n);
                    }
                    u0 += CHUNK;
                }
            }

            /// [`weight`] for two images at once, one per vector of the chunk (as
            /// [`forward_pair`]): their sums of ∂L/∂U in one product of twice the tiles.
            ///
            /// # Safety
            /// As [`weight`], with `phases` two images' split inputs ([`Tiles::phase_len`]
            /// values apart) and `dyt` their two transposed gradients one after the other;
            /// `t.tiles` = LANES and Wo = LANES / 2 (LANES for F(4×4, 3×3)).
            #[target_feature(enable = $feature)]
            pub(super) unsafe fn weight_pair(
                t: &Tiles,
                phases: &[f32],
                v: &mut [f32],
                z: &mut [f32],
                dyt: &[f32],
                du: &mut [f32],
            ) {
                // The second image's tiles continue the first's in `dyt`: its first tile
                // row is tile row Ho/2 of a map twice as high.
                let both = Tiles {
                    tiles: 2 * t.tiles,
                    ..*t
                };
                // SAFETY: the caller's sizes; each vector reads its image's planes up to
                // [`Tiles::phase_len`], and the 2·LANES = CHUNK tiles of `both` lie in `dyt`.
                unsafe {
                    match t.algo {
                        Algo::Stride1 => input(t, phases, v, 0, t.phase_len()),
                        Algo::Stride2 => input_s2(t, phases, v, 0, t.phase_len()),
                        Algo::F4 => input_f4(t, phases, v, 0, t.phase_len()),
                    }
                    if t.algo == Algo::F4 {
                        gradient_f4(&both, dyt, z, 0, CHUNK);
                    } else {
                        gradient(&both, dyt, z, 0, CHUNK);
                    }
                    weight_product(t, v, z, du, CHUNK);
                }
            }

            /// ∂L/∂x of a stride-2 convolution, chunk by chunk: Z with tiles along the lanes
            /// from ∂L/∂y's phases, `∂V[ξ][c][k] = Σ_o ut[ξ][o][c] · Z[ξ][o][k]` (the forward
            /// product with C and O swapped), and each tile's patch gradient `B ∂V Bᵀ` into
            /// `patches`.
            ///
            /// # Safety
            /// The CPU has the module's features; `ut` holds 25·O·C values, `dph` 4·O planes
            /// of `sp` values, `z` 25 planes of O rows and `dv` 25 of C rows ([`plane`]),
            /// `patches` 25·C planes of `sp`; `sp` at least the tiles rounded up to a chunk;
            /// C a multiple of the block.
            #[target_feature(enable = $feature)]
            pub(super) unsafe fn strided_input(
                t: &Tiles,
                ut: &[f32],
                dph: &[f32],
                z: &mut [f32],
                dv: &mut [f32],
                patches: &mut [f32],
                sp: usize,
            ) {
                // The product's view: ∂L/∂y's O channels in, C out.
                let turned = Tiles {
                    c: t.o,
                    o: t.c,
                    ..*t
                };
                let (o, c) = (t.o, t.c);
                let zp = z.as_mut_ptr();
                let dp = dph.as_ptr();
                let pp = patches.as_mut_ptr();
                let mut u0 = 0;
                while u0 < t.tiles {
                    for oi in 0..o {
                        for half in 0..2 {
                            let base = oi * 4 * sp + u0 + half * LANES;
                            // SAFETY: u0 + CHUNK ≤ sp, so every load lies in channel oi's four
                            // planes; z's plane ξ holds O rows of CHUNK.
                            unsafe {
                                let d00 = $load(dp.add(base));
                                let d01 = $load(dp.add(base + sp));
                                let d10 = $load(dp.add(base + 2 * sp));
                                let d11 = $load(dp.add(base + 3 * sp));
                                // A over the rows, then over each row's columns (as in
                                // `gradient`, the tiles along the lanes).
                                let mid = [$add(d00, d10), $add(d01, d11)];
                                let rows = [[d00, d01], mid, [d10, d11], [d00, d01], [d10, d11]];
                                for (row, r) in rows.iter().enumerate() {
                                    let out = [r[0], $add(r[0], r[1]), r[1], r[0], r[1]];
                                    for (col, val) in out.iter().enumerate() {
                                        let at = (row * 5 + col) * plane(o, CHUNK) + oi * CHUNK;
                                        $store(zp.add(at + half * LANES), *val);
                                    }
                                }
                            }
                        }
                    }
                    // SAFETY: the caller's sizes; `turned` multiplies O rows of z into C rows
                    // of dv, C a multiple of the block.
                    unsafe { product(&turned, ut, z, dv) };
                    let vp = dv.as_ptr();
                    for ci in 0..c {
                        for half in 0..2 {
                            // SAFETY: rows (ξ, ci) of dv hold CHUNK values; the stores lie in
                            // channel ci's 25 planes, u0 + CHUNK ≤ sp.
                            unsafe {
                                let mut e = [$zero(); XI_S2];
                                for (xi, val) in e.iter_mut().enumerate() {
                                    let at = xi * plane(c, CHUNK) + ci * CHUNK;
                                    *val = $load(vp.add(at + half * LANES));
                                }
                                // B over the rows (Bᵀ's columns: X0, X3, X1 − X0 − X2, X4,
                                // X2), column by column, then over each row's columns.
                                let b = |x: [_; 5]| {
                                    [x[0], x[3], $sub($sub(x[1], x[0]), x[2]), x[4], x[2]]
                                };
                                let cols: [[_; 5]; 5] = std::array::from_fn(|k| {
                                    b([e[k], e[5 + k], e[10 + k], e[15 + k], e[20 + k]])
                                });
                                for r in 0..5 {
                                    let out = b([
                                        cols[0][r], cols[1][r], cols[2][r], cols[3][r], cols[4][r],
                                    ]);
                                    for (k, val) in out.iter().enumerate() {
                                        let at = ((ci * XI_S2) + r * 5 + k) * sp + u0;
                                        $store(pp.add(at + half * LANES), *val);
                                    }
                                }
                            }
                        }
                    }
                    u0 += CHUNK;
                }
            }

            /// Z of F(4×4, 3×3) for the chunk's `n` tiles from `u0`: `z[ξ][k][o] =
            /// (A dY Aᵀ)[ξ]` with `A = [[1, 0, 0, 0], [1, 1, 1, 1], [1, −1, 1, −1],
            /// [1, 2, 4, 8], [1, −2, 4, −8], [0, 0, 0, 1]]` (the output transform's, turned
            /// round) and dY the 4×4 output gradient of tile u0 + k in channel o, a vector of
            /// output channels at a time.
            ///
            /// # Safety
            /// The CPU has the module's features; `u0 + n ≤ tiles`, `n ≤ CHUNK`; every tile
            /// u < u0 + n has its 4×4 pixels inside `dyt` (Ho·Wo·O values, or for [`super::whole`]
            /// the chunk's images one after the other, W = 4, Q = 1); O a multiple of LANES;
            /// `z` 36 planes of CHUNK rows of O ([`plane`]).
            #[target_feature(enable = $feature)]
            #[inline]
            pub(super) unsafe fn gradient_f4(
                t: &Tiles,
                dyt: &[f32],
                z: &mut [f32],
                u0: usize,
                n: usize,
            ) {
                let (o, w) = (t.o, t.w);
                let zp = z.as_mut_ptr();
                let dp = dyt.as_ptr();
                let (two, minus2, four) = ($set1(2.0), $set1(-2.0), $set1(4.0));
                // A applied to four values.
                let a = |d: [_; 4]| {
                    let (s02, s13) = ($add(d[0], d[2]), $add(d[1], d[3]));
                    let (q02, q13) = ($fma(four, d[2], d[0]), $fma(four, d[3], d[1]));
                    [
                        d[0],
                        $add(s02, s13),
                        $sub(s02, s13),
                        $fma(two, q13, q02),
                        $fma(minus2, q13, q02),
                        d[3],
                    ]
                };
                for k in 0..n {
                    let u = u0 + k;
                    // The tile's top-left pixel.
                    let p = 4 * (u / t.q) * w + 4 * (u % t.q);
                    for ob in (0..o).step_by(LANES) {
                        // SAFETY: the tile's 16 pixels lie in `dyt` (the caller's: H a
                        // multiple of 4 and W of 16, or [`super::whole`]'s images of W = 4),
                        // their channels ob..ob + LANES ≤ O; z's plane ξ holds CHUNK rows of O.
                        unsafe {
                            let d: [[_; 4]; 4] = std::array::from_fn(|r| {
                                std::array::from_fn(|c| $load(dp.add((p + r * w + c) * o + ob)))
                            });
                            // A over the rows, column by column (6 × 4), then over each row's
                            // columns (6 × 6).
                            let mut rows = [[$zero(); 4]; 6];
                            for c in 0..4 {
                                let col = a([d[0][c], d[1][c], d[2][c], d[3][c]]);
                                for (r, val) in col.into_iter().enumerate() {
                                    rows[r][c] = val;
                                }
                            }
                            for (row, r) in rows.iter().enumerate() {
                                for (col, val) in a(*r).into_iter().enumerate() {
                                    let at = (row * 6 + col) * plane(CHUNK, o);
                                    $store(zp.add(at + k * o + ob), val);
                                }
                            }
                        }
                    }
                }
            }

            /// Z for the chunk's `n` tiles from `u0`: `z[ξ][k][o] = (A dY Aᵀ)[ξ]` with
            /// `A = [[1, 0], [1, 1], [1, −1], [0, −1]]` for stride 1,
            /// `A = [[1, 0], [1, 1], [0, 1], [1, 0], [0, 1]]` for stride 2, and dY the 2×2 output
            /// gradient of tile u0 + k in channel o, a vector of output channels at a time.
            ///
            /// # Safety
            /// As [`weight`]; `u0 + n ≤ tiles`, `n ≤ CHUNK`.
            #[target_feature(enable = $feature)]
            #[inline]
            unsafe fn gradient(t: &Tiles, dyt: &[f32], z: &mut [f32], u0: usize, n: usize) {
                let (o, w) = (t.o, t.w);
                let zp = z.as_mut_ptr();
                let dp = dyt.as_ptr();
                for k in 0..n {
                    let u = u0 + k;
                    // The tile's top-left pixel.
                    let p = 2 * (u / t.q) * w + 2 * (u % t.q);
                    for ob in (0..o).step_by(LANES) {
                        // SAFETY: the tile's four pixels lie in the map (H, W even), their
                        // channels ob..ob + LANES ≤ O; z's plane ξ holds CHUNK rows of O.
                        unsafe {
                            let d00 = $load(dp.add(p * o + ob));
                            let d01 = $load(dp.add((p + 1) * o + ob));
                            let d10 = $load(dp.add((p + w) * o + ob));
                            let d11 = $load(dp.add((p + w + 1) * o + ob));
                            // A over the rows, column by column, then Aᵀ over each row.
                            match t.algo {
                                Algo::Stride1 => {
                                    let rows = [
                                        [d00, d01],
                                        [$add(d00, d10), $add(d01, d11)],
                                        [$sub(d00, d10), $sub(d01, d11)],
                                        [$sub($zero(), d10), $sub($zero(), d11)],
                                    ];
                                    for (row, r) in rows.iter().enumerate() {
                                        let out = [
                                            r[0],
                                            $add(r[0], r[1]),
                                            $sub(r[0], r[1]),
                                            $sub($zero(), r[1]),
                                        ];
                                        for (col, val) in out.iter().enumerate() {
                                            let at = (row * 4 + col) * plane(CHUNK, o);
                                            $store(zp.add(at + k * o + ob), *val);
                                        }
                                    }
                                }
                                Algo::Stride2 => {
                                    let mid = [$add(d00, d10), $add(d01, d11)];
                                    let rows =
                                        [[d00, d01], mid, [d10, d11], [d00, d01], [d10, d11]];
                                    for (row, r) in rows.iter().enumerate() {
                                        let out = [r[0], $add(r[0], r[1]), r[1], r[0], r[1]];
                                        for (col, val) in out.iter().enumerate() {
                                            let at = (row * 5 + col) * plane(CHUNK, o);
                                            $store(zp.add(at + k * o + ob), *val);
                                        }
                                    }
                                }
                                Algo::F4 => unreachable!("F(4×4, 3×3) runs gradient_f4"),
                            }
                        }
                    }
                }
            }

            /// `du[ξ][c][o] += Σ_k v[ξ][c][k] · z[ξ][k][o]` over the chunk's `n` tiles.
            ///
            /// # Safety
            /// The CPU has the module's features; `n ≤ CHUNK`; `v` holds ξ planes of C rows of
            /// CHUNK and `z` ξ of CHUNK rows of O ([`plane`]), `du` ξ·C·O values
            /// (ξ = [`Algo::xi`]); O a multiple of two vectors.
            #[target_feature(enable = $feature)]
            #[inline]
            pub(super) unsafe fn weight_product(
                t: &Tiles,
                v: &[f32],
                z: &[f32],
                du: &mut [f32],
                n: usize,
            ) {
                let (c, o) = (t.c, t.o);
                for xi in 0..t.xi() {
                    let vx = v.as_ptr().wrapping_add(xi * plane(c, CHUNK));
                    let zx = z.as_ptr().wrapping_add(xi * plane(CHUNK, o));
                    let dx = du.as_mut_ptr().wrapping_add(xi * c * o);
                    for ob in (0..o).step_by(2 * LANES) {
                        let mut ci = 0;
                        while ci < c {
                            let left = c - ci;
                            // SAFETY: channels ci..ci + T ≤ C, ob + 2·LANES ≤ O; the
                            // caller's sizes.
                            unsafe {
                                if left >= TAPS {
                                    weight_tile::<TAPS>(vx, zx, dx, o, ob, ci, n);
                                    ci += TAPS;
                                } else if left >= 4 {
                                    weight_tile::<4>(vx, zx, dx, o, ob, ci, n);
                                    ci += 4;
                                } else {
                                    weight_tile::<1>(vx, zx, dx, o, ob, ci, n);
                                    ci += 1;
                                }
                            }
                        }
                    }
                }
            }

            /// Channels `ci..ci + T` × output channels `ob..ob + 2·LANES` of one ξ plane:
            /// `vx` its transformed input (C rows of CHUNK), `zx` its Z (CHUNK rows of O),
            /// `dx` its sums (C rows of O).
            ///
            /// # Safety
            /// As [`weight_product`].
            #[target_feature(enable = $feature)]
            #[inline]
            unsafe fn weight_tile<const T: usize>(
                vx: *const f32,
                zx: *const f32,
                dx: *mut f32,
                o: usize,
                ob: usize,
                ci: usize,
                n: usize,
            ) {
                // SAFETY: rows ci..ci + T of the sums and of v, tiles k < n ≤ CHUNK of z,
                // channels ob..ob + 2·LANES ≤ O.
                unsafe {
                    let mut acc = [[$zero(); 2]; T];
                    for (j, a) in acc.iter_mut().enumerate() {
                        let src = dx.add((ci + j) * o + ob);
                        a[0] = $load(src);
                        a[1] = $load(src.add(LANES));
                    }
                    let vrow = vx.add(ci * CHUNK);
                    for k in 0..n {
                        let z0 = $load(zx.add(k * o + ob));
                        let z1 = $load(zx.add(k * o + ob + LANES));
                        for (j, a) in acc.iter_mut().enumerate() {
                            let b = $set1(*vrow.add(j * CHUNK + k));
                            a[0] = $fma(b, z0, a[0]);
                            a[1] = $fma(b, z1, a[1]);
                        }
                    }
                    for (j, a) in acc.iter().enumerate() {
                        let dst = dx.add((ci + j) * o + ob);
                        $store(dst, a[0]);
                        $store(dst.add(LANES), a[1]);
                    }
                }
            }

            /// Step 1 for the chunk's tiles from `u0`: `v[ξ][c][k] = (Bᵀ d B)[ξ]` with
            /// `Bᵀ = [[1, 0, −1, 0], [0, 1, 1, 0], [0, −1, 1, 0], [0, 1, 0, −1]]` and d the
            /// 4×4 padded input patch of tile u0 + k in channel c. The chunk's second vector
            /// reads `step` values after its first: LANES (the next tiles), or
            /// [`Tiles::phase_len`] for a second image's tiles ([`forward_pair`]).
            ///
            /// # Safety
            /// As [`forward`] (or [`forward_pair`]); `u0 < tiles`.
            #[target_feature(enable = $feature)]
            #[inline]
            unsafe fn input(t: &Tiles, phases: &[f32], v: &mut [f32], u0: usize, step: usize) {
                let (q, s) = (t.q, t.s);
                let p = phases.as_ptr();
                let vp = v.as_mut_ptr();
                // Offsets of patch position (r, k) in a channel's planes: phase
                // (r mod 2, k mod 2), shifted by k / 2 columns, one tile row further for
                // r ≥ 2.
                let mut off = [[0usize; 4]; 4];
                for (r, row) in off.iter_mut().enumerate() {
                    for (k, o) in row.iter_mut().enumerate() {
                        *o = ((r & 1) * 4 + (k & 1) * 2 + (k >> 1)) * s + (r >> 1) * q;
                    }
                }
                for c in 0..t.c {
                    for half in 0..2 {
                        let base = c * PLANES * s + u0 + half * step;
                        // SAFETY: tile u < tiles + CHUNK − 1 reads values up to
                        // base + 7·S + Q + LANES − 1 < PLANES·C·S + CHUNK (S = tiles + Q);
                        // with step = phase_len ([`forward_pair`], u0 = 0, tiles = LANES:
                        // no slack read) within the second image's planes, < 2·phase_len;
                        // v's planes hold C rows of CHUNK values.
                        unsafe {
                            // Bᵀ over the patch's rows, column by column.
                            let mut tr = [[$zero(); 4]; 4];
                            for k in 0..4 {
                                let d0 = $load(p.add(base + off[0][k]));
                                let d1 = $load(p.add(base + off[1][k]));
                                let d2 = $load(p.add(base + off[2][k]));
                                let d3 = $load(p.add(base + off[3][k]));
                                tr[0][k] = $sub(d0, d2);
                                tr[1][k] = $add(d1, d2);
                                tr[2][k] = $sub(d2, d1);
                                tr[3][k] = $sub(d1, d3);
                            }
                            // B over each row's columns.
                            for (row, e) in tr.iter().enumerate() {
                                let out = [
                                    $sub(e[0], e[2]),
                                    $add(e[1], e[2]),
                                    $sub(e[2], e[1]),
                                    $sub(e[1], e[3]),
                                ];
                                for (col, val) in out.iter().enumerate() {
                                    let xi = row * 4 + col;
                                    let at = xi * plane(t.c, CHUNK) + c * CHUNK;
                                    $store(vp.add(at + half * LANES), *val);
                                }
                            }
                        }
                    }
                }
            }

            /// Step 1 for stride 2, the chunk's tiles from `u0`: `v[ξ][c][k] = (Bᵀ d B)[ξ]`
            /// with `Bᵀ = [[1, 0, −1, 0, 0], [0, 0, 1, 0, 0], [0, 0, −1, 0, 1],
            /// [0, 1, 0, 0, 0], [0, 0, 0, 1, 0]]` and d the 5×5 padded input patch of tile
            /// u0 + k in channel c (padded rows 4i … 4i + 4 and columns 4j … 4j + 4 of tile
            /// (i, j)), `step` as for [`input`].
            ///
            /// # Safety
            /// As [`forward`] (or [`forward_pair`]); `u0 < tiles`.
            #[target_feature(enable = $feature)]
            #[inline]
            unsafe fn input_s2(t: &Tiles, phases: &[f32], v: &mut [f32], u0: usize, step: usize) {
                let (q, s) = (t.q, t.s);
                let p = phases.as_ptr();
                let vp = v.as_mut_ptr();
                // Offsets of patch position (r, k) in a channel's planes: row phase r mod 4,
                // column k, one tile row further for r = 4.
                let mut off = [[0usize; 5]; 5];
                for (r, row) in off.iter_mut().enumerate() {
                    for (k, o) in row.iter_mut().enumerate() {
                        *o = ((r & 3) * 5 + k) * s + (r >> 2) * q;
                    }
                }
                for c in 0..t.c {
                    for half in 0..2 {
                        let base = c * PLANES_S2 * s + u0 + half * step;
                        // SAFETY: tile u < tiles + CHUNK − 1 reads values up to
                        // base + 19·S + LANES − 1 < PLANES_S2·C·S + CHUNK (Q < S, u0 < S);
                        // with step = phase_len ([`forward_pair`]) within the second
                        // image's planes, < 2·phase_len;
                        // v's planes hold C rows of CHUNK values.
                        unsafe {
                            // Bᵀ over the patch's rows, column by column.
                            let mut tr = [[$zero(); 5]; 5];
                            for k in 0..5 {
                                let d0 = $load(p.add(base + off[0][k]));
                                let d1 = $load(p.add(base + off[1][k]));
                                let d2 = $load(p.add(base + off[2][k]));
                                let d3 = $load(p.add(base + off[3][k]));
                                let d4 = $load(p.add(base + off[4][k]));
                                tr[0][k] = $sub(d0, d2);
                                tr[1][k] = d2;
                                tr[2][k] = $sub(d4, d2);
                                tr[3][k] = d1;
                                tr[4][k] = d3;
                            }
                            // B over each row's columns.
                            for (row, e) in tr.iter().enumerate() {
                                let out = [$sub(e[0], e[2]), e[2], $sub(e[4], e[2]), e[1], e[3]];
                                for (col, val) in out.iter().enumerate() {
                                    let xi = row * 5 + col;
                                    let at = xi * plane(t.c, CHUNK) + c * CHUNK;
                                    $store(vp.add(at + half * LANES), *val);
                                }
                            }
                        }
                    }
                }
            }

            /// Step 1 of F(4×4, 3×3) for the chunk's tiles from `u0`: `v[ξ][c][k] =
            /// (Bᵀ d B)[ξ]` with `Bᵀ = [[4, 0, −5, 0, 1, 0], [0, −4, −4, 1, 1, 0],
            /// [0, 4, −4, −1, 1, 0], [0, −2, −1, 2, 1, 0], [0, 2, −1, −2, 1, 0],
            /// [0, 4, 0, −5, 0, 1]]` (Lavin & Gray 2016) and d the 6×6 padded input patch of
            /// tile u0 + k in channel c (padded rows 4i … 4i + 5 and columns 4j … 4j + 5 of
            /// tile (i, j)). The chunk's second vector reads `step` values after its first:
            /// LANES (the next tiles), or [`Tiles::phase_len`] for a second image's tiles
            /// ([`forward_pair_f4`]).
            ///
            /// # Safety
            /// As [`forward_f4`] (or [`forward_pair_f4`]); `u0 < tiles`.
            #[target_feature(enable = $feature)]
            #[inline]
            unsafe fn input_f4(t: &Tiles, phases: &[f32], v: &mut [f32], u0: usize, step: usize) {
                let (q, s) = (t.q, t.s);
                let p = phases.as_ptr();
                let vp = v.as_mut_ptr();
                // Offsets of patch position (r, k) in a channel's planes: row phase r mod 4,
                // column k, one tile row further for r ≥ 4.
                let mut off = [[0usize; 6]; 6];
                for (r, row) in off.iter_mut().enumerate() {
                    for (k, o) in row.iter_mut().enumerate() {
                        *o = ((r & 3) * 6 + k) * s + (r >> 2) * q;
                    }
                }
                let (four, minus4, minus5, two, minus2) = (
                    $set1(4.0),
                    $set1(-4.0),
                    $set1(-5.0),
                    $set1(2.0),
                    $set1(-2.0),
                );
                // Bᵀ applied to six values.
                let bt = |d: [_; 6]| {
                    let (s12, d12) = ($add(d[1], d[2]), $sub(d[1], d[2]));
                    let (d31, d42) = ($sub(d[3], d[1]), $sub(d[4], d[2]));
                    [
                        $fma(four, d[0], $fma(minus5, d[2], d[4])),
                        $fma(minus4, s12, $add(d[3], d[4])),
                        $fma(four, d12, $sub(d[4], d[3])),
                        $fma(two, d31, d42),
                        $fma(minus2, d31, d42),
                        $fma(four, d[1], $fma(minus5, d[3], d[5])),
                    ]
                };
                for c in 0..t.c {
                    for half in 0..2 {
                        let base = c * PLANES_F4 * s + u0 + half * step;
                        // SAFETY: tile u < tiles + CHUNK − 1 reads values up to
                        // base + 23·S + LANES − 1 (or base + 11·S + Q + LANES − 1)
                        // < PLANES_F4·C·S + CHUNK (S = tiles + Q, u0 < tiles); with
                        // step = phase_len ([`forward_pair_f4`], u0 = 0, tiles = LANES: no
                        // slack read) within the second image's planes, < 2·phase_len; v's
                        // planes hold C rows of CHUNK values.
                        unsafe {
                            // Bᵀ over the patch's rows, column by column.
                            let mut tr = [[$zero(); 6]; 6];
                            for k in 0..6 {
                                let d = std::array::from_fn(|r| $load(p.add(base + off[r][k])));
                                for (r, val) in bt(d).into_iter().enumerate() {
                                    tr[r][k] = val;
                                }
                            }
                            // B over each row's columns.
                            for (row, e) in tr.iter().enumerate() {
                                for (col, val) in bt(*e).into_iter().enumerate() {
                                    let xi = row * 6 + col;
                                    let at = xi * plane(t.c, CHUNK) + c * CHUNK;
                                    $store(vp.add(at + half * LANES), val);
                                }
                            }
                        }
                    }
                }
            }

            /// Step 2: `m[ξ][o][k] = Σ_c u[ξ][c][o] · v[ξ][c][k]`, WIDE_BLOCK (then
            /// OUT_BLOCK) output channels × 2 vectors of tiles at a time.
            ///
            /// # Safety
            /// The CPU has the module's features; `u` holds ξ·C·O values (ξ = [`Algo::xi`]),
            /// `v` ξ planes of C rows of CHUNK and `m` ξ of O rows ([`plane`]); O a multiple
            /// of OUT_BLOCK.
            #[target_feature(enable = $feature)]
            #[inline]
            pub(super) unsafe fn product(t: &Tiles, u: &[f32], v: &[f32], m: &mut [f32]) {
                let o = t.o;
                // As many wide tiles as leave a multiple of OUT_BLOCK (O is one).
                let mut wide = o / WIDE_BLOCK;
                while !(o - wide * WIDE_BLOCK).is_multiple_of(OUT_BLOCK) {
                    wide -= 1;
                }
                for xi in 0..t.xi() {
                    let mut ob = 0;
                    for _ in 0..wide {
                        // SAFETY: as this function's, with ob + WIDE_BLOCK ≤ O.
                        unsafe { product_tile::<WIDE_BLOCK>(t, u, v, m, xi, ob) };
                        ob += WIDE_BLOCK;
                    }
                    while ob < o {
                        // SAFETY: as this function's, with ob + OUT_BLOCK ≤ O.
                        unsafe { product_tile::<OUT_BLOCK>(t, u, v, m, xi, ob) };
                        ob += OUT_BLOCK;
                    }
                }
            }

            /// One register tile of [`product`]: output channels `ob..ob + B` of plane ξ,
            /// 2·B accumulators (B = 6 on AVX2 keeps 12 fused multiply-adds in flight, more
            /// than its latency times its two ports).
            ///
            /// # Safety
            /// As [`forward`], with `ob + B ≤ O`.
            #[target_feature(enable = $feature)]
            #[inline]
            unsafe fn product_tile<const B: usize>(
                t: &Tiles,
                u: &[f32],
                v: &[f32],
                m: &mut [f32],
                xi: usize,
                ob: usize,
            ) {
                let (c, o) = (t.c, t.o);
                let vx = v.as_ptr().wrapping_add(xi * plane(c, CHUNK));
                let ux = u.as_ptr().wrapping_add(xi * c * o);
                let mut acc = [[$zero(); 2]; B];
                for ci in 0..c {
                    // SAFETY: row (ξ, ci) of v holds CHUNK values, of u O values with
                    // ob + B ≤ O.
                    unsafe {
                        let x0 = $load(vx.add(ci * CHUNK));
                        let x1 = $load(vx.add(ci * CHUNK + LANES));
                        let wr = ux.add(ci * o + ob);
                        for (i, a) in acc.iter_mut().enumerate() {
                            let b = $set1(*wr.add(i));
                            a[0] = $fma(b, x0, a[0]);
                            a[1] = $fma(b, x1, a[1]);
                        }
                    }
                }
                let mp = m.as_mut_ptr();
                for (i, a) in acc.iter().enumerate() {
                    // SAFETY: row (ξ, ob + i) of m holds CHUNK values.
                    unsafe {
                        let dst = mp.add(xi * plane(o, CHUNK) + (ob + i) * CHUNK);
                        $store(dst, a[0]);
                        $store(dst.add(LANES), a[1]);
                    }
                }
            }

            /// Step 3: each tile's `Aᵀ M A` with `Aᵀ = [[1, 1, 1, 0], [0, 1, −1, −1]]` for
            /// stride 1, `Aᵀ = [[1, 1, 0, 1, 0], [0, 1, 1, 0, 1]]` for stride 2, its 2×2 pixels
            /// written to (or added into) `y`: per group of tiles and output row, one vector of
            /// pixels. With `pair` ([`forward_pair`]) a group is two tile rows of half a
            /// vector of pixels each, whose four output rows are two whole vectors.
            ///
            /// # Safety
            /// As [`forward`]; every position in `pos` is a group's first pixel in an output
            /// plane, the group's tiles in one tile row (with `pair`: in two, Wo = LANES / 2),
            /// or `usize::MAX`.
            #[target_feature(enable = $feature)]
            #[inline]
            unsafe fn output(
                t: &Tiles,
                m: &[f32],
                pos: &[usize; CHUNK / GROUP],
                y: &mut [f32],
                acc: bool,
                pair: bool,
            ) {
                let (o, w) = (t.o, t.w);
                let mp = m.as_ptr();
                let yp = y.as_mut_ptr();
                for oi in 0..o {
                    for half in 0..2 {
                        let groups = &pos[2 * half..2 * half + 2];
                        if groups[0] == usize::MAX {
                            break;
                        }
                        // SAFETY: rows (ξ, oi) of m hold CHUNK values; each group's two
                        // output rows of LANES pixels lie in plane oi (its tiles in one tile
                        // row, the row below inside the map as H is even).
                        unsafe {
                            // The tile's ξ values, Aᵀ over the rows, column by column, then
                            // over each row's columns: [left, right] pixels of its two rows.
                            let rows = match t.algo {
                                Algo::Stride1 => {
                                    let mut mv = [$zero(); XI];
                                    for (xi, val) in mv.iter_mut().enumerate() {
                                        let at = xi * plane(o, CHUNK) + oi * CHUNK;
                                        *val = $load(mp.add(at + half * LANES));
                                    }
                                    let mut a = [[$zero(); 4]; 2];
                                    for l in 0..4 {
                                        a[0][l] = $add($add(mv[l], mv[4 + l]), mv[8 + l]);
                                        a[1][l] = $sub($sub(mv[4 + l], mv[8 + l]), mv[12 + l]);
                                    }
                                    [0, 1].map(|i| {
                                        let a = a[i];
                                        [$add($add(a[0], a[1]), a[2]), $sub($sub(a[1], a[2]), a[3])]
                                    })
                                }
                                Algo::Stride2 => {
                                    let mut mv = [$zero(); XI_S2];
                                    for (xi, val) in mv.iter_mut().enumerate() {
                                        let at = xi * plane(o, CHUNK) + oi * CHUNK;
                                        *val = $load(mp.add(at + half * LANES));
                                    }
                                    let mut a = [[$zero(); 5]; 2];
                                    for l in 0..5 {
                                        a[0][l] = $add($add(mv[l], mv[5 + l]), mv[15 + l]);
                                        a[1][l] = $add($add(mv[5 + l], mv[10 + l]), mv[20 + l]);
                                    }
                                    [0, 1].map(|i| {
                                        let a = a[i];
                                        [$add($add(a[0], a[1]), a[3]), $add($add(a[1], a[2]), a[4])]
                                    })
                                }
                                Algo::F4 => unreachable!("F(4×4, 3×3) runs output_f4"),
                            };
                            if pair {
                                // Pixel rows 0 and 1 of the group's two tile rows: in the
                                // vectors' first and second halves; the four rows lie one
                                // after the other.
                                let [top, bottom] = rows.map(|[left, right]| $zip(left, right));
                                for (g, &p) in groups.iter().enumerate() {
                                    if p == usize::MAX {
                                        break;
                                    }
                                    let four = $rows2(top[g], bottom[g]);
                                    for (k, v) in four.into_iter().enumerate() {
                                        let dst = yp.add(oi * t.hw + p + k * LANES);
                                        let v = if acc { $add($load(dst), v) } else { v };
                                        $store(dst, v);
                                    }
                                }
                                continue;
                            }
                            for (i, &[left, right]) in rows.iter().enumerate() {
                                let pixels = $zip(left, right);
                                for (&p, v) in groups.iter().zip(pixels) {
                                    if p == usize::MAX {
                                        break;
                                    }
                                    let dst = yp.add(oi * t.hw + p + i * w);
                                    let v = if acc { $add($load(dst), v) } else { v };
                                    $store(dst, v);
                                }
                            }
                        }
                    }
                }
            }

            /// Step 3 of F(4×4, 3×3): each tile's `Aᵀ M A` with `Aᵀ = [[1, 1, 1, 1, 1, 0],
            /// [0, 1, −1, 2, −2, 0], [0, 1, 1, 4, 4, 0], [0, 1, −1, 8, −8, 1]]`, its 4×4
            /// pixels written to (or added into) `y`: per group of a quarter vector of tiles
            /// and output row, the four pixels of each tile side by side ([`$zip4`]), one
            /// vector.
            ///
            /// # Safety
            /// As [`forward_f4`]; every position in `pos` is a group's first pixel in an
            /// output plane, the group's tiles in one tile row, or `usize::MAX`.
            #[target_feature(enable = $feature)]
            #[inline]
            unsafe fn output_f4(
                t: &Tiles,
                m: &[f32],
                pos: &[usize; CHUNK / QUARTER],
                y: &mut [f32],
                acc: bool,
            ) {
                let (o, w) = (t.o, t.w);
                let mp = m.as_ptr();
                let yp = y.as_mut_ptr();
                let (two, four, eight) = ($set1(2.0), $set1(4.0), $set1(8.0));
                // Aᵀ applied to six values.
                let at = |m: [_; 6]| {
                    let (s12, d12) = ($add(m[1], m[2]), $sub(m[1], m[2]));
                    let (s34, d34) = ($add(m[3], m[4]), $sub(m[3], m[4]));
                    [
                        $add($add(m[0], s12), s34),
                        $fma(two, d34, d12),
                        $fma(four, s34, s12),
                        $fma(eight, d34, $add(d12, m[5])),
                    ]
                };
                for oi in 0..o {
                    for half in 0..2 {
                        let groups = &pos[4 * half..4 * half + 4];
                        if groups[0] == usize::MAX {
                            break;
                        }
                        // SAFETY: rows (ξ, oi) of m hold CHUNK values; each group's four
                        // output rows of LANES pixels lie in plane oi (its tiles in one tile
                        // row, the rows below inside the map as H is a multiple of 4).
                        unsafe {
                            let mut mv = [$zero(); XI_F4];
                            for (xi, val) in mv.iter_mut().enumerate() {
                                let at = xi * plane(o, CHUNK) + oi * CHUNK;
                                *val = $load(mp.add(at + half * LANES));
                            }
                            // Aᵀ over the rows, column by column (4 × 6).
                            let mut a = [[$zero(); 6]; 4];
                            for l in 0..6 {
                                let col = at(std::array::from_fn(|r| mv[r * 6 + l]));
                                for (r, val) in col.into_iter().enumerate() {
                                    a[r][l] = val;
                                }
                            }
                            // Over each row's columns: pixel columns 0 … 3 of every tile, put
                            // side by side per group.
                            for (r, row) in a.iter().enumerate() {
                                let pixels = $zip4(at(*row));
                                for (&p, v) in groups.iter().zip(pixels) {
                                    if p == usize::MAX {
                                        break;
                                    }
                                    let dst = yp.add(oi * t.hw + p + r * w);
                                    let v = if acc { $add($load(dst), v) } else { v };
                                    $store(dst, v);
                                }
                            }
                        }
                    }
                }
            }
        }
    };
}

/// For F(4×4, 3×3)'s output ([`ymm::output_f4`]): four vectors of one pixel column (0 … 3)
/// of eight tiles each, as four vectors of two tiles' four pixels side by side, tiles
/// (0, 1), (2, 3), (4, 5), (6, 7).
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
#[target_feature(enable = "avx2,fma")]
#[inline]
fn zip4_ymm(c: [std::arch::x86_64::__m256; 4]) -> [std::arch::x86_64::__m256; 4] {
    use std::arch::x86_64::{
        _mm256_permute2f128_ps, _mm256_shuffle_ps, _mm256_unpackhi_ps, _mm256_unpacklo_ps,
    };
    // In each 128-bit half, the 4×4 transpose: r[k] holds tile k's four pixels in its first
    // half, tile 4 + k's in its second.
    let (t0, t1) = (
        _mm256_unpacklo_ps(c[0], c[1]),
        _mm256_unpackhi_ps(c[0], c[1]),
    );
    let (t2, t3) = (
        _mm256_unpacklo_ps(c[2], c[3]),
        _mm256_unpackhi_ps(c[2], c[3]),
    );
    let r = [
        _mm256_shuffle_ps::<0x44>(t0, t2),
        _mm256_shuffle_ps::<0xee>(t0, t2),
        _mm256_shuffle_ps::<0x44>(t1, t3),
        _mm256_shuffle_ps::<0xee>(t1, t3),
    ];
    [
        _mm256_permute2f128_ps::<0x20>(r[0], r[1]),
        _mm256_permute2f128_ps::<0x20>(r[2], r[3]),
        _mm256_permute2f128_ps::<0x31>(r[0], r[1]),
        _mm256_permute2f128_ps::<0x31>(r[2], r[3]),
    ]
}

/// As [`zip4_ymm`] for 16 lanes: four vectors of four tiles' pixels, tiles 0 … 3, 4 … 7,
/// 8 … 11, 12 … 15.
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
#[target_feature(enable = "avx512f")]
#[inline]
fn zip4_zmm(c: [std::arch::x86_64::__m512; 4]) -> [std::arch::x86_64::__m512; 4] {
    use std::arch::x86_64::{
        _mm512_shuffle_f32x4, _mm512_shuffle_ps, _mm512_unpackhi_ps, _mm512_unpacklo_ps,
    };
    // In each 128-bit block L, the 4×4 transpose: r[k]'s block L holds tile 4L + k's pixels.
    let (t0, t1) = (
        _mm512_unpacklo_ps(c[0], c[1]),
        _mm512_unpackhi_ps(c[0], c[1]),
    );
    let (t2, t3) = (
        _mm512_unpacklo_ps(c[2], c[3]),
        _mm512_unpackhi_ps(c[2], c[3]),
    );
    let r = [
        _mm512_shuffle_ps::<0x44>(t0, t2),
        _mm512_shuffle_ps::<0xee>(t0, t2),
        _mm512_shuffle_ps::<0x44>(t1, t3),
        _mm512_shuffle_ps::<0xee>(t1, t3),
    ];
    // Then the 4×4 transpose of the blocks: group L is block L of r[0], r[1], r[2], r[3].
    let a = _mm512_shuffle_f32x4::<0x44>(r[0], r[1]);
    let b = _mm512_shuffle_f32x4::<0x44>(r[2], r[3]);
    let c2 = _mm512_shuffle_f32x4::<0xee>(r[0], r[1]);
    let d = _mm512_shuffle_f32x4::<0xee>(r[2], r[3]);
    [
        _mm512_shuffle_f32x4::<0x88>(a, b),
        _mm512_shuffle_f32x4::<0xdd>(a, b),
        _mm512_shuffle_f32x4::<0x88>(c2, d),
        _mm512_shuffle_f32x4::<0xdd>(c2, d),
    ]
}

/// The pixels of a group's tiles in one output row, left and right pixel of each tile
/// side by side: `[l0, r0, l1, r1, …]`, lanes 0..4 of `left` and `right` in the first
/// vector, lanes 4..8 in the second.
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
#[target_feature(enable = "avx2,fma")]
#[inline]
fn zip_ymm(
    left: std::arch::x86_64::__m256,
    right: std::arch::x86_64::__m256,
) -> [std::arch::x86_64::__m256; 2] {
    use std::arch::x86_64::{_mm256_permute2f128_ps, _mm256_unpackhi_ps, _mm256_unpacklo_ps};
    // [l0 r0 l1 r1 | l4 r4 l5 r5] and [l2 r2 l3 r3 | l6 r6 l7 r7].
    let lo = _mm256_unpacklo_ps(left, right);
    let hi = _mm256_unpackhi_ps(left, right);
    [
        _mm256_permute2f128_ps::<0x20>(lo, hi),
        _mm256_permute2f128_ps::<0x31>(lo, hi),
    ]
}

/// As [`zip_ymm`] for 16 lanes: lanes 0..8 in the first vector, 8..16 in the second.
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
#[target_feature(enable = "avx512f")]
#[inline]
fn zip_zmm(
    left: std::arch::x86_64::__m512,
    right: std::arch::x86_64::__m512,
) -> [std::arch::x86_64::__m512; 2] {
    use std::arch::x86_64::{_mm512_permutex2var_ps, _mm512_setr_epi32};
    // Index i < 16 takes left[i], 16 + i takes right[i].
    let first = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    let second = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
    [
        _mm512_permutex2var_ps(left, first, right),
        _mm512_permutex2var_ps(left, second, right),
    ]
}

/// Two vectors of pixels `[a₀ | a₁]` and `[b₀ | b₁]` (halves) as `[a₀ | b₀]` and `[a₁ | b₁]`:
/// the four output rows of two tile rows, in order ([`zmm::forward_pair`]).
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
#[target_feature(enable = "avx2,fma")]
#[inline]
fn rows2_ymm(
    a: std::arch::x86_64::__m256,
    b: std::arch::x86_64::__m256,
) -> [std::arch::x86_64::__m256; 2] {
    use std::arch::x86_64::_mm256_permute2f128_ps;
    [
        _mm256_permute2f128_ps::<0x20>(a, b),
        _mm256_permute2f128_ps::<0x31>(a, b),
    ]
}

/// As [`rows2_ymm`] for 16 lanes (halves of 8).
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
#[target_feature(enable = "avx512f")]
#[inline]
fn rows2_zmm(
    a: std::arch::x86_64::__m512,
    b: std::arch::x86_64::__m512,
) -> [std::arch::x86_64::__m512; 2] {
    use std::arch::x86_64::_mm512_shuffle_f32x4;
    // 128-bit blocks (a0, a1, b0, b1) and (a2, a3, b2, b3).
    [
        _mm512_shuffle_f32x4::<0x44>(a, b),
        _mm512_shuffle_f32x4::<0xee>(a, b),
    ]
}

#[cfg(target_arch = "x86_64")]
winograd_kernels!(
    ymm,
    "avx2,fma",
    8,
    4,
    6,
    6,
    zip_ymm,
    rows2_ymm,
    zip4_ymm,
    _mm256_setzero_ps,
    _mm256_loadu_ps,
    _mm256_storeu_ps,
    _mm256_set1_ps,
    _mm256_add_ps,
    _mm256_sub_ps,
    _mm256_fmadd_ps
);

#[cfg(target_arch = "x86_64")]
winograd_kernels!(
    zmm,
    "avx512f",
    16,
    8,
    8,
    12,
    zip_zmm,
    rows2_zmm,
    zip4_zmm,
    _mm512_setzero_ps,
    _mm512_loadu_ps,
    _mm512_storeu_ps,
    _mm512_set1_ps,
    _mm512_add_ps,
    _mm512_sub_ps,
    _mm512_fmadd_ps
);

#[cfg(test)]
mod tests {
    use super::{
        ConvGeom, Width, buffer_len, forward_with, strided_input_len, strided_input_with,
        transform_weight, transposed_transform, weight_buffer_len, weight_from_transform,
        weight_with,
    };
    use crate::model::kernels::conv::direct::tests::{close, plus, values};

    /// A forward kernel's signature ([`super::forward_images`] and its images-along-the-lanes
    /// forms): `(g, u, xs, ys, accumulate, buf)`.
    pub(super) type Forward =
        fn(&ConvGeom, &[f32], &[f32], &mut [f32], bool, &mut [f32]) -> candle_core::Result<()>;

    /// An ∂L/∂w kernel's signature ([`super::weight_images`] and its forms):
    /// `(g, xs, dys, du, work)`.
    pub(super) type Weight = fn(
        &ConvGeom,
        &[f32],
        &[f32],
        &mut [f32],
        &mut crate::model::kernels::conv::Work,
    ) -> candle_core::Result<()>;

    /// [`reference`] for each image of `xs` and `dys`.
    pub(super) fn references(
        g: &ConvGeom,
        w: &[f32],
        xs: &[f32],
        dys: &[f32],
    ) -> Vec<[Vec<f64>; 3]> {
        xs.chunks_exact(g.in_image())
            .zip(dys.chunks_exact(g.out_image()))
            .map(|(x, dy)| reference(g, w, x, dy))
            .collect()
    }

    /// Values of NaN after each working buffer of [`check_forward`] and [`check_weight`]:
    /// still NaN afterwards, or a kernel wrote past the length it was given.
    const TAIL: usize = 64;

    /// `forward`'s output against `refs`, written and added into what was there; its working
    /// memory `buf_len` values, checked not to be written past.
    pub(super) fn check_forward(
        g: &ConvGeom,
        u: &[f32],
        xs: &[f32],
        refs: &[[Vec<f64>; 3]],
        buf_len: usize,
        forward: Forward,
    ) {
        let n = refs.len();
        let mut buf = vec![f32::NAN; buf_len + TAIL];
        let mut y = vec![f32::NAN; n * g.out_image()];
        forward(g, u, xs, &mut y, false, &mut buf[..buf_len]).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            buf[buf_len..].iter().all(|v| v.is_nan()),
            "forward of {g:?} wrote past its buffer"
        );
        let want: Vec<f64> = refs.iter().flat_map(|[y, _, _]| y.clone()).collect();
        close_to_scale(&y, &want, &format!("forward of {g:?}"));
        // Added into what was there.
        let before = values(n * g.out_image(), 4);
        let mut y = before.clone();
        forward(g, u, xs, &mut y, true, &mut buf[..buf_len]).unwrap_or_else(|e| panic!("{e}"));
        let added = plus(&want, &before);
        close_to_scale(&y, &added, &format!("forward added on {g:?}"));
    }

    /// `weight`'s ∂L/∂w against `refs`, the images in two runs (partial sums added as the
    /// engine does), with buffers of `lens` ([`super::weight_buffer_len`]'s), checked not to be
    /// written past.
    pub(super) fn check_weight(
        g: &ConvGeom,
        xs: &[f32],
        dys: &[f32],
        refs: &[[Vec<f64>; 3]],
        lens: (usize, usize),
        weight: Weight,
    ) {
        let mut work = crate::model::kernels::conv::Work {
            col: vec![f32::NAN; lens.0],
            product: vec![f32::NAN; lens.1],
        };
        let mut du = vec![0f32; super::transform_len(g)];
        let cut = refs.len() / 2;
        let (x1, x2) = xs.split_at(cut * g.in_image());
        let (d1, d2) = dys.split_at(cut * g.out_image());
        for (x, d) in [(x1, d1), (x2, d2)] {
            if !x.is_empty() {
                weight(g, x, d, &mut du, &mut work).unwrap_or_else(|e| panic!("{e}"));
            }
        }
        // The same with buffers that have a NaN tail, taken from the front as the engine's.
        {
            let mut du2 = vec![0f32; super::transform_len(g)];
            let mut tailed = crate::model::kernels::conv::Work {
                col: vec![f32::NAN; lens.0 + TAIL],
                product: vec![f32::NAN; lens.1 + TAIL],
            };
            weight(g, xs, dys, &mut du2, &mut tailed).unwrap_or_else(|e| panic!("{e}"));
            assert!(
                tailed.col[lens.0..].iter().all(|v| v.is_nan())
                    && tailed.product[lens.1..].iter().all(|v| v.is_nan()),
                "∂L/∂w of {g:?} wrote past its buffers"
            );
        }
        let dw = weight_from_transform(g, &du).unwrap_or_else(|e| panic!("{e}"));
        let mut want = vec![0f64; g.o * g.c * 9];
        for [_, d, _] in refs {
            for (s, v) in want.iter_mut().zip(d) {
                *s += v;
            }
        }
        close_to_scale(&dw, &want, &format!("∂L/∂w of {g:?}"));
    }

    /// `conv3×3(x, w)` (O, Ho, Wo), the geometry's stride, padding 1, and ∂L/∂w (O, C, 3, 3)
    /// and ∂L/∂x (C, H, W) for ∂L/∂y = `dy`, summed in f64.
    pub(super) fn reference(g: &ConvGeom, w: &[f32], x: &[f32], dy: &[f32]) -> [Vec<f64>; 3] {
        let (ho, wo, st) = (g.ho(), g.wo(), g.stride);
        let mut y = vec![0f64; g.o * ho * wo];
        let mut dw = vec![0f64; g.o * g.c * 9];
        let mut dx = vec![0f64; g.in_image()];
        for o in 0..g.o {
            for r in 0..ho {
                for q in 0..wo {
                    let p = (o * ho + r) * wo + q;
                    for c in 0..g.c {
                        for t in 0..9 {
                            let (rr, qq) =
                                ((st * r + t / 3) as isize - 1, (st * q + t % 3) as isize - 1);
                            if rr < 0 || qq < 0 || rr >= g.h as isize || qq >= g.w as isize {
                                continue;
                            }
                            let at = (c * g.h + rr as usize) * g.w + qq as usize;
                            let v = f64::from(x[at]);
                            let wt = f64::from(w[(o * g.c + c) * 9 + t]);
                            y[p] += wt * v;
                            dw[(o * g.c + c) * 9 + t] += f64::from(dy[p]) * v;
                            dx[at] += wt * f64::from(dy[p]);
                        }
                    }
                }
            }
        }
        [y, dw, dx]
    }

    #[allow(clippy::print_stderr)] // says which widths this CPU could not check
    /// Every width this CPU runs, against sums in f64, written and added into the output,
    /// on maps whose tiles fill one chunk, several, or end inside one, square and not, with
    /// stride 1 and 2 (and stride 2's ∂L/∂x turned round); and the shapes each width refuses.
    #[test]
    fn winograd_matches_the_definition() {
        // (C, O, H, W): tiles filling one chunk, several, ending inside one; 24-pixel rows
        // (AVX2 only); 36 and 17 channels (whole and partial ∂L/∂w tiles); 12 output
        // channels (forward on AVX2 only, no ∂L/∂w); too few channels, an odd height, a row
        // of no whole vectors. The forward pass of those with H a multiple of 4 and W of 16,
        // at least 32, is F(4×4, 3×3) (∂L/∂w too): the first stage at 32 px;
        // one tile row (8 tiles: a partial chunk); 12 tiles a row ending inside a chunk of
        // 512 bits and across chunks of 256; 64 channels; 12 output channels (AVX2 only); a
        // 16×16 map alone (one 256-bit chunk, half of a 512-bit one); ∂L/∂w of a partial
        // chunk (8 tiles), and of 36 tiles (a chunk and a part of one at either width).
        let shapes = [
            (16, 8, 2, 16),
            (16, 32, 32, 32),
            (32, 32, 32, 32),
            (16, 8, 4, 32),
            (16, 8, 8, 48),
            (32, 16, 12, 64),
            (64, 64, 16, 32),
            (17, 12, 8, 32),
            (32, 32, 16, 16),
            (16, 32, 4, 32),
            (16, 32, 12, 48),
            (32, 16, 16, 16),
            (24, 32, 6, 48),
            (64, 64, 8, 24),
            (36, 32, 8, 16),
            (17, 32, 4, 16),
            (17, 12, 10, 16),
            (16, 8, 2, 8),
            (16, 6, 4, 16),
            (8, 8, 4, 16),
            (16, 8, 4, 12),
            (16, 8, 5, 16),
        ];
        // Stride 2, (C, O, H, W): one partial chunk (8 tiles); the encoder's second stage at
        // 32 px (two chunks of 512 bits, four of 256); its third (8-pixel output rows: AVX2
        // only); 80 tiles ending inside a chunk of 512 bits with 17 channels; sides that are
        // not multiples of 4 (30, and 31, whose 16-pixel output rows would otherwise fit) and
        // 24 tiles ending inside a chunk of either width (∂L/∂w in 256-bit form), refused and
        // taken; too few channels (refused); a 4×4 output (4 tiles, fewer than a chunk:
        // refused).
        let strided = [
            (16, 8, 4, 32),
            (32, 64, 32, 32),
            (64, 32, 16, 16),
            (17, 32, 20, 64),
            (16, 8, 6, 32),
            (16, 8, 8, 30),
            (16, 8, 8, 31),
            (16, 16, 12, 32),
            (8, 8, 8, 32),
            (32, 64, 8, 8),
        ];
        let cases = shapes
            .iter()
            .map(|&s| (s, 1))
            .chain(strided.iter().map(|&s| (s, 2)));
        let mut ran = 0;
        for width in [Width::Avx2, Width::Avx512] {
            if !width.runs_here() {
                eprintln!("skipping {width:?}: this CPU does not have it");
                continue;
            }
            for ((c, o, h, wd), stride) in cases.clone() {
                let g = ConvGeom {
                    n: 1,
                    c,
                    h,
                    w: wd,
                    o,
                    k: 3,
                    stride,
                    pad: 1,
                };
                let (w, x, dy) = (
                    values(o * c * 9, 1),
                    values(g.in_image(), 2),
                    values(g.out_image(), 3),
                );
                let [want, dw_want, dx_want] = reference(&g, &w, &x, &dy);
                if stride == 2 {
                    // ∂L/∂x turned round, added into a gradient already there.
                    let fits = c >= 16
                        && h % 4 == 0
                        && wd % 4 == 0
                        && c % width.out_block() == 0
                        && g.wo().is_multiple_of(width.lanes());
                    let ut = transposed_transform(&g, &w);
                    let used = strided_input_len(&g);
                    let mut buf = vec![f32::NAN; used + 64];
                    let mut dx = values(g.in_image(), 5);
                    let before = dx.clone();
                    let done = strided_input_with(width, &g, &ut, &dy, &mut dx, &mut buf);
                    assert_eq!(done.is_ok(), fits, "{width:?} ∂L/∂x on {g:?}: {done:?}");
                    assert!(
                        buf[used..].iter().all(|v| v.is_nan()),
                        "{width:?} ∂L/∂x on {g:?} wrote past its buffer"
                    );
                    if fits {
                        let summed = plus(&dx_want, &before);
                        close(&dx, &summed, &format!("{width:?} dx + ∂L/∂x on {g:?}"));
                        ran += 1;
                    }
                }
                let u = transform_weight(&g, &w);
                // NaN everywhere, and 64 more past the values the kernel may use: a read of a
                // value it has not written (a border left unzeroed, a read past the end)
                // shows.
                let mut buf = vec![f32::NAN; buffer_len(&g) + 64];
                let side = if stride == 1 {
                    h % 2 == 0
                } else {
                    h % 4 == 0 && wd % 4 == 0
                };
                let fits = c >= 16
                    && side
                    && g.wo().is_multiple_of(width.lanes())
                    && o % width.out_block() == 0;
                let mut y = values(g.out_image(), 4);
                let before = y.clone();
                let done = forward_with(width, &g, &u, &x, &mut y, true, &mut buf);
                assert_eq!(done.is_ok(), fits, "{width:?} on {g:?}: {done:?}");
                if !fits {
                    continue;
                }
                let summed = plus(&want, &before);
                // F(4×4, 3×3)'s transforms (entries up to 8, and ⅙, 1/24) round more: its
                // error is held to the output's scale.
                let check = if super::Algo::of(&g) == super::Algo::F4 {
                    close_to_scale
                } else {
                    close
                };
                check(&y, &summed, &format!("{width:?} y + conv on {g:?}"));
                forward_with(width, &g, &u, &x, &mut y, false, &mut buf)
                    .unwrap_or_else(|e| panic!("{e}"));
                check(&y, &want, &format!("{width:?} conv on {g:?}"));
                ran += 1;
                // ∂L/∂w: the sums of ∂L/∂U over the image twice (as over two images).
                let (col, product) = weight_buffer_len(&g);
                let (mut col, mut product) =
                    (vec![f32::NAN; col + 64], vec![f32::NAN; product + 64]);
                let mut du = vec![0f32; super::transform_len(&g)];
                let weight_fits = o % (2 * width.lanes()) == 0;
                for _ in 0..2 {
                    let done = weight_with(width, &g, &x, &dy, &mut du, &mut col, &mut product);
                    assert_eq!(
                        done.is_ok(),
                        weight_fits,
                        "{width:?} ∂L/∂w on {g:?}: {done:?}"
                    );
                }
                if weight_fits {
                    let twice: Vec<f64> = dw_want.iter().map(|v| 2.0 * v).collect();
                    check(
                        &weight_from_transform(&g, &du).unwrap_or_else(|e| panic!("{e}")),
                        &twice,
                        &format!("{width:?} ∂L/∂w on {g:?}"),
                    );
                    ran += 1;
                }
            }
        }
        if Width::Avx2.runs_here() {
            assert!(ran >= 16, "only {ran} kernels ran");
        }
    }

    /// `got` against `want` to 1e-4 relative (plus 1e-4 absolute) and 2e-5 of the largest
    /// `want`, value by value: F(4×4, 3×3) in f32 is 10–20 times further from the f64 sums
    /// than F(2×2, 3×3) (measured here: outputs up to 1.0e-4 relative with 64 channels,
    /// 3.6e-6 of the largest output; ∂L/∂w 6.5e-6 of the largest, against 5e-7), and a value
    /// that cancels to near zero has no relative scale of its own.
    pub(super) fn close_to_scale(got: &[f32], want: &[f64], what: &str) {
        assert_eq!(got.len(), want.len(), "{what}: length");
        let scale = want.iter().fold(0f64, |m, w| m.max(w.abs()));
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            let err = (f64::from(*g) - w).abs();
            assert!(
                err <= 1e-4 * (1.0 + w.abs()) + 2e-5 * scale,
                "{what}[{i}]: {g} against {w} (largest {scale})"
            );
        }
    }

    #[allow(clippy::print_stderr)] // says which widths this CPU could not check
    /// Two images at a time (one per vector of a chunk), against sums in f64, written and
    /// added into the outputs, stride 1 (F(2×2, 3×3) on 8×8 maps, F(4×4, 3×3) on 16×16 ones)
    /// and 2, each width this CPU runs, by
    /// `forward_pair_with` and by `forward_images` with an odd number of images (the last one
    /// alone); and the shapes the pairs refuse.
    #[test]
    fn two_images_at_a_time_match_the_definition() {
        // (width, C, O, H, W, stride): 8×8 maps for 512 bits, 8×4 for 256.
        let cases = [
            (Width::Avx512, 32, 64, 8, 8, 1),
            (Width::Avx512, 64, 32, 16, 16, 2),
            (Width::Avx512, 128, 128, 8, 8, 1),
            (Width::Avx512, 32, 32, 16, 16, 1),
            (Width::Avx512, 64, 64, 16, 16, 1),
            (Width::Avx2, 16, 8, 8, 4, 1),
            (Width::Avx2, 16, 12, 16, 8, 2),
            (Width::Avx2, 16, 16, 8, 4, 1),
        ];
        let mut ran = 0;
        for (width, c, o, h, wd, stride) in cases {
            if !width.runs_here() {
                eprintln!("skipping {width:?}: this CPU does not have it");
                continue;
            }
            let g = ConvGeom {
                n: 3,
                c,
                h,
                w: wd,
                o,
                k: 3,
                stride,
                pad: 1,
            };
            if super::whole8::shape(&g) {
                // 8×8 maps take F(4×4, 3×3) along the images on AVX-512 ([`super::whole8`]);
                // their F(2×2, 3×3) pairs run with `PRETEXT_NO_WINOGRAD4=1`, as `.ci/run`
                // runs these tests once more.
                eprintln!("skipping {g:?}: F(4×4, 3×3) takes it along the images");
                continue;
            }
            if stride == 1 && h == 16 && !super::f4_enabled() {
                // 16×16 maps pair only with F(4×4, 3×3) (with F(2×2, 3×3) they have 64 tiles).
                eprintln!("skipping {g:?}: F(4×4, 3×3) is off");
                continue;
            }
            assert!(super::pair_fits(width, &g), "{width:?} refuses {g:?}");
            // 16×16 maps are F(4×4, 3×3)'s, whose error is held to the largest value.
            let check = if super::Algo::of(&g) == super::Algo::F4 {
                close_to_scale
            } else {
                close
            };
            let w = values(o * c * 9, 1);
            let xs = values(3 * g.in_image(), 2);
            let dys = values(3 * g.out_image(), 3);
            let refs: Vec<[Vec<f64>; 3]> = xs
                .chunks_exact(g.in_image())
                .zip(dys.chunks_exact(g.out_image()))
                .map(|(x, dy)| reference(&g, &w, x, dy))
                .collect();
            let want: Vec<Vec<f64>> = refs.iter().map(|[y, _, _]| y.clone()).collect();
            let u = transform_weight(&g, &w);
            // The pair's own buffer: the engine's (`buffer_len`) asks `vector_cpu`, which
            // `PRETEXT_DIRECT_CONV=avx2` keeps from pairing 512-bit chunks that run here anyway.
            let used = super::buffer_len_for(&g, true);
            let mut buf = vec![f32::NAN; used + 64];
            // Two images written, then added into.
            let two = 2 * g.out_image();
            let mut y = vec![f32::NAN; two];
            super::forward_pair_with(
                width,
                &g,
                &u,
                &xs[..2 * g.in_image()],
                &mut y,
                false,
                &mut buf,
            )
            .unwrap_or_else(|e| panic!("{e}"));
            let pair_want: Vec<f64> = want[..2].concat();
            check(&y, &pair_want, &format!("{width:?} pair on {g:?}"));
            let before = values(two, 4);
            let mut y = before.clone();
            super::forward_pair_with(
                width,
                &g,
                &u,
                &xs[..2 * g.in_image()],
                &mut y,
                true,
                &mut buf,
            )
            .unwrap_or_else(|e| panic!("{e}"));
            let summed = plus(&pair_want, &before);
            check(&y, &summed, &format!("{width:?} y + pair on {g:?}"));
            assert!(
                buf[used..].iter().all(|v| v.is_nan()),
                "{width:?} pair on {g:?} wrote past its buffer"
            );
            // Three images: a pair, then one alone.
            let mut y = vec![f32::NAN; 3 * g.out_image()];
            super::forward_images(&g, &u, &xs, &mut y, false, &mut buf)
                .unwrap_or_else(|e| panic!("{e}"));
            check(&y, &want.concat(), &format!("three images of {g:?}"));
            ran += 1;
            if stride == 2 {
                // ∂L/∂x turned round, added into gradients already there: two images in one
                // chunk, then three (a pair and one alone).
                assert!(
                    super::strided_pair_fits(width, &g),
                    "{width:?} refuses ∂L/∂x of {g:?}"
                );
                let ut = transposed_transform(&g, &w);
                let used = strided_input_len(&g);
                let mut buf = vec![f32::NAN; used + 64];
                let before = values(3 * g.in_image(), 5);
                let summed = |k: usize| -> Vec<f64> {
                    let want: Vec<f64> = refs[..k].iter().flat_map(|r| r[2].clone()).collect();
                    plus(&want, &before)
                };
                let mut dx = before[..2 * g.in_image()].to_vec();
                super::strided_pair_with(
                    width,
                    &g,
                    &ut,
                    &dys[..2 * g.out_image()],
                    &mut dx,
                    &mut buf,
                )
                .unwrap_or_else(|e| panic!("{e}"));
                check(
                    &dx,
                    &summed(2),
                    &format!("{width:?} dx + ∂L/∂x pair on {g:?}"),
                );
                assert!(
                    buf[used..].iter().all(|v| v.is_nan()),
                    "{width:?} ∂L/∂x pair on {g:?} wrote past its buffer"
                );
                let mut dx = before.clone();
                super::strided_input_images(&g, &ut, &dys, &mut dx, &mut buf)
                    .unwrap_or_else(|e| panic!("{e}"));
                check(
                    &dx,
                    &summed(3),
                    &format!("dx + ∂L/∂x of three images of {g:?}"),
                );
                ran += 1;
            }
            // ∂L/∂w where O is a multiple of two vectors: two images' sums, then three.
            if o % (2 * width.lanes()) != 0 {
                continue;
            }
            let dw_sum = |k: usize| -> Vec<f64> {
                (0..o * c * 9)
                    .map(|i| refs[..k].iter().map(|r| r[1][i]).sum())
                    .collect()
            };
            let (col, product) = super::weight_buffer_len_for(&g, true);
            let mut work = crate::model::kernels::conv::Work {
                col: vec![f32::NAN; col + 64],
                product: vec![f32::NAN; product + 64],
            };
            let mut du = vec![0f32; super::transform_len(&g)];
            super::weight_pair_with(
                width,
                &g,
                &xs[..2 * g.in_image()],
                &dys[..2 * g.out_image()],
                &mut du,
                &mut work.col,
                &mut work.product,
            )
            .unwrap_or_else(|e| panic!("{e}"));
            let dw = weight_from_transform(&g, &du).unwrap_or_else(|e| panic!("{e}"));
            check(&dw, &dw_sum(2), &format!("{width:?} ∂L/∂w pair on {g:?}"));
            assert!(
                work.col[col..].iter().all(|v| v.is_nan())
                    && work.product[product..].iter().all(|v| v.is_nan()),
                "{width:?} ∂L/∂w pair on {g:?} wrote past its buffers"
            );
            let mut du = vec![0f32; super::transform_len(&g)];
            super::weight_images(&g, &xs, &dys, &mut du, &mut work)
                .unwrap_or_else(|e| panic!("{e}"));
            let dw = weight_from_transform(&g, &du).unwrap_or_else(|e| panic!("{e}"));
            check(&dw, &dw_sum(3), &format!("∂L/∂w of three images of {g:?}"));
            ran += 1;
        }
        // Refused: F(2×2, 3×3) rows of a whole vector (12×16), F(4×4, 3×3) maps of two vectors
        // of tiles (16×32), a map of two vectors of tiles (8×16), O not a multiple of the
        // block.
        for (c, o, h, wd) in [
            (32, 64, 12, 16),
            (32, 64, 16, 32),
            (32, 64, 16, 8),
            (32, 12, 8, 8),
        ] {
            let g = ConvGeom {
                n: 2,
                c,
                h,
                w: wd,
                o,
                k: 3,
                stride: 1,
                pad: 1,
            };
            assert!(
                !super::pair_fits(Width::Avx512, &g),
                "pairs taken for {g:?}"
            );
        }
        if Width::Avx512.runs_here() {
            assert!(ran >= 11, "only {ran} pair cases ran");
        }
    }
}
