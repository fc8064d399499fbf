//! How this binary was built and what it found at run time, for the results' env.json.

use serde_json::{json, Value};

/// Build settings recorded by build.rs, plus the CPU features gemm can dispatch to here.
pub fn build_info() -> Value {
    json!({
        "crate": env!("CARGO_PKG_NAME"),
        "version": env!("CARGO_PKG_VERSION"),
        "profile": env!("RANKBENCH_BUILD_PROFILE"),
        "opt_level": env!("RANKBENCH_BUILD_OPT_LEVEL"),
        "lto": env!("RANKBENCH_BUILD_LTO"),
        "codegen_units": env!("RANKBENCH_BUILD_CODEGEN_UNITS"),
        "panic": env!("RANKBENCH_BUILD_PANIC"),
        "debug": env!("RANKBENCH_BUILD_DEBUG"),
        "rustflags": env!("RANKBENCH_BUILD_RUSTFLAGS"),
        "rustc": env!("RANKBENCH_BUILD_RUSTC"),
        "target": env!("RANKBENCH_BUILD_TARGET"),
        "target_features": env!("RANKBENCH_BUILD_TARGET_FEATURES"),
        "crates": crate_versions(),
        "runtime_cpu_features": runtime_cpu_features(),
        "candle_threads": candle_core::utils::get_num_threads(),
    })
}

fn crate_versions() -> Value {
    let pairs = env!("RANKBENCH_BUILD_CRATES").split(',').filter_map(|pair| pair.split_once('='));
    Value::Object(pairs.map(|(name, version)| (name.to_owned(), json!(version))).collect())
}

fn runtime_cpu_features() -> Vec<&'static str> {
    #[cfg(target_arch = "x86_64")]
    {
        let mut found = Vec::new();
        macro_rules! probe {
            ($($feature:tt),*) => {
                $(if std::arch::is_x86_feature_detected!($feature) { found.push($feature); })*
            };
        }
        probe!("sse4.2", "avx", "avx2", "fma", "f16c", "avx512f");
        found
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        Vec::new()
    }
}
