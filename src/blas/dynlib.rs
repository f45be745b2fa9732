//! Functions of libraries loaded at run time.

/// Resolves `name` in `lib` as a `T` (a function pointer type).
///
/// # Safety
/// `T` must be the symbol's true signature.
pub(super) unsafe fn symbol<T: Copy>(lib: &libloading::Library, name: &str) -> anyhow::Result<T> {
    let sym: libloading::Symbol<T> = lib
        .get(name.as_bytes())
        .map_err(|e| anyhow::anyhow!("symbol {name}: {e}"))?;
    Ok(*sym)
}
