//! Shared by the PyTorch parity tests.

/// max |got − want| / max |want|: the relative error over a whole tensor.
#[track_caller]
pub fn assert_close(what: &str, got: &[f32], want: &[f32], tol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want
        .iter()
        .fold(0f64, |m, &w| m.max(w.abs() as f64))
        .max(1e-12);
    let err = got
        .iter()
        .zip(want)
        .fold(0f64, |m, (&g, &w)| m.max((g as f64 - w as f64).abs()));
    assert!(
        err / scale <= tol,
        "{what}: relative error {:.3e} > {tol:.0e}",
        err / scale
    );
}
