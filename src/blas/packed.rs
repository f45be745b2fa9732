//! Matmuls through a loaded BLAS, split over rayon's threads by output columns: against
//! weights prepacked once, at load, into oneMKL's internal layout or for oneDNN's matmul
//! primitives ([`PackedWeight`]), or against a plain row-major weight ([`matmul_nt`], any
//! library), and `a @ b` ([`sgemm`]).
//!
//! Each thread owns a slice of the output columns (for a packed weight, a slice of its rows
//! packed separately) and runs the single-threaded library on it: the threads never write the
//! same output element, so results do not depend on scheduling.

use rayon::prelude::*;

use super::aligned::AlignedBuf;
use super::library::{Backend, Blas, MklPacking, B_MATRIX, NO_TRANS, PACKED, ROW_MAJOR, TRANS};
use super::onednn;

/// The element type of a packed weight (and of the activations multiplied with it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    /// f32 weights and activations.
    F32,
    /// bf16 weights and activations (rounded to nearest even), f32 accumulation and output.
    Bf16,
}

/// Output columns per packed slice are a multiple of this (whole vector registers).
const COLUMN_QUANTUM: usize = 16;

/// Output columns `start .. start + len`, packed.
struct Slice {
    start: usize,
    len: usize,
    data: SliceData,
}

/// A slice's packed form, per library.
enum SliceData {
    /// oneMKL's packed buffer.
    Mkl(AlignedBuf),
    /// A oneDNN matmul primitive with its reordered weight.
    OneDnn(onednn::Matmul),
}

/// A `[out, in]` weight packed for `x @ W^T`.
pub struct PackedWeight {
    out_features: usize,
    in_features: usize,
    precision: Precision,
    slices: Vec<Slice>,
}

/// The output pointer shared by the threads, each writing its own columns.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: threads write disjoint column ranges of the output (see `PackedWeight::matmul_t`).
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// The pointer `offset` elements on (a method, so closures capture the whole `OutPtr`).
    ///
    /// # Safety
    /// `offset` must stay inside the output buffer.
    unsafe fn at(self, offset: usize) -> *mut f32 {
        self.0.add(offset)
    }
}

/// A `[len]` matmul output that `fill` writes in full, allocated without zeroing it first (with
/// beta = 0 a BLAS routine writes every output element and never reads the old ones).
///
/// # Safety
/// `fill` must write all `len` elements behind the pointer it is given when it succeeds.
unsafe fn filled_output(
    len: usize,
    fill: impl FnOnce(OutPtr) -> anyhow::Result<()>,
) -> anyhow::Result<Vec<f32>> {
    let mut out = Vec::with_capacity(len);
    fill(OutPtr(out.as_mut_ptr()))?;
    // SAFETY: the caller's `fill` initialised the `len` elements of the capacity.
    unsafe { out.set_len(len) };
    Ok(out)
}

impl PackedWeight {
    /// Packs `weight` (`[out, in]`, row-major) in `precision`, in as many slices as rayon has
    /// threads (fewer for narrow weights).
    ///
    /// # Errors
    /// If `blas` cannot pack weights (OpenBLAS: see [`Blas::packs_weights`]) or oneDNN refuses
    /// the shape.
    pub fn pack(
        blas: &Blas,
        weight: &[f32],
        out_features: usize,
        in_features: usize,
        precision: Precision,
    ) -> anyhow::Result<Self> {
        assert_eq!(weight.len(), out_features * in_features, "weight shape");
        let slices = column_slices(out_features)
            .into_par_iter()
            .map(|(start, len)| {
                let src = &weight[start * in_features..(start + len) * in_features];
                let data = match &blas.backend {
                    Backend::Mkl { packing, .. } => {
                        SliceData::Mkl(mkl_pack(packing, src, len, in_features, precision))
                    }
                    Backend::OneDnn(api) => {
                        let rounded: Vec<u16>;
                        let w = match precision {
                            Precision::F32 => onednn::Weights::F32(src),
                            Precision::Bf16 => {
                                rounded = src.iter().map(|&v| bf16_bits(v)).collect();
                                onednn::Weights::Bf16(&rounded)
                            }
                        };
                        SliceData::OneDnn(onednn::Matmul::new(
                            api,
                            w,
                            len,
                            in_features,
                            out_features,
                        )?)
                    }
                    Backend::OpenBlas { .. } => {
                        anyhow::bail!("{} does not pack weights", blas.label())
                    }
                };
                Ok(Slice { start, len, data })
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Self {
            out_features,
            in_features,
            precision,
            slices,
        })
    }

    /// `x @ W^T` for `x` `[m, in]` (row-major): returns `[m, out]`.
    ///
    /// # Errors
    /// When oneDNN fails to run (it checked the shapes when the weight was packed).
    pub fn matmul_t(&self, blas: &Blas, x: &[f32], m: usize) -> anyhow::Result<Vec<f32>> {
        let (k, n) = (self.in_features, self.out_features);
        assert_eq!(x.len(), m * k, "input shape");
        if m == 0 || n == 0 {
            return Ok(vec![0f32; m * n]);
        }
        let xb = match self.precision {
            Precision::F32 => None,
            Precision::Bf16 => Some(to_bf16_bits(x, k)),
        };
        let input: *const std::ffi::c_void = match &xb {
            Some(xb) => xb.as_ptr().cast(),
            None => x.as_ptr().cast(),
        };
        let input = InPtr(input);
        let fill = |c: OutPtr| {
            self.slices.par_iter().try_for_each(|s| {
                // SAFETY: `input` is `[m, k]` in the packed precision; the slice's output
                // columns `s.start .. s.start + s.len` of every row lie inside the output
                // (`m * n` floats, row stride n) and no other slice writes them.
                unsafe { s.compute(blas, self.precision, input, (m, k, n), c.at(s.start)) }
            })
        };
        // SAFETY: the slices cover all n output columns of all m rows, each written in full.
        unsafe { filled_output(m * n, fill) }
    }

    /// The precision the weight was packed in.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Bytes reserved for the packed copy (what oneMKL asks for, whose pages it never writes
    /// are not resident; oneDNN's reordered weight).
    pub fn bytes(&self) -> usize {
        self.slices
            .iter()
            .map(|s| match &s.data {
                SliceData::Mkl(buf) => buf.len(),
                SliceData::OneDnn(mm) => mm.bytes(),
            })
            .sum()
    }

    /// The implementation oneDNN chose for this weight (`gemm:jit:bf16`, …); `None` for oneMKL.
    pub fn implementation(&self, blas: &Blas) -> Option<String> {
        match (&blas.backend, self.slices.first().map(|s| &s.data)) {
            (Backend::OneDnn(api), Some(SliceData::OneDnn(mm))) => Some(mm.implementation(api)),
            _ => None,
        }
    }
}

impl Slice {
    /// Writes this slice's columns of `x @ W^T` through `c` (already offset to the slice's first
    /// column; rows of stride `n`).
    ///
    /// # Safety
    /// `x` must be `[m, k]` in `precision`; `c` must be valid for `m` rows of stride `n` holding
    /// this slice's `len` columns, which no other thread writes.
    unsafe fn compute(
        &self,
        blas: &Blas,
        precision: Precision,
        x: InPtr,
        (m, k, n): (usize, usize, usize),
        c: *mut f32,
    ) -> anyhow::Result<()> {
        match (&self.data, &blas.backend) {
            (SliceData::Mkl(buf), Backend::Mkl { packing, .. }) => {
                let (mi, ki, li, ni) = (m as i32, k as i32, self.len as i32, n as i32);
                match precision {
                    Precision::F32 => (packing.sgemm_compute)(
                        ROW_MAJOR,
                        NO_TRANS,
                        PACKED,
                        mi,
                        li,
                        ki,
                        x.0.cast(),
                        ki,
                        buf.as_mut_ptr().cast(),
                        ki,
                        0.0,
                        c,
                        ni,
                    ),
                    Precision::Bf16 => (packing.bf16_compute)(
                        ROW_MAJOR,
                        NO_TRANS,
                        PACKED,
                        mi,
                        li,
                        ki,
                        1.0,
                        x.0.cast(),
                        ki,
                        buf.as_mut_ptr().cast(),
                        ki,
                        0.0,
                        c,
                        ni,
                    ),
                }
                Ok(())
            }
            (SliceData::OneDnn(mm), Backend::OneDnn(api)) => mm.run(api, x.0, m, c),
            _ => anyhow::bail!("a weight packed by another library than {}", blas.label()),
        }
    }
}

/// The matmul input shared by the threads (read only).
#[derive(Clone, Copy)]
struct InPtr(*const std::ffi::c_void);
// SAFETY: the threads only read the input.
unsafe impl Send for InPtr {}
unsafe impl Sync for InPtr {}

/// One slice `[len, k]` of a weight packed by oneMKL in `precision`.
fn mkl_pack(
    mkl: &MklPacking,
    src: &[f32],
    len: usize,
    k: usize,
    precision: Precision,
) -> AlignedBuf {
    let (n, k) = (len as i32, k as i32);
    // SAFETY: `src` holds `len` rows of `k` floats; the buffer has the size the library asks
    // for this shape.
    unsafe {
        match precision {
            Precision::F32 => {
                let buf = AlignedBuf::new((mkl.sgemm_pack_get_size)(B_MATRIX, 1, n, k));
                (mkl.sgemm_pack)(
                    ROW_MAJOR,
                    B_MATRIX,
                    TRANS,
                    1,
                    n,
                    k,
                    1.0,
                    src.as_ptr(),
                    k,
                    buf.as_mut_ptr().cast(),
                );
                buf
            }
            Precision::Bf16 => {
                let rounded: Vec<u16> = src.iter().map(|&v| bf16_bits(v)).collect();
                let buf = AlignedBuf::new((mkl.bf16_pack_get_size)(B_MATRIX, 1, n, k));
                (mkl.bf16_pack)(
                    ROW_MAJOR,
                    B_MATRIX,
                    TRANS,
                    1,
                    n,
                    k,
                    rounded.as_ptr(),
                    k,
                    buf.as_mut_ptr().cast(),
                );
                buf
            }
        }
    }
}

/// `x` rounded to bf16 (nearest even, NaN kept a quiet NaN), as raw bits, in parallel chunks
/// that the compiler vectorises (the same rounding as `half::bf16::from_f32`).
fn to_bf16_bits(x: &[f32], row: usize) -> Vec<u16> {
    let mut out = Vec::with_capacity(x.len());
    let chunk = row.max(1) * 64;
    out.spare_capacity_mut()
        .par_chunks_mut(chunk)
        .zip(x.par_chunks(chunk))
        .for_each(|(o, x)| {
            for (o, &v) in o.iter_mut().zip(x) {
                o.write(bf16_bits(v));
            }
        });
    // SAFETY: the chunks above wrote every one of the `x.len()` elements.
    unsafe { out.set_len(x.len()) };
    out
}

/// One f32 rounded to bf16 bits: nearest, ties to even; NaN stays a (quiet) NaN.
#[inline(always)]
fn bf16_bits(v: f32) -> u16 {
    let bits = v.to_bits();
    let rounded = bits.wrapping_add(0x7fff + ((bits >> 16) & 1)) >> 16;
    if v.is_nan() {
        ((bits >> 16) | 0x0040) as u16
    } else {
        rounded as u16
    }
}

/// The output columns each thread computes: `(start, len)`, one slice per rayon thread (fewer
/// for narrow outputs), in whole vector registers.
fn column_slices(n: usize) -> Vec<(usize, usize)> {
    let threads = rayon::current_num_threads().max(1);
    let per = n
        .div_ceil(threads)
        .next_multiple_of(COLUMN_QUANTUM)
        .max(COLUMN_QUANTUM);
    (0..n)
        .step_by(per)
        .map(|start| (start, per.min(n - start)))
        .collect()
}

/// `a @ op(b)` in f32 with `b` row-major: `[k, n]` (`b_transposed = false`) or `[n, k]`
/// (`true`, a weight), split over rayon's threads by output columns.
fn parallel_sgemm(
    blas: &Blas,
    a: &[f32],
    b: &[f32],
    (m, k, n): (usize, usize, usize),
    b_transposed: bool,
) -> anyhow::Result<Vec<f32>> {
    assert_eq!(a.len(), m * k, "a shape");
    assert_eq!(b.len(), k * n, "b shape");
    if m == 0 || n == 0 {
        return Ok(vec![0f32; m * n]);
    }
    let fill = |c: OutPtr| {
        column_slices(n)
            .into_par_iter()
            .try_for_each(|(start, len)| {
                // Columns `start .. start + len` of op(b): rows of a transposed `b`, columns of
                // a plain one.
                let (b_slice, ldb) = if b_transposed {
                    (b[start * k..].as_ptr(), k)
                } else {
                    (b[start..].as_ptr(), n)
                };
                // SAFETY: the slice's columns of op(b) and of the output (row stride n) are in
                // bounds, and no other task writes those output columns.
                unsafe {
                    plain_sgemm(
                        blas,
                        b_transposed,
                        (m, len, k),
                        a.as_ptr(),
                        b_slice,
                        ldb,
                        c.at(start),
                        n,
                    )
                }
            })
    };
    // SAFETY: the column slices cover all n columns of all m rows, each written with beta = 0.
    unsafe { filled_output(m * n, fill) }
}

/// `c = a @ op(b)` for `a` `[m, k]` (row stride k) on the calling thread, in f32.
///
/// # Safety
/// The pointers and row strides must describe matrices of these shapes.
#[allow(clippy::too_many_arguments)]
unsafe fn plain_sgemm(
    blas: &Blas,
    b_transposed: bool,
    (m, n, k): (usize, usize, usize),
    a: *const f32,
    b: *const f32,
    ldb: usize,
    c: *mut f32,
    ldc: usize,
) -> anyhow::Result<()> {
    let trans = if b_transposed { TRANS } else { NO_TRANS };
    let cblas = match &blas.backend {
        Backend::Mkl { sgemm, .. } | Backend::OpenBlas { sgemm } => sgemm,
        Backend::OneDnn(api) => {
            return api.sgemm(b_transposed, (m, n, k), a, k, b, ldb, c, ldc);
        }
    };
    cblas(
        ROW_MAJOR, NO_TRANS, trans, m as i32, n as i32, k as i32, 1.0, a, k as i32, b, ldb as i32,
        0.0, c, ldc as i32,
    );
    Ok(())
}

/// `x @ w^T` for row-major `x` `[m, k]` and a weight `w` `[n, k]`, unpacked.
///
/// # Errors
/// When oneDNN's sgemm fails.
pub fn matmul_nt(
    blas: &Blas,
    x: &[f32],
    w: &[f32],
    m: usize,
    k: usize,
    n: usize,
) -> anyhow::Result<Vec<f32>> {
    parallel_sgemm(blas, x, w, (m, k, n), true)
}

/// `a @ b` for row-major `a` `[m, k]` and `b` `[k, n]` (e.g. a gradient times a weight).
///
/// # Errors
/// When oneDNN's sgemm fails.
pub fn sgemm(
    blas: &Blas,
    a: &[f32],
    b: &[f32],
    m: usize,
    k: usize,
    n: usize,
) -> anyhow::Result<Vec<f32>> {
    parallel_sgemm(blas, a, b, (m, k, n), false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::bf16;

    #[test]
    fn bf16_rounding_matches_half_on_every_kind_of_value() {
        let mut values = vec![
            0.0,
            -0.0,
            1.0,
            -1.0,
            f32::MAX,
            f32::MIN,
            f32::MIN_POSITIVE,
            1e-40,
            -1e-40,
            f32::INFINITY,
            f32::NEG_INFINITY,
            // Ties: halfway between two bf16 values, rounding to the even one.
            f32::from_bits(0x3f80_8000),
            f32::from_bits(0x3f81_8000),
        ];
        // A spread of bit patterns over the whole range, including the rounding boundaries.
        let mut bits = 0x1234_5678u32;
        for _ in 0..100_000 {
            bits = bits.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            values.push(f32::from_bits(bits));
            values.push(f32::from_bits((bits & 0xffff_0000) | 0x7fff));
            values.push(f32::from_bits((bits & 0xffff_0000) | 0x8000));
        }
        values.retain(|v| !v.is_nan());
        let ours = to_bf16_bits(&values, 7);
        for (&v, &b) in values.iter().zip(&ours) {
            assert_eq!(b, bf16::from_f32(v).to_bits(), "{v:e} ({:#x})", v.to_bits());
        }
        for nan in [
            f32::NAN,
            -f32::NAN,
            f32::from_bits(0x7f80_0001),
            f32::from_bits(0xffff_ffff),
        ] {
            assert!(
                bf16::from_bits(bf16_bits(nan)).is_nan(),
                "{:#x}",
                nan.to_bits()
            );
        }
    }
}
