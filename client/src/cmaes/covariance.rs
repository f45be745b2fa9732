//! The covariance matrix C and its factorisation `C = B D² Bᵀ`: full (lazily
//! eigendecomposed, on a second thread for large d) or diagonal (separable CMA-ES).

use std::thread::JoinHandle;

use faer::linalg::matmul::matmul;
use faer::linalg::matmul::triangular::{self, BlockStructure};
use faer::{Accum, MatMut, MatRef, Par};
use ndarray::{Array1, Array2, ArrayView1, Axis};
use serde::{Deserialize, Serialize};

/// C with what sampling and whitening need.
#[derive(Debug, Serialize, Deserialize)]
pub enum Covariance {
    Full(Box<FullCovariance>),
    /// The diagonal of C.
    Diagonal(Array1<f64>),
}

/// A full C, its eigenvectors `B` (columns) and the square roots of its eigenvalues `D`.
#[derive(Debug, Serialize, Deserialize)]
pub struct FullCovariance {
    c: Array2<f64>,
    b: Array2<f64>,
    d: Array1<f64>,
    /// `B diag(D)`, so that a sample is `y = B D z`.
    bd: Array2<f64>,
    /// Generation whose C the current `B`, `D` decompose.
    decomposed_at: u64,
    pending: Option<PendingEigen>,
}

/// An eigendecomposition started at one generation and installed at a later, fixed one.
#[derive(Debug, Serialize, Deserialize)]
struct PendingEigen {
    install_at: u64,
    snapshot_at: u64,
    snapshot: Array2<f64>,
    /// The worker computing it; absent after a checkpoint is restored (then it is recomputed
    /// from the snapshot, with the same result).
    #[serde(skip)]
    worker: Option<JoinHandle<Option<Eigen>>>,
}

/// Eigenvectors (columns) and eigenvalues of a symmetric matrix.
#[derive(Debug)]
struct Eigen {
    vectors: Array2<f64>,
    values: Array1<f64>,
}

/// A faer view of a standard-layout (row-major) ndarray matrix.
fn faer_view(a: &Array2<f64>) -> MatRef<'_, f64> {
    let (rows, cols) = a.dim();
    MatRef::from_row_major_slice(a.as_slice().expect("standard layout"), rows, cols)
}

/// A mutable faer view of a standard-layout ndarray matrix.
fn faer_view_mut(a: &mut Array2<f64>) -> MatMut<'_, f64> {
    let (rows, cols) = a.dim();
    MatMut::from_row_major_slice_mut(a.as_slice_mut().expect("standard layout"), rows, cols)
}

/// The eigendecomposition of the lower triangle of `c` (faer, sequential, so deterministic).
fn decompose(c: &Array2<f64>) -> Option<Eigen> {
    let n = c.nrows();
    let evd = faer_view(c).self_adjoint_eigen(faer::Side::Lower).ok()?;
    let values = evd.S().column_vector();
    let vectors = evd.U();
    Some(Eigen {
        vectors: Array2::from_shape_fn((n, n), |(i, j)| vectors[(i, j)]),
        values: Array1::from_shape_fn(n, |i| values[i]),
    })
}

impl Covariance {
    /// The identity, full or diagonal.
    pub fn identity(dim: usize, diagonal: bool) -> Self {
        if diagonal {
            return Self::Diagonal(Array1::ones(dim));
        }
        Self::Full(Box::new(FullCovariance {
            c: Array2::eye(dim),
            b: Array2::eye(dim),
            d: Array1::ones(dim),
            bd: Array2::eye(dim),
            decomposed_at: 0,
            pending: None,
        }))
    }

    /// Maps standard normal rows `z` to rows `y = B D z` with covariance C.
    pub fn sample(&self, z: &Array2<f64>) -> Array2<f64> {
        match self {
            Self::Full(f) => {
                let mut y = Array2::zeros(z.dim());
                let bd = faer_view(&f.bd);
                matmul(
                    faer_view_mut(&mut y),
                    Accum::Replace,
                    faer_view(z),
                    bd.transpose(),
                    1.0,
                    Par::Seq,
                );
                y
            }
            Self::Diagonal(c) => z * &c.mapv(f64::sqrt),
        }
    }

    /// `z = D⁻¹ Bᵀ y`: the standard normal vector that would have produced step `y`.
    pub fn to_standard(&self, y: ArrayView1<f64>) -> Array1<f64> {
        match self {
            Self::Full(f) => f.b.t().dot(&y) / &f.d,
            Self::Diagonal(c) => &y / &c.mapv(f64::sqrt),
        }
    }

    /// `C^{-1/2} y` for a step `y = B D z`, computed from its `z` as `B z`.
    pub fn whiten_from_standard(&self, z: ArrayView1<f64>) -> Array1<f64> {
        match self {
            Self::Full(f) => f.b.dot(&z),
            Self::Diagonal(_) => z.to_owned(),
        }
    }

    /// `C ← decay C + c1 pc pcᵀ + cμ Σ wᵢ yᵢ yᵢᵀ` (rows of `steps`, one weight each).
    pub fn update(
        &mut self,
        decay: f64,
        c_1: f64,
        pc: &Array1<f64>,
        c_mu: f64,
        steps: &Array2<f64>,
        weights: &[f64],
    ) {
        match self {
            Self::Full(f) => {
                // One product for both updates: rows [√c1 pc; √cμ·|w|-scaled steps], signs apart.
                let rows = steps.nrows() + 1;
                let mut left = Array2::zeros((rows, steps.ncols()));
                let mut right = Array2::zeros((rows, steps.ncols()));
                left.row_mut(0).assign(&(pc * c_1));
                right.row_mut(0).assign(pc);
                for (i, (step, w)) in steps.outer_iter().zip(weights).enumerate() {
                    left.row_mut(i + 1).assign(&(&step * (c_mu * w)));
                    right.row_mut(i + 1).assign(&step);
                }
                // Only the lower triangle of C is kept (it is all the eigensolver reads).
                for (i, mut row) in f.c.outer_iter_mut().enumerate() {
                    row.slice_mut(ndarray::s![..=i]).mapv_inplace(|c| decay * c);
                }
                triangular::matmul(
                    faer_view_mut(&mut f.c),
                    BlockStructure::TriangularLower,
                    Accum::Add,
                    faer_view(&left).transpose(),
                    BlockStructure::Rectangular,
                    faer_view(&right),
                    BlockStructure::Rectangular,
                    1.0,
                    Par::Seq,
                );
            }
            Self::Diagonal(c) => {
                let mut rank = pc.mapv(|p| c_1 * p * p);
                for (step, w) in steps.outer_iter().zip(weights) {
                    rank.zip_mut_with(&step, |r, s| *r += c_mu * w * s * s);
                }
                c.zip_mut_with(&rank, |c, r| *c = decay * *c + r);
            }
        }
    }

    /// Keeps `B`, `D` in step with C: decomposes C when `gap` generations have passed since the
    /// last snapshot. With `background`, the work runs on a thread and is installed a gap later,
    /// always at the same generation (so `B`, `D` are at most two gaps old); otherwise at once.
    pub fn refresh(&mut self, generation: u64, gap: u64, background: bool) {
        let Self::Full(f) = self else { return };
        if let Some(pending) = &f.pending {
            if generation >= pending.install_at {
                let mut pending = f.pending.take().expect("pending decomposition");
                let eigen = match pending.worker.take() {
                    Some(worker) => worker.join().ok().flatten(),
                    None => decompose(&pending.snapshot),
                };
                f.install(eigen, pending.snapshot_at);
            }
        }
        if f.pending.is_some() || generation < f.decomposed_at + gap {
            return;
        }
        if !background {
            let eigen = decompose(&f.c);
            f.install(eigen, generation);
            return;
        }
        let snapshot = f.c.clone();
        let input = snapshot.clone();
        f.pending = Some(PendingEigen {
            install_at: generation + gap,
            snapshot_at: generation,
            snapshot,
            worker: Some(std::thread::spawn(move || decompose(&input))),
        });
    }

    /// Standard deviations `sqrt(C_ii)` of the coordinates.
    pub fn std_devs(&self) -> Array1<f64> {
        match self {
            Self::Full(f) => f.c.diag().mapv(f64::sqrt),
            Self::Diagonal(c) => c.mapv(f64::sqrt),
        }
    }

    /// Condition number of C as last decomposed.
    pub fn condition(&self) -> f64 {
        let d = match self {
            Self::Full(f) => f.d.clone(),
            Self::Diagonal(c) => c.mapv(f64::sqrt),
        };
        let max = d.fold(0.0_f64, |a, &b| a.max(b));
        let min = d.fold(f64::INFINITY, |a, &b| a.min(b));
        (max / min).powi(2)
    }

    /// The matrix C (a diagonal one expanded), for inspection and tests.
    pub fn matrix(&self) -> Array2<f64> {
        match self {
            Self::Full(f) => {
                // Only the lower triangle is authoritative; mirror it.
                let mut c = f.c.clone();
                let n = c.nrows();
                for i in 0..n {
                    for j in 0..i {
                        c[[j, i]] = c[[i, j]];
                    }
                }
                c
            }
            Self::Diagonal(c) => Array2::from_diag(c),
        }
    }
}

impl FullCovariance {
    /// Installs a decomposition of the C of generation `at`; a failed one keeps the old factors.
    fn install(&mut self, eigen: Option<Eigen>, at: u64) {
        self.decomposed_at = at;
        let Some(Eigen {
            vectors,
            mut values,
        }) = eigen
        else {
            return;
        };
        // Round-off can leave tiny negative eigenvalues; keep C positive definite.
        let largest = values.fold(0.0_f64, |a, &b| a.max(b));
        let floor = (largest * 1e-20).max(f64::MIN_POSITIVE);
        values.mapv_inplace(|v| v.max(floor));
        self.d = values.mapv(f64::sqrt);
        self.bd = &vectors * &self.d.view().insert_axis(Axis(0));
        self.b = vectors;
    }
}
