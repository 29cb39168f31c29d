//! With the `mkl` feature, links MKL's sgemm statically from `$MKLROOT/lib` (sequential layer:
//! largo's rayon pool stays the only thread pool). `pip install --prefix DIR mkl-static
//! mkl-include` then `MKLROOT=DIR` provides one offline.

fn main() {
    println!("cargo:rerun-if-env-changed=MKLROOT");
    if std::env::var_os("CARGO_FEATURE_MKL").is_none() {
        return;
    }
    let Some(root) = std::env::var_os("MKLROOT") else {
        panic!("the `mkl` feature needs MKLROOT pointing at an MKL install with lib/libmkl_core.a");
    };
    let lib = std::path::Path::new(&root).join("lib");
    if !lib.join("libmkl_core.a").is_file() {
        panic!("MKLROOT={}: no lib/libmkl_core.a there", lib.display());
    }
    println!("cargo:rustc-link-search=native={}", lib.display());
    // MKL's static libraries refer to each other in a cycle: list them twice (the second time by
    // file name, so rustc sees distinct libraries) instead of linker-group flags, which a
    // library's build script cannot pass on to the final link.
    let libs = ["mkl_intel_lp64", "mkl_sequential", "mkl_core"];
    for l in libs {
        println!("cargo:rustc-link-lib=static:-bundle={l}");
    }
    for l in libs {
        println!("cargo:rustc-link-lib=static:-bundle,+verbatim=lib{l}.a");
    }
    for l in ["pthread", "m", "dl"] {
        println!("cargo:rustc-link-lib=dylib={l}");
    }
}
