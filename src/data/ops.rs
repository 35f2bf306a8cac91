//! Small pixel operations on square `size × size × 3` RGB byte images.

/// Rotates a square RGB image counter-clockwise by `quarter_turns × 90°` (the direction of
/// `torch.rot90(x, k, (2, 3))`).
pub fn rotate90(src: &[u8], size: usize, quarter_turns: usize, dst: &mut [u8]) {
    let n = size;
    let k = quarter_turns % 4;
    for r in 0..n {
        for c in 0..n {
            let (sr, sc) = match k {
                0 => (r, c),
                1 => (c, n - 1 - r),
                2 => (n - 1 - r, n - 1 - c),
                _ => (n - 1 - c, r),
            };
            let s = (sr * n + sc) * 3;
            let d = (r * n + c) * 3;
            dst[d..d + 3].copy_from_slice(&src[s..s + 3]);
        }
    }
}

/// Mean and spread used to turn bytes into network inputs: `(v / 255 − MEAN) / STD`.
pub const INPUT_MEAN: f32 = 0.5;
pub const INPUT_STD: f32 = 0.25;

/// Appends an HWC RGB byte image to `out` as normalised CHW floats.
pub fn push_chw(src: &[u8], size: usize, out: &mut Vec<f32>) {
    let plane = size * size;
    let start = out.len();
    out.resize(start + 3 * plane, 0.0);
    let dst = &mut out[start..];
    for (p, px) in src.chunks_exact(3).enumerate() {
        for c in 0..3 {
            dst[c * plane + p] = (f32::from(px[c]) / 255.0 - INPUT_MEAN) / INPUT_STD;
        }
    }
}

/// Nearest-neighbour upscaling of an RGB byte image by an integer factor.
pub fn upscale_nearest(src: &[u8], w: usize, h: usize, factor: usize) -> Vec<u8> {
    let (ow, oh) = (w * factor, h * factor);
    let mut out = vec![0u8; ow * oh * 3];
    for y in 0..oh {
        for x in 0..ow {
            let s = ((y / factor) * w + x / factor) * 3;
            let d = (y * ow + x) * 3;
            out[d..d + 3].copy_from_slice(&src[s..s + 3]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numbered(n: usize) -> Vec<u8> {
        (0..n * n).flat_map(|i| [i as u8, 0, 0]).collect()
    }

    #[test]
    fn rotation_matches_torch_rot90_and_four_turns_are_identity() {
        // 2x2: [[0,1],[2,3]] rotated ccw once is [[1,3],[0,2]] (torch.rot90 k=1).
        let src = numbered(2);
        let mut dst = vec![0; 12];
        rotate90(&src, 2, 1, &mut dst);
        let reds: Vec<u8> = dst.chunks(3).map(|p| p[0]).collect();
        assert_eq!(reds, [1, 3, 0, 2]);
        let src = numbered(5);
        let mut a = src.clone();
        let mut b = vec![0; a.len()];
        for _ in 0..4 {
            rotate90(&a, 5, 1, &mut b);
            std::mem::swap(&mut a, &mut b);
        }
        assert_eq!(a, src);
        let mut two = vec![0; src.len()];
        rotate90(&src, 5, 2, &mut two);
        let mut once = vec![0; src.len()];
        let mut twice = vec![0; src.len()];
        rotate90(&src, 5, 1, &mut once);
        rotate90(&once, 5, 1, &mut twice);
        assert_eq!(two, twice);
    }

    #[test]
    fn chw_layout_and_normalisation() {
        // 1x2 image would not be square; use 2x2 with distinct channels.
        let src = [255u8, 0, 128, 0, 0, 0, 0, 0, 0, 0, 0, 255];
        let mut v = vec![9.0];
        push_chw(&src, 2, &mut v);
        assert_eq!(v.len(), 1 + 12);
        let plane = |c: usize, p: usize| v[1 + c * 4 + p];
        assert!((plane(0, 0) - 2.0).abs() < 1e-6);
        assert!((plane(1, 0) + 2.0).abs() < 1e-6);
        assert!((plane(2, 3) - 2.0).abs() < 1e-6);
        assert!((plane(2, 0) - (128.0 / 255.0 - 0.5) / 0.25).abs() < 1e-6);
    }
}
