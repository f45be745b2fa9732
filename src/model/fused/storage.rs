//! Access to the f32 CPU storage that the fused ops read.

use candle_core::{CpuStorage, Layout, Storage, Tensor};

/// The contiguous f32 slice of a CPU storage, or an error naming `op`.
pub(super) fn f32_slice<'a>(
    op: &str,
    storage: &'a CpuStorage,
    layout: &Layout,
) -> candle_core::Result<&'a [f32]> {
    let CpuStorage::F32(data) = storage else {
        candle_core::bail!("{op}: f32 only");
    };
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("{op}: inputs must be contiguous");
    };
    Ok(&data[start..end])
}

/// Copies a tensor's values (contiguous, f32, CPU) out of the op's captured tensor.
pub(super) fn captured_f32(op: &str, t: &Tensor) -> candle_core::Result<Vec<f32>> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        candle_core::bail!("{op}: CPU tensors only");
    };
    Ok(f32_slice(op, cpu, layout)?.to_vec())
}
