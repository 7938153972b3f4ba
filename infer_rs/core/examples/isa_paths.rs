//! Which instruction-set paths the golden tests ran on this CPU and which it lacks
//! (`every_isa_path_of_this_cpu_reproduces_the_golden_vectors` runs each supported
//! one), so a test log says what was covered. `make rust-test` prints it.
//!
//! `cargo run -p infer_core --example isa_paths`

use infer_core::Isa;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let info = infer_core::cpu_info()?;
    let names = |supported: bool| {
        let paths: Vec<&str> = Isa::ALL
            .into_iter()
            .filter(|isa| isa.supported() == supported)
            .map(Isa::name)
            .collect();
        if paths.is_empty() {
            "none".to_string()
        } else {
            paths.join(", ")
        }
    };
    println!(
        "instruction-set paths on {}: tested {}; not on this CPU: {}",
        info.model_name,
        names(true),
        names(false)
    );
    Ok(())
}
