//! The CPU's matmul kernels, chosen at run time for the CPU at hand:
//!
//! - **oneMKL** on Intel CPUs with AVX-512 (and AMX / AVX512-BF16 for bf16): weights prepacked
//!   once at load, f32 or bf16 with f32 accumulation. candle's gemm has only AVX2 kernels there
//!   (111 GFLOP/s against oneMKL's 305 at 2 threads on a Xeon with AMX);
//! - **oneDNN** on other CPUs with AVX512-BF16 (AMD EPYC Zen 4 and later): a matmul primitive
//!   per weight slice, bf16 with f32 accumulation. At 2048 × 576 × 1536 on 2 threads of a Zen 4
//!   its bf16 matmul ran at 390 GFLOP/s, its f32 one at 199, OpenBLAS's at about 170;
//! - **OpenBLAS** everywhere else (AVX2-only EPYCs and Xeons): oneMKL takes slower code paths on
//!   AMD's CPUs. At 1024³ on 2 threads, OpenBLAS / oneMKL / candle's gemm measured 175 / 148 /
//!   136 GFLOP/s on an AMD EPYC with AVX-512 and AVX512-BF16 (Zen 4), and 130–142 / 70–95 / 84
//!   on an AVX2-only one (Zen 3). With its AVX-512 kernels candle's gemm catches up at 1024³
//!   and at prefill on Zen 4, but BBT calls stay faster on OpenBLAS (2.25 against 2.45 s per
//!   prefix call, 0.83 against 1.06 s per suffix call, in the same runs);
//! - **candle's gemm** when neither library can be had (no pip, no network, not x86_64 Linux),
//!   announced once on stderr.
//!
//! `BBT_CPU_KERNELS` overrides the choice: `auto` (default), `mkl`, `openblas`, `onednn` (that
//! library or an error) or `candle` (load no library). `BBT_MKL_LIB` / `BBT_OPENBLAS_LIB` /
//! `BBT_ONEDNN_LIB` name a library file (or its folder) to use instead of the cached wheel.
//!
//! `isa.rs` detects the CPU; `library.rs` finds and opens the libraries; `onednn.rs` holds
//! oneDNN's primitives; `packed.rs` packs weights and multiplies; `aligned.rs` and `dynlib.rs`
//! hold the aligned buffers and the symbol lookup that both libraries use.

mod aligned;
mod dynlib;
mod isa;
mod library;
mod onednn;
mod packed;

use std::sync::OnceLock;

pub use isa::{cpu, CpuInfo};
pub use library::{Blas, BlasKind};
pub use packed::{matmul_nt, sgemm, PackedWeight, Precision};

/// Which kernels run the engine's CPU matmuls, and why.
#[derive(Debug)]
pub enum CpuKernels {
    /// A BLAS library, loaded.
    Blas(Blas),
    /// candle's gemm: no library was wanted or none could be loaded (the reason).
    Candle(String),
}

impl CpuKernels {
    /// The loaded library, if any.
    pub fn blas(&self) -> Option<&Blas> {
        match self {
            Self::Blas(b) => Some(b),
            Self::Candle(_) => None,
        }
    }

    /// A short label for reports and metrics: `onemkl-2026.2`, `openblas-0.3.34`,
    /// `onednn-3.2.0` or `candle-gemm`.
    pub fn label(&self) -> String {
        match self {
            Self::Blas(b) => b.label(),
            Self::Candle(_) => "candle-gemm".into(),
        }
    }

    /// One line for logs: the kernels, the CPU and its ISA, and why a fallback was taken.
    pub fn describe(&self) -> String {
        match self {
            Self::Blas(b) => format!("CPU matmuls: {} on {}", b.label(), cpu()),
            Self::Candle(why) => format!("CPU matmuls: candle's gemm on {} ({why})", cpu()),
        }
    }
}

/// The kernels of this process, chosen on first use (see the module docs).
///
/// # Errors
/// When `BBT_CPU_KERNELS` names a library that cannot be loaded, or an unknown value.
pub fn kernels() -> anyhow::Result<&'static CpuKernels> {
    static KERNELS: OnceLock<Result<CpuKernels, String>> = OnceLock::new();
    KERNELS
        .get_or_init(|| choose(std::env::var("BBT_CPU_KERNELS").unwrap_or_default().trim()))
        .as_ref()
        .map_err(|e| anyhow::anyhow!("{e}"))
}

/// The library `auto` picks for this CPU.
fn preferred_library() -> BlasKind {
    if cpu().is_intel() && cpu().avx512 {
        BlasKind::Mkl
    } else if cpu().has_fast_bf16() {
        BlasKind::OneDnn
    } else {
        BlasKind::OpenBlas
    }
}

fn choose(wanted: &str) -> Result<CpuKernels, String> {
    let forced = match wanted {
        "" | "auto" => None,
        "mkl" => Some(BlasKind::Mkl),
        "openblas" => Some(BlasKind::OpenBlas),
        "onednn" => Some(BlasKind::OneDnn),
        "candle" => return Ok(CpuKernels::Candle("BBT_CPU_KERNELS=candle".into())),
        other => {
            return Err(format!(
                "BBT_CPU_KERNELS={other}: expected auto, mkl, openblas, onednn or candle"
            ))
        }
    };
    let kind = forced.unwrap_or_else(preferred_library);
    match (Blas::locate_and_open(kind), forced) {
        (Ok(b), _) => Ok(CpuKernels::Blas(b)),
        (Err(e), Some(_)) => Err(format!(
            "BBT_CPU_KERNELS={wanted} but the library cannot be loaded: {e:#}"
        )),
        (Err(e), None) => {
            let k = CpuKernels::Candle(format!("{kind:?} unavailable: {e:#}"));
            eprintln!("bbt: {}", k.describe());
            Ok(k)
        }
    }
}

/// Opens `kind`'s library once per process (for tests and benchmarks that compare libraries);
/// `None` when it cannot be loaded here.
pub fn library(kind: BlasKind) -> Option<&'static Blas> {
    static MKL: OnceLock<Option<Blas>> = OnceLock::new();
    static OPENBLAS: OnceLock<Option<Blas>> = OnceLock::new();
    static ONEDNN: OnceLock<Option<Blas>> = OnceLock::new();
    let cell = match kind {
        BlasKind::Mkl => &MKL,
        BlasKind::OpenBlas => &OPENBLAS,
        BlasKind::OneDnn => &ONEDNN,
    };
    if let Some(b) = kernels()
        .ok()
        .and_then(CpuKernels::blas)
        .filter(|b| b.kind() == kind)
    {
        return Some(b);
    }
    cell.get_or_init(|| Blas::locate_and_open(kind).ok())
        .as_ref()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `x @ w^T` computed plainly in f64.
    fn reference(x: &[f32], w: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
        let mut out = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                let s: f64 = (0..k)
                    .map(|t| x[i * k + t] as f64 * w[j * k + t] as f64)
                    .sum();
                out[i * n + j] = s as f32;
            }
        }
        out
    }

    fn pseudo_random(len: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        (0..len)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s % 2001) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    fn max_error(got: &[f32], want: &[f32]) -> f32 {
        got.iter()
            .zip(want)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max)
    }

    fn round_bf16(v: &[f32]) -> Vec<f32> {
        v.iter()
            .map(|&x| half::bf16::from_f32(x).to_f32())
            .collect()
    }

    /// `kind`'s library, or `None` with a note when this machine cannot load it (CI's
    /// `BBT_REQUIRE_BLAS=1` turns the skip into a failure).
    fn loaded(kind: BlasKind) -> Option<&'static Blas> {
        let lib = library(kind);
        if lib.is_none() {
            assert!(
                std::env::var("BBT_REQUIRE_BLAS").map_or(true, |v| v != "1"),
                "BBT_REQUIRE_BLAS=1 but {kind:?} cannot be loaded"
            );
            eprintln!("skipped: {kind:?} cannot be loaded here");
        }
        lib
    }

    #[test]
    fn packed_matmul_matches_the_plain_product_at_any_row_count() {
        for kind in [BlasKind::Mkl, BlasKind::OneDnn] {
            let Some(blas) = loaded(kind) else {
                continue;
            };
            // Odd sizes: slices that are not multiples of the column quantum, k not a multiple
            // of 8.
            let (k, n) = (77, 203);
            let w = pseudo_random(n * k, 1);
            let f32w = PackedWeight::pack(blas, &w, n, k, Precision::F32).unwrap();
            let b16w = PackedWeight::pack(blas, &w, n, k, Precision::Bf16).unwrap();
            assert!(
                f32w.bytes() >= n * k * 4,
                "{kind:?}: {} bytes",
                f32w.bytes()
            );
            for m in [1, 3, 64] {
                let x = pseudo_random(m * k, 10 + m as u32);
                let want = reference(&x, &w, m, k, n);
                let got = f32w.matmul_t(blas, &x, m).unwrap();
                let err = max_error(&got, &want);
                assert!(err < 1e-4, "{kind:?} f32, m = {m}: max error {err}");
                // bf16: exactly the product of the rounded operands, accumulated in f32.
                let want = reference(&round_bf16(&x), &round_bf16(&w), m, k, n);
                let got = b16w.matmul_t(blas, &x, m).unwrap();
                let err = max_error(&got, &want);
                assert!(err < 1e-4, "{kind:?} bf16, m = {m}: max error {err}");
            }
            // A weight packed by one library is refused by another, not misread.
            if let Some(other) = [BlasKind::Mkl, BlasKind::OneDnn]
                .into_iter()
                .filter(|&o| o != kind)
                .find_map(library)
            {
                let err = f32w.matmul_t(other, &pseudo_random(k, 5), 1).unwrap_err();
                assert!(err.to_string().contains("another library"), "{err}");
            }
        }
        if let Some(ob) = loaded(BlasKind::OpenBlas) {
            let err = PackedWeight::pack(ob, &[0.0; 6], 2, 3, Precision::F32)
                .err()
                .unwrap();
            assert!(err.to_string().contains("does not pack weights"), "{err}");
        }
    }

    #[test]
    fn every_library_multiplies_plain_matrices_like_the_reference() {
        let (m, k, n) = (5, 33, 70);
        let a = pseudo_random(m * k, 3);
        let b = pseudo_random(k * n, 4);
        // reference() takes the right operand as [n, k]: transpose b.
        let bt: Vec<f32> = (0..n)
            .flat_map(|j| (0..k).map(move |t| (j, t)))
            .map(|(j, t)| b[t * n + j])
            .collect();
        let want = reference(&a, &bt, m, k, n);
        for kind in [BlasKind::Mkl, BlasKind::OpenBlas, BlasKind::OneDnn] {
            let Some(blas) = loaded(kind) else { continue };
            for got in [
                sgemm(blas, &a, &b, m, k, n).unwrap(),
                matmul_nt(blas, &a, &bt, m, k, n).unwrap(),
            ] {
                let err = max_error(&got, &want);
                assert!(err < 1e-4, "{kind:?}: max error {err}");
            }
        }
    }

    #[test]
    fn kernel_choice_follows_the_environment_and_rejects_garbage() {
        let err = choose("fast").unwrap_err();
        assert!(
            err.contains("expected auto, mkl, openblas, onednn or candle"),
            "{err}"
        );
        let k = choose("candle").unwrap();
        assert!(k.blas().is_none());
        assert_eq!(k.label(), "candle-gemm");
        assert!(
            k.describe().contains("BBT_CPU_KERNELS=candle"),
            "{}",
            k.describe()
        );
    }
}
