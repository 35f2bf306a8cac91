use crate::WithDType;
use cudarc;
use cudarc::cudnn::safe::{ConvForward, Cudnn};
use cudarc::driver::{CudaSlice, CudaView, DeviceRepr, ValidAsZeroBits};
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

// The cudnn handles are stored per thread here rather than on the CudaDevice as they are neither
// send nor sync.
thread_local! {
    static CUDNN: RefCell<HashMap<crate::cuda_backend::DeviceId, Arc<Cudnn>>> = HashMap::new().into();
}

impl From<cudarc::cudnn::CudnnError> for crate::Error {
    fn from(err: cudarc::cudnn::CudnnError) -> Self {
        crate::Error::wrap(err)
    }
}

impl From<cudarc::driver::DriverError> for crate::Error {
    fn from(err: cudarc::driver::DriverError) -> Self {
        crate::Error::wrap(err)
    }
}

pub(crate) fn launch_conv2d<
    T: DeviceRepr + WithDType + ValidAsZeroBits + cudarc::cudnn::CudnnDataType,
    Y: cudarc::cudnn::CudnnDataType,
>(
    src: &CudaView<T>,
    src_l: &crate::Layout,
    filter: &CudaView<T>,
    dst: &mut CudaSlice<T>,
    params: &crate::conv::ParamsConv2D,
    dev: &crate::cuda_backend::CudaDevice,
) -> crate::Result<()> {
    use crate::conv::CudnnFwdAlgo as CandleAlgo;
    use cudarc::cudnn::sys::cudnnConvolutionFwdAlgo_t as A;

    let device_id = dev.id();
    let cudnn = CUDNN.with(|cudnn| {
        if let Some(cudnn) = cudnn.borrow().get(&device_id) {
            return Ok(cudnn.clone());
        }
        let c = Cudnn::new(dev.cuda_stream());
        if let Ok(c) = &c {
            cudnn.borrow_mut().insert(device_id, c.clone());
        }
        c
    })?;
    let mut conv = cudnn.create_conv2d::<Y>(
        /* pad */ [params.padding as i32, params.padding as i32],
        /* stride */ [params.stride as i32, params.stride as i32],
        /* dilation */ [params.dilation as i32, params.dilation as i32],
        cudarc::cudnn::sys::cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION,
    )?;
    conv.set_math_type(math_type(T::DTYPE))?;
    let x_shape = [
        params.b_size as i32,
        params.c_in as i32,
        params.i_h as i32,
        params.i_w as i32,
    ];
    // Note that `src` already starts at the proper offset.
    let x = if src_l.is_contiguous() {
        cudnn.create_4d_tensor::<T>(
            cudarc::cudnn::sys::cudnnTensorFormat_t::CUDNN_TENSOR_NCHW,
            x_shape,
        )?
    } else {
        let s = src_l.stride();
        cudnn.create_4d_tensor_ex::<T>(
            x_shape,
            [s[0] as i32, s[1] as i32, s[2] as i32, s[3] as i32],
        )?
    };
    let w = cudnn.create_4d_filter::<T>(
        cudarc::cudnn::sys::cudnnTensorFormat_t::CUDNN_TENSOR_NCHW,
        [
            params.c_out as i32,
            params.c_in as i32,
            params.k_h as i32,
            params.k_w as i32,
        ],
    )?;
    let (w_out, h_out) = (params.out_w() as i32, params.out_h() as i32);
    let y = cudnn.create_4d_tensor::<T>(
        cudarc::cudnn::sys::cudnnTensorFormat_t::CUDNN_TENSOR_NCHW,
        [params.b_size as i32, params.c_out as i32, h_out, w_out],
    )?;
    // pretext patch: the algorithm found by timing (item 6), where no algorithm is asked for.
    let found = if params.cudnn_fwd_algo.is_none() && conv_benchmark() {
        let s = src_l.stride();
        let stream = dev.cuda_stream();
        let key = find::Key {
            op: find::Op::Forward,
            gpu: stream.context().ordinal(),
            data_type: T::DATA_TYPE,
            compute: Y::DATA_TYPE,
            math: math_type(T::DTYPE),
            x: x_shape,
            x_strides: (!src_l.is_contiguous())
                .then(|| [s[0] as i32, s[1] as i32, s[2] as i32, s[3] as i32]),
            x_misalign: (src_l.start_offset() * std::mem::size_of::<T>()) % 16,
            w: [
                params.c_out as i32,
                params.c_in as i32,
                params.k_h as i32,
                params.k_w as i32,
            ],
            y: [params.b_size as i32, params.c_out as i32, h_out, w_out],
            pad: params.padding as i32,
            stride: params.stride as i32,
            dilation: params.dilation as i32,
        };
        find::fastest(key, &stream).and_then(|f| Some((find::fwd_algo(f.algo)?, f.math)))
    } else {
        None
    };
    if let Some((_, math)) = found {
        conv.set_math_type(math)?;
    }
    let conv2d = ConvForward {
        conv: &conv,
        x: &x,
        w: &w,
        y: &y,
    };
    let alg = match params.cudnn_fwd_algo {
        None => match found {
            Some((a, _)) => a,
            None => conv2d.pick_algorithm()?,
        },
        Some(CandleAlgo::ImplicitGemm) => A::CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM,
        Some(CandleAlgo::ImplicitPrecompGemm) => {
            A::CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM
        }
        Some(CandleAlgo::Gemm) => A::CUDNN_CONVOLUTION_FWD_ALGO_GEMM,
        Some(CandleAlgo::Direct) => A::CUDNN_CONVOLUTION_FWD_ALGO_DIRECT,
        Some(CandleAlgo::Fft) => A::CUDNN_CONVOLUTION_FWD_ALGO_FFT,
        Some(CandleAlgo::FftTiling) => A::CUDNN_CONVOLUTION_FWD_ALGO_FFT_TILING,
        Some(CandleAlgo::Winograd) => A::CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD,
        Some(CandleAlgo::WinogradNonFused) => A::CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD_NONFUSED,
        Some(CandleAlgo::Count) => A::CUDNN_CONVOLUTION_FWD_ALGO_COUNT,
    };
    // pretext patch: cuDNN writes its workspace before reading it, so it is not zeroed first
    // (a searched algorithm's can be hundreds of MB).
    let mut workspace = workspace(dev, conv2d.get_workspace_size(alg)?)?;
    unsafe {
        conv2d.launch::<CudaSlice<u8>, _, _, _>(
            alg,
            workspace.as_mut(),
            (T::one(), T::zero()),
            src,
            filter,
            dst,
        )?;
    }
    Ok(())
}

pub(crate) fn launch_conv1d<
    T: DeviceRepr + WithDType + ValidAsZeroBits + cudarc::cudnn::CudnnDataType,
    Y: cudarc::cudnn::CudnnDataType,
>(
    src: &CudaView<T>,
    src_l: &crate::Layout,
    filter: &CudaView<T>,
    dst: &mut CudaSlice<T>,
    params: &crate::conv::ParamsConv1D,
    dev: &crate::cuda_backend::CudaDevice,
) -> crate::Result<()> {
    use crate::conv::CudnnFwdAlgo as CandleAlgo;
    use cudarc::cudnn::sys::cudnnConvolutionFwdAlgo_t as A;

    let device_id = dev.id();
    let cudnn = CUDNN.with(|cudnn| {
        if let Some(cudnn) = cudnn.borrow().get(&device_id) {
            return Ok(cudnn.clone());
        }
        let c = Cudnn::new(dev.cuda_stream());
        if let Ok(c) = &c {
            cudnn.borrow_mut().insert(device_id, c.clone());
        }
        c
    })?;
    let conv = cudnn.create_conv2d::<Y>(
        /* pad */ [params.padding as i32, 0],
        /* stride */ [params.stride as i32, 1],
        /* dilation */ [params.dilation as i32, 1],
        cudarc::cudnn::sys::cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION,
    )?;
    // https://docs.nvidia.com/deeplearning/cudnn/backend/latest/api/cudnn-ops-library.html#cudnnsettensornddescriptor
    // > Tensors are restricted to having at least 4 dimensions, and at most CUDNN_DIM_MAX
    // > dimensions (defined in cudnn.h). When working with lower dimensional data, it is
    // > recommended that the user create a 4D tensor, and set the size along unused dimensions
    // > to 1.
    let x_shape = [
        params.b_size as i32,
        params.c_in as i32,
        params.l_in as i32,
        1,
    ];
    // Note that `src` already starts at the proper offset.
    let x = if src_l.is_contiguous() {
        cudnn.create_4d_tensor::<T>(
            cudarc::cudnn::sys::cudnnTensorFormat_t::CUDNN_TENSOR_NCHW,
            x_shape,
        )?
    } else {
        let s = src_l.stride();
        cudnn.create_4d_tensor_ex::<T>(x_shape, [s[0] as i32, s[1] as i32, s[2] as i32, 1i32])?
    };
    let w = cudnn.create_4d_filter::<T>(
        cudarc::cudnn::sys::cudnnTensorFormat_t::CUDNN_TENSOR_NCHW,
        [
            params.c_out as i32,
            params.c_in as i32,
            params.k_size as i32,
            1,
        ],
    )?;
    let l_out = params.l_out() as i32;
    let y = cudnn.create_4d_tensor::<T>(
        cudarc::cudnn::sys::cudnnTensorFormat_t::CUDNN_TENSOR_NCHW,
        [params.b_size as i32, params.c_out as i32, l_out, 1],
    )?;
    let conv1d = ConvForward {
        conv: &conv,
        x: &x,
        w: &w,
        y: &y,
    };
    let alg = match params.cudnn_fwd_algo {
        None => conv1d.pick_algorithm()?,
        Some(CandleAlgo::ImplicitGemm) => A::CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM,
        Some(CandleAlgo::ImplicitPrecompGemm) => {
            A::CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM
        }
        Some(CandleAlgo::Gemm) => A::CUDNN_CONVOLUTION_FWD_ALGO_GEMM,
        Some(CandleAlgo::Direct) => A::CUDNN_CONVOLUTION_FWD_ALGO_DIRECT,
        Some(CandleAlgo::Fft) => A::CUDNN_CONVOLUTION_FWD_ALGO_FFT,
        Some(CandleAlgo::FftTiling) => A::CUDNN_CONVOLUTION_FWD_ALGO_FFT_TILING,
        Some(CandleAlgo::Winograd) => A::CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD,
        Some(CandleAlgo::WinogradNonFused) => A::CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD_NONFUSED,
        Some(CandleAlgo::Count) => A::CUDNN_CONVOLUTION_FWD_ALGO_COUNT,
    };
    let workspace_size = conv1d.get_workspace_size(alg)?;
    let mut workspace = dev.cuda_stream().alloc_zeros::<u8>(workspace_size)?;
    unsafe {
        conv1d.launch::<CudaSlice<u8>, _, _, _>(
            alg,
            Some(&mut workspace),
            (T::one(), T::zero()),
            src,
            filter,
            dst,
        )?;
    }
    Ok(())
}

/// pretext patch: this thread's cuDNN handle for `dev` (the same one `launch_conv2d` uses).
fn handle(dev: &crate::cuda_backend::CudaDevice) -> crate::Result<Arc<Cudnn>> {
    let device_id = dev.id();
    Ok(CUDNN.with(|cudnn| {
        if let Some(cudnn) = cudnn.borrow().get(&device_id) {
            return Ok(cudnn.clone());
        }
        let c = Cudnn::new(dev.cuda_stream());
        if let Ok(c) = &c {
            cudnn.borrow_mut().insert(device_id, c.clone());
        }
        c
    })?)
}

/// pretext patch: the descriptors of `y = conv2d(x, w)` for f32 NCHW tensors, all contiguous:
/// the convolution, x (N, C, H, W), w (O, C, Kh, Kw) and y (N, O, Ho, Wo).
#[allow(clippy::type_complexity)]
fn conv2d_descriptors(
    cudnn: &Arc<Cudnn>,
    params: &crate::conv::ParamsConv2D,
) -> crate::Result<(
    cudarc::cudnn::safe::ConvDescriptor<f32>,
    cudarc::cudnn::safe::TensorDescriptor<f32>,
    cudarc::cudnn::safe::FilterDescriptor<f32>,
    cudarc::cudnn::safe::TensorDescriptor<f32>,
)> {
    use cudarc::cudnn::sys::cudnnTensorFormat_t::CUDNN_TENSOR_NCHW;
    let p = params;
    let mut conv = cudnn.create_conv2d::<f32>(
        [p.padding as i32, p.padding as i32],
        [p.stride as i32, p.stride as i32],
        [p.dilation as i32, p.dilation as i32],
        cudarc::cudnn::sys::cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION,
    )?;
    conv.set_math_type(math_type(crate::DType::F32))?;
    let x = cudnn.create_4d_tensor::<f32>(
        CUDNN_TENSOR_NCHW,
        [p.b_size as i32, p.c_in as i32, p.i_h as i32, p.i_w as i32],
    )?;
    let w = cudnn.create_4d_filter::<f32>(
        CUDNN_TENSOR_NCHW,
        [p.c_out as i32, p.c_in as i32, p.k_h as i32, p.k_w as i32],
    )?;
    let y = cudnn.create_4d_tensor::<f32>(
        CUDNN_TENSOR_NCHW,
        [p.b_size as i32, p.c_out as i32, p.out_h() as i32, p.out_w() as i32],
    )?;
    Ok((conv, x, w, y))
}

/// pretext patch: the algorithm found by timing (item 6) for one of the f32 gradients of
/// `conv2d` ([`conv2d_descriptors`]), or `None` (benchmark mode off, or the search failed).
/// Sets `conv`'s math type to the one the algorithm was timed with.
fn found_grad(
    op: find::Op,
    conv: &mut cudarc::cudnn::safe::ConvDescriptor<f32>,
    p: &crate::conv::ParamsConv2D,
    dev: &crate::cuda_backend::CudaDevice,
) -> crate::Result<Option<u32>> {
    if !conv_benchmark() {
        return Ok(None);
    }
    use cudarc::cudnn::CudnnDataType;
    let stream = dev.cuda_stream();
    let key = find::Key {
        op,
        gpu: stream.context().ordinal(),
        data_type: f32::DATA_TYPE,
        compute: f32::DATA_TYPE,
        math: math_type(crate::DType::F32),
        x: [p.b_size as i32, p.c_in as i32, p.i_h as i32, p.i_w as i32],
        x_strides: None,
        // The gradients' operands are whole contiguous tensors of their own.
        x_misalign: 0,
        w: [p.c_out as i32, p.c_in as i32, p.k_h as i32, p.k_w as i32],
        y: [p.b_size as i32, p.c_out as i32, p.out_h() as i32, p.out_w() as i32],
        pad: p.padding as i32,
        stride: p.stride as i32,
        dilation: p.dilation as i32,
    };
    // The search returns only algorithms of `op` that the bindings know.
    let Some(f) = find::fastest(key, &stream) else {
        return Ok(None);
    };
    conv.set_math_type(f.math)?;
    Ok(Some(f.algo))
}

/// A workspace of `bytes` (none for 0).
fn workspace(
    dev: &crate::cuda_backend::CudaDevice,
    bytes: usize,
) -> crate::Result<Option<CudaSlice<u8>>> {
    if bytes == 0 {
        return Ok(None);
    }
    // cuDNN writes its workspace before reading it: no need to zero it.
    Ok(Some(unsafe { dev.alloc::<u8>(bytes)? }))
}

/// pretext patch: ∂L/∂w of `y = conv2d(x, w)` with cuDNN's backward-filter convolution
/// (`cudnnConvolutionBackwardFilter`, the algorithm cuDNN's heuristics pick), as PyTorch computes
/// it. `x` (N, C, H, W) and `dy` (N, O, Ho, Wo) are contiguous f32; `dw` holds O·C·Kh·Kw values.
/// candle's own path is a conv2d of the transposed tensors whose "kernel" is the whole Ho × Wo
/// gradient map: through cuDNN's forward convolution that ran 5–9 times slower than the rest
/// of the step together on an H200.
pub(crate) fn launch_conv2d_backward_filter(
    x: &CudaView<f32>,
    dy: &CudaView<f32>,
    dw: &mut CudaSlice<f32>,
    params: &crate::conv::ParamsConv2D,
    dev: &crate::cuda_backend::CudaDevice,
) -> crate::Result<()> {
    let cudnn = handle(dev)?;
    let (mut conv, x_d, w_d, y_d) = conv2d_descriptors(&cudnn, params)?;
    let found = found_grad(find::Op::BackwardFilter, &mut conv, params, dev)?
        .and_then(find::bwd_filter_algo);
    let op = cudarc::cudnn::safe::ConvBackwardFilter {
        conv: &conv,
        x: &x_d,
        dw: &w_d,
        dy: &y_d,
    };
    let alg = match found {
        Some(a) => a,
        None => op.pick_algorithm()?,
    };
    let mut ws = workspace(dev, op.get_workspace_size(alg)?)?;
    unsafe {
        op.launch::<CudaSlice<u8>, _, _, _>(alg, ws.as_mut(), (1f32, 0f32), x, dw, dy)?;
    }
    Ok(())
}

/// pretext patch: ∂L/∂x of `y = conv2d(x, w)` with cuDNN's backward-data convolution
/// (`cudnnConvolutionBackwardData`). `w` (O, C, Kh, Kw) and `dy` (N, O, Ho, Wo) are contiguous
/// f32; `dx` holds N·C·H·W values.
pub(crate) fn launch_conv2d_backward_data(
    w: &CudaView<f32>,
    dy: &CudaView<f32>,
    dx: &mut CudaSlice<f32>,
    params: &crate::conv::ParamsConv2D,
    dev: &crate::cuda_backend::CudaDevice,
) -> crate::Result<()> {
    let cudnn = handle(dev)?;
    let (mut conv, x_d, w_d, y_d) = conv2d_descriptors(&cudnn, params)?;
    let found = found_grad(find::Op::BackwardData, &mut conv, params, dev)?
        .and_then(find::bwd_data_algo);
    let op = cudarc::cudnn::safe::ConvBackwardData {
        conv: &conv,
        dx: &x_d,
        w: &w_d,
        dy: &y_d,
    };
    let alg = match found {
        Some(a) => a,
        None => op.pick_algorithm()?,
    };
    let mut ws = workspace(dev, op.get_workspace_size(alg)?)?;
    unsafe {
        op.launch::<CudaSlice<u8>, _, _, _>(alg, ws.as_mut(), (1f32, 0f32), dx, w, dy)?;
    }
    Ok(())
}

/// pretext patch: whether cuDNN's f32 convolutions may use TF32 tensor cores (10-bit mantissa
/// products, f32 sums), as PyTorch's `torch.backends.cudnn.allow_tf32` (on by default there
/// too). On by default; [`set_conv_tf32`] turns it off for exact f32 (`CUDNN_FMA_MATH`), e.g. to
/// compare a GPU step with the CPU's. Applies to the 2D convolutions and their cuDNN gradients.
static CONV_TF32: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// pretext patch: see [`CONV_TF32`].
pub fn conv_tf32() -> bool {
    CONV_TF32.load(std::sync::atomic::Ordering::Relaxed)
}

/// pretext patch: see [`CONV_TF32`]; applies to convolutions launched afterwards.
pub fn set_conv_tf32(allow: bool) {
    CONV_TF32.store(allow, std::sync::atomic::Ordering::Relaxed)
}

/// The math type [`CONV_TF32`] asks for convolutions of `dtype`: it applies to f32 alone, and
/// f16/bf16 keep cuDNN's default (their tensor cores).
fn math_type(dtype: crate::DType) -> cudarc::cudnn::sys::cudnnMathType_t {
    if dtype != crate::DType::F32 || conv_tf32() {
        cudarc::cudnn::sys::cudnnMathType_t::CUDNN_DEFAULT_MATH
    } else {
        cudarc::cudnn::sys::cudnnMathType_t::CUDNN_FMA_MATH
    }
}

/// pretext patch: whether a convolution's algorithm is chosen by timing cuDNN's candidates
/// once per shape (`cudnnFind…Algorithm`), as PyTorch's `torch.backends.cudnn.benchmark`,
/// instead of taken from cuDNN's heuristics (`cudnnGet…Algorithm_v7`). Off by default;
/// [`set_conv_benchmark`] turns it on. Applies to the forward 2D convolution (where no
/// algorithm is asked for) and to item 4's two gradients.
static CONV_BENCHMARK: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// pretext patch: see [`CONV_BENCHMARK`].
pub fn conv_benchmark() -> bool {
    CONV_BENCHMARK.load(std::sync::atomic::Ordering::Relaxed)
}

/// pretext patch: see [`CONV_BENCHMARK`]; applies to convolutions launched afterwards.
pub fn set_conv_benchmark(on: bool) {
    CONV_BENCHMARK.store(on, std::sync::atomic::Ordering::Relaxed)
}

/// pretext patch: how many algorithm searches this thread ran ([`CONV_BENCHMARK`]); a shape
/// seen again takes the algorithm found before.
pub fn conv_benchmark_searches() -> usize {
    find::SEARCHES.with(|s| s.get())
}

/// pretext patch: cuDNN's algorithm search ([`CONV_BENCHMARK`]). cudarc keeps the raw
/// descriptors of its safe types to itself, so the search describes the convolution again with
/// its own, on its own handle on the device's stream. `cudnnFind…Algorithm` (not `…Ex`)
/// allocates its own buffers, so the search never writes the tensors being computed.
mod find {
    use cudarc::cudnn::result;
    use cudarc::cudnn::sys;
    use cudarc::driver::CudaStream;
    use std::cell::{Cell, RefCell};
    use std::collections::HashMap;
    use std::sync::Arc;

    /// Which of the three convolutions.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub(super) enum Op {
        Forward,
        BackwardData,
        BackwardFilter,
    }

    /// Everything the algorithm's speed and validity depend on.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub(super) struct Key {
        pub op: Op,
        /// The GPU's ordinal: the app opens a new `CudaDevice` (a new `DeviceId`) for every
        /// run on the same GPU, whose shapes need no new search.
        pub gpu: usize,
        /// The tensors' data type.
        pub data_type: sys::cudnnDataType_t,
        /// The type the convolution computes in.
        pub compute: sys::cudnnDataType_t,
        /// The math type asked for ([`super::math_type`]).
        pub math: sys::cudnnMathType_t,
        /// x: (N, C, H, W).
        pub x: [i32; 4],
        /// x's strides where it is not contiguous.
        pub x_strides: Option<[i32; 4]>,
        /// x's start in bytes modulo 16 (an algorithm timed on aligned buffers may need it).
        pub x_misalign: usize,
        /// w: (O, C, Kh, Kw).
        pub w: [i32; 4],
        /// y: (N, O, Ho, Wo).
        pub y: [i32; 4],
        pub pad: i32,
        pub stride: i32,
        pub dilation: i32,
    }

    /// An algorithm of the key's op that the bindings know (its `cudnnConvolution…Algo_t` number)
    /// and the math type it was timed with.
    #[derive(Clone, Copy, Debug)]
    pub(super) struct Found {
        pub algo: u32,
        pub math: sys::cudnnMathType_t,
    }

    thread_local! {
        /// This thread's handles for the search, per GPU (cuDNN handles are not `Send`).
        static HANDLES: RefCell<HashMap<usize, Handle>> = RefCell::new(HashMap::new());
        /// What each search found (`None`: no candidate ran; the heuristics choose).
        static FOUND: RefCell<HashMap<Key, Option<Found>>> = RefCell::new(HashMap::new());
        pub(super) static SEARCHES: Cell<usize> = const { Cell::new(0) };
    }

    /// A cuDNN handle of the search's own, and the stream it was made on (kept alive, with
    /// its context, for as long as the handle).
    struct Handle {
        raw: sys::cudnnHandle_t,
        _stream: Arc<CudaStream>,
    }

    impl Drop for Handle {
        fn drop(&mut self) {
            // Nothing to do about a failure while the thread ends.
            let _ = unsafe { result::destroy_handle(self.raw) };
        }
    }

    /// The raw descriptors of one convolution, destroyed on drop.
    struct Descriptors {
        conv: sys::cudnnConvolutionDescriptor_t,
        x: sys::cudnnTensorDescriptor_t,
        w: sys::cudnnFilterDescriptor_t,
        y: sys::cudnnTensorDescriptor_t,
    }

    impl Drop for Descriptors {
        fn drop(&mut self) {
            // Null where creation stopped early.
            unsafe {
                if !self.conv.is_null() {
                    let _ = result::destroy_convolution_descriptor(self.conv);
                }
                if !self.x.is_null() {
                    let _ = result::destroy_tensor_descriptor(self.x);
                }
                if !self.w.is_null() {
                    let _ = result::destroy_filter_descriptor(self.w);
                }
                if !self.y.is_null() {
                    let _ = result::destroy_tensor_descriptor(self.y);
                }
            }
        }
    }

    impl Descriptors {
        fn new(key: &Key) -> Result<Self, cudarc::cudnn::CudnnError> {
            use sys::cudnnTensorFormat_t::CUDNN_TENSOR_NCHW;
            let mut d = Descriptors {
                conv: std::ptr::null_mut(),
                x: std::ptr::null_mut(),
                w: std::ptr::null_mut(),
                y: std::ptr::null_mut(),
            };
            let dt = key.data_type;
            d.conv = result::create_convolution_descriptor()?;
            d.x = result::create_tensor_descriptor()?;
            d.w = result::create_filter_descriptor()?;
            d.y = result::create_tensor_descriptor()?;
            unsafe {
                result::set_convolution2d_descriptor(
                    d.conv,
                    key.pad,
                    key.pad,
                    key.stride,
                    key.stride,
                    key.dilation,
                    key.dilation,
                    sys::cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION,
                    key.compute,
                )?;
                result::set_convolution_math_type(d.conv, key.math)?;
                match key.x_strides {
                    None => result::set_tensor4d_descriptor(d.x, CUDNN_TENSOR_NCHW, dt, key.x)?,
                    Some(s) => result::set_tensor4d_descriptor_ex(d.x, dt, key.x, s)?,
                }
                result::set_filter4d_descriptor(d.w, dt, CUDNN_TENSOR_NCHW, key.w)?;
                result::set_tensor4d_descriptor(d.y, CUDNN_TENSOR_NCHW, dt, key.y)?;
            }
            Ok(d)
        }
    }

    /// `cudnnConvolution{Fwd,BwdData,BwdFilter}AlgoPerf_t` with its enums read as plain
    /// numbers: the three have this layout, and a cuDNN other than the one cudarc's bindings
    /// were made from may write a status or algorithm that is no value of their Rust enums
    /// (reading it as one would be undefined behaviour).
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Perf {
        algo: u32,
        status: u32,
        time: f32,
        memory: usize,
        determinism: u32,
        math: u32,
        reserved: [i32; 3],
    }

    // The layouts match the bindings' (checked when this compiles).
    const _: () = {
        assert!(
            std::mem::size_of::<Perf>() == std::mem::size_of::<sys::cudnnConvolutionFwdAlgoPerf_t>()
        );
        assert!(
            std::mem::size_of::<Perf>()
                == std::mem::size_of::<sys::cudnnConvolutionBwdDataAlgoPerf_t>()
        );
        assert!(
            std::mem::size_of::<Perf>()
                == std::mem::size_of::<sys::cudnnConvolutionBwdFilterAlgoPerf_t>()
        );
    };

    /// The math type numbered `n`.
    fn math_type(n: u32) -> Option<sys::cudnnMathType_t> {
        use sys::cudnnMathType_t as M;
        [
            M::CUDNN_DEFAULT_MATH,
            M::CUDNN_TENSOR_OP_MATH,
            M::CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION,
            M::CUDNN_FMA_MATH,
        ]
        .into_iter()
        .find(|m| *m as u32 == n)
    }

    /// Whether a candidate timed with `math` may run where `asked` was asked for: with TF32
    /// switched off (FMA), only an FMA candidate (for f32, the default math type allows TF32
    /// too).
    fn allowed(asked: sys::cudnnMathType_t, math: sys::cudnnMathType_t) -> bool {
        asked != sys::cudnnMathType_t::CUDNN_FMA_MATH || math == sys::cudnnMathType_t::CUDNN_FMA_MATH
    }

    /// How many results a search may return (cuDNN may time an algorithm with more than one
    /// math type, so it can be more than the algorithms): cuDNN's answer, else `fallback`.
    unsafe fn max_count(
        handle: sys::cudnnHandle_t,
        get: unsafe fn(sys::cudnnHandle_t, *mut std::ffi::c_int) -> sys::cudnnStatus_t,
        fallback: i32,
    ) -> i32 {
        let mut n = 0;
        match unsafe { get(handle, &mut n) }.result() {
            Ok(()) if n > 0 => n.max(fallback),
            _ => fallback,
        }
    }

    /// The fastest algorithm for `key`, searched on the first call for each key and kept for
    /// the thread's lifetime. `None` when the search failed or ran no candidate: the caller
    /// falls back to the heuristics, as without the search (a failure is not tried again).
    /// `stream` is the device's stream, for the search's own handle.
    pub(super) fn fastest(key: Key, stream: &Arc<CudaStream>) -> Option<Found> {
        if let Ok(Some(f)) = FOUND.try_with(|m| m.borrow().get(&key).copied()) {
            return f;
        }
        let found = search(key, stream).ok().flatten();
        // A thread being torn down keeps nothing.
        let _ = FOUND.try_with(|m| m.borrow_mut().insert(key, found));
        found
    }

    /// This thread's search handle for `stream`'s GPU, set to `stream`.
    fn handle(
        gpu: usize,
        stream: &Arc<CudaStream>,
    ) -> Result<sys::cudnnHandle_t, cudarc::cudnn::CudnnError> {
        let internal = || cudarc::cudnn::CudnnError(sys::cudnnStatus_t::CUDNN_STATUS_INTERNAL_ERROR);
        HANDLES
            .try_with(|h| -> Result<_, cudarc::cudnn::CudnnError> {
                let mut h = h.borrow_mut();
                // cuDNN creates its handle, and the search allocates, in the current
                // context: the stream's.
                stream.context().bind_to_thread().map_err(|_| internal())?;
                let raw = match h.get(&gpu) {
                    Some(handle) => handle.raw,
                    None => {
                        let handle = Handle {
                            raw: result::create_handle()?,
                            _stream: stream.clone(),
                        };
                        let raw = handle.raw;
                        h.insert(gpu, handle);
                        raw
                    }
                };
                // The run's stream: a new device on the same GPU brings a new one.
                unsafe { result::set_stream(raw, stream.cu_stream() as *mut _)? };
                Ok(raw)
            })
            .map_err(|_| internal())?
    }

    fn search(
        key: Key,
        stream: &Arc<CudaStream>,
    ) -> Result<Option<Found>, cudarc::cudnn::CudnnError> {
        let handle = handle(key.gpu, stream)?;
        let d = Descriptors::new(&key)?;
        // The candidates in cuDNN's order, fastest first.
        let perf: Vec<Perf> = unsafe {
            let n = match key.op {
                Op::Forward => max_count(
                    handle,
                    sys::cudnnGetConvolutionForwardAlgorithmMaxCount,
                    sys::cudnnConvolutionFwdAlgo_t::CUDNN_CONVOLUTION_FWD_ALGO_COUNT as i32,
                ),
                Op::BackwardData => max_count(
                    handle,
                    sys::cudnnGetConvolutionBackwardDataAlgorithmMaxCount,
                    sys::cudnnConvolutionBwdDataAlgo_t::CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT
                        as i32,
                ),
                Op::BackwardFilter => max_count(
                    handle,
                    sys::cudnnGetConvolutionBackwardFilterAlgorithmMaxCount,
                    sys::cudnnConvolutionBwdFilterAlgo_t::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT
                        as i32,
                ),
            };
            let mut perf: Vec<Perf> = Vec::with_capacity(n as usize);
            let mut got = 0;
            match key.op {
                Op::Forward => sys::cudnnFindConvolutionForwardAlgorithm(
                    handle,
                    d.x,
                    d.w,
                    d.conv,
                    d.y,
                    n,
                    &mut got,
                    perf.as_mut_ptr().cast(),
                ),
                Op::BackwardData => sys::cudnnFindConvolutionBackwardDataAlgorithm(
                    handle,
                    d.w,
                    d.y,
                    d.conv,
                    d.x,
                    n,
                    &mut got,
                    perf.as_mut_ptr().cast(),
                ),
                Op::BackwardFilter => sys::cudnnFindConvolutionBackwardFilterAlgorithm(
                    handle,
                    d.x,
                    d.y,
                    d.conv,
                    d.w,
                    n,
                    &mut got,
                    perf.as_mut_ptr().cast(),
                ),
            }
            .result()?;
            // cuDNN wrote `got` entries (plain numbers: any bit pattern is a value).
            perf.set_len(got.clamp(0, n) as usize);
            perf
        };
        let _ = SEARCHES.try_with(|s| s.set(s.get() + 1));
        // A candidate whose workspace would take more than half the free memory (of the
        // context [`handle`] bound) is passed over: running out
        // of memory at launch is an error, where a slower algorithm is not. Unknown: no limit.
        let budget = cudarc::driver::result::mem_get_info().map_or(usize::MAX, |(free, _)| free / 2);
        let valid = |algo: u32| match key.op {
            Op::Forward => fwd_algo(algo).is_some(),
            Op::BackwardData => bwd_data_algo(algo).is_some(),
            Op::BackwardFilter => bwd_filter_algo(algo).is_some(),
        };
        Ok(perf.iter().find_map(|p| {
            let math = math_type(p.math)?;
            (p.status == sys::cudnnStatus_t::CUDNN_STATUS_SUCCESS as u32
                && valid(p.algo)
                && p.memory <= budget
                && allowed(key.math, math))
            .then_some(Found { algo: p.algo, math })
        }))
    }

    /// The forward algorithm numbered `n` (one cuDNN returned).
    pub(super) fn fwd_algo(n: u32) -> Option<sys::cudnnConvolutionFwdAlgo_t> {
        use sys::cudnnConvolutionFwdAlgo_t as A;
        [
            A::CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM,
            A::CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM,
            A::CUDNN_CONVOLUTION_FWD_ALGO_GEMM,
            A::CUDNN_CONVOLUTION_FWD_ALGO_DIRECT,
            A::CUDNN_CONVOLUTION_FWD_ALGO_FFT,
            A::CUDNN_CONVOLUTION_FWD_ALGO_FFT_TILING,
            A::CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD,
            A::CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD_NONFUSED,
        ]
        .into_iter()
        .find(|a| *a as u32 == n)
    }

    /// The backward-data algorithm numbered `n`.
    pub(super) fn bwd_data_algo(n: u32) -> Option<sys::cudnnConvolutionBwdDataAlgo_t> {
        use sys::cudnnConvolutionBwdDataAlgo_t as A;
        [
            A::CUDNN_CONVOLUTION_BWD_DATA_ALGO_0,
            A::CUDNN_CONVOLUTION_BWD_DATA_ALGO_1,
            A::CUDNN_CONVOLUTION_BWD_DATA_ALGO_FFT,
            A::CUDNN_CONVOLUTION_BWD_DATA_ALGO_FFT_TILING,
            A::CUDNN_CONVOLUTION_BWD_DATA_ALGO_WINOGRAD,
            A::CUDNN_CONVOLUTION_BWD_DATA_ALGO_WINOGRAD_NONFUSED,
        ]
        .into_iter()
        .find(|a| *a as u32 == n)
    }

    /// The backward-filter algorithm numbered `n`.
    pub(super) fn bwd_filter_algo(n: u32) -> Option<sys::cudnnConvolutionBwdFilterAlgo_t> {
        use sys::cudnnConvolutionBwdFilterAlgo_t as A;
        [
            A::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_0,
            A::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_1,
            A::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_FFT,
            A::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_3,
            A::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_WINOGRAD,
            A::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_WINOGRAD_NONFUSED,
            A::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_FFT_TILING,
        ]
        .into_iter()
        .find(|a| *a as u32 == n)
    }
}
