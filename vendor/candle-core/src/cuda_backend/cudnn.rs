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
    let conv2d = ConvForward {
        conv: &conv,
        x: &x,
        w: &w,
        y: &y,
    };
    let alg = match params.cudnn_fwd_algo {
        None => conv2d.pick_algorithm()?,
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
    let workspace_size = conv2d.get_workspace_size(alg)?;
    let mut workspace = dev.cuda_stream().alloc_zeros::<u8>(workspace_size)?;
    unsafe {
        conv2d.launch::<CudaSlice<u8>, _, _, _>(
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
    let (conv, x_d, w_d, y_d) = conv2d_descriptors(&cudnn, params)?;
    let op = cudarc::cudnn::safe::ConvBackwardFilter {
        conv: &conv,
        x: &x_d,
        dw: &w_d,
        dy: &y_d,
    };
    let alg = op.pick_algorithm()?;
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
    let (conv, x_d, w_d, y_d) = conv2d_descriptors(&cudnn, params)?;
    let op = cudarc::cudnn::safe::ConvBackwardData {
        conv: &conv,
        dx: &x_d,
        w: &w_d,
        dy: &y_d,
    };
    let alg = op.pick_algorithm()?;
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
