//! The engine's helper thread uses no CPU while no call is running (it parks after a
//! short spin). Its own process, so that no other test calls the engine meanwhile.

use candle_core::{Device, Tensor};
use infer_core::internals::{Activation, Dense, Mlp};
use std::time::Duration;

/// CPU time (ns) of the thread named `name`, from /proc/self/task/*/schedstat.
fn thread_cpu_ns(name: &str) -> Option<u64> {
    std::fs::read_dir("/proc/self/task").ok()?.find_map(|task| {
        let dir = task.ok()?.path();
        let comm = std::fs::read_to_string(dir.join("comm")).ok()?;
        let stat = std::fs::read_to_string(dir.join("schedstat")).ok()?;
        (comm.trim() == name).then(|| stat.split_whitespace().next()?.parse().ok())?
    })
}

#[test]
fn helper_uses_no_cpu_between_calls() {
    if rayon::current_num_threads() < 2 {
        println!("skipped: one thread allowed, so no helper");
        return;
    }
    let dev = Device::Cpu;
    let weight = Tensor::randn(0f32, 0.1, (784, 400), &dev).unwrap();
    let bias = Tensor::zeros(784, candle_core::DType::F32, &dev).unwrap();
    let mlp = Mlp::new(vec![
        Dense::new(&weight, &bias, Activation::Sigmoid).unwrap()
    ]);
    let x = vec![0.5f32; 400];
    for _ in 0..100 {
        std::hint::black_box(mlp.forward(&x, 1));
    }
    std::thread::sleep(Duration::from_millis(20)); // past the helper's spin
    let Some(before) = thread_cpu_ns("infer-pair") else {
        println!("skipped: no /proc/self/task schedstat on this system");
        return;
    };
    std::thread::sleep(Duration::from_millis(500));
    let used = thread_cpu_ns("infer-pair").unwrap() - before;
    assert!(
        used < 100_000,
        "the idle helper used {used} ns of CPU in 0.5 s"
    );
}
