//! BLAS libraries loaded at run time from pinned wheels of the package index, fetched into the
//! asset cache on first use (sha256-checked, like the models):
//!
//! - **oneMKL** (`mkl`): `cblas_sgemm` plus prepacked weights in f32 (`cblas_sgemm_pack`) and
//!   bf16 with f32 accumulation (`cblas_gemm_bf16bf16f32_pack`: AMX or AVX512-BF16 where the
//!   CPU has them), opened with its sequential threading layer;
//! - **OpenBLAS** (`scipy-openblas32`): `cblas_sgemm`, one thread per call;
//! - **oneDNN** (`onednn-cpu-gomp`): matmul primitives per prepared weight, f32 or bf16 with
//!   f32 accumulation (see [`super::onednn`]), and `dnnl_sgemm`.
//!
//! Either way bbt splits each matmul over its own rayon threads (see [`super::packed`]), so no
//! second thread pool competes with rayon's for the cores.

use std::path::{Path, PathBuf};

use super::dynlib::symbol;
use super::onednn;
use crate::assets::{self, PackageSpec, MKL_WHEEL, ONEDNN_WHEEL, OPENBLAS_WHEEL};

/// `CBLAS_LAYOUT`, `CBLAS_TRANSPOSE`, `CBLAS_IDENTIFIER` and the packed marker, as in `mkl.h`.
pub(super) const ROW_MAJOR: i32 = 101;
pub(super) const NO_TRANS: i32 = 111;
pub(super) const TRANS: i32 = 112;
pub(super) const B_MATRIX: i32 = 162;
pub(super) const PACKED: i32 = 151;
/// `MKL_THREADING_SEQUENTIAL`.
const MKL_THREADING_SEQUENTIAL: i32 = 1;

/// oneMKL's files bbt unpacks from its wheel: the dispatcher, the LP64 interface, the
/// sequential layer, the core and its per-ISA kernels.
const MKL_MEMBERS: [&str; 9] = [
    "mkl-2026.2.0.data/data/lib/libmkl_rt.so.3",
    "mkl-2026.2.0.data/data/lib/libmkl_intel_lp64.so.3",
    "mkl-2026.2.0.data/data/lib/libmkl_sequential.so.3",
    "mkl-2026.2.0.data/data/lib/libmkl_core.so.3",
    "mkl-2026.2.0.data/data/lib/libmkl_def.so.3",
    "mkl-2026.2.0.data/data/lib/libmkl_mc3.so.3",
    "mkl-2026.2.0.data/data/lib/libmkl_avx2.so.3",
    "mkl-2026.2.0.data/data/lib/libmkl_avx512.so.3",
    "mkl-2026.2.0.data/data/lib/libmkl_avx10.so.3",
];
const MKL_FILE: &str = "libmkl_rt.so.3";
const OPENBLAS_MEMBERS: [&str; 1] = ["scipy_openblas32/lib/libscipy_openblas.so"];
const OPENBLAS_FILE: &str = "libscipy_openblas.so";
const ONEDNN_MEMBERS: [&str; 1] = ["onednn_cpu_gomp-2023.2.0.data/data/lib/libdnnl.so.3"];
const ONEDNN_FILE: &str = "libdnnl.so.3";

pub(super) type SgemmFn = unsafe extern "C" fn(
    i32,
    i32,
    i32,
    i32,
    i32,
    i32,
    f32,
    *const f32,
    i32,
    *const f32,
    i32,
    f32,
    *mut f32,
    i32,
);
type PackGetSizeFn = unsafe extern "C" fn(i32, i32, i32, i32) -> usize;
type SgemmPackFn =
    unsafe extern "C" fn(i32, i32, i32, i32, i32, i32, f32, *const f32, i32, *mut f32);
type SgemmComputeFn = unsafe extern "C" fn(
    i32,
    i32,
    i32,
    i32,
    i32,
    i32,
    *const f32,
    i32,
    *const f32,
    i32,
    f32,
    *mut f32,
    i32,
);
type Bf16PackFn = unsafe extern "C" fn(i32, i32, i32, i32, i32, i32, *const u16, i32, *mut u16);
type Bf16ComputeFn = unsafe extern "C" fn(
    i32,
    i32,
    i32,
    i32,
    i32,
    i32,
    f32,
    *const u16,
    i32,
    *const u16,
    i32,
    f32,
    *mut f32,
    i32,
);

/// oneMKL's packed-weight entry points.
pub(super) struct MklPacking {
    pub sgemm_pack_get_size: PackGetSizeFn,
    pub sgemm_pack: SgemmPackFn,
    pub sgemm_compute: SgemmComputeFn,
    pub bf16_pack_get_size: PackGetSizeFn,
    pub bf16_pack: Bf16PackFn,
    pub bf16_compute: Bf16ComputeFn,
}

/// Which library a [`Blas`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlasKind {
    /// Intel oneMKL.
    Mkl,
    /// OpenBLAS, as built for SciPy.
    OpenBlas,
    /// Intel oneDNN.
    OneDnn,
}

/// What a loaded library offers: a CBLAS `sgemm` (oneMKL, OpenBLAS), prepacked weights
/// (oneMKL, oneDNN).
pub(super) enum Backend {
    Mkl { sgemm: SgemmFn, packing: MklPacking },
    OpenBlas { sgemm: SgemmFn },
    OneDnn(Box<onednn::Api>),
}

/// A loaded BLAS library and the entry points bbt calls.
pub struct Blas {
    kind: BlasKind,
    pub(super) backend: Backend,
    release: String,
    path: PathBuf,
    // Keeps the code behind the function pointers mapped; dropped last.
    _lib: libloading::Library,
}

impl std::fmt::Debug for Blas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Blas")
            .field("kind", &self.kind)
            .field("release", &self.release)
            .field("path", &self.path)
            .finish()
    }
}

impl Blas {
    /// Opens oneMKL's `libmkl_rt` at `path` with the sequential threading layer.
    pub fn open_mkl(path: &Path) -> anyhow::Result<Self> {
        // SAFETY: loading runs the library's initialisers (libmkl_rt's only set up its
        // dispatcher); every symbol is resolved with the signature `mkl.h` declares for it.
        unsafe {
            let lib = libloading::Library::new(path)
                .map_err(|e| anyhow::anyhow!("cannot load {}: {e}", path.display()))?;
            let set_layer: unsafe extern "C" fn(i32) -> i32 =
                symbol(&lib, "MKL_Set_Threading_Layer")?;
            set_layer(MKL_THREADING_SEQUENTIAL);
            let get_version: unsafe extern "C" fn(*mut u8, i32) =
                symbol(&lib, "MKL_Get_Version_String")?;
            let mut buf = [0u8; 256];
            get_version(buf.as_mut_ptr(), buf.len() as i32);
            let line = String::from_utf8_lossy(&buf).into_owned();
            let release = line
                .split("Version ")
                .nth(1)
                .and_then(|v| v.split(['-', ' ']).next())
                .unwrap_or("unknown")
                .to_string();
            Ok(Self {
                kind: BlasKind::Mkl,
                backend: Backend::Mkl {
                    sgemm: symbol(&lib, "cblas_sgemm")?,
                    packing: MklPacking {
                        sgemm_pack_get_size: symbol(&lib, "cblas_sgemm_pack_get_size")?,
                        sgemm_pack: symbol(&lib, "cblas_sgemm_pack")?,
                        sgemm_compute: symbol(&lib, "cblas_sgemm_compute")?,
                        bf16_pack_get_size: symbol(&lib, "cblas_gemm_bf16bf16f32_pack_get_size")?,
                        bf16_pack: symbol(&lib, "cblas_gemm_bf16bf16f32_pack")?,
                        bf16_compute: symbol(&lib, "cblas_gemm_bf16bf16f32_compute")?,
                    },
                },
                release,
                path: path.to_path_buf(),
                _lib: lib,
            })
        }
    }

    /// Opens SciPy's OpenBLAS build at `path`, one thread per call.
    pub fn open_openblas(path: &Path) -> anyhow::Result<Self> {
        // SAFETY: as for oneMKL; the symbols carry SciPy's `scipy_` prefix and the standard
        // CBLAS signatures.
        unsafe {
            let lib = libloading::Library::new(path)
                .map_err(|e| anyhow::anyhow!("cannot load {}: {e}", path.display()))?;
            let set_threads: unsafe extern "C" fn(i32) =
                symbol(&lib, "scipy_openblas_set_num_threads")?;
            set_threads(1);
            let release = OPENBLAS_WHEEL
                .requirement
                .split("==")
                .nth(1)
                .and_then(|v| v.get(..6))
                .unwrap_or("unknown")
                .to_string();
            Ok(Self {
                kind: BlasKind::OpenBlas,
                backend: Backend::OpenBlas {
                    sgemm: symbol(&lib, "scipy_cblas_sgemm")?,
                },
                release,
                path: path.to_path_buf(),
                _lib: lib,
            })
        }
    }

    /// Opens oneDNN's `libdnnl.so.3` at `path` (3.x, GNU OpenMP runtime).
    pub fn open_onednn(path: &Path) -> anyhow::Result<Self> {
        // SAFETY: loading runs oneDNN's initialisers (and GNU OpenMP's, which it links); the
        // symbols are resolved with `dnnl.h`'s signatures after checking the major version.
        unsafe {
            let lib = libloading::Library::new(path)
                .map_err(|e| anyhow::anyhow!("cannot load {}: {e}", path.display()))?;
            let (api, release) = onednn::Api::open(&lib)?;
            Ok(Self {
                kind: BlasKind::OneDnn,
                backend: Backend::OneDnn(Box::new(api)),
                release,
                path: path.to_path_buf(),
                _lib: lib,
            })
        }
    }

    /// Finds `kind`'s library (`BBT_MKL_LIB` / `BBT_OPENBLAS_LIB` / `BBT_ONEDNN_LIB`, else the
    /// asset cache, fetching the pinned wheel on first use) and opens it.
    pub fn locate_and_open(kind: BlasKind) -> anyhow::Result<Self> {
        let (var, spec, members, file): (_, _, &[&str], _) = match kind {
            BlasKind::Mkl => ("BBT_MKL_LIB", &MKL_WHEEL, &MKL_MEMBERS, MKL_FILE),
            BlasKind::OpenBlas => (
                "BBT_OPENBLAS_LIB",
                &OPENBLAS_WHEEL,
                &OPENBLAS_MEMBERS,
                OPENBLAS_FILE,
            ),
            BlasKind::OneDnn => (
                "BBT_ONEDNN_LIB",
                &ONEDNN_WHEEL,
                &ONEDNN_MEMBERS,
                ONEDNN_FILE,
            ),
        };
        let path = match std::env::var_os(var).filter(|s| !s.is_empty()) {
            Some(p) => {
                let p = PathBuf::from(p);
                if p.is_dir() {
                    p.join(file)
                } else {
                    p
                }
            }
            None => fetch(spec, members)?.join(file),
        };
        match kind {
            BlasKind::Mkl => Self::open_mkl(&path),
            BlasKind::OpenBlas => Self::open_openblas(&path),
            BlasKind::OneDnn => Self::open_onednn(&path),
        }
    }

    /// Which library this is.
    pub fn kind(&self) -> BlasKind {
        self.kind
    }

    /// Whether weights are prepacked (oneMKL, oneDNN) and bf16 matmuls run in the library.
    pub fn packs_weights(&self) -> bool {
        !matches!(self.backend, Backend::OpenBlas { .. })
    }

    /// Whether this library's bf16 matmuls are faster than its f32 ones on this CPU: oneDNN on
    /// any CPU with AMX or AVX512-BF16, oneMKL only on Intel's. oneMKL does not use AVX512-BF16
    /// on AMD's CPUs (on an AMD EPYC Zen 4 its bf16 matmul ran at 127 GFLOP/s against 148 for
    /// its f32 one, where oneDNN's reached 381), and OpenBLAS's wheel has no bf16 matmul.
    pub fn has_fast_bf16(&self) -> bool {
        let cpu = super::cpu();
        match self.backend {
            Backend::OneDnn(_) => cpu.has_fast_bf16(),
            Backend::Mkl { .. } => cpu.is_intel() && cpu.has_fast_bf16(),
            Backend::OpenBlas { .. } => false,
        }
    }

    /// A short label for reports and metrics: `onemkl-2026.2`, `openblas-0.3.34`,
    /// `onednn-3.2.0`.
    pub fn label(&self) -> String {
        match self.kind {
            BlasKind::Mkl => format!("onemkl-{}", self.release),
            BlasKind::OpenBlas => format!("openblas-{}", self.release),
            BlasKind::OneDnn => format!("onednn-{}", self.release),
        }
    }

    /// Where the library was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The unpacked library folder of `spec` in the asset cache, fetched on first use.
fn fetch(spec: &PackageSpec, members: &[&str]) -> anyhow::Result<PathBuf> {
    if !cfg!(all(target_os = "linux", target_arch = "x86_64")) {
        anyhow::bail!("the BLAS wheels are only used on x86_64 Linux");
    }
    let root = assets::cache_dir().join("unpacked").join(spec.name);
    let file = members[0].rsplit('/').next().unwrap_or(members[0]);
    if !root.join(file).is_file() {
        eprintln!(
            "fetching {} ({} MB, once) for fast CPU matmuls ...",
            spec.requirement,
            spec.size / 1_000_000
        );
    }
    Ok(assets::ensure_unpacked(spec, members)?)
}
