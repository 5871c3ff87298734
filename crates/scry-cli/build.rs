//! Link-time fix-up for the `native` feature (libunwind, for `scry dump --native`).
//!
//! Rust's own unwinder calls `_Unwind_*` functions. Linked with `-lunwind` (py-spy's
//! remoteprocess), those references are satisfied by the build machine's libunwind, and libgcc_s
//! is dropped as not needed. A libunwind that no longer exports `_Unwind_*` (Debian's 1.8, as in
//! a newer container or chroot) then leaves the binary unable to start. Keeping libgcc_s
//! as a needed library lets the loader find them there.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var_os("CARGO_FEATURE_NATIVE").is_some() {
        println!("cargo:rustc-link-arg-bins=-Wl,--push-state,--no-as-needed,-lgcc_s,--pop-state");
    }
}
