//! The two-view methods beyond SimCLR, each behind the common task interface: MoCo v2, BYOL,
//! SimSiam, Barlow Twins and VICReg. All of them take the two views x⁺ = T(x) that contrastive
//! learning makes (the same augmentation pipeline and batch maker), the shared encoder, and a
//! projector under `heads.<task>.`; they differ in what the second view is compared with and
//! how collapse is prevented:
//!
//! | method | online branch | target branch | against collapse |
//! |---|---|---|---|
//! | MoCo v2 (He et al. 2020; Chen et al. 2020) | q = g(f(x₁)) | k = momentum teacher's g(f(x₂)) | negatives: a queue of earlier keys, InfoNCE |
//! | BYOL (Grill et al. 2020) | p = q(g(f(x₁))) | momentum teacher's g(f(x₂)) | predictor + slow teacher |
//! | SimSiam (Chen & He 2021) | p = q(g(f(x₁))) | sg(g(f(x₂))) | predictor + stop-gradient |
//! | Barlow Twins (Zbontar et al. 2021) | g(f(x₁)) | g(f(x₂)) | cross-correlation → identity |
//! | VICReg (Bardes et al. 2022) | g(f(x₁)) | g(f(x₂)) | variance and covariance terms |
//!
//! Losses are symmetrised over the two views (each view is once online, once target), as the
//! papers' pseudo-code does for BYOL, SimSiam and (lightly's examples) MoCo. The proxy metric of
//! all five: how often a view's online output is most cosine-similar to its own image's other
//! view among the batch's (chance 1/N).
//!
//! A momentum teacher (BYOL, MoCo) is a second encoder and projector whose weights live under
//! `heads.<task>.teacher.` (the encoder's own names after `teacher.encoder.`): saved in every
//! checkpoint, restored by the NaN guard, never seen by the optimiser, and moved after each
//! update by θₜ ← m·θₜ + (1 − m)·θₛ with m rising from `momentum` to 1 on BYOL's cosine schedule.
//! MoCo's queue is state too (`heads.moco.queue.*`: keys, the update that wrote each slot, the
//! write position), so a resumed run continues with the same negatives.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use candle_core::{Tensor, Var};
use candle_nn::Init;

use super::contrastive::{ContrastiveMaker, describe_views};
use super::heads::{BnMlp, Mlp};
use super::{
    Batch, BatchMaker, Canvas, Explained, MetricInfo, PretextTask, Preview, TaskOutput,
    inputs_to_bytes, preview_batch, preview_factor, rows,
};
use crate::config::{TaskKind, TaskSettings};
use crate::data::Dataset;
use crate::math::{SiameseMath, TaskMath};
use crate::model::encoder::Counters;
use crate::model::losses::{self, VicRegWeights};
use crate::model::{Encoder, Model, ModelError, is_buffer, ops as nn, optim};

/// How the proxy metric of the two-view methods reads.
pub const METRIC: MetricInfo =
    MetricInfo::percent("view top-1", "Proxy view top-1", Some("chance 1/N"));

/// Projector (hidden, output) widths and predictor hidden width of each method, sized for a
/// few CPU-minutes with z of 128 dimensions (the papers use 2048–8192 on ImageNet).
fn widths(kind: TaskKind) -> (usize, usize, Option<usize>) {
    match kind {
        // MoCo v2's MLP head: z → z → 64 (128 in the paper), no batch norm.
        TaskKind::Moco => (128, 64, None),
        // BYOL: 4096 → 256 in the paper, predictor of the same shape.
        TaskKind::Byol => (256, 64, Some(256)),
        // SimSiam: a bottleneck predictor of a quarter of the width (2048 → 512 → 2048).
        TaskKind::Simsiam => (256, 128, Some(32)),
        // Barlow Twins and VICReg want wide embeddings; 128 keeps the matrix drawable.
        _ => (512, 128, None),
    }
}

enum Projector {
    /// Linear → ReLU → Linear (MoCo v2).
    Plain(Mlp),
    /// Linear → BN → ReLU → Linear (→ BN for SimSiam).
    Normed(BnMlp),
}

impl Projector {
    fn new(
        kind: TaskKind,
        model: &Model,
        vb: &candle_nn::VarBuilder<'_>,
        inputs: usize,
    ) -> Result<Self, ModelError> {
        let (hidden, out, _) = widths(kind);
        Ok(match kind {
            TaskKind::Moco => Self::Plain(Mlp::new(vb, inputs, hidden, out)?),
            _ => Self::Normed(BnMlp::new(
                model,
                vb,
                (inputs, hidden, out),
                kind == TaskKind::Simsiam,
            )?),
        })
    }

    fn forward(&self, z: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        match self {
            Self::Plain(m) => m.forward(z),
            Self::Normed(m) => m.forward(z, train),
        }
    }
}

/// A momentum teacher: encoder and projector that follow the student's weights.
struct Teacher {
    encoder: Encoder,
    projector: Projector,
    /// (teacher, student) parameter pairs (not the running statistics: the teacher's own
    /// forward in training mode keeps those, as in BYOL's and MoCo's code).
    pairs: Vec<(Var, Var)>,
    /// One pair with the student's name, for the Math panel's example.
    example: Option<(String, Var, Var)>,
}

/// MoCo's queue of keys, as model state. It starts full of random unit vectors, as MoCo's and
/// lightly's code start it (`normalize(randn(K, D))`): every slot is a negative from the first
/// step, and the batches' keys replace them oldest first.
struct Queue {
    /// (K, D) L2-normalised keys.
    keys: Var,
    /// (K,): the update that wrote each slot, −1 while it holds its random starting vector.
    written: Var,
    /// (2,): the next slot to write, and the number of updates so far.
    state: Var,
}

/// Fills `row` with a random unit vector: normal coordinates, then L2-normalised (MoCo's and
/// lightly's `normalize(randn(K, D))`, row by row).
fn random_unit(rng: &mut crate::rng::Rng, row: &mut [f32]) {
    for v in row.iter_mut() {
        *v = rng.normal();
    }
    let len = row.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
    for v in row.iter_mut() {
        *v /= len;
    }
}

impl Queue {
    fn host(&self) -> Result<(Vec<f32>, Vec<f32>, usize, u64), ModelError> {
        let keys = self.keys.as_tensor().flatten_all()?.to_vec1::<f32>()?;
        let written = self.written.as_tensor().to_vec1::<f32>()?;
        let state = self.state.as_tensor().to_vec1::<f32>()?;
        let ptr = state.first().copied().unwrap_or(0.0).max(0.0) as usize;
        let updates = state.get(1).copied().unwrap_or(0.0).max(0.0) as u64;
        Ok((keys, written, ptr, updates))
    }

    /// The negatives: every slot's key (K, D), the random starting ones included; None for a
    /// queue of size 0.
    fn negatives(&self) -> Option<Tensor> {
        let keys = self.keys.as_tensor();
        (keys.dim(0).ok()? > 0).then(|| keys.clone())
    }

    /// Every slot a random unit vector (normal coordinates, then L2-normalised) from `seed`;
    /// nothing written yet.
    fn reset(&self, seed: u64) -> Result<(), ModelError> {
        let (k, d) = self.keys.as_tensor().dims2()?;
        let device = self.keys.as_tensor().device().clone();
        let mut rng = crate::rng::Rng::derive(seed, &[0x6d6f_636f]);
        let mut keys = vec![0f32; k * d];
        for row in keys.chunks_mut(d.max(1)) {
            random_unit(&mut rng, row);
        }
        self.keys.set(&Tensor::from_vec(keys, (k, d), &device)?)?;
        self.written.set(&Tensor::full(-1f32, k, &device)?)?;
        self.state
            .set(&Tensor::zeros(2, candle_core::DType::F32, &device)?)?;
        Ok(())
    }

    /// Makes every slot that holds no key (all zeros: a checkpoint of an older build, whose
    /// queue started empty, saved before it filled) a random unit vector, as [`Queue::reset`]
    /// starts them, so that it is a negative like any other instead of a logit of 0. The
    /// vectors come from the number of updates, so a resume is reproducible. Returns how many
    /// slots it filled.
    fn fill_unwritten(&self) -> Result<usize, ModelError> {
        let (mut keys, mut written, ptr, updates) = self.host()?;
        let k = written.len();
        let Some(d) = keys.len().checked_div(k) else {
            return Ok(0);
        };
        let mut rng = crate::rng::Rng::derive(updates, &[0x6d6f_636f, 0x656d_7074]);
        let mut filled = 0;
        for (row, w) in keys.chunks_mut(d.max(1)).zip(written.iter_mut()) {
            if row.iter().any(|v| *v != 0.0) {
                continue;
            }
            random_unit(&mut rng, row);
            *w = -1.0;
            filled += 1;
        }
        if filled > 0 {
            let device = self.keys.as_tensor().device().clone();
            self.keys.set(&Tensor::from_vec(keys, (k, d), &device)?)?;
            self.written.set(&Tensor::from_vec(written, k, &device)?)?;
            self.state
                .set(&Tensor::new(&[ptr as f32, updates as f32], &device)?)?;
        }
        Ok(filled)
    }

    /// Writes `new` (B, D) keys at the write position (wrapping), oldest first out.
    fn enqueue(&self, new: &Tensor) -> Result<(), ModelError> {
        let (mut keys, mut written, mut ptr, updates) = self.host()?;
        let (b, d) = new.dims2()?;
        let k = written.len();
        if k == 0 {
            return Ok(());
        }
        let update = updates + 1;
        let new = new.flatten_all()?.to_vec1::<f32>()?;
        // More keys than slots: the newest K.
        let skip = b.saturating_sub(k);
        for row in skip..b {
            keys[ptr * d..(ptr + 1) * d].copy_from_slice(&new[row * d..(row + 1) * d]);
            written[ptr] = update as f32;
            ptr = (ptr + 1) % k;
        }
        let device = self.keys.as_tensor().device().clone();
        self.keys.set(&Tensor::from_vec(keys, (k, d), &device)?)?;
        self.written.set(&Tensor::from_vec(written, k, &device)?)?;
        self.state
            .set(&Tensor::new(&[ptr as f32, update as f32], &device)?)?;
        Ok(())
    }

    /// (slots written by an update, K, mean age in updates of those, age of every slot or −1
    /// for a random starting key).
    fn fill_and_age(&self) -> Result<(usize, usize, f64, Vec<f32>), ModelError> {
        let (_, written, _, updates) = self.host()?;
        let ages: Vec<f32> = written
            .iter()
            .map(|&w| if w < 0.0 { -1.0 } else { updates as f32 - w })
            .collect();
        let filled: Vec<f32> = ages.iter().copied().filter(|a| *a >= 0.0).collect();
        // An empty sum of floats is −0.0 (printed "-0.0"): no filled slot has age 0.
        let mean = if filled.is_empty() {
            0.0
        } else {
            filled.iter().map(|&a| f64::from(a)).sum::<f64>() / filled.len() as f64
        };
        Ok((filled.len(), written.len(), mean, ages))
    }
}

/// What the last training forward left for after the update and for the previews.
#[derive(Default)]
struct Live {
    /// MoCo: the batch's keys, enqueued once the update is made.
    pending_keys: Option<Tensor>,
    /// Barlow Twins: C; VICReg: Cov(z₁) — of the last training batch, (D·D values, D).
    matrix: Option<(Vec<f32>, usize)>,
    /// The teacher's momentum at the last update.
    momentum: Option<f64>,
}

/// One of the five methods (see the module's table).
pub struct Siamese {
    kind: TaskKind,
    projector: Projector,
    predictor: Option<BnMlp>,
    teacher: Option<Teacher>,
    queue: Option<Queue>,
    maker: Arc<ContrastiveMaker>,
    settings: TaskSettings,
    live: Mutex<Live>,
}

/// What one forward computed.
struct Computed {
    /// z = f(x) of the 2N views.
    z: Tensor,
    /// The online branch (2N, D): p (SimSiam, BYOL), q (MoCo), g(f(x)) (Barlow Twins, VICReg).
    online: Tensor,
    /// The target branch per view (2N, D), detached where the method stops the gradient;
    /// None for Barlow Twins and VICReg (their online halves are compared).
    target: Option<Tensor>,
    loss: Tensor,
    /// Barlow Twins' C or VICReg's Cov(z₁), with D.
    matrix: Option<(Vec<f32>, usize)>,
    metric: f64,
}

/// (first half, second half) of 2N rows.
fn halves(t: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
    let n = t.dim(0)? / 2;
    Ok((t.narrow(0, 0, n)?, t.narrow(0, n, n)?))
}

/// The other view of every row: (second half, first half) of a (2N, D) tensor.
///
/// # Errors
/// When `t` has no first dimension.
pub fn swap_views(t: &Tensor) -> candle_core::Result<Tensor> {
    let (a, b) = halves(t)?;
    Tensor::cat(&[&b, &a], 0)
}

fn lock(live: &Mutex<Live>) -> MutexGuard<'_, Live> {
    live.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Siamese {
    /// Builds `kind`'s heads (and teacher and queue) in the model's parameter map.
    ///
    /// # Errors
    /// When `kind` is not one of the five, or the parameters cannot be created.
    pub fn new(kind: TaskKind, model: &Model, settings: &TaskSettings) -> Result<Self, ModelError> {
        if !matches!(
            kind,
            TaskKind::Moco
                | TaskKind::Byol
                | TaskKind::Simsiam
                | TaskKind::BarlowTwins
                | TaskKind::Vicreg
        ) {
            return Err(ModelError::Invalid(format!(
                "{kind} is not a two-view method"
            )));
        }
        let name = kind.name();
        let vb = model.head_builder(name);
        let z = model.encoder.z_dim();
        let (_, out, predictor_hidden) = widths(kind);
        let projector = Projector::new(kind, model, &vb.pp("projector"), z)?;
        let predictor = predictor_hidden
            .map(|h| BnMlp::new(model, &vb.pp("predictor"), (out, h, out), false))
            .transpose()?;
        let teacher = if matches!(kind, TaskKind::Byol | TaskKind::Moco) {
            Some(Self::teacher(kind, model)?)
        } else {
            None
        };
        let queue = if kind == TaskKind::Moco {
            let k = settings.queue_size;
            let q = vb.pp("queue");
            Some(Queue {
                keys: Var::from_tensor(&q.get_with_hints((k, out), "keys", Init::Const(0.0))?)?,
                written: Var::from_tensor(&q.get_with_hints(k, "written", Init::Const(-1.0))?)?,
                state: Var::from_tensor(&q.get_with_hints(2, "state", Init::Const(0.0))?)?,
            })
        } else {
            None
        };
        Ok(Self {
            kind,
            projector,
            predictor,
            teacher,
            queue,
            maker: Arc::new(ContrastiveMaker {
                augment: settings.augment.clone(),
            }),
            settings: settings.clone(),
            live: Mutex::new(Live::default()),
        })
    }

    fn teacher(kind: TaskKind, model: &Model) -> Result<Teacher, ModelError> {
        let name = kind.name();
        let vb = model.head_builder(name).pp("teacher");
        let mut counters: Counters = Vec::new();
        let encoder = Encoder::new(
            model.encoder.in_channels,
            model.encoder.width,
            &vb.pp("encoder"),
            &mut counters,
        )?;
        model.add_counters(counters);
        let projector = Projector::new(kind, model, &vb.pp("projector"), model.encoder.z_dim())?;
        let vars = model.named_vars();
        let prefix = format!("heads.{name}.teacher.");
        let mut pairs = Vec::new();
        let mut example = None;
        for (tname, tvar) in &vars {
            let Some(rest) = tname.strip_prefix(&prefix) else {
                continue;
            };
            if is_buffer(tname) {
                continue;
            }
            let sname = match rest.strip_prefix("encoder.") {
                Some(enc) => enc.to_string(),
                None => format!("heads.{name}.{rest}"),
            };
            let svar = vars.get(&sname).ok_or_else(|| {
                ModelError::Invalid(format!("{tname} has no student weight {sname}"))
            })?;
            if example.is_none() && sname.starts_with("l3.") {
                example = Some((sname.clone(), tvar.clone(), svar.clone()));
            }
            pairs.push((tvar.clone(), svar.clone()));
        }
        Ok(Teacher {
            encoder,
            projector,
            pairs,
            example,
        })
    }

    /// The online and target branches and the loss on the 2N views of `inputs`.
    fn compute(&self, model: &Model, inputs: &Tensor, train: bool) -> Result<Computed, ModelError> {
        let z = model.encoder.forward(inputs, train)?.z;
        let h = self.projector.forward(&z, train)?;
        let s = &self.settings;
        let teacher_out = |t: &Teacher| -> Result<Tensor, ModelError> {
            let tz = t.encoder.forward(inputs, train)?.z;
            Ok(t.projector.forward(&tz, train)?.detach())
        };
        let (online, target, loss, matrix) = match self.kind {
            TaskKind::Simsiam | TaskKind::Byol => {
                let Some(predictor) = &self.predictor else {
                    return Err(ModelError::Invalid("no predictor".into()));
                };
                let p = predictor.forward(&h, train)?;
                let target = match &self.teacher {
                    Some(t) => teacher_out(t)?,
                    None if s.stop_gradient => h.detach(),
                    None => h.clone(),
                };
                let loss = losses::negative_cosine(&p, &swap_views(&target)?)?;
                (p, Some(target), loss, None)
            }
            TaskKind::Moco => {
                let Some(t) = &self.teacher else {
                    return Err(ModelError::Invalid("no momentum encoder".into()));
                };
                let k = teacher_out(t)?;
                let queue = self.queue.as_ref().and_then(Queue::negatives);
                let (loss, _) =
                    losses::moco_info_nce(&h, &swap_views(&k)?, queue.as_ref(), s.temperature)?;
                (h, Some(k), loss, None)
            }
            TaskKind::BarlowTwins => {
                let (a, b) = halves(&h)?;
                let bt = losses::barlow_twins(&a, &b, s.barlow_lambda)?;
                let d = bt.cross_correlation.dim(0)?;
                let c = bt.cross_correlation.flatten_all()?.to_vec1::<f32>()?;
                (h, None, bt.loss, Some((c, d)))
            }
            _ => {
                let (a, b) = halves(&h)?;
                let v = losses::vicreg(&a, &b, self.vicreg_weights())?;
                let d = v.covariance_matrix.dim(0)?;
                let c = v.covariance_matrix.flatten_all()?.to_vec1::<f32>()?;
                (h, None, v.loss, Some((c, d)))
            }
        };
        let (first, _) = halves(&online)?;
        let metric = match &target {
            Some(t) => losses::view_top1(&first, &halves(t)?.1)?,
            None => losses::view_top1(&first, &halves(&online)?.1)?,
        };
        Ok(Computed {
            z,
            online,
            target,
            loss,
            matrix,
            metric,
        })
    }

    fn vicreg_weights(&self) -> VicRegWeights {
        let [invariance, variance, covariance] = self.settings.vicreg_weights;
        VicRegWeights {
            invariance,
            variance,
            covariance,
            ..VicRegWeights::default()
        }
    }

    /// The queue's keys as rows (MoCo), for the Math panel.
    fn queue_rows(&self) -> Result<Vec<Vec<f32>>, ModelError> {
        match self.queue.as_ref().and_then(Queue::negatives) {
            Some(keys) => rows(&keys),
            None => Ok(Vec::new()),
        }
    }
}

impl PretextTask for Siamese {
    fn kind(&self) -> TaskKind {
        self.kind
    }

    fn maker(&self) -> Arc<dyn BatchMaker> {
        self.maker.clone()
    }

    fn forward(&self, model: &Model, batch: &Batch, train: bool) -> Result<TaskOutput, ModelError> {
        let c = self.compute(model, &batch.inputs, train)?;
        let two_n = c.online.dim(0)?;
        if train {
            let mut live = lock(&self.live);
            if c.matrix.is_some() {
                live.matrix = c.matrix;
            }
            if self.queue.is_some() {
                live.pending_keys = c.target.as_ref().map(nn::l2_normalize_rows).transpose()?;
            }
        }
        Ok(TaskOutput {
            loss: c.loss,
            metric: c.metric,
            baseline: Some(1.0 / (two_n / 2).max(1) as f64),
            images: two_n,
        })
    }

    fn head_output(&self, z: &Tensor) -> Result<Option<Tensor>, ModelError> {
        Ok(Some(self.projector.forward(z, false)?))
    }

    fn start(&self, _model: &Model, seed: u64) -> Result<(), ModelError> {
        if let Some(t) = &self.teacher {
            for (teacher, student) in &t.pairs {
                teacher.set(&student.as_tensor().copy()?)?;
            }
        }
        if let Some(q) = &self.queue {
            q.reset(seed)?;
        }
        *lock(&self.live) = Live::default();
        Ok(())
    }

    fn resumed(&self, progress: f64) -> Result<(), ModelError> {
        if self.teacher.is_some() {
            let m = optim::cosine_momentum_at(progress, self.settings.momentum, 1.0);
            lock(&self.live).momentum = Some(m);
        }
        if let Some(q) = &self.queue {
            q.fill_unwritten()?;
        }
        Ok(())
    }

    fn after_update(&self, _model: &Model, progress: f64) -> Result<(), ModelError> {
        if let Some(t) = &self.teacher {
            let m = optim::cosine_momentum_at(progress, self.settings.momentum, 1.0);
            optim::momentum_update(&t.pairs, m)?;
            lock(&self.live).momentum = Some(m);
        }
        if let Some(q) = &self.queue {
            let keys = lock(&self.live).pending_keys.take();
            if let Some(keys) = keys {
                q.enqueue(&keys)?;
            }
        }
        Ok(())
    }

    fn explain(&self, model: &Model, batch: &Batch) -> Result<Explained, ModelError> {
        let c = self.compute(model, &batch.inputs, true)?;
        let first = |v: &Var| -> Result<f64, ModelError> {
            Ok(f64::from(
                v.as_tensor().flatten_all()?.get(0)?.to_scalar::<f32>()?,
            ))
        };
        let teacher_example = match self.teacher.as_ref().and_then(|t| t.example.as_ref()) {
            Some((name, tv, sv)) => Some((name.clone(), first(tv)?, first(sv)?)),
            None => None,
        };
        let momentum = self
            .teacher
            .as_ref()
            .map(|_| lock(&self.live).momentum.unwrap_or(self.settings.momentum));
        Ok(Explained {
            math: TaskMath::Siamese(Box::new(SiameseMath {
                method: self.kind,
                online: rows(&c.online)?,
                target: match &c.target {
                    Some(t) => rows(t)?,
                    None => Vec::new(),
                },
                queue: self.queue_rows()?,
                temperature: self.settings.temperature,
                barlow_lambda: self.settings.barlow_lambda,
                vicreg: self.vicreg_weights(),
                momentum,
                stop_gradient: self.settings.stop_gradient,
                teacher_example,
            })),
            z: rows(&c.z)?,
            inputs: inputs_to_bytes(&batch.host.inputs),
            input_size: batch.host.inputs.shape[2],
            transforms: describe_views(&batch.host.extra),
        })
    }

    /// Left: each image's two views. Right: for MoCo, BYOL and SimSiam the k × k cosine
    /// similarity of the online outputs of the first views with the targets of the second
    /// (positives on the diagonal), MoCo's queue fill and age below it; for Barlow Twins the
    /// last training batch's cross-correlation matrix C and for VICReg its covariance matrix,
    /// both going to (a multiple of) the identity.
    fn preview(
        &self,
        model: &Model,
        data: &Dataset,
        indices: &[usize],
    ) -> Result<Preview, ModelError> {
        let batch = preview_batch(self.maker.as_ref(), model, data, indices)?;
        let c = self.compute(model, &batch.inputs, false)?;
        let s = batch.host.inputs.shape[2];
        let f = preview_factor(s);
        let cell = s * f;
        let pad = 6;
        let k = indices.len();
        let views = inputs_to_bytes(&batch.host.inputs);
        let left = 2 * (cell + pad) + 2 * pad;
        let column_h = k * (cell + pad) + pad;
        let (online1, _) = halves(&c.online)?;
        let (picture, range, side_cells, caption) = match &c.target {
            Some(t) => {
                let (_, target2) = halves(t)?;
                let sim = nn::l2_normalize_rows(&online1)?
                    .matmul(&nn::l2_normalize_rows(&target2)?.t()?)?
                    .flatten_all()?
                    .to_vec1::<f32>()?;
                let mut caption = format!(
                    "{}: view pairs | cos(online of view 1, target of view 2), positives on the diagonal (blue −1, white 0, red 1); view top-1 {:.0}%",
                    self.kind,
                    c.metric * 100.0
                );
                if let Some(m) = lock(&self.live).momentum {
                    caption.push_str(&format!("; teacher momentum m = {m:.4}"));
                }
                (sim, (-1.0, 1.0), k, caption)
            }
            None => {
                let last = lock(&self.live).matrix.clone();
                let (matrix, d, when) = match last {
                    Some((m, d)) => (m, d, "the last training batch"),
                    None => {
                        let (m, d) = c.matrix.unwrap_or_default();
                        (m, d, "the preview images")
                    }
                };
                let what = if self.kind == TaskKind::BarlowTwins {
                    "cross-correlation C of the two views' embeddings (goal: identity)"
                } else {
                    "covariance of view 1's embedding (goal: diagonal ≥ 1, the rest 0)"
                };
                (
                    matrix,
                    (-1.0, 1.0),
                    d,
                    format!(
                        "{}: view pairs | {what}, {d}×{d}, on {when} (blue −1, white 0, red 1); view top-1 {:.0}%",
                        self.kind,
                        c.metric * 100.0
                    ),
                )
            }
        };
        let heat_cell = (column_h.max(256) / side_cells.max(1)).clamp(1, 32);
        let heat = side_cells * heat_cell;
        let queue = match &self.queue {
            Some(q) => Some(q.fill_and_age()?),
            None => None,
        };
        let queue_h = if queue.is_some() { 40 + pad } else { 0 };
        let mut canvas = Canvas::new(
            left + heat + pad,
            column_h.max(heat + 2 * pad + queue_h),
            [24, 24, 28],
        );
        for row in 0..k {
            let y = pad + row * (cell + pad);
            canvas.blit(&views[row], s, s, f, pad, y);
            canvas.blit(&views[row + k], s, s, f, 2 * pad + cell, y);
        }
        canvas.heatmap((left, pad), &picture, side_cells.max(1), heat_cell, range);
        let mut caption = caption;
        if let Some((filled, size, mean_age, ages)) = queue {
            // One bar per group of slots: its fill, darker when older.
            let groups = heat.clamp(1, 64);
            let per = ages.len().div_ceil(groups).max(1);
            let oldest = ages.iter().copied().fold(1.0f32, f32::max);
            let bars: Vec<f32> = ages
                .chunks(per)
                .map(|g| {
                    let filled: Vec<f32> = g.iter().copied().filter(|a| *a >= 0.0).collect();
                    if filled.is_empty() {
                        0.0
                    } else {
                        1.0 - 0.8 * filled.iter().sum::<f32>() / filled.len() as f32 / oldest
                    }
                })
                .collect();
            canvas.bars(left, heat + 2 * pad, heat, 40, &bars, None);
            let random = if filled < size {
                format!(", the other {} random as MoCo starts them", size - filled)
            } else {
                String::new()
            };
            caption.push_str(&format!(
                "; queue {filled}/{size} keys from batches{random}, mean age {mean_age:.1} updates (bars: slots, lower = older)"
            ));
        }
        Ok(Preview {
            task: self.kind,
            caption,
            image: canvas,
            pixels: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A queue of `k` slots of `d` zeros on the CPU, none written: as an older build started it.
    fn empty_queue(k: usize, d: usize) -> Queue {
        let dev = candle_core::Device::Cpu;
        Queue {
            keys: Var::zeros((k, d), candle_core::DType::F32, &dev).unwrap(),
            written: Var::from_tensor(&Tensor::full(-1f32, k, &dev).unwrap()).unwrap(),
            state: Var::zeros(2, candle_core::DType::F32, &dev).unwrap(),
        }
    }

    /// An empty queue's mean age reads "0.0", not "-0.0" (an empty float sum is −0.0); a
    /// filled one counts updates since each slot was written.
    #[test]
    fn the_queue_reports_its_fill_and_the_age_of_its_keys() {
        let dev = candle_core::Device::Cpu;
        let q = empty_queue(4, 2);
        let (filled, size, mean, _) = q.fill_and_age().unwrap();
        assert_eq!((filled, size), (0, 4));
        assert_eq!(format!("{mean:.1}"), "0.0");
        q.enqueue(&Tensor::ones((2, 2), candle_core::DType::F32, &dev).unwrap())
            .unwrap();
        q.enqueue(&Tensor::ones((1, 2), candle_core::DType::F32, &dev).unwrap())
            .unwrap();
        let (filled, _, mean, ages) = q.fill_and_age().unwrap();
        assert_eq!(filled, 3);
        assert_eq!(ages, vec![1.0, 1.0, 0.0, -1.0]);
        assert!((mean - 2.0 / 3.0).abs() < 1e-9);
    }

    /// A queue saved by an older build before it filled (zero keys in its unwritten slots)
    /// gets random unit vectors there on resume; the keys written stay as they were.
    #[test]
    fn an_older_queues_empty_slots_become_random_unit_keys() {
        let dev = candle_core::Device::Cpu;
        let q = empty_queue(4, 3);
        let key = Tensor::new(&[[0.6f32, 0.8, 0.0]], &dev).unwrap();
        q.enqueue(&key).unwrap();
        assert_eq!(q.fill_unwritten().unwrap(), 3);
        let keys = q.keys.as_tensor().to_vec2::<f32>().unwrap();
        assert_eq!(keys[0], vec![0.6, 0.8, 0.0]);
        for row in &keys[1..] {
            let len: f32 = row.iter().map(|v| v * v).sum::<f32>().sqrt();
            assert!((len - 1.0).abs() < 1e-5, "{row:?}");
        }
        assert_ne!(keys[1], keys[2]);
        let (filled, _, _, ages) = q.fill_and_age().unwrap();
        assert_eq!((filled, ages[0], ages[1]), (1, 0.0, -1.0));
        // The next key still goes to the next slot, and nothing is left to fill.
        let (_, _, ptr, updates) = q.host().unwrap();
        assert_eq!((ptr, updates), (1, 1));
        assert_eq!(q.fill_unwritten().unwrap(), 0);
    }
}
