//! What the engine costs while idle: 1,000 batch-1 VAE decodes (784-400-200-20 sizes),
//! then the CPU time every engine thread uses over 10 s without calls, and the
//! batch-1 latency with the helper warm (calls back to back) and cold (1 ms apart,
//! so it has parked).
//!
//! `cargo run --release -p infer_core --example idle_cpu [idle seconds]`

use candle_core::{Device, Tensor};
use infer_core::internals::{Activation, Dense, Mlp};
use std::time::{Duration, Instant};

/// (thread id, name, CPU time in ns) of each thread of this process, from
/// /proc/self/task/*/schedstat (first field: time on the CPU).
fn thread_cpu_ns() -> Vec<(String, String, u64)> {
    let mut threads = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").expect("/proc/self/task") {
        let dir = task.expect("task").path();
        let tid = dir
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let name = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        let stat = std::fs::read_to_string(dir.join("schedstat")).unwrap_or_default();
        let ns = stat.split_whitespace().next().and_then(|v| v.parse().ok());
        threads.push((tid, name.trim().to_string(), ns.unwrap_or(0)));
    }
    threads
}

fn decoder() -> Mlp {
    let dev = Device::Cpu;
    let widths = [20, 200, 400, 784];
    let layers = widths
        .windows(2)
        .map(|w| {
            let weight = Tensor::randn(0f32, 0.05, (w[1], w[0]), &dev).expect("weight");
            let bias = Tensor::randn(0f32, 0.05, w[1], &dev).expect("bias");
            Dense::new(&weight, &bias, Activation::Tanh).expect("layer")
        })
        .collect();
    Mlp::new(layers)
}

/// Mean latency of `calls` batch-1 decodes, sleeping `gap` before each (not timed).
fn latency(mlp: &Mlp, z: &[f32], calls: u32, gap: Duration) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..calls {
        if !gap.is_zero() {
            std::thread::sleep(gap);
        }
        let start = Instant::now();
        std::hint::black_box(mlp.forward(z, 1));
        total += start.elapsed();
    }
    total / calls
}

fn main() {
    let idle: u64 = std::env::args()
        .nth(1)
        .map_or(10, |s| s.parse().expect("idle seconds"));
    let mlp = decoder();
    let z = vec![0.1f32; 20];
    let warm = latency(&mlp, &z, 1000, Duration::ZERO);
    let cold = latency(&mlp, &z, 200, Duration::from_millis(1));
    println!(
        "isa {}, threads {}",
        infer_core::isa().expect("INFER_RS_ISA"),
        rayon::current_num_threads()
    );
    println!("batch-1 decode: {warm:?} back to back, {cold:?} 1 ms apart");
    let before = thread_cpu_ns();
    std::thread::sleep(Duration::from_secs(idle));
    let after = thread_cpu_ns();
    let mut total = 0;
    for (tid, name, ns) in &after {
        let was = before.iter().find(|b| &b.0 == tid).map_or(0, |b| b.2);
        total += ns - was;
        println!("  {name} ({tid}): {} us", (ns - was) / 1000);
    }
    println!("all threads: {} us of CPU over {idle} s idle", total / 1000);
}
