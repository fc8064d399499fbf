//! Records the Cargo profile and opt-level the extension was built with (`build_info()`), so that
//! results can show that the measured code was a release build.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    for (cargo_var, name) in [("PROFILE", "PROFILE"), ("OPT_LEVEL", "OPT_LEVEL")] {
        let value = std::env::var(cargo_var).unwrap_or_else(|_| "unknown".into());
        println!("cargo:rustc-env=RANKBENCH_CANDLE_{name}={value}");
    }
}
