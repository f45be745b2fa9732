//! What the CPU can do, detected at run time: its model name and the instruction-set extensions
//! that decide which matmul kernels are fast (AVX2, AVX-512, AVX512-BF16, AMX).

use std::fmt;
use std::sync::OnceLock;

use serde::Serialize;

/// The CPU bbt runs on, as named next to every speed figure.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct CpuInfo {
    /// Model name (`/proc/cpuinfo`'s `model name`, else the CPUID brand string).
    pub model: String,
    /// The CPUID vendor string (`GenuineIntel`, `AuthenticAMD`; empty off x86_64): oneMKL runs
    /// its AVX-512 and bf16 kernels only on Intel's CPUs.
    pub vendor: String,
    /// Logical CPUs this process may use.
    pub threads: usize,
    pub avx2: bool,
    pub avx512: bool,
    /// AVX512-BF16: bf16 dot products in AVX-512 registers.
    pub avx512_bf16: bool,
    /// AMX with bf16 tiles, enabled by the operating system.
    pub amx_bf16: bool,
}

impl CpuInfo {
    /// The widest matmul instruction family, as a short name (`amx-bf16`, `avx512-bf16`,
    /// `avx512`, `avx2`, `baseline`).
    pub fn isa(&self) -> &'static str {
        if self.amx_bf16 {
            "amx-bf16"
        } else if self.avx512_bf16 {
            "avx512-bf16"
        } else if self.avx512 {
            "avx512"
        } else if self.avx2 {
            "avx2"
        } else {
            "baseline"
        }
    }

    /// Whether bf16 matmuls run natively (AMX or AVX512-BF16), i.e. faster than f32 ones.
    pub fn has_fast_bf16(&self) -> bool {
        self.amx_bf16 || self.avx512_bf16
    }

    /// Whether this is an Intel CPU.
    pub fn is_intel(&self) -> bool {
        self.vendor == "GenuineIntel"
    }
}

impl fmt::Display for CpuInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut isa = Vec::new();
        for (on, name) in [
            (self.avx2, "AVX2"),
            (self.avx512, "AVX-512"),
            (self.avx512_bf16, "AVX512-BF16"),
            (self.amx_bf16, "AMX-BF16"),
        ] {
            if on {
                isa.push(name);
            }
        }
        let isa = if isa.is_empty() {
            "no AVX2".to_string()
        } else {
            isa.join(" ")
        };
        write!(f, "{}, {} threads, {isa}", self.model, self.threads)
    }
}

/// The CPU of this machine (detected once).
pub fn cpu() -> &'static CpuInfo {
    static CPU: OnceLock<CpuInfo> = OnceLock::new();
    CPU.get_or_init(detect)
}

fn detect() -> CpuInfo {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let model = model_name().unwrap_or_else(|| std::env::consts::ARCH.to_string());
    #[cfg(target_arch = "x86_64")]
    {
        CpuInfo {
            model,
            vendor: x86::vendor(),
            threads,
            avx2: is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
            avx512: is_x86_feature_detected!("avx512f"),
            avx512_bf16: is_x86_feature_detected!("avx512bf16"),
            amx_bf16: x86::amx_bf16(),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        CpuInfo {
            model,
            vendor: String::new(),
            threads,
            avx2: false,
            avx512: false,
            avx512_bf16: false,
            amx_bf16: false,
        }
    }
}

/// `model name` from `/proc/cpuinfo` (Linux), else the CPUID brand string.
fn model_name() -> Option<String> {
    let from_proc = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        });
    #[cfg(target_arch = "x86_64")]
    let from_proc = from_proc.or_else(x86::brand_string);
    from_proc.filter(|s| !s.is_empty())
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::{__cpuid, __cpuid_count, _xgetbv};

    /// AMX-TILE and AMX-BF16 (CPUID leaf 7) with tile state enabled in XCR0 (bits 17 and 18).
    pub fn amx_bf16() -> bool {
        // CPUID is safe on every x86_64 CPU; leaf 7 is only read when the maximum leaf allows it.
        let max_leaf = __cpuid(0).eax;
        if max_leaf < 7 {
            return false;
        }
        let edx = __cpuid_count(7, 0).edx;
        let (tile, bf16) = (edx & (1 << 24) != 0, edx & (1 << 22) != 0);
        if !(tile && bf16 && is_x86_feature_detected!("xsave")) {
            return false;
        }
        // OSXSAVE (leaf 1, ecx bit 27) must be set before XGETBV may run.
        let osxsave = __cpuid(1).ecx & (1 << 27) != 0;
        if !osxsave {
            return false;
        }
        // SAFETY: XGETBV is available when OSXSAVE is set (checked above).
        let xcr0 = unsafe { _xgetbv(0) };
        xcr0 & (0b11 << 17) == (0b11 << 17)
    }

    /// The CPUID vendor string (leaf 0: EBX, EDX, ECX).
    pub fn vendor() -> String {
        let r = __cpuid(0);
        let bytes: Vec<u8> = [r.ebx, r.edx, r.ecx]
            .iter()
            .flat_map(|reg| reg.to_le_bytes())
            .collect();
        String::from_utf8_lossy(&bytes)
            .trim_matches('\0')
            .to_string()
    }

    /// The CPUID brand string (leaves 0x8000_0002..4), when the CPU has one.
    pub fn brand_string() -> Option<String> {
        // Extended leaves are only read when the maximum extended leaf allows it.
        let max_ext = __cpuid(0x8000_0000).eax;
        if max_ext < 0x8000_0004 {
            return None;
        }
        let mut bytes = Vec::with_capacity(48);
        for leaf in 0x8000_0002u32..=0x8000_0004 {
            let r = __cpuid(leaf);
            for reg in [r.eax, r.ebx, r.ecx, r.edx] {
                bytes.extend_from_slice(&reg.to_le_bytes());
            }
        }
        let s = String::from_utf8_lossy(&bytes);
        Some(
            s.trim_matches(|c: char| c == '\0' || c.is_whitespace())
                .to_string(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detection_names_the_cpu_and_orders_the_isa_levels() {
        let c = cpu();
        assert!(!c.model.is_empty());
        #[cfg(target_arch = "x86_64")]
        assert_eq!(c.vendor.len(), 12, "{:?}", c.vendor);
        assert!(c.threads >= 1);
        // Native bf16 implies AVX-512 (both AMX machines and AVX512-BF16 ones have it).
        if c.avx512_bf16 {
            assert!(c.avx512, "{c}");
        }
        let text = c.to_string();
        assert!(text.starts_with(&c.model), "{text}");
        let mut amx = c.clone();
        amx.amx_bf16 = true;
        assert_eq!(amx.isa(), "amx-bf16");
        assert!(amx.has_fast_bf16());
        let plain = CpuInfo {
            avx2: true,
            avx512: false,
            avx512_bf16: false,
            amx_bf16: false,
            ..c.clone()
        };
        assert_eq!(plain.isa(), "avx2");
        assert!(!plain.has_fast_bf16());
    }
}
