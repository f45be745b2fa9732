//! Parsing of the `--device cpu|cuda[:N]` flag shared by every binary.

use candle_core::{Device, DeviceLocation};

/// Opens the device named by `spec`: `cpu`, `cuda` or `cuda:N`.
///
/// `cuda` needs a build with the `cuda` cargo feature; without it the error says how to get one.
pub fn parse_device(spec: &str) -> anyhow::Result<Device> {
    match spec {
        "cpu" => Ok(Device::Cpu),
        s if s == "cuda" || s.starts_with("cuda:") => {
            let ordinal = match s.strip_prefix("cuda:") {
                Some(n) => n.parse::<usize>().map_err(|_| {
                    anyhow::anyhow!("invalid device `{s}`: expected cuda:N with N a GPU index")
                })?,
                None => 0,
            };
            if !cfg!(feature = "cuda") {
                anyhow::bail!(
                    "device `{s}` needs a build with CUDA: cargo build --release --features cuda"
                );
            }
            Device::new_cuda(ordinal).map_err(|e| anyhow::anyhow!("cannot open {s}: {e}"))
        }
        other => anyhow::bail!("unknown device `{other}`: expected cpu, cuda or cuda:N"),
    }
}

/// The name `--device` takes for `device` (`cpu`, `cuda:0`, ...), as reported on `/v1/models`,
/// `/metrics` and in benchmarks.
pub fn device_name(device: &Device) -> String {
    match device.location() {
        DeviceLocation::Cpu => "cpu".into(),
        DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cpu_and_rejects_garbage() {
        assert!(parse_device("cpu").unwrap().is_cpu());
        assert_eq!(device_name(&parse_device("cpu").unwrap()), "cpu");
        let err = parse_device("tpu").unwrap_err().to_string();
        assert!(err.contains("unknown device `tpu`"), "{err}");
        let err = parse_device("cuda:x").unwrap_err().to_string();
        assert!(err.contains("cuda:N"), "{err}");
    }
}
