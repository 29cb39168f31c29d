//! Which vector instructions the kernels use: detected once per process, capped by the
//! environment variable `LARGO_ISA` (`portable`, `avx2` or `avx512`) so that one machine can
//! measure and test the paths another CPU takes, e.g. an AVX2-only EPYC's on an AVX-512 one.
//!
//! Every runtime-dispatched kernel asks [`avx512`] or [`avx2`] instead of the CPU directly. The
//! gemm crate detects on its own: its AVX-512 kernels are compiled in by the `gemm-avx512`
//! cargo feature (on by default), so an AVX2-only run needs `LARGO_ISA=avx2` and a build
//! without that feature; [`describe`] says which ISA the GEMMs use.

/// Instruction-set tiers, lowest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isa {
    /// The target's baseline (SSE2 on x86-64): plain loops the compiler vectorises 4 wide.
    Portable,
    /// AVX2 + FMA (+ F16C): 8 lanes, fused multiply-add.
    Avx2,
    /// AVX-512 F (with AVX2 + FMA): 16 lanes.
    Avx512,
}

impl Isa {
    pub fn name(self) -> &'static str {
        match self {
            Isa::Portable => "portable",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
        }
    }

    fn parse(s: &str) -> Option<Isa> {
        match s {
            "portable" => Some(Isa::Portable),
            "avx2" => Some(Isa::Avx2),
            "avx512" => Some(Isa::Avx512),
            _ => None,
        }
    }
}

/// The best tier this CPU has.
pub fn detected() -> Isa {
    #[cfg(target_arch = "x86_64")]
    {
        let avx2 = std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
            && std::arch::is_x86_feature_detected!("f16c");
        if avx2 && std::arch::is_x86_feature_detected!("avx512f") {
            return Isa::Avx512;
        }
        if avx2 {
            return Isa::Avx2;
        }
    }
    Isa::Portable
}

/// `LARGO_ISA` checked: None when unset, an error naming the value when it is not a tier.
pub fn requested() -> crate::Result<Option<Isa>> {
    match std::env::var("LARGO_ISA") {
        Err(_) => Ok(None),
        Ok(v) if v.is_empty() => Ok(None),
        Ok(v) => Isa::parse(&v).map(Some).ok_or_else(|| {
            crate::Error::Invalid(format!(
                "LARGO_ISA=`{v}`: expected `portable`, `avx2` or `avx512`"
            ))
        }),
    }
}

/// The tier the kernels use: the CPU's, lowered to `LARGO_ISA` when that is set (an unknown
/// value is ignored here; the CLI refuses it through [`requested`] before any kernel runs).
pub fn isa() -> Isa {
    static ISA: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
    *ISA.get_or_init(|| {
        let cpu = detected();
        match requested() {
            Ok(Some(cap)) => cap.min(cpu),
            _ => cpu,
        }
    })
}

/// Whether kernels may use AVX-512 F (and AVX2, FMA, F16C).
pub fn avx512() -> bool {
    isa() >= Isa::Avx512
}

/// Whether kernels may use AVX2, FMA and F16C.
pub fn avx2() -> bool {
    isa() >= Isa::Avx2
}

/// The ISA of the gemm crate's f32 kernels in this build on this CPU.
pub fn gemm_crate_isa() -> Isa {
    let cpu = detected();
    if cfg!(feature = "gemm-avx512") {
        cpu
    } else {
        cpu.min(Isa::Avx2)
    }
}

/// One line for benchmark headers: the kernels' tier, and the GEMMs' when they differ.
pub fn describe() -> String {
    let (k, g) = (isa(), gemm_crate_isa());
    if k == g {
        format!("kernels: {}", k.name())
    } else {
        format!(
            "kernels: {}, gemm crate: {} (build without the gemm-avx512 feature to match)",
            k.name(),
            g.name()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiers_parse_and_order() {
        assert_eq!(Isa::parse("avx2"), Some(Isa::Avx2));
        assert_eq!(Isa::parse("AVX2"), None);
        assert!(Isa::Portable < Isa::Avx2 && Isa::Avx2 < Isa::Avx512);
        assert!(isa() <= detected());
    }
}
