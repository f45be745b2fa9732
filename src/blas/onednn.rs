//! oneDNN (`libdnnl`, the library PyTorch's CPU matmuls run on), opened at run time: a matmul
//! primitive per prepared weight slice, created once at load with the row count left to run
//! time, in f32 or in bf16 with f32 accumulation (AVX512-BF16 or AMX where the CPU has them);
//! `dnnl_sgemm` for plain products.
//!
//! The wheel bbt uses (`onednn-cpu-gomp`) threads with GNU OpenMP. bbt already splits every
//! matmul over rayon's threads, so each thread that calls into oneDNN first limits its own
//! OpenMP team to one thread ([`prepare_thread`]), and each has its own oneDNN stream.

use std::cell::Cell;
use std::ffi::{c_char, c_void, CStr};
use std::ptr;

use super::aligned::AlignedBuf;
use super::dynlib::symbol;

type Status = i32;
type Handle = *mut c_void;
/// `dnnl_dims_t`: twelve `int64_t`.
type Dims = [i64; 12];

const SUCCESS: Status = 0;
/// `dnnl_data_type_t`.
const BF16: i32 = 2;
const F32: i32 = 3;
/// `dnnl_format_tag_any`: the primitive chooses the weights' layout.
const FORMAT_ANY: i32 = 1;
/// `dnnl_engine_kind_t::dnnl_cpu`.
const ENGINE_CPU: i32 = 1;
/// `dnnl_scratchpad_mode_user`: bbt passes the scratch memory, so primitives can run on several
/// threads at once.
const SCRATCHPAD_USER: i32 = 1;
const STREAM_DEFAULT_FLAGS: u32 = 1;
/// `dnnl_query_t` values.
const QUERY_IMPL_INFO_STR: i32 = 8;
const QUERY_WEIGHTS_MD: i32 = 131;
const QUERY_SCRATCHPAD_MD: i32 = 136;
/// `DNNL_ARG_*`.
const ARG_SRC: i32 = 1;
const ARG_DST: i32 = 17;
const ARG_WEIGHTS: i32 = 33;
const ARG_SCRATCHPAD: i32 = 80;
/// `DNNL_RUNTIME_DIM_VAL`: a dimension given only at execution.
const RUNTIME_DIM: i64 = i64::MIN;

/// `dnnl_exec_arg_t`.
#[repr(C)]
struct ExecArg {
    arg: i32,
    memory: Handle,
}

/// `dnnl_version_t`.
#[repr(C)]
struct Version {
    major: i32,
    minor: i32,
    patch: i32,
    hash: *const c_char,
    cpu_runtime: u32,
    gpu_runtime: u32,
}

/// The oneDNN entry points bbt calls, with the signatures of `dnnl.h` (oneDNN 3.x).
pub(super) struct Api {
    engine: Handle,
    engine_create: unsafe extern "C" fn(*mut Handle, i32, usize) -> Status,
    stream_create: unsafe extern "C" fn(*mut Handle, Handle, u32) -> Status,
    md_with_strides: unsafe extern "C" fn(*mut Handle, i32, *const i64, i32, *const i64) -> Status,
    md_with_tag: unsafe extern "C" fn(*mut Handle, i32, *const i64, i32, i32) -> Status,
    md_destroy: unsafe extern "C" fn(Handle) -> Status,
    md_size: unsafe extern "C" fn(Handle) -> usize,
    attr_create: unsafe extern "C" fn(*mut Handle) -> Status,
    attr_set_scratchpad_mode: unsafe extern "C" fn(Handle, i32) -> Status,
    attr_destroy: unsafe extern "C" fn(Handle) -> Status,
    matmul_pd_create:
        unsafe extern "C" fn(*mut Handle, Handle, Handle, Handle, Handle, Handle, Handle) -> Status,
    reorder_pd_create:
        unsafe extern "C" fn(*mut Handle, Handle, Handle, Handle, Handle, Handle) -> Status,
    pd_query_md: unsafe extern "C" fn(Handle, i32, i32) -> Handle,
    pd_query: unsafe extern "C" fn(Handle, i32, i32, *mut c_void) -> Status,
    pd_destroy: unsafe extern "C" fn(Handle) -> Status,
    primitive_create: unsafe extern "C" fn(*mut Handle, Handle) -> Status,
    primitive_destroy: unsafe extern "C" fn(Handle) -> Status,
    primitive_execute: unsafe extern "C" fn(Handle, Handle, i32, *const ExecArg) -> Status,
    memory_create: unsafe extern "C" fn(*mut Handle, Handle, Handle, *mut c_void) -> Status,
    memory_destroy: unsafe extern "C" fn(Handle) -> Status,
    stream_wait: unsafe extern "C" fn(Handle) -> Status,
    sgemm: unsafe extern "C" fn(
        c_char,
        c_char,
        i64,
        i64,
        i64,
        f32,
        *const f32,
        i64,
        *const f32,
        i64,
        f32,
        *mut f32,
        i64,
    ) -> Status,
    omp_set_num_threads: unsafe extern "C" fn(i32),
}

// SAFETY: the engine handle is created once and only read; oneDNN's engines, primitive
// descriptors and primitives may be used from several threads (each with its own stream and
// scratchpad, as here).
unsafe impl Send for Api {}
unsafe impl Sync for Api {}

/// Turns a oneDNN status into an error naming the call.
fn check(status: Status, what: &str) -> anyhow::Result<()> {
    if status == SUCCESS {
        Ok(())
    } else {
        anyhow::bail!("oneDNN {what} failed with status {status}")
    }
}

impl Api {
    /// Resolves the entry points in `lib` (and GNU OpenMP's, which `libdnnl` links) and creates
    /// the CPU engine. Returns the API and the library's version (`3.2.0`).
    ///
    /// # Safety
    /// `lib` must be oneDNN 3.x built with the GNU OpenMP runtime.
    pub(super) unsafe fn open(lib: &libloading::Library) -> anyhow::Result<(Self, String)> {
        let version: unsafe extern "C" fn() -> *const Version = symbol(lib, "dnnl_version")?;
        let v = &*version();
        if v.major != 3 {
            anyhow::bail!("oneDNN {}.{} found, bbt needs 3.x", v.major, v.minor);
        }
        let release = format!("{}.{}.{}", v.major, v.minor, v.patch);
        let mut api = Self {
            engine: ptr::null_mut(),
            engine_create: symbol(lib, "dnnl_engine_create")?,
            stream_create: symbol(lib, "dnnl_stream_create")?,
            md_with_strides: symbol(lib, "dnnl_memory_desc_create_with_strides")?,
            md_with_tag: symbol(lib, "dnnl_memory_desc_create_with_tag")?,
            md_destroy: symbol(lib, "dnnl_memory_desc_destroy")?,
            md_size: symbol(lib, "dnnl_memory_desc_get_size")?,
            attr_create: symbol(lib, "dnnl_primitive_attr_create")?,
            attr_set_scratchpad_mode: symbol(lib, "dnnl_primitive_attr_set_scratchpad_mode")?,
            attr_destroy: symbol(lib, "dnnl_primitive_attr_destroy")?,
            matmul_pd_create: symbol(lib, "dnnl_matmul_primitive_desc_create")?,
            reorder_pd_create: symbol(lib, "dnnl_reorder_primitive_desc_create")?,
            pd_query_md: symbol(lib, "dnnl_primitive_desc_query_md")?,
            pd_query: symbol(lib, "dnnl_primitive_desc_query")?,
            pd_destroy: symbol(lib, "dnnl_primitive_desc_destroy")?,
            primitive_create: symbol(lib, "dnnl_primitive_create")?,
            primitive_destroy: symbol(lib, "dnnl_primitive_destroy")?,
            primitive_execute: symbol(lib, "dnnl_primitive_execute")?,
            memory_create: symbol(lib, "dnnl_memory_create")?,
            memory_destroy: symbol(lib, "dnnl_memory_destroy")?,
            stream_wait: symbol(lib, "dnnl_stream_wait")?,
            sgemm: symbol(lib, "dnnl_sgemm")?,
            omp_set_num_threads: symbol(lib, "omp_set_num_threads")?,
        };
        let mut engine = ptr::null_mut();
        check((api.engine_create)(&mut engine, ENGINE_CPU, 0), "engine")?;
        api.engine = engine;
        Ok((api, release))
    }

    /// This thread's stream, created (and its OpenMP team limited to one thread) on first use.
    fn stream(&self) -> anyhow::Result<Handle> {
        thread_local! {
            static STREAM: Cell<Handle> = const { Cell::new(ptr::null_mut()) };
        }
        STREAM.with(|cell| {
            if cell.get().is_null() {
                self.prepare_thread();
                let mut stream = ptr::null_mut();
                // SAFETY: the engine is valid for the process's life; the stream is kept for
                // the thread's life.
                check(
                    unsafe { (self.stream_create)(&mut stream, self.engine, STREAM_DEFAULT_FLAGS) },
                    "stream",
                )?;
                cell.set(stream);
            }
            Ok(cell.get())
        })
    }

    /// Limits the calling thread's OpenMP team to itself (once per thread): rayon already runs
    /// one slice of each matmul per core.
    pub(super) fn prepare_thread(&self) {
        thread_local! {
            static DONE: Cell<bool> = const { Cell::new(false) };
        }
        DONE.with(|done| {
            if !done.get() {
                // SAFETY: sets the calling thread's OpenMP `nthreads-var`.
                unsafe { (self.omp_set_num_threads)(1) };
                done.set(true);
            }
        })
    }

    /// A 2-D memory descriptor `dims` with `strides` (row stride first) in `dtype`.
    fn md(&self, dims: [i64; 2], strides: [i64; 2], dtype: i32) -> anyhow::Result<Md<'_>> {
        let (mut d, mut s): (Dims, Dims) = ([0; 12], [0; 12]);
        d[..2].copy_from_slice(&dims);
        s[..2].copy_from_slice(&strides);
        let mut md = ptr::null_mut();
        // SAFETY: `d` and `s` hold 12 entries, two of them used.
        check(
            unsafe { (self.md_with_strides)(&mut md, 2, d.as_ptr(), dtype, s.as_ptr()) },
            "memory descriptor",
        )?;
        Ok(Md { api: self, md })
    }

    /// Runs `primitive` on this thread's stream with `args` (`(argument, descriptor, data)`),
    /// each wrapped in a memory object for the call, and waits for it.
    fn execute(
        &self,
        primitive: Handle,
        args: &[(i32, Handle, *mut c_void)],
    ) -> anyhow::Result<()> {
        let stream = self.stream()?;
        let mut mems = Vec::with_capacity(args.len());
        let result = (|| {
            for &(arg, md, data) in args {
                let mut mem = ptr::null_mut();
                // SAFETY: `data` points at memory of at least `md`'s size (the callers' contract).
                check(
                    unsafe { (self.memory_create)(&mut mem, md, self.engine, data) },
                    "memory",
                )?;
                mems.push(ExecArg { arg, memory: mem });
            }
            // SAFETY: every argument the primitive needs is bound to valid memory.
            check(
                unsafe {
                    (self.primitive_execute)(primitive, stream, mems.len() as i32, mems.as_ptr())
                },
                "execute",
            )?;
            // SAFETY: the stream belongs to this thread.
            check(unsafe { (self.stream_wait)(stream) }, "stream wait")
        })();
        for m in mems {
            // SAFETY: created above, no longer used.
            unsafe { (self.memory_destroy)(m.memory) };
        }
        result
    }

    /// `c = a @ op(b)` in f32, row-major, single-threaded on the calling thread (`dnnl_sgemm`).
    ///
    /// # Safety
    /// The pointers and leading dimensions must describe matrices of the given shapes.
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn sgemm(
        &self,
        b_transposed: bool,
        (m, n, k): (usize, usize, usize),
        a: *const f32,
        lda: usize,
        b: *const f32,
        ldb: usize,
        c: *mut f32,
        ldc: usize,
    ) -> anyhow::Result<()> {
        self.prepare_thread();
        let transb = if b_transposed { b'T' } else { b'N' } as c_char;
        check(
            (self.sgemm)(
                b'N' as c_char,
                transb,
                m as i64,
                n as i64,
                k as i64,
                1.0,
                a,
                lda as i64,
                b,
                ldb as i64,
                0.0,
                c,
                ldc as i64,
            ),
            "sgemm",
        )
    }
}

/// A memory descriptor, destroyed with the value.
struct Md<'a> {
    api: &'a Api,
    md: Handle,
}

impl Drop for Md<'_> {
    fn drop(&mut self) {
        // SAFETY: created by this API, used by nobody after this.
        unsafe { (self.api.md_destroy)(self.md) };
    }
}

/// One weight slice `[k, n]` ready for `x @ W_slice` with any number of rows: the primitive
/// (created once, the row count left to run time) and the weight reordered into the layout the
/// primitive chose.
pub(super) struct Matmul {
    pd: Handle,
    primitive: Handle,
    weights: AlignedBuf,
    scratch_bytes: usize,
    k: usize,
    n: usize,
    /// The output's row stride (the whole output's width).
    ldc: usize,
    dtype: i32,
    primitive_destroy: unsafe extern "C" fn(Handle) -> Status,
    pd_destroy: unsafe extern "C" fn(Handle) -> Status,
}

// SAFETY: the handles are immutable after creation and oneDNN primitives may run on several
// threads at once (bbt gives each its own stream and scratchpad).
unsafe impl Send for Matmul {}
unsafe impl Sync for Matmul {}

impl Matmul {
    /// Prepares `x @ W` for a weight slice given as `rows` rows (output columns) of `k` inputs
    /// each (`weight` holds `n * k` elements, row-major `[n, k]`), in bf16 (`weight` already
    /// rounded, as bits) or f32, writing output rows of stride `ldc`.
    pub(super) fn new(
        api: &Api,
        weight: Weights<'_>,
        n: usize,
        k: usize,
        ldc: usize,
    ) -> anyhow::Result<Self> {
        let dtype = match weight {
            Weights::F32(_) => F32,
            Weights::Bf16(_) => BF16,
        };
        let (ki, ni) = (k as i64, n as i64);
        let src = api.md([RUNTIME_DIM, ki], [ki, 1], dtype)?;
        let dst = api.md([RUNTIME_DIM, ni], [ldc as i64, 1], F32)?;
        let mut any: Dims = [0; 12];
        any[..2].copy_from_slice(&[ki, ni]);
        let mut wany = ptr::null_mut();
        // SAFETY: `any` holds 12 dims, two used.
        check(
            unsafe { (api.md_with_tag)(&mut wany, 2, any.as_ptr(), dtype, FORMAT_ANY) },
            "weights descriptor",
        )?;
        let wany = Md { api, md: wany };
        let mut attr = ptr::null_mut();
        // SAFETY: plain creation calls on handles created here.
        unsafe {
            check((api.attr_create)(&mut attr), "attributes")?;
            let set = (api.attr_set_scratchpad_mode)(attr, SCRATCHPAD_USER);
            let mut pd = ptr::null_mut();
            let made = (api.matmul_pd_create)(
                &mut pd,
                api.engine,
                src.md,
                wany.md,
                ptr::null_mut(),
                dst.md,
                attr,
            );
            (api.attr_destroy)(attr);
            check(set, "scratchpad mode")?;
            check(made, "matmul descriptor")?;
            let mut this = Self {
                pd,
                primitive: ptr::null_mut(),
                weights: AlignedBuf::new(0),
                scratch_bytes: 0,
                k,
                n,
                ldc,
                dtype,
                primitive_destroy: api.primitive_destroy,
                pd_destroy: api.pd_destroy,
            };
            check((api.primitive_create)(&mut this.primitive, pd), "matmul")?;
            let wmd = (api.pd_query_md)(pd, QUERY_WEIGHTS_MD, 0);
            this.scratch_bytes = (api.md_size)((api.pd_query_md)(pd, QUERY_SCRATCHPAD_MD, 0));
            this.weights = AlignedBuf::new((api.md_size)(wmd));
            // The weight as given: `[k, n]` with element (i, j) at `j * k + i`.
            let plain = api.md([ki, ni], [1, ki], dtype)?;
            let mut rpd = ptr::null_mut();
            check(
                (api.reorder_pd_create)(
                    &mut rpd,
                    plain.md,
                    api.engine,
                    wmd,
                    api.engine,
                    ptr::null_mut(),
                ),
                "reorder descriptor",
            )?;
            let mut reorder = ptr::null_mut();
            let made = (api.primitive_create)(&mut reorder, rpd);
            (api.pd_destroy)(rpd);
            check(made, "reorder")?;
            let ran = api.execute(
                reorder,
                &[
                    (ARG_SRC, plain.md, weight.as_ptr()),
                    (ARG_DST, wmd, this.weights.as_mut_ptr()),
                ],
            );
            (api.primitive_destroy)(reorder);
            ran?;
            Ok(this)
        }
    }

    /// The implementation oneDNN chose (`gemm:jit:bf16`, `brg:avx512_core_amx`, …).
    pub(super) fn implementation(&self, api: &Api) -> String {
        let mut s: *const c_char = ptr::null();
        // SAFETY: the query writes a pointer to a string owned by the descriptor.
        let ok = unsafe {
            (api.pd_query)(
                self.pd,
                QUERY_IMPL_INFO_STR,
                0,
                (&mut s as *mut *const c_char).cast(),
            )
        };
        if ok != SUCCESS || s.is_null() {
            return "unknown".into();
        }
        // SAFETY: a NUL-terminated string that lives as long as the descriptor.
        unsafe { CStr::from_ptr(s) }.to_string_lossy().into_owned()
    }

    /// Writes `x @ W_slice` for `x` `[m, k]` (f32 or bf16 bits, as prepared) to `out`, rows of
    /// stride `ldc`.
    ///
    /// # Safety
    /// `x` must hold `m * k` elements of the prepared type; `out` must be valid for `m` rows of
    /// stride `ldc` holding this slice's `n` columns.
    pub(super) unsafe fn run(
        &self,
        api: &Api,
        x: *const c_void,
        m: usize,
        out: *mut f32,
    ) -> anyhow::Result<()> {
        let (mi, ki) = (m as i64, self.k as i64);
        let src = api.md([mi, ki], [ki, 1], self.dtype)?;
        let dst = api.md([mi, self.n as i64], [self.ldc as i64, 1], F32)?;
        let wmd = (api.pd_query_md)(self.pd, QUERY_WEIGHTS_MD, 0);
        let mut args = vec![
            (ARG_SRC, src.md, x.cast_mut()),
            (ARG_WEIGHTS, wmd, self.weights.as_mut_ptr()),
            (ARG_DST, dst.md, out.cast()),
        ];
        let mut scratch = Vec::<u8>::new();
        if self.scratch_bytes > 0 {
            scratch.resize(self.scratch_bytes, 0);
            let smd = (api.pd_query_md)(self.pd, QUERY_SCRATCHPAD_MD, 0);
            args.push((ARG_SCRATCHPAD, smd, scratch.as_mut_ptr().cast()));
        }
        api.execute(self.primitive, &args)
    }

    /// Bytes of the reordered weight.
    pub(super) fn bytes(&self) -> usize {
        self.weights.len()
    }
}

impl Drop for Matmul {
    fn drop(&mut self) {
        // SAFETY: created in `new` (a null primitive when its creation failed), not used after
        // this; the library stays loaded for the process's life.
        unsafe {
            if !self.primitive.is_null() {
                (self.primitive_destroy)(self.primitive);
            }
            (self.pd_destroy)(self.pd);
        }
    }
}

/// A weight slice handed to [`Matmul::new`].
pub(super) enum Weights<'a> {
    F32(&'a [f32]),
    /// Already rounded to bf16, as bits.
    Bf16(&'a [u16]),
}

impl Weights<'_> {
    fn as_ptr(&self) -> *mut c_void {
        match self {
            Self::F32(w) => w.as_ptr().cast_mut().cast(),
            Self::Bf16(w) => w.as_ptr().cast_mut().cast(),
        }
    }
}
