//! sRGB ↔ CIE L*a*b* (D65, 2° observer), exactly as `skimage.color.rgb2lab` / `lab2rgb`.

/// sRGB → XYZ (D65), the matrix scikit-image uses.
const XYZ_FROM_RGB: [[f64; 3]; 3] = [
    [0.412453, 0.357580, 0.180423],
    [0.212671, 0.715160, 0.072169],
    [0.019334, 0.119193, 0.950227],
];
/// Its inverse.
const RGB_FROM_XYZ: [[f64; 3]; 3] = [
    [
        3.240_481_343_200_526_6,
        -1.537_151_516_271_318_5,
        -0.498_536_326_168_887_8,
    ],
    [
        -0.969_254_949_996_568_2,
        1.875_990_001_489_890_7,
        0.041_555_926_558_292_84,
    ],
    [
        0.055_646_639_135_177_16,
        -0.204_041_338_366_511_23,
        1.057_311_069_645_344_3,
    ],
];
/// D65 white point, 2° observer.
const WHITE: [f64; 3] = [0.95047, 1.0, 1.08883];

fn mul(m: &[[f64; 3]; 3], v: [f64; 3]) -> [f64; 3] {
    [
        m[0][0] * v[0] + m[0][1] * v[1] + m[0][2] * v[2],
        m[1][0] * v[0] + m[1][1] * v[1] + m[1][2] * v[2],
        m[2][0] * v[0] + m[2][1] * v[1] + m[2][2] * v[2],
    ]
}

/// One sRGB component in [0, 1] → linear light (the sRGB transfer function undone).
pub fn srgb_to_linear(c: f64) -> f64 {
    if c > 0.04045 {
        ((c + 0.055) / 1.055).powf(2.4)
    } else {
        c / 12.92
    }
}

/// sRGB in [0, 1] → L* in [0, 100], a*, b* roughly in [−110, 110].
pub fn rgb_to_lab(rgb: [f64; 3]) -> [f64; 3] {
    linear_rgb_to_lab(rgb.map(srgb_to_linear))
}

/// Linear-light RGB ([`srgb_to_linear`] of each component) → L*a*b*: the second half of
/// [`rgb_to_lab`], for sweeps over many colours that linearise through a table.
pub fn linear_rgb_to_lab(lin: [f64; 3]) -> [f64; 3] {
    let xyz = mul(&XYZ_FROM_RGB, lin);
    let f = |t: f64| {
        if t > 0.008856 {
            t.cbrt()
        } else {
            7.787 * t + 16.0 / 116.0
        }
    };
    let fx = f(xyz[0] / WHITE[0]);
    let fy = f(xyz[1] / WHITE[1]);
    let fz = f(xyz[2] / WHITE[2]);
    [116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)]
}

/// L*a*b* → sRGB in [0, 1] (clipped, as scikit-image does).
pub fn lab_to_rgb(lab: [f64; 3]) -> [f64; 3] {
    let fy = (lab[0] + 16.0) / 116.0;
    let fx = lab[1] / 500.0 + fy;
    let fz = (fy - lab[2] / 200.0).max(0.0);
    let inv = |t: f64| {
        if t > 0.206_896_6 {
            t * t * t
        } else {
            (t - 16.0 / 116.0) / 7.787
        }
    };
    let xyz = [inv(fx) * WHITE[0], inv(fy) * WHITE[1], inv(fz) * WHITE[2]];
    let lin = mul(&RGB_FROM_XYZ, xyz);
    lin.map(|c| {
        let v = if c > 0.003_130_8 {
            1.055 * c.powf(1.0 / 2.4) - 0.055
        } else {
            12.92 * c
        };
        v.clamp(0.0, 1.0)
    })
}

/// [`srgb_to_linear`] of every byte value `v / 255`, made once per process.
fn linear_table() -> &'static [f64; 256] {
    static TABLE: std::sync::OnceLock<[f64; 256]> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| std::array::from_fn(|v| srgb_to_linear(v as f64 / 255.0)))
}

/// Bytes → L*a*b* for a whole image (HWC), as three planes: L (n), a (n), b (n).
pub fn image_to_lab_planes(rgb: &[u8]) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let n = rgb.len() / 3;
    let (mut l, mut a, mut b) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let lin = linear_table();
    for px in rgb.chunks_exact(3) {
        // The same values as rgb_to_lab(byte / 255), without a powf per component.
        let lab = linear_rgb_to_lab([px[0], px[1], px[2]].map(|v| lin[usize::from(v)]));
        l.push(lab[0] as f32);
        a.push(lab[1] as f32);
        b.push(lab[2] as f32);
    }
    (l, a, b)
}

/// L, a, b planes → RGB bytes (HWC).
pub fn lab_planes_to_image(l: &[f32], a: &[f32], b: &[f32]) -> Vec<u8> {
    l.iter()
        .zip(a)
        .zip(b)
        .flat_map(|((&l, &a), &b)| {
            lab_to_rgb([f64::from(l), f64::from(a), f64::from(b)])
                .map(|c| (c * 255.0).round() as u8)
        })
        .collect()
}
