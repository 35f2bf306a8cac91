//! The CUDA step equals the CPU step: for every task, the same weights and the same batch give
//! the same loss and parameter gradients on the GPU (candle's CUDA ops) as on the CPU (pretext's
//! own kernels). Where this process cannot use CUDA (a build without the feature, no driver, no
//! GPU), the test prints why and passes without comparing: it is meant for
//! `cargo test --release --features cuda --test cuda` on a GPU machine (scripts/gpu-check.sh).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use std::sync::atomic::AtomicBool;

use candle_core::{Device, Tensor};
use pretext::config::{DataSource, DeviceKind, TaskKind, TaskSettings};
use pretext::model::{Model, device};
use pretext::tasks;

/// Loss and gradient (by parameter name) of one training-mode step of `kinds` on `device`.
fn step(
    kinds: &[TaskKind],
    on: &Device,
    data: &pretext::data::Dataset,
) -> (f32, Vec<(String, Vec<f32>)>) {
    let model = Model::new(on.clone(), tasks::input_channels(kinds)).unwrap();
    let settings = TaskSettings::default();
    let built = tasks::build(kinds, &settings, &model, data).unwrap();
    // Heads are made by the tasks: initialise after building so every parameter is seeded.
    model.init_weights(11).unwrap();
    let indices: Vec<usize> = (0..8).collect();
    let mut total: Option<Tensor> = None;
    for (i, task) in built.iter().enumerate() {
        let batch = task
            .maker()
            .make(data, &indices, 100 + i as u64)
            .upload(on)
            .unwrap();
        let loss = task.forward(&model, &batch, true).unwrap().loss;
        total = Some(match total {
            Some(t) => (t + loss).unwrap(),
            None => loss,
        });
    }
    let total = total.unwrap();
    let grads = total.backward().unwrap();
    let mut g = Vec::new();
    for (name, v) in model.trainable_vars() {
        if let Some(t) = grads.get(&v) {
            let host = t.to_device(&Device::Cpu).unwrap();
            g.push((name, host.flatten_all().unwrap().to_vec1::<f32>().unwrap()));
        }
    }
    let loss = total
        .to_device(&Device::Cpu)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    (loss, g)
}

#[test]
fn a_cuda_step_gives_the_cpu_steps_loss_and_gradients() {
    if let Some(reason) = device::unavailable(DeviceKind::Cuda) {
        eprintln!("skipped: CUDA cannot be used here: {reason}");
        return;
    }
    let gpu = device::open(DeviceKind::Cuda).unwrap();
    let data = pretext::data::load(
        &DataSource::Builtin { count: 16 },
        32,
        &|_, _| {},
        &AtomicBool::new(false),
    )
    .unwrap();
    let mut cases: Vec<Vec<TaskKind>> = TaskKind::ALL.iter().map(|&k| vec![k]).collect();
    cases.push(TaskKind::ALL.to_vec());
    for kinds in cases {
        let (cpu_loss, cpu_grads) = step(&kinds, &Device::Cpu, &data);
        let (gpu_loss, gpu_grads) = step(&kinds, &gpu, &data);
        eprintln!("{kinds:?}: loss cpu {cpu_loss} cuda {gpu_loss}");
        assert!(
            (cpu_loss - gpu_loss).abs() <= 1e-3 * cpu_loss.abs().max(1.0),
            "{kinds:?}: loss {cpu_loss} on the CPU, {gpu_loss} on CUDA"
        );
        assert_eq!(cpu_grads.len(), gpu_grads.len(), "{kinds:?}");
        assert!(
            cpu_grads.len() > 20,
            "{kinds:?}: {} gradients",
            cpu_grads.len()
        );
        for ((name, a), (other, b)) in cpu_grads.iter().zip(&gpu_grads) {
            assert_eq!(name, other);
            let scale = a.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
            let diff = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
            assert!(
                diff / scale < 2e-2,
                "{kinds:?} {name}: gradients differ by {diff} (scale {scale})"
            );
        }
    }
}
