//! AdamW (Loshchilov & Hutter), with the defaults and update order of `torch.optim.AdamW`, and
//! its state exposed so that checkpoints can resume a run exactly.

use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor, Var};
use rayon::prelude::*;

use crate::config::LrSchedule;

pub struct AdamW {
    params: Vec<(String, Var)>,
    m: Vec<Option<Tensor>>,
    v: Vec<Option<Tensor>>,
    /// Number of updates taken.
    pub t: u64,
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl AdamW {
    pub fn new(params: Vec<(String, Var)>, lr: f64, weight_decay: f64) -> Self {
        let n = params.len();
        Self {
            params,
            m: vec![None; n],
            v: vec![None; n],
            t: 0,
            lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay,
        }
    }

    /// One update from the gradients of a backward pass. Parameters without a gradient are
    /// left alone (as in PyTorch).
    ///
    /// # Errors
    /// If a gradient does not have its parameter's shape, or a tensor op fails.
    pub fn step(&mut self, grads: &GradStore) -> Result<()> {
        self.t += 1;
        let t = self.t as i32;
        let bc1 = 1.0 - self.beta1.powi(t);
        let bc2 = 1.0 - self.beta2.powi(t);
        let own = self
            .params
            .iter()
            .all(|(_, v)| crate::model::kernels::applies(v.device(), v.dtype()));
        if own {
            self.step_fused(grads, bc1, bc2)
        } else {
            self.step_ops(grads, bc1, bc2)
        }
    }

    /// [`AdamW::step`] as tensor ops, a dozen per parameter (any device; `--stock-ops`).
    fn step_ops(&mut self, grads: &GradStore, bc1: f64, bc2: f64) -> Result<()> {
        for (i, (_, var)) in self.params.iter().enumerate() {
            let Some(g) = grads.get(var.as_tensor()) else {
                continue;
            };
            // candle leaves a parameter's gradient attached to the graph that computed it (a
            // weight's gradient is made from the layer's input, which holds the whole forward
            // pass). Moments made from it would hold that graph, and each step's moments the
            // last step's: every step's activations kept alive (hundreds of MB a step at 32 px;
            // out of GPU memory within a few steps at 96 px).
            let g = &g.detach();
            let m = match &self.m[i] {
                Some(m) => ((m * self.beta1)? + (g * (1.0 - self.beta1))?)?,
                None => (g * (1.0 - self.beta1))?,
            };
            let v = match &self.v[i] {
                Some(v) => ((v * self.beta2)? + (g.sqr()? * (1.0 - self.beta2))?)?,
                None => (g.sqr()? * (1.0 - self.beta2))?,
            };
            let theta = (var.as_tensor() * (1.0 - self.lr * self.weight_decay))?;
            let denom = ((&v / bc2)?.sqrt()? + self.eps)?;
            let update = ((&m / bc1)? / denom)?;
            var.set(&(theta - (update * self.lr)?)?)?;
            self.m[i] = Some(m);
            self.v[i] = Some(v);
        }
        Ok(())
    }

    /// [`AdamW::step`] on the CPU in one pass per parameter — θ, g, m and v read once, θ, m
    /// and v written once — the parameters in parallel. The same operations in the same
    /// order as [`AdamW::step_ops`] (each of its scalar factors rounded to f32 as candle's
    /// `affine` rounds them), so both give the same values; the dozen ops each made a new
    /// tensor, about 2% of a training step at the 16 px views.
    fn step_fused(&mut self, grads: &GradStore, bc1: f64, bc2: f64) -> Result<()> {
        let k = Factors {
            b1: self.beta1 as f32,
            one_b1: (1.0 - self.beta1) as f32,
            b2: self.beta2 as f32,
            one_b2: (1.0 - self.beta2) as f32,
            decay: (1.0 - self.lr * self.weight_decay) as f32,
            inv_bc1: (1.0 / bc1) as f32,
            inv_bc2: (1.0 / bc2) as f32,
            eps: self.eps as f32,
            lr: self.lr as f32,
        };
        let jobs: Vec<(usize, &Var, Tensor)> = self
            .params
            .iter()
            .enumerate()
            .filter_map(|(i, (_, var))| grads.get(var.as_tensor()).map(|g| (i, var, g.clone())))
            .collect();
        let (m_all, v_all) = (&self.m, &self.v);
        let updated: Vec<(usize, Tensor, Tensor)> = jobs
            .into_par_iter()
            .map(|(i, var, g)| -> Result<(usize, Tensor, Tensor)> {
                let theta = var.as_tensor();
                let (shape, device) = (theta.shape().clone(), theta.device().clone());
                let flat = |t: &Tensor| t.flatten_all()?.to_vec1::<f32>();
                let g = flat(&g)?;
                let mut th = flat(theta)?;
                if g.len() != th.len() {
                    candle_core::bail!(
                        "AdamW: a gradient of {} values for a parameter of {}",
                        g.len(),
                        th.len()
                    );
                }
                let moment = |t: &Option<Tensor>| match t {
                    Some(t) => flat(t).map(Some),
                    None => Ok(None),
                };
                let (m0, v0) = (moment(&m_all[i])?, moment(&v_all[i])?);
                let mut m = vec![0f32; g.len()];
                let mut v = vec![0f32; g.len()];
                for (j, &gj) in g.iter().enumerate() {
                    let mj = match &m0 {
                        Some(m0) => m0[j] * k.b1 + gj * k.one_b1,
                        None => gj * k.one_b1,
                    };
                    let vj = match &v0 {
                        Some(v0) => v0[j] * k.b2 + gj * gj * k.one_b2,
                        None => gj * gj * k.one_b2,
                    };
                    let denom = (vj * k.inv_bc2).sqrt() + k.eps;
                    th[j] = th[j] * k.decay - mj * k.inv_bc1 / denom * k.lr;
                    m[j] = mj;
                    v[j] = vj;
                }
                var.set(&Tensor::from_vec(th, shape.clone(), &device)?)?;
                Ok((
                    i,
                    Tensor::from_vec(m, shape.clone(), &device)?,
                    Tensor::from_vec(v, shape, &device)?,
                ))
            })
            .collect::<Result<_>>()?;
        for (i, m, v) in updated {
            self.m[i] = Some(m);
            self.v[i] = Some(v);
        }
        Ok(())
    }

    /// Moment estimates by name (`optimizer.m.<param>`, `optimizer.v.<param>`).
    pub fn state_tensors(&self) -> HashMap<String, Tensor> {
        let mut out = HashMap::new();
        for (i, (name, _)) in self.params.iter().enumerate() {
            if let Some(m) = &self.m[i] {
                out.insert(format!("optimizer.m.{name}"), m.clone());
            }
            if let Some(v) = &self.v[i] {
                out.insert(format!("optimizer.v.{name}"), v.clone());
            }
        }
        out
    }

    /// Restores moments saved by [`AdamW::state_tensors`] and the step count.
    pub fn load_state(&mut self, tensors: &HashMap<String, Tensor>, t: u64) -> Result<()> {
        for (i, (name, var)) in self.params.iter().enumerate() {
            let dev = var.device();
            self.m[i] = tensors
                .get(&format!("optimizer.m.{name}"))
                .map(|x| x.to_device(dev))
                .transpose()?;
            self.v[i] = tensors
                .get(&format!("optimizer.v.{name}"))
                .map(|x| x.to_device(dev))
                .transpose()?;
        }
        self.t = t;
        Ok(())
    }
}

/// AdamW's scalars for one step, each rounded to f32 once ([`AdamW::step_fused`]).
#[derive(Clone, Copy)]
struct Factors {
    b1: f32,
    one_b1: f32,
    b2: f32,
    one_b2: f32,
    /// 1 − lr · weight decay.
    decay: f32,
    inv_bc1: f32,
    inv_bc2: f32,
    eps: f32,
    lr: f32,
}

/// The factor on the peak learning rate for update number `step` (1-based), with `progress` ∈
/// [0, 1] of the run done: 1 for [`LrSchedule::Constant`]; for [`LrSchedule::Cosine`], a linear
/// warm-up `step / warmup` over the first `warmup` updates (Goyal et al. 2017) times the cosine
/// annealing ½(1 + cos πp) (Loshchilov & Hutter 2017), as in `timm`'s cosine scheduler without
/// restarts.
pub fn lr_factor(schedule: LrSchedule, step: u64, warmup: usize, progress: f64) -> f64 {
    match schedule {
        LrSchedule::Constant => 1.0,
        LrSchedule::Cosine => {
            let warm = if warmup == 0 {
                1.0
            } else {
                (step as f64 / warmup as f64).min(1.0)
            };
            let p = if progress.is_finite() {
                progress.clamp(0.0, 1.0)
            } else {
                1.0
            };
            warm * 0.5 * (1.0 + (std::f64::consts::PI * p).cos())
        }
    }
}

/// A momentum teacher's m for update `step` (0-based) of `total`: the cosine schedule of BYOL
/// (Grill et al. 2020, §3.2) from `start` up to `end`,
/// m(t) = end − (end − start)·(cos(π t / (T − 1)) + 1) / 2, as
/// `lightly.utils.scheduler.cosine_schedule` (`end` when T ≤ 1).
pub fn cosine_momentum(step: u64, total: u64, start: f64, end: f64) -> f64 {
    if total <= 1 {
        return end;
    }
    let p = (step as f64 / (total - 1) as f64).clamp(0.0, 1.0);
    cosine_momentum_at(p, start, end)
}

/// [`cosine_momentum`] at `progress` ∈ [0, 1] of the run (runs with a time limit know their
/// progress, not their number of steps).
pub fn cosine_momentum_at(progress: f64, start: f64, end: f64) -> f64 {
    let p = if progress.is_finite() {
        progress.clamp(0.0, 1.0)
    } else {
        1.0
    };
    end - (end - start) * ((std::f64::consts::PI * p).cos() + 1.0) / 2.0
}

/// The momentum update θₜ ← m·θₜ + (1 − m)·θₛ of each (teacher, student) pair (BYOL eq. 1;
/// MoCo eq. 2). No gradient flows through it.
///
/// # Errors
/// When a pair's shapes differ.
pub fn momentum_update(pairs: &[(Var, Var)], m: f64) -> candle_core::Result<()> {
    for (teacher, student) in pairs {
        let t = ((teacher.as_tensor() * m)? + (student.as_tensor().detach() * (1.0 - m))?)?;
        teacher.set(&t)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn the_cosine_schedule_warms_up_then_anneals_to_zero() {
        let f = |step, p| lr_factor(LrSchedule::Cosine, step, 10, p);
        assert!((f(1, 0.0) - 0.1).abs() < 1e-12);
        assert!((f(5, 0.0) - 0.5).abs() < 1e-12);
        assert!((f(10, 0.0) - 1.0).abs() < 1e-12);
        assert!((f(500, 0.5) - 0.5).abs() < 1e-12);
        assert!(f(1000, 1.0).abs() < 1e-12);
        assert!(f(1000, 7.0).abs() < 1e-12, "past the end it stays at zero");
        let mut last = f64::INFINITY;
        for i in 0..=100 {
            let v = f(100, f64::from(i) / 100.0);
            assert!(v <= last);
            last = v;
        }
        assert_eq!(lr_factor(LrSchedule::Constant, 1, 10, 0.9), 1.0);
    }

    /// Two AdamW steps on f(θ) = Σ θ², against the update rule of torch.optim.AdamW(lr=0.1,
    /// weight_decay=0.01) evaluated in f64, from θ = [1, -2]: after step 1 θ = [0.899, -1.898],
    /// after step 2 θ ≈ [0.798519, -1.796273].
    #[test]
    fn matches_torch_adamw_on_a_quadratic() {
        let theta = Var::new(&[1.0f32, -2.0], &Device::Cpu).unwrap();
        let mut opt = AdamW::new(vec![("theta".into(), theta.clone())], 0.1, 0.01);
        let mut seen = Vec::new();
        for _ in 0..2 {
            let loss = theta.as_tensor().sqr().unwrap().sum_all().unwrap();
            let grads = loss.backward().unwrap();
            opt.step(&grads).unwrap();
            seen.push(theta.as_tensor().to_vec1::<f32>().unwrap());
        }
        // Step 1: θ·(1 − lr·wd) − lr·sign(g) = [1·0.999 − 0.1, −2·0.999 + 0.1].
        assert!((seen[0][0] - 0.899).abs() < 1e-6, "{seen:?}");
        assert!((seen[0][1] + 1.898).abs() < 1e-6, "{seen:?}");
        assert!((seen[1][0] - 0.798_519).abs() < 1e-5, "{seen:?}");
        assert!((seen[1][1] + 1.796_273).abs() < 1e-5, "{seen:?}");
        assert_eq!(opt.state_tensors().len(), 2);
    }

    /// The fused CPU update and the tensor-op one give the same parameters and moments over
    /// three steps: parameters of several shapes, weight decay, one without a gradient.
    #[test]
    fn the_fused_update_matches_the_tensor_ops() {
        let dev = Device::Cpu;
        let values = |n: usize, seed: u32| -> Vec<f32> {
            (0..n)
                .map(|i| ((i as u32).wrapping_mul(2_654_435_761) ^ seed) % 1000)
                .map(|x| x as f32 / 250.0 - 2.0)
                .collect()
        };
        let make = || -> Vec<(String, Var)> {
            [
                (vec![4usize, 3, 3, 3], 1u32),
                (vec![17], 2),
                (vec![5, 8], 3),
                (vec![3], 4),
            ]
            .into_iter()
            .enumerate()
            .map(|(i, (shape, seed))| {
                let n = shape.iter().product();
                let t = Tensor::from_vec(values(n, seed), shape, &dev).unwrap();
                (format!("p{i}"), Var::from_tensor(&t).unwrap())
            })
            .collect()
        };
        let (pa, pb) = (make(), make());
        let mut a = AdamW::new(pa.clone(), 0.05, 0.1);
        let mut b = AdamW::new(pb.clone(), 0.05, 0.1);
        for step in 1..=3u32 {
            // A loss of the first three parameters (the fourth gets no gradient).
            let grads = |ps: &[(String, Var)]| {
                let mut loss = Tensor::new(0f32, &dev).unwrap();
                for (j, (_, p)) in ps.iter().take(3).enumerate() {
                    let w = (p.as_tensor().sqr().unwrap() * f64::from(step + j as u32)).unwrap();
                    loss = (loss + w.sum_all().unwrap()).unwrap();
                }
                loss.backward().unwrap()
            };
            let (ga, gb) = (grads(&pa), grads(&pb));
            a.t += 1;
            b.t += 1;
            let bc1 = 1.0 - a.beta1.powi(a.t as i32);
            let bc2 = 1.0 - a.beta2.powi(a.t as i32);
            a.step_fused(&ga, bc1, bc2).unwrap();
            b.step_ops(&gb, bc1, bc2).unwrap();
            for ((name, x), (_, y)) in pa.iter().zip(&pb) {
                let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                assert_eq!(
                    flat(x.as_tensor()),
                    flat(y.as_tensor()),
                    "{name}, step {step}"
                );
            }
            let (sa, sb) = (a.state_tensors(), b.state_tensors());
            assert_eq!(
                sa.len(),
                6,
                "moments of the three parameters with a gradient"
            );
            for (key, ta) in &sa {
                let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                assert_eq!(flat(ta), flat(&sb[key]), "{key}, step {step}");
                // The gradients of Σ w·θ² are made from θ: moments built from them as they
                // are would keep every step's graph alive.
                assert!(
                    !sb[key].track_op(),
                    "{key}, step {step}: the moment holds the graph that made its gradient"
                );
            }
        }
    }
}
