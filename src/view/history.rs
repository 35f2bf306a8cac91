//! A curve that keeps a whole run at bounded size: when full, neighbouring points are merged
//! (averaged) and later points are averaged over twice as many raw values, so a long run keeps
//! the shape of its curve without growing.

/// Points of one series, `(x, y)`, x increasing.
#[derive(Clone, Debug, PartialEq)]
pub struct History {
    points: Vec<[f64; 2]>,
    capacity: usize,
    /// Raw values per stored point.
    stride: usize,
    pending: Vec<[f64; 2]>,
}

impl History {
    /// `capacity` is the most points kept (even, at least 4).
    pub fn new(capacity: usize) -> Self {
        Self {
            points: Vec::new(),
            capacity: capacity.max(4) & !1,
            stride: 1,
            pending: Vec::new(),
        }
    }

    pub fn push(&mut self, x: f64, y: f64) {
        if !y.is_finite() {
            return;
        }
        self.pending.push([x, y]);
        if self.pending.len() >= self.stride {
            let n = self.pending.len() as f64;
            let mean = self
                .pending
                .iter()
                .fold([0.0, 0.0], |a, p| [a[0] + p[0] / n, a[1] + p[1] / n]);
            self.pending.clear();
            self.points.push(mean);
            if self.points.len() >= self.capacity {
                self.points = self
                    .points
                    .chunks(2)
                    .map(|c| {
                        let k = c.len() as f64;
                        [
                            c.iter().map(|p| p[0]).sum::<f64>() / k,
                            c.iter().map(|p| p[1]).sum::<f64>() / k,
                        ]
                    })
                    .collect();
                self.stride *= 2;
            }
        }
    }

    /// Stored points, then the not yet merged tail (so the newest value always shows).
    pub fn points(&self) -> Vec<[f64; 2]> {
        let mut v = self.points.clone();
        v.extend_from_slice(&self.pending);
        v
    }

    pub fn len(&self) -> usize {
        self.points.len() + self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Exponential moving average with weight `alpha` on the past (0 = raw), debiased at the start.
pub fn smooth(points: &[[f64; 2]], alpha: f64) -> Vec<[f64; 2]> {
    let mut acc = 0.0;
    let mut weight = 0.0;
    points
        .iter()
        .map(|p| {
            acc = alpha * acc + (1.0 - alpha) * p[1];
            weight = alpha * weight + (1.0 - alpha);
            [p[0], acc / weight.max(1e-12)]
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stays_bounded_and_keeps_the_shape() {
        let mut h = History::new(100);
        for i in 0..100_000 {
            let x = f64::from(i);
            h.push(x, (x / 10_000.0).sin());
        }
        assert!(h.len() <= 100 + 1024, "{}", h.len());
        let pts = h.points();
        assert!(pts.windows(2).all(|w| w[0][0] < w[1][0]), "x increases");
        assert!(pts[0][0] < 1000.0 && pts[pts.len() - 1][0] > 98_000.0);
        // The sine's shape survives: the max is near x = π/2 · 10⁴.
        let max = pts
            .iter()
            .fold(pts[0], |m, p| if p[1] > m[1] { *p } else { m });
        assert!((max[0] - 15_708.0).abs() < 2_000.0, "{max:?}");
    }

    #[test]
    fn smoothing_of_a_constant_is_the_constant() {
        let pts: Vec<[f64; 2]> = (0..10).map(|i| [f64::from(i), 3.0]).collect();
        assert!(smooth(&pts, 0.9).iter().all(|p| (p[1] - 3.0).abs() < 1e-12));
        let raw = smooth(&pts, 0.0);
        assert_eq!(raw, pts);
    }
}
