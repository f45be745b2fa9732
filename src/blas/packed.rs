//! Matmuls through a loaded BLAS, split over rayon's threads by output columns: against
//! weights prepacked once, at load, into oneMKL's internal layout ([`PackedWeight`]), or
//! against a plain row-major weight ([`matmul_nt`], any library), and `a @ b` ([`sgemm`]).
//!
//! Each thread owns a slice of the output columns (for a packed weight, a slice of its rows
//! packed separately) and runs the single-threaded library on it: the threads never write the
//! same output element, so results do not depend on scheduling.

use std::alloc::Layout;
use std::ptr::NonNull;

use rayon::prelude::*;

use super::library::{Blas, MklPacking, B_MATRIX, NO_TRANS, PACKED, ROW_MAJOR, TRANS};

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

/// A 64-byte aligned heap buffer (what MKL recommends for packed matrices).
struct AlignedBuf {
    ptr: NonNull<u8>,
    layout: Layout,
}

// SAFETY: the buffer is plain memory owned by this value; shared access is read-only.
unsafe impl Send for AlignedBuf {}
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// An uninitialised buffer: the packing routine writes what it later reads. oneMKL asks
    /// for far more than a small weight's packed form needs (about 10 MB for a 288 × 576 slice),
    /// so the pages it never writes must stay untouched, or the server's memory would triple.
    fn new(bytes: usize) -> Self {
        let layout = Layout::from_size_align(bytes.max(64), 64).expect("valid layout");
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc(layout) };
        let ptr = NonNull::new(ptr).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        // Unit tests fill the buffer with NaN bytes: a library reading bytes its packing never
        // wrote then gives NaN products instead of passing on fresh (zeroed) pages.
        #[cfg(test)]
        // SAFETY: the buffer holds `layout.size()` bytes.
        unsafe {
            std::ptr::write_bytes(ptr.as_ptr(), 0xff, layout.size())
        };
        Self { ptr, layout }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

/// Output columns `start .. start + len`, packed.
struct Slice {
    start: usize,
    len: usize,
    buf: AlignedBuf,
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
/// `fill` must write all `len` elements behind the pointer it is given.
unsafe fn filled_output(len: usize, fill: impl FnOnce(OutPtr)) -> Vec<f32> {
    let mut out = Vec::with_capacity(len);
    fill(OutPtr(out.as_mut_ptr()));
    // SAFETY: the caller's `fill` initialised the `len` elements of the capacity.
    unsafe { out.set_len(len) };
    out
}

impl PackedWeight {
    /// Packs `weight` (`[out, in]`, row-major) in `precision`, in as many slices as rayon has
    /// threads (fewer for narrow weights).
    ///
    /// # Panics
    /// If `blas` cannot pack weights (only oneMKL can: see [`Blas::packs_weights`]).
    pub fn pack(
        blas: &Blas,
        weight: &[f32],
        out_features: usize,
        in_features: usize,
        precision: Precision,
    ) -> Self {
        assert_eq!(weight.len(), out_features * in_features, "weight shape");
        let mkl = blas.packing.as_ref().expect("a library that packs weights");
        let (k, ld) = (in_features as i32, in_features as i32);
        let slices = column_slices(out_features)
            .into_par_iter()
            .map(|(start, len)| {
                let src = &weight[start * in_features..(start + len) * in_features];
                let n = len as i32;
                // SAFETY: `src` holds `len` rows of `in_features` floats; the buffer has the
                // size the library asks for this shape.
                let buf = unsafe {
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
                                ld,
                                buf.ptr.as_ptr().cast(),
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
                                ld,
                                buf.ptr.as_ptr().cast(),
                            );
                            buf
                        }
                    }
                };
                Slice { start, len, buf }
            })
            .collect();
        Self {
            out_features,
            in_features,
            precision,
            slices,
        }
    }

    /// `x @ W^T` for `x` `[m, in]` (row-major): returns `[m, out]`.
    pub fn matmul_t(&self, blas: &Blas, x: &[f32], m: usize) -> Vec<f32> {
        let mkl = blas.packing.as_ref().expect("packed by this library");
        let (k, n) = (self.in_features, self.out_features);
        assert_eq!(x.len(), m * k, "input shape");
        if m == 0 || n == 0 {
            return vec![0f32; m * n];
        }
        // SAFETY: the slices cover all n output columns of all m rows, each written with beta = 0.
        unsafe { filled_output(m * n, |c| self.compute(mkl, x, m, c)) }
    }

    /// Writes `x @ W^T` (`x` `[m, in]`) through `c`, one rayon task per prepacked slice.
    fn compute(&self, mkl: &MklPacking, x: &[f32], m: usize, c: OutPtr) {
        let (k, n) = (self.in_features, self.out_features);
        match self.precision {
            Precision::F32 => self.slices.par_iter().for_each(|s| {
                // SAFETY: `x` is `[m, k]`; `s.buf` was packed for `[k, s.len]`; the slice's
                // output columns `s.start .. s.start + s.len` of every row lie inside `out`
                // (`m * n` floats, row stride n) and no other slice writes them.
                unsafe {
                    (mkl.sgemm_compute)(
                        ROW_MAJOR,
                        NO_TRANS,
                        PACKED,
                        m as i32,
                        s.len as i32,
                        k as i32,
                        x.as_ptr(),
                        k as i32,
                        s.buf.ptr.as_ptr().cast(),
                        k as i32,
                        0.0,
                        c.at(s.start),
                        n as i32,
                    )
                }
            }),
            Precision::Bf16 => {
                let xb = to_bf16_bits(x, k);
                self.slices.par_iter().for_each(|s| {
                    // SAFETY: as for f32, with `xb` the `[m, k]` input in bf16.
                    unsafe {
                        (mkl.bf16_compute)(
                            ROW_MAJOR,
                            NO_TRANS,
                            PACKED,
                            m as i32,
                            s.len as i32,
                            k as i32,
                            1.0,
                            xb.as_ptr(),
                            k as i32,
                            s.buf.ptr.as_ptr().cast(),
                            k as i32,
                            0.0,
                            c.at(s.start),
                            n as i32,
                        )
                    }
                });
            }
        }
    }

    /// The precision the weight was packed in.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Bytes reserved for the packed copy (what oneMKL asks for; the pages it never writes are
    /// not resident).
    pub fn bytes(&self) -> usize {
        self.slices.iter().map(|s| s.buf.layout.size()).sum()
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
) -> Vec<f32> {
    assert_eq!(a.len(), m * k, "a shape");
    assert_eq!(b.len(), k * n, "b shape");
    if m == 0 || n == 0 {
        return vec![0f32; m * n];
    }
    // SAFETY: the column slices cover all n columns of all m rows, each written with beta = 0.
    unsafe {
        filled_output(m * n, |c| {
            parallel_sgemm_into(blas, a, b, (m, k, n), b_transposed, c)
        })
    }
}

/// Writes [`parallel_sgemm`]'s product through `c` (`[m, n]`, row-major).
fn parallel_sgemm_into(
    blas: &Blas,
    a: &[f32],
    b: &[f32],
    (m, k, n): (usize, usize, usize),
    b_transposed: bool,
    c: OutPtr,
) {
    column_slices(n).into_par_iter().for_each(|(start, len)| {
        // Columns `start .. start + len` of op(b): rows of a transposed `b`, columns of a
        // plain one.
        let (trans, b_slice, ldb) = if b_transposed {
            (TRANS, b[start * k..].as_ptr(), k)
        } else {
            (NO_TRANS, b[start..].as_ptr(), n)
        };
        // SAFETY: the slice's columns of op(b) and of the output (row stride n) are in bounds,
        // and no other task writes those output columns.
        unsafe {
            (blas.sgemm)(
                ROW_MAJOR,
                NO_TRANS,
                trans,
                m as i32,
                len as i32,
                k as i32,
                1.0,
                a.as_ptr(),
                k as i32,
                b_slice,
                ldb as i32,
                0.0,
                c.at(start),
                n as i32,
            )
        }
    });
}

/// `x @ w^T` for row-major `x` `[m, k]` and a weight `w` `[n, k]`, unpacked.
pub fn matmul_nt(blas: &Blas, x: &[f32], w: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
    parallel_sgemm(blas, x, w, (m, k, n), true)
}

/// `a @ b` for row-major `a` `[m, k]` and `b` `[k, n]` (e.g. a gradient times a weight).
pub fn sgemm(blas: &Blas, a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
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
