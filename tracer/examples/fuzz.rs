//! Long fuzzing runs: `cargo run --release --features fuzz --example fuzz -- SECS [TARGET...]` runs
//! each target (all by default) for SECS seconds and prints executions, rate and
//! crashes (inputs saved in target/fuzz-crashes/). See `tracer::fuzz`.

fn main() {
    let mut args = std::env::args().skip(1);
    let secs: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(10);
    let only: Vec<String> = args.collect();
    let mut failed = false;
    for target in tracer::fuzz::targets() {
        if !only.is_empty() && !only.iter().any(|o| o == target.name) {
            continue;
        }
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| u64::from(d.subsec_nanos()) ^ d.as_secs());
        let out = tracer::fuzz::fuzz(
            &target,
            tracer::fuzz::Budget::Time(std::time::Duration::from_secs(secs)),
            seed,
        );
        #[expect(clippy::cast_precision_loss, reason = "a rate for display")]
        let rate = out.executions as f64 / out.elapsed.as_secs_f64().max(1e-9);
        println!(
            "fuzz {:<9} {:>10} executions in {:>5.0} s ({:>7.0}/s), {} seeds, seed {seed:#x}: {} crashes",
            target.name,
            out.executions,
            out.elapsed.as_secs_f64(),
            rate,
            tracer::fuzz::seeds(&target).len(),
            out.crashes.len()
        );
        for (msg, input) in &out.crashes {
            println!("  crash: {msg} ({} bytes)", input.len());
            failed = true;
        }
    }
    if failed {
        std::process::exit(1);
    }
}
